//! `rbe-runner logs`: an action's stdout (or stderr) from the runner, as
//! the action writes it, until it has ended.
//!
//! The bytes go to stdout exactly as the runner sends them (binary output
//! included), each chunk written as it arrives; the exit status is 0 once
//! the runner said `end_of_output`. The action id is the one `watch`
//! prints (`<instance>-<n>`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::client::{self, describe_status, ClientError, Target};
use super::{run_client, Arguments, TargetFlags, USAGE};
use crate::proto::rbe_runner::output::v1::output_client::OutputClient;
use crate::proto::rbe_runner::output::v1::{FollowRequest, OutputStream};

/// What `logs` was asked to do.
#[derive(Debug, Clone)]
pub struct LogsOptions {
    /// The runner.
    pub target: Target,
    /// The action, as `watch` prints it.
    pub action_id: String,
    /// Its stderr instead of its stdout (`--stderr`).
    pub stderr: bool,
    /// Keep following while the action runs (not `--no-follow`).
    pub follow: bool,
    /// The first byte wanted (`--offset`).
    pub offset: u64,
}

/// Why `logs` stopped short of the end of the output.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error("Follow failed: {}", describe_status(.0))]
    Follow(tonic::Status),
    #[error("the runner ended the stream before end_of_output, at offset {offset}")]
    Cut { offset: u64 },
    #[error("the runner sent offset {got}, but {expected} was next")]
    Gap { expected: u64, got: u64 },
    #[error("cannot write to stdout: {0}")]
    Write(std::io::Error),
}

fn parse_logs_args(args: &[String]) -> anyhow::Result<LogsOptions> {
    let mut target = TargetFlags::default();
    let mut action_id = None;
    let mut options = LogsOptions {
        target: Target::Address(String::new()),
        action_id: String::new(),
        stderr: false,
        follow: true,
        offset: 0,
    };
    let mut args = Arguments::new(args);
    while let Some(flag) = args.next_flag() {
        if target.take(flag, &mut args)? {
            continue;
        }
        match flag {
            "--stderr" => options.stderr = true,
            "--no-follow" => options.follow = false,
            "--offset" => {
                let text = args.value(flag)?;
                options.offset = text
                    .parse()
                    .with_context(|| format!("--offset {text:?} is not a byte offset"))?;
            }
            other if other.starts_with('-') => bail!("logs: unknown argument {other:?}\n{USAGE}"),
            id if action_id.is_none() => action_id = Some(id.to_string()),
            extra => bail!("logs: one ACTION_ID only, {extra:?} is another\n{USAGE}"),
        }
    }
    options.target = target.target("logs")?;
    options.action_id = action_id.with_context(|| {
        format!("logs needs the ACTION_ID, as `watch` prints it (<instance>-<n>)\n{USAGE}")
    })?;
    Ok(options)
}

/// `logs`: exit status 0 after `end_of_output`; 2 on a usage error, a
/// runner that cannot be reached, a refused Follow or a stream that broke
/// off.
pub fn main(args: &[String]) -> ExitCode {
    let options = match parse_logs_args(args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("rbe-runner logs: {err:#}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match run_client(logs(&options, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rbe-runner logs: {err}");
            ExitCode::from(2)
        }
    }
}

/// Writes the action's output to `out` as it comes, until `end_of_output`.
pub async fn logs(options: &LogsOptions, out: &mut impl Write) -> Result<(), LogsError> {
    let channel = client::connect(&options.target).await?;
    let request = FollowRequest {
        action_id: options.action_id.clone(),
        stream: if options.stderr {
            OutputStream::Stderr
        } else {
            OutputStream::Stdout
        } as i32,
        offset: options.offset,
        follow: options.follow,
    };
    let mut stream = OutputClient::new(channel)
        .follow(request)
        .await
        .map_err(LogsError::Follow)?
        .into_inner();
    let mut expected = options.offset;
    loop {
        let Some(chunk) = stream.message().await.map_err(LogsError::Follow)? else {
            return Err(LogsError::Cut { offset: expected });
        };
        if chunk.offset != expected {
            return Err(LogsError::Gap {
                expected,
                got: chunk.offset,
            });
        }
        if !chunk.data.is_empty() {
            out.write_all(&chunk.data).map_err(LogsError::Write)?;
            out.flush().map_err(LogsError::Write)?;
            expected += chunk.data.len() as u64;
        }
        if chunk.end_of_output {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_and_the_action_id_in_any_order() {
        let options = parse_logs_args(&args(
            "ab12cd34-7 --socket s --stderr --offset 10 --no-follow",
        ))
        .unwrap();
        assert_eq!(options.action_id, "ab12cd34-7");
        assert!(options.stderr && !options.follow);
        assert_eq!(options.offset, 10);
        let options = parse_logs_args(&args("--address 127.0.0.1:1 x-1")).unwrap();
        assert!(options.follow && !options.stderr);
        assert_eq!(options.offset, 0);
    }

    #[test]
    fn usage_errors_name_what_is_wrong() {
        for (text, expected) in [
            ("--socket s", "needs the ACTION_ID"),
            ("x-1", "exactly one of --socket and --address"),
            ("--socket s x-1 x-2", "one ACTION_ID only"),
            ("--socket s x-1 --offset ten", "--offset \"ten\""),
            ("--socket s x-1 --tail", "unknown argument \"--tail\""),
        ] {
            let error = format!("{:#}", parse_logs_args(&args(text)).unwrap_err());
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
