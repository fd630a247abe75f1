//! Stopping an action: SIGTERM, a grace period, then SIGKILL.
//!
//! bb_worker enforces action timeouts by cancelling the Run RPC, so this is
//! how every timed-out action ends. It reaches the whole process group (or,
//! with action cgroups, the whole cgroup), not only the direct child,
//! because build tools routinely fork helpers.

use std::future::Future;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::reaper::ChildExit;

/// How often an emptying process group is polled. Groups have no
/// notification for "now empty"; polling is cheap and bounded by the grace
/// period.
const GROUP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long to wait for a leader to exit after SIGKILL. A process in
/// uninterruptible sleep (hung NFS or FUSE) does not die even then; the
/// caller must go on (and, with action cgroups, mark the runner dirty)
/// rather than wait forever. The reaper still collects it if it ever exits.
pub const KILLED_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits (bounded by [`KILLED_EXIT_TIMEOUT`]) for the leader after SIGKILL.
async fn killed_leader_exit(exit: &mut oneshot::Receiver<ChildExit>) -> Option<ChildExit> {
    match tokio::time::timeout(KILLED_EXIT_TIMEOUT, exit).await {
        Ok(result) => result.ok(),
        Err(_) => {
            tracing::error!(
                "an action process did not exit within {KILLED_EXIT_TIMEOUT:?} of SIGKILL"
            );
            None
        }
    }
}

/// How a terminated action ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminationOutcome {
    /// The process group was gone within the grace period after SIGTERM.
    ExitedAfterSigterm,
    /// SIGKILL was needed at the grace deadline.
    KilledAtGraceDeadline,
    /// SIGKILL was sent before the grace deadline, which was cut short (a
    /// second shutdown signal).
    KilledBeforeGraceDeadline,
}

impl std::fmt::Display for TerminationOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TerminationOutcome::ExitedAfterSigterm => "stopped by SIGTERM",
            TerminationOutcome::KilledAtGraceDeadline => {
                "killed with SIGKILL at the grace deadline"
            }
            TerminationOutcome::KilledBeforeGraceDeadline => {
                "killed with SIGKILL before the grace deadline"
            }
        })
    }
}

/// Sends `signal` to every process in the group led by `leader`. An empty
/// group is not an error.
pub fn signal_group(leader: i32, signal: Signal) {
    match killpg(Pid::from_raw(leader), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => tracing::warn!(leader, %signal, %errno, "cannot signal process group"),
    }
}

/// Whether any process is left in the group led by `leader`.
pub fn group_exists(leader: i32) -> bool {
    !matches!(killpg(Pid::from_raw(leader), None), Err(Errno::ESRCH))
}

/// The processes of one action, as the runner can reach them: a process
/// group ([`ProcessGroup`]) or, with action cgroups, everything in the
/// action's cgroup (implemented by [`crate::action`]).
pub trait ProcessTree: Send + Sync {
    /// Sends SIGTERM to every process of the tree.
    fn terminate(&self) -> impl Future<Output = ()> + Send;
    /// SIGKILLs every process of the tree.
    fn kill(&self) -> impl Future<Output = ()> + Send;
    /// Whether no process of the tree is left.
    fn is_empty(&self) -> impl Future<Output = bool> + Send;
}

/// The process group led by this pid.
#[derive(Debug, Clone, Copy)]
pub struct ProcessGroup(pub i32);

impl ProcessTree for ProcessGroup {
    async fn terminate(&self) {
        signal_group(self.0, Signal::SIGTERM);
    }

    async fn kill(&self) {
        signal_group(self.0, Signal::SIGKILL);
    }

    async fn is_empty(&self) -> bool {
        !group_exists(self.0)
    }
}

/// SIGTERM to every process of the action, wait up to `grace` for all of
/// them to be gone (or until `cut_short` resolves), then SIGKILL whatever
/// is left and wait (bounded) for the leader's exit. With a cgroup,
/// verifying that it is empty and removing it is the caller's next step.
pub async fn terminate(
    tree: &impl ProcessTree,
    exit: &mut oneshot::Receiver<ChildExit>,
    grace: Duration,
    cut_short: impl Future<Output = ()>,
) -> (Option<ChildExit>, TerminationOutcome) {
    tree.terminate().await;
    let deadline = Instant::now() + grace;
    let mut leader_exit = None;
    tokio::pin!(cut_short);
    let mut cut = false;
    let outcome = loop {
        tokio::select! {
            result = &mut *exit, if leader_exit.is_none() => {
                // A closed channel means the reaper lost the child, which
                // cannot happen while it is registered; treat as gone.
                leader_exit = Some(result.ok());
            }
            _ = &mut cut_short, if !cut => cut = true,
            _ = tokio::time::sleep(GROUP_POLL_INTERVAL) => {}
        }
        if leader_exit.is_some() && tree.is_empty().await {
            break TerminationOutcome::ExitedAfterSigterm;
        }
        if cut {
            break TerminationOutcome::KilledBeforeGraceDeadline;
        }
        if Instant::now() >= deadline {
            break TerminationOutcome::KilledAtGraceDeadline;
        }
    };
    tree.kill().await;
    let child_exit = match leader_exit {
        Some(exit) => exit,
        None => killed_leader_exit(exit).await,
    };
    (child_exit, outcome)
}
