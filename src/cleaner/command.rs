//! `runCommandCleaner`: an operator-provided cleaning command.
//!
//! For state the other cleaners do not know about (a Docker daemon's
//! containers, a scratch volume, ...). The command runs as the runner, with
//! the runner's environment, in its own process group, and is waited for
//! through the reaper like every child. A non-zero exit fails cleaning, and
//! the end of its stderr goes into the message, since that is usually the
//! only clue an operator gets.
//!
//! Stderr goes to an anonymous memory file rather than a pipe: a pipe would
//! need reading while the command runs, and a daemon the command started
//! could keep it open forever.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::process::reaper::{reaper, ChildExit};
use crate::process::signal_name;

use super::{CleanError, Cleaner};

/// How much of the end of the command's stderr goes into an error message.
const STDERR_TAIL_BYTES: u64 = 4096;

/// Runs a command and requires it to succeed.
pub struct CommandCleaner {
    arguments: Vec<String>,
}

impl CommandCleaner {
    /// A cleaner running `arguments` (the first is the program, looked up
    /// in the runner's PATH). `arguments` must not be empty.
    pub fn new(arguments: Vec<String>) -> Self {
        assert!(!arguments.is_empty(), "runCommandCleaner needs a program");
        CommandCleaner { arguments }
    }
}

#[tonic::async_trait]
impl Cleaner for CommandCleaner {
    fn name(&self) -> &str {
        "runCommandCleaner"
    }

    async fn clean(&self) -> Result<(), CleanError> {
        let program = self.arguments[0].clone();
        let spawn_error = |source: std::io::Error| CleanError::Spawn {
            program: program.clone(),
            source,
        };
        let stderr = memfd_create(c"rbe-runner-cleaner-stderr", MFdFlags::MFD_CLOEXEC)
            .map_err(|errno| spawn_error(errno.into()))?;
        let mut command = Command::new(&program);
        command
            .args(&self.arguments[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr.try_clone().map_err(spawn_error)?))
            .process_group(0);
        let child = tokio::task::spawn_blocking(move || reaper().spawn(&mut command))
            .await
            .map_err(|err| CleanError::Task(err.to_string()))?
            .map_err(spawn_error)?;
        // The reaper keeps the sender until it reaps the child.
        let exit = child
            .exit
            .await
            .map_err(|_| CleanError::Task(format!("the reaper lost {program:?}")))?;
        if exit.exit_code() == Some(0) {
            return Ok(());
        }
        Err(CleanError::CommandFailed {
            program,
            outcome: describe(&exit),
            stderr: tail(std::fs::File::from(stderr)),
        })
    }
}

fn describe(exit: &ChildExit) -> String {
    match (exit.exit_code(), exit.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {}", signal_name(signal)),
        (None, None) => format!("ended with wait status {:#x}", exit.status),
    }
}

/// The last [`STDERR_TAIL_BYTES`] of `file`, trimmed, lossily decoded.
fn tail(mut file: std::fs::File) -> String {
    let length = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let start = length.saturating_sub(STDERR_TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return "(unreadable)".into();
    }
    let text = String::from_utf8_lossy(&bytes);
    if start > 0 {
        format!("...{}", text.trim_end())
    } else {
        text.trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> CommandCleaner {
        CommandCleaner::new(vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "cleaner".into(),
        ])
    }

    /// A command that succeeds cleans, and really ran with its arguments.
    #[tokio::test]
    async fn a_succeeding_command_passes_with_its_arguments() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        let cleaner = CommandCleaner::new(vec!["touch".into(), marker.display().to_string()]);
        cleaner.clean().await.unwrap();
        assert!(marker.exists());
    }

    /// A failure must be explainable from the message alone: the program,
    /// the exit code and what it wrote to stderr.
    #[tokio::test]
    async fn a_non_zero_exit_fails_with_the_code_and_stderr() {
        let err = shell("echo 'docker: cannot connect' >&2; exit 3")
            .clean()
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CleanError::CommandFailed { .. }), "{message}");
        assert!(message.contains("\"sh\""), "{message}");
        assert!(message.contains("exited with code 3"), "{message}");
        assert!(message.contains("docker: cannot connect"), "{message}");
    }

    /// A killed cleaner is reported by signal name.
    #[tokio::test]
    async fn a_killed_command_fails_with_the_signal_name() {
        let message = shell("kill -KILL $$")
            .clean()
            .await
            .unwrap_err()
            .to_string();
        assert!(message.contains("killed by signal KILL"), "{message}");
    }

    /// A missing program is a spawn error naming it.
    #[tokio::test]
    async fn a_missing_program_fails_naming_it() {
        let cleaner = CommandCleaner::new(vec!["/nonexistent/cleanup-tool".into()]);
        let err = cleaner.clean().await.unwrap_err();
        assert!(matches!(err, CleanError::Spawn { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/cleanup-tool"),
            "{err}"
        );
    }

    /// Only the end of a long stderr is kept, so messages stay readable.
    #[tokio::test]
    async fn only_the_end_of_a_long_stderr_is_kept() {
        let message = shell("head -c 100000 /dev/zero | tr '\\0' x >&2; echo THE-END >&2; exit 1")
            .clean()
            .await
            .unwrap_err()
            .to_string();
        assert!(message.contains("THE-END"), "{message}");
        assert!(
            message.len() < 2 * STDERR_TAIL_BYTES as usize,
            "{} bytes",
            message.len()
        );
    }
}
