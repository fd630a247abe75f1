//! Stopping a process group: SIGTERM, a grace period, then SIGKILL.
//!
//! bb_worker enforces action timeouts by cancelling the Run RPC, so this is
//! how every timed-out action ends. It kills the whole process group, not
//! only the direct child, because build tools routinely fork helpers.

use std::path::{Path, PathBuf};
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

/// SIGTERM to the group, wait up to `grace` for the whole group to be gone,
/// then SIGKILL whatever is left, and wait for the leader's exit.
pub async fn terminate_group(
    leader: i32,
    exit: &mut oneshot::Receiver<ChildExit>,
    grace: Duration,
) -> (Option<ChildExit>, TerminationOutcome) {
    signal_group(leader, Signal::SIGTERM);
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
        if leader_exit.is_some() && !group_exists(leader) {
            break TerminationOutcome::ExitedAfterSigterm;
        }
        if Instant::now() >= deadline {
            break TerminationOutcome::KilledAtGraceDeadline;
        }
    };
    signal_group(leader, Signal::SIGKILL);
    let child_exit = match leader_exit {
        Some(exit) => exit,
        None => killed_leader_exit(exit).await,
    };
    (child_exit, outcome)
}

/// Like [`terminate_group`], for an action in its own cgroup: SIGTERM to
/// every process in the cgroup (daemons that left the process group
/// included), wait up to `grace` for the cgroup to empty, then
/// `cgroup.kill`, and wait for the leader's exit. Verifying that the cgroup
/// is empty and removing it is the caller's next step.
pub async fn terminate_cgroup(
    cgroup: &Path,
    exit: &mut oneshot::Receiver<ChildExit>,
    grace: Duration,
) -> (Option<ChildExit>, TerminationOutcome) {
    let path: PathBuf = cgroup.to_path_buf();
    let in_blocking = |work: fn(&Path) -> bool| {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || work(&path))
                .await
                .unwrap_or(true)
        }
    };
    in_blocking(|path| {
        signal_all(path, Signal::SIGTERM);
        true
    })
    .await;
    let deadline = Instant::now() + grace;
    let mut leader_exit = None;
    let outcome = loop {
        if leader_exit.is_none() {
            tokio::select! {
                result = &mut *exit => leader_exit = Some(result.ok()),
                _ = tokio::time::sleep(GROUP_POLL_INTERVAL) => {}
            }
        } else {
            tokio::time::sleep(GROUP_POLL_INTERVAL).await;
        }
        let populated = in_blocking(|path| is_populated(path).unwrap_or(true)).await;
        if leader_exit.is_some() && !populated {
            break TerminationOutcome::ExitedAfterSigterm;
        }
        if Instant::now() >= deadline {
            break TerminationOutcome::KilledAtGraceDeadline;
        }
    };
    if outcome == TerminationOutcome::KilledAtGraceDeadline {
        in_blocking(|path| {
            if let Err(err) = kill_cgroup(path) {
                tracing::warn!(%err, "cgroup.kill failed");
            }
            true
        })
        .await;
    }
    let child_exit = match leader_exit {
        Some(exit) => exit,
        None => killed_leader_exit(exit).await,
    };
    (child_exit, outcome)
}
