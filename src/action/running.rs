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

/// Stops every running and future action, for shutdown. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(Arc<watch::Sender<bool>>);

impl Default for ShutdownSignal {
    fn default() -> Self {
        ShutdownSignal(Arc::new(watch::channel(false).0))
    }
}

impl ShutdownSignal {
    /// Starts graceful termination of all running and future actions.
    pub fn terminate_all(&self) {
        self.0.send_replace(true);
    }

    /// Returns once [`Self::terminate_all`] was called.
    pub async fn terminating(&self) {
        let mut receiver = self.0.subscribe();
        let _ = receiver.wait_for(|terminate| *terminate).await;
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
}
