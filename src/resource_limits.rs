//! The runner's resource limits (`RLIMIT_*`): `global.setResourceLimits`
//! applied at startup as Buildbarn's other components apply it, and the
//! descriptor limit the runner raises for itself while its actions get
//! back the one it started with.
//!
//! Why raise it: the runner holds a descriptor per connection, per action
//! (its pidfd, status pipe, output files, cgroup directory) and per event
//! subscriber, and systemd starts a service with a soft `RLIMIT_NOFILE` of
//! 1024; run out of them and every Run fails. Why give actions the
//! starting value back: build tools are written for the usual soft limit
//! (some, calling `select`, break above 1024), and an action must see
//! what it would have seen under bb_runner, which restores it the same
//! way.
//!
//! The order at startup, which is also how the two interact:
//! `setResourceLimits` first (each key, in name order; what it sets is
//! the runner's and so every action's); then the soft `RLIMIT_NOFILE` as
//! it now is, configured or inherited, is remembered as the one actions
//! get ([`DescriptorLimit`], restored in each child before exec); then the
//! runner raises its own soft limit to the hard one.

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// The resources `setResourceLimits` may name, by the suffix of their
/// `RLIMIT_` constant: every limit Linux has. (bb-storage accepts `AS`,
/// `MEMLOCK`, `NOFILE`, `NPROC` and `RSS` on Linux; the others are
/// accepted here too, with the same meaning.)
const RESOURCES: &[(&str, Resource)] = &[
    ("AS", Resource::RLIMIT_AS),
    ("CORE", Resource::RLIMIT_CORE),
    ("CPU", Resource::RLIMIT_CPU),
    ("DATA", Resource::RLIMIT_DATA),
    ("FSIZE", Resource::RLIMIT_FSIZE),
    ("LOCKS", Resource::RLIMIT_LOCKS),
    ("MEMLOCK", Resource::RLIMIT_MEMLOCK),
    ("MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
    ("NICE", Resource::RLIMIT_NICE),
    ("NOFILE", Resource::RLIMIT_NOFILE),
    ("NPROC", Resource::RLIMIT_NPROC),
    ("RSS", Resource::RLIMIT_RSS),
    ("RTPRIO", Resource::RLIMIT_RTPRIO),
    ("RTTIME", Resource::RLIMIT_RTTIME),
    ("SIGPENDING", Resource::RLIMIT_SIGPENDING),
    ("STACK", Resource::RLIMIT_STACK),
];

/// The names `setResourceLimits` accepts, for error messages and docs.
pub fn resource_names() -> impl Iterator<Item = &'static str> {
    RESOURCES.iter().map(|(name, _)| *name)
}

/// One entry of `setResourceLimits`: a resource and the limits to set on
/// it. `None` is unlimited (`RLIM_INFINITY`), as in bb-storage, where an
/// unset `softLimit` or `hardLimit` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    name: &'static str,
    resource: Resource,
    /// `softLimit`.
    pub soft: Option<u64>,
    /// `hardLimit`.
    pub hard: Option<u64>,
}

impl ResourceLimit {
    /// The limits for the resource called `name` (`NOFILE`), or `None`
    /// when Linux has no such limit.
    pub fn new(name: &str, soft: Option<u64>, hard: Option<u64>) -> Option<Self> {
        let (name, resource) = *RESOURCES.iter().find(|(known, _)| *known == name)?;
        Some(ResourceLimit {
            name,
            resource,
            soft,
            hard,
        })
    }

    /// The key it was configured under (`NOFILE`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Sets it on the runner (and so on every action it starts).
    fn apply(&self) -> Result<(), ResourceLimitError> {
        let value = |limit: Option<u64>| limit.unwrap_or(RLIM_INFINITY);
        setrlimit(self.resource, value(self.soft), value(self.hard)).map_err(|errno| {
            ResourceLimitError::Refused {
                name: self.name,
                soft: describe(self.soft),
                hard: describe(self.hard),
                errno,
            }
        })
    }
}

fn describe(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |limit| limit.to_string())
}

/// Why the runner's resource limits could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ResourceLimitError {
    /// The kernel refused a `setResourceLimits` entry.
    #[error(
        "global.setResourceLimits[\"{name}\"]: setrlimit(RLIMIT_{name}, soft {soft}, hard {hard}) \
         was refused: {errno}"
    )]
    Refused {
        name: &'static str,
        soft: String,
        hard: String,
        errno: Errno,
    },
    /// The descriptor limit could not be read.
    #[error("cannot read the runner's RLIMIT_NOFILE: {0}")]
    ReadDescriptorLimit(Errno),
}

/// Applies every entry of `global.setResourceLimits`, in order; the first
/// the kernel refuses stops startup, naming its key and the errno.
pub fn apply(limits: &[ResourceLimit]) -> Result<(), ResourceLimitError> {
    for limit in limits {
        limit.apply()?;
        if limit.resource == Resource::RLIMIT_STACK {
            // Requests are measured against the limit it gives execve.
            crate::exec_limit::refresh_current_exec_limit();
        }
        tracing::info!(
            resource = limit.name,
            soft = describe(limit.soft),
            hard = describe(limit.hard),
            "resource limit set for the runner and its actions (global.setResourceLimits)"
        );
    }
    Ok(())
}

/// `RLIMIT_NOFILE` as an action gets it: the soft limit the runner started
/// with (after `setResourceLimits`) under the runner's hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    /// The soft limit the child sets.
    pub soft: u64,
    /// The hard limit it keeps (the runner's).
    pub hard: u64,
}

/// Raises the runner's soft `RLIMIT_NOFILE` to its hard limit and logs
/// both. Returns what actions are to get back, or `None` when the soft
/// limit already was the hard one (nothing to restore). A refusal to
/// raise (which should not happen: raising the soft limit up to the hard
/// one is always allowed) is logged, and the runner keeps its limit.
pub fn raise_descriptor_limit() -> Result<Option<DescriptorLimit>, ResourceLimitError> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(ResourceLimitError::ReadDescriptorLimit)?;
    if soft >= hard {
        tracing::info!(
            soft,
            hard,
            "descriptor limit (RLIMIT_NOFILE): the soft limit already is the hard one"
        );
        return Ok(None);
    }
    if let Err(errno) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        tracing::warn!(soft, hard, %errno, "cannot raise the runner's descriptor limit (RLIMIT_NOFILE) to its hard limit");
        return Ok(None);
    }
    tracing::info!(
        starting_soft = soft,
        hard,
        "raised the runner's soft descriptor limit (RLIMIT_NOFILE) to the hard limit; \
         actions get the starting soft limit"
    );
    Ok(Some(DescriptorLimit { soft, hard }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_rlimit_suffixes_and_others_are_unknown() {
        // Why it matters: a configuration written for bb-storage must
        // mean the same here, and a misspelt key must not be ignored.
        let limit = ResourceLimit::new("NOFILE", Some(1024), None).unwrap();
        assert_eq!(limit.resource, Resource::RLIMIT_NOFILE);
        assert_eq!(limit.name(), "NOFILE");
        for name in ["AS", "MEMLOCK", "NPROC", "RSS", "CORE", "STACK"] {
            assert!(ResourceLimit::new(name, None, None).is_some(), "{name}");
        }
        for name in ["nofile", "RLIMIT_NOFILE", "FILES", ""] {
            assert!(ResourceLimit::new(name, None, None).is_none(), "{name}");
        }
    }

    #[test]
    fn a_refusal_names_the_key_the_limits_and_the_errno() {
        // Why it matters: startup stops on it, and the operator must know
        // which entry to fix. A soft limit above the hard one is refused
        // whatever the privileges (EINVAL).
        let limit = ResourceLimit::new("CORE", Some(2), Some(1)).unwrap();
        let error = limit.apply().unwrap_err().to_string();
        for expected in ["setResourceLimits[\"CORE\"]", "soft 2", "hard 1", "EINVAL"] {
            assert!(error.contains(expected), "{expected} in {error}");
        }
        let unlimited = ResourceLimit::new("CORE", None, Some(1)).unwrap();
        assert!(unlimited
            .apply()
            .unwrap_err()
            .to_string()
            .contains("soft unlimited"));
    }
}
