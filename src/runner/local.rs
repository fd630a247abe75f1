//! The local runner: executes an action as a child process of the runner.
//!
//! It resolves the request's paths beneath the build directory, starts the
//! program as the leader of its own process group, and waits for it through
//! the reaper so that the reported rusage is that child's own. If the Run
//! future is dropped (the RPC was cancelled or its deadline passed, which
//! is how bb_worker enforces timeouts) the action is terminated by a task
//! detached from the RPC: SIGTERM to the group, the grace period, SIGKILL.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{oneshot, watch};

use crate::bounded::quoted;
use crate::build_directory::{
    open_directory_beneath, BuildDirectory, PathError, ResolvedDirectory,
};
use crate::cgroup::action::{ActionCgroup, ActionCgroupManager};
use crate::cgroup::peak::{read_lifetime_peak, PeakError};
use crate::cgroup::CgroupCounters;
use crate::process::lookup::find_program;
use crate::process::reaper::{ChildExit, SpawnedChild};
use crate::process::signal_name;
use crate::process::spawn::{spawn, Identity, ProcessSpec, SpawnError, SpawnStep};
use crate::process::terminate::{signal_group, terminate, ProcessTree};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

use super::{Runner, RunnerError};

/// Options of the local runner, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct LocalRunnerOptions {
    /// Add `TMPDIR=<temporary directory>` unless the request sets TMPDIR.
    pub set_tmpdir_environment_variable: bool,
    /// Chroot into the input root before exec.
    pub chroot_into_input_root: bool,
    /// Drop to this identity before exec.
    pub run_commands_as: Option<Identity>,
    /// Time between SIGTERM and SIGKILL when an action is stopped.
    pub termination_grace_period: Duration,
    /// When set, every action runs in a cgroup of its own (`actionCgroups`).
    pub action_cgroups: Option<Arc<ActionCgroupManager>>,
    /// `oom_score_adj` for actions (what the runner started with, before
    /// lowering its own).
    pub action_oom_score_adj: Option<i32>,
    /// With action cgroups: append each action's own `CgroupResourceUsage`,
    /// measured just before its cgroup is removed.
    pub sample_action_cgroups: bool,
}

/// Runs actions as child processes. See the module documentation.
pub struct LocalRunner {
    build_directory: Arc<BuildDirectory>,
    options: LocalRunnerOptions,
    /// Set to true to terminate every running action (shutdown).
    terminate_all: Arc<watch::Sender<bool>>,
    /// Actions started and not yet reaped, including those still being
    /// terminated after their call was dropped.
    actions_running: Arc<watch::Sender<usize>>,
}

/// Terminates every action of a [`LocalRunner`], for shutdown.
#[derive(Clone)]
pub struct ActionTerminator(Arc<watch::Sender<bool>>);

impl ActionTerminator {
    /// Starts graceful termination of all running and future actions.
    pub fn terminate_all(&self) {
        self.0.send_replace(true);
    }
}

impl LocalRunner {
    /// While an action cgroup could not be cleaned, this runner cannot
    /// promise that nothing of an earlier action is still running: refuse
    /// work so that bb_worker stops trusting it until it is clean.
    fn refuse_if_dirty(&self) -> Result<(), RunnerError> {
        match self
            .options
            .action_cgroups
            .as_ref()
            .and_then(|m| m.dirty_reason())
        {
            Some(reason) => Err(RunnerError::unavailable(reason)),
            None => Ok(()),
        }
    }

    /// Creates a runner executing actions in `build_directory`.
    pub fn new(build_directory: Arc<BuildDirectory>, options: LocalRunnerOptions) -> Self {
        LocalRunner {
            build_directory,
            options,
            terminate_all: Arc::new(watch::channel(false).0),
            actions_running: Arc::new(watch::channel(0).0),
        }
    }

    /// The number of actions started and not yet reaped. A dropped Run
    /// call returns at once while its action is still being terminated
    /// (SIGTERM, grace period, SIGKILL); this count says when it is gone,
    /// for decorators that must not act while it lives (cleaning).
    pub fn actions_running(&self) -> watch::Receiver<usize> {
        self.actions_running.subscribe()
    }

    /// A handle that terminates all actions of this runner.
    pub fn terminator(&self) -> ActionTerminator {
        ActionTerminator(self.terminate_all.clone())
    }
}

#[tonic::async_trait]
impl Runner for LocalRunner {
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError> {
        self.refuse_if_dirty()?;
        let build_directory = self.build_directory.clone();
        blocking(
            move || match build_directory.check_exists(&request.path, "path") {
                Ok(()) => Ok(()),
                // bb_runner answers INTERNAL for a missing readiness path.
                Err(err @ PathError::NotFound { .. }) => {
                    Err(RunnerError::Internal(err.to_string()))
                }
                Err(err) => Err(path_error(err)),
            },
        )
        .await
    }

    async fn run(&self, request: RunRequest) -> Result<RunResponse, RunnerError> {
        if request.arguments.is_empty() {
            return Err(RunnerError::InvalidArgument(
                "arguments is empty: the first argument must name the program to run".into(),
            ));
        }
        self.refuse_if_dirty()?;
        let argv0 = request.arguments[0].clone();
        let build_directory = self.build_directory.clone();
        let options = self.options.clone();
        let grace = self.options.termination_grace_period;
        let terminate_all = self.terminate_all.subscribe();

        // Dropping `cancel` (because this future was dropped) tells the
        // supervisor to terminate the action. Spawning and supervision run
        // in one task detached from the RPC, so that a call dropped while
        // the child is being spawned still gets it terminated, not orphaned.
        let (cancel, cancelled) = oneshot::channel::<()>();
        let running = RunningAction::count(self.actions_running.clone());
        let supervisor = tokio::spawn(async move {
            let _running = running;
            let (child, cgroup) =
                blocking(move || prepare_and_spawn(&build_directory, &options, &request)).await?;
            let pid = child.pid;
            tracing::debug!(pid, "action started");
            let started = Instant::now();
            let supervised = supervise(child, cgroup, cancelled, terminate_all, grace).await;
            Ok::<_, RunnerError>((pid, started, supervised))
        });
        let (pid, started, supervised) = supervisor
            .await
            .map_err(|err| RunnerError::Internal(format!("action supervisor failed: {err}")))??;
        drop(cancel);
        match supervised {
            Supervised::Exited(exit, cgroup_usage) => {
                tracing::info!(pid, argv0, exit_code = ?exit.exit_code(), signal = ?exit.signal(),
                    elapsed = ?started.elapsed(), "action exited");
                let mut response = response(&exit)?;
                match cgroup_usage {
                    None => {}
                    Some(Ok(usage)) => {
                        response
                            .resource_usage
                            .push(prost_types::Any::from_msg(&*usage).map_err(|err| {
                                RunnerError::Internal(format!(
                                    "cannot encode CgroupResourceUsage: {err}"
                                ))
                            })?)
                    }
                    Some(Err(err)) => return Err(RunnerError::Internal(err)),
                }
                Ok(response)
            }
            Supervised::Terminated => Err(RunnerError::unavailable(format!(
                "action {argv0:?} was terminated because the runner is shutting down"
            ))),
        }
    }
}

/// Counts one action in [`LocalRunner::actions_running`] until dropped.
struct RunningAction(Arc<watch::Sender<usize>>);

impl RunningAction {
    fn count(actions_running: Arc<watch::Sender<usize>>) -> Self {
        actions_running.send_modify(|count| *count += 1);
        RunningAction(actions_running)
    }
}

impl Drop for RunningAction {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count = count.saturating_sub(1));
    }
}

enum Supervised {
    /// The action exited; with sampled action cgroups, its cgroup's usage
    /// (or why it could not be measured).
    Exited(ChildExit, Option<Result<Box<CgroupResourceUsage>, String>>),
    Terminated,
}

/// Waits for the action's exit, or terminates it when the RPC is gone or
/// the runner shuts down. Always returns after the leader was reaped and,
/// with action cgroups, after the action's cgroup was emptied and removed.
async fn supervise(
    mut child: SpawnedChild,
    cgroup: Option<ActionCgroupHandle>,
    mut cancelled: oneshot::Receiver<()>,
    mut terminate_all: watch::Receiver<bool>,
    grace: Duration,
) -> Supervised {
    let pid = child.pid;
    let reason = tokio::select! {
        exit = &mut child.exit => {
            if cgroup.is_none() {
                // Background processes the action left in its group
                // (`cmd &`) must not outlive it.
                signal_group(pid, Signal::SIGKILL);
            }
            let usage = match &cgroup {
                Some(handle) if handle.before.is_some() => Some(measure(handle).await.map(Box::new)),
                _ => None,
            };
            release(cgroup, pid, "exited").await;
            return match exit {
                Ok(exit) => Supervised::Exited(exit, usage),
                // The reaper keeps every registered sender until it reaps.
                Err(_) => Supervised::Terminated,
            };
        }
        _ = &mut cancelled => "the RPC was cancelled or its deadline passed",
        // The watch guard is dropped at once, which must not be held across
        // the awaits below.
        _ = async { drop(terminate_all.wait_for(|terminate| *terminate).await) } => {
            "the runner is shutting down"
        }
    };
    tracing::info!(pid, reason, "terminating action");
    let tree = match &cgroup {
        Some(handle) => ProcessTree::Cgroup(&handle.cgroup.path),
        None => ProcessTree::Group(pid),
    };
    let (_, outcome) = terminate(tree, &mut child.exit, grace).await;
    release(cgroup, pid, &outcome.to_string()).await;
    tracing::info!(pid, reason, %outcome, "action terminated");
    Supervised::Terminated
}

/// An action's cgroup with the manager that removes it.
struct ActionCgroupHandle {
    manager: Arc<ActionCgroupManager>,
    cgroup: ActionCgroup,
    /// Counters right after creation, when the action's usage is sampled.
    before: Option<CgroupCounters>,
}

/// The usage of an exited action's own cgroup. Everything the action did
/// is in it, and nothing else: no reset of memory.peak is needed, and it
/// works on kernels before 6.12 too.
async fn measure(handle: &ActionCgroupHandle) -> Result<CgroupResourceUsage, String> {
    let path = handle.cgroup.path.clone();
    let before = handle.before;
    tokio::task::spawn_blocking(move || {
        let after = CgroupCounters::read(&path)
            .map_err(|err| format!("cannot read the action's cgroup after it exited: {err}"))?;
        let mut usage = match &before {
            Some(before) => after.usage_since(before),
            None => after.usage_since(&after),
        };
        usage.memory_peak = read_memory_peak(&path);
        Ok(usage)
    })
    .await
    .map_err(|err| format!("measuring the action's cgroup failed: {err}"))?
}

/// The action cgroup's `memory.peak`, or 0 ("not measured") without one.
fn read_memory_peak(cgroup: &std::path::Path) -> i64 {
    match read_lifetime_peak(cgroup) {
        Ok(bytes) => i64::try_from(bytes).unwrap_or(i64::MAX),
        Err(err @ PeakError::Parse { .. }) => {
            tracing::error!(%err, "cannot parse the action cgroup's memory.peak; reporting 0");
            0
        }
        Err(err) => {
            tracing::warn!(%err, "cannot read the action cgroup's memory.peak; reporting 0");
            0
        }
    }
}

/// Kills what is left of the action, verifies its cgroup is empty and
/// removes it. A failure has already marked the runner dirty.
async fn release(cgroup: Option<ActionCgroupHandle>, pid: i32, ended: &str) {
    let Some(ActionCgroupHandle {
        manager, cgroup, ..
    }) = cgroup
    else {
        return;
    };
    let path = cgroup.path.clone();
    let result = tokio::task::spawn_blocking(move || manager.release(cgroup)).await;
    match result {
        Ok(Ok(())) => {
            tracing::info!(pid, ended, cgroup = %path.display(), "action cgroup emptied and removed")
        }
        Ok(Err(err)) => tracing::error!(pid, ended, %err, "action cgroup could not be cleaned"),
        Err(err) => tracing::error!(pid, ended, %err, "action cgroup cleanup failed"),
    }
}

/// Resolves everything the request names and starts the process.
fn prepare_and_spawn(
    build_directory: &BuildDirectory,
    options: &LocalRunnerOptions,
    request: &RunRequest,
) -> Result<(SpawnedChild, Option<ActionCgroupHandle>), RunnerError> {
    let input_root = build_directory
        .open_directory(&request.input_root_directory, "input_root_directory")
        .map_err(path_error)?;
    let working_directory = open_directory_beneath(
        input_root.fd.as_fd(),
        &request.working_directory,
        "working_directory",
    )
    .map_err(path_error)?;

    // Directories the local runner itself does not use are still checked,
    // so that no request path, used or not, may point out of the build
    // directory.
    let temporary_directory = optional_directory(
        build_directory,
        &request.temporary_directory,
        "temporary_directory",
    )?;
    optional_directory(
        build_directory,
        &request.server_logs_directory,
        "server_logs_directory",
    )?;

    let mut environment: BTreeMap<String, String> = request
        .environment_variables
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let (true, Some(temporary)) = (
        options.set_tmpdir_environment_variable,
        &temporary_directory,
    ) {
        environment
            .entry("TMPDIR".into())
            .or_insert_with(|| temporary.path.to_string_lossy().into_owned());
    }

    let argv0 = &request.arguments[0];
    let root = options
        .chroot_into_input_root
        .then(|| input_root.fd.as_fd());
    let program = find_program(
        argv0,
        environment.get("PATH").map(String::as_str),
        working_directory.as_fd(),
        root,
    )
    .map_err(|err| RunnerError::InvalidArgument(err.to_string()))?;

    let stdout = create_output(build_directory, &request.stdout_path, "stdout_path")?;
    let stderr = create_output(build_directory, &request.stderr_path, "stderr_path")?;
    let chroot_directory = if options.chroot_into_input_root {
        Some(input_root.fd)
    } else {
        None
    };
    let cgroup = match &options.action_cgroups {
        Some(manager) => Some(create_action_cgroup(
            manager,
            options.sample_action_cgroups,
        )?),
        None => None,
    };
    let cgroup_procs = match &cgroup {
        Some(handle) => Some(handle.cgroup.procs.try_clone().map_err(|err| {
            RunnerError::Internal(format!("cannot duplicate cgroup.procs descriptor: {err}"))
        })?),
        None => None,
    };
    let spawned = spawn(ProcessSpec {
        program: program.clone(),
        arguments: request.arguments.clone(),
        environment: environment.into_iter().collect(),
        working_directory,
        chroot_directory,
        identity: options.run_commands_as.clone(),
        stdout,
        stderr,
        cgroup_procs,
        oom_score_adj: options.action_oom_score_adj,
    });
    match spawned {
        Ok(child) => Ok((child, cgroup)),
        Err(err) => {
            if let Some(ActionCgroupHandle {
                manager, cgroup, ..
            }) = cgroup
            {
                // Nothing ran in it; a failure here marks the runner dirty.
                let _ = manager.release(cgroup);
            }
            Err(spawn_error(argv0, &program, err))
        }
    }
}

/// Creates the action's cgroup and, when its usage is sampled, reads its
/// initial counters.
fn create_action_cgroup(
    manager: &Arc<ActionCgroupManager>,
    sample: bool,
) -> Result<ActionCgroupHandle, RunnerError> {
    let cgroup = manager.create().map_err(|err| {
        RunnerError::Internal(format!("cannot create the action's cgroup: {err}"))
    })?;
    let before = if sample {
        match CgroupCounters::read(&cgroup.path) {
            Ok(counters) => Some(counters),
            Err(err) => {
                let _ = manager.release(cgroup);
                return Err(RunnerError::Internal(format!(
                    "cannot read the new action cgroup's counters: {err}"
                )));
            }
        }
    } else {
        None
    };
    Ok(ActionCgroupHandle {
        manager: manager.clone(),
        cgroup,
        before,
    })
}

fn optional_directory(
    build_directory: &BuildDirectory,
    relative: &str,
    field: &'static str,
) -> Result<Option<ResolvedDirectory>, RunnerError> {
    if relative.is_empty() {
        return Ok(None);
    }
    build_directory
        .open_directory(relative, field)
        .map(Some)
        .map_err(path_error)
}

fn create_output(
    build_directory: &BuildDirectory,
    relative: &str,
    field: &'static str,
) -> Result<std::fs::File, RunnerError> {
    if relative.is_empty() {
        return Err(RunnerError::InvalidArgument(format!(
            "{field} is empty: a path relative to the build directory is required"
        )));
    }
    build_directory
        .create_file(relative, field)
        .map_err(path_error)
}

/// A path the request names is its own fault (INVALID_ARGUMENT) unless the
/// failure is the host's.
pub(crate) fn path_error(err: PathError) -> RunnerError {
    if err.is_request_error() {
        RunnerError::InvalidArgument(err.to_string())
    } else {
        RunnerError::Internal(err.to_string())
    }
}

/// The program itself failing to execute is the request's fault; a step
/// before it (joining the cgroup, chroot, switching identity) is the host's.
fn spawn_error(argv0: &str, program: &str, err: SpawnError) -> RunnerError {
    if err.step != SpawnStep::Exec {
        return RunnerError::Internal(format!("cannot start {}: {err}", quoted(argv0)));
    }
    let err = err.source;
    let message = if argv0 == program {
        format!("cannot execute {}: {err}", quoted(argv0))
    } else {
        format!(
            "cannot execute {} (found as {}): {err}",
            quoted(argv0),
            quoted(program)
        )
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

/// The response for an exited action: its exit code (or -1 and the signal
/// name) and its own rusage.
fn response(exit: &ChildExit) -> Result<RunResponse, RunnerError> {
    let mut usage = posix_resource_usage(&exit.rusage);
    let exit_code = match (exit.exit_code(), exit.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(signal)) => {
            usage.termination_signal = signal_name(signal);
            -1
        }
        (None, None) => {
            return Err(RunnerError::Internal(format!(
                "unexpected wait status {:#x}",
                exit.status
            )))
        }
    };
    let any = prost_types::Any::from_msg(&usage)
        .map_err(|err| RunnerError::Internal(format!("cannot encode POSIXResourceUsage: {err}")))?;
    Ok(RunResponse {
        exit_code,
        resource_usage: vec![any],
    })
}

fn posix_resource_usage(rusage: &libc::rusage) -> PosixResourceUsage {
    let duration = |tv: libc::timeval| prost_types::Duration {
        seconds: tv.tv_sec,
        nanos: (tv.tv_usec * 1000) as i32,
    };
    PosixResourceUsage {
        user_time: Some(duration(rusage.ru_utime)),
        system_time: Some(duration(rusage.ru_stime)),
        // Linux reports ru_maxrss in KiB; the protocol wants bytes.
        maximum_resident_set_size: rusage.ru_maxrss.saturating_mul(1024),
        page_reclaims: rusage.ru_minflt,
        page_faults: rusage.ru_majflt,
        swaps: rusage.ru_nswap,
        block_input_operations: rusage.ru_inblock,
        block_output_operations: rusage.ru_oublock,
        messages_sent: rusage.ru_msgsnd,
        messages_received: rusage.ru_msgrcv,
        signals_received: rusage.ru_nsignals,
        voluntary_context_switches: rusage.ru_nvcsw,
        involuntary_context_switches: rusage.ru_nivcsw,
        termination_signal: String::new(),
    }
}

/// Runs blocking filesystem and process work off the async worker threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RunnerError> + Send + 'static,
) -> Result<T, RunnerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| RunnerError::Internal(format!("blocking task failed: {err}")))?
}
