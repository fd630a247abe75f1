//! Spawning actions and stopping them.
//!
//! Creating a child, from the top down (none imports from one listed before
//! it):
//! - [`spawn`]: the front door: preparing a child from the action's
//!   description and having it created, by the spawn server or here; and
//!   choosing once, at startup, how children are created.
//! - [`spawn_server`]: a small process of ours that creates actions'
//!   processes as children of the runner, sparing the runner the copy.
//! - [`child`]: the child between clone and exec (its cgroup, signals,
//!   process group, descriptors, root, directory and identity, set up with
//!   raw system calls), and creating it in this process.
//! - [`isolation`]: the namespaces of an action's own, set up by the
//!   child; [`init`]: the init of its PID namespace, and the action's exit
//!   as the runner learns it from there; [`isolation_probe`]: creating the
//!   configured namespaces once at startup; [`user_namespace`]: making
//!   them inside a user namespace, for a runner without CAP_SYS_ADMIN.
//! - [`clone`]: the mechanism only: `clone3` or glibc's `clone`, and the
//!   child's stack.
//! - [`spec`]: what a spawn is asked for and what it answers (the action's
//!   description, the values prepared from it, the step that failed),
//!   shared by the front door, the spawn server and the child.
//! - [`status`]: the channel of each child through which it says its pid
//!   and the step that failed, whose end of file is its exec, and through
//!   which the runner cancels it; [`exit_report`]: the pipe through which
//!   an isolated action's init reports the action's exit.
//! - [`stuck`]: spawns whose exec has not returned within
//!   `stuckSpawnTimeout`, which make the runner refuse work.
//! - [`call`]: what a spawn knows of its Run call: its deadline (on the
//!   monotonic clock the spawn server and the child read) and its end.
//!
//! Around it:
//! - [`lookup`]: finding the program in the request's PATH.
//! - [`reaper`]: the single place that waits for children (exit status and
//!   each child's own rusage), which also reaps adopted orphans.
//! - [`terminate`]: graceful termination of a process group.
//! - [`descriptors`]: descriptors inherited from the runner's parent,
//!   closed at every exec so that no action gets them.
//! - [`privileges`]: whether the runner may do what its configuration asks
//!   of the kernel (switching identity, chroot).

pub mod call;
pub mod child;
pub mod clone;
pub mod descriptors;
pub mod exit_report;
pub mod init;
pub mod input_root_mounts;
pub mod isolation;
pub mod isolation_probe;
pub mod lookup;
pub mod privileges;
pub mod reaper;
pub mod spawn;
pub mod spawn_server;
pub mod spec;
pub mod status;
pub mod stuck;
pub mod terminate;
pub mod user_namespace;

use std::path::{Path, PathBuf};

/// Where the process table is mounted; everything that reads it takes the
/// root as a parameter so tests can point it elsewhere.
pub const DEFAULT_PROC_ROOT: &str = "/proc";

/// The name of a signal without its `SIG` prefix, as bb_runner reports it in
/// `termination_signal` (`KILL`, `SEGV`, `RTMIN+3`).
pub fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(known) => known.as_str().trim_start_matches("SIG").to_string(),
        Err(_) => {
            let rtmin = libc::SIGRTMIN();
            let rtmax = libc::SIGRTMAX();
            if (rtmin..=rtmax).contains(&signal) {
                format!("RTMIN+{}", signal - rtmin)
            } else {
                format!("signal {signal}")
            }
        }
    }
}

/// How far the runner lowers its own `oom_score_adj` below its initial
/// value: under memory pressure the kernel should pick an action, whose
/// failure bb_worker can retry, before the runner that serves all of them.
pub const RUNNER_OOM_SCORE_ADJ_OFFSET: i32 = 500;

/// The runner's `oom_score_adj`, lowered by [`lower_own_oom_score_adj`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoweredOomScoreAdj {
    /// What the runner started with, which actions should get back.
    pub initial: i32,
    /// What the runner has now.
    pub lowered: i32,
}

/// Why the runner's `oom_score_adj` was not lowered; it keeps its value.
#[derive(Debug, thiserror::Error)]
pub enum OomScoreAdjError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: PathBuf,
        source: std::num::ParseIntError,
    },
    /// The kernel refused: lowering needs CAP_SYS_RESOURCE, which an
    /// unprivileged runner lacks.
    #[error(
        "cannot lower the runner's oom_score_adj (needs CAP_SYS_RESOURCE); keeping {initial}: {source}"
    )]
    Lower {
        initial: i32,
        source: std::io::Error,
    },
}

/// Lowers this process's `oom_score_adj` (file at `path`, normally
/// [`child::DEFAULT_PROC_SELF_OOM_SCORE_ADJ`]) by
/// [`RUNNER_OOM_SCORE_ADJ_OFFSET`], down to the floor of -1000. `None`
/// when it already is at the floor. The caller decides how loudly to say
/// what happened: how much a refusal matters depends on the deployment.
pub fn lower_own_oom_score_adj(
    path: &Path,
) -> Result<Option<LoweredOomScoreAdj>, OomScoreAdjError> {
    let text = std::fs::read_to_string(path).map_err(|source| OomScoreAdjError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let initial: i32 = text
        .trim()
        .parse()
        .map_err(|source| OomScoreAdjError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    let lowered = (initial - RUNNER_OOM_SCORE_ADJ_OFFSET).max(-1000);
    if lowered == initial {
        return Ok(None);
    }
    std::fs::write(path, lowered.to_string())
        .map_err(|source| OomScoreAdjError::Lower { initial, source })?;
    Ok(Some(LoweredOomScoreAdj { initial, lowered }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_drop_the_sig_prefix() {
        assert_eq!(signal_name(libc::SIGKILL), "KILL");
        assert_eq!(signal_name(libc::SIGSEGV), "SEGV");
        assert_eq!(signal_name(libc::SIGTERM), "TERM");
        assert_eq!(signal_name(libc::SIGRTMIN() + 3), "RTMIN+3");
    }

    fn oom_score_adj_file(value: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oom_score_adj");
        std::fs::write(&path, value).unwrap();
        (dir, path)
    }

    /// Actions get back the value the runner started with, so the runner
    /// must know it, and the file must hold the lowered one.
    #[test]
    fn lowering_writes_the_lowered_value_and_returns_the_initial_one() {
        let (_dir, path) = oom_score_adj_file("200\n");
        let lowered = lower_own_oom_score_adj(&path).unwrap();
        assert_eq!(
            lowered,
            Some(LoweredOomScoreAdj {
                initial: 200,
                lowered: -300
            })
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "-300");
    }

    /// The kernel's floor is -1000: lower stops there, and a runner
    /// already there has nothing to give back to actions.
    #[test]
    fn lowering_stops_at_the_floor() {
        let (_dir, path) = oom_score_adj_file("-800");
        let lowered = lower_own_oom_score_adj(&path).unwrap().unwrap();
        assert_eq!(lowered.lowered, -1000);
        let (_dir, path) = oom_score_adj_file("-1000");
        assert_eq!(lower_own_oom_score_adj(&path).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "-1000");
    }

    /// A file that cannot be read or understood is an error naming it,
    /// and nothing is written.
    #[test]
    fn an_unreadable_value_is_an_error_naming_the_file() {
        let (dir, path) = oom_score_adj_file("lots");
        let err = lower_own_oom_score_adj(&path).unwrap_err();
        assert!(matches!(err, OomScoreAdjError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("oom_score_adj"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "lots");
        let missing = dir.path().join("missing");
        let err = lower_own_oom_score_adj(&missing).unwrap_err();
        assert!(matches!(err, OomScoreAdjError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
