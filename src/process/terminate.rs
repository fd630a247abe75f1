//! Stopping an action: SIGTERM, a grace period, then SIGKILL.
//!
//! bb_worker enforces action timeouts by cancelling the Run RPC, so this is
//! how every timed-out action ends. It reaches the whole process group (or,
//! with action cgroups, the whole cgroup), not only the direct child,
//! because build tools routinely fork helpers.

use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::reaper::ChildExit;
use crate::cgroup::action::{is_populated, kill_cgroup, signal_all};

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
}

impl std::fmt::Display for TerminationOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TerminationOutcome::ExitedAfterSigterm => "stopped by SIGTERM",
            TerminationOutcome::KilledAtGraceDeadline => {
                "killed with SIGKILL at the grace deadline"
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

/// The processes of one action, as the runner can reach them.
#[derive(Debug, Clone, Copy)]
pub enum ProcessTree<'a> {
    /// The process group led by this pid.
    Group(i32),
    /// Everything in this cgroup and below it, including daemons that left
    /// the process group.
    Cgroup(&'a Path),
}

impl ProcessTree<'_> {
    /// Sends SIGTERM to every process of the tree.
    async fn terminate(&self) {
        match *self {
            ProcessTree::Group(leader) => signal_group(leader, Signal::SIGTERM),
            ProcessTree::Cgroup(cgroup) => {
                let cgroup = cgroup.to_path_buf();
                let _ =
                    tokio::task::spawn_blocking(move || signal_all(&cgroup, Signal::SIGTERM)).await;
            }
        }
    }

    /// SIGKILLs every process of the tree (a cgroup atomically, with
    /// `cgroup.kill`).
    async fn kill(&self) {
        match *self {
            ProcessTree::Group(leader) => signal_group(leader, Signal::SIGKILL),
            ProcessTree::Cgroup(cgroup) => {
                let cgroup = cgroup.to_path_buf();
                let killed = tokio::task::spawn_blocking(move || kill_cgroup(&cgroup)).await;
                if let Ok(Err(err)) = killed {
                    tracing::warn!(%err, "cgroup.kill failed");
                }
            }
        }
    }

    /// Whether no process of the tree is left.
    async fn is_empty(&self) -> bool {
        match *self {
            ProcessTree::Group(leader) => !group_exists(leader),
            ProcessTree::Cgroup(cgroup) => {
                let cgroup = cgroup.to_path_buf();
                tokio::task::spawn_blocking(move || matches!(is_populated(&cgroup), Ok(false)))
                    .await
                    .unwrap_or(false)
            }
        }
    }
}

/// SIGTERM to every process of the action, wait up to `grace` for all of
/// them to be gone, then SIGKILL whatever is left and wait (bounded) for
/// the leader's exit. With a cgroup, verifying that it is empty and
/// removing it is the caller's next step.
pub async fn terminate(
    tree: ProcessTree<'_>,
    exit: &mut oneshot::Receiver<ChildExit>,
    grace: Duration,
) -> (Option<ChildExit>, TerminationOutcome) {
    tree.terminate().await;
    let deadline = Instant::now() + grace;
    let mut leader_exit = None;
    let outcome = loop {
        if leader_exit.is_none() {
            tokio::select! {
                result = &mut *exit => {
                    // A closed channel means the reaper lost the child, which
                    // cannot happen while it is registered; treat as gone.
                    leader_exit = Some(result.ok());
                }
                _ = tokio::time::sleep(GROUP_POLL_INTERVAL) => {}
            }
        } else {
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }
        if leader_exit.is_some() && tree.is_empty().await {
            break TerminationOutcome::ExitedAfterSigterm;
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
