//! The operator commands: everything `rbe-runner` does other than serving.
//! Each takes its arguments (after the command's name) and returns the
//! process's exit status; `main` dispatches to them.
//!
//! - [`check_config`]: `check-config CONFIG`, the configuration as understood.
//! - [`install`]: `install [DIR]`, the init container of a worker pod.
//! - [`exec`]: `exec`, one action run as a worker would run it.
//! - [`watch`]: `watch`, the runner's action events as they come.
//! - [`logs`]: `logs`, an action's stdout or stderr as it writes them.
//! - [`report`]: `report`, sizing figures from event journals (the
//!   statistics and renderings are [`crate::report`]).
//! - [`client`]: reaching a runner, for `exec`, `watch` and `logs`.
//! - [`usage_json`]: resource usage messages as JSON, for `exec`.

pub mod check_config;
pub mod client;
pub mod exec;
pub mod install;
pub mod logs;
pub mod report;
pub mod usage_json;
pub mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

use client::Target;

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
  rbe-runner logs (--socket PATH | --address HOST:PORT) ACTION_ID
                  [--stderr] [--no-follow] [--offset N]
                                    an action's stdout (or stderr) as it writes it, until
                                    it has ended; ACTION_ID as `watch` prints it
  rbe-runner report [--json] [--html OUT.html] [--group-by program|none]
                    [--since DURATION] [--headroom PERCENT] JOURNAL...
                                    sizing figures from event journals
  rbe-runner --version";

/// Runs `result`'s command: exit 0, or 1 with the error on stderr.
fn status(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rbe-runner: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The arguments after a command's name, taken one flag at a time.
struct Arguments<'a> {
    rest: std::slice::Iter<'a, String>,
}

impl<'a> Arguments<'a> {
    fn new(args: &'a [String]) -> Self {
        Arguments { rest: args.iter() }
    }

    /// The next flag (or word).
    fn next_flag(&mut self) -> Option<&'a str> {
        self.rest.next().map(String::as_str)
    }

    /// The value that must follow `flag`.
    fn value(&mut self, flag: &str) -> anyhow::Result<String> {
        self.rest
            .next()
            .cloned()
            .with_context(|| format!("{flag} needs a value"))
    }

    /// Everything not taken yet (the command after `--`).
    fn remaining(self) -> Vec<String> {
        self.rest.cloned().collect()
    }
}

/// The runner to talk to, as `exec` and `watch` take it: `--socket PATH`
/// or `--address HOST:PORT`, exactly one.
#[derive(Default)]
struct TargetFlags {
    socket: Option<PathBuf>,
    address: Option<String>,
}

impl TargetFlags {
    /// Takes `flag` (and its value) if it names the runner; whether it did.
    fn take(&mut self, flag: &str, args: &mut Arguments) -> anyhow::Result<bool> {
        match flag {
            "--socket" => self.socket = Some(PathBuf::from(args.value(flag)?)),
            "--address" => self.address = Some(args.value(flag)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn target(self, command: &str) -> anyhow::Result<Target> {
        match (self.socket, self.address) {
            (Some(socket), None) => Ok(Target::Socket(socket)),
            (None, Some(address)) => Ok(Target::Address(address)),
            _ => bail!("{command} needs exactly one of --socket and --address\n{USAGE}"),
        }
    }
}

/// Runs a client command's work on a runtime of its own; any failure,
/// starting the runtime included, comes back as the text to print.
fn run_client<T, E: std::fmt::Display>(
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?
        .block_on(work)
        .map_err(|err| err.to_string())
}
