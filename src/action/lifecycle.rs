//! One action's life, in order: prepare, place, spawn, supervise (and
//! terminate when its call is dropped or the runner shuts down), measure,
//! release; then the typed outcome, told to the observer and returned.
//!
//! [`Actions::run`] is meant to run in a task detached from the Run call,
//! so that an action whose call is dropped (even while it is being
//! spawned) is still stopped, measured, released and reported, never
//! orphaned.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::id::{ActionId, ActionIds};
use super::observer::{ActionStarted, ActionTerminating, CleanupFailed, Observer, OutputFiles};
use super::oom_diagnosis;
use super::outcome::{
    posix_resource_usage, ActionOutcome, Cleanup, Ended, ExitStatus, TerminationReason,
};
use super::placement::{Measurement, Placement, PlacementPolicy, Tree};
use super::prepare::{prepare, CreatedOutputs, Preparation, PrepareOptions, Prepared};
use super::running::{ActionsRunning, RunningGuard, ShutdownSignal};
use crate::bounded::quoted;
use crate::build_directory::BuildDirectory;
use crate::cgroup::attribution::{Attribution, OomVerdict};
use crate::exec_limit::{current_exec_limit, ExecLimitError, ExecSize};
use crate::fault::Fault;
use crate::fault::{blocking, RunnerError};
pub use crate::process::call::CallGone;
use crate::process::clone::Method as SpawnMethod;
use crate::process::reaper::{ChildExit, SpawnedChild};
use crate::process::spawn_server::SpawnServer;
use crate::process::spec::{Identity, ProcessSpec, SpawnError, SpawnStep};
use crate::process::stuck::StuckSpawns;
use crate::process::terminate::terminate;
use crate::proto::runner::RunRequest;

/// Starts a prepared process; replaceable so that the lifecycle can be
/// tested without real children.
#[tonic::async_trait]
pub trait Spawner: Send + Sync {
    /// Starts `spec` for the Run call `call` and registers it with the
    /// reaper; creates nothing once the call is over.
    async fn spawn(
        &self,
        spec: ProcessSpec,
        call: &mut CallGone,
    ) -> Result<SpawnedChild, SpawnError>;
}

/// The real spawner: [`crate::process::spawn::spawn`], creating children
/// with the method chosen at startup, through the spawn server when there
/// is one.
#[derive(Default)]
pub struct ProcessSpawner {
    /// How children are created.
    pub method: SpawnMethod,
    /// The spawn server, if one was started.
    pub server: Option<Arc<SpawnServer>>,
    /// Where spawns whose exec does not return in time are counted.
    pub stuck: Option<Arc<StuckSpawns>>,
}

#[tonic::async_trait]
impl Spawner for ProcessSpawner {
    async fn spawn(
        &self,
        spec: ProcessSpec,
        call: &mut CallGone,
    ) -> Result<SpawnedChild, SpawnError> {
        crate::process::spawn::spawn(
            spec,
            self.method,
            self.server.as_deref(),
            call,
            self.stuck.as_deref(),
        )
        .await
    }
}

/// How actions are run, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ActionOptions {
    /// How requests are turned into processes.
    pub prepare: PrepareOptions,
    /// Drop to this identity before exec (`runCommandsAs`).
    pub identity: Option<Identity>,
    /// Time between SIGTERM and SIGKILL when an action is stopped.
    pub termination_grace_period: Duration,
    /// `oom_score_adj` for actions (what the runner started with, before
    /// lowering its own).
    pub oom_score_adj: Option<i32>,
    /// How children are created (see [`crate::process::spawn::choose_method`]).
    pub spawn_method: SpawnMethod,
    /// The spawn server that creates them, if one was started.
    pub spawn_server: Option<Arc<SpawnServer>>,
    /// `stuckSpawnTimeout`: a spawn whose exec has not returned by then
    /// makes the runner refuse work until it does; `None`: never.
    pub stuck_spawn_timeout: Option<Duration>,
    /// `RLIMIT_NOFILE` for actions (the soft limit the runner started
    /// with, before raising its own).
    pub descriptor_limit: Option<crate::process::spec::DescriptorLimit>,
    /// The namespaces each action gets (`isolation`); `None`: the runner's.
    pub isolation: Option<Arc<crate::process::isolation::Isolation>>,
}

/// Everything actions of one runner share.
pub struct Actions {
    build_directory: Arc<BuildDirectory>,
    options: ActionOptions,
    placement: PlacementPolicy,
    ids: ActionIds,
    observer: Arc<dyn Observer>,
    running: ActionsRunning,
    shutdown: ShutdownSignal,
    spawner: Arc<dyn Spawner>,
    stuck_spawns: Arc<StuckSpawns>,
}

impl Actions {
    /// Actions run in `build_directory`, placed as `placement` says,
    /// reported to `observer`, with ids from `ids`.
    pub fn new(
        build_directory: Arc<BuildDirectory>,
        options: ActionOptions,
        placement: PlacementPolicy,
        ids: ActionIds,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let stuck_spawns = Arc::new(StuckSpawns::new(options.stuck_spawn_timeout));
        let spawner = Arc::new(ProcessSpawner {
            method: options.spawn_method,
            server: options.spawn_server.clone(),
            stuck: Some(stuck_spawns.clone()),
        });
        Actions {
            build_directory,
            options,
            placement,
            ids,
            observer,
            running: ActionsRunning::default(),
            shutdown: ShutdownSignal::default(),
            spawner,
            stuck_spawns,
        }
    }

    /// Replaces the spawner (tests).
    pub fn with_spawner(mut self, spawner: Arc<dyn Spawner>) -> Self {
        self.spawner = spawner;
        self
    }

    /// The count of actions alive, shared with decorators and shutdown.
    pub fn running(&self) -> &ActionsRunning {
        &self.running
    }

    /// The signal that stops every action, for shutdown.
    pub fn shutdown(&self) -> &ShutdownSignal {
        &self.shutdown
    }

    /// The spawns whose exec has not returned within
    /// `stuckSpawnTimeout`: while there is one, the runner refuses work.
    pub fn stuck_spawns(&self) -> &Arc<StuckSpawns> {
        &self.stuck_spawns
    }

    /// The placement of every action.
    pub fn placement(&self) -> &PlacementPolicy {
        &self.placement
    }

    /// Counts a new action in; hold the guard until [`Self::run`] ends.
    pub fn count_in(&self) -> RunningGuard {
        self.running.count_in()
    }

    /// Runs one action to its end and returns its outcome, after telling
    /// the observer. `_running` keeps it counted until then.
    pub async fn run(
        self: Arc<Self>,
        request: RunRequest,
        call: CallGone,
        _running: RunningGuard,
    ) -> ActionOutcome {
        let id = self.ids.next();
        let argv0 = request.arguments.first().cloned().unwrap_or_default();
        let started_at = SystemTime::now();
        let clock = Instant::now();
        let ended = self.clone().live(id.clone(), request, call).await;
        let outcome = ActionOutcome {
            id,
            argv0,
            pid: ended.pid,
            started_at,
            wall_time: clock.elapsed(),
            posix_usage: ended.exit.map(|exit| {
                posix_resource_usage(&exit.rusage, ExitStatus::from_wait_status(exit.status))
            }),
            cgroup_usage: ended.measurement.usage,
            measured_cgroup: ended.measurement.cgroup,
            oom: ended.measurement.attribution.unwrap_or(Attribution::NONE),
            accounting: ended.measurement.accounting,
            measurement_error: ended.measurement.error,
            ended: ended.ended,
            cleanup: ended.cleanup,
        };
        self.observer.action_finished(&outcome);
        outcome
    }

    /// Prepare, place, spawn, supervise, measure, release.
    async fn live(self: Arc<Self>, id: ActionId, request: RunRequest, mut call: CallGone) -> Lived {
        // A call whose deadline passed already (`grpc-timeout: 1n`) gets
        // nothing created: no outputs, no cgroup, no child.
        if call.deadline_passed() {
            return Lived::not_started(deadline_passed_before_start());
        }
        let (child, placement, request, outputs) = match self.start(&id, request, &mut call).await {
            Ok(started) => started,
            Err(error) => return Lived::not_started(error),
        };
        let pid = child.pid;
        self.observer.action_started(&ActionStarted {
            id: id.clone(),
            arguments: request.arguments.clone(),
            input_root_directory: request.input_root_directory.clone(),
            pid,
            cgroup: placement.cgroup_path().map(Into::into),
            outputs,
        });
        let tree = placement.tree(pid);
        let (ended, exit) = self.supervise(&id, child, &tree, &mut call).await;
        if matches!(ended, Ended::Exited(_)) {
            placement.after_exit(pid);
        }
        // Reading the kernel's counters is cheap (cgroupfs lives in
        // memory); only a cgroup that is not simply empty needs the
        // blocking cleanup (kill, wait for it to empty, remove).
        let measurement = placement.measure(&id);
        let cleanup = match placement.release_if_empty() {
            Some(cleanup) => cleanup,
            None => {
                let cgroup = placement.cgroup_path().map(PathBuf::from);
                blocking(move || Ok(placement.release()))
                    .await
                    .unwrap_or_else(|error| {
                        // The blocking task died (a panic): nothing can be
                        // verified.
                        Cleanup::Failed {
                            cgroup: cgroup.unwrap_or_default(),
                            pids: Vec::new(),
                            detail: error.to_string(),
                        }
                    })
            }
        };
        if let Cleanup::Failed {
            cgroup,
            pids,
            detail,
        } = &cleanup
        {
            self.observer.cleanup_failed(&CleanupFailed {
                id: Some(id.clone()),
                cgroup: cgroup.clone(),
                pids: pids.clone(),
                detail: detail.clone(),
            });
        }
        if measurement
            .attribution
            .is_some_and(|attribution| attribution.verdict != OomVerdict::None)
        {
            self.write_oom_diagnosis(&request, &measurement, exit.as_ref())
                .await;
        }
        Lived {
            pid: Some(pid),
            ended,
            exit,
            measurement,
            cleanup,
        }
    }

    /// Prepares the request, places the action and spawns it. An action
    /// that does not start leaves nothing behind: not its outputs, not its
    /// cgroup. Preparing is done on the async worker where the build
    /// directory's filesystem cannot block for long ([`Preparation`]), and
    /// otherwise on the blocking pool, where a call that is over by the
    /// time a thread takes it up prepares nothing. The spawn waits in the
    /// event loop.
    async fn start(
        self: &Arc<Self>,
        id: &ActionId,
        request: RunRequest,
        call: &mut CallGone,
    ) -> Result<(SpawnedChild, Placement, RunRequest, OutputFiles), RunnerError> {
        let ready = match Preparation::of(&self.build_directory) {
            // A local filesystem answers at once: prepared here, with no
            // hand-off to another thread (`live` checked the deadline).
            Preparation::OnWorker => self.prepare_and_place(id, request)?,
            Preparation::OnBlockingPool => {
                let this = self.clone();
                let action_id = id.clone();
                let deadline = call.deadline();
                blocking(move || {
                    if deadline.is_some_and(|deadline| deadline <= Instant::now()) {
                        return Err(deadline_passed_before_start());
                    }
                    this.prepare_and_place(&action_id, request)
                })
                .await?
            }
        };
        let Ready {
            spec,
            placement,
            outputs,
            exec_size,
            request,
        } = ready;
        let program = spec.program.clone();
        let spawned = if call.is_over() {
            Err(call.over_error())
        } else {
            self.spawner.spawn(spec, call).await
        };
        match spawned {
            Ok(child) => {
                let described = outputs.described(&request);
                Ok((child, placement, request, described))
            }
            Err(error) => {
                let error = spawn_error(&request.arguments[0], &program, exec_size, error);
                // Nothing runs in its place; a failure to remove its
                // cgroup marks the runner dirty.
                let _ = blocking(move || {
                    placement.discard();
                    outputs.remove();
                    Ok(())
                })
                .await;
                Err(error)
            }
        }
    }

    /// Prepares the request and places the action: what its spawn needs.
    /// Blocking.
    fn prepare_and_place(&self, id: &ActionId, request: RunRequest) -> Result<Ready, RunnerError> {
        let mut prepared = prepare(&self.build_directory, &self.options.prepare, &request)?;
        let outputs = std::mem::take(&mut prepared.outputs);
        match Placement::new(&self.placement, id) {
            Ok(placement) => Ok(self.describe(request, prepared, placement, outputs)),
            Err(error) => {
                outputs.remove();
                Err(error)
            }
        }
    }

    /// The process to start for `request`, as prepared and placed.
    fn describe(
        &self,
        request: RunRequest,
        prepared: Prepared,
        mut placement: Placement,
        outputs: CreatedOutputs,
    ) -> Ready {
        let exec_size = ExecSize::of(
            &request.arguments,
            prepared.environment.iter().map(|(key, value)| (key, value)),
        )
        .map(|mut size| {
            size.add_program(prepared.program.len());
            size
        });
        let spec = ProcessSpec {
            program: prepared.program,
            arguments: request.arguments.clone(),
            environment: prepared.environment,
            working_directory: prepared.working_directory,
            chroot_directory: prepared.chroot_directory,
            identity: self.options.identity.clone(),
            stdin: None,
            stdout: prepared.stdout,
            stderr: prepared.stderr,
            cgroup: placement.take_cgroup_directory(),
            oom_score_adj: self.options.oom_score_adj,
            descriptor_limit: self.options.descriptor_limit,
            isolation: self.options.isolation.clone(),
            temporary_directory: prepared.temporary_directory,
        };
        Ready {
            spec,
            placement,
            outputs,
            exec_size,
            request,
        }
    }

    /// Waits for the action's exit, or stops it when its call is gone or
    /// the runner shuts down. Returns after its first process was reaped
    /// (or, after SIGKILL, a bounded wait for it).
    async fn supervise(
        &self,
        id: &ActionId,
        mut child: SpawnedChild,
        tree: &Tree,
        call: &mut CallGone,
    ) -> (Ended, Option<ChildExit>) {
        let reason = tokio::select! {
            exit = &mut child.exit => {
                return match exit {
                    Ok(exit) => (Ended::Exited(ExitStatus::from_wait_status(exit.status)), Some(exit)),
                    // The reaper keeps every registered sender until it
                    // reaps, so this cannot happen; never guess a status.
                    Err(_) => (Ended::Exited(ExitStatus::Unknown(-1)), None),
                };
            }
            _ = call.gone() => {
                TerminationReason::of_dropped_call(call.deadline(), Instant::now())
            }
            _ = self.shutdown.terminating() => TerminationReason::Shutdown,
        };
        self.observer.action_terminating(&ActionTerminating {
            id: id.clone(),
            reason,
            killed_at_grace_deadline: false,
        });
        // A second shutdown signal ends the grace period at once: the
        // action is then recorded as killed at its (earlier) deadline.
        let (exit, outcome) = terminate(
            tree,
            &mut child.exit,
            self.options.termination_grace_period,
            self.shutdown.killing(),
        )
        .await;
        let killed_at_grace_deadline =
            outcome != crate::process::terminate::TerminationOutcome::ExitedAfterSigterm;
        if killed_at_grace_deadline {
            self.observer.action_terminating(&ActionTerminating {
                id: id.clone(),
                reason,
                killed_at_grace_deadline,
            });
        }
        let ended = Ended::Terminated {
            reason,
            killed_at_grace_deadline,
        };
        (ended, exit)
    }

    /// Writes the diagnosis of a foreign OOM kill into the request's
    /// server logs directory. A failure is logged: the evidence also
    /// travels with the UNAVAILABLE status.
    async fn write_oom_diagnosis(
        &self,
        request: &RunRequest,
        measurement: &Measurement,
        exit: Option<&ChildExit>,
    ) {
        let (Some(cgroup), Some(usage), Some(attribution)) = (
            &measurement.cgroup,
            &measurement.usage,
            &measurement.attribution,
        ) else {
            return;
        };
        let status = exit.map(|exit| ExitStatus::from_wait_status(exit.status));
        let posix = exit
            .zip(status)
            .map(|(exit, status)| posix_resource_usage(&exit.rusage, status));
        let exit_code = match status {
            Some(ExitStatus::Code(code)) => i64::from(code),
            _ => -1,
        };
        let text = oom_diagnosis::diagnosis(
            attribution,
            measurement.accounting.as_ref(),
            cgroup,
            usage,
            exit_code,
            posix.as_ref(),
        );
        let build_directory = self.build_directory.clone();
        let server_logs_directory = request.server_logs_directory.clone();
        let _ = blocking(move || {
            oom_diagnosis::write_diagnosis(&build_directory, &server_logs_directory, &text);
            Ok(())
        })
        .await;
    }
}

/// An action prepared and placed, ready to be spawned.
struct Ready {
    spec: ProcessSpec,
    placement: Placement,
    /// Removed if it never starts.
    outputs: CreatedOutputs,
    exec_size: Result<ExecSize, ExecLimitError>,
    request: RunRequest,
}

/// The error of a call whose deadline passed before its action was
/// created.
fn deadline_passed_before_start() -> RunnerError {
    RunnerError::DeadlineExceeded(
        "the call's deadline passed before the action was started; nothing was run".into(),
    )
}

/// What [`Actions::live`] found.
struct Lived {
    pid: Option<i32>,
    ended: Ended,
    exit: Option<ChildExit>,
    measurement: Measurement,
    cleanup: Cleanup,
}

impl Lived {
    fn not_started(error: RunnerError) -> Self {
        Lived {
            pid: None,
            ended: Ended::NotStarted(error),
            exit: None,
            measurement: Measurement::default(),
            cleanup: Cleanup::NothingStarted,
        }
    }
}

/// Who is to blame for a failed spawn. The program failing to execute is
/// the request's fault (missing, not executable, arguments and environment
/// too large: E2BIG); a node out of descriptors, memory or processes is
/// the node's, at any step; anything else, such as failing to join the
/// cgroup, chroot or switch identity, is ours.
fn spawn_error(
    argv0: &str,
    program: &str,
    exec_size: Result<ExecSize, ExecLimitError>,
    err: SpawnError,
) -> RunnerError {
    let errno = err.source.raw_os_error();
    match err.step {
        SpawnStep::Deadline => {
            return RunnerError::DeadlineExceeded(format!(
                "{} was not started: {err}; nothing was run",
                quoted(argv0)
            ))
        }
        SpawnStep::Cancelled => {
            return RunnerError::Cancelled(format!(
                "{} was not started: {err}; nothing was run",
                quoted(argv0)
            ))
        }
        _ => {}
    }
    if err.step != SpawnStep::Exec {
        let fault = errno.map_or(Fault::Runner, Fault::of_host_errno);
        return RunnerError::of_fault(fault, format!("cannot start {}: {err}", quoted(argv0)));
    }
    let err = err.source;
    let what = if argv0 == program {
        format!("cannot execute {}", quoted(argv0))
    } else {
        format!(
            "cannot execute {} (found as {})",
            quoted(argv0),
            quoted(program)
        )
    };
    if errno == Some(libc::E2BIG) {
        let size = match exec_size {
            Ok(size) => format!("its arguments, environment and path take {size}"),
            Err(error) => error.to_string(),
        };
        return RunnerError::InvalidArgument(format!(
            "{what}: {size} on the new program's stack; the kernel's limit for execve is {} \
             bytes (E2BIG: {err})",
            current_exec_limit()
        ));
    }
    let message = format!("{what}: {err}");
    if err.kind() == std::io::ErrorKind::InvalidInput {
        return RunnerError::InvalidArgument(message);
    }
    match errno {
        Some(
            libc::ENOENT
            | libc::EACCES
            | libc::EPERM
            | libc::EISDIR
            | libc::ENOEXEC
            | libc::ENOTDIR
            | libc::ENAMETOOLONG
            | libc::ELOOP,
        ) => RunnerError::InvalidArgument(message),
        Some(errno) => RunnerError::of_fault(Fault::of_host_errno(errno), message),
        None => RunnerError::Internal(message),
    }
}
