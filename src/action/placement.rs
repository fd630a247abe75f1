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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::Signal;

use super::id::ActionId;
use super::outcome::Cleanup;
use crate::cgroup::action::{
    is_populated, kill_cgroup, signal_all, ActionCgroup, ActionCgroupManager,
};
use crate::cgroup::attribution::{verdict, OomEvidence, OomVerdict};
use crate::cgroup::counters::read_memory_events;
use crate::cgroup::peak::read_lifetime_peak;
use crate::cgroup::{CgroupCounters, FileError, MemoryPeakTracker};
use crate::process::terminate::{signal_group, ProcessGroup, ProcessTree};
use crate::proto::resourceusage::CgroupResourceUsage;
use crate::runner::RunnerError;

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
    /// With sampling: the cgroup's counters at creation and the managed
    /// parent's `oom`, whose growth means the runner's (shared) limit.
    before: Option<(CgroupCounters, u64)>,
}

/// What measuring an action found.
#[derive(Debug, Default)]
pub(super) struct Measurement {
    /// Counter deltas and the peak of the measuring cgroup.
    pub usage: Option<CgroupResourceUsage>,
    /// The measuring cgroup.
    pub cgroup: Option<PathBuf>,
    /// Who is to blame for OOM kills.
    pub verdict: Option<OomVerdict>,
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
            PlacementPolicy::ActionCgroups { manager, sampled } => {
                let cgroup = manager.create(id.as_str()).map_err(|err| {
                    RunnerError::Internal(format!("cannot create the action's cgroup: {err}"))
                })?;
                let placement = CgroupPlacement {
                    manager: manager.clone(),
                    cgroup,
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
                        // Nothing ran in it; a failure here marks the
                        // runner dirty.
                        let _ = placement.manager.release(placement.cgroup);
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

    /// A descriptor of the action cgroup's `cgroup.procs` for the child to
    /// join it before exec.
    pub fn cgroup_procs(&self) -> Result<Option<File>, RunnerError> {
        let Placement::Cgroup(placement) = self else {
            return Ok(None);
        };
        placement.cgroup.procs.try_clone().map(Some).map_err(|err| {
            RunnerError::Internal(format!("cannot duplicate cgroup.procs descriptor: {err}"))
        })
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

fn read_before(placement: &CgroupPlacement) -> Result<(CgroupCounters, u64), RunnerError> {
    let counters = CgroupCounters::read(&placement.cgroup.path).map_err(|err| {
        RunnerError::Internal(format!(
            "cannot read the new action cgroup's counters: {err}"
        ))
    })?;
    let parent_oom = read_parent_oom(placement.manager.parent()).map_err(RunnerError::Internal)?;
    Ok((counters, parent_oom))
}

fn read_parent_oom(parent: &Path) -> Result<u64, String> {
    read_memory_events(parent)
        .map(|events| events.oom)
        .map_err(|error| format!("cannot read the runner cgroup's memory.events: {error}"))
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
    let evidence = evidence_of(&usage, false);
    Measurement {
        usage: Some(usage),
        cgroup: Some(sample.cgroup.clone()),
        verdict: Some(verdict(&evidence)),
        error: None,
    }
}

/// The action cgroup's deltas and lifetime peak: everything the action did
/// is in it, and nothing else, so no peak reset is needed and any
/// concurrency is exact. The parent's `oom` tells a kill by the runner's
/// own limit from one ordered from above.
fn measure_own(id: &ActionId, placement: &CgroupPlacement) -> Measurement {
    let Some((before, parent_oom_before)) = &placement.before else {
        return Measurement::default();
    };
    let path = &placement.cgroup.path;
    let after = match CgroupCounters::read(path) {
        Ok(after) => after,
        Err(err) => {
            return Measurement::failed(format!(
                "cannot read the action's cgroup after it exited: {err}"
            ))
        }
    };
    let parent = placement.manager.parent();
    let parent_oom_grew = match read_parent_oom(parent) {
        Ok(oom) => oom > *parent_oom_before,
        Err(error) => return Measurement::failed(error),
    };
    let mut usage = after.usage_since(before);
    usage.memory_peak = read_memory_peak(path);
    let evidence = evidence_of(&usage, parent_oom_grew);
    let verdict = verdict(&evidence);
    if verdict == OomVerdict::SharedLimit {
        tracing::info!(action_id = %id, cgroup = %parent.display(),
            oom_kill = usage.memory_events_oom_kill,
            "an action process was OOM-killed by the memory limit of the runner's cgroup");
    }
    Measurement {
        usage: Some(usage),
        // The diagnosis of a foreign kill names the runner's subtree, the
        // highest cgroup whose counters were read.
        cgroup: Some(parent.to_path_buf()),
        verdict: Some(verdict),
        error: None,
    }
}

fn evidence_of(usage: &CgroupResourceUsage, shared_limit_oom_grew: bool) -> OomEvidence {
    OomEvidence {
        oom_kill: u64::try_from(usage.memory_events_oom_kill).unwrap_or(0),
        oom: u64::try_from(usage.memory_events_oom).unwrap_or(0),
        shared_limit_oom_grew,
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
