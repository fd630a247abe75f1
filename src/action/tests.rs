//! The action lifecycle driven through the local runner, with a fake
//! spawner: what the observers are told, how each way of ending is
//! classified, that nothing stays counted as running, and the shared-cgroup
//! sampling (one action at a time, deltas and peak, the OOM verdict and its
//! diagnosis).
//!
//! The fake spawner starts no process. It writes the interface files a test
//! scripts into a fake cgroup, as the kernel would while the action runs,
//! and hands back an exit at once or when the test releases it. Its pid is
//! one no process group can have, because the lifecycle signals the group
//! of the pid it gets back.

use std::collections::VecDeque;
use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;

use super::id::{ActionIds, RunnerInstance};
use super::lifecycle::{ActionOptions, Actions, CallGone, Spawner};
use super::observer::testing::RecordingObserver;
use super::observer::{ActionStarted, ActionTerminating, Observer};
use super::oom_diagnosis::{FOREIGN_OOM_KILL_MESSAGE, OOM_DIAGNOSIS_FILE_NAME};
use super::outcome::{ActionOutcome, Cleanup, Ended};
use super::placement::PlacementPolicy;
use crate::build_directory::BuildDirectory;
use crate::cgroup::action::{kill_and_remove, ActionCgroupManager, ACTIONS_DIRECTORY};
use crate::cgroup::host::mount_point_of;
use crate::cgroup::test_support::{fake_cgroup, memory_events_text, pressure_text, write_files};
use crate::cgroup::{locate_own_cgroup, DEFAULT_PROC_SELF_CGROUP, DEFAULT_PROC_SELF_MOUNTINFO};
use crate::process::reaper::{ChildExit, SpawnedChild};
use crate::process::spawn::{ProcessSpec, SpawnError, SpawnStep};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
use crate::proto::runner::{RunRequest, RunResponse};
use crate::runner::local::LocalRunner;
use crate::runner::{CallContext, Runner, RunnerError};
use crate::sync::lock_unpoisoned;

/// The pid of every fake action: above 2^22, Linux's largest possible
/// `pid_max`, so the SIGKILL the lifecycle sends to its process group after
/// it exited (and the SIGTERM when it is stopped) reaches no process.
const FAKE_PID: i32 = 0x3fff_fff0;

const INPUT_ROOT: &str = "action/root";
const SERVER_LOGS: &str = "action/server_logs";
const CGROUP_USAGE_TYPE_URL: &str =
    "type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage";
const POSIX_USAGE_TYPE_URL: &str = "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage";

/// How long a test waits for something that should happen at once before
/// it fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

/// Short, so that a test whose fake exit was never released still ends.
const GRACE_PERIOD: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// The fake spawner
// ---------------------------------------------------------------------------

/// How a fake action ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Its process exits with this code.
    Exits(i32),
    /// A signal kills its process.
    KilledBy(i32),
    /// Its execve fails with this errno, as for a missing program.
    CannotExecute(i32),
    /// A step before exec fails with this errno.
    CannotStart(SpawnStep, i32),
}

/// What one spawn of the fake does.
struct FakeAction {
    /// Interface files rewritten while "running", as the kernel would
    /// while the action uses memory and CPU.
    cgroup_files: Vec<(&'static str, String)>,
    /// Hold the exit until the test releases it.
    held: bool,
    ending: Ending,
}

impl FakeAction {
    fn exits(code: i32, cgroup_files: Vec<(&'static str, String)>) -> Self {
        FakeAction {
            cgroup_files,
            held: false,
            ending: Ending::Exits(code),
        }
    }

    fn killed(cgroup_files: Vec<(&'static str, String)>) -> Self {
        FakeAction {
            cgroup_files,
            held: false,
            ending: Ending::KilledBy(libc::SIGKILL),
        }
    }

    /// An action that runs until the test releases it, then dies of the
    /// SIGTERM the runner sent (or exits 0 if it was not stopped).
    fn running_until_released() -> Self {
        FakeAction {
            cgroup_files: Vec::new(),
            held: true,
            ending: Ending::KilledBy(libc::SIGTERM),
        }
    }

    fn held_until_released(mut self) -> Self {
        self.held = true;
        self
    }
}

/// The exit of a spawned fake action, sent to the lifecycle on release.
struct HeldExit {
    sender: oneshot::Sender<ChildExit>,
    exit: ChildExit,
}

impl HeldExit {
    fn release(self) {
        // The lifecycle may have given up waiting; then nobody listens.
        let _ = self.sender.send(self.exit);
    }
}

/// What the fake tells the test when it spawned an action.
struct SpawnedAction {
    /// argv as the lifecycle passed it.
    arguments: Vec<String>,
    /// The exit, when the action was scripted to be held.
    held: Option<HeldExit>,
}

/// Plays [`FakeAction`]s in order.
struct FakeSpawner {
    /// The fake cgroup the actions "run" in, if any.
    cgroup: Option<PathBuf>,
    script: Mutex<VecDeque<FakeAction>>,
    /// How often [`Spawner::spawn`] was called.
    calls: AtomicUsize,
    /// Tells the test that an action was spawned.
    spawned: mpsc::UnboundedSender<SpawnedAction>,
}

impl Spawner for FakeSpawner {
    fn spawn(&self, spec: ProcessSpec) -> Result<SpawnedChild, SpawnError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let action = lock_unpoisoned(&self.script)
            .pop_front()
            .expect("the test scripted this spawn");
        if let Some(cgroup) = &self.cgroup {
            let files: Vec<(&str, &str)> = action
                .cgroup_files
                .iter()
                .map(|(name, text)| (*name, text.as_str()))
                .collect();
            write_files(cgroup, &files);
        }
        let status = match action.ending {
            Ending::Exits(code) => code << 8,
            Ending::KilledBy(signal) => signal,
            Ending::CannotExecute(errno) => {
                return Err(SpawnError {
                    step: SpawnStep::Exec,
                    source: io::Error::from_raw_os_error(errno),
                })
            }
            Ending::CannotStart(step, errno) => {
                return Err(SpawnError {
                    step,
                    source: io::Error::from_raw_os_error(errno),
                })
            }
        };
        let (sender, exit) = oneshot::channel();
        let exit_value = child_exit(status);
        let held = if action.held {
            Some(HeldExit {
                sender,
                exit: exit_value,
            })
        } else {
            let _ = sender.send(exit_value);
            None
        };
        let _ = self.spawned.send(SpawnedAction {
            arguments: spec.arguments,
            held,
        });
        Ok(SpawnedChild {
            pid: FAKE_PID,
            exit,
        })
    }
}

/// An exit with `status` whose rusage reports a 7 MiB maximum RSS.
fn child_exit(status: i32) -> ChildExit {
    // SAFETY: all-zero bytes are a valid `rusage` (plain integers).
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    // Linux reports ru_maxrss in KiB.
    rusage.ru_maxrss = 7 << 10;
    ChildExit { status, rusage }
}

// ---------------------------------------------------------------------------
// Observing
// ---------------------------------------------------------------------------

/// A [`RecordingObserver`] that also wakes tests waiting for a call.
struct Recorder {
    recording: RecordingObserver,
    changed: watch::Sender<()>,
}

impl Observer for Recorder {
    fn action_started(&self, started: &ActionStarted) {
        self.recording.action_started(started);
        self.changed.send_replace(());
    }
    fn action_terminating(&self, terminating: &ActionTerminating) {
        self.recording.action_terminating(terminating);
        self.changed.send_replace(());
    }
    fn action_finished(&self, outcome: &ActionOutcome) {
        self.recording.action_finished(outcome);
        self.changed.send_replace(());
    }
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.recording.calls()
    }

    fn codes(&self) -> Vec<(String, String, Code)> {
        lock_unpoisoned(&self.recording.outcomes)
            .iter()
            .map(|(id, result, code)| (id.to_string(), result.clone(), *code))
            .collect()
    }

    /// Returns once the observer was told `call`.
    async fn wait_for(&self, call: &str) {
        let mut changes = self.changed.subscribe();
        let told = changes.wait_for(|_| self.calls().iter().any(|told| told == call));
        let _ = within(call, told).await;
    }
}

/// `future`, or a failed test after [`PATIENCE`].
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("gave up waiting for {what} after {PATIENCE:?}"),
    }
}

// ---------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------

/// A build directory with an input root and a server logs directory, the
/// actions of one runner instance with a fake spawner playing a script, and
/// the local runner adapting them.
struct Fixture {
    /// The fake shared cgroup, with [`Fixture::shared`].
    cgroup: Option<TempDir>,
    build: TempDir,
    instance: RunnerInstance,
    actions: Arc<Actions>,
    runner: Arc<LocalRunner>,
    spawner: Arc<FakeSpawner>,
    observer: Arc<Recorder>,
    spawned: mpsc::UnboundedReceiver<SpawnedAction>,
    /// Requests made so far, so that each gets outputs of its own.
    requests: AtomicUsize,
}

impl Fixture {
    /// Actions sampled in a fake shared cgroup holding `memory.events` with
    /// `events`, a lifetime `memory.peak` and the PSI files.
    fn shared(events: [u64; 6], script: Vec<FakeAction>) -> Self {
        let cgroup = fake_cgroup(&[
            ("memory.events", &memory_events_text(events)),
            ("memory.peak", "987654321\n"),
            ("cpu.pressure", &pressure_text(1_000, 0)),
            ("memory.pressure", &pressure_text(10, 5)),
            ("io.pressure", &pressure_text(0, 0)),
        ]);
        let policy = PlacementPolicy::SharedCgroup {
            cgroup: cgroup.path().to_owned(),
        };
        Self::new(policy, Some(cgroup), script)
    }

    /// Actions in process groups, not sampled.
    fn process_groups(script: Vec<FakeAction>) -> Self {
        Self::new(PlacementPolicy::ProcessGroups, None, script)
    }

    /// Actions in cgroups of their own beneath `parent`, whose `actions`
    /// directory must exist.
    fn action_cgroups(parent: &Path, sampled: bool, script: Vec<FakeAction>) -> Self {
        let manager = Arc::new(ActionCgroupManager::new(parent, Box::new(kill_and_remove)));
        Self::new(
            PlacementPolicy::ActionCgroups {
                manager,
                sampled,
                limits: crate::cgroup::limits::ActionLimits::default(),
                budgets: Vec::new(),
                shared_limit_culprit: Default::default(),
            },
            None,
            script,
        )
    }

    /// Whether the runner refuses work because a cgroup is dirty.
    fn dirty_reason(&self) -> Option<String> {
        match self.actions.placement() {
            PlacementPolicy::ActionCgroups { manager, .. } => manager.dirty_reason(),
            _ => None,
        }
    }

    /// The files in the action directory, outputs included.
    fn action_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.build.path().join("action"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn new(policy: PlacementPolicy, cgroup: Option<TempDir>, script: Vec<FakeAction>) -> Self {
        let build = tempfile::tempdir().unwrap();
        fs::create_dir_all(build.path().join(INPUT_ROOT)).unwrap();
        fs::create_dir_all(build.path().join(SERVER_LOGS)).unwrap();
        let build_directory = Arc::new(BuildDirectory::open(build.path()).unwrap());
        let (spawned_sender, spawned) = mpsc::unbounded_channel();
        let spawner = Arc::new(FakeSpawner {
            cgroup: cgroup.as_ref().map(|cgroup| cgroup.path().to_owned()),
            script: Mutex::new(script.into()),
            calls: AtomicUsize::new(0),
            spawned: spawned_sender,
        });
        let observer = Arc::new(Recorder {
            recording: RecordingObserver::default(),
            changed: watch::channel(()).0,
        });
        let instance = RunnerInstance::random();
        let options = ActionOptions {
            termination_grace_period: GRACE_PERIOD,
            ..ActionOptions::default()
        };
        let actions = Arc::new(
            Actions::new(
                build_directory.clone(),
                options,
                policy,
                ActionIds::new(instance.clone()),
                observer.clone(),
            )
            .with_spawner(spawner.clone()),
        );
        let runner = Arc::new(LocalRunner::new(actions.clone(), build_directory));
        Fixture {
            cgroup,
            build,
            instance,
            actions,
            runner,
            spawner,
            observer,
            spawned,
            requests: AtomicUsize::new(0),
        }
    }

    /// The id of the `n`th action of this runner instance.
    fn id(&self, n: u32) -> String {
        format!("{}-{n}", self.instance)
    }

    /// A request to run `argv0`, with outputs of its own.
    fn request_to_run(&self, argv0: &str) -> RunRequest {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        RunRequest {
            arguments: vec![argv0.into(), "--flag".into()],
            input_root_directory: INPUT_ROOT.into(),
            stdout_path: format!("action/stdout-{n}"),
            stderr_path: format!("action/stderr-{n}"),
            server_logs_directory: SERVER_LOGS.into(),
            ..RunRequest::default()
        }
    }

    fn request(&self) -> RunRequest {
        self.request_to_run("/bin/true")
    }

    async fn run(&self) -> Result<RunResponse, RunnerError> {
        within(
            "a Run",
            self.runner.run(self.request(), CallContext::default()),
        )
        .await
    }

    /// Starts a Run with `call` in a task of its own and returns once the
    /// fake spawned its action.
    async fn start_run(
        &mut self,
        call: CallContext,
    ) -> (JoinHandle<Result<RunResponse, RunnerError>>, SpawnedAction) {
        let runner = self.runner.clone();
        let request = self.request();
        let run = tokio::spawn(async move { runner.run(request, call).await });
        let spawned = within("the fake to spawn", self.spawned.recv())
            .await
            .expect("the fake spawned an action");
        (run, spawned)
    }

    /// Asserts that no action is counted as running any more, waiting for
    /// one still being stopped after its call was dropped.
    async fn assert_back_to_idle(&self) {
        within("no action running", self.actions.running().wait_idle()).await;
        assert!(self.actions.running().is_idle());
    }

    fn cgroup_path(&self) -> PathBuf {
        self.cgroup.as_ref().expect("a shared cgroup").path().into()
    }

    fn diagnosis_path(&self) -> PathBuf {
        self.build
            .path()
            .join(SERVER_LOGS)
            .join(OOM_DIAGNOSIS_FILE_NAME)
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
    assert_eq!(any.type_url, POSIX_USAGE_TYPE_URL);
    any.to_msg().expect("a POSIXResourceUsage")
}

fn seconds(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

/// A call whose deadline is far away.
fn call_with_time_left() -> CallContext {
    CallContext {
        deadline: Some(Instant::now() + Duration::from_secs(3600)),
    }
}

// ---------------------------------------------------------------------------
// Sampling the shared cgroup (ported from the sampling decorator's tests)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deltas_and_peak_are_appended_after_the_posix_usage() {
    // Why it matters: bb_worker and Bazel read the usages by type, but
    // tools that take the first one expect POSIXResourceUsage, as from a
    // runner without sampling.
    let fixture = Fixture::shared(
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
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn an_action_reaching_its_own_limit_gets_its_normal_response() {
    // Why it matters: an action that needs more memory than it is given
    // must fail the build, with the evidence, not be retried forever.
    let fixture = Fixture::shared(
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
    // Every OOM kill is explained in the server logs, this one as the
    // action's own.
    let diagnosis = std::fs::read_to_string(fixture.diagnosis_path()).expect("a diagnosis");
    assert!(
        diagnosis.contains("reached its own memory limit"),
        "{diagnosis}"
    );
    assert_eq!(
        fixture.observer.codes(),
        [(fixture.id(1), "Signal".into(), Code::Ok)]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn an_oom_kill_without_an_own_oom_is_unavailable_with_the_evidence() {
    // Why it matters: the node ran out of memory, not the action; an
    // UNAVAILABLE is retried, and the usages and the diagnosis let an
    // operator see why.
    let fixture = Fixture::shared(
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
        &fixture.cgroup_path().display().to_string(),
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
    assert_eq!(
        fixture.observer.codes(),
        [(fixture.id(1), "Failure".into(), Code::Unavailable)]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_diagnosis_that_cannot_be_written_does_not_change_the_outcome() {
    // Why it matters: the server logs directory is a convenience; the
    // retry must happen anyway, and an existing file is never clobbered.
    let fixture = Fixture::shared(
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
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_second_concurrent_run_is_refused_with_the_reason() {
    // Why it matters: with a shared cgroup, two actions' deltas would be
    // charged to each other, and a node OOM blamed on the wrong one.
    let mut fixture = Fixture::shared(
        [0; 6],
        vec![
            FakeAction::exits(0, vec![]).held_until_released(),
            FakeAction::exits(0, vec![]),
        ],
    );
    let (first, spawned) = fixture.start_run(CallContext::default()).await;
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
    spawned.held.expect("a held exit").release();
    within("the first Run", first)
        .await
        .unwrap()
        .expect("the first Run is unaffected");
    fixture.run().await.expect("the slot is free again");
    // A refused call is not an action: two ids, both finished normally.
    assert_eq!(
        fixture.observer.codes(),
        [
            (fixture.id(1), "Success".into(), Code::Ok),
            (fixture.id(2), "Success".into(), Code::Ok),
        ]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_refused_peak_reset_reports_zero() {
    // Why it matters: before Linux 6.12 memory.peak cannot be reset, and
    // its lifetime value would be passed off as the action's peak.
    let fixture = Fixture::shared([0; 6], vec![FakeAction::exits(0, vec![])]);
    // A directory in place of the file refuses the read-write open, for
    // root too.
    let peak = fixture.cgroup_path().join("memory.peak");
    fs::remove_file(&peak).unwrap();
    fs::create_dir(&peak).unwrap();
    let response = fixture.run().await.unwrap();
    assert_eq!(cgroup_usage(&response.resource_usage[1]).memory_peak, 0);
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_program_that_cannot_be_executed_is_invalid_argument_and_frees_the_slot() {
    // Why it matters: a bad request stays INVALID_ARGUMENT, and the slot
    // is released so that the runner is not stuck refusing work.
    let fixture = Fixture::shared(
        [0; 6],
        vec![
            FakeAction {
                cgroup_files: vec![],
                held: false,
                ending: Ending::CannotExecute(libc::ENOENT),
            },
            FakeAction::exits(0, vec![]),
        ],
    );
    let request = fixture.request_to_run("/no/such/program");
    let result = within("a Run", fixture.runner.run(request, CallContext::default())).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(message))
            if message == r#"cannot execute "/no/such/program": No such file or directory (os error 2)"#),
        "{result:?}"
    );
    fixture.run().await.expect("the slot is free again");
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn an_action_is_not_started_when_the_cgroup_cannot_be_read() {
    // Why it matters: an action whose usage cannot be measured could not
    // have a node OOM told apart from its own; better not to run it.
    let fixture = Fixture::shared([0; 6], vec![FakeAction::exits(0, vec![])]);
    fs::remove_file(fixture.cgroup_path().join("memory.events")).unwrap();
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::Internal(message))
            if message.contains("before starting the action") && message.contains("memory.events")),
        "{result:?}"
    );
    assert_eq!(
        fixture.spawner.calls.load(Ordering::SeqCst),
        0,
        "the spawner was called"
    );
    assert_eq!(
        fixture.observer.calls(),
        [format!("finished {} Failure", fixture.id(1))]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn the_shared_cgroup_waits_for_an_action_still_being_stopped() {
    // Why it matters: the last moments of an action whose call was dropped
    // (SIGTERM, the grace period) would otherwise be charged to the next.
    let mut fixture = Fixture::shared(
        [0; 6],
        vec![
            FakeAction::running_until_released(),
            FakeAction::exits(0, vec![]),
        ],
    );
    let (first, spawned) = fixture.start_run(call_with_time_left()).await;
    first.abort();
    assert!(within("the dropped call", first)
        .await
        .unwrap_err()
        .is_cancelled());
    fixture
        .observer
        .wait_for(&format!("terminating {} Cancelled", fixture.id(1)))
        .await;
    // The dropped call freed the slot, but its action is still alive: the
    // next Run is admitted and must wait for it.
    let runner = fixture.runner.clone();
    let request = fixture.request();
    let second = tokio::spawn(async move { runner.run(request, CallContext::default()).await });
    // Not synchronisation: a window in which a gate that did not wait would
    // spawn the second action before the first finished, which the order
    // of the calls below would show.
    tokio::time::sleep(Duration::from_millis(50)).await;
    spawned.held.expect("a held exit").release();
    within("the second Run", second)
        .await
        .unwrap()
        .expect("the second Run succeeds");
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {}", fixture.id(1)),
            format!("terminating {} Cancelled", fixture.id(1)),
            format!("finished {} Failure", fixture.id(1)),
            format!("started {}", fixture.id(2)),
            format!("finished {} Success", fixture.id(2)),
        ]
    );
    fixture.assert_back_to_idle().await;
}

// ---------------------------------------------------------------------------
// The lifecycle and its supervisor
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_observer_sees_each_action_start_and_finish_in_order() {
    // Why it matters: events, metrics and logs are observers; an id must
    // name one action, counted from 1 within the runner instance.
    let mut fixture = Fixture::process_groups(vec![
        FakeAction::exits(0, vec![]),
        FakeAction::exits(3, vec![]),
    ]);
    assert_eq!(fixture.run().await.unwrap().exit_code, 0);
    assert_eq!(fixture.run().await.unwrap().exit_code, 3);
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {}", fixture.id(1)),
            format!("finished {} Success", fixture.id(1)),
            format!("started {}", fixture.id(2)),
            format!("finished {} NonZeroExitCode", fixture.id(2)),
        ]
    );
    let spawned = fixture.spawned.recv().await.unwrap();
    assert_eq!(spawned.arguments, ["/bin/true", "--flag"]);
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_missing_program_is_not_started_and_not_reported_as_started() {
    // Why it matters: a request naming no real program is the client's
    // fault (INVALID_ARGUMENT, not retried), and an event stream must not
    // show an action start that never happened.
    let fixture = Fixture::process_groups(vec![]);
    let request = fixture.request_to_run("no-such-program");
    let (_call, dropped) = oneshot::channel();
    let outcome = within(
        "the action",
        fixture.actions.clone().run(
            request,
            CallGone {
                dropped,
                deadline: None,
            },
            fixture.actions.count_in(),
        ),
    )
    .await;
    assert!(
        matches!(&outcome.ended, Ended::NotStarted(RunnerError::InvalidArgument(message))
            if message.contains("\"no-such-program\"")),
        "{:?}",
        outcome.ended
    );
    assert_eq!(outcome.grpc_code(), Code::InvalidArgument);
    assert_eq!(outcome.pid, None);
    assert_eq!(outcome.cleanup, Cleanup::NothingStarted);
    assert_eq!(outcome.posix_usage, None);
    assert_eq!(
        fixture.observer.calls(),
        [format!("finished {} Failure", fixture.id(1))]
    );
    assert_eq!(fixture.spawner.calls.load(Ordering::SeqCst), 0);

    // Through the runner, the same request is answered INVALID_ARGUMENT.
    let request = fixture.request_to_run("no-such-program");
    let result = within("a Run", fixture.runner.run(request, CallContext::default())).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(_))),
        "{result:?}"
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_request_without_arguments_is_refused_before_an_action_exists() {
    // Why it matters: calls refused before an action exists are not
    // actions; they must not consume an id or show in the action events.
    let fixture = Fixture::process_groups(vec![FakeAction::exits(0, vec![])]);
    let request = RunRequest {
        arguments: vec![],
        ..fixture.request()
    };
    let result = fixture.runner.run(request, CallContext::default()).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(message)) if message.contains("arguments")),
        "{result:?}"
    );
    assert!(fixture.observer.calls().is_empty());
    fixture.run().await.unwrap();
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {}", fixture.id(1)),
            format!("finished {} Success", fixture.id(1)),
        ]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_call_dropped_before_its_deadline_is_cancelled() {
    // Why it matters: a user's cancellation is not a timeout; metrics and
    // events must tell them apart, and the action must still be stopped.
    let mut fixture = Fixture::process_groups(vec![FakeAction::running_until_released()]);
    let (run, spawned) = fixture.start_run(call_with_time_left()).await;
    run.abort();
    let id = fixture.id(1);
    fixture
        .observer
        .wait_for(&format!("terminating {id} Cancelled"))
        .await;
    spawned.held.expect("a held exit").release();
    fixture
        .observer
        .wait_for(&format!("finished {id} Failure"))
        .await;
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {id}"),
            format!("terminating {id} Cancelled"),
            format!("finished {id} Failure"),
        ]
    );
    assert_eq!(
        fixture.observer.codes(),
        [(id, "Failure".into(), Code::Cancelled)]
    );
    assert!(run.await.unwrap_err().is_cancelled());
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_call_dropped_at_its_deadline_is_a_deadline() {
    // Why it matters: bb_worker enforces action timeouts by letting the
    // call's deadline pass; that must count as DEADLINE_EXCEEDED.
    let mut fixture = Fixture::process_groups(vec![FakeAction::running_until_released()]);
    let call = CallContext {
        deadline: Some(Instant::now()),
    };
    let (run, spawned) = fixture.start_run(call).await;
    run.abort();
    let id = fixture.id(1);
    fixture
        .observer
        .wait_for(&format!("terminating {id} Deadline"))
        .await;
    spawned.held.expect("a held exit").release();
    fixture
        .observer
        .wait_for(&format!("finished {id} Failure"))
        .await;
    assert_eq!(
        fixture.observer.codes(),
        [(id, "Failure".into(), Code::DeadlineExceeded)]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn shutdown_stops_a_running_action_and_answers_unavailable() {
    // Why it matters: an action cut short by a restarting runner is not
    // the action's fault; UNAVAILABLE makes bb_worker retry it elsewhere.
    let mut fixture = Fixture::process_groups(vec![FakeAction::running_until_released()]);
    let (run, spawned) = fixture.start_run(CallContext::default()).await;
    fixture.actions.shutdown().terminate_all();
    let id = fixture.id(1);
    fixture
        .observer
        .wait_for(&format!("terminating {id} Shutdown"))
        .await;
    spawned.held.expect("a held exit").release();
    let result = within("the Run", run).await.unwrap();
    assert!(
        matches!(&result, Err(error @ RunnerError::Unavailable { message, .. })
            if error.code() == Code::Unavailable && message.contains("shutting down")),
        "{result:?}"
    );
    assert_eq!(
        fixture.observer.calls(),
        [
            format!("started {id}"),
            format!("terminating {id} Shutdown"),
            format!("finished {id} Failure"),
        ]
    );
    assert_eq!(
        fixture.observer.codes(),
        [(id, "Failure".into(), Code::Unavailable)]
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn process_groups_report_only_the_posix_usage() {
    // Why it matters: without sampling there is no cgroup to measure; an
    // empty or made-up CgroupResourceUsage would mislead capacity analysts.
    let fixture = Fixture::process_groups(vec![FakeAction::killed(vec![])]);
    let response = fixture.run().await.unwrap();
    assert_eq!(response.exit_code, -1);
    assert_eq!(response.resource_usage.len(), 1);
    let usage = posix(&response.resource_usage[0]);
    assert_eq!(usage.maximum_resident_set_size, 7 << 20);
    assert_eq!(usage.termination_signal, "KILL");
    assert_eq!(
        fixture.observer.codes(),
        [(fixture.id(1), "Signal".into(), Code::Ok)]
    );
    fixture.assert_back_to_idle().await;
}

// ---------------------------------------------------------------------------
// Hostile and unlucky requests: the right code, nothing left behind
// ---------------------------------------------------------------------------

/// Subdirectories of a directory (child cgroups, in a cgroup), sorted.
fn entries(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(directory)
        .unwrap_or_else(|err| panic!("{}: {err}", directory.display()))
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_exec_refused_with_e2big_is_invalid_argument_stating_the_size() {
    // Why it matters: arguments too large to execute are the request's
    // fault; INTERNAL would make Bazel retry it, in vain, elsewhere.
    let fixture = Fixture::process_groups(vec![FakeAction {
        cgroup_files: vec![],
        held: false,
        ending: Ending::CannotExecute(libc::E2BIG),
    }]);
    let result = fixture.run().await;
    let Err(RunnerError::InvalidArgument(message)) = &result else {
        panic!("{result:?}");
    };
    // "/bin/true\0" twice (the program's path and argv[0]), "--flag\0",
    // 2 pointers and the 2 terminating null pointers: 27 + 32.
    assert!(message.contains("59 bytes (2 strings)"), "{message}");
    assert!(
        message.contains(&crate::exec_limit::current_exec_limit().to_string()),
        "{message}"
    );
    fixture.assert_back_to_idle().await;
}

#[tokio::test]
async fn a_node_out_of_descriptors_before_exec_is_unavailable() {
    // Why it matters: EMFILE or ENFILE is the node's trouble; another
    // worker can run the same action.
    for errno in [libc::EMFILE, libc::ENFILE] {
        let fixture = Fixture::process_groups(vec![FakeAction {
            cgroup_files: vec![],
            held: false,
            ending: Ending::CannotStart(SpawnStep::Setup, errno),
        }]);
        let result = fixture.run().await;
        assert!(
            matches!(&result, Err(RunnerError::Unavailable { .. })),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn a_run_that_does_not_start_leaves_no_output_files() {
    // Why it matters: a Run that failed must not leave files in the build
    // directory that the next one, or bb_worker's upload, trips over.
    let fixture = Fixture::process_groups(vec![FakeAction {
        cgroup_files: vec![],
        held: false,
        ending: Ending::CannotExecute(libc::ENOENT),
    }]);
    let before = fixture.action_files();
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(_))),
        "{result:?}"
    );
    assert_eq!(fixture.action_files(), before);

    // stdout created, then stderr refused: stdout goes too.
    fs::write(fixture.build.path().join("action/taken"), "keep me").unwrap();
    let request = RunRequest {
        stderr_path: "action/taken".into(),
        ..fixture.request()
    };
    let result = fixture.runner.run(request, CallContext::default()).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(message)) if message.contains("stderr_path")),
        "{result:?}"
    );
    let mut expected = before.clone();
    expected.push("taken".into());
    expected.sort();
    assert_eq!(fixture.action_files(), expected);
    assert_eq!(
        fs::read_to_string(fixture.build.path().join("action/taken")).unwrap(),
        "keep me"
    );
}

#[tokio::test]
async fn environment_keys_that_would_reach_the_program_as_another_variable_are_refused() {
    // Why it matters: `A=B` would reach the program as the variable `A`
    // with the value `B=…`: not what the request asked for.
    let fixture = Fixture::process_groups(vec![]);
    let cases: [(&str, &str, &str); 4] = [
        ("A=B", "x", "\"A=B\""),
        ("", "x", "\"\""),
        ("NUL\0KEY", "x", "NUL"),
        ("NULVALUE", "a\0b", "\"NULVALUE\""),
    ];
    for (key, value, named) in cases {
        let mut request = fixture.request();
        request
            .environment_variables
            .insert(key.to_string(), value.to_string());
        let result = fixture.runner.run(request, CallContext::default()).await;
        assert!(
            matches!(&result, Err(RunnerError::InvalidArgument(message))
                if message.contains("environment_variables") && message.contains(named)),
            "{key:?}: {result:?}"
        );
    }
    let mut request = fixture.request();
    request.arguments.push("nul\0byte".into());
    let result = fixture.runner.run(request, CallContext::default()).await;
    assert!(
        matches!(&result, Err(RunnerError::InvalidArgument(message)) if message.contains("arguments[2]")),
        "{result:?}"
    );
    assert_eq!(fixture.spawner.calls.load(Ordering::SeqCst), 0);
    assert!(fixture.observer.calls().is_empty(), "not actions");
}

#[tokio::test]
async fn an_action_cgroup_nothing_can_join_is_removed() {
    // Why it matters: the cgroup is made before `cgroup.procs` is opened,
    // which fails when the runner is out of descriptors; such cgroups
    // piled up under actions/ until the next start. A directory stands in
    // for the cgroup tree: mkdir works, but no cgroup.procs appears.
    let tree = tempfile::tempdir().unwrap();
    let actions = tree.path().join(ACTIONS_DIRECTORY);
    fs::create_dir(&actions).unwrap();
    let fixture = Fixture::action_cgroups(tree.path(), false, vec![]);
    let before = fixture.action_files();
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::Internal(message)) if message.contains("cgroup.procs")),
        "{result:?}"
    );
    assert!(entries(&actions).is_empty(), "{:?}", entries(&actions));
    assert_eq!(fixture.dirty_reason(), None);
    assert_eq!(fixture.action_files(), before, "outputs left behind");
    assert_eq!(fixture.spawner.calls.load(Ordering::SeqCst), 0);
}

/// A parent cgroup of this test's own on the machine's cgroup2 mount,
/// with an `actions` child, removed with everything in it on drop.
struct RealCgroupTree {
    parent: PathBuf,
}

impl RealCgroupTree {
    /// The tree, or `None` after saying loudly why this machine cannot
    /// have one (under CI: a failed test).
    fn create(test: &str) -> Option<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let problem = if nix::unistd::geteuid().is_root() {
            match locate_own_cgroup(
                Path::new(DEFAULT_PROC_SELF_CGROUP),
                Path::new(DEFAULT_PROC_SELF_MOUNTINFO),
            ) {
                Ok(own) => {
                    let parent = mount_point_of(&own).join(format!(
                        "rbe-runner-unit-{}-{}",
                        std::process::id(),
                        COUNTER.fetch_add(1, Ordering::SeqCst)
                    ));
                    match fs::create_dir(&parent)
                        .and_then(|()| fs::create_dir(parent.join(ACTIONS_DIRECTORY)))
                    {
                        Ok(()) => return Some(RealCgroupTree { parent }),
                        Err(err) => {
                            let _ = kill_and_remove(&parent, PATIENCE);
                            format!("cannot create {}: {err}", parent.display())
                        }
                    }
                }
                Err(err) => format!("no cgroup v2 here: {err}"),
            }
        } else {
            "needs root".to_string()
        };
        if std::env::var_os("CI").is_some() {
            panic!("{test} cannot run: {problem}");
        }
        eprintln!("SKIPPED ({test}): {problem}");
        None
    }

    fn actions(&self) -> Vec<String> {
        entries(&self.parent.join(ACTIONS_DIRECTORY))
    }
}

impl Drop for RealCgroupTree {
    fn drop(&mut self) {
        if let Err(err) = kill_and_remove(&self.parent, PATIENCE) {
            eprintln!("cannot remove the test cgroup: {err}");
        }
    }
}

#[tokio::test]
async fn action_cgroups_are_removed_whichever_step_fails_after_they_were_made() {
    // Why it matters: every failure after the cgroup exists (measuring it,
    // a step before exec, the exec itself) must remove it, or cgroups pile
    // up under actions/ and the runner's outputs stay behind.
    let Some(tree) = RealCgroupTree::create("action cgroup cleanup") else {
        return;
    };
    let failures = [
        Ending::CannotStart(SpawnStep::Setup, libc::EMFILE),
        Ending::CannotStart(SpawnStep::JoinCgroup, libc::EBUSY),
        Ending::CannotExecute(libc::ENOENT),
        Ending::CannotExecute(libc::E2BIG),
    ];
    let script = failures
        .iter()
        .map(|&ending| FakeAction {
            cgroup_files: vec![],
            held: false,
            ending,
        })
        .collect();
    let fixture = Fixture::action_cgroups(&tree.parent, false, script);
    let before = fixture.action_files();
    for ending in failures {
        let result = fixture.run().await;
        assert!(result.is_err(), "{ending:?}: {result:?}");
        assert_eq!(tree.actions(), Vec::<String>::new(), "{ending:?}");
        assert_eq!(fixture.action_files(), before, "{ending:?}");
    }
    assert_eq!(fixture.spawner.calls.load(Ordering::SeqCst), failures.len());
    assert_eq!(fixture.dirty_reason(), None);

    // Sampled, on a tree without the memory controller: reading the new
    // cgroup's counters fails after it was made.
    let fixture = Fixture::action_cgroups(&tree.parent, true, vec![]);
    let result = fixture.run().await;
    assert!(
        matches!(&result, Err(RunnerError::Internal(_))),
        "{result:?}"
    );
    assert_eq!(tree.actions(), Vec::<String>::new());
    assert_eq!(fixture.dirty_reason(), None);
}
