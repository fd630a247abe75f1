//! Who is to blame for an OOM kill: one pure function over counter deltas.
//!
//! `memory.events` counts `oom` when a cgroup (or one below it) hit its own
//! `memory.max`, and `oom_kill` for every process in it that an OOM killer
//! chose. So for the cgroup that measured an action:
//!
//! - no `oom_kill`: nothing was OOM-killed ([`OomVerdict::None`]);
//! - its own `oom` grew: the action reached the limit it was measured
//!   against ([`OomVerdict::OwnLimit`]): the build fails honestly;
//! - else a limit above it but inside the runner's subtree grew its `oom`
//!   (the runner's delegated parent, whose limit all actions share):
//!   [`OomVerdict::SharedLimit`], still a normal response;
//! - else nothing the runner manages ran out: a limit above the runner
//!   (container, pod, node) or a kill from outside
//!   ([`OomVerdict::NotOwnLimit`]): retryable, UNAVAILABLE.

/// The verdict on an action's OOM kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OomVerdict {
    /// Nothing of the action was OOM-killed.
    None,
    /// The action reached the memory limit of the cgroup that measured it.
    OwnLimit,
    /// A limit between the action and the top of the runner's subtree,
    /// shared with other actions, was reached.
    SharedLimit,
    /// No limit in the runner's subtree was reached: the node or a cgroup
    /// above the runner ran out of memory.
    NotOwnLimit,
}

impl OomVerdict {
    /// The verdict's name as metrics, events and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            OomVerdict::None => "None",
            OomVerdict::OwnLimit => "OwnLimit",
            OomVerdict::SharedLimit => "SharedLimit",
            OomVerdict::NotOwnLimit => "NotOwnLimit",
        }
    }

    /// Whether the action should be retried elsewhere (UNAVAILABLE) rather
    /// than have its result returned: only when it did nothing wrong.
    pub fn is_retryable(self) -> bool {
        self == OomVerdict::NotOwnLimit
    }
}

impl std::fmt::Display for OomVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counter deltas over an action's life, the verdict's only input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OomEvidence {
    /// Growth of `oom_kill` in the cgroup that measured the action.
    pub oom_kill: u64,
    /// Growth of `oom` in that cgroup: its own limit was reached.
    pub oom: u64,
    /// Whether `oom` grew in a cgroup above it that is still inside the
    /// runner's subtree (the delegated parent of per-action cgroups).
    /// `false` when the measuring cgroup is the top of the subtree.
    pub shared_limit_oom_grew: bool,
}

/// The verdict for `evidence`; see the module documentation.
pub fn verdict(evidence: &OomEvidence) -> OomVerdict {
    if evidence.oom_kill == 0 {
        OomVerdict::None
    } else if evidence.oom > 0 {
        OomVerdict::OwnLimit
    } else if evidence.shared_limit_oom_grew {
        OomVerdict::SharedLimit
    } else {
        OomVerdict::NotOwnLimit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_table() {
        // Why it matters: this one table decides whether Bazel retries an
        // action or fails the build; every combination is pinned here.
        let table = [
            // (oom_kill, oom, shared_limit_oom_grew) → verdict
            ((0, 0, false), OomVerdict::None),
            ((0, 1, false), OomVerdict::None),
            ((0, 0, true), OomVerdict::None),
            ((0, 1, true), OomVerdict::None),
            ((1, 1, false), OomVerdict::OwnLimit),
            ((3, 1, true), OomVerdict::OwnLimit),
            ((1, 0, true), OomVerdict::SharedLimit),
            ((2, 0, true), OomVerdict::SharedLimit),
            ((1, 0, false), OomVerdict::NotOwnLimit),
            ((5, 0, false), OomVerdict::NotOwnLimit),
        ];
        for ((oom_kill, oom, shared_limit_oom_grew), expected) in table {
            let evidence = OomEvidence {
                oom_kill,
                oom,
                shared_limit_oom_grew,
            };
            assert_eq!(verdict(&evidence), expected, "{evidence:?}");
        }
    }

    #[test]
    fn only_a_kill_nothing_in_the_subtree_ordered_is_retryable() {
        for (verdict, retryable) in [
            (OomVerdict::None, false),
            (OomVerdict::OwnLimit, false),
            (OomVerdict::SharedLimit, false),
            (OomVerdict::NotOwnLimit, true),
        ] {
            assert_eq!(verdict.is_retryable(), retryable, "{verdict}");
        }
    }
}
