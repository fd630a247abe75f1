//! How long the runner may take to stop: one deadline for every wait at
//! shutdown, and a second signal that cuts the waits on others short.
//!
//! Shutdown waits on things the runner does not control: clients that
//! never acknowledge the GOAWAY (a connection that sent only its preface),
//! event subscribers that stopped reading (a flow-control window of 0),
//! and the journal's final flush (a write to a hung NFS mount never
//! returns). Each of those would otherwise hold the runner forever, and a
//! supervisor's SIGKILL would then leave actions and their cgroups behind.
//!
//! So the clock starts once the runner stops waiting for actions to end by
//! themselves: at the first signal, or with `stopGracefully` when the last
//! action has ended (or at the second signal). From then on every wait ends
//! by the same deadline, [`shutdown_bound`] later: actions get their
//! `terminationGracePeriod` and the time to be killed and have their
//! cgroups removed, and clients and the journal get as long.
//!
//! A second signal ends actions' grace periods at once (after a graceful
//! stop, which let them run, the second terminates them and a third does
//! this): what is left of each is killed with SIGKILL, and its cgroup
//! removed, through the
//! action's own lifecycle (so its events and metrics still say how it
//! ended: terminated for shutdown, killed). Once they are gone (or at the
//! deadline) the waits on others are abandoned: connections are closed
//! and unwritten events are counted and logged.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cgroup::action::DEFAULT_CLEANUP_TIMEOUT;
use crate::process::terminate::KILLED_EXIT_TIMEOUT;

/// The longest the runner takes to exit once the clock has started:
/// `terminationGracePeriod`, then [`KILLED_EXIT_TIMEOUT`] for killed actions
/// to exit and [`DEFAULT_CLEANUP_TIMEOUT`] for their cgroups to be removed.
pub fn shutdown_bound(termination_grace_period: Duration) -> Duration {
    termination_grace_period + KILLED_EXIT_TIMEOUT + DEFAULT_CLEANUP_TIMEOUT
}

/// Why a wait at shutdown was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The shutdown deadline passed.
    DeadlinePassed,
    /// A second signal asked to stop waiting.
    Abandoned,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Cut::DeadlinePassed => "the shutdown deadline passed",
            Cut::Abandoned => "a second signal abandoned the wait",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Phase {
    /// Set when the clock starts; `None` while serving (or while actions
    /// are let finish).
    deadline: Option<Instant>,
    abandoned: bool,
}

/// The shutdown deadline, shared by every wait at shutdown. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownBound {
    bound: Duration,
    phase: Arc<watch::Sender<Phase>>,
}

impl ShutdownBound {
    /// A deadline `bound` after [`Self::start_clock`] is called.
    pub fn new(bound: Duration) -> Self {
        let phase = Phase {
            deadline: None,
            abandoned: false,
        };
        ShutdownBound {
            bound,
            phase: Arc::new(watch::Sender::new(phase)),
        }
    }

    /// How long after the clock starts every wait ends.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Starts the clock, once; later calls keep the first deadline.
    pub fn start_clock(&self) {
        let deadline = Instant::now() + self.bound;
        self.phase.send_if_modified(|phase| {
            let unset = phase.deadline.is_none();
            phase.deadline.get_or_insert(deadline);
            unset
        });
    }

    /// Ends the waits on others now (the clock starts too, for the waits
    /// on actions).
    pub fn abandon(&self) {
        self.start_clock();
        self.phase.send_modify(|phase| phase.abandoned = true);
    }

    /// Waits for `wait` until the deadline or a second signal.
    pub async fn bounded<F: Future>(&self, wait: F) -> Result<F::Output, Cut> {
        tokio::select! {
            output = wait => Ok(output),
            cut = self.cut(true) => Err(cut),
        }
    }

    /// Waits for `wait` until the deadline, whatever the signals: for what
    /// must still be done after a second signal (killing actions, removing
    /// their cgroups).
    pub async fn until_deadline<F: Future>(&self, wait: F) -> Result<F::Output, Cut> {
        tokio::select! {
            output = wait => Ok(output),
            cut = self.cut(false) => Err(cut),
        }
    }

    async fn cut(&self, on_abandon: bool) -> Cut {
        let mut phase = self.phase.subscribe();
        loop {
            let current = *phase.borrow_and_update();
            if on_abandon && current.abandoned {
                return Cut::Abandoned;
            }
            let deadline_passed = async {
                match current.deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = deadline_passed => return Cut::DeadlinePassed,
                // The sender lives in `self`: this cannot fail.
                _ = phase.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn no_wait_is_cut_before_the_clock_starts() {
        // Why it matters: with stopGracefully, actions (and their calls)
        // may run for as long as they take.
        let bound = ShutdownBound::new(BOUND);
        let waited = bound.bounded(tokio::time::sleep(BOUND * 10)).await;
        assert_eq!(waited, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_the_deadline_counted_from_the_clock_start() {
        // Why it matters: a client that never reads must not hold the
        // runner past the stated bound.
        let bound = ShutdownBound::new(BOUND);
        let start = Instant::now();
        bound.start_clock();
        tokio::time::sleep(BOUND / 2).await;
        bound.start_clock();
        let waited = bound.bounded(std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Cut::DeadlinePassed));
        assert_eq!(start.elapsed(), BOUND, "the first start counts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_signal_cuts_waits_on_others_but_not_on_actions() {
        // Why it matters: after a second signal, actions are still killed
        // and their cgroups removed before the runner exits.
        let bound = ShutdownBound::new(BOUND);
        let on_others = tokio::spawn({
            let bound = bound.clone();
            async move { bound.bounded(std::future::pending::<()>()).await }
        });
        let on_actions = tokio::spawn({
            let bound = bound.clone();
            async move { bound.until_deadline(std::future::pending::<()>()).await }
        });
        let start = Instant::now();
        bound.abandon();
        assert_eq!(on_others.await.unwrap(), Err(Cut::Abandoned));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(on_actions.await.unwrap(), Err(Cut::DeadlinePassed));
        assert_eq!(start.elapsed(), BOUND);
    }
}
