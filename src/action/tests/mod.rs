//! The action lifecycle driven through the local runner, with a fake
//! spawner: what the observers are told, how each way of ending is
//! classified, that nothing stays counted as running ([`supervision`]),
//! the shared-cgroup sampling (one action at a time, deltas and peak, the
//! OOM verdict and its diagnosis: [`sampling`]), and hostile or unlucky
//! requests ([`hostile`]). This file holds the fake spawner and the
//! fixture they share.
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
use super::lifecycle::{ActionOptions, Actions, CallGone, ProcessSpawner, Spawner};
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
use crate::fault::RunnerError;
use crate::process::clone::Method as SpawnMethod;
use crate::process::reaper::{ChildExit, SpawnedChild};
use crate::process::spec::{ProcessSpec, SpawnError, SpawnStep};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
use crate::proto::runner::{RunRequest, RunResponse};
use crate::runner::local::LocalRunner;
use crate::runner::{CallContext, Runner};
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

#[tonic::async_trait]
impl Spawner for FakeSpawner {
    async fn spawn(
        &self,
        spec: &ProcessSpec,
        _call: &mut CallGone,
    ) -> Result<SpawnedChild, SpawnError> {
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
            arguments: spec.arguments.clone(),
            held,
        });
        Ok(SpawnedChild {
            pid: FAKE_PID,
            exit,
            mount_namespace: None,
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
        Self::new(policy, Some(cgroup), script, None)
    }

    /// Actions in process groups, not sampled.
    fn process_groups(script: Vec<FakeAction>) -> Self {
        Self::new(PlacementPolicy::ProcessGroups, None, script, None)
    }

    /// Actions in cgroups of their own beneath `parent`, whose `actions`
    /// directory must exist.
    fn action_cgroups(parent: &Path, sampled: bool, script: Vec<FakeAction>) -> Self {
        Self::action_cgroups_spawning(parent, sampled, script, None)
    }

    /// As [`Self::action_cgroups`], spawning real processes with `real`
    /// when given.
    fn action_cgroups_spawning(
        parent: &Path,
        sampled: bool,
        script: Vec<FakeAction>,
        real: Option<Arc<dyn Spawner>>,
    ) -> Self {
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
            real,
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

    fn new(
        policy: PlacementPolicy,
        cgroup: Option<TempDir>,
        script: Vec<FakeAction>,
        real: Option<Arc<dyn Spawner>>,
    ) -> Self {
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
            .with_spawner(real.unwrap_or_else(|| spawner.clone())),
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
        ..CallContext::default()
    }
}

mod hostile;
mod sampling;
mod supervision;
