//! Where an action's processes live, and what measures them.
//!
//! Without `actionCgroups` an action is a process group, optionally
//! measured by sampling the cgroup the runner shares with it
//! (`sampleCgroupResourceUsage`, one action at a time). With it, each
//! action gets a cgroup of its own, named after its id, which owns the
//! action's process tree: it is what termination signals, what is measured
//! just before removal, and where per-action limits will be applied. The
//! placement is the one owner of that cgroup from creation to verified
//! removal.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::Signal;

use super::id::ActionId;
use super::outcome::Cleanup;
use crate::cgroup::action::{
    is_populated, kill_cgroup, signal_all, ActionCgroup, ActionCgroupError, ActionCgroupManager,
};
use crate::cgroup::attribution::{
    attribute, Attribution, OomEvidence, OomVerdict, SharedBudget, SharedLimitCulprit,
};
use crate::cgroup::budgets::{
    action_cgroups, budget_state, local_ooms, lowest_grown, LimitCounters,
};
use crate::cgroup::limits::{apply, ActionLimits, AppliedLimits};
use crate::cgroup::peak::read_lifetime_peak;
use crate::cgroup::{CgroupCounters, FileError, MemoryPeakTracker};
use crate::fault::Fault;
use crate::fault::RunnerError;
use crate::process::terminate::{signal_group, ProcessGroup, ProcessTree};
use crate::proto::rbe_runner::resourceusage::v1::{self as accounting, ActionAccounting};
use crate::proto::resourceusage::CgroupResourceUsage;

/// How every action of this runner is placed and measured; decided once
/// at startup from the cgroup setup.
#[derive(Debug, Clone)]
pub enum PlacementPolicy {
    /// Process groups; POSIX usage only.
    ProcessGroups,
    /// Process groups; the cgroup the runner shares with its actions is
    /// sampled around each one (callers admit one action at a time).
    SharedCgroup {
        /// The runner's cgroup.
        cgroup: PathBuf,
    },
    /// A cgroup of its own for every action.
    ActionCgroups {
        /// The delegated subtree.
        manager: Arc<ActionCgroupManager>,
        /// Whether each action's cgroup is measured.
        sampled: bool,
        /// What every action's cgroup gets written at creation (defaults
        /// resolved and probed at startup).
        limits: ActionLimits,
        /// The memory budgets above every action's cgroup, lowest first.
        budgets: Vec<PathBuf>,
        /// What the culprit of a shared-limit OOM kill gets.
        shared_limit_culprit: SharedLimitCulprit,
    },
}

/// One action's place, from before its spawn to after its end.
pub(super) enum Placement {
    /// A process group, and the shared cgroup's counters when sampled.
    ProcessGroup(Option<SharedSample>),
    /// A cgroup of its own.
    Cgroup(CgroupPlacement),
}

/// The shared cgroup's state when the action started.
pub(super) struct SharedSample {
    cgroup: PathBuf,
    before: CgroupCounters,
    peak: MemoryPeakTracker,
}

/// An action's own cgroup.
pub(super) struct CgroupPlacement {
    manager: Arc<ActionCgroupManager>,
    cgroup: ActionCgroup,
    /// Its limits as the kernel read them back after writing.
    applied: AppliedLimits,
    /// The memory budgets above it, lowest first.
    budgets: Vec<PathBuf>,
    shared_limit_culprit: SharedLimitCulprit,
    /// With sampling: the counters at creation.
    before: Option<Before>,
}

/// An action cgroup's counters at creation, and the local `oom` of each
/// budget above it, whose growth means a shared limit was reached.
struct Before {
    counters: CgroupCounters,
    limits: LimitCounters,
    budget_ooms: Vec<Option<u64>>,
}

/// What measuring an action found.
#[derive(Debug, Default)]
pub(super) struct Measurement {
    /// Counter deltas and the peak of the measuring cgroup.
    pub usage: Option<CgroupResourceUsage>,
    /// The measuring cgroup.
    pub cgroup: Option<PathBuf>,
    /// Who is to blame for OOM kills, and whether that is retried.
    pub attribution: Option<Attribution>,
    /// The verdict's evidence and the action cgroup's limits.
    pub accounting: Option<ActionAccounting>,
    /// Why measuring failed, if it did.
    pub error: Option<String>,
}

impl Measurement {
    /// A measurement that failed for `error`.
    pub fn failed(error: String) -> Self {
        Measurement {
            error: Some(error),
            ..Measurement::default()
        }
    }
}

impl Placement {
    /// Prepares the place of action `id`: creates its cgroup, or samples
    /// the shared one. Blocking.
    pub fn new(policy: &PlacementPolicy, id: &ActionId) -> Result<Self, RunnerError> {
        match policy {
            PlacementPolicy::ProcessGroups => Ok(Placement::ProcessGroup(None)),
            PlacementPolicy::SharedCgroup { cgroup } => {
                let before = CgroupCounters::read(cgroup).map_err(|error| {
                    RunnerError::Internal(format!(
                        "cannot sample the runner's cgroup before starting the action: {error}"
                    ))
                })?;
                Ok(Placement::ProcessGroup(Some(SharedSample {
                    cgroup: cgroup.clone(),
                    before,
                    peak: MemoryPeakTracker::start(cgroup),
                })))
            }
            PlacementPolicy::ActionCgroups {
                manager,
                sampled,
                limits,
                budgets,
                shared_limit_culprit,
            } => {
                let cgroup = manager
                    .create(id.as_str())
                    .map_err(|err| cgroup_error("cannot create the action's cgroup", err))?;
                // Written before anything runs in it: no instruction of the
                // action runs without its limits.
                let applied = match apply(&cgroup.path, limits) {
                    Ok(applied) => applied,
                    Err(error) => {
                        // Nothing ran in it yet.
                        let _ = manager.discard(cgroup);
                        return Err(RunnerError::Internal(format!(
                            "cannot set the limits of the action's cgroup: {error}"
                        )));
                    }
                };
                let placement = CgroupPlacement {
                    manager: manager.clone(),
                    cgroup,
                    applied,
                    budgets: budgets.clone(),
                    shared_limit_culprit: *shared_limit_culprit,
                    before: None,
                };
                if !sampled {
                    return Ok(Placement::Cgroup(placement));
                }
                match read_before(&placement) {
                    Ok(before) => Ok(Placement::Cgroup(CgroupPlacement {
                        before: Some(before),
                        ..placement
                    })),
                    Err(error) => {
                        Placement::Cgroup(placement).discard();
                        Err(error)
                    }
                }
            }
        }
    }

    /// The action's own cgroup, if it has one.
    pub fn cgroup_path(&self) -> Option<&Path> {
        match self {
            Placement::Cgroup(placement) => Some(&placement.cgroup.path),
            Placement::ProcessGroup(_) => None,
        }
    }

    /// The action cgroup's directory, for the child to be created in or
    /// to join before exec; handed over (not duplicated, which could fail)
    /// to the spawn.
    pub fn take_cgroup_directory(&mut self) -> Option<OwnedFd> {
        match self {
            Placement::Cgroup(placement) => placement.cgroup.directory.take(),
            Placement::ProcessGroup(_) => None,
        }
    }

    /// Removes the place of an action that never started. A failure to
    /// remove its cgroup marks the runner dirty. Blocking.
    pub fn discard(self) {
        if let Placement::Cgroup(placement) = self {
            let _ = placement.manager.discard(placement.cgroup);
        }
    }

    /// Everything of the action whose first process is `pid`, for
    /// termination.
    pub fn tree(&self, pid: i32) -> Tree {
        match self {
            Placement::Cgroup(placement) => Tree::Cgroup(placement.cgroup.path.clone()),
            Placement::ProcessGroup(_) => Tree::Group(ProcessGroup(pid)),
        }
    }

    /// After the first process exited: background processes it left in
    /// its group (`cmd &`) must not outlive it. (A cgroup is killed whole
    /// when released.)
    pub fn after_exit(&self, pid: i32) {
        if let Placement::ProcessGroup(_) = self {
            signal_group(pid, Signal::SIGKILL);
        }
    }

    /// Measures the ended action `id`, when sampled. Blocking.
    pub fn measure(&self, id: &ActionId) -> Measurement {
        match self {
            Placement::ProcessGroup(None)
            | Placement::Cgroup(CgroupPlacement { before: None, .. }) => Measurement::default(),
            Placement::ProcessGroup(Some(sample)) => measure_shared(sample),
            Placement::Cgroup(placement) => measure_own(id, placement),
        }
    }

    /// The release of an action that left nothing behind, without
    /// blocking: a process group (killed when the first process exited),
    /// or a cgroup with no process and no sub-cgroup, which the kernel
    /// lets rmdir remove (it refuses a populated one). `None` for anything
    /// else, which needs [`Self::release`].
    pub fn release_if_empty(&self) -> Option<Cleanup> {
        match self {
            Placement::ProcessGroup(_) => Some(Cleanup::ProcessGroupKilled),
            Placement::Cgroup(placement) => placement
                .manager
                .remove_if_empty(&placement.cgroup)
                .then_some(Cleanup::Verified),
        }
    }

    /// Kills whatever is left of the action, verifies its cgroup is empty
    /// and removes it. A failure marks the runner dirty. Blocking.
    pub fn release(self) -> Cleanup {
        match self {
            Placement::ProcessGroup(_) => Cleanup::ProcessGroupKilled,
            Placement::Cgroup(placement) => {
                let path = placement.cgroup.path.clone();
                match placement.manager.release(placement.cgroup) {
                    Ok(()) => Cleanup::Verified,
                    Err(error) => Cleanup::Failed {
                        pids: crate::cgroup::action::processes_in(&path),
                        cgroup: path,
                        detail: error.to_string(),
                    },
                }
            }
        }
    }
}

/// A failure of the action cgroup subtree: the node's when it is out of
/// descriptors, memory or cgroups (EAGAIN at `cgroup.max.descendants`),
/// otherwise ours.
fn cgroup_error(context: &str, error: ActionCgroupError) -> RunnerError {
    let fault = match &error {
        ActionCgroupError::Io { source, .. } => source
            .raw_os_error()
            .map_or(Fault::Runner, Fault::of_host_errno),
        _ => Fault::Runner,
    };
    RunnerError::of_fault(fault, format!("{context}: {error}"))
}

fn read_before(placement: &CgroupPlacement) -> Result<Before, RunnerError> {
    let path = &placement.cgroup.path;
    let counters = CgroupCounters::read(path)
        .and_then(|counters| Ok((counters, LimitCounters::read(path)?)))
        .map_err(|err| {
            RunnerError::Internal(format!(
                "cannot read the new action cgroup's counters: {err}"
            ))
        })?;
    Ok(Before {
        counters: counters.0,
        limits: counters.1,
        budget_ooms: local_ooms(&placement.budgets),
    })
}

/// The shared cgroup's deltas and the peak since the action started. The
/// cgroup is the top of what the runner measures, so no limit lies between.
fn measure_shared(sample: &SharedSample) -> Measurement {
    let after = match CgroupCounters::read(&sample.cgroup) {
        Ok(after) => after,
        Err(error) => {
            return Measurement::failed(format!(
                "cannot sample the runner's cgroup after the action exited: {error}"
            ))
        }
    };
    let mut usage = after.usage_since(&sample.before);
    usage.memory_peak = match sample.peak.peak_bytes() {
        Ok(bytes) => saturating_i64(bytes),
        Err(error) => {
            tracing::error!(%error, "cannot read the action's memory peak; reporting 0");
            0
        }
    };
    // The shared cgroup is the top of what the runner measures: no budget
    // lies between, so a kill is its own limit's or from above.
    let evidence = OomEvidence {
        oom_kill: counter(usage.memory_events_oom_kill),
        oom: counter(usage.memory_events_oom),
        ..OomEvidence::default()
    };
    Measurement {
        usage: Some(usage),
        cgroup: Some(sample.cgroup.clone()),
        attribution: Some(attribute(&evidence, SharedLimitCulprit::Fail)),
        accounting: None,
        error: None,
    }
}

/// The action cgroup's deltas and lifetime peak: everything the action did
/// is in it, and nothing else, so no peak reset is needed and any
/// concurrency is exact. The budgets' local `oom` tell a kill by a shared
/// limit from one ordered from above.
fn measure_own(id: &ActionId, placement: &CgroupPlacement) -> Measurement {
    let Some(before) = &placement.before else {
        return Measurement::default();
    };
    let path = &placement.cgroup.path;
    let after =
        CgroupCounters::read(path).and_then(|counters| Ok((counters, LimitCounters::read(path)?)));
    let (after, limits_after) = match after {
        Ok(after) => after,
        Err(err) => {
            return Measurement::failed(format!(
                "cannot read the action's cgroup after it exited: {err}"
            ))
        }
    };
    let budget_ooms = local_ooms(&placement.budgets);
    let mut usage = after.usage_since(&before.counters);
    usage.memory_peak = read_memory_peak(path);
    let oom_kill = counter(usage.memory_events_oom_kill);
    let actions = placement.manager.actions_directory();
    let actions_running = if oom_kill > 0 {
        action_cgroups(actions).len() as u64
    } else {
        0
    };
    let grown = lowest_grown(&placement.budgets, &before.budget_ooms, &budget_ooms);
    let budget = match grown
        .map(|budget| budget_state(budget, actions))
        .transpose()
    {
        Ok(budget) => budget,
        Err(error) => {
            return Measurement::failed(format!(
                "cannot read the memory budget whose limit was reached: {error}"
            ))
        }
    };
    let evidence = OomEvidence {
        oom_kill,
        oom: counter(usage.memory_events_oom),
        shared_budget: budget.map(|budget| SharedBudget {
            limit_bytes: budget.limit_bytes,
            charged_outside_actions: budget.charged_outside_actions,
        }),
        actions_running,
        memory_peak: counter(usage.memory_peak),
    };
    let attribution = attribute(&evidence, placement.shared_limit_culprit);
    if attribution.verdict == OomVerdict::SharedLimit {
        tracing::info!(action_id = %id, cgroup = %grown.unwrap_or(actions).display(),
            role = ?attribution.role, fair_share_bytes = ?attribution.fair_share_bytes,
            memory_peak = usage.memory_peak, actions_running,
            "an action process was OOM-killed by a memory limit the actions share");
    }
    let limiting = match attribution.verdict {
        OomVerdict::OwnLimit => Some((path.as_path(), placement.applied.memory_max)),
        OomVerdict::SharedLimit => grown.zip(budget.map(|budget| budget.limit_bytes)),
        OomVerdict::None | OomVerdict::NotOwnLimit => None,
    };
    let limit_deltas = limits_after.since(&before.limits);
    let accounting = ActionAccounting {
        oom_verdict: proto_verdict(attribution.verdict) as i32,
        oom_limiting_cgroup: limiting
            .map(|(cgroup, _)| cgroup.display().to_string())
            .unwrap_or_default(),
        oom_limit_bytes: limiting.map_or(0, |(_, bytes)| saturating_i64(bytes)),
        actions_running_at_oom: saturating_i64(actions_running),
        memory_max: saturating_i64(placement.applied.memory_max),
        memory_swap_max: saturating_i64(placement.applied.memory_swap_max),
        cpu_max_cores: placement.applied.cpu_max_cores,
        pids_max: saturating_i64(placement.applied.pids_max),
        pids_events_max: saturating_i64(limit_deltas.pids_events_max.unwrap_or(0)),
        cpu_throttled: Some(duration_of_micros(
            limit_deltas.cpu_throttled_micros.unwrap_or(0),
        )),
        cpu_nr_throttled: saturating_i64(limit_deltas.cpu_nr_throttled.unwrap_or(0)),
    };
    Measurement {
        usage: Some(usage),
        // The diagnosis of a foreign kill names the runner's subtree, the
        // highest cgroup whose counters were read.
        cgroup: Some(placement.manager.parent().to_path_buf()),
        attribution: Some(attribution),
        accounting: Some(accounting),
        error: None,
    }
}

/// A counter delta as the verdict takes it (the protocol's are signed).
fn counter(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn proto_verdict(verdict: OomVerdict) -> accounting::OomVerdict {
    match verdict {
        OomVerdict::None => accounting::OomVerdict::None,
        OomVerdict::OwnLimit => accounting::OomVerdict::OwnLimit,
        OomVerdict::SharedLimit => accounting::OomVerdict::SharedLimit,
        OomVerdict::NotOwnLimit => accounting::OomVerdict::NotOwnLimit,
    }
}

fn duration_of_micros(micros: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
        // Below 1e9, so it fits.
        nanos: ((micros % 1_000_000) * 1_000) as i32,
    }
}

/// The action cgroup's `memory.peak`, or 0 ("not measured") without one.
fn read_memory_peak(cgroup: &Path) -> i64 {
    match read_lifetime_peak(cgroup) {
        Ok(bytes) => saturating_i64(bytes),
        Err(err @ FileError::Parse { .. }) => {
            tracing::error!(%err, "cannot parse the action cgroup's memory.peak; reporting 0");
            0
        }
        Err(err) => {
            tracing::warn!(%err, "cannot read the action cgroup's memory.peak; reporting 0");
            0
        }
    }
}

fn saturating_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The processes of one action, for [`crate::process::terminate`].
#[derive(Debug, Clone)]
pub(super) enum Tree {
    /// Its process group.
    Group(ProcessGroup),
    /// Everything in its cgroup and below, including daemons that left the
    /// process group.
    Cgroup(PathBuf),
}

impl ProcessTree for Tree {
    async fn terminate(&self) {
        match self {
            Tree::Group(group) => group.terminate().await,
            Tree::Cgroup(cgroup) => {
                let cgroup = cgroup.clone();
                let _ =
                    tokio::task::spawn_blocking(move || signal_all(&cgroup, Signal::SIGTERM)).await;
            }
        }
    }

    async fn kill(&self) {
        match self {
            Tree::Group(group) => group.kill().await,
            Tree::Cgroup(cgroup) => {
                // cgroup.kill: atomic with respect to forks.
                let cgroup = cgroup.clone();
                let killed = tokio::task::spawn_blocking(move || kill_cgroup(&cgroup)).await;
                if let Ok(Err(err)) = killed {
                    tracing::warn!(%err, "cgroup.kill failed");
                }
            }
        }
    }

    async fn is_empty(&self) -> bool {
        match self {
            Tree::Group(group) => group.is_empty().await,
            Tree::Cgroup(cgroup) => {
                let cgroup = cgroup.clone();
                tokio::task::spawn_blocking(move || matches!(is_populated(&cgroup), Ok(false)))
                    .await
                    .unwrap_or(false)
            }
        }
    }
}
