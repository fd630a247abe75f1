//! rbe-runner: argv → config → runner chain → serve; and the operator CLI.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use rbe_runner::action::observer::{
    report_dirty_cgroups, LogObserver, Refusal, RunnerStateReporter,
};
use rbe_runner::action::prepare::PrepareOptions;
use rbe_runner::action::{
    ActionIds, ActionOptions, Actions, Observer, Observers, PlacementPolicy, RunnerInstance,
};
use rbe_runner::build_directory::BuildDirectory;
use rbe_runner::cgroup::host::{
    self as cgroup_host, ActionCgroupOptions, CgroupHost, CgroupOptions, CgroupSetup,
};
use rbe_runner::cleaner::command::CommandCleaner;
use rbe_runner::cleaner::directory::DirectoryCleaner;
use rbe_runner::cleaner::process_table::ProcessTableCleaner;
use rbe_runner::cleaner::Cleaner;
use rbe_runner::client::{self, ActionDirectory, Target};
use rbe_runner::config::{self, Config, LogFormat};
use rbe_runner::diagnostics::{DiagnosticsServer, Readiness};
use rbe_runner::events::watch::WatchOptions;
use rbe_runner::events::Events;
use rbe_runner::metrics::Metrics;
use rbe_runner::process::privileges::{self, CAP_SETGID, CAP_SETUID, CAP_SYS_CHROOT};
use rbe_runner::process::spawn::Identity;
use rbe_runner::process::DEFAULT_PROC_ROOT;
use rbe_runner::runner::local::LocalRunner;
use rbe_runner::runner::SharedRunner;
use rbe_runner::runner::{clean, readiness, temporary_directory_symlinking};
use rbe_runner::server::BoundServers;

const USAGE: &str = "\
usage:
  rbe-runner CONFIG                 serve, configured by the Jsonnet file CONFIG
  rbe-runner check-config CONFIG    evaluate and validate CONFIG, print what was understood
  rbe-runner install [DIR]          copy this executable to DIR/rbe-runner and DIR/bb_runner,
                                    then write DIR/installed (default DIR: /bb)
  rbe-runner exec (--socket PATH | --address HOST:PORT) --build-dir DIR
                  [--env K=V]... [--timeout DURATION] -- CMD ARGS...
                                    run one action as a worker would; prints JSON
  rbe-runner watch (--socket PATH | --address HOST:PORT) [--after N] [--live]
                   [--json] [--summary] [--no-follow]
                                    print the runner's action events as they come
  rbe-runner report [--json] [--html OUT.html] [--group-by program|none]
                    [--since DURATION] [--headroom PERCENT] JOURNAL...
                                    sizing figures from event journals
  rbe-runner --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
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
        Some("check-config") => check_config(&args[1..]),
        Some("install") => install(&args[1..]),
        Some("exec") => return exec(&args[1..]),
        Some("watch") => return watch(&args[1..]),
        Some("report") => return rbe_runner::report::main(&args[1..]),
        Some(_) if args.len() == 1 => serve(PathBuf::from(&args[0])),
        Some(_) => Err(anyhow::anyhow!(
            "unexpected arguments {:?}\n{USAGE}",
            &args[1..]
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

fn check_config(args: &[String]) -> anyhow::Result<()> {
    let [file] = args else {
        bail!("check-config takes exactly one argument, the configuration file\n{USAGE}");
    };
    let config = config::load(std::path::Path::new(file))?;
    println!("{config}");
    Ok(())
}

/// `install`: what bb-deployments' installer init container does.
fn install(args: &[String]) -> anyhow::Result<()> {
    use rbe_runner::install::{DEFAULT_INSTALL_DIR, DEFAULT_PROC_SELF_EXE};
    let dir = match args {
        [] => DEFAULT_INSTALL_DIR,
        [dir] => dir.as_str(),
        _ => bail!("install takes at most one argument, the directory\n{USAGE}"),
    };
    let installed = rbe_runner::install::install(Path::new(DEFAULT_PROC_SELF_EXE), Path::new(dir))?;
    for path in installed.executables.iter().chain([&installed.marker]) {
        println!("installed {}", path.display());
    }
    Ok(())
}

/// Logs to stderr as `logFormat` asks; JSON lines carry every field
/// (`action_id` among them) at the top level of one object.
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
    apply_process_settings(&config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve_config(config))
}

/// Settings of the runner process itself, inherited by every action.
fn apply_process_settings(config: &Config) -> anyhow::Result<()> {
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
    Ok(())
}

async fn serve_config(config: Config) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::install()?;
    let proc_root = Path::new(DEFAULT_PROC_ROOT);

    // runCommandsAs and chrootIntoInputRoot need privileges; without them
    // every action would fail with EPERM, so refuse to start instead.
    if config.run_commands_as.is_some() {
        privileges::require(proc_root, "runCommandsAs", &[CAP_SETUID, CAP_SETGID])?;
    }
    if config.chroot_into_input_root {
        privileges::require(proc_root, "chrootIntoInputRoot", &[CAP_SYS_CHROOT])?;
    }

    let build_directory =
        Arc::new(BuildDirectory::open(&config.build_directory_path).context("buildDirectoryPath")?);

    // sampleCgroupResourceUsage and actionCgroups: find the cgroups they
    // need, take over the delegated subtree (removing leftovers of a
    // previous runner) and check what accounting needs, before serving.
    let cgroup_options = CgroupOptions {
        sample_resource_usage: config.sample_cgroup_resource_usage,
        action_cgroups: config
            .action_cgroups
            .as_ref()
            .map(|action_cgroups| ActionCgroupOptions {
                parent_path: action_cgroups.parent_path.clone(),
                limits: action_cgroups.limits.clone(),
            }),
    };
    let cgroups = tokio::task::spawn_blocking(move || {
        cgroup_host::start(&CgroupHost::default(), &cgroup_options)
    })
    .await
    .context("cgroup setup")??;

    // Under memory pressure the kernel should kill an action (retryable)
    // before the runner that serves all of them.
    let action_oom_score_adj = rbe_runner::process::lower_own_oom_score_adj(Path::new(
        rbe_runner::process::spawn::DEFAULT_PROC_SELF_OOM_SCORE_ADJ,
    ));

    // The event stream of this start of the runner (every action id and
    // event names the instance), with its journal when events.journalPath
    // is set.
    let instance = RunnerInstance::random();
    let events = Events::start(&config.events, instance.clone());

    // global.diagnosticsHttpServer.enablePrometheus: metrics of calls,
    // actions, the event stream, the delegated cgroup's budget and the
    // process.
    let metrics = match &config.global.diagnostics_http_server {
        Some(diagnostics) if diagnostics.enable_prometheus => {
            let delegated_cgroup = match &cgroups {
                CgroupSetup::ActionCgroups { manager, .. } => Some(manager.parent().to_owned()),
                _ => None,
            };
            Some(Arc::new(
                Metrics::new(delegated_cgroup, events.counters())
                    .context("cannot create the metrics")?,
            ))
        }
        _ => None,
    };

    // Who learns what the runner does: the log, the event stream, the
    // metrics, and whether it accepts work.
    let mut observers: Vec<Arc<dyn Observer>> = vec![Arc::new(LogObserver), events.observer()];
    if let Some(metrics) = &metrics {
        observers.push(metrics.actions.clone());
    }
    let observer: Arc<dyn Observer> = Arc::new(Observers::new(observers));
    let state = Arc::new(
        RunnerStateReporter::new(observer.clone())
            .with_memory_budget(cgroup_host::memory_budget(&cgroups)),
    );

    // Every action's life: placed in a process group or a cgroup of its
    // own, measured as sampleCgroupResourceUsage asks.
    let placement = match cgroups {
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
    };
    let actions = Arc::new(Actions::new(
        build_directory.clone(),
        ActionOptions {
            prepare: PrepareOptions {
                set_tmpdir_environment_variable: config.set_tmpdir_environment_variable,
                chroot_into_input_root: config.chroot_into_input_root,
            },
            identity: config.run_commands_as.as_ref().map(|identity| Identity {
                user_id: identity.user_id,
                group_id: identity.group_id,
                additional_group_ids: identity.additional_group_ids.clone(),
            }),
            termination_grace_period: config.termination_grace_period,
            oom_score_adj: action_oom_score_adj,
        },
        placement,
        ActionIds::new(instance.clone()),
        observer.clone(),
    ));
    let actions_running = actions.running().clone();
    let shutdown_signal = actions.shutdown().clone();

    // The runner chain, innermost first, as bb_runner composes it.
    // Executes actions as child processes.
    let mut runner: SharedRunner = Arc::new(LocalRunner::new(actions, build_directory.clone()));

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

    let mut servers = BoundServers::bind(&config.grpc_servers, config.listen_path_mode).await?;
    if let Some(metrics) = &metrics {
        servers.count_calls(metrics.grpc.clone());
    }

    // global.diagnosticsHttpServer: bound once the gRPC listeners are,
    // stopped with them.
    let (stop_diagnostics, diagnostics_stopped) = tokio::sync::watch::channel(false);
    let diagnostics = match &config.global.diagnostics_http_server {
        Some(diagnostics) => {
            if diagnostics.enable_pprof || diagnostics.enable_active_spans {
                tracing::warn!(
                    "diagnosticsHttpServer: enablePprof and enableActiveSpans have no effect in rbe-runner"
                );
            }
            let readiness = Readiness {
                state: state.clone(),
                pathnames: Arc::new(config.readiness_checking_pathnames.clone()),
            };
            let server = DiagnosticsServer::bind(diagnostics, metrics.clone(), readiness).await?;
            tracing::info!(addresses = ?server.addresses(), "diagnostics HTTP server listening");
            Some(tokio::spawn(server.serve(diagnostics_stopped)))
        }
        None => None,
    };
    let stop_gracefully = config
        .grpc_servers
        .iter()
        .all(|server| server.stop_gracefully);
    tracing::info!(
        listeners = ?servers.listener_names(),
        build_directory = %build_directory.path().display(),
        runner_instance = %instance,
        "serving"
    );
    state.started();
    let signal_terminator = shutdown_signal.clone();
    let shutdown_state = state.clone();
    let shutdown_actions = actions_running.clone();
    let event_streams = events.hub();
    let shutdown = async move {
        signals.recv().await;
        shutdown_state.refuse(Refusal::Shutdown, "a shutdown signal was received");
        if stop_gracefully {
            tracing::info!(
                "shutting down: letting running actions finish (signal again to terminate them)"
            );
            // An operator who cannot wait signals again: then terminate.
            tokio::spawn(async move {
                signals.recv().await;
                tracing::info!("second signal: terminating running actions");
                signal_terminator.terminate_all();
            });
        } else {
            tracing::info!("shutting down: terminating running actions");
            signal_terminator.terminate_all();
        }
        // Event streams never end on their own, and the servers stop only
        // once every call did: end them after the last action's events.
        tokio::spawn(async move {
            shutdown_actions.wait_idle().await;
            event_streams.close_streams();
        });
    };
    let served = servers.serve(runner, events.service(), shutdown).await;
    let _ = stop_diagnostics.send(true);
    if let Some(diagnostics) = diagnostics {
        let _ = diagnostics.await;
    }

    // Calls are over, but actions whose calls were dropped may still be in
    // their grace period, detached from any call. Exiting now would orphan
    // them (or leave their cgroups to the next start): stop them and wait.
    if !actions_running.is_idle() {
        tracing::info!("waiting for actions being terminated");
        shutdown_signal.terminate_all();
        let limit = config.termination_grace_period
            + rbe_runner::process::terminate::KILLED_EXIT_TIMEOUT
            + rbe_runner::cgroup::action::DEFAULT_CLEANUP_TIMEOUT;
        let all_gone = actions_running.wait_idle();
        if tokio::time::timeout(limit, all_gone).await.is_err() {
            tracing::error!(?limit, "actions still running at exit");
        }
    }
    // Every event published; the journal writes what it was given.
    events.finish().await;
    served?;
    tracing::info!("stopped");
    Ok(())
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

/// Parsed `exec` arguments.
struct ExecArgs {
    target: Target,
    build_dir: PathBuf,
    environment: Vec<(String, String)>,
    timeout: Option<Duration>,
    command: Vec<String>,
}

/// PATH given to actions started by `exec` unless `--env PATH=...` is used:
/// the runner never lets its own environment leak into actions, so without
/// this a bare `sh` could not be found.
const EXEC_DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn parse_exec_args(args: &[String]) -> anyhow::Result<ExecArgs> {
    let mut socket = None;
    let mut address = None;
    let mut build_dir = None;
    let mut environment = Vec::new();
    let mut timeout = None;
    let mut iter = args.iter();
    let mut command = Vec::new();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--address" => address = Some(value("--address")?),
            "--build-dir" => build_dir = Some(PathBuf::from(value("--build-dir")?)),
            "--env" => {
                let pair = value("--env")?;
                let (key, val) = pair
                    .split_once('=')
                    .with_context(|| format!("--env {pair:?} is not of the form K=V"))?;
                environment.push((key.to_string(), val.to_string()));
            }
            "--timeout" => {
                let text = value("--timeout")?;
                let duration = config::parse_duration(&text)
                    .map_err(|err| anyhow::anyhow!("--timeout {text:?}: {err}"))?;
                timeout = Some(duration);
            }
            "--" => {
                command = iter.cloned().collect();
                break;
            }
            other => bail!("exec: unknown argument {other:?}\n{USAGE}"),
        }
    }
    let target = match (socket, address) {
        (Some(socket), None) => Target::Socket(socket),
        (None, Some(address)) => Target::Address(address),
        _ => bail!("exec needs exactly one of --socket and --address\n{USAGE}"),
    };
    let build_dir = build_dir.context("exec needs --build-dir (the runner's build directory)")?;
    if command.is_empty() {
        bail!("exec needs a command after --\n{USAGE}");
    }
    if !environment.iter().any(|(key, _)| key == "PATH") {
        environment.push(("PATH".into(), EXEC_DEFAULT_PATH.into()));
    }
    Ok(ExecArgs {
        target,
        build_dir,
        environment,
        timeout,
        command,
    })
}

/// `exec`: exit status is the action's exit code, 128+signal when it was
/// killed by a signal, 2 on a gRPC or usage error.
fn exec(args: &[String]) -> ExitCode {
    let args = match parse_exec_args(args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("rbe-runner exec: {err:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rbe-runner exec: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let action = ActionDirectory::create(&args.build_dir)?;
        let channel = client::connect(&args.target).await?;
        let request = action.request(args.command, args.environment);
        let response = client::run(channel, request, args.timeout).await?;
        Ok::<_, client::ClientError>((action, response))
    });
    match result {
        Ok((action, response)) => {
            println!("{}", client::response_json(&response, &action));
            ExitCode::from(client::exit_status(&response).clamp(0, 255) as u8)
        }
        Err(err) => {
            eprintln!("rbe-runner exec: {err}");
            ExitCode::from(2)
        }
    }
}

fn parse_watch_args(args: &[String]) -> anyhow::Result<WatchOptions> {
    let mut socket = None;
    let mut address = None;
    let mut options = WatchOptions {
        target: Target::Address(String::new()),
        after_sequence: 0,
        live_only: false,
        json: false,
        summary: false,
        follow: true,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--address" => address = Some(value("--address")?),
            "--after" => {
                let text = value("--after")?;
                options.after_sequence = text
                    .parse()
                    .with_context(|| format!("--after {text:?} is not a sequence number"))?;
            }
            "--live" => options.live_only = true,
            "--json" => options.json = true,
            "--summary" => options.summary = true,
            "--no-follow" => options.follow = false,
            other => bail!("watch: unknown argument {other:?}\n{USAGE}"),
        }
    }
    options.target = match (socket, address) {
        (Some(socket), None) => Target::Socket(socket),
        (None, Some(address)) => Target::Address(address),
        _ => bail!("watch needs exactly one of --socket and --address\n{USAGE}"),
    };
    Ok(options)
}

/// `watch`: exit status 0 when done (`--no-follow`) or interrupted, 2 on a
/// usage error or a runner that cannot be reached.
fn watch(args: &[String]) -> ExitCode {
    let options = match parse_watch_args(args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("rbe-runner watch: {err:#}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))
        .and_then(|runtime| {
            runtime
                .block_on(rbe_runner::events::watch::watch(&options))
                .map_err(|err| err.to_string())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rbe-runner watch: {err}");
            ExitCode::from(2)
        }
    }
}
