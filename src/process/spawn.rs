//! Building an action's process: what happens between fork and exec.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use super::reaper::{reaper, SpawnedChild};

/// The identity an action runs as (`runCommandsAs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: u32,
    pub group_id: u32,
    pub additional_group_ids: Vec<u32>,
}

/// Everything needed to start one action.
#[derive(Debug)]
pub struct ProcessSpec {
    /// Path handed to execve: absolute, or relative to the working
    /// directory (always containing a slash, so no PATH search happens).
    pub program: String,
    /// argv, including argv[0] exactly as the request gave it.
    pub arguments: Vec<String>,
    /// The complete environment.
    pub environment: Vec<(String, String)>,
    /// Directory the child starts in (`O_PATH` descriptor).
    pub working_directory: OwnedFd,
    /// When set, the child chroots into this directory first.
    pub chroot_directory: Option<OwnedFd>,
    /// When set, the child drops to this identity before exec.
    pub identity: Option<Identity>,
    pub stdout: File,
    pub stderr: File,
}

/// Starts the process described by `spec` as the leader of a new process
/// group, registered with the reaper.
pub fn spawn(spec: ProcessSpec) -> io::Result<SpawnedChild> {
    let mut command = Command::new(&spec.program);
    if let Some((argv0, rest)) = spec.arguments.split_first() {
        command.arg0(argv0).args(rest);
    }
    command
        .env_clear()
        .envs(spec.environment.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(spec.stdout)
        .stderr(spec.stderr)
        // The action leads its own process group, so that termination
        // reaches every process it forked without touching the runner.
        .process_group(0);

    let working_directory = spec.working_directory.as_raw_fd();
    let chroot_directory = spec.chroot_directory.as_ref().map(|fd| fd.as_raw_fd());
    let identity = spec.identity.clone().map(|identity| {
        let groups: Vec<libc::gid_t> = identity.additional_group_ids.clone();
        (identity, groups)
    });
    let dot = CString::new(".").expect("no NUL in a literal");
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe functions may be called. It calls only raw
    // system calls (fchdir, chroot, setgroups, setgid, setuid) on values
    // prepared before the fork, and allocates nothing. The descriptors it
    // uses are kept open by `spec`, which outlives `spawn` below.
    unsafe {
        command.pre_exec(move || {
            if let Some(root) = chroot_directory {
                check(libc::fchdir(root))?;
                check(libc::chroot(dot.as_ptr()))?;
            }
            // After a chroot this descriptor still names the working
            // directory, which lies inside the new root.
            check(libc::fchdir(working_directory))?;
            if let Some((identity, groups)) = &identity {
                // Groups first, then gid, then uid: after setuid we would
                // no longer be allowed to change the others.
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setgid(identity.group_id))?;
                check(libc::setuid(identity.user_id))?;
            }
            Ok(())
        });
    }
    let spawned = reaper().spawn(&mut command);
    drop(spec.working_directory);
    drop(spec.chroot_directory);
    spawned
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
