//! The mountpoints a chrooted action's input root must have: each mount
//! the action gets in its root (`isolation.pid`'s `proc`,
//! `isolation.dev`'s `dev`, every `inputRootMounts` entry) goes onto
//! something the input root already holds, since the runner never creates
//! anything there (it may be bb_worker's read-only virtual directory).
//!
//! Checked when the action is prepared, before anything is spawned, as a
//! typed fact: a missing mountpoint is the request's fault (its input
//! root lacks a directory the runner's configuration needs), answered
//! with INVALID_ARGUMENT naming the path and the field that mounts there.
//! Each path is resolved as the child resolves it and as the chrooted
//! action would see it (`RESOLVE_IN_ROOT`: symlinks stay inside the root).

use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

use crate::bounded::quoted;
use crate::fault::{Fault, RunnerError};
use crate::process::input_root_mounts::InputRootMounts;

/// A mountpoint the input root does not offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountpointError {
    /// Nothing is at the path (or a component of it is not a directory).
    #[error(
        "the input root has no {}, where {field} mounts: the runner never creates \
         mountpoints; the input root must hold it (an empty directory will do)",
        quoted(mountpoint)
    )]
    Missing { mountpoint: String, field: String },
    /// The path could not be resolved for another reason.
    #[error(
        "cannot resolve {} in the input root, where {field} mounts: {errno}",
        quoted(mountpoint)
    )]
    Unresolvable {
        mountpoint: String,
        field: String,
        errno: Errno,
    },
}

impl From<MountpointError> for RunnerError {
    fn from(error: MountpointError) -> Self {
        let fault = match &error {
            MountpointError::Missing { .. } => Fault::Request,
            MountpointError::Unresolvable { errno, .. } => Fault::of_host_errno(*errno as i32),
        };
        RunnerError::of_fault(fault, error.to_string())
    }
}

/// Checks that every mountpoint of `mounts` exists beneath `input_root`.
pub fn check_mountpoints(
    input_root: BorrowedFd<'_>,
    mounts: &InputRootMounts,
) -> Result<(), MountpointError> {
    for mount in &mounts.mounts {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let resolved = loop {
            match openat2(input_root, mount.mountpoint.as_c_str(), how) {
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                resolved => break resolved,
            }
        };
        let mountpoint = || mount.mountpoint.to_string_lossy().into_owned();
        match resolved {
            Ok(_) => {}
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                return Err(MountpointError::Missing {
                    mountpoint: mountpoint(),
                    field: mount.origin.field(),
                })
            }
            Err(errno) => {
                return Err(MountpointError::Unresolvable {
                    mountpoint: mountpoint(),
                    field: mount.origin.field(),
                    errno,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::input_root_mounts::Entry;
    use std::os::fd::AsFd;

    fn open(path: &std::path::Path) -> std::os::fd::OwnedFd {
        nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap()
    }

    /// Why it matters: a missing mountpoint is the request's fault and
    /// must name the path and the field, not fail the spawn as ours.
    #[test]
    fn a_missing_mountpoint_is_invalid_argument_naming_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::create_dir_all(root.path().join("opt")).unwrap();
        let mounts = InputRootMounts::new(
            true,
            true,
            [Entry {
                mountpoint: "opt/toolchain",
                source: "/opt/toolchain",
                filesystem_type: "bind",
                read_only: true,
            }],
        )
        .unwrap();
        let fd = open(root.path());
        let error = check_mountpoints(fd.as_fd(), &mounts).expect_err("no dev");
        assert_eq!(
            error,
            MountpointError::Missing {
                mountpoint: "dev".into(),
                field: "isolation.dev".into()
            }
        );
        std::fs::create_dir(root.path().join("dev")).unwrap();
        let error = check_mountpoints(fd.as_fd(), &mounts).expect_err("no opt/toolchain");
        let message = error.to_string();
        assert!(message.contains("\"opt/toolchain\""), "{message}");
        assert!(
            message.contains("inputRootMounts[0].mountpoint"),
            "{message}"
        );
        assert!(matches!(
            RunnerError::from(error),
            RunnerError::InvalidArgument(_)
        ));
        // A symlink resolves inside the root, as the action would see it.
        std::os::unix::fs::symlink("/proc", root.path().join("opt/toolchain")).unwrap();
        check_mountpoints(fd.as_fd(), &mounts).expect("every mountpoint there");
    }
}
