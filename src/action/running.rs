//! How many actions are alive, and the signal that stops them all.
//!
//! A dropped Run call returns at once while its action is still being
//! terminated (SIGTERM, the grace period, SIGKILL), detached from any call.
//! Decorators that must not act while such an action lives (cleaning,
//! `/tmp` symlinking, sampling a shared cgroup) and shutdown wait on
//! [`ActionsRunning`] rather than on the calls.

use std::sync::Arc;

use tokio::sync::watch;

/// The number of actions started and not yet gone (reaped and, with action
/// cgroups, their cgroup released), including those still being terminated
/// after their call was dropped. Cheap to clone; all clones count the same
/// actions.
#[derive(Debug, Clone)]
pub struct ActionsRunning(Arc<watch::Sender<usize>>);

impl Default for ActionsRunning {
    fn default() -> Self {
        ActionsRunning(Arc::new(watch::channel(0).0))
    }
}

impl ActionsRunning {
    /// Counts one action in until the returned guard is dropped.
    pub fn count_in(&self) -> RunningGuard {
        self.0.send_modify(|count| *count += 1);
        RunningGuard(self.0.clone())
    }

    /// The number of actions alive now.
    pub fn current(&self) -> usize {
        *self.0.borrow()
    }

    /// Whether no action is alive.
    pub fn is_idle(&self) -> bool {
        self.current() == 0
    }

    /// Returns once no action is alive.
    pub async fn wait_idle(&self) {
        let mut receiver = self.0.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = receiver.wait_for(|count| *count == 0).await;
    }
}

/// Keeps one action counted in [`ActionsRunning`] until dropped.
#[derive(Debug)]
pub struct RunningGuard(Arc<watch::Sender<usize>>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count = count.saturating_sub(1));
    }
}

/// Stops every running and future action, for shutdown: first gracefully
/// (SIGTERM, then SIGKILL at the end of the grace period), then, at an
/// operator's second signal, at once (SIGKILL). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(Arc<watch::Sender<Stopping>>);

/// How hard actions are being stopped; only ever rises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stopping {
    No,
    Terminate,
    Kill,
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        ShutdownSignal(Arc::new(watch::channel(Stopping::No).0))
    }
}

impl ShutdownSignal {
    /// Starts graceful termination of all running and future actions.
    pub fn terminate_all(&self) {
        self.raise(Stopping::Terminate);
    }

    /// Ends every action's grace period now: what is left of each is
    /// killed with SIGKILL (running and future actions alike).
    pub fn kill_all(&self) {
        self.raise(Stopping::Kill);
    }

    fn raise(&self, to: Stopping) {
        self.0.send_if_modified(|stopping| {
            let raised = *stopping < to;
            *stopping = (*stopping).max(to);
            raised
        });
    }

    /// Returns once [`Self::terminate_all`] (or [`Self::kill_all`]) was
    /// called.
    pub async fn terminating(&self) {
        self.reached(Stopping::Terminate).await;
    }

    /// Returns once [`Self::kill_all`] was called.
    pub async fn killing(&self) {
        self.reached(Stopping::Kill).await;
    }

    async fn reached(&self, level: Stopping) {
        let mut receiver = self.0.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = receiver.wait_for(|stopping| *stopping >= level).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiting_for_idle_ends_when_the_last_action_is_gone() {
        // Why it matters: cleaning must wait for an action terminating after
        // its call was dropped, and go ahead as soon as it is gone.
        let running = ActionsRunning::default();
        assert!(running.is_idle());
        let first = running.count_in();
        let second = running.clone().count_in();
        assert_eq!(running.current(), 2);
        let waiter = tokio::spawn({
            let running = running.clone();
            async move { running.wait_idle().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one action is still alive");
        drop(second);
        waiter.await.unwrap();
        assert!(running.is_idle());
    }

    #[tokio::test]
    async fn terminate_all_reaches_waiters_and_later_ones() {
        let shutdown = ShutdownSignal::default();
        let early = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.terminating().await }
        });
        shutdown.terminate_all();
        early.await.unwrap();
        // An action started after shutdown began sees it at once.
        shutdown.terminating().await;
    }

    #[tokio::test]
    async fn kill_all_also_terminates_and_terminate_all_does_not_kill() {
        // Why it matters: a second signal must reach actions that had not
        // yet been told to stop, and a first one must leave them their
        // grace period.
        let shutdown = ShutdownSignal::default();
        shutdown.terminate_all();
        let killing = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.killing().await }
        });
        tokio::task::yield_now().await;
        assert!(!killing.is_finished());
        shutdown.kill_all();
        killing.await.unwrap();
        shutdown.terminate_all();
        shutdown.killing().await;

        let killed_first = ShutdownSignal::default();
        killed_first.kill_all();
        killed_first.terminating().await;
    }
}
