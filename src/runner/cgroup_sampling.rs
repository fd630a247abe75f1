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
//! ran meanwhile, so a second Run arriving while one is sampled is refused. With `actionCgroups` each action has a
//! cgroup of its own and [`super::action_cgroup_attribution`] is used
//! instead. The diagnosis of a foreign kill is [`super::oom_diagnosis`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::build_directory::BuildDirectory;
use crate::cgroup::{CgroupCounters, MemoryPeakTracker};
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

use super::local::blocking;
use super::oom_diagnosis::foreign_oom_kill;
use super::{Runner, RunnerError, SharedRunner};

/// Wraps `base` so that each response carries the `CgroupResourceUsage` of
/// `cgroup` during the action, and an OOM kill the action's own cgroup did
/// not cause fails the Run with UNAVAILABLE (see the module docs).
///
/// `cgroup` is the runner's cgroup, as startup found it
/// ([`crate::cgroup::host::start`]). `build_directory` is
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
    actions_running: Option<watch::Receiver<usize>>,
) -> SharedRunner {
    Arc::new(CgroupSamplingRunner {
        base,
        cgroup,
        build_directory,
        sampling: AtomicBool::new(false),
        actions_running,
    })
}

struct CgroupSamplingRunner {
    base: SharedRunner,
    /// The cgroup whose counters are sampled.
    cgroup: PathBuf,
    /// Where diagnoses are written.
    build_directory: Arc<BuildDirectory>,
    /// Whether a Run is being sampled: concurrent deltas of the shared
    /// cgroup would mix actions.
    sampling: AtomicBool,
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
    fn claim_slot(&self) -> Result<SamplingSlot<'_>, RunnerError> {
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
        Ok(SamplingSlot(&self.sampling))
    }
}

#[tonic::async_trait]
impl Runner for CgroupSamplingRunner {
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError> {
        self.base.check_readiness(request).await
    }

    async fn run(&self, request: RunRequest) -> Result<RunResponse, RunnerError> {
        let _slot = self.claim_slot()?;
        if let Some(actions_running) = &self.actions_running {
            // Holding the slot, any action still counted is one being
            // terminated after its call was dropped.
            let _ = actions_running.clone().wait_for(|count| *count == 0).await;
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
            return Err(foreign_oom_kill(
                &self.cgroup,
                &self.build_directory,
                usage,
                usage_any,
                response,
                &server_logs_directory,
            )
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
    use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
    use crate::runner::oom_diagnosis::{FOREIGN_OOM_KILL_MESSAGE, OOM_DIAGNOSIS_FILE_NAME};

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
        fn new(events: [u64; 6], actions: Vec<FakeAction>) -> Self {
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
    async fn a_refused_peak_reset_reports_zero() {
        // Why it matters: before Linux 6.12 memory.peak cannot be reset, and
        // its lifetime value would be passed off as the action's peak.
        let fixture = Fixture::new([0; 6], vec![FakeAction::exits(0, vec![])]);
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
        let mut fixture = Fixture::new([0; 6], vec![FakeAction::exits(0, vec![])]);
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
}
