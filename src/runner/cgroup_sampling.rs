//! Per-action cgroup v2 accounting (`sampleCgroupResourceUsage`).
//!
//! The runner and its actions share the cgroup the runner was started in.
//! Around each Run this decorator snapshots that cgroup's cumulative
//! counters (`memory.events`, the PSI totals) and resets a `memory.peak`
//! descriptor of its own; when the action has exited it appends the deltas
//! and the peak to the response as a `CgroupResourceUsage`, after the
//! `POSIXResourceUsage` the local runner reported. The runner process is in
//! that cgroup too, so the peak includes its own few MiB.
//!
//! The deltas also settle who is to blame for an OOM kill. `memory.events`
//! counts `oom` when this cgroup (or one below it) hit its own `memory.max`
//! and `oom_kill` for every process in it that an OOM killer chose. A kill
//! without an `oom` of our own was ordered by a limit above us: an ancestor
//! cgroup (the container, the pod, a systemd slice) or the whole machine
//! ran out of memory. The action did nothing wrong, so the Run fails with
//! UNAVAILABLE, which Bazel retries, and the evidence travels as the
//! error's details and as a diagnosis in the action's server logs. A kill
//! with an `oom` of our own is the action exceeding its limit: the response
//! goes back as is, and the build fails with the counters attached.
//!
//! A delta of a shared cgroup belongs to one action only if no other action
//! ran meanwhile, so by default a second Run arriving while one is sampled
//! is refused ([`Concurrency`]). With `actionCgroups` each action has a
//! cgroup of its own, which the local runner measures just before removing
//! it; this decorator then only applies the OOM rule to that measurement
//! ([`new_for_action_cgroups`]), and any concurrency is exact.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::build_directory::BuildDirectory;
use crate::cgroup::counters::read_memory_events;
use crate::cgroup::{
    check_required_files, locate_own_cgroup, probe_capabilities, CapabilityError, CgroupCounters,
    LocateError, MemoryPeakTracker, DEFAULT_PROC_SELF_CGROUP, DEFAULT_PROC_SELF_MOUNTINFO,
};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use prost::Name;

use super::local::blocking;
use super::{Runner, RunnerError, SharedRunner};

/// Name of the diagnosis written into the action's server logs directory
/// when an action process was OOM-killed by a limit other than its own.
pub const OOM_DIAGNOSIS_FILE_NAME: &str = "rbe-runner-oom.txt";

/// Start of the UNAVAILABLE message for an OOM kill the action's own cgroup
/// did not cause.
pub const FOREIGN_OOM_KILL_MESSAGE: &str =
    "An action process was OOM-killed without the action reaching its cgroup memory limit";

/// The file system root that paths from `/proc/self/mountinfo` are relative
/// to on a real host.
pub const DEFAULT_FILESYSTEM_ROOT: &str = "/";

/// Where the runner looks for its own cgroup. Tests substitute recorded
/// `/proc` texts and a fake cgroup tree.
#[derive(Debug, Clone)]
pub struct OwnCgroupSource {
    /// `/proc/self/cgroup`, or a file with the same contents.
    pub proc_self_cgroup: PathBuf,
    /// `/proc/self/mountinfo`, or a file with the same contents.
    pub proc_self_mountinfo: PathBuf,
    /// The directory the mount points in `proc_self_mountinfo` are relative
    /// to: `/` on a real host, a temporary directory holding a fake tree in
    /// tests.
    pub filesystem_root: PathBuf,
}

impl Default for OwnCgroupSource {
    fn default() -> Self {
        OwnCgroupSource {
            proc_self_cgroup: PathBuf::from(DEFAULT_PROC_SELF_CGROUP),
            proc_self_mountinfo: PathBuf::from(DEFAULT_PROC_SELF_MOUNTINFO),
            filesystem_root: PathBuf::from(DEFAULT_FILESYSTEM_ROOT),
        }
    }
}

/// Why sampling cannot start. Each message names the option, what is
/// missing and how to fix it, since it is what an operator sees when the
/// runner refuses to start. The cause is part of the message rather than a
/// `source`, so that error chains do not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "sampleCgroupResourceUsage is enabled, but the runner's cgroup v2 cannot be found: {0}"
    )]
    Locate(LocateError),
    #[error(
        "sampleCgroupResourceUsage is enabled, but the runner's cgroup cannot be sampled: {0}"
    )]
    Capability(CapabilityError),
}

/// Finds the runner's cgroup v2 directory, checks that the files sampling
/// depends on are there, and logs one line saying which optional
/// measurements (per-action peak, PSI, ...) this kernel provides. Meant for
/// startup: an error here should stop the runner.
pub fn prepare(source: &OwnCgroupSource) -> Result<PathBuf, SetupError> {
    let located = locate_own_cgroup(&source.proc_self_cgroup, &source.proc_self_mountinfo)
        .map_err(SetupError::Locate)?;
    // The located path is absolute; re-rooting it under `filesystem_root`
    // leaves it unchanged when that is "/".
    let cgroup = match located.strip_prefix("/") {
        Ok(relative) if !relative.as_os_str().is_empty() => source.filesystem_root.join(relative),
        _ => source.filesystem_root.clone(),
    };
    check_required_files(&cgroup).map_err(SetupError::Capability)?;
    let capabilities = probe_capabilities(&cgroup).map_err(SetupError::Capability)?;
    tracing::info!(cgroup = %cgroup.display(), "sampling cgroup resource usage: {capabilities}");
    Ok(cgroup)
}

/// Whether Runs may be sampled concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Refuse a Run (INTERNAL) while another is sampled. Required while all
    /// actions share the runner's cgroup: concurrent deltas would mix them.
    OneActionAtATime,
    /// Sample every Run. Only truthful when each action has a cgroup of its
    /// own.
    Unrestricted,
}

/// Wraps `base` so that each response carries the `CgroupResourceUsage` of
/// `cgroup` during the action, and an OOM kill the action's own cgroup did
/// not cause fails the Run with UNAVAILABLE (see the module docs).
///
/// `cgroup` is the directory [`prepare`] returned. `build_directory` is
/// where the diagnosis is written, beneath the request's
/// `server_logs_directory`.
///
/// `actions_running`, the local runner's count of actions not yet reaped,
/// lets a Run wait for an action whose call was dropped but which is still
/// being terminated (up to the grace period): otherwise its last moments
/// would be charged to the next action.
pub fn new(
    base: SharedRunner,
    cgroup: PathBuf,
    build_directory: Arc<BuildDirectory>,
    concurrency: Concurrency,
    actions_running: Option<watch::Receiver<usize>>,
) -> SharedRunner {
    Arc::new(CgroupSamplingRunner {
        base,
        cgroup,
        build_directory,
        concurrency,
        sampling: AtomicBool::new(false),
        measured_by_base: false,
        actions_running,
    })
}

/// Wraps `base`, a local runner that runs every action in a cgroup of its
/// own below `runner_parent` (the cgroup managed with `actionCgroups`) and
/// appends that cgroup's `CgroupResourceUsage` itself, so that an OOM kill
/// that no limit of the runner's subtree caused fails the Run with
/// UNAVAILABLE, with the evidence.
///
/// The limit that fires for an action is usually not on its own cgroup but
/// on `runner_parent` (the pod, the container, the systemd unit): `oom` is
/// then counted there, not in the action's cgroup, which sees only
/// `oom_kill`. So `runner_parent`'s `oom` is sampled around each Run too,
/// and its growth means "the runner's own limit", never "foreign".
pub fn new_for_action_cgroups(
    base: SharedRunner,
    runner_parent: PathBuf,
    build_directory: Arc<BuildDirectory>,
) -> SharedRunner {
    Arc::new(CgroupSamplingRunner {
        base,
        cgroup: runner_parent,
        build_directory,
        concurrency: Concurrency::Unrestricted,
        sampling: AtomicBool::new(false),
        measured_by_base: true,
        actions_running: None,
    })
}

struct CgroupSamplingRunner {
    base: SharedRunner,
    /// The cgroup whose counters are sampled.
    cgroup: PathBuf,
    /// Where diagnoses are written.
    build_directory: Arc<BuildDirectory>,
    concurrency: Concurrency,
    /// Whether a Run is being sampled, for [`Concurrency::OneActionAtATime`].
    sampling: AtomicBool,
    /// The base appends the usage of the action's own cgroup; only the OOM
    /// rule is applied here.
    measured_by_base: bool,
    /// See [`new`].
    actions_running: Option<watch::Receiver<usize>>,
}

/// Marks a Run as being sampled until dropped, which also happens when the
/// Run future is dropped because its RPC was cancelled.
struct SamplingSlot<'a>(&'a AtomicBool);

impl Drop for SamplingSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl CgroupSamplingRunner {
    fn claim_slot(&self) -> Result<Option<SamplingSlot<'_>>, RunnerError> {
        if self.concurrency == Concurrency::Unrestricted {
            return Ok(None);
        }
        if self
            .sampling
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(RunnerError::Internal(format!(
                "another action is already running, and cgroup resource usage sampling \
                 (sampleCgroupResourceUsage) measures the cgroup {} that all actions of this \
                 runner share, so concurrent actions would be charged for each other's usage: \
                 let the worker send this runner one action at a time (concurrency 1)",
                self.cgroup.display()
            )));
        }
        Ok(Some(SamplingSlot(&self.sampling)))
    }

    /// The UNAVAILABLE for an action process killed by an OOM killer acting
    /// for a limit other than the runner cgroup's own, with the response's
    /// usages and `usage` as details; also writes the diagnosis.
    async fn foreign_oom_kill(
        &self,
        usage: CgroupResourceUsage,
        usage_any: prost_types::Any,
        response: RunResponse,
        server_logs_directory: &str,
    ) -> RunnerError {
        tracing::warn!(
            cgroup = %self.cgroup.display(),
            oom_kill = usage.memory_events_oom_kill,
            memory_peak_bytes = usage.memory_peak,
            exit_code = response.exit_code,
            "an action process was OOM-killed by a limit above the runner's cgroup; \
             failing the Run with UNAVAILABLE so that it is retried"
        );
        let diagnosis = oom_diagnosis(
            &self.cgroup,
            &usage,
            response.exit_code,
            posix_usage(&response).as_ref(),
        );
        let build_directory = self.build_directory.clone();
        let server_logs_directory = server_logs_directory.to_owned();
        let written = blocking(move || {
            write_diagnosis(&build_directory, &server_logs_directory, &diagnosis);
            Ok(())
        })
        .await;
        if let Err(error) = written {
            tracing::error!(%error, "cannot write the OOM diagnosis");
        }
        let mut details = response.resource_usage;
        details.push(usage_any);
        RunnerError::Unavailable {
            message: format!(
                "{FOREIGN_OOM_KILL_MESSAGE} (memory.events of {} during the action: \
                 oom_kill {}, oom {}, max {}; memory peak {}): a cgroup above the \
                 runner's or the whole node ran out of memory, so another attempt may \
                 succeed",
                self.cgroup.display(),
                usage.memory_events_oom_kill,
                usage.memory_events_oom,
                usage.memory_events_max,
                describe_peak(usage.memory_peak),
            ),
            details,
        }
    }
}

#[tonic::async_trait]
impl Runner for CgroupSamplingRunner {
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError> {
        self.base.check_readiness(request).await
    }

    async fn run(&self, request: RunRequest) -> Result<RunResponse, RunnerError> {
        if self.measured_by_base {
            let server_logs_directory = request.server_logs_directory.clone();
            let parent = self.cgroup.clone();
            let parent_oom_before = blocking(move || read_oom_count(&parent)).await?;
            let mut response = self.base.run(request).await?;
            let parent = self.cgroup.clone();
            let parent_oom_grew =
                blocking(move || read_oom_count(&parent)).await? > parent_oom_before;
            let position = response
                .resource_usage
                .iter()
                .position(|any| any.type_url == CgroupResourceUsage::type_url());
            let Some(position) = position else {
                return Err(RunnerError::Internal(
                    "the local runner returned no CgroupResourceUsage for the action's cgroup"
                        .into(),
                ));
            };
            let usage_any = response.resource_usage[position].clone();
            let usage = usage_any.to_msg::<CgroupResourceUsage>().map_err(|error| {
                RunnerError::Internal(format!("cannot decode CgroupResourceUsage: {error}"))
            })?;
            if parent_oom_grew && usage.memory_events_oom_kill > 0 {
                tracing::info!(
                    cgroup = %self.cgroup.display(),
                    oom_kill = usage.memory_events_oom_kill,
                    exit_code = response.exit_code,
                    "an action process was OOM-killed by the memory limit of the runner's cgroup"
                );
            }
            if usage.memory_events_oom_kill > 0 && usage.memory_events_oom == 0 && !parent_oom_grew
            {
                response.resource_usage.remove(position);
                return Err(self
                    .foreign_oom_kill(usage, usage_any, response, &server_logs_directory)
                    .await);
            }
            return Ok(response);
        }
        let _slot = self.claim_slot()?;
        if self.concurrency == Concurrency::OneActionAtATime {
            if let Some(actions_running) = &self.actions_running {
                // Holding the slot, any action still counted is one being
                // terminated after its call was dropped.
                let _ = actions_running.clone().wait_for(|count| *count == 0).await;
            }
        }
        let server_logs_directory = request.server_logs_directory.clone();

        let cgroup = self.cgroup.clone();
        let (before, peak_tracker) = blocking(move || {
            let before = CgroupCounters::read(&cgroup).map_err(|error| {
                RunnerError::Internal(format!(
                    "cannot sample the runner's cgroup before starting the action: {error}"
                ))
            })?;
            Ok((before, MemoryPeakTracker::start(&cgroup)))
        })
        .await?;

        let mut response = self.base.run(request).await?;

        let cgroup = self.cgroup.clone();
        let usage = blocking(move || {
            let after = CgroupCounters::read(&cgroup).map_err(|error| {
                RunnerError::Internal(format!(
                    "cannot sample the runner's cgroup after the action exited: {error}"
                ))
            })?;
            let mut usage = after.usage_since(&before);
            usage.memory_peak = measured_peak_bytes(&peak_tracker);
            Ok(usage)
        })
        .await?;
        let usage_any = prost_types::Any::from_msg(&usage).map_err(|error| {
            RunnerError::Internal(format!("cannot encode CgroupResourceUsage: {error}"))
        })?;

        if usage.memory_events_oom_kill > 0 && usage.memory_events_oom == 0 {
            return Err(self
                .foreign_oom_kill(usage, usage_any, response, &server_logs_directory)
                .await);
        }
        if usage.memory_events_oom > 0 {
            tracing::info!(
                oom = usage.memory_events_oom,
                oom_kill = usage.memory_events_oom_kill,
                memory_peak_bytes = usage.memory_peak,
                exit_code = response.exit_code,
                "the action reached its cgroup memory limit"
            );
        }
        response.resource_usage.push(usage_any);
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

/// The peak through the tracker's descriptor, or 0 ("not measured") when
/// it measured nothing or the file could not be read.
fn measured_peak_bytes(tracker: &MemoryPeakTracker) -> i64 {
    match tracker.peak_bytes() {
        Ok(bytes) => i64::try_from(bytes).unwrap_or(i64::MAX),
        Err(error) => {
            tracing::error!(%error, "cannot read the action's memory peak; reporting 0");
            0
        }
    }
}

/// The `POSIXResourceUsage` among the response's usages, if any.
fn posix_usage(response: &RunResponse) -> Option<PosixResourceUsage> {
    response
        .resource_usage
        .iter()
        .find_map(|any| any.to_msg::<PosixResourceUsage>().ok())
}

fn describe_peak(bytes: i64) -> String {
    if bytes == 0 {
        "not measured".to_owned()
    } else {
        format!(
            "{bytes} bytes ({:.1} MiB)",
            bytes as f64 / (1024.0 * 1024.0)
        )
    }
}

fn describe_duration(duration: Option<&prost_types::Duration>) -> String {
    match duration {
        Some(duration) => format!(
            "{:.3} s",
            duration.seconds as f64 + f64::from(duration.nanos) / 1e9
        ),
        None => "not available".to_owned(),
    }
}

/// The text of [`OOM_DIAGNOSIS_FILE_NAME`]: what happened, the evidence,
/// and what an operator can do.
fn oom_diagnosis(
    cgroup: &Path,
    usage: &CgroupResourceUsage,
    exit_code: i64,
    posix_usage: Option<&PosixResourceUsage>,
) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        text,
        "rbe-runner: {FOREIGN_OOM_KILL_MESSAGE}.\n\
         \n\
         What happened: while this action ran, the kernel's OOM killer killed {oom_kill} \
         process(es) in the runner's cgroup\n\
         \x20 {cgroup}\n\
         but that cgroup never reached its own memory limit (memory.events \"oom\" did not \
         grow). The kill was ordered by a limit above it: a parent cgroup (container, pod, \
         systemd slice) or the whole node ran out of memory. The runner reported the Run as \
         UNAVAILABLE so that it is retried, instead of failing the build.\n\
         \n\
         Counters during the action:\n\
         \x20 memory.events: low {low}, high {high}, max {max}, oom {oom}, oom_kill {oom_kill}, \
         oom_group_kill {oom_group_kill}\n\
         \x20 memory peak of the cgroup: {peak}\n\
         \x20 memory pressure: some {memory_some}, full {memory_full}\n\
         \x20 exit code: {exit_code}\n",
        oom_kill = usage.memory_events_oom_kill,
        cgroup = cgroup.display(),
        low = usage.memory_events_low,
        high = usage.memory_events_high,
        max = usage.memory_events_max,
        oom = usage.memory_events_oom,
        oom_group_kill = usage.memory_events_oom_group_kill,
        peak = describe_peak(usage.memory_peak),
        memory_some = describe_duration(usage.memory_pressure_some_total.as_ref()),
        memory_full = describe_duration(usage.memory_pressure_full_total.as_ref()),
    );
    if let Some(posix_usage) = posix_usage {
        if !posix_usage.termination_signal.is_empty() {
            let _ = writeln!(
                text,
                "  termination signal: {}",
                posix_usage.termination_signal
            );
        }
        let _ = writeln!(
            text,
            "  maximum resident set size (rusage of the action): {} bytes",
            posix_usage.maximum_resident_set_size
        );
    }
    text.push_str(
        "\nWhat to do: nothing, if a retry succeeds. If this keeps happening, the node is \
         overcommitted: give it (or the runner's parent cgroup) more memory, run fewer actions \
         or other workloads on it, or set memory.max on the runner's cgroup below what the node \
         can provide, so that an action using too much memory fails on its own limit with a \
         clear result instead of being killed by the node.\n",
    );
    text
}

/// Writes the diagnosis beneath the build directory. A failure is logged:
/// the evidence also travels with the UNAVAILABLE status, and the Run's
/// outcome must not depend on the server logs directory.
fn write_diagnosis(build_directory: &BuildDirectory, server_logs_directory: &str, text: &str) {
    use std::io::Write;

    if server_logs_directory.is_empty() {
        tracing::warn!(
            "the request has no server_logs_directory; the OOM diagnosis is not written"
        );
        return;
    }
    let relative = format!(
        "{}/{OOM_DIAGNOSIS_FILE_NAME}",
        server_logs_directory.trim_end_matches('/')
    );
    let result = build_directory
        .create_file(&relative, "server_logs_directory")
        .map_err(|error| error.to_string())
        .and_then(|mut file| {
            file.write_all(text.as_bytes())
                .map_err(|error| format!("writing {relative:?}: {error}"))
        });
    if let Err(error) = result {
        tracing::error!(%error, "cannot write the OOM diagnosis into the server logs directory");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::fs;
    use std::sync::Mutex;

    use tempfile::TempDir;
    use tokio::sync::{mpsc, Semaphore};

    use super::*;
    use crate::cgroup::test_support::{
        fake_cgroup, memory_events_text, pressure_text, write_files,
    };

    const SERVER_LOGS: &str = "action/server_logs";
    const CGROUP_USAGE_TYPE_URL: &str =
        "type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage";

    /// What one Run of the fake inner runner does.
    struct FakeAction {
        /// Interface files rewritten while "running", as the kernel would
        /// while the action uses memory and CPU.
        cgroup_files: Vec<(&'static str, String)>,
        /// Wait for a permit of the fake's gate before returning.
        wait_for_release: bool,
        result: Result<(i64, &'static str), RunnerError>,
    }

    impl FakeAction {
        fn exits(code: i64, cgroup_files: Vec<(&'static str, String)>) -> Self {
            FakeAction {
                cgroup_files,
                wait_for_release: false,
                result: Ok((code, "")),
            }
        }

        fn killed(cgroup_files: Vec<(&'static str, String)>) -> Self {
            FakeAction {
                cgroup_files,
                wait_for_release: false,
                result: Ok((-1, "KILL")),
            }
        }

        fn held_until_released(mut self) -> Self {
            self.wait_for_release = true;
            self
        }
    }

    /// A stand-in for the local runner that plays [`FakeAction`]s in order.
    struct FakeRunner {
        cgroup: PathBuf,
        actions: Mutex<VecDeque<FakeAction>>,
        /// Tells the test that a Run is in progress.
        started: mpsc::UnboundedSender<()>,
        /// Held Runs finish when the test adds permits.
        gate: Arc<Semaphore>,
    }

    #[tonic::async_trait]
    impl Runner for FakeRunner {
        async fn check_readiness(&self, _: CheckReadinessRequest) -> Result<(), RunnerError> {
            Ok(())
        }

        async fn run(&self, _: RunRequest) -> Result<RunResponse, RunnerError> {
            let action = self
                .actions
                .lock()
                .unwrap()
                .pop_front()
                .expect("the test scripted this Run");
            let files: Vec<(&str, &str)> = action
                .cgroup_files
                .iter()
                .map(|(name, text)| (*name, text.as_str()))
                .collect();
            write_files(&self.cgroup, &files);
            let _ = self.started.send(());
            if action.wait_for_release {
                self.gate.acquire().await.unwrap().forget();
            }
            let (exit_code, termination_signal) = action.result?;
            let posix_usage = PosixResourceUsage {
                maximum_resident_set_size: 7 << 20,
                termination_signal: termination_signal.into(),
                ..PosixResourceUsage::default()
            };
            Ok(RunResponse {
                exit_code,
                resource_usage: vec![prost_types::Any::from_msg(&posix_usage).unwrap()],
            })
        }
    }

    /// A fake cgroup holding `memory.events` with `events` and the PSI files
    /// at zero, a build directory with the action's server logs directory,
    /// and the sampling runner around a fake playing `actions`.
    struct Fixture {
        cgroup: TempDir,
        build: TempDir,
        runner: SharedRunner,
        started: mpsc::UnboundedReceiver<()>,
        gate: Arc<Semaphore>,
    }

    impl Fixture {
        fn new(events: [u64; 6], concurrency: Concurrency, actions: Vec<FakeAction>) -> Self {
            let cgroup = fake_cgroup(&[
                ("memory.events", &memory_events_text(events)),
                ("memory.peak", "987654321\n"),
                ("cpu.pressure", &pressure_text(1_000, 0)),
                ("memory.pressure", &pressure_text(10, 5)),
                ("io.pressure", &pressure_text(0, 0)),
            ]);
            let build = tempfile::tempdir().unwrap();
            fs::create_dir_all(build.path().join(SERVER_LOGS)).unwrap();
            let build_directory = Arc::new(BuildDirectory::open(build.path()).unwrap());
            let (started_sender, started) = mpsc::unbounded_channel();
            let gate = Arc::new(Semaphore::new(0));
            let fake = FakeRunner {
                cgroup: cgroup.path().to_owned(),
                actions: Mutex::new(actions.into()),
                started: started_sender,
                gate: gate.clone(),
            };
            let runner = new(
                Arc::new(fake),
                cgroup.path().to_owned(),
                build_directory,
                concurrency,
                None,
            );
            Fixture {
                cgroup,
                build,
                runner,
                started,
                gate,
            }
        }

        async fn run(&self) -> Result<RunResponse, RunnerError> {
            self.runner.run(request()).await
        }

        /// Starts a Run in a task of its own and returns once the fake is
        /// running it.
        async fn start_run(&mut self) -> tokio::task::JoinHandle<Result<RunResponse, RunnerError>> {
            let runner = self.runner.clone();
            let run = tokio::spawn(async move { runner.run(request()).await });
            self.started.recv().await.expect("the fake started a Run");
            run
        }

        fn diagnosis_path(&self) -> PathBuf {
            self.build
                .path()
                .join(SERVER_LOGS)
                .join(OOM_DIAGNOSIS_FILE_NAME)
        }
    }

    fn request() -> RunRequest {
        RunRequest {
            arguments: vec!["true".into()],
            server_logs_directory: SERVER_LOGS.into(),
            ..RunRequest::default()
        }
    }

    fn events(counters: [u64; 6]) -> (&'static str, String) {
        ("memory.events", memory_events_text(counters))
    }

    fn cgroup_usage(any: &prost_types::Any) -> CgroupResourceUsage {
        assert_eq!(any.type_url, CGROUP_USAGE_TYPE_URL);
        any.to_msg().unwrap()
    }

    fn posix(any: &prost_types::Any) -> PosixResourceUsage {
        any.to_msg().expect("a POSIXResourceUsage")
    }

    fn seconds(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos })
    }

    #[tokio::test]
    async fn deltas_and_peak_are_appended_after_the_posix_usage() {
        // Why it matters: bb_worker and Bazel read the usages by type, but
        // tools that take the first one expect POSIXResourceUsage, as from
        // a runner without sampling.
        let fixture = Fixture::new(
            [1, 2, 3, 4, 5, 6],
            Concurrency::OneActionAtATime,
            vec![FakeAction::exits(
                0,
                vec![
                    events([1, 5, 3, 4, 5, 6]),
                    ("cpu.pressure", pressure_text(2_501_000, 0)),
                    ("memory.pressure", pressure_text(1_010, 505)),
                    ("memory.peak", "52428800\n".into()),
                ],
            )],
        );
        let response = fixture.run().await.unwrap();
        assert_eq!(response.exit_code, 0);
        assert_eq!(response.resource_usage.len(), 2);
        assert_eq!(
            posix(&response.resource_usage[0]).maximum_resident_set_size,
            7 << 20
        );
        let usage = cgroup_usage(&response.resource_usage[1]);
        assert_eq!(
            usage,
            CgroupResourceUsage {
                memory_events_high: 3,
                memory_peak: 52_428_800,
                cpu_pressure_some_total: seconds(2, 500_000_000),
                cpu_pressure_full_total: seconds(0, 0),
                memory_pressure_some_total: seconds(0, 1_000_000),
                memory_pressure_full_total: seconds(0, 500_000),
                io_pressure_some_total: seconds(0, 0),
                io_pressure_full_total: seconds(0, 0),
                ..CgroupResourceUsage::default()
            }
        );
        assert!(!fixture.diagnosis_path().exists());
    }

    #[tokio::test]
    async fn an_action_reaching_its_own_limit_gets_its_normal_response() {
        // Why it matters: an action that needs more memory than it is given
        // must fail the build, with the evidence, not be retried forever.
        let fixture = Fixture::new(
            [0; 6],
            Concurrency::OneActionAtATime,
            vec![FakeAction::killed(vec![
                events([0, 0, 7, 1, 1, 0]),
                ("memory.peak", "268435456\n".into()),
            ])],
        );
        let response = fixture.run().await.expect("a normal response");
        assert_eq!(response.exit_code, -1);
        assert_eq!(
            posix(&response.resource_usage[0]).termination_signal,
            "KILL"
        );
        let usage = cgroup_usage(&response.resource_usage[1]);
        assert_eq!(usage.memory_events_oom, 1);
        assert_eq!(usage.memory_events_oom_kill, 1);
        assert_eq!(usage.memory_events_max, 7);
        assert_eq!(usage.memory_peak, 256 << 20);
        assert!(!fixture.diagnosis_path().exists());
    }

    #[tokio::test]
    async fn an_oom_kill_without_an_own_oom_is_unavailable_with_the_evidence() {
        // Why it matters: the node ran out of memory, not the action; an
        // UNAVAILABLE is retried, and the usages and the diagnosis let an
        // operator see why.
        let fixture = Fixture::new(
            [0, 0, 0, 2, 2, 0],
            Concurrency::OneActionAtATime,
            vec![FakeAction::killed(vec![
                events([0, 0, 0, 2, 3, 0]),
                ("memory.peak", "104857600\n".into()),
            ])],
        );
        let Err(RunnerError::Unavailable { message, details }) = fixture.run().await else {
            panic!("expected UNAVAILABLE");
        };
        assert!(message.starts_with(FOREIGN_OOM_KILL_MESSAGE), "{message}");
        assert!(message.contains("oom_kill 1, oom 0"), "{message}");
        assert!(message.contains("104857600 bytes"), "{message}");
        assert_eq!(details.len(), 2);
        assert_eq!(posix(&details[0]).termination_signal, "KILL");
        let usage = cgroup_usage(&details[1]);
        assert_eq!(
            (usage.memory_events_oom, usage.memory_events_oom_kill),
            (0, 1)
        );
        assert_eq!(usage.memory_peak, 100 << 20);

        let diagnosis = fs::read_to_string(fixture.diagnosis_path()).unwrap();
        for expected in [
            FOREIGN_OOM_KILL_MESSAGE,
            &fixture.cgroup.path().display().to_string(),
            "oom 0, oom_kill 1",
            "104857600 bytes (100.0 MiB)",
            "exit code: -1",
            "termination signal: KILL",
            "What to do",
        ] {
            assert!(
                diagnosis.contains(expected),
                "{expected:?} not in:\n{diagnosis}"
            );
        }
    }

    #[tokio::test]
    async fn a_diagnosis_that_cannot_be_written_does_not_change_the_outcome() {
        // Why it matters: the server logs directory is a convenience; the
        // retry must happen anyway, and an existing file is never clobbered.
        let fixture = Fixture::new(
            [0; 6],
            Concurrency::OneActionAtATime,
            vec![FakeAction::killed(vec![events([0, 0, 0, 0, 1, 0])])],
        );
        fs::write(fixture.diagnosis_path(), "planted\n").unwrap();
        let result = fixture.run().await;
        assert!(
            matches!(&result, Err(RunnerError::Unavailable { details, .. }) if details.len() == 2),
            "{result:?}"
        );
        assert_eq!(
            fs::read_to_string(fixture.diagnosis_path()).unwrap(),
            "planted\n"
        );
    }

    #[tokio::test]
    async fn a_second_concurrent_run_is_refused_with_the_reason() {
        // Why it matters: with a shared cgroup, two actions' deltas would be
        // charged to each other, and a node OOM blamed on the wrong one.
        let mut fixture = Fixture::new(
            [0; 6],
            Concurrency::OneActionAtATime,
            vec![
                FakeAction::exits(0, vec![]).held_until_released(),
                FakeAction::exits(0, vec![]),
            ],
        );
        let first = fixture.start_run().await;
        let Err(RunnerError::Internal(message)) = fixture.run().await else {
            panic!("expected INTERNAL for the second Run");
        };
        for expected in [
            "another action is already running",
            "sampleCgroupResourceUsage",
            "share",
            "one action at a time",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
        fixture.gate.add_permits(1);
        first.await.unwrap().expect("the first Run is unaffected");
        fixture.run().await.expect("the slot is free again");
    }

    #[tokio::test]
    async fn exclusivity_can_be_switched_off() {
        // Why it matters: per-action cgroups will make concurrent sampling
        // truthful; the switch must then be all that changes.
        let mut fixture = Fixture::new(
            [0; 6],
            Concurrency::Unrestricted,
            vec![
                FakeAction::exits(0, vec![]).held_until_released(),
                FakeAction::exits(0, vec![]).held_until_released(),
            ],
        );
        let first = fixture.start_run().await;
        let second = fixture.start_run().await;
        fixture.gate.add_permits(2);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_refused_peak_reset_reports_zero() {
        // Why it matters: before Linux 6.12 memory.peak cannot be reset, and
        // its lifetime value would be passed off as the action's peak.
        let fixture = Fixture::new(
            [0; 6],
            Concurrency::OneActionAtATime,
            vec![FakeAction::exits(0, vec![])],
        );
        // A directory in place of the file refuses the read-write open, for
        // root too.
        let peak = fixture.cgroup.path().join("memory.peak");
        fs::remove_file(&peak).unwrap();
        fs::create_dir(&peak).unwrap();
        let response = fixture.run().await.unwrap();
        assert_eq!(cgroup_usage(&response.resource_usage[1]).memory_peak, 0);
    }

    #[tokio::test]
    async fn an_error_of_the_inner_runner_is_returned_as_is() {
        // Why it matters: a bad request stays INVALID_ARGUMENT, and the slot
        // is released so that the runner is not stuck refusing work.
        let fixture = Fixture::new(
            [0; 6],
            Concurrency::OneActionAtATime,
            vec![
                FakeAction {
                    cgroup_files: vec![],
                    wait_for_release: false,
                    result: Err(RunnerError::InvalidArgument("no such program".into())),
                },
                FakeAction::exits(0, vec![]),
            ],
        );
        let result = fixture.run().await;
        assert!(
            matches!(&result, Err(RunnerError::InvalidArgument(message)) if message == "no such program"),
            "{result:?}"
        );
        fixture.run().await.expect("the slot is free again");
    }

    #[tokio::test]
    async fn an_action_is_not_started_when_the_cgroup_cannot_be_read() {
        // Why it matters: an action whose usage cannot be measured could
        // not have a node OOM told apart from its own; better not to run it.
        let mut fixture = Fixture::new(
            [0; 6],
            Concurrency::OneActionAtATime,
            vec![FakeAction::exits(0, vec![])],
        );
        fs::remove_file(fixture.cgroup.path().join("memory.events")).unwrap();
        let result = fixture.run().await;
        assert!(
            matches!(&result, Err(RunnerError::Internal(message))
                if message.contains("before starting the action") && message.contains("memory.events")),
            "{result:?}"
        );
        assert!(
            fixture.started.try_recv().is_err(),
            "the inner runner was called"
        );
    }

    // ---- startup ----

    const HYBRID_HOST_CGROUP: &str = include_str!("../cgroup/testdata/hybrid_host.cgroup");
    const HYBRID_HOST_MOUNTINFO: &str = include_str!("../cgroup/testdata/hybrid_host.mountinfo");
    const SERVICE_CGROUP: &str = "0::/system.slice/rbe-runner.service\n";
    const SYSTEMD_V2_MOUNTINFO: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw
26 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    /// Recorded `/proc/self` texts and a fake file system root in which the
    /// cgroup they name holds `files`.
    fn fake_host(
        proc_self_cgroup: &str,
        mountinfo: &str,
        cgroup: &str,
        files: &[(&str, &str)],
    ) -> (TempDir, OwnCgroupSource) {
        let root = tempfile::tempdir().unwrap();
        let proc_self = root.path().join("proc/self");
        fs::create_dir_all(&proc_self).unwrap();
        write_files(
            &proc_self,
            &[("cgroup", proc_self_cgroup), ("mountinfo", mountinfo)],
        );
        let cgroup = root.path().join(cgroup);
        fs::create_dir_all(&cgroup).unwrap();
        write_files(&cgroup, files);
        let source = OwnCgroupSource {
            proc_self_cgroup: proc_self.join("cgroup"),
            proc_self_mountinfo: proc_self.join("mountinfo"),
            filesystem_root: root.path().to_owned(),
        };
        (root, source)
    }

    #[test]
    fn startup_finds_the_cgroup_beneath_the_filesystem_root() {
        let events = memory_events_text([0; 6]);
        let (root, source) = fake_host(
            SERVICE_CGROUP,
            SYSTEMD_V2_MOUNTINFO,
            "sys/fs/cgroup/system.slice/rbe-runner.service",
            &[
                ("cgroup.procs", ""),
                ("cgroup.type", "domain\n"),
                ("memory.events", &events),
            ],
        );
        assert_eq!(
            prepare(&source).unwrap(),
            root.path()
                .join("sys/fs/cgroup/system.slice/rbe-runner.service")
        );
    }

    #[test]
    fn startup_is_refused_without_the_memory_controller_naming_the_fix() {
        // Why it matters: without memory.events there is no OOM attribution
        // at all; the operator must learn it at startup, with the remedy.
        let (root, source) = fake_host(
            SERVICE_CGROUP,
            SYSTEMD_V2_MOUNTINFO,
            "sys/fs/cgroup/system.slice/rbe-runner.service",
            &[("cgroup.procs", ""), ("cgroup.type", "domain\n")],
        );
        let message = prepare(&source).unwrap_err().to_string();
        for expected in [
            "sampleCgroupResourceUsage is enabled",
            "memory.events is missing",
            &root
                .path()
                .join("sys/fs/cgroup/system.slice/rbe-runner.service")
                .display()
                .to_string(),
            "cgroup.subtree_control",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
    }

    #[test]
    fn startup_is_refused_in_the_root_cgroup_of_a_hybrid_host() {
        // Recorded on the development machine: the process sits in the
        // unified hierarchy's root, which has no memory.events.
        let (_root, source) = fake_host(
            HYBRID_HOST_CGROUP,
            HYBRID_HOST_MOUNTINFO,
            "sys/fs/cgroup/unified",
            &[("cgroup.procs", "1\n")],
        );
        let message = prepare(&source).unwrap_err().to_string();
        assert!(
            message.contains("sampleCgroupResourceUsage is enabled"),
            "{message}"
        );
        assert!(message.contains("is the root cgroup"), "{message}");
        assert!(message.contains("cgroup of its own"), "{message}");
    }

    #[test]
    fn startup_is_refused_on_a_cgroup_v1_only_host() {
        let (_root, source) = fake_host(
            "4:memory:/foo\n1:name=systemd:/system.slice/x.service\n",
            SYSTEMD_V2_MOUNTINFO,
            "sys/fs/cgroup",
            &[],
        );
        let message = prepare(&source).unwrap_err().to_string();
        assert!(
            message.contains("sampleCgroupResourceUsage is enabled"),
            "{message}"
        );
        assert!(
            message.contains("cgroup v1 hosts are not supported"),
            "{message}"
        );
    }
}
