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

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::id::{ActionId, ActionIds};
use super::observer::{ActionStarted, ActionTerminating, CleanupFailed, Observer};
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
use crate::process::clone::Method as SpawnMethod;
use crate::process::reaper::{ChildExit, SpawnedChild};
use crate::process::spawn_server::SpawnServer;
use crate::process::spec::{Identity, ProcessSpec, SpawnError, SpawnStep};
use crate::process::terminate::terminate;
use crate::proto::runner::RunRequest;

/// Starts a prepared process; replaceable so that the lifecycle can be
/// tested without real children.
pub trait Spawner: Send + Sync {
    /// Starts `spec` and registers it with the reaper.
    fn spawn(&self, spec: ProcessSpec) -> Result<SpawnedChild, SpawnError>;
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
}

impl Spawner for ProcessSpawner {
    fn spawn(&self, spec: ProcessSpec) -> Result<SpawnedChild, SpawnError> {
        crate::process::spawn::spawn(spec, self.method, self.server.as_deref())
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
}

/// The end of a Run call, as the action sees it: resolves when the call is
/// dropped, which the call's deadline tells apart from a cancellation.
pub struct CallGone {
    /// Closed when the call's future is dropped.
    pub dropped: oneshot::Receiver<()>,
    /// The call's deadline, if it had one.
    pub deadline: Option<Instant>,
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
        let spawner = Arc::new(ProcessSpawner {
            method: options.spawn_method,
            server: options.spawn_server.clone(),
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
    async fn live(self: Arc<Self>, id: ActionId, request: RunRequest, call: CallGone) -> Lived {
        let this = self.clone();
        let action_id = id.clone();
        let spawned = match Preparation::of(&self.build_directory) {
            Preparation::OnBlockingPool => blocking(move || this.start(&action_id, &request)).await,
            // Local: prepared here; only the spawn, which waits for the
            // program's exec, goes to the blocking pool.
            Preparation::OnWorker => match self.prepare(&request) {
                Ok((prepared, outputs)) => {
                    blocking(move || this.spawn_prepared(&action_id, &request, prepared, outputs))
                        .await
                }
                Err(error) => Err(error),
            },
        };
        let (child, placement, request) = match spawned {
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
        });
        let tree = placement.tree(pid);
        let (ended, exit) = self.supervise(&id, child, &tree, call).await;
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

    /// Prepares the request, places the action and spawns it. Blocking.
    /// An action that does not start leaves nothing behind: not its
    /// outputs, not its cgroup.
    fn start(
        &self,
        id: &ActionId,
        request: &RunRequest,
    ) -> Result<(SpawnedChild, Placement, RunRequest), RunnerError> {
        let (prepared, outputs) = self.prepare(request)?;
        self.spawn_prepared(id, request, prepared, outputs)
    }

    /// Prepares the request; the outputs created come apart, to remove if
    /// the action never starts. Blocking where [`Preparation`] says so.
    fn prepare(&self, request: &RunRequest) -> Result<(Prepared, CreatedOutputs), RunnerError> {
        let mut prepared = prepare(&self.build_directory, &self.options.prepare, request)?;
        let outputs = std::mem::take(&mut prepared.outputs);
        Ok((prepared, outputs))
    }

    /// Places and spawns a prepared action. Blocking.
    fn spawn_prepared(
        &self,
        id: &ActionId,
        request: &RunRequest,
        prepared: Prepared,
        outputs: CreatedOutputs,
    ) -> Result<(SpawnedChild, Placement, RunRequest), RunnerError> {
        self.place_and_spawn(id, request, prepared)
            .inspect_err(|_| outputs.remove())
    }

    fn place_and_spawn(
        &self,
        id: &ActionId,
        request: &RunRequest,
        prepared: Prepared,
    ) -> Result<(SpawnedChild, Placement, RunRequest), RunnerError> {
        let mut placement = Placement::new(&self.placement, id)?;
        let exec_size = ExecSize::of(
            &request.arguments,
            prepared.environment.iter().map(|(key, value)| (key, value)),
        )
        .map(|mut size| {
            size.add_program(prepared.program.len());
            size
        });
        let spec = ProcessSpec {
            program: prepared.program.clone(),
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
        };
        match self.spawner.spawn(spec) {
            Ok(child) => Ok((child, placement, request.clone())),
            Err(error) => {
                // Nothing runs in its place; a failure to remove it marks
                // the runner dirty.
                placement.discard();
                Err(spawn_error(
                    &request.arguments[0],
                    &prepared.program,
                    exec_size,
                    error,
                ))
            }
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
        mut call: CallGone,
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
            _ = &mut call.dropped => {
                TerminationReason::of_dropped_call(call.deadline, Instant::now())
            }
            _ = self.shutdown.terminating() => TerminationReason::Shutdown,
        };
        self.observer.action_terminating(&ActionTerminating {
            id: id.clone(),
            reason,
            killed_at_grace_deadline: false,
        });
        let (exit, outcome) =
            terminate(tree, &mut child.exit, self.options.termination_grace_period).await;
        let killed_at_grace_deadline =
            outcome == crate::process::terminate::TerminationOutcome::KilledAtGraceDeadline;
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
