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
//! Every spawn that may become stuck is registered here while it waits
//! ([`StuckSpawns::waiting`]), and one watchdog task for all spawns
//! ([`StuckSpawns::watch`]) wakes when the oldest of them reaches the
//! timeout. A timer per spawn would cost every action an extra turn of the
//! event loop: a timer earlier than the loop's next wake-up makes tokio
//! wake itself through its eventfd. The watchdog re-arms only when it
//! fires, so a stream of quick spawns costs it one wake-up per timeout.
//!
//! The lock is held only for an insert, a removal or a scan; no spawn
//! holds it while it waits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::bounded::quoted;
use crate::sync::lock_unpoisoned;

/// The spawns waiting for their exec, the stuck ones among them, and the
/// timeout that makes one stuck.
#[derive(Debug)]
pub struct StuckSpawns {
    /// `stuckSpawnTimeout`; `None`: never (`'0s'`).
    timeout: Option<Duration>,
    spawns: Mutex<Spawns>,
    next: AtomicU64,
    count: watch::Sender<usize>,
    /// Wakes the watchdog when a spawn begins while it has none to watch.
    wake: Notify,
}

/// What the lock guards.
#[derive(Debug, Default)]
struct Spawns {
    waiting: BTreeMap<u64, Waiting>,
    /// The watchdog waits for [`StuckSpawns::wake`], with no timer armed.
    watchdog_idle: bool,
}

/// One spawn waiting for its exec.
#[derive(Debug)]
struct Waiting {
    program: String,
    since: Instant,
    stuck: bool,
}

impl Spawns {
    fn stuck_count(&self) -> usize {
        self.waiting
            .values()
            .filter(|waiting| waiting.stuck)
            .count()
    }
}

impl StuckSpawns {
    /// Spawns are stuck once they waited `timeout` for their exec;
    /// `None` disables the check.
    pub fn new(timeout: Option<Duration>) -> StuckSpawns {
        StuckSpawns {
            timeout,
            spawns: Mutex::new(Spawns {
                waiting: BTreeMap::new(),
                watchdog_idle: true,
            }),
            next: AtomicU64::new(0),
            count: watch::channel(0).0,
            wake: Notify::new(),
        }
    }

    /// How long a spawn may wait for its exec before it counts as stuck.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Registers the spawn of `program`, waiting since `since`, until the
    /// returned guard is dropped (its exec returned, or its process is
    /// gone); `None` when spawns never count as stuck.
    pub(crate) fn waiting(&self, program: &str, since: Instant) -> Option<WaitingSpawn<'_>> {
        self.timeout?;
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let mut spawns = lock_unpoisoned(&self.spawns);
        spawns.waiting.insert(
            key,
            Waiting {
                program: program.to_owned(),
                since,
                stuck: false,
            },
        );
        if spawns.watchdog_idle {
            spawns.watchdog_idle = false;
            self.wake.notify_one();
        }
        Some(WaitingSpawn { spawns: self, key })
    }

    /// The watchdog: counts as stuck each spawn that has waited the
    /// timeout, sleeping until the oldest of the others would; idle while
    /// none waits. Runs for as long as the runner does; returns at once
    /// when spawns never count as stuck.
    pub async fn watch(self: Arc<Self>) {
        let Some(timeout) = self.timeout else {
            return;
        };
        loop {
            match self.find_stuck(timeout) {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => self.wake.notified().await,
            }
        }
    }

    /// Marks the spawns that have waited `timeout` as stuck; returns when
    /// the next one would be, or `None` (the watchdog then idles) when no
    /// other waits.
    fn find_stuck(&self, timeout: Duration) -> Option<Instant> {
        let now = Instant::now();
        let mut spawns = lock_unpoisoned(&self.spawns);
        let mut found = false;
        let mut next: Option<Instant> = None;
        for waiting in spawns.waiting.values_mut().filter(|waiting| !waiting.stuck) {
            let at = waiting.since + timeout;
            if at <= now {
                waiting.stuck = true;
                found = true;
                tracing::warn!(
                    program = %quoted(&waiting.program),
                    waited = ?waiting.since.elapsed(),
                    "a spawn's exec has not returned within stuckSpawnTimeout; refusing work until it does"
                );
            } else {
                next = Some(next.map_or(at, |next| next.min(at)));
            }
        }
        if found {
            self.count.send_replace(spawns.stuck_count());
        }
        spawns.watchdog_idle = next.is_none();
        next
    }

    /// Why work is refused, naming the spawn that has waited longest and
    /// for how long; `None` when no spawn is stuck.
    pub fn reason(&self) -> Option<String> {
        let spawns = lock_unpoisoned(&self.spawns);
        let stuck = spawns.stuck_count();
        let oldest = spawns
            .waiting
            .values()
            .filter(|waiting| waiting.stuck)
            .min_by_key(|waiting| waiting.since)?;
        let timeout = self.timeout.unwrap_or_default();
        Some(format!(
            "the exec of {} has not returned after {:.1?} (stuckSpawnTimeout {timeout:?}); \
             its filesystem may hang; {stuck} spawn(s) stuck",
            quoted(&oldest.program),
            oldest.since.elapsed(),
        ))
    }

    /// The number of stuck spawns, as it changes.
    pub fn count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

/// A spawn waiting for its exec, registered until dropped.
#[derive(Debug)]
pub(crate) struct WaitingSpawn<'a> {
    spawns: &'a StuckSpawns,
    key: u64,
}

impl Drop for WaitingSpawn<'_> {
    fn drop(&mut self) {
        let mut spawns = lock_unpoisoned(&self.spawns.spawns);
        if let Some(over) = spawns.waiting.remove(&self.key) {
            if over.stuck {
                tracing::info!(program = %quoted(&over.program), waited = ?over.since.elapsed(),
                    "a stuck spawn is over");
                self.spawns.count.send_replace(spawns.stuck_count());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: the runner must say which program hangs and for how
    /// long, and be ready again exactly when no spawn is stuck.
    /// Why it matters: the runner must say which program hangs and for how
    /// long, and be ready again exactly when no spawn is stuck.
    #[tokio::test]
    async fn a_stuck_spawn_is_named_until_it_is_over() {
        let spawns = Arc::new(StuckSpawns::new(Some(Duration::from_secs(2))));
        tokio::spawn(spawns.clone().watch());
        let mut count = spawns.count();
        let first = spawns
            .waiting("/mnt/fuse/tool", Instant::now() - Duration::from_secs(31))
            .unwrap();
        count.changed().await.unwrap();
        assert_eq!(*count.borrow_and_update(), 1);
        let second = spawns.waiting("/mnt/fuse/other", Instant::now()).unwrap();
        let quick = spawns.waiting("/bin/true", Instant::now()).unwrap();
        drop(quick);
        let reason = spawns.reason().unwrap();
        assert!(reason.contains("\"/mnt/fuse/tool\""), "{reason}");
        assert!(reason.contains("31."), "{reason}");
        assert!(reason.contains("1 spawn(s)"), "{reason}");
        // The watchdog wakes again when the second has waited the timeout.
        count.changed().await.unwrap();
        assert_eq!(*count.borrow_and_update(), 2);
        assert!(spawns.reason().unwrap().contains("2 spawn(s)"));
        drop(first);
        assert_eq!(*count.borrow_and_update(), 1);
        let reason = spawns.reason().unwrap();
        assert!(reason.contains("\"/mnt/fuse/other\""), "{reason}");
        drop(second);
        assert_eq!(spawns.reason(), None);
        assert_eq!(*count.borrow(), 0);
    }

    /// Why it matters: `'0s'` disables the check; nothing is registered.
    #[test]
    fn without_a_timeout_no_spawn_is_watched() {
        let spawns = StuckSpawns::new(None);
        assert!(spawns.waiting("/bin/true", Instant::now()).is_none());
        assert_eq!(spawns.reason(), None);
    }
}
