//! The local runner: the innermost link of the chain, adapting Run calls
//! to the action lifecycle ([`crate::action`]).
//!
//! It does what belongs to the call rather than to the action: refuses a
//! request that cannot be executed (no program, NUL bytes, environment
//! keys that would reach the program as another variable, too large), refuses work while an action cgroup is
//! dirty, admits one action at a time when a shared cgroup is sampled, runs
//! the action's life in a task detached from the call (so that a call
//! dropped at any point, which is how bb_worker enforces timeouts, still
//! gets its action stopped and released), and turns the outcome into the
//! response or the error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::action::prepare::{check_request, Preparation};
use crate::action::{Actions, CallGone, PlacementPolicy};
use crate::build_directory::{BuildDirectory, PathError};
use crate::fault::{blocking, RunnerError};
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

use super::{CallContext, Runner};

/// Runs actions as child processes. See the module documentation.
pub struct LocalRunner {
    actions: Arc<Actions>,
    build_directory: Arc<BuildDirectory>,
    /// With a sampled shared cgroup: whether an action is being sampled.
    sampling: AtomicBool,
}

impl LocalRunner {
    /// A runner of `actions`, whose requests name paths in
    /// `build_directory`.
    pub fn new(actions: Arc<Actions>, build_directory: Arc<BuildDirectory>) -> Self {
        LocalRunner {
            actions,
            build_directory,
            sampling: AtomicBool::new(false),
        }
    }

    /// While an action cgroup could not be cleaned, this runner cannot
    /// promise that nothing of an earlier action is still running: refuse
    /// work so that bb_worker stops trusting it until it is clean. Likewise
    /// while a spawn's exec has not returned within `stuckSpawnTimeout`:
    /// its storage hangs, and work that needs it would hang too.
    fn refuse_if_dirty(&self) -> Result<(), RunnerError> {
        if let Some(reason) = self.actions.stuck_spawns().reason() {
            return Err(RunnerError::unavailable(format!(
                "a spawn is stuck: {reason}"
            )));
        }
        let PlacementPolicy::ActionCgroups { manager, .. } = self.actions.placement() else {
            return Ok(());
        };
        match manager.dirty_reason() {
            Some(reason) => Err(RunnerError::unavailable(reason)),
            None => Ok(()),
        }
    }

    /// With a sampled shared cgroup, admits one action at a time: the
    /// deltas of a cgroup all actions share belong to one action only if no
    /// other ran meanwhile. Waits for an action still being terminated after
    /// its call was dropped, whose last moments would otherwise be charged
    /// to this one.
    async fn admit(&self) -> Result<Option<SamplingSlot<'_>>, RunnerError> {
        let PlacementPolicy::SharedCgroup { cgroup } = self.actions.placement() else {
            return Ok(None);
        };
        if self
            .sampling
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(RunnerError::Internal(format!(
                "another action is already running, and cgroup resource usage sampling \
                 (sampleCgroupResourceUsage) measures the cgroup {} that all actions of this \
                 runner share, so concurrent actions would be charged for each other's usage: \
                 let the worker send this runner one action at a time (concurrency 1)",
                cgroup.display()
            )));
        }
        let slot = SamplingSlot(&self.sampling);
        self.actions.running().wait_idle().await;
        Ok(Some(slot))
    }
}

/// CheckReadiness's answer for `path`: bb_runner answers INTERNAL for a
/// readiness path that does not exist.
fn path_exists(build_directory: &BuildDirectory, path: &str) -> Result<(), RunnerError> {
    match build_directory.check_exists(path, "path") {
        Ok(()) => Ok(()),
        Err(err @ PathError::NotFound { .. }) => Err(RunnerError::Internal(err.to_string())),
        Err(err) => Err(err.into()),
    }
}

/// Marks an action as being sampled until dropped, which also happens when
/// the Run future is dropped because its call was cancelled.
struct SamplingSlot<'a>(&'a AtomicBool);

impl Drop for SamplingSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[tonic::async_trait]
impl Runner for LocalRunner {
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError> {
        self.refuse_if_dirty()?;
        // Where actions are prepared on the async worker (a local build
        // directory, which cannot block for long), the path is looked up
        // there too: bb_worker asks before every action it takes, and the
        // blocking pool's hand-off cost each call two more thread switches.
        match Preparation::of(&self.build_directory) {
            Preparation::OnWorker => path_exists(&self.build_directory, &request.path),
            Preparation::OnBlockingPool => {
                let build_directory = self.build_directory.clone();
                blocking(move || path_exists(&build_directory, &request.path)).await
            }
        }
    }

    async fn run(
        &self,
        request: RunRequest,
        call: CallContext,
    ) -> Result<RunResponse, RunnerError> {
        check_request(&request)?;
        self.refuse_if_dirty()?;
        let _slot = self.admit().await?;

        // Dropping `dropped` (because this future was dropped) tells the
        // action that its call is gone. Counting it in before the task
        // starts keeps it counted from the first moment.
        let (_dropped, gone) = oneshot::channel::<()>();
        let running = self.actions.count_in();
        let life = self.actions.clone().run(
            request,
            CallGone::new(gone, call.deadline),
            call.trace,
            running,
        );
        let outcome = tokio::spawn(life)
            .await
            .map_err(|err| RunnerError::Internal(format!("action supervisor failed: {err}")))?;
        outcome.into_result()
    }
}
