//! Spawns whose exec outcome is still unknown after `stuckSpawnTimeout`.
//!
//! A spawn waits for its child's exec, which a hung FUSE or NFS mount can
//! make wait forever. That costs only its own action (nothing else waits
//! for it), but bb_worker would go on sending work that needs the same
//! storage to a runner that cannot start it. So a spawn still waiting
//! after the timeout is counted here, and while any is, the runner refuses
//! work as it does with a dirty cgroup: CheckReadiness answers
//! UNAVAILABLE naming the program and how long it has waited, `/-/ready`
//! 503, `rbe_runner_refusing_work` 1 and a `RunnerState` event with the
//! reason `stuck spawn` (see `action::observer::report_stuck_spawns`).
//! It is over when the spawn completes or its process is gone (both end
//! the child's status channel).
//!
//! The lock is held only for an insert, a removal or a scan; no spawn
//! holds it while it waits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::bounded::quoted;
use crate::sync::lock_unpoisoned;

/// The spawns stuck now, and the timeout that makes one stuck.
#[derive(Debug)]
pub struct StuckSpawns {
    /// `stuckSpawnTimeout`; `None`: never (`'0s'`).
    timeout: Option<Duration>,
    stuck: Mutex<BTreeMap<u64, Stuck>>,
    next: AtomicU64,
    count: watch::Sender<usize>,
}

/// One stuck spawn.
#[derive(Debug)]
struct Stuck {
    program: String,
    since: Instant,
}

impl StuckSpawns {
    /// Spawns are stuck once they waited `timeout` for their exec;
    /// `None` disables the check.
    pub fn new(timeout: Option<Duration>) -> StuckSpawns {
        StuckSpawns {
            timeout,
            stuck: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            count: watch::channel(0).0,
        }
    }

    /// How long a spawn may wait for its exec before it counts as stuck.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Counts the spawn of `program`, waiting since `since`, as stuck
    /// until the returned guard is dropped.
    pub(crate) fn stuck(&self, program: &str, since: Instant) -> StuckSpawn<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            program = %quoted(program),
            waited = ?since.elapsed(),
            "a spawn's exec has not returned within stuckSpawnTimeout; refusing work until it does"
        );
        let mut stuck = lock_unpoisoned(&self.stuck);
        stuck.insert(
            key,
            Stuck {
                program: program.to_owned(),
                since,
            },
        );
        self.count.send_replace(stuck.len());
        StuckSpawn { spawns: self, key }
    }

    /// Why work is refused, naming the spawn that has waited longest and
    /// for how long; `None` when no spawn is stuck.
    pub fn reason(&self) -> Option<String> {
        let stuck = lock_unpoisoned(&self.stuck);
        let oldest = stuck.values().min_by_key(|stuck| stuck.since)?;
        let timeout = self.timeout.unwrap_or_default();
        Some(format!(
            "the exec of {} has not returned after {:.1?} (stuckSpawnTimeout {timeout:?}); \
             its filesystem may hang; {} spawn(s) stuck",
            quoted(&oldest.program),
            oldest.since.elapsed(),
            stuck.len()
        ))
    }

    /// The number of stuck spawns, as it changes.
    pub fn count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

/// A stuck spawn, counted until dropped.
#[derive(Debug)]
pub(crate) struct StuckSpawn<'a> {
    spawns: &'a StuckSpawns,
    key: u64,
}

impl Drop for StuckSpawn<'_> {
    fn drop(&mut self) {
        let mut stuck = lock_unpoisoned(&self.spawns.stuck);
        if let Some(over) = stuck.remove(&self.key) {
            tracing::info!(program = %quoted(&over.program), waited = ?over.since.elapsed(),
                "a stuck spawn is over");
        }
        self.spawns.count.send_replace(stuck.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: the runner must say which program hangs and for how
    /// long, and be ready again exactly when no spawn is stuck.
    #[test]
    fn a_stuck_spawn_is_named_until_it_is_over() {
        let spawns = StuckSpawns::new(Some(Duration::from_secs(30)));
        let count = spawns.count();
        assert_eq!(spawns.reason(), None);
        let first = spawns.stuck("/mnt/fuse/tool", Instant::now() - Duration::from_secs(31));
        let second = spawns.stuck("/mnt/fuse/other", Instant::now());
        assert_eq!(*count.borrow(), 2);
        let reason = spawns.reason().unwrap();
        assert!(reason.contains("\"/mnt/fuse/tool\""), "{reason}");
        assert!(reason.contains("31."), "{reason}");
        assert!(reason.contains("2 spawn(s)"), "{reason}");
        drop(first);
        let reason = spawns.reason().unwrap();
        assert!(reason.contains("\"/mnt/fuse/other\""), "{reason}");
        drop(second);
        assert_eq!(spawns.reason(), None);
        assert_eq!(*count.borrow(), 0);
    }
}
