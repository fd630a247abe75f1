//! rbe-runner: argv → config → runner chain → serve; and the operator CLI.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use rbe_runner::action::observer::{
    report_dirty_cgroups, report_stuck_spawns, LogObserver, Refusal, RunnerStateReporter,
};
use rbe_runner::action::prepare::{Preparation, PrepareOptions};
use rbe_runner::action::{
    ActionIds, ActionOptions, Actions, ActionsRunning, Observer, Observers, PlacementPolicy,
    RunnerInstance, ShutdownSignal,
};
use rbe_runner::build_directory::BuildDirectory;
use rbe_runner::cgroup::action::RUNNER_LEAF;
use rbe_runner::cgroup::host::{
    self as cgroup_host, ActionCgroupOptions, CgroupHost, CgroupOptions, CgroupSetup,
};
use rbe_runner::cleaner::command::CommandCleaner;
use rbe_runner::cleaner::directory::DirectoryCleaner;
use rbe_runner::cleaner::process_table::ProcessTableCleaner;
use rbe_runner::cleaner::Cleaner;
use rbe_runner::cli;
use rbe_runner::config::{self, Config, DevIsolation, LogFormat, NetworkIsolation, TmpIsolation};
use rbe_runner::diagnostics::{DiagnosticsServer, Readiness};
use rbe_runner::events::hub::EventHub;
use rbe_runner::events::Events;
use rbe_runner::listener::tls::ServedCertificates;
use rbe_runner::metrics::Metrics;
use rbe_runner::output::Output;
use rbe_runner::process::clone::Method as SpawnMethod;
use rbe_runner::process::descriptors;
use rbe_runner::process::init;
use rbe_runner::process::input_root_mounts::{Entry, InputRootMounts};
use rbe_runner::process::isolation::Isolation;
use rbe_runner::process::isolation_probe;
use rbe_runner::process::privileges::{
    self, CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN, CAP_SYS_CHROOT,
};
use rbe_runner::process::reaper::{self, Waiting};
use rbe_runner::process::spawn::{
    choose_method, choose_waiting, start_spawn_server as start_server, SPAWN_ENVIRONMENT_VARIABLE,
    WAIT_ENVIRONMENT_VARIABLE,
};
use rbe_runner::process::spawn_server::{self, SpawnServer};
use rbe_runner::process::spec::Identity;
use rbe_runner::process::user_namespace::{self, ActionIdentity, RunnerPrivileges, UserNamespace};
use rbe_runner::process::{LoweredOomScoreAdj, OomScoreAdjError, DEFAULT_PROC_ROOT};
use rbe_runner::resource_limits::{self, DescriptorLimit};
use rbe_runner::runner::local::LocalRunner;
use rbe_runner::runner::SharedRunner;
use rbe_runner::runner::{clean, readiness, temporary_directory_symlinking};
use rbe_runner::runtime;
use rbe_runner::server::BoundServers;
use rbe_runner::shutdown::{shutdown_bound, ShutdownBound};
use rbe_runner::telemetry::action_spans::ActionSpans;
use rbe_runner::telemetry::active_spans::ActiveSpans;
use rbe_runner::telemetry::{SpanDrops, Telemetry};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            println!("{}", cli::USAGE);
            return if args.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Some("--version") => {
            println!("rbe-runner {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("check-config") => return cli::check_config::main(&args[1..]),
        Some("install") => return cli::install::main(&args[1..]),
        Some("exec") => return cli::exec::main(&args[1..]),
        Some("watch") => return cli::watch::main(&args[1..]),
        Some("logs") => return cli::logs::main(&args[1..]),
        Some("report") => return cli::report::main(&args[1..]),
        Some(spawn_server::SERVE_ARGUMENT) => return spawn_server::serve(&args[1..]),
        Some(init::INIT_ARGUMENT) => return init::serve(&args[1..]),
        Some(_) if args.len() == 1 => serve(PathBuf::from(&args[0])),
        Some(_) => Err(anyhow::anyhow!(
            "unexpected arguments {:?}\n{}",
            &args[1..],
            cli::USAGE
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rbe-runner: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

fn serve(config_file: PathBuf) -> anyhow::Result<()> {
    // The configuration chooses the log format; its errors are printed
    // by `main` without a logger.
    let config = config::load(&config_file)?;
    init_logging(config.log_format);
    let descriptor_limit = apply_process_settings(&config)?;
    // One async worker; SIGCHLD blocked everywhere, read from a signalfd
    // (src/runtime.rs).
    let runtime = runtime::build().context("cannot start the async runtime")?;
    let served = runtime.block_on(serve_config(config, descriptor_limit));
    // What is still running was given up at the shutdown deadline (a
    // journal write blocked on a hung mount, say) and logged: dropping the
    // runtime would wait for it without limit.
    runtime.shutdown_background();
    served
}

/// Settings of the runner process itself, inherited by every action.
/// Returns the descriptor limit actions get back (see
/// src/resource_limits.rs).
fn apply_process_settings(config: &Config) -> anyhow::Result<Option<DescriptorLimit>> {
    let inherited = descriptors::close_inherited_at_exec()
        .context("cannot mark inherited descriptors close-on-exec")?;
    if inherited > 0 {
        tracing::info!(
            count = inherited,
            "descriptors inherited beyond stderr are closed at every exec: no action gets them"
        );
    }
    if let Some(umask) = config.global.set_umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
        tracing::info!(
            umask = format!("{umask:03o}"),
            "umask set for the runner and its actions"
        );
    }
    for key in &config.global.ignored_keys {
        tracing::warn!(
            key,
            "configuration key has no effect in rbe-runner and is ignored"
        );
    }
    if !config.apple_xcode_developer_directories.is_empty() {
        tracing::warn!("appleXcodeDeveloperDirectories is ignored on Linux");
    }
    // Orphans of actions are re-parented to us rather than to init, so
    // they are reaped (and accounted for) here, also when we are PID 1.
    nix::sys::prctl::set_child_subreaper(true).context("cannot become a child subreaper")?;
    // global.setResourceLimits, then the runner's own descriptor limit
    // raised; actions get back the soft limit it had in between.
    resource_limits::apply(&config.global.set_resource_limits)?;
    Ok(resource_limits::raise_descriptor_limit()?)
}

async fn serve_config(
    config: Config,
    descriptor_limit: Option<DescriptorLimit>,
) -> anyhow::Result<()> {
    let signals = ShutdownSignals::install()?;
    let proc_root = Path::new(DEFAULT_PROC_ROOT);
    // isolation without CAP_SYS_ADMIN: actions' namespaces made inside a
    // user namespace, chosen once here (refused, naming the fields, where
    // a user namespace cannot give what the configuration asks).
    let user_namespace = choose_user_namespace(&config, proc_root)?;
    require_privileges(&config, proc_root)?;
    let build_directory =
        Arc::new(BuildDirectory::open(&config.build_directory_path).context("buildDirectoryPath")?);
    Preparation::log(&build_directory, runtime::BLOCKING_THREADS);

    // sampleCgroupResourceUsage and actionCgroups: find the cgroups they
    // need, take over the delegated subtree (removing leftovers of a
    // previous runner) and check what accounting needs, before serving.
    let cgroups = start_cgroups(&config).await?;

    // How action processes are created: clone3 (straight into their
    // cgroups) where the kernel and seccomp allow it, else clone; and how
    // they are waited for: on pidfds in the event loop, else one thread.
    let spawn_method = choose_how_actions_start(&cgroups).await?;

    // Under memory pressure the kernel should kill an action (retryable)
    // before the runner that serves all of them. That it cannot matters
    // with actionCgroups, whose memory limits make the OOM killer's choice
    // come up; elsewhere (the development configuration, an unprivileged
    // runner) it is expected.
    let action_oom_score_adj = lower_oom_score_adj(config.action_cgroups.is_some());

    // Actions' processes are created by a small process of ours, as
    // children of the runner, which spares the runner copying itself for
    // each (see src/process/spawn_server.rs). Started after the runner
    // moved into its cgroup and lowered its oom_score_adj, which it
    // inherits.
    let spawn_server = start_spawn_server(spawn_method).await;

    // isolation: the configured namespaces, created once by the path every
    // action takes; a kernel or seccomp profile that refuses them stops
    // the runner here, naming the field.
    let isolation = isolation_of(&config, user_namespace, &build_directory);
    if let Some(isolation) = &isolation {
        isolation_probe::probe(
            isolation,
            spawn_method,
            spawn_server.as_deref(),
            build_directory.path(),
        )
        .await?;
        tracing::info!(
            ?isolation,
            namespaces = user_namespace::describe(isolation.user_namespace.as_ref()),
            set_up_by_spawn_server = isolation.entered_by_spawn_server(),
            "actions run isolated"
        );
    }

    // The event stream of this start of the runner (every action id and
    // event names the instance), with its journal when events.journalPath
    // is set.
    let instance = RunnerInstance::random();
    let events = Events::start(&config.events, instance.clone());

    // global.diagnosticsHttpServer.enablePrometheus: metrics of calls,
    // actions, the event stream, the spawn server, the delegated cgroup's
    // budget and the process.
    // The TLS certificates served are recorded for Buildbarn's expiry
    // metrics.
    let served_certificates = ServedCertificates::default();
    // global.tracing: a span per unary call and the spans of each action,
    // exported in the background (a collector that is down costs only
    // the spans, counted); /active_spans lists running actions either way.
    let telemetry = Arc::new(Telemetry::start(config.global.tracing.as_ref())?);
    let active_spans = Arc::new(ActiveSpans::default());
    let metrics = create_metrics(
        &config,
        &cgroups,
        &events,
        &spawn_server,
        &served_certificates,
        telemetry.drops(),
    )?;

    // Live output: running (and recently finished) actions' stdout and
    // stderr for followers (`rbe-runner logs`), who count against
    // events.maximumSubscribers together with event subscribers.
    let output = Output::start(
        instance.clone(),
        build_directory.clone(),
        events.hub().stream_slots(),
        proc_root,
    );

    // Who learns what the runner does: the log, live output (before the
    // events, so that an action announced there can be followed), the
    // event stream, the metrics, the spans, and whether it accepts work.
    let mut observers: Vec<Arc<dyn Observer>> =
        vec![Arc::new(LogObserver), output.observer(), events.observer()];
    if let Some(metrics) = &metrics {
        observers.push(metrics.actions.clone());
    }
    observers.push(active_spans.clone());
    if let Some(tracer) = telemetry.tracer() {
        observers.push(Arc::new(ActionSpans::new(tracer.clone())));
    }
    let observer: Arc<dyn Observer> = Arc::new(Observers::new(observers));
    let state = Arc::new(
        RunnerStateReporter::new(observer.clone())
            .with_memory_budget(cgroup_host::memory_budget(&cgroups)),
    );

    // Every action's life: placed in a process group or a cgroup of its
    // own, measured as sampleCgroupResourceUsage asks.
    let actions = Arc::new(Actions::new(
        build_directory.clone(),
        action_options(
            &config,
            (action_oom_score_adj, descriptor_limit),
            spawn_method,
            spawn_server,
            isolation,
        ),
        placement_policy(&config, cgroups, &state),
        ActionIds::new(instance.clone()),
        observer.clone(),
    ));
    let actions_running = actions.running().clone();
    let shutdown_signal = actions.shutdown().clone();
    // stuckSpawnTimeout: a spawn whose exec hangs (its storage does) makes
    // the runner refuse work until it returns, as a dirty cgroup does.
    report_stuck_spawns(actions.stuck_spawns().clone(), state.clone());

    // The runner chain, innermost first, as bb_runner composes it: the
    // local runner executes actions as child processes; the decorators
    // the configuration enables wrap it.
    let local: SharedRunner = Arc::new(LocalRunner::new(actions, build_directory.clone()));
    let runner = decorate(
        local,
        &config,
        &build_directory,
        &actions_running,
        &observer,
        &state,
        proc_root,
    )?;

    let mut servers = BoundServers::bind(
        &config.grpc_servers,
        config.listen_path_mode,
        &served_certificates,
    )
    .await?;
    if let Some(metrics) = &metrics {
        servers.count_calls(metrics.grpc.clone());
    }
    servers.trace_calls(telemetry.clone());
    // global.diagnosticsHttpServer: bound once the gRPC listeners are,
    // stopped with them.
    let bound = ShutdownBound::new(shutdown_bound(config.termination_grace_period));
    let diagnostics = start_diagnostics(
        &config,
        (metrics, active_spans),
        &state,
        &served_certificates,
        &bound,
    )
    .await?;
    // The state is reported (event, metric, log) before the "serving"
    // line: whoever waits for that line (an operator, a test, a probe) and
    // then asks /-/ready must find the metrics and events agreeing.
    state.started();
    tracing::info!(
        listeners = ?servers.listener_names(),
        build_directory = %build_directory.path().display(),
        runner_instance = %instance,
        "serving"
    );

    // Signals: the first refuses work and stops actions as configured, the
    // second abandons the waits on others. Every wait at shutdown ends by
    // one deadline (src/shutdown.rs).
    let stop_gracefully = config
        .grpc_servers
        .iter()
        .all(|server| server.stop_gracefully);
    let shutdown = on_signals(
        signals,
        stop_gracefully,
        state.clone(),
        (actions_running.clone(), shutdown_signal.clone()),
        events.hub(),
        bound.clone(),
    );
    let served = servers
        .serve(runner, events.service(), output.service(), shutdown, &bound)
        .await;
    // Calls are over: the runner no longer waits for anything by choice.
    bound.start_clock();
    diagnostics.stop().await;
    wait_for_terminating_actions(&actions_running, &shutdown_signal, &bound).await;
    // Every event published; the journal writes what it was given.
    events.finish(&bound).await;
    // The last spans exported, for a few seconds at most and within the
    // shutdown bound; a second signal abandons the export, logged.
    if bound
        .bounded(tokio::task::spawn_blocking(move || telemetry.shutdown()))
        .await
        .is_err()
    {
        tracing::warn!("tracing: the last spans were abandoned at shutdown");
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// runCommandsAs and chrootIntoInputRoot need privileges; without them
/// every action would fail with EPERM, so refuse to start instead.
fn require_privileges(config: &Config, proc_root: &Path) -> anyhow::Result<()> {
    if config.run_commands_as.is_some() {
        privileges::require(proc_root, "runCommandsAs", &[CAP_SETUID, CAP_SETGID])?;
    }
    if config.chroot_into_input_root {
        privileges::require(proc_root, "chrootIntoInputRoot", &[CAP_SYS_CHROOT])?;
    }
    if !config.input_root_mounts.is_empty() {
        privileges::require(proc_root, "inputRootMounts", &[CAP_SYS_ADMIN])?;
    }
    Ok(())
}

/// Whether actions' namespaces (`isolation`) are made inside a user
/// namespace: by a runner without CAP_SYS_ADMIN (docs/isolation.md,
/// "Without root").
fn choose_user_namespace(
    config: &Config,
    proc_root: &Path,
) -> anyhow::Result<Option<UserNamespace>> {
    let Some(field) = config.isolation.first_field() else {
        return Ok(None);
    };
    let identity = config
        .run_commands_as
        .as_ref()
        .map(|identity| ActionIdentity {
            user_id: identity.user_id,
            group_id: identity.group_id,
            additional_group_ids: &identity.additional_group_ids,
        });
    let runner = RunnerPrivileges::of_this_process(proc_root)?;
    Ok(user_namespace::choose(runner, field, identity)?)
}

/// The namespaces actions get, from `isolation`, made inside
/// `user_namespace` when there is one; `None` when it isolates nothing.
fn isolation_of(
    config: &Config,
    user_namespace: Option<UserNamespace>,
    build_directory: &BuildDirectory,
) -> Option<Arc<Isolation>> {
    let isolation = &config.isolation;
    let isolation = Isolation {
        spawn_server_may_enter: Isolation::spawn_server_may_enter_for(
            build_directory.filesystem(),
            config.chroot_into_input_root,
        ),
        pid: isolation.pid,
        network_off: isolation.network == NetworkIsolation::Off,
        private_tmp: isolation.tmp == TmpIsolation::Private,
        ipc: isolation.ipc,
        hostname: isolation.hostname.clone(),
        input_root_mounts: input_root_mounts_of(config),
        user_namespace,
    };
    isolation.is_enabled().then(|| Arc::new(isolation))
}

/// The mounts in a chrooted action's input root, from `isolation.pid`,
/// `isolation.dev` and `inputRootMounts`; `None` without a chroot.
fn input_root_mounts_of(config: &Config) -> Option<Arc<InputRootMounts>> {
    if !config.chroot_into_input_root {
        return None;
    }
    let entries = config.input_root_mounts.iter().map(|mount| Entry {
        mountpoint: &mount.mountpoint,
        source: &mount.source,
        filesystem_type: &mount.filesystem_type,
        read_only: mount.read_only,
    });
    InputRootMounts::new(
        config.isolation.pid,
        config.isolation.dev == DevIsolation::Minimal,
        entries,
    )
    .map(Arc::new)
}

/// The cgroups the configuration asks for, found and taken over
/// ([`cgroup_host::start`], blocking, off the runtime's threads).
async fn start_cgroups(config: &Config) -> anyhow::Result<CgroupSetup> {
    let options = CgroupOptions {
        sample_resource_usage: config.sample_cgroup_resource_usage,
        action_cgroups: config
            .action_cgroups
            .as_ref()
            .map(|action_cgroups| ActionCgroupOptions {
                parent_path: action_cgroups.parent_path.clone(),
                limits: action_cgroups.limits.clone(),
            }),
    };
    let setup =
        tokio::task::spawn_blocking(move || cgroup_host::start(&CgroupHost::default(), &options))
            .await
            .context("cgroup setup")??;
    Ok(setup)
}

/// Lowers the runner's `oom_score_adj`, saying so; returns the value
/// actions get back. Not being allowed to (no CAP_SYS_RESOURCE) is a
/// warning when `refusal_matters`, else a debug line.
fn lower_oom_score_adj(refusal_matters: bool) -> Option<i32> {
    let path = Path::new(rbe_runner::process::child::DEFAULT_PROC_SELF_OOM_SCORE_ADJ);
    match rbe_runner::process::lower_own_oom_score_adj(path) {
        Ok(Some(LoweredOomScoreAdj { initial, lowered })) => {
            tracing::info!(
                initial,
                lowered,
                "lowered the runner's oom_score_adj; actions keep the initial value"
            );
            Some(initial)
        }
        Ok(None) => None,
        Err(error @ OomScoreAdjError::Lower { .. }) if refusal_matters => {
            tracing::warn!(%error, "under memory pressure the kernel may kill the runner before an action");
            None
        }
        Err(error @ OomScoreAdjError::Lower { .. }) => {
            tracing::debug!(%error, "keeping the runner's oom_score_adj");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "keeping the runner's oom_score_adj");
            None
        }
    }
}

/// The metrics, when `diagnosticsHttpServer.enablePrometheus` is set.
fn create_metrics(
    config: &Config,
    cgroups: &CgroupSetup,
    events: &Events,
    spawn_server: &Option<Arc<SpawnServer>>,
    served_certificates: &ServedCertificates,
    span_drops: Arc<SpanDrops>,
) -> anyhow::Result<Option<Arc<Metrics>>> {
    let Some(diagnostics) = &config.global.diagnostics_http_server else {
        return Ok(None);
    };
    if !diagnostics.enable_prometheus {
        return Ok(None);
    }
    let delegated_cgroup = match cgroups {
        CgroupSetup::ActionCgroups { manager, .. } => Some(manager.parent().to_owned()),
        _ => None,
    };
    let metrics = Metrics::new(
        delegated_cgroup,
        events.counters(),
        spawn_server.clone(),
        served_certificates.clone(),
        span_drops,
    )
    .context("cannot create the metrics")?;
    Ok(Some(Arc::new(metrics)))
}

/// How every action is placed: a process group (sampled through the shared
/// cgroup, or not), or a cgroup of its own whose dirty gate reports to
/// `state`.
fn placement_policy(
    config: &Config,
    cgroups: CgroupSetup,
    state: &Arc<RunnerStateReporter>,
) -> PlacementPolicy {
    match cgroups {
        CgroupSetup::Unused => PlacementPolicy::ProcessGroups,
        CgroupSetup::SharedCgroup { cgroup } => PlacementPolicy::SharedCgroup { cgroup },
        CgroupSetup::ActionCgroups {
            manager,
            sampled,
            limits: (limits, _),
            budgets,
        } => {
            report_dirty_cgroups(&manager, state.clone());
            PlacementPolicy::ActionCgroups {
                manager,
                sampled,
                limits,
                budgets,
                shared_limit_culprit: config
                    .action_cgroups
                    .as_ref()
                    .map(|action_cgroups| action_cgroups.shared_limit_culprit)
                    .unwrap_or_default(),
            }
        }
    }
}

/// How actions are prepared and run, from the configuration.
fn action_options(
    config: &Config,
    (oom_score_adj, descriptor_limit): (Option<i32>, Option<DescriptorLimit>),
    spawn_method: SpawnMethod,
    spawn_server: Option<Arc<SpawnServer>>,
    isolation: Option<Arc<Isolation>>,
) -> ActionOptions {
    ActionOptions {
        prepare: PrepareOptions {
            set_tmpdir_environment_variable: config.set_tmpdir_environment_variable,
            chroot_into_input_root: config.chroot_into_input_root,
            private_tmp: isolation
                .as_ref()
                .is_some_and(|isolation| isolation.private_tmp),
            input_root_mounts: isolation
                .as_ref()
                .and_then(|isolation| isolation.input_root_mounts.clone()),
            private_tmp_in_user_namespace: isolation
                .as_ref()
                .is_some_and(|isolation| isolation.user_namespace.is_some()),
        },
        identity: config.run_commands_as.as_ref().map(|identity| Identity {
            user_id: identity.user_id,
            group_id: identity.group_id,
            additional_group_ids: identity.additional_group_ids.clone(),
        }),
        termination_grace_period: config.termination_grace_period,
        oom_score_adj,
        spawn_method,
        spawn_server,
        stuck_spawn_timeout: config.stuck_spawn_timeout,
        descriptor_limit,
        isolation,
    }
}

/// Starts the spawn server, and watches it so that the runner knows at
/// once when it is gone; without one (no /proc, say) the runner creates
/// actions' processes itself, which costs it more per action.
async fn start_spawn_server(method: SpawnMethod) -> Option<Arc<SpawnServer>> {
    let started = start_server(Path::new(spawn_server::DEFAULT_PROC_SELF_EXE), method).await;
    match started {
        Ok((server, exit)) => {
            tracing::info!(
                pid = server.pid(),
                "spawn server started: it creates actions' processes as children of the runner"
            );
            let server = Arc::new(server);
            let watched = server.clone();
            tokio::spawn(async move { watched.watch(exit).await });
            Some(server)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot start the spawn server; the runner creates actions' processes itself");
            None
        }
    }
}

/// Chooses how action processes are created (RBE_RUNNER_SPAWN overrides),
/// trying clone3 into the runner's own cgroup when actions get cgroups of
/// their own, and how they are waited for (RBE_RUNNER_WAIT overrides),
/// starting the reaper that way; says both in one log line. The trial
/// child is waited for off the runtime's threads.
async fn choose_how_actions_start(cgroups: &CgroupSetup) -> anyhow::Result<SpawnMethod> {
    let waiting = choose_waiting(std::env::var(WAIT_ENVIRONMENT_VARIABLE).ok().as_deref())?;
    let waiting_now = reaper::start(waiting.waiting, &tokio::runtime::Handle::current());
    let setting = std::env::var(SPAWN_ENVIRONMENT_VARIABLE).ok();
    let runner_cgroup = match cgroups {
        CgroupSetup::ActionCgroups { manager, .. } => Some(manager.parent().join(RUNNER_LEAF)),
        _ => None,
    };
    let choice = tokio::task::spawn_blocking(move || {
        choose_method(setting.as_deref(), runner_cgroup.as_deref())
    })
    .await
    .context("choosing how to spawn actions")??;
    let waited = match waiting_now {
        Waiting::Pidfd => "on their pidfds",
        Waiting::Thread => "on a thread",
    };
    tracing::info!(
        method = %choice.method,
        reason = choice.reason,
        waiting = %waiting_now,
        waiting_reason = waiting.reason,
        "spawning actions with {}, waiting for them {waited}",
        choice.method
    );
    Ok(choice.method)
}

/// Wraps `runner` in bb_runner's decorators, as the configuration enables
/// them, in bb_runner's order.
fn decorate(
    mut runner: SharedRunner,
    config: &Config,
    build_directory: &Arc<BuildDirectory>,
    actions_running: &ActionsRunning,
    observer: &Arc<dyn Observer>,
    state: &Arc<RunnerStateReporter>,
    proc_root: &Path,
) -> anyhow::Result<SharedRunner> {
    // symlinkTemporaryDirectories: each path (e.g. /tmp) leads to the
    // running action's temporary directory; one action at a time.
    for path in &config.symlink_temporary_directories {
        runner = temporary_directory_symlinking::new(
            runner,
            path.clone(),
            build_directory.clone(),
            actions_running.clone(),
        );
    }

    // cleanProcessTable, cleanTemporaryDirectories, runCommandCleaner: clean
    // whenever the runner becomes busy or idle. bb_runner's order: kill
    // leftover processes first, so that nothing writes to what is emptied.
    let mut cleaners: Vec<Box<dyn Cleaner>> = Vec::new();
    if config.clean_process_table {
        let actions_user_id = match &config.run_commands_as {
            Some(identity) => identity.user_id,
            None => nix::unistd::geteuid().as_raw(),
        };
        cleaners.push(Box::new(
            ProcessTableCleaner::new(proc_root, actions_user_id).context("cleanProcessTable")?,
        ));
    }
    for path in &config.clean_temporary_directories {
        cleaners.push(Box::new(
            DirectoryCleaner::open(path).context("cleanTemporaryDirectories")?,
        ));
    }
    if let Some(cleaner) = &config.run_command_cleaner {
        cleaners.push(Box::new(CommandCleaner::new(cleaner.arguments.clone())));
    }
    if !cleaners.is_empty() {
        runner = clean::new(runner, cleaners, actions_running.clone(), observer.clone());
    }

    // readinessCheckingPathnames: host paths (an NFS mount, ...) without
    // which the runner is not ready, and a failed action is not trusted.
    if !config.readiness_checking_pathnames.is_empty() {
        runner = readiness::new(
            runner,
            config.readiness_checking_pathnames.clone(),
            state.clone(),
        );
    }
    Ok(runner)
}

/// The diagnostics HTTP server, while it serves.
struct RunningDiagnostics {
    stop: tokio::sync::watch::Sender<bool>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl RunningDiagnostics {
    /// Stops it and waits until it has.
    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(serving) = self.serving {
            let _ = serving.await;
        }
    }
}

/// Binds and starts `global.diagnosticsHttpServer`, if configured; a bind
/// failure stops startup naming the address. Its stop waits until `bound`.
async fn start_diagnostics(
    config: &Config,
    (metrics, active_spans): (Option<Arc<Metrics>>, Arc<ActiveSpans>),
    state: &Arc<RunnerStateReporter>,
    served_certificates: &ServedCertificates,
    bound: &ShutdownBound,
) -> anyhow::Result<RunningDiagnostics> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let Some(diagnostics) = &config.global.diagnostics_http_server else {
        return Ok(RunningDiagnostics {
            stop,
            serving: None,
        });
    };
    if diagnostics.enable_pprof {
        tracing::warn!("diagnosticsHttpServer: enablePprof has no effect in rbe-runner");
    }
    let active_spans = diagnostics.enable_active_spans.then_some(active_spans);
    let readiness = Readiness {
        state: state.clone(),
        pathnames: Arc::new(config.readiness_checking_pathnames.clone()),
    };
    let server = DiagnosticsServer::bind(
        diagnostics,
        metrics,
        active_spans,
        readiness,
        served_certificates,
    )
    .await?;
    tracing::info!(addresses = ?server.addresses(), "diagnostics HTTP server listening");
    Ok(RunningDiagnostics {
        stop,
        serving: Some(tokio::spawn(server.serve(stopped, bound.clone()))),
    })
}

/// The first signal: refuse work, then let actions finish (stopGracefully)
/// or terminate them. The shutdown clock starts once the runner no longer
/// waits for actions by choice. A second signal kills actions being
/// terminated at once (after a graceful stop: terminates them, and a third
/// kills them) and abandons the waits on clients and the journal. Event streams end after
/// the last action's events.
async fn on_signals(
    mut signals: ShutdownSignals,
    stop_gracefully: bool,
    state: Arc<RunnerStateReporter>,
    (actions_running, shutdown_signal): (ActionsRunning, ShutdownSignal),
    event_streams: Arc<EventHub>,
    bound: ShutdownBound,
) {
    signals.recv().await;
    state.refuse(Refusal::Shutdown, "a shutdown signal was received");
    if stop_gracefully {
        tracing::info!(
            "shutting down: letting running actions finish (signal again to terminate them)"
        );
    } else {
        tracing::info!(bound = ?bound.bound(), "shutting down: terminating running actions");
        shutdown_signal.terminate_all();
        bound.start_clock();
    }
    // An operator who cannot wait signals again, each signal one step
    // further: actions being terminated are killed at once (SIGKILL, their
    // cgroups removed); actions a graceful stop let run are terminated
    // (their grace period), and killed at a third signal. Once they have
    // ended (their callers answered) the waits on clients and the journal
    // are abandoned.
    tokio::spawn({
        let (bound, actions_running) = (bound.clone(), actions_running.clone());
        async move {
            signals.recv().await;
            if stop_gracefully {
                tracing::warn!(
                    "second signal: terminating running actions (signal again to kill them); then no longer waiting for clients or the journal"
                );
                shutdown_signal.terminate_all();
                let shutdown_signal = shutdown_signal.clone();
                tokio::spawn(async move {
                    signals.recv().await;
                    tracing::warn!("third signal: killing running actions");
                    shutdown_signal.kill_all();
                });
            } else {
                tracing::warn!(
                    "second signal: killing running actions; then no longer waiting for clients or the journal"
                );
                shutdown_signal.kill_all();
            }
            bound.start_clock();
            let _ = bound.until_deadline(actions_running.wait_idle()).await;
            bound.abandon();
        }
    });
    // Event streams never end on their own, and the servers stop only
    // once every call did: end them after the last action's events.
    tokio::spawn(async move {
        actions_running.wait_idle().await;
        event_streams.close_streams();
        bound.start_clock();
    });
}

/// Calls are over, but actions whose calls were dropped may still be in
/// their grace period, detached from any call. Exiting now would orphan
/// them (or leave their cgroups to the next start): stop them and wait,
/// until the shutdown deadline (a second signal does not cut this wait).
async fn wait_for_terminating_actions(
    actions_running: &ActionsRunning,
    shutdown_signal: &ShutdownSignal,
    bound: &ShutdownBound,
) {
    if actions_running.is_idle() {
        return;
    }
    tracing::info!("waiting for actions being terminated");
    shutdown_signal.terminate_all();
    bound.start_clock();
    if let Err(cut) = bound.until_deadline(actions_running.wait_idle()).await {
        tracing::error!(%cut, "actions still running at exit");
    }
}

/// SIGTERM, SIGINT and SIGHUP, registered once at startup so that a signal
/// arriving at any time is seen (and never kills the runner uncleanly),
/// including a second one during a graceful stop. SIGHUP is a stop, not a
/// reload (a closed terminal or a supervisor's hangup). SIGUSR1 and SIGUSR2,
/// which would otherwise kill the runner without a shutdown, are logged and
/// ignored.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        for (kind, name) in [
            (SignalKind::user_defined1(), "SIGUSR1"),
            (SignalKind::user_defined2(), "SIGUSR2"),
        ] {
            let mut ignored = signal(kind).with_context(|| format!("cannot handle {name}"))?;
            tokio::spawn(async move {
                while ignored.recv().await.is_some() {
                    tracing::info!(signal = name, "signal received and ignored");
                }
            });
        }
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}
