//! Running the README's examples as a reader would: in a fresh copy of the
//! repository, from its root, one command after another, with a plain
//! environment.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::examples::{Command, Example, Expect};
use crate::pattern;

/// How long one command may take: the first `cargo run --release` of a
/// fresh machine builds the runner (minutes on two cores).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a server may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the rest of a command's output may take to arrive once it
/// exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies the files git knows of (tracked, and new ones not ignored) from
/// `repo` into `into`, keeping modification times, so that cargo finds the
/// build in the shared target directory up to date (its fingerprints are
/// relative to the package and compare times).
pub fn fresh_copy(repo: &Path, into: &Path) -> Result<(), String> {
    let listing = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(repo)
        .output()
        .map_err(|err| format!("cannot run git ls-files in {}: {err}", repo.display()))?;
    if !listing.status.success() {
        return Err(format!(
            "git ls-files failed in {}: {}",
            repo.display(),
            String::from_utf8_lossy(&listing.stderr)
        ));
    }
    for name in listing
        .stdout
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
    {
        let name = Path::new(std::str::from_utf8(name).map_err(|err| err.to_string())?);
        let (source, target) = (repo.join(name), into.join(name));
        let Ok(metadata) = std::fs::symlink_metadata(&source) else {
            continue; // deleted in the work tree but still in the index
        };
        std::fs::create_dir_all(target.parent().expect("a file has a parent"))
            .map_err(|err| format!("cannot create {}: {err}", target.display()))?;
        if metadata.file_type().is_symlink() {
            let link = std::fs::read_link(&source).map_err(|err| err.to_string())?;
            std::os::unix::fs::symlink(link, &target).map_err(|err| err.to_string())?;
            continue;
        }
        std::fs::copy(&source, &target)
            .map_err(|err| format!("cannot copy {}: {err}", source.display()))?;
        let modified = metadata.modified().map_err(|err| err.to_string())?;
        std::fs::File::options()
            .write(true)
            .open(&target)
            .and_then(|file| file.set_modified(modified))
            .map_err(|err| format!("cannot keep the time of {}: {err}", target.display()))?;
    }
    Ok(())
}

/// Where and how the examples run.
pub struct Reader {
    /// The fresh copy: every command runs from its root.
    pub checkout: PathBuf,
    /// The repository's target directory, so that the copy reuses builds.
    pub target_dir: PathBuf,
    pub is_root: bool,
}

/// A reader going through the README from the top: the Quick start's
/// server (its last `# server` command) runs, as in their other terminal,
/// from the first `with-server` block to the next block without it.
pub struct Session {
    pub reader: Reader,
    quick_start: Option<Command>,
    running: Option<Started>,
}

impl Session {
    pub fn new(reader: Reader) -> Session {
        Session {
            reader,
            quick_start: None,
            running: None,
        }
    }

    /// Runs one example, starting or stopping the Quick start's server as
    /// it needs.
    pub fn run(&mut self, example: &Example) -> Result<(), String> {
        if example.with_server && self.running.is_none() {
            let server = self.quick_start.as_ref().ok_or_else(|| {
                format!(
                    "line {}: a with-server block before any `# server` command",
                    example.line
                )
            })?;
            self.running = Some(self.reader.serve(server)?);
        }
        if !example.with_server {
            self.stop_quick_start()?;
        }
        self.reader.run(example)?;
        // A server only root may run is no reader's Quick start server.
        if let Some(server) = example
            .commands
            .iter()
            .rfind(|command| command.expect == Expect::Server && !command.root_only)
        {
            self.quick_start = Some(server.clone());
        }
        Ok(())
    }

    /// Stops the Quick start's server if it runs; it must exit 0.
    pub fn stop_quick_start(&mut self) -> Result<(), String> {
        match self.running.take() {
            Some(server) => stop(server).map(drop),
            None => Ok(()),
        }
    }
}

/// A command started with its stdout and stderr in one pipe, as a terminal
/// shows them.
struct Started {
    command: Command,
    /// Its process group (the shell, or what the shell became).
    pid: i32,
    /// Its exit status (128 + signal when a signal ended it), once it
    /// exited.
    exited: mpsc::Receiver<i32>,
    output: Arc<Mutex<String>>,
    serving: mpsc::Receiver<()>,
    /// Signalled when the pipe reached its end: all output collected.
    drained: mpsc::Receiver<()>,
}

impl Started {
    /// Waits up to `limit` for the exit status; `None` after killing the
    /// process group when it did not exit in time.
    fn wait(&self, limit: Duration) -> Option<i32> {
        let status = self.exited.recv_timeout(limit).ok();
        if status.is_none() {
            let group = nix::unistd::Pid::from_raw(-self.pid);
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.exited.recv();
        }
        // Bounded: a leftover holding the pipe open must not hang the check.
        let _ = self.drained.recv_timeout(DRAIN_TIMEOUT);
        status
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Reader {
    /// Starts `command` with `bash -c`, in the checkout, with the
    /// environment a login shell would have (PATH, HOME, the Rust
    /// toolchain's variables) and nothing of the test harness's.
    fn start(&self, command: &Command) -> Result<Started, String> {
        let (reader, writer) = std::io::pipe().map_err(|err| err.to_string())?;
        let writer_for_stderr = writer.try_clone().map_err(|err| err.to_string())?;
        let mut shell = std::process::Command::new("bash");
        shell
            .arg("-c")
            .arg(&command.text)
            .current_dir(&self.checkout)
            .env_clear()
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_for_stderr)
            .process_group(0);
        for name in [
            "PATH",
            "HOME",
            "USER",
            "LOGNAME",
            "LANG",
            "RUSTUP_HOME",
            "CARGO_HOME",
            "RUSTUP_TOOLCHAIN",
        ] {
            if let Some(value) = std::env::var_os(name) {
                shell.env(name, value);
            }
        }
        let mut child = shell
            .spawn()
            .map_err(|err| format!("line {}: cannot start bash: {err}", command.line))?;
        drop(shell); // our copies of the pipe's write end
        let pid = child.id() as i32;
        let (exited_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::ExitStatusExt;
            if let Ok(status) = child.wait() {
                let _ = exited_tx.send(
                    status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                );
            }
        });
        let output = Arc::new(Mutex::new(String::new()));
        let (serving_tx, serving) = mpsc::channel();
        let (drained_tx, drained) = mpsc::channel();
        let collected = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                eprintln!("[readme] {line}");
                collected.lock().unwrap().push_str(&(line.clone() + "\n"));
                if line.contains("serving") {
                    let _ = serving_tx.send(());
                }
            }
            let _ = drained_tx.send(());
        });
        Ok(Started {
            command: command.clone(),
            pid,
            exited,
            output,
            serving,
            drained,
        })
    }

    /// Runs `example`'s commands in order; returns what they printed.
    fn run(&self, example: &Example) -> Result<String, String> {
        let mut servers = Vec::new();
        let mut printed = String::new();
        let mut result = Ok(());
        let mut skipped = false;
        for command in &example.commands {
            if command.root_only && !self.is_root {
                crate::common::skip(&format!("README line {}", command.line), "needs root");
                skipped = true;
                continue;
            }
            result = match command.expect {
                Expect::Server => self.serve(command).map(|server| servers.push(server)),
                Expect::Exit(status) => self
                    .complete(command, status)
                    .map(|output| printed += &output),
            };
            if result.is_err() {
                break;
            }
        }
        // Servers stop at the end of their block, also after a failure;
        // what they logged comes first, as a terminal would have shown it.
        for server in servers.into_iter().rev() {
            match stop(server) {
                Ok(output) => printed.insert_str(0, &output),
                Err(error) => result = result.and(Err(error)),
            }
        }
        result?;
        // What a skipped command would have printed is missing (the skip
        // is recorded above).
        if let Some(output) = example.output.as_ref().filter(|_| !skipped) {
            pattern::check(&output.body, &printed).map_err(|error| {
                format!(
                    "line {}: the output of the block at line {} is not what the README shows: {error}\n--- output ---\n{printed}",
                    output.line, example.line
                )
            })?;
        }
        Ok(printed)
    }

    /// Runs `command` to completion; its exit status must be `status`.
    fn complete(&self, command: &Command, status: i32) -> Result<String, String> {
        let started = self.start(command)?;
        let exit = started.wait(COMMAND_TIMEOUT);
        let output = started.output();
        match exit {
            Some(code) if code == status => Ok(output),
            Some(code) => Err(format!(
                "line {}: `{}` exited {code}, the README expects {status}\n--- output ---\n{output}",
                command.line, command.text
            )),
            None => Err(format!(
                "line {}: `{}` did not finish within {COMMAND_TIMEOUT:?}\n--- output ---\n{output}",
                command.line, command.text
            )),
        }
    }

    /// Starts a server and waits for its `serving` line.
    fn serve(&self, command: &Command) -> Result<Started, String> {
        let started = self.start(command)?;
        match started.serving.recv_timeout(COMMAND_TIMEOUT) {
            Ok(()) => Ok(started),
            Err(_) => {
                let output = stop(started).unwrap_or_else(|error| error);
                Err(format!(
                    "line {}: `{}` never logged `serving`\n--- output ---\n{output}",
                    command.line, command.text
                ))
            }
        }
    }
}

/// SIGTERM to a server started by [`Reader::serve`]; it must exit 0.
fn stop(server: Started) -> Result<String, String> {
    let pid = nix::unistd::Pid::from_raw(server.pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let exit = server.wait(STOP_TIMEOUT);
    let output = server.output();
    match exit {
        Some(0) => Ok(output),
        other => Err(format!(
            "line {}: `{}` did not exit 0 after SIGTERM ({other:?})\n--- output ---\n{output}",
            server.command.line, server.command.text
        )),
    }
}
