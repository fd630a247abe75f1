//! `rbe-runner exec`: acting as a worker for one action.
//!
//! It prepares an action directory the way bb_worker does (`root/`, `tmp/`,
//! `server_logs/` under the build directory), sends one Run, and renders the
//! response as JSON for operators and scripts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::client::{self, ClientError, Target};
use super::usage_json::any_json;
use super::{run_client, Arguments, TargetFlags, USAGE};
use crate::config;
use crate::proto::resourceusage::PosixResourceUsage;
use crate::proto::runner::{RunRequest, RunResponse};

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
    let mut target = TargetFlags::default();
    let mut build_dir = None;
    let mut environment = Vec::new();
    let mut timeout = None;
    let mut args = Arguments::new(args);
    let mut command = Vec::new();
    while let Some(flag) = args.next_flag() {
        if target.take(flag, &mut args)? {
            continue;
        }
        match flag {
            "--build-dir" => build_dir = Some(PathBuf::from(args.value(flag)?)),
            "--env" => {
                let pair = args.value(flag)?;
                let (key, val) = pair
                    .split_once('=')
                    .with_context(|| format!("--env {pair:?} is not of the form K=V"))?;
                environment.push((key.to_string(), val.to_string()));
            }
            "--timeout" => {
                let text = args.value(flag)?;
                let duration = config::parse_duration(&text)
                    .map_err(|err| anyhow::anyhow!("--timeout {text:?}: {err}"))?;
                timeout = Some(duration);
            }
            "--" => {
                command = args.remaining();
                break;
            }
            other => bail!("exec: unknown argument {other:?}\n{USAGE}"),
        }
    }
    let target = target.target("exec")?;
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
pub fn main(args: &[String]) -> ExitCode {
    let args = match parse_exec_args(args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("rbe-runner exec: {err:#}");
            return ExitCode::from(2);
        }
    };
    let result = run_client(async {
        let action = ActionDirectory::create(&args.build_dir)?;
        let request = action.request(args.command, args.environment);
        let response = run(&args.target, request, args.timeout).await?;
        Ok::<_, ClientError>((action, response))
    });
    match result {
        Ok((action, response)) => {
            println!("{}", response_json(&response, &action));
            ExitCode::from(exit_status(&response).clamp(0, 255) as u8)
        }
        Err(err) => {
            eprintln!("rbe-runner exec: {err}");
            ExitCode::from(2)
        }
    }
}

/// A prepared action directory, relative to the build directory.
#[derive(Debug, Clone)]
pub struct ActionDirectory {
    /// Name of the directory, relative to the build directory.
    pub relative: String,
    /// Its host path.
    pub path: PathBuf,
}

impl ActionDirectory {
    /// Creates a fresh, uniquely named action directory with `root/`,
    /// `tmp/` and `server_logs/`, as bb_worker lays it out.
    pub fn create(build_directory: &Path) -> Result<Self, ClientError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let relative = format!("exec-{nanos}-{}", std::process::id());
        // Absolute, so that the printed stdout/stderr paths work from anywhere.
        let path = std::path::absolute(build_directory)
            .map_err(|source| ClientError::Prepare {
                path: build_directory.to_path_buf(),
                source,
            })?
            .join(&relative);
        for sub in ["root", "tmp", "server_logs"] {
            let dir = path.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|source| ClientError::Prepare { path: dir, source })?;
        }
        Ok(ActionDirectory { relative, path })
    }

    /// The Run request for `arguments` in this directory.
    pub fn request(
        &self,
        arguments: Vec<String>,
        environment: Vec<(String, String)>,
    ) -> RunRequest {
        let at = |sub: &str| format!("{}/{sub}", self.relative);
        RunRequest {
            arguments,
            environment_variables: environment.into_iter().collect(),
            working_directory: String::new(),
            stdout_path: at("stdout"),
            stderr_path: at("stderr"),
            input_root_directory: at("root"),
            temporary_directory: at("tmp"),
            server_logs_directory: at("server_logs"),
        }
    }
}

/// How long exec waits past the call's deadline before giving up on the
/// runner's answer: long enough for the runner's `DEADLINE_EXCEEDED` to
/// arrive, so that exec's own verdict is left for a runner that is hung or
/// not a runner at all.
pub const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Sends `request` to the runner at `target`. A `timeout` is the call's
/// deadline (`grpc-timeout`), which the runner enforces, as bb_worker's
/// action timeouts are; exec stops waiting [`ANSWER_GRACE`] later.
pub async fn run(
    target: &Target,
    request: RunRequest,
    timeout: Option<Duration>,
) -> Result<RunResponse, ClientError> {
    let mut request = tonic::Request::new(request);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    let call = async {
        let mut client = client::connect_untimed(target)
            .await?
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        client
            .run(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(ClientError::Rpc)
    };
    let Some(timeout) = timeout else {
        return call.await;
    };
    let waited = timeout.saturating_add(ANSWER_GRACE);
    tokio::time::timeout(waited, call)
        .await
        .unwrap_or(Err(ClientError::NoAnswer { waited }))
}

/// The JSON object `exec` prints for a response.
pub fn response_json(response: &RunResponse, action: &ActionDirectory) -> Value {
    json!({
        "exitCode": response.exit_code,
        "resourceUsage": response.resource_usage.iter().map(any_json).collect::<Vec<_>>(),
        "stdoutPath": action.path.join("stdout"),
        "stderrPath": action.path.join("stderr"),
    })
}

/// The process exit status `exec` uses: the action's exit code, 128+signal
/// when it was killed by a signal.
pub fn exit_status(response: &RunResponse) -> i32 {
    if response.exit_code >= 0 {
        return i32::try_from(response.exit_code).unwrap_or(255);
    }
    let signal = response
        .resource_usage
        .iter()
        .find_map(|any| any.to_msg::<PosixResourceUsage>().ok())
        .and_then(|usage| signal_number(&usage.termination_signal));
    match signal {
        Some(signal) => 128 + signal,
        None => 255,
    }
}

fn signal_number(name: &str) -> Option<i32> {
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|signal| signal as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_exit_code_or_128_plus_signal() {
        let usage = PosixResourceUsage {
            termination_signal: "KILL".into(),
            ..Default::default()
        };
        let killed = RunResponse {
            exit_code: -1,
            resource_usage: vec![prost_types::Any::from_msg(&usage).unwrap()],
        };
        assert_eq!(exit_status(&killed), 137);
        let exited = RunResponse {
            exit_code: 3,
            resource_usage: vec![],
        };
        assert_eq!(exit_status(&exited), 3);
    }
}
