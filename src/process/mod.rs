//! Spawning actions and stopping them.
//!
//! - [`lookup`]: finding the program in the request's PATH.
//! - [`reaper`]: the single place that waits for children (exit status and
//!   each child's own rusage), which also reaps adopted orphans.
//! - [`spawn`]: building the child: its directory, root, identity, process
//!   group and descriptors, set up between fork and exec.
//! - [`terminate`]: graceful termination of a process group.
//! - [`privileges`]: whether the runner may do what its configuration asks
//!   of the kernel (switching identity, chroot).

pub mod lookup;
pub mod privileges;
pub mod reaper;
pub mod spawn;
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
