//! Checking at startup that the runner holds the privileges its
//! configuration needs, so that a misconfigured deployment fails once, with
//! a message saying what to change, rather than failing every action with
//! `EPERM` from between fork and exec.
//!
//! Root is not the only way to hold them: a runner started with the right
//! capabilities (or as root of a user namespace) qualifies too, so the
//! effective capability set is what is checked, not the uid.

use std::path::Path;

use procfs::process::Process;

/// A Linux capability, by its number in `<linux/capability.h>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub number: u32,
}

/// Needed for `setgid` and `setgroups`.
pub const CAP_SETGID: Capability = Capability {
    name: "CAP_SETGID",
    number: 6,
};
/// Needed for `setuid`.
pub const CAP_SETUID: Capability = Capability {
    name: "CAP_SETUID",
    number: 7,
};
/// Needed for mounts and `CLONE_NEW*` namespaces (`isolation`).
pub const CAP_SYS_ADMIN: Capability = Capability {
    name: "CAP_SYS_ADMIN",
    number: 21,
};
/// Needed for `chroot`.
pub const CAP_SYS_CHROOT: Capability = Capability {
    name: "CAP_SYS_CHROOT",
    number: 18,
};

/// The runner lacks privileges a configuration field needs.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "{field} needs rbe-runner to run as root (or with {}); it runs as uid {uid} without {}",
        names(wanted),
        names(missing)
    )]
    Missing {
        field: &'static str,
        uid: u32,
        wanted: Vec<Capability>,
        missing: Vec<Capability>,
    },
    #[error("cannot read the runner's capabilities from {path:?}: {message}")]
    Unreadable { path: String, message: String },
}

fn names(capabilities: &[Capability]) -> String {
    let names: Vec<&str> = capabilities.iter().map(|c| c.name).collect();
    names.join(" and ")
}

/// The capabilities of `wanted` that are not set in the effective set
/// `effective` (the `CapEff` bit mask).
pub fn missing_capabilities(effective: u64, wanted: &[Capability]) -> Vec<Capability> {
    wanted
        .iter()
        .filter(|capability| effective & (1u64 << capability.number) == 0)
        .copied()
        .collect()
}

/// The runner's effective capability set (`CapEff`), read from its own
/// status under `proc_root`.
pub fn effective(proc_root: &Path) -> Result<u64, PrivilegeError> {
    let own = proc_root.join(std::process::id().to_string());
    Process::new_with_root(own.clone())
        .and_then(|process| process.status())
        .map(|status| status.capeff)
        .map_err(|err| PrivilegeError::Unreadable {
            path: own.display().to_string(),
            message: err.to_string(),
        })
}

/// Fails unless the runner holds every capability in `wanted`, which the
/// configuration field `field` needs. Reads the runner's own status from
/// `proc_root` (normally [`super::DEFAULT_PROC_ROOT`]).
pub fn require(
    proc_root: &Path,
    field: &'static str,
    wanted: &[Capability],
) -> Result<(), PrivilegeError> {
    let missing = missing_capabilities(effective(proc_root)?, wanted);
    if missing.is_empty() {
        return Ok(());
    }
    Err(PrivilegeError::Missing {
        field,
        uid: nix::unistd::geteuid().as_raw(),
        wanted: wanted.to_vec(),
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root's usual effective set has every capability.
    #[test]
    fn a_full_set_misses_nothing() {
        assert!(
            missing_capabilities(u64::MAX, &[CAP_SETUID, CAP_SETGID, CAP_SYS_CHROOT]).is_empty()
        );
    }

    /// An unprivileged user has none, and the message must say which.
    #[test]
    fn an_empty_set_misses_everything_wanted() {
        assert_eq!(
            missing_capabilities(0, &[CAP_SETUID, CAP_SETGID]),
            vec![CAP_SETUID, CAP_SETGID]
        );
    }

    /// Only the bits of the wanted capabilities matter.
    #[test]
    fn bits_are_matched_by_capability_number() {
        let only_setuid = 1u64 << 7;
        assert_eq!(
            missing_capabilities(only_setuid, &[CAP_SETUID, CAP_SETGID]),
            vec![CAP_SETGID]
        );
    }

    /// What an operator reads when runCommandsAs is set on a non-root runner.
    #[test]
    fn the_message_names_the_field_root_and_the_missing_capabilities() {
        let err = PrivilegeError::Missing {
            field: "runCommandsAs",
            uid: 1000,
            wanted: vec![CAP_SETUID, CAP_SETGID],
            missing: vec![CAP_SETGID],
        };
        assert_eq!(
            err.to_string(),
            "runCommandsAs needs rbe-runner to run as root (or with CAP_SETUID and CAP_SETGID); \
             it runs as uid 1000 without CAP_SETGID"
        );
    }

    /// The real check against this process's own status.
    #[test]
    fn require_reads_the_runners_own_capabilities() {
        let result = require(
            Path::new(crate::process::DEFAULT_PROC_ROOT),
            "runCommandsAs",
            &[CAP_SETUID],
        );
        if nix::unistd::geteuid().is_root() {
            result.unwrap();
        } else {
            assert!(
                matches!(result, Err(PrivilegeError::Missing { .. })),
                "{result:?}"
            );
        }
    }
}
