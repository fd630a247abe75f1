//! Who is to blame for an OOM kill: one pure function over counter deltas.
//!
//! `memory.events` counts `oom` when a cgroup (or one below it) hit its own
//! `memory.max`, and `oom_kill` for every process in it that an OOM killer
//! chose; `memory.events.local` counts only the cgroup's own. So for the
//! cgroup that measured an action:
//!
//! - no `oom_kill`: nothing was OOM-killed ([`OomVerdict::None`]);
//! - its own `oom` grew: the action reached its own limit
//!   ([`OomVerdict::OwnLimit`]): the build fails honestly;
//! - else a budget above it grew its *local* `oom`: an ancestor between the
//!   action and the top of the runner's delegated subtree (inclusive), or
//!   the container's own cgroup. The hierarchical count would also move for
//!   a sibling's own-limit OOM, which says nothing about this action. The
//!   actions running together exhausted a shared budget
//!   ([`OomVerdict::SharedLimit`]). The kernel kills the biggest process,
//!   which is not always the one that ate the budget, so the victim is the
//!   *culprit* if it ran alone or its peak reached its fair share of the
//!   budget, else a *bystander*. A bystander is retried; a culprit fails
//!   the build unless the operator chose retries
//!   ([`SharedLimitCulprit::Retry`]);
//! - else nothing the runner manages ran out: a limit above the runner
//!   (pod, node) or a kill from outside ([`OomVerdict::NotOwnLimit`]):
//!   retryable, UNAVAILABLE.

/// The verdict on an action's OOM kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OomVerdict {
    /// Nothing of the action was OOM-killed.
    None,
    /// The action reached the memory limit of its own cgroup.
    OwnLimit,
    /// A budget the action shared with other actions (or with the runner)
    /// was exhausted.
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
}

impl std::fmt::Display for OomVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to the culprit of a shared-limit OOM kill
/// (`actionCgroups.sharedLimitCulprit`). A bystander is always retried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SharedLimitCulprit {
    /// A normal response with the SIGKILL: the build fails, as it would
    /// have on a limit of its own.
    #[default]
    Fail,
    /// UNAVAILABLE: Bazel retries it, possibly on a less crowded worker,
    /// at the price of retrying an action that may never fit.
    Retry,
}

impl SharedLimitCulprit {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedLimitCulprit::Fail => "fail",
            SharedLimitCulprit::Retry => "retry",
        }
    }
}

/// A shared budget whose own limit was reached during the action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedBudget {
    /// Its `memory.max` in bytes.
    pub limit_bytes: u64,
    /// Memory charged to it outside the running action cgroups (the
    /// runner, page cache, tmpfs), when the kill was observed.
    pub charged_outside_actions: u64,
}

/// Counter deltas over an action's life and what was measured at its end:
/// the verdict's only input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OomEvidence {
    /// Growth of `oom_kill` in the action's cgroup.
    pub oom_kill: u64,
    /// Growth of `oom` in the action's cgroup: its own limit was reached.
    pub oom: u64,
    /// The lowest budget above the action whose local `oom` grew, if any.
    pub shared_budget: Option<SharedBudget>,
    /// Action cgroups present when the action's exit was observed,
    /// itself included.
    pub actions_running: u64,
    /// The action's memory peak in bytes.
    pub memory_peak: u64,
}

/// Whether a shared-limit victim ate the budget or was only in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SharedLimitRole {
    /// It ran alone, or its peak reached its fair share of the budget.
    Culprit,
    /// Its peak stayed below its fair share: others ate the budget.
    Bystander,
}

/// The verdict, and what follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution {
    /// Who ran out of what.
    pub verdict: OomVerdict,
    /// For [`OomVerdict::SharedLimit`]: culprit or bystander.
    pub role: Option<SharedLimitRole>,
    /// For [`OomVerdict::SharedLimit`]: the fair share of the budget per
    /// running action, in bytes.
    pub fair_share_bytes: Option<u64>,
    /// Whether the Run fails with UNAVAILABLE (retried elsewhere) instead
    /// of returning the action's result.
    pub retryable: bool,
}

impl Attribution {
    /// Nothing to attribute.
    pub const NONE: Attribution = Attribution {
        verdict: OomVerdict::None,
        role: None,
        fair_share_bytes: None,
        retryable: false,
    };
}

/// The verdict for `evidence`, with `culprit` deciding what a shared-limit
/// culprit gets; see the module documentation.
pub fn attribute(evidence: &OomEvidence, culprit: SharedLimitCulprit) -> Attribution {
    let verdict = if evidence.oom_kill == 0 {
        OomVerdict::None
    } else if evidence.oom > 0 {
        OomVerdict::OwnLimit
    } else if evidence.shared_budget.is_some() {
        OomVerdict::SharedLimit
    } else {
        OomVerdict::NotOwnLimit
    };
    match (verdict, evidence.shared_budget) {
        (OomVerdict::SharedLimit, Some(budget)) => {
            let running = evidence.actions_running.max(1);
            let fair_share = budget
                .limit_bytes
                .saturating_sub(budget.charged_outside_actions)
                / running;
            let role = if running == 1 || evidence.memory_peak >= fair_share {
                SharedLimitRole::Culprit
            } else {
                SharedLimitRole::Bystander
            };
            Attribution {
                verdict,
                role: Some(role),
                fair_share_bytes: Some(fair_share),
                retryable: role == SharedLimitRole::Bystander
                    || culprit == SharedLimitCulprit::Retry,
            }
        }
        _ => Attribution {
            verdict,
            role: None,
            fair_share_bytes: None,
            retryable: verdict == OomVerdict::NotOwnLimit,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn budget(limit_mib: u64, outside_mib: u64) -> Option<SharedBudget> {
        Some(SharedBudget {
            limit_bytes: limit_mib * MIB,
            charged_outside_actions: outside_mib * MIB,
        })
    }

    #[test]
    fn truth_table() {
        // Why it matters: this one table decides whether Bazel retries an
        // action or fails the build; every combination is pinned here.
        use OomVerdict as V;
        use SharedLimitCulprit::{Fail, Retry};
        use SharedLimitRole::*;
        let table = [
            // (oom_kill, oom, budget (limit, outside MiB), running, peak MiB, policy)
            //   → (verdict, role, retryable)
            ((0, 0, None, 1, 10, Fail), (V::None, None, false)),
            ((0, 1, None, 1, 10, Fail), (V::None, None, false)),
            ((0, 0, budget(128, 8), 2, 10, Fail), (V::None, None, false)),
            ((0, 1, budget(128, 8), 2, 10, Retry), (V::None, None, false)),
            ((1, 1, None, 1, 64, Fail), (V::OwnLimit, None, false)),
            (
                (3, 1, budget(128, 8), 8, 64, Retry),
                (V::OwnLimit, None, false),
            ),
            // Alone: the culprit, whatever its peak.
            (
                (1, 0, budget(128, 8), 1, 1, Fail),
                (V::SharedLimit, Some(Culprit), false),
            ),
            (
                (1, 0, budget(128, 8), 1, 1, Retry),
                (V::SharedLimit, Some(Culprit), true),
            ),
            // Fair share (128 - 8) / 2 = 60 MiB.
            (
                (1, 0, budget(128, 8), 2, 60, Fail),
                (V::SharedLimit, Some(Culprit), false),
            ),
            (
                (2, 0, budget(128, 8), 2, 100, Retry),
                (V::SharedLimit, Some(Culprit), true),
            ),
            (
                (1, 0, budget(128, 8), 2, 59, Fail),
                (V::SharedLimit, Some(Bystander), true),
            ),
            (
                (1, 0, budget(128, 8), 2, 59, Retry),
                (V::SharedLimit, Some(Bystander), true),
            ),
            // Everything charged outside the actions: any peak is its share.
            (
                (1, 0, budget(128, 200), 4, 0, Fail),
                (V::SharedLimit, Some(Culprit), false),
            ),
            ((1, 0, None, 2, 10, Fail), (V::NotOwnLimit, None, true)),
            ((5, 0, None, 8, 500, Fail), (V::NotOwnLimit, None, true)),
        ];
        for ((oom_kill, oom, shared_budget, running, peak_mib, policy), expected) in table {
            let evidence = OomEvidence {
                oom_kill,
                oom,
                shared_budget,
                actions_running: running,
                memory_peak: peak_mib * MIB,
            };
            let attribution = attribute(&evidence, policy);
            assert_eq!(
                (attribution.verdict, attribution.role, attribution.retryable),
                expected,
                "{evidence:?} {policy:?}"
            );
        }
    }

    #[test]
    fn the_fair_share_is_what_the_actions_could_use_divided_among_them() {
        let evidence = OomEvidence {
            oom_kill: 1,
            shared_budget: budget(128, 8),
            actions_running: 4,
            memory_peak: 10 * MIB,
            ..OomEvidence::default()
        };
        let attribution = attribute(&evidence, SharedLimitCulprit::Fail);
        assert_eq!(attribution.fair_share_bytes, Some(30 * MIB));
        assert_eq!(
            attribute(&OomEvidence::default(), SharedLimitCulprit::Retry),
            Attribution::NONE
        );
    }
}
