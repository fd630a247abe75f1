//! Starting the real `rbe-runner` binary on a temporary socket for tests.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod slow_fuse;
#[macro_use]
pub mod spawn_paths;
pub mod test_cgroup;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbe_runner::cli::client::{self, Target};
use rbe_runner::cli::exec::ActionDirectory;
use rbe_runner::proto::resourceusage::PosixResourceUsage;
use rbe_runner::proto::runner::runner_client::RunnerClient;
use rbe_runner::proto::runner::{RunRequest, RunResponse};
use serde_json::{json, Value};
use tonic::transport::Channel;

// The one way a test skips, shared with the crate's unit tests.
#[path = "../../src/test_support/skip.rs"]
pub mod skip;
#[allow(unused_imports)] // like the rest of this module, used by some binaries
pub use skip::{running_as_root, skip};

/// How long a test waits for the runner to report that it serves.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub const BIN: &str = env!("CARGO_BIN_EXE_rbe-runner");

/// The binary `TestRunner` starts: this build's, or the one named by
/// `RBE_RUNNER_UNDER_TEST` (to show that a test fails against an older
/// build).
pub fn runner_under_test() -> PathBuf {
    std::env::var_os("RBE_RUNNER_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BIN))
}

/// Set to `1`, [`TestRunner`] starts the runner as nobody (65534) without
/// capabilities, owning its directories and the action directories the
/// tests make: the non-root runner of docs/isolation.md, for tests/run-all's
/// extra pass of tests/isolation.rs.
pub const UNPRIVILEGED_RUNNER_VARIABLE: &str = "RBE_TEST_UNPRIVILEGED_RUNNER";

/// The uid and gid the runner has with [`UNPRIVILEGED_RUNNER_VARIABLE`].
pub const UNPRIVILEGED_RUNNER_ID: u32 = 65534;

/// Whether [`TestRunner`] starts the runner unprivileged (see
/// [`UNPRIVILEGED_RUNNER_VARIABLE`]).
pub fn unprivileged_runner() -> bool {
    std::env::var_os(UNPRIVILEGED_RUNNER_VARIABLE).is_some_and(|value| value == "1")
}

/// `command` (a program and its arguments) as run by an unprivileged
/// runner: uid and gid [`UNPRIVILEGED_RUNNER_ID`], no supplementary group,
/// no capability (util-linux's `setpriv`).
pub fn unprivileged(program: &Path) -> Command {
    let id = UNPRIVILEGED_RUNNER_ID;
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={id}"))
        .arg(format!("--regid={id}"))
        .args(["--clear-groups", "--inh-caps=-all", "--"])
        .arg(program);
    command
}

/// Gives `path` and everything beneath it to the unprivileged runner.
pub fn give_to_unprivileged_runner(path: &Path) {
    let id = Some(UNPRIVILEGED_RUNNER_ID);
    std::os::unix::fs::lchown(path, id, id).expect("chown to the unprivileged runner");
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).expect("read_dir") {
            give_to_unprivileged_runner(&entry.expect("entry").path());
        }
    }
}

/// PATH for actions started by tests.
pub const TEST_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A running `rbe-runner` serving on a socket in a temporary directory.
pub struct TestRunner {
    pub dir: tempfile::TempDir,
    pub build_dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestRunner {
    /// Starts a runner whose configuration is the default one (build
    /// directory and socket in a tempdir) merged with `extra`.
    pub fn start(extra: Value) -> TestRunner {
        Self::start_with(extra, |_| {})
    }

    /// Like [`TestRunner::start`], letting the caller adjust the command
    /// (environment, ...).
    pub fn start_with(extra: Value, adjust: impl FnOnce(&mut Command)) -> TestRunner {
        Self::start_through(extra, &[], adjust)
    }

    /// Like [`TestRunner::start_with`], the runner started through
    /// `wrapper` (a program and its arguments, to which the runner and
    /// its arguments are appended: `setpriv` with options, say); none:
    /// directly, or unprivileged (see [`UNPRIVILEGED_RUNNER_VARIABLE`]).
    pub fn start_through(
        extra: Value,
        wrapper: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> TestRunner {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut quick = json!({ "terminationGracePeriod": "2s" });
        merge(&mut quick, extra);
        let MinimalConfig {
            path: config_path,
            build_dir,
            socket,
            ..
        } = MinimalConfig::write(dir.path(), quick);

        let mut command = match (wrapper, unprivileged_runner()) {
            ([program, arguments @ ..], _) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(runner_under_test());
                command
            }
            ([], false) => Command::new(runner_under_test()),
            ([], true) => {
                give_to_unprivileged_runner(dir.path());
                unprivileged(&runner_under_test())
            }
        };
        command
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("start rbe-runner");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (serving_tx, serving_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[runner] {line}");
                let serving = line.contains("serving");
                // Logged before announced, so that a test woken by the
                // "serving" line finds it (and everything before) in the log.
                log_writer.lock().unwrap().push(line.clone());
                if serving {
                    let _ = serving_tx.send(line);
                }
            }
        });
        let runner = TestRunner {
            dir,
            build_dir,
            socket,
            child: Some(child),
            log,
        };
        if serving_rx.recv_timeout(STARTUP_TIMEOUT).is_err() {
            panic!(
                "rbe-runner did not start serving; log:\n{}",
                runner.log().join("\n")
            );
        }
        runner
    }

    /// Everything the runner logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Kills the runner's spawn server and waits (up to `limit`) until the
    /// runner logs that it is gone, so that its next actions are created
    /// by the runner itself.
    pub async fn without_spawn_server(&self, limit: Duration) {
        let server = spawn_server_of(self.pid()).expect("the runner's spawn server");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the spawn server");
        eventually("the runner notices its spawn server is gone", limit, || {
            self.log()
                .iter()
                .any(|line| line.contains("the spawn server is gone"))
        })
        .await;
    }

    pub async fn channel(&self) -> Channel {
        client::connect(&Target::Socket(self.socket.clone()))
            .await
            .expect("connect to runner")
    }

    pub async fn client(&self) -> RunnerClient<Channel> {
        RunnerClient::new(self.channel().await)
    }

    /// A client for calls with a deadline that only the runner enforces,
    /// as with bb_worker: tonic's `Channel` cancels such a call at a timer
    /// of its own, started before the request leaves, and on a loaded
    /// machine that cancel reaches the runner more than its 50 ms margin
    /// before the deadline it computed, so it counts as a cancellation.
    pub async fn untimed_client(&self) -> RunnerClient<client::UntimedConnection> {
        client::connect_untimed(&Target::Socket(self.socket.clone()))
            .await
            .expect("connect to runner")
    }

    /// Sends `request` with the deadline `timeout`, which only the runner
    /// enforces (see [`Self::untimed_client`]); the call must fail.
    pub async fn run_past_deadline(&self, request: RunRequest, timeout: Duration) -> tonic::Status {
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        self.untimed_client()
            .await
            .run(request)
            .await
            .expect_err("the call's deadline passes before the action ends")
    }

    /// A fresh action directory, as bb_worker would prepare it.
    pub fn action(&self) -> ActionDirectory {
        let action = ActionDirectory::create(&self.build_dir).expect("create action directory");
        if unprivileged_runner() {
            give_to_unprivileged_runner(&action.path);
        }
        action
    }

    /// Runs `sh -c script` in a fresh action directory.
    pub async fn run_shell(
        &self,
        script: &str,
    ) -> (ActionDirectory, Result<RunResponse, tonic::Status>) {
        self.run_in_fresh_action(|action| shell_request(action, script))
            .await
    }

    /// Runs `/bin/true` in a fresh action directory.
    pub async fn run_true(&self) -> (ActionDirectory, Result<RunResponse, tonic::Status>) {
        self.run_in_fresh_action(|action| action.request(vec!["/bin/true".into()], vec![]))
            .await
    }

    /// Runs the request `for_action` makes for a fresh action directory.
    async fn run_in_fresh_action(
        &self,
        for_action: impl FnOnce(&ActionDirectory) -> RunRequest,
    ) -> (ActionDirectory, Result<RunResponse, tonic::Status>) {
        let action = self.action();
        let request = for_action(&action);
        let result = self
            .client()
            .await
            .run(request)
            .await
            .map(|r| r.into_inner());
        (action, result)
    }

    /// Runs `request` (for `action`) and asserts that it exited 0, showing
    /// the action's stderr otherwise.
    pub async fn run_successfully(
        &self,
        action: &ActionDirectory,
        request: RunRequest,
    ) -> RunResponse {
        let response = self.client().await.run(request).await.unwrap().into_inner();
        assert_eq!(
            response.exit_code,
            0,
            "{}",
            read(&action.path.join("stderr"))
        );
        response
    }

    /// Sends `request`, waits until the action created `ready` (a file it
    /// writes once its signal handlers are installed), then drops the call,
    /// as bb_worker does when an action times out. Cancelling on a marker
    /// rather than a deadline keeps the test independent of machine load.
    pub async fn run_and_cancel_when(&self, request: RunRequest, ready: &Path) {
        let mut client = self.client().await;
        let call = tokio::spawn(async move { client.run(request).await });
        eventually(
            "the action is ready to be cancelled",
            STARTUP_TIMEOUT,
            || ready.exists(),
        )
        .await;
        call.abort();
        let _ = call.await;
    }

    /// Sends SIGTERM and waits for the runner to exit; returns its status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal_terminate();
        self.wait()
    }

    /// Sends SIGTERM to the runner without waiting.
    pub fn signal_terminate(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal runner");
    }

    /// Waits for the runner to exit; returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("runner already stopped");
        child.wait().expect("wait for runner")
    }

    /// Pid of the runner process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("runner running").id()
    }
}

impl Drop for TestRunner {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Run request for `sh -c script` with the test PATH.
pub fn shell_request(action: &ActionDirectory, script: &str) -> RunRequest {
    action.request(
        vec!["sh".into(), "-c".into(), script.into()],
        vec![("PATH".into(), TEST_PATH.into())],
    )
}

/// The POSIXResourceUsage of a response (always its first usage message).
pub fn posix_usage(response: &RunResponse) -> PosixResourceUsage {
    response.resource_usage[0]
        .to_msg::<PosixResourceUsage>()
        .expect("first resource usage is POSIXResourceUsage")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// Whether a process with this pid exists (zombies included).
pub fn process_exists(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Whether `pid` is a runner's spawn server (its command line holds the
/// hidden argument that starts one).
pub fn is_spawn_server(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline.split(|byte| *byte == 0).any(|argument| {
            argument == rbe_runner::process::spawn_server::SERVE_ARGUMENT.as_bytes()
        })
    })
}

/// The spawn server of the runner `runner_pid` (its child), if it has one.
pub fn spawn_server_of(runner_pid: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let parent: u32 = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))?
            .trim()
            .parse()
            .ok()?;
        (parent == runner_pid && is_spawn_server(pid)).then_some(pid)
    })
}

/// A field of `/proc/<pid>/status` given in kB (`VmHWM:`, `RssAnon:`), in
/// bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"));
    kib * 1024
}

/// Waits (bounded) until `condition` holds. For effects that have no
/// notification to await, such as a process disappearing after SIGKILL.
pub async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Merges `extra` into `base`: objects key by key and arrays element by
/// element (so a test can adjust the first gRPC server without restating
/// its socket); anything else is replaced.
/// Runs `command` with `input` on its stdin (closed after it) and waits:
/// its status and whatever of stdout and stderr it was set to capture.
pub fn output_with_input(command: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {:?}: {err}", command.get_program()));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .expect("write the command's input");
    child.wait_with_output().expect("wait for the command")
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(extra)) => {
            for (index, value) in extra.into_iter().enumerate() {
                match base.get_mut(index) {
                    Some(existing) => merge(existing, value),
                    None => base.push(value),
                }
            }
        }
        (base, extra) => *base = extra,
    }
}

/// The python of the test virtualenv (Python's grpcio, gRPC C-core, and
/// its protobuf runtime), made by tests/python/setup-venv on first use.
/// When it cannot be made: `None`, the test skipped with [`skip`].
pub fn test_python(test: &str) -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let python = PYTHON.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/setup-venv");
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
        let output = Command::new(&script)
            .arg(&venv)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
        if !output.status.success() {
            return Err(format!("{} failed: {}", script.display(), output.status));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        Ok(PathBuf::from(line.trim()))
    });
    match python {
        Ok(python) => Some(python.clone()),
        Err(err) => {
            skip(
                test,
                &format!("cannot make the Python test virtualenv: {err}"),
            );
            None
        }
    }
}

/// Whether a test that mounts a FUSE filesystem may go on: it needs root
/// and `/dev/fuse`. Otherwise the test is skipped with [`skip`] (which
/// fails under CI) and this returns false.
pub fn fuse_available(test: &str) -> bool {
    if !running_as_root(test) {
        return false;
    }
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    skip(test, "no /dev/fuse");
    false
}

/// The lowest descriptor number `pid` does not have open: with its
/// `RLIMIT_NOFILE` at this number, the next descriptor it opens fails
/// with EMFILE.
pub fn lowest_free_descriptor(pid: u32) -> u64 {
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the runner's descriptors")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .collect();
    (0..).find(|fd| !open.contains(fd)).unwrap_or(0)
}

/// Sets the soft `RLIMIT_NOFILE` of process `pid`, keeping its hard limit.
pub fn set_descriptor_limit(pid: u32, limit: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: with a null new limit, prlimit only writes the current one
    // into the valid, exclusively borrowed `old`.
    let read = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(read, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: limit.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit reads the valid `new` and, with a null pointer for
    // the old limit, writes nothing.
    let set = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// What a Run that did not start may leave in its action directory: what
/// bb_worker prepared, nothing more.
pub fn assert_only_prepared(action: &ActionDirectory) {
    let mut names: Vec<String> = std::fs::read_dir(&action.path)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["root", "server_logs", "tmp"],
        "in {}",
        action.path.display()
    );
}

/// The diagnostics address the runner logged at startup.
pub fn diagnostics_address(runner: &TestRunner) -> String {
    let line = runner
        .log()
        .into_iter()
        .find(|line| line.contains("diagnostics HTTP server listening"))
        .expect("the runner logs its diagnostics address");
    let start = line.find("127.0.0.1:").expect("an address on 127.0.0.1");
    line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect()
}

/// `GET path` over HTTP/1.1: the status code and the body.
pub fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the diagnostics server");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// A tmpfs mounted on a temporary directory, unmounted on drop. Needs
/// root.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (`size=64k`).
    pub fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs -o {options}: {status}");
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Configuration for a diagnostics server with metrics on a free loopback
/// port (its address is in the log: [`diagnostics_address`]); merge more
/// into it with [`merge`].
pub fn diagnostics_on_loopback() -> Value {
    json!({
        "global": { "diagnosticsHttpServer": {
            "httpServers": [{
                "listenAddresses": ["127.0.0.1:0"],
                "authenticationPolicy": { "allow": {} },
            }],
            "enablePrometheus": true,
        } },
    })
}

/// Sends `actions` Runs to `runner`, as many at once as there are
/// `slots` (action directories, each used by one Run at a time), the
/// request for Run `index` in `slot` made by `request`; each Run's
/// stdout and stderr are `stdout-INDEX`/`stderr-INDEX` in its slot,
/// removed after it. Returns a line for each Run that failed or did not
/// exit 0, with its stderr.
pub async fn run_in_slots(
    runner: &TestRunner,
    slots: Vec<ActionDirectory>,
    actions: usize,
    request: impl Fn(&ActionDirectory, usize) -> RunRequest,
) -> Vec<String> {
    use futures_util::stream::{self, StreamExt};
    let in_flight = slots.len();
    let slots = Mutex::new(slots);
    let client = runner.client().await;
    stream::iter(0..actions)
        .map(|index| {
            let (slots, mut client, request) = (&slots, client.clone(), &request);
            async move {
                let slot = slots.lock().unwrap().pop().expect("a free slot");
                let mut request = request(&slot, index);
                request.stdout_path = format!("{}/stdout-{index}", slot.relative);
                request.stderr_path = format!("{}/stderr-{index}", slot.relative);
                let answer = client.run(request).await.map(tonic::Response::into_inner);
                let problem = match answer {
                    Ok(response) if response.exit_code == 0 => None,
                    other => Some(format!(
                        "{index}: {other:?} {}",
                        std::fs::read_to_string(slot.path.join(format!("stderr-{index}")))
                            .unwrap_or_default()
                    )),
                };
                for output in ["stdout", "stderr"] {
                    let _ = std::fs::remove_file(slot.path.join(format!("{output}-{index}")));
                }
                slots.lock().unwrap().push(slot);
                problem
            }
        })
        .buffer_unordered(in_flight)
        .filter_map(|problem| async move { problem })
        .collect::<Vec<String>>()
        .await
}

/// A runner's configuration written beneath a directory: a build directory
/// and one socket there, with `extra` merged in.
pub struct MinimalConfig {
    /// The configuration file.
    pub path: PathBuf,
    pub build_dir: PathBuf,
    pub socket: PathBuf,
    pub config: Value,
}

impl MinimalConfig {
    /// Makes `dir/build` and writes `dir/runner.jsonnet`.
    pub fn write(dir: &Path, extra: Value) -> MinimalConfig {
        let build_dir = dir.join("build");
        std::fs::create_dir(&build_dir).expect("create build dir");
        let socket = dir.join("runner.sock");
        let mut config = json!({
            "buildDirectoryPath": build_dir,
            "grpcServers": [{
                "listenPaths": [socket],
                "authenticationPolicy": { "allow": {} },
            }],
        });
        merge(&mut config, extra);
        let path = dir.join("runner.jsonnet");
        std::fs::write(&path, config.to_string()).expect("write config");
        MinimalConfig {
            path,
            build_dir,
            socket,
            config,
        }
    }
}

/// Starts the runner with `extra` merged into a minimal configuration
/// (through `wrapper`, a program and its arguments to which the runner
/// and its configuration file are appended; none: directly, as root) and
/// returns what it said on stderr; it must refuse to start, without
/// serving.
pub fn startup_refusal(extra: Value, wrapper: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let MinimalConfig {
        path: config_path,
        socket,
        config,
        ..
    } = MinimalConfig::write(dir.path(), extra);
    let mut command = match wrapper {
        [] => std::process::Command::new(runner_under_test()),
        [program, arguments @ ..] => {
            let mut command = std::process::Command::new(program);
            command.args(arguments).arg(runner_under_test());
            command
        }
    };
    command
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("start rbe-runner");
    // Read until it exits (stderr closes) or says it serves.
    let mut said = Vec::new();
    let mut served = false;
    for line in std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        served |= line.contains("serving");
        said.push(line);
        if served {
            break;
        }
    }
    if served {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let said = said.join("\n");
    assert!(!served, "the runner started with {config}:\n{said}");
    assert!(!status.success(), "exit 0 with {config}:\n{said}");
    assert!(!socket.exists(), "it must not serve");
    said
}

/// The host's mounts (`/proc/self/mountinfo`) for which `matters(mount
/// point, filesystem type, root)` holds, counted by (mount point, type,
/// root): what a test compares before and after actions that mount.
pub fn host_mounts_where(
    matters: impl Fn(&str, &str, &str) -> bool,
) -> std::collections::BTreeMap<(String, String, String), usize> {
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    let mut mounts = std::collections::BTreeMap::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(separator) = fields.iter().position(|field| *field == "-") else {
            continue;
        };
        let (root, point) = (fields[3], fields[4]);
        let fstype = fields.get(separator + 1).copied().unwrap_or_default();
        if matters(point, fstype, root) {
            *mounts
                .entry((point.to_string(), fstype.to_string(), root.to_string()))
                .or_insert(0) += 1;
        }
    }
    mounts
}
