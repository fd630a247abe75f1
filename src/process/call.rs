//! What a spawn knows of the Run call it is for: when the call's deadline
//! passes ([`SpawnDeadline`], on the kernel's monotonic clock, so that the
//! spawn server and the child can read it without the runner), and
//! whether the call has ended ([`CallGone`]).
//!
//! A call whose deadline passed, or that ended, creates nothing: the front
//! door ([`super::spawn`]) checks before it asks anyone, the spawn server
//! before it creates the child, and the child as its last step before
//! `execve` (see [`super::child`]). Only a child already inside `execve`
//! (blocked on a FUSE or NFS read) when its call ends can still run; the
//! action's supervisor stops it as soon as the exec returns.

use tokio::sync::oneshot;

use super::spec::{SpawnError, SpawnStep};
use tokio::time::Instant;

/// A point in time on `CLOCK_MONOTONIC`, which every process on the host
/// reads alike: the runner converts the call's deadline into it, the
/// spawn server and the child compare it with the clock by a raw system
/// call, allocating nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpawnDeadline {
    /// Nanoseconds on `CLOCK_MONOTONIC`.
    nanoseconds: u64,
}

impl SpawnDeadline {
    /// The monotonic time of `deadline` (an instant of this process).
    pub fn at(deadline: Instant) -> SpawnDeadline {
        let now = Instant::now();
        let clock = monotonic_nanoseconds();
        let nanoseconds = match deadline.checked_duration_since(now) {
            Some(left) => clock.saturating_add(left.as_nanos().min(u128::from(u64::MAX)) as u64),
            None => clock.saturating_sub(
                now.duration_since(deadline)
                    .as_nanos()
                    .min(u128::from(u64::MAX)) as u64,
            ),
        };
        SpawnDeadline { nanoseconds }
    }

    /// The deadline as nanoseconds on `CLOCK_MONOTONIC`, for the spawn
    /// server's wire.
    pub(crate) fn nanoseconds(self) -> u64 {
        self.nanoseconds
    }

    /// The deadline `nanoseconds` on `CLOCK_MONOTONIC` names.
    pub(crate) fn from_nanoseconds(nanoseconds: u64) -> SpawnDeadline {
        SpawnDeadline { nanoseconds }
    }

    /// Whether the deadline has passed. One raw system call, nothing
    /// allocated: the child between clone and exec calls it.
    pub(crate) fn passed(self) -> bool {
        monotonic_nanoseconds() >= self.nanoseconds
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds, read with the raw system call
/// (safe between clone and exec: no vDSO data, no allocation).
fn monotonic_nanoseconds() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, a valid local;
    // CLOCK_MONOTONIC always exists, so it cannot fail.
    unsafe {
        libc::syscall(
            libc::SYS_clock_gettime,
            libc::CLOCK_MONOTONIC,
            &mut now as *mut libc::timespec,
        )
    };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// The end of a Run call, as its action sees it: resolves when the call is
/// dropped (its deadline passed, which the deadline tells apart, or its
/// caller cancelled it).
#[derive(Debug)]
pub struct CallGone {
    /// Closed when the call's future is dropped.
    dropped: oneshot::Receiver<()>,
    /// The call's deadline, if it had one.
    deadline: Option<Instant>,
    /// Whether `dropped` was seen closed (a oneshot is awaited once).
    seen: bool,
}

impl CallGone {
    /// The end of a call with `deadline`, told by `dropped` closing.
    pub fn new(dropped: oneshot::Receiver<()>, deadline: Option<Instant>) -> CallGone {
        CallGone {
            dropped,
            deadline,
            seen: false,
        }
    }

    /// The call's deadline, if it had one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The deadline as the spawn server and the child read it.
    pub fn spawn_deadline(&self) -> Option<SpawnDeadline> {
        self.deadline.map(SpawnDeadline::at)
    }

    /// Whether the call's deadline has passed by now.
    pub fn deadline_passed(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| deadline <= Instant::now())
    }

    /// Whether the call is over now: its deadline passed, or it was
    /// dropped. Does not wait.
    pub fn is_over(&mut self) -> bool {
        if !self.seen
            && matches!(
                self.dropped.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            )
        {
            self.seen = true;
        }
        self.seen || self.deadline_passed()
    }

    /// The error of a spawn that was not made because the call is over:
    /// its deadline passed ([`SpawnStep::Deadline`]), or it was cancelled.
    pub fn over_error(&self) -> SpawnError {
        if self.deadline_passed() {
            SpawnError {
                step: SpawnStep::Deadline,
                source: std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
            }
        } else {
            SpawnError {
                step: SpawnStep::Cancelled,
                source: std::io::Error::from_raw_os_error(libc::ECANCELED),
            }
        }
    }

    /// Resolves once the call is gone; at once when it was seen gone
    /// before. Cancel-safe.
    pub async fn gone(&mut self) {
        if !self.seen {
            let _ = (&mut self.dropped).await;
            self.seen = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Why it matters: the child and the spawn server decide from this
    /// value alone whether a call's deadline passed.
    #[test]
    fn a_deadline_has_passed_only_once_its_time_came() {
        let past = SpawnDeadline::at(Instant::now() - Duration::from_millis(5));
        assert!(past.passed());
        let future = SpawnDeadline::at(Instant::now() + Duration::from_secs(60));
        assert!(!future.passed());
        assert_eq!(
            SpawnDeadline::from_nanoseconds(future.nanoseconds()),
            future
        );
    }

    /// Why it matters: a call dropped before its action was created must
    /// be seen as over, and stay over for every later wait.
    #[tokio::test]
    async fn a_dropped_call_is_over_and_stays_gone() {
        let (call, dropped) = oneshot::channel::<()>();
        let mut gone = CallGone::new(dropped, None);
        assert!(!gone.is_over());
        drop(call);
        assert!(gone.is_over());
        gone.gone().await;
        gone.gone().await;
        let (_call, dropped) = oneshot::channel::<()>();
        let mut expired = CallGone::new(dropped, Some(Instant::now()));
        assert!(expired.is_over());
    }
}
