//! OOM attribution for actions in cgroups of their own
//! (`sampleCgroupResourceUsage` with `actionCgroups`).
//!
//! The local runner measures each action's own cgroup just before removing
//! it and appends that `CgroupResourceUsage` to the response; this
//! decorator only decides who is to blame for an OOM kill in it. The limit
//! that fires for an action is usually not on its own cgroup but on the
//! managed parent (the pod, the container, the systemd unit): `oom` is then
//! counted there, not in the action's cgroup, which sees only `oom_kill`.
//! So the parent's `oom` is sampled around each Run too, and its growth
//! means "the runner's own limit", never "foreign". A kill with neither is
//! foreign: the Run fails with UNAVAILABLE, with the evidence
//! ([`super::oom_diagnosis`]). Every action is measured in its own cgroup,
//! so any concurrency is exact.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Name;

use crate::build_directory::BuildDirectory;
use crate::cgroup::counters::read_memory_events;
use crate::proto::resourceusage::CgroupResourceUsage;
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

use super::local::blocking;
use super::oom_diagnosis::foreign_oom_kill;
use super::{Runner, RunnerError, SharedRunner};

/// Wraps `base`, a local runner that runs every action in a cgroup of its
/// own below `runner_parent` (the cgroup managed with `actionCgroups`) and
/// appends that cgroup's `CgroupResourceUsage` itself, so that an OOM kill
/// that no limit of the runner's subtree caused fails the Run with
/// UNAVAILABLE, with the evidence.
pub fn new(
    base: SharedRunner,
    runner_parent: PathBuf,
    build_directory: Arc<BuildDirectory>,
) -> SharedRunner {
    Arc::new(ActionCgroupAttributionRunner {
        base,
        runner_parent,
        build_directory,
    })
}

struct ActionCgroupAttributionRunner {
    base: SharedRunner,
    /// The managed parent, whose `oom` counts its own limit's kills.
    runner_parent: PathBuf,
    /// Where diagnoses are written.
    build_directory: Arc<BuildDirectory>,
}

#[tonic::async_trait]
impl Runner for ActionCgroupAttributionRunner {
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError> {
        self.base.check_readiness(request).await
    }

    async fn run(&self, request: RunRequest) -> Result<RunResponse, RunnerError> {
        let server_logs_directory = request.server_logs_directory.clone();
        let parent = self.runner_parent.clone();
        let parent_oom_before = blocking(move || read_oom_count(&parent)).await?;
        let mut response = self.base.run(request).await?;
        let parent = self.runner_parent.clone();
        let parent_oom_grew = blocking(move || read_oom_count(&parent)).await? > parent_oom_before;
        let position = response
            .resource_usage
            .iter()
            .position(|any| any.type_url == CgroupResourceUsage::type_url());
        let Some(position) = position else {
            return Err(RunnerError::Internal(
                "the local runner returned no CgroupResourceUsage for the action's cgroup".into(),
            ));
        };
        let usage_any = response.resource_usage[position].clone();
        let usage = usage_any.to_msg::<CgroupResourceUsage>().map_err(|error| {
            RunnerError::Internal(format!("cannot decode CgroupResourceUsage: {error}"))
        })?;
        if parent_oom_grew && usage.memory_events_oom_kill > 0 {
            tracing::info!(
                cgroup = %self.runner_parent.display(),
                oom_kill = usage.memory_events_oom_kill,
                exit_code = response.exit_code,
                "an action process was OOM-killed by the memory limit of the runner's cgroup"
            );
        }
        if usage.memory_events_oom_kill > 0 && usage.memory_events_oom == 0 && !parent_oom_grew {
            response.resource_usage.remove(position);
            return Err(foreign_oom_kill(
                &self.runner_parent,
                &self.build_directory,
                usage,
                usage_any,
                response,
                &server_logs_directory,
            )
            .await);
        }
        Ok(response)
    }
}

/// The `oom` counter of `cgroup`'s memory.events.
fn read_oom_count(cgroup: &Path) -> Result<u64, RunnerError> {
    read_memory_events(cgroup)
        .map(|events| events.oom)
        .map_err(|error| {
            RunnerError::Internal(format!(
                "cannot read the runner cgroup's memory.events: {error}"
            ))
        })
}
