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
//! - [`clone`]: the mechanism only: `clone3` or glibc's `clone` with
//!   `CLONE_VFORK`, the child's stack and the page it reports through.
//! - [`spec`]: what a spawn is asked for and what it answers (the action's
//!   description, the values prepared from it, the step that failed),
//!   shared by the front door, the spawn server and the child.
//!
//! Around it:
//! - [`lookup`]: finding the program in the request's PATH.
//! - [`reaper`]: the single place that waits for children (exit status and
//!   each child's own rusage), which also reaps adopted orphans.
//! - [`terminate`]: graceful termination of a process group.
//! - [`privileges`]: whether the runner may do what its configuration asks
//!   of the kernel (switching identity, chroot).

pub mod child;
pub mod clone;
pub mod lookup;
pub mod privileges;
pub mod reaper;
pub mod spawn;
pub mod spawn_server;
pub mod spec;
pub mod terminate;

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

/// Lowers this process's `oom_score_adj` (file at `path`, normally
/// [`child::DEFAULT_PROC_SELF_OOM_SCORE_ADJ`]) by
/// [`RUNNER_OOM_SCORE_ADJ_OFFSET`]. Returns the initial value, which actions
/// should get back, when lowering succeeded; lowering needs
/// CAP_SYS_RESOURCE, and without it the runner keeps its value (logged).
pub fn lower_own_oom_score_adj(path: &std::path::Path) -> Option<i32> {
    let initial: i32 = match std::fs::read_to_string(path).map(|text| text.trim().parse()) {
        Ok(Ok(value)) => value,
        Ok(Err(err)) => {
            tracing::warn!(path = %path.display(), %err, "cannot parse oom_score_adj");
            return None;
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot read oom_score_adj");
            return None;
        }
    };
    let lowered = (initial - RUNNER_OOM_SCORE_ADJ_OFFSET).max(-1000);
    if lowered == initial {
        return None;
    }
    match std::fs::write(path, lowered.to_string()) {
        Ok(()) => {
            tracing::info!(
                initial,
                lowered,
                "lowered the runner's oom_score_adj; actions keep the initial value"
            );
            Some(initial)
        }
        Err(err) => {
            // Expected for an unprivileged runner; not worth a warning.
            tracing::info!(%err, initial, "cannot lower the runner's oom_score_adj (needs CAP_SYS_RESOURCE); keeping it");
            None
        }
    }
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
}
