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
use super::prepare::{prepare, PrepareOptions};
use super::running::{ActionsRunning, RunningGuard, ShutdownSignal};
use crate::build_directory::BuildDirectory;
use crate::cgroup::attribution::OomVerdict;
use crate::process::reaper::{ChildExit, SpawnedChild};
use crate::process::spawn::{Identity, ProcessSpec, SpawnError, SpawnStep};
use crate::process::terminate::terminate;
use crate::proto::runner::RunRequest;
use crate::runner::{blocking, RunnerError};

/// Starts a prepared process; replaceable so that the lifecycle can be
/// tested without real children.
pub trait Spawner: Send + Sync {
    /// Starts `spec` and registers it with the reaper.
    fn spawn(&self, spec: ProcessSpec) -> Result<SpawnedChild, SpawnError>;
}

/// The real spawner: [`crate::process::spawn::spawn`].
#[derive(Debug, Default)]
pub struct ProcessSpawner;

impl Spawner for ProcessSpawner {
    fn spawn(&self, spec: ProcessSpec) -> Result<SpawnedChild, SpawnError> {
        crate::process::spawn::spawn(spec)
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
        Actions {
            build_directory,
            options,
            placement,
            ids,
            observer,
            running: ActionsRunning::default(),
            shutdown: ShutdownSignal::default(),
            spawner: Arc::new(ProcessSpawner),
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
            oom_verdict: ended.measurement.verdict.unwrap_or(OomVerdict::None),
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
        let spawned = blocking(move || this.start(&action_id, &request)).await;
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
        let cgroup = placement.cgroup_path().map(PathBuf::from);
        let action_id = id.clone();
        let (measurement, cleanup) = blocking(move || {
            let measurement = placement.measure(&action_id);
            Ok((measurement, placement.release()))
        })
        .await
        .unwrap_or_else(|error| {
            // The blocking task died (a panic): nothing can be verified.
            let detail = error.to_string();
            let cleanup = Cleanup::Failed {
                cgroup: cgroup.unwrap_or_default(),
                pids: Vec::new(),
                detail: detail.clone(),
            };
            (Measurement::failed(detail), cleanup)
        });
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
        if measurement.verdict.is_some_and(OomVerdict::is_retryable) {
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
    fn start(
        &self,
        id: &ActionId,
        request: &RunRequest,
    ) -> Result<(SpawnedChild, Placement, RunRequest), RunnerError> {
        let prepared = prepare(&self.build_directory, &self.options.prepare, request)?;
        let placement = Placement::new(&self.placement, id)?;
        let spec = ProcessSpec {
            program: prepared.program.clone(),
            arguments: request.arguments.clone(),
            environment: prepared.environment,
            working_directory: prepared.working_directory,
            chroot_directory: prepared.chroot_directory,
            identity: self.options.identity.clone(),
            stdout: prepared.stdout,
            stderr: prepared.stderr,
            cgroup_procs: match placement.cgroup_procs() {
                Ok(procs) => procs,
                Err(error) => {
                    placement.release();
                    return Err(error);
                }
            },
            oom_score_adj: self.options.oom_score_adj,
        };
        match self.spawner.spawn(spec) {
            Ok(child) => Ok((child, placement, request.clone())),
            Err(error) => {
                // Nothing ran in its place; a failure to remove it marks
                // the runner dirty.
                placement.release();
                Err(spawn_error(&request.arguments[0], &prepared.program, error))
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
        let (Some(cgroup), Some(usage)) = (&measurement.cgroup, &measurement.usage) else {
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
        let text = oom_diagnosis::diagnosis(cgroup, usage, exit_code, posix.as_ref());
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

/// The program itself failing to execute is the request's fault; a step
/// before it (joining the cgroup, chroot, switching identity) is the host's.
fn spawn_error(argv0: &str, program: &str, err: SpawnError) -> RunnerError {
    if err.step != SpawnStep::Exec {
        return RunnerError::Internal(format!("cannot start {argv0:?}: {err}"));
    }
    let err = err.source;
    let message = if argv0 == program {
        format!("cannot execute {argv0:?}: {err}")
    } else {
        format!("cannot execute {argv0:?} (found as {program:?}): {err}")
    };
    if err.kind() == std::io::ErrorKind::InvalidInput {
        return RunnerError::InvalidArgument(message);
    }
    match err.raw_os_error() {
        Some(
            libc::ENOENT
            | libc::EACCES
            | libc::EPERM
            | libc::EISDIR
            | libc::ENOEXEC
            | libc::ENOTDIR,
        ) => RunnerError::InvalidArgument(message),
        _ => RunnerError::Internal(message),
    }
}
