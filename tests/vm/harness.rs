//! Driving the QEMU harness in `tests/vm/` from Rust tests: deciding whether
//! a VM can run here, running guest scenarios, and starting `tests/vm/serve`.
//!
//! The shell scripts own booting and timeouts; this module owns turning
//! their results into values that tests assert on.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long `tests/vm/serve` may take from start to READY once everything
/// is built: boot is 3-5 s under TCG, more on a loaded machine.
const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// How long `tests/vm/serve` may take to stop after SIGTERM: the guest gives
/// the runner 20 s, serve gives the guest 30 s before killing QEMU.
const SERVE_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One VM at a time: two TCG guests on a two-core machine would slow each
/// other past their timeouts. (The scripts also take a file lock, but only
/// for building and booting.)
static VM: Mutex<()> = Mutex::new(());

/// Held while a test uses the VM.
pub struct VmGuard {
    _lock: MutexGuard<'static, ()>,
}

pub fn vm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm")
}

/// Takes the VM for `test`, or returns `None` with `test` skipped, saying
/// why. Under CI a machine that cannot run the VM fails the test instead:
/// CI must not go green by skipping its real-kernel tests.
pub fn vm_or_skip(test: &str) -> Option<VmGuard> {
    // A test that panicked while holding the VM poisons the lock; the VM
    // itself is per boot, so the next test can still use it.
    let guard = VmGuard {
        _lock: VM.lock().unwrap_or_else(PoisonError::into_inner),
    };
    let check = Command::new(vm_dir().join("install-deps.sh"))
        .arg("--check")
        .output();
    let missing = match check {
        Ok(output) if output.status.success() => return Some(guard),
        Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
        Err(err) => format!("cannot run tests/vm/install-deps.sh --check: {err}"),
    };
    crate::common::skip(test, &format!("no VM: {missing}"));
    None
}

/// Builds everything a boot needs (`tests/vm/build`), so that build time
/// stays out of [`SERVE_READY_TIMEOUT`]. Cached: quick when nothing changed.
/// (`tests/vm/run` builds before it starts its own boot timeout.)
pub fn build() {
    let output = Command::new(vm_dir().join("build"))
        .stdin(Stdio::null())
        .output()
        .expect("run tests/vm/build");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "tests/vm/build failed ({}); its output is above",
        output.status
    );
}

// ----- scenarios

/// The results of one `tests/vm/run SCENARIO`, in a temporary directory.
pub struct ScenarioRun {
    dir: tempfile::TempDir,
}

/// Boots the VM once for guest scenario `name` (tests/vm/guest/scenarios/).
/// Panics if the VM did not boot, the scenario did not finish, or it exited
/// non-zero; the script's report is printed either way.
pub fn run_scenario(name: &str) -> ScenarioRun {
    run_scenario_with(name, &[])
}

/// [`run_scenario`] with extra options for `tests/vm/run`, such as
/// `["--vm-memory", "256M"]`.
pub fn run_scenario_with(name: &str, options: &[&str]) -> ScenarioRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(vm_dir().join("run"))
        .arg("--out")
        .arg(dir.path())
        .args(options)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .expect("run tests/vm/run");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "tests/vm/run {name} failed ({}); its report is above",
        output.status
    );
    ScenarioRun { dir }
}

impl ScenarioRun {
    /// The contents of a file the guest wrote into results/.
    pub fn read(&self, name: &str) -> String {
        let path = self.dir.path().join("results").join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
    }

    /// A results/ file holding a copy of a flat-keyed kernel file.
    pub fn flat_keyed(&self, name: &str) -> BTreeMap<String, u64> {
        let text = self.read(name);
        parse_flat_keyed(&text).unwrap_or_else(|err| panic!("{name}: {err}\n{text}"))
    }

    /// A results/ file holding a single integer (an exit status, a counter).
    pub fn number(&self, name: &str) -> i64 {
        let text = self.read(name);
        text.trim()
            .parse()
            .unwrap_or_else(|err| panic!("{name}: {err}: {text:?}"))
    }

    /// A results/ file holding one JSON document.
    pub fn json(&self, name: &str) -> serde_json::Value {
        let text = self.read(name);
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}: {text:?}"))
    }
}

/// Parses a flat-keyed file such as memory.events ("key value" per line).
pub fn parse_flat_keyed(text: &str) -> Result<BTreeMap<String, u64>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("line {line:?} is not \"key value\""))?;
            let value = value
                .trim()
                .parse()
                .map_err(|err| format!("line {line:?}: {err}"))?;
            Ok((key.to_string(), value))
        })
        .collect()
}

// ----- exec results

/// What `rbe-runner exec` printed and how it exited.
pub struct ExecResult {
    pub status: ExitStatus,
    /// The one JSON object exec prints on stdout.
    pub json: serde_json::Value,
    pub stderr: String,
}

impl ExecResult {
    pub fn from_output(output: Output) -> ExecResult {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or_else(|err| {
            panic!("exec ({}) did not print one JSON object: {err}\nstdout: {stdout}\nstderr: {stderr}", output.status)
        });
        ExecResult {
            status: output.status,
            json,
            stderr,
        }
    }

    /// `terminationSignal` of the POSIXResourceUsage entry, if any.
    pub fn termination_signal(&self) -> Option<&str> {
        termination_signal(&self.json)
    }

    /// The action's stdout, read back from the file the runner wrote.
    pub fn stdout_file(&self) -> String {
        let path = self.json["stdoutPath"]
            .as_str()
            .unwrap_or_else(|| panic!("no stdoutPath in {}", self.json));
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
    }
}

/// `terminationSignal` of the POSIXResourceUsage entry in exec's JSON.
pub fn termination_signal(json: &serde_json::Value) -> Option<&str> {
    json["resourceUsage"].as_array()?.iter().find(|usage| {
        usage["@type"] == "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage"
    })?["terminationSignal"]
        .as_str()
}

// ----- serve

/// A running `tests/vm/serve`: a runner in the VM, reachable on
/// 127.0.0.1:`port`. Dropping it without [`Serve::stop`] still sends
/// SIGTERM, so that a failing test does not leave a VM behind.
pub struct Serve {
    child: Option<Child>,
    pub port: u16,
}

impl Serve {
    /// Starts serve with `--config`, `--build-dir`, a free port and `extra`
    /// arguments, and waits for its READY line.
    pub fn start(config: &Path, build_dir: &Path, extra: &[&str]) -> Serve {
        build();
        let port = free_port();
        let mut child = Command::new(vm_dir().join("serve"))
            .arg("--config")
            .arg(config)
            .arg("--build-dir")
            .arg(build_dir)
            .arg("--port")
            .arg(port.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tests/vm/serve");

        // Through eprintln!, so that the harness shows serve's log (and the
        // guest runner's) for a failing test only.
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
            }
        });
        let (lines_tx, lines_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });

        let serve = Serve {
            child: Some(child),
            port,
        };
        match lines_rx.recv_timeout(SERVE_READY_TIMEOUT) {
            Ok(line) if line == "READY" => serve,
            Ok(line) => panic!("serve printed {line:?} on stdout instead of READY"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("serve exited before READY; its log is above")
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("serve was not READY within {SERVE_READY_TIMEOUT:?}; its log is above")
            }
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends SIGTERM and waits for serve to exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("serve is running");
        let pid = pid_of(&child);
        let _ = kill(pid, Signal::SIGTERM);
        let (status_tx, status_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = status_tx.send(child.wait());
        });
        match status_rx.recv_timeout(SERVE_STOP_TIMEOUT) {
            Ok(status) => status.expect("wait for serve"),
            Err(_) => {
                // serve's own watchdog takes QEMU down with it.
                let _ = kill(pid, Signal::SIGKILL);
                panic!("serve did not exit within {SERVE_STOP_TIMEOUT:?} of SIGTERM");
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = kill(pid_of(child), Signal::SIGTERM);
        }
    }
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"))
}

/// A TCP port that was free a moment ago. QEMU binds it moments later; a
/// collision in between makes serve fail loudly, not hang.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_events() {
        let events =
            parse_flat_keyed("low 0\nhigh 0\nmax 35\noom 1\noom_kill 1\noom_group_kill 0\n")
                .unwrap();
        assert_eq!(events["max"], 35);
        assert_eq!(events["oom_kill"], 1);
    }

    #[test]
    fn rejects_a_line_without_a_number() {
        assert!(parse_flat_keyed("oom one\n").is_err());
        assert!(parse_flat_keyed("oom\n").is_err());
    }

    #[test]
    fn finds_the_termination_signal_among_resource_usages() {
        let json = serde_json::json!({
            "exitCode": 137,
            "resourceUsage": [
                { "@type": "type.googleapis.com/rbe_runner.Other" },
                {
                    "@type": "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage",
                    "terminationSignal": "KILL",
                },
            ],
        });
        assert_eq!(termination_signal(&json), Some("KILL"));
        assert_eq!(
            termination_signal(&serde_json::json!({ "exitCode": 0 })),
            None
        );
    }
}
