//! The operator CLI's subcommands other than serving: `check-config`,
//! `install`, `exec` and `watch`. Each takes its arguments (after the
//! subcommand's name) and returns the process's exit status; `main`
//! dispatches to them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::client::{self, ActionDirectory, Target};
use crate::config;
use crate::events::watch::WatchOptions;

/// What `rbe-runner --help` prints.
pub const USAGE: &str = "\
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

/// Runs `result`'s subcommand: exit 0, or 1 with the error on stderr.
fn status(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rbe-runner: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `check-config CONFIG`: evaluates and validates CONFIG, prints what was
/// understood.
pub fn check_config(args: &[String]) -> ExitCode {
    status(check_config_file(args))
}

fn check_config_file(args: &[String]) -> anyhow::Result<()> {
    let [file] = args else {
        bail!("check-config takes exactly one argument, the configuration file\n{USAGE}");
    };
    let config = config::load(Path::new(file))?;
    println!("{config}");
    Ok(())
}

/// `install [DIR]`: what bb-deployments' installer init container does.
pub fn install(args: &[String]) -> ExitCode {
    status(install_into(args))
}

fn install_into(args: &[String]) -> anyhow::Result<()> {
    use crate::install::{DEFAULT_INSTALL_DIR, DEFAULT_PROC_SELF_EXE};
    let dir = match args {
        [] => DEFAULT_INSTALL_DIR,
        [dir] => dir.as_str(),
        _ => bail!("install takes at most one argument, the directory\n{USAGE}"),
    };
    let installed = crate::install::install(Path::new(DEFAULT_PROC_SELF_EXE), Path::new(dir))?;
    for path in installed.executables.iter().chain([&installed.marker]) {
        println!("installed {}", path.display());
    }
    Ok(())
}

/// The runner to talk to, from `--socket` or `--address` (exactly one).
fn target(
    command: &str,
    socket: Option<PathBuf>,
    address: Option<String>,
) -> anyhow::Result<Target> {
    match (socket, address) {
        (Some(socket), None) => Ok(Target::Socket(socket)),
        (None, Some(address)) => Ok(Target::Address(address)),
        _ => bail!("{command} needs exactly one of --socket and --address\n{USAGE}"),
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
    let target = target("exec", socket, address)?;
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
pub fn exec(args: &[String]) -> ExitCode {
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
    options.target = target("watch", socket, address)?;
    Ok(options)
}

/// `watch`: exit status 0 when done (`--no-follow`) or interrupted, 2 on a
/// usage error or a runner that cannot be reached.
pub fn watch(args: &[String]) -> ExitCode {
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
                .block_on(crate::events::watch::watch(&options))
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
