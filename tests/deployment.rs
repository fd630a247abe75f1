//! The bb-deployments pod shape: `install` as the init container, the
//! static binary in a root holding nothing else, the runner as PID 1 of a
//! PID namespace (its container), and the files in `deploy/` validated by
//! the tools that consume them.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// How long a test waits for a runner to serve, or for an effect with no
/// notification to await (a process disappearing).
const WAIT_LIMIT: Duration = Duration::from_secs(60);

fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn exec_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "exec printed no JSON ({err}): stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            stderr_of(output)
        )
    })
}

// ---------------------------------------------------------------------------
// install

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The init container's job: both names, executable by the runner's uid
/// (65534), identical to the running binary, and the marker last.
#[test]
fn install_copies_itself_under_both_names_then_writes_the_marker() {
    let dir = tempfile::tempdir().unwrap();

    let output = Command::new(BIN)
        .arg("install")
        .arg(dir.path())
        .output()
        .unwrap();

    assert!(output.status.success(), "{}", stderr_of(&output));
    let binary = std::fs::read(BIN).unwrap();
    for name in ["rbe-runner", "bb_runner"] {
        let path = dir.path().join(name);
        assert!(std::fs::read(&path).unwrap() == binary, "{name} differs");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o555);
    }
    let marker = dir.path().join("installed");
    assert_eq!(std::fs::metadata(&marker).unwrap().mode() & 0o7777, 0o444);
    // What bb-deployments' runner container executes works.
    let version = Command::new(dir.path().join("bb_runner"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("rbe-runner {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Pods restart; the init container runs again over its own read-only
/// files, possibly while an old runner still executes one of them.
#[test]
fn install_is_idempotent_and_replaces_a_running_copy() {
    let dir = tempfile::tempdir().unwrap();
    let install = || {
        Command::new(BIN)
            .arg("install")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    assert!(install().status.success());
    // A process executing the installed copy (its file is "text busy"):
    // check-config blocks reading its configuration from the open pipe.
    let mut running = Command::new(dir.path().join("rbe-runner"))
        .args(["check-config", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let second = install();

    assert!(
        running.try_wait().unwrap().is_none(),
        "the installed copy was not running during the second install"
    );
    drop(running.stdin.take());
    let _ = running.wait();
    assert!(second.status.success(), "{}", stderr_of(&second));
    assert_eq!(
        names_in(dir.path()),
        ["bb_runner", "installed", "rbe-runner"]
    );
}

/// The binary under test without its debug information, in `dir`: ten
/// installs of a 180 MB debug build would write 3.6 GB. Without `strip`,
/// the binary as it is.
fn small_installer(dir: &Path) -> PathBuf {
    let stripped = dir.join("rbe-runner");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(runner_under_test())
        .status();
    match status {
        Ok(status) if status.success() => stripped,
        other => {
            eprintln!("cannot strip the binary ({other:?}): installing it whole");
            runner_under_test()
        }
    }
}

/// Why it matters: init containers of several pods sharing a hostPath, or
/// a restarted one racing its predecessor, install into one directory at
/// once; with one fixed temporary name each deleted the other's, and 78 of
/// 120 failed. Each now writes its own, and the last rename wins.
#[test]
fn ten_concurrent_installs_into_one_directory_all_succeed() {
    const INSTALLERS: usize = 10;
    let scratch = tempfile::tempdir().unwrap();
    let installer = small_installer(scratch.path());
    let dir = scratch.path().join("bb");
    std::fs::create_dir(&dir).unwrap();

    let installs: Vec<Child> = (0..INSTALLERS)
        .map(|_| {
            Command::new(&installer)
                .arg("install")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let failures: Vec<String> = installs
        .into_iter()
        .map(|install| install.wait_with_output().unwrap())
        .filter(|output| !output.status.success())
        .map(|output| stderr_of(&output))
        .collect();

    assert!(
        failures.is_empty(),
        "{} of {INSTALLERS} installs failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(names_in(&dir), ["bb_runner", "installed", "rbe-runner"]);
    let binary = std::fs::read(&installer).unwrap();
    for name in ["rbe-runner", "bb_runner"] {
        let installed = std::fs::read(dir.join(name)).unwrap();
        assert!(installed == binary, "{name} is not a complete copy");
    }
}

/// Why it matters: out of space, the error blamed the source,
/// `/proc/self/exe`, sending the operator to look at the image instead of
/// the volume; and a full volume must not keep half a file.
#[test]
fn install_onto_a_full_filesystem_fails_naming_the_destination() {
    if !running_as_root("install_onto_a_full_filesystem_fails_naming_the_destination") {
        return;
    }
    let tmpfs = Tmpfs::mount("size=1m");

    let output = Command::new(runner_under_test())
        .arg("install")
        .arg(tmpfs.dir.path())
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    let destination = tmpfs.dir.path().join("rbe-runner");
    assert!(
        stderr.contains(&format!("{}:", destination.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(!stderr.contains("/proc/self/exe"), "{stderr}");
    assert!(
        names_in(tmpfs.dir.path()).is_empty(),
        "nothing is left behind"
    );
}

#[test]
fn install_into_a_missing_directory_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-mounted");

    let output = Command::new(BIN)
        .arg("install")
        .arg(&missing)
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    let stderr = stderr_of(&output);
    assert!(stderr.contains(&*missing.to_string_lossy()), "{stderr}");
    assert!(!missing.exists());
}

#[test]
fn install_takes_at_most_one_directory() {
    let output = Command::new(BIN)
        .args(["install", "/a", "/b"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_of(&output).contains("at most one"));
}

// ---------------------------------------------------------------------------
// A runner started under a wrapper (unshare, chroot)

/// A runner started through a wrapper command, such as `unshare` or
/// `chroot`; [`TestRunner`] always starts the binary directly.
struct WrappedRunner {
    child: Child,
    serving_line: String,
}

impl WrappedRunner {
    /// Starts `command` (which must end up executing the runner) and waits
    /// for its "serving" line.
    fn start(mut command: Command) -> WrappedRunner {
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the wrapped runner");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[runner] {line}");
                let _ = lines_tx.send(line);
            }
        });
        let mut log = Vec::new();
        loop {
            match lines_rx.recv_timeout(WAIT_LIMIT) {
                Ok(line) if line.contains("serving") => {
                    return WrappedRunner {
                        child,
                        serving_line: line,
                    }
                }
                Ok(line) => log.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "the runner did not start serving ({:?}); log:\n{}",
                        command,
                        log.join("\n")
                    );
                }
            }
        }
    }

    fn terminate_and_wait(mut self, pid: i32) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal the runner");
        self.child.wait().expect("wait for the runner")
    }
}

impl Drop for WrappedRunner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a runner configuration for `build_dir` and `socket` to `path`.
fn write_config(path: &Path, build_dir: &Path, socket: &Path, extra: Value) {
    let mut config = json!({
        "buildDirectoryPath": build_dir,
        "grpcServers": [{
            "listenPaths": [socket],
            "authenticationPolicy": { "allow": {} },
        }],
        "terminationGracePeriod": "2s",
    });
    merge(&mut config, extra);
    std::fs::write(path, config.to_string()).expect("write config");
}

// ---------------------------------------------------------------------------
// PID 1

/// One process as seen from outside its PID namespace.
struct ProcessInfo {
    host_pid: i32,
    parent_host_pid: i32,
    /// Its pid in the innermost namespace (the last `NSpid` entry).
    namespace_pid: i32,
    state: char,
}

fn process_info(host_pid: i32) -> Option<ProcessInfo> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    Some(ProcessInfo {
        host_pid,
        parent_host_pid: field("PPid:")?.parse().ok()?,
        namespace_pid: field("NSpid:")?.split_whitespace().last()?.parse().ok()?,
        state: field("State:")?.chars().next()?,
    })
}

/// Every process, zombies included, in the PID namespace of `member`.
fn processes_in_namespace_of(member: i32) -> Vec<ProcessInfo> {
    let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(wanted) = namespace(&member.to_string()) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let pid: i32 = name.parse().ok()?;
            (namespace(&name)? == wanted).then(|| process_info(pid))?
        })
        .collect()
}

/// The only child of `parent` (what `unshare --fork` started).
fn only_child_of(parent: i32) -> i32 {
    let children: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let info = process_info(pid)?;
            (info.parent_host_pid == parent).then_some(pid)
        })
        .collect();
    assert_eq!(children.len(), 1, "children of {parent}: {children:?}");
    children[0]
}

/// The runner as PID 1 of a new PID namespace (with its own /proc), as in
/// a container without tini.
struct Pid1Runner {
    runner: WrappedRunner,
    /// The runner's pid as seen from here (it is 1 inside).
    host_pid: i32,
    dir: tempfile::TempDir,
    build_dir: PathBuf,
    socket: PathBuf,
}

impl Pid1Runner {
    fn start() -> Pid1Runner {
        let dir = tempfile::tempdir().unwrap();
        let build_dir = dir.path().join("build");
        std::fs::create_dir(&build_dir).unwrap();
        let socket = dir.path().join("runner.sock");
        let config = dir.path().join("runner.jsonnet");
        write_config(&config, &build_dir, &socket, json!({}));
        let mut command = Command::new("unshare");
        command
            // --kill-child: a test that panics kills unshare, and with it the runner.
            .args(["--pid", "--fork", "--kill-child", "--mount-proc", "--"])
            .arg(BIN)
            .arg(&config);
        let runner = WrappedRunner::start(command);
        let host_pid = only_child_of(runner.child.id() as i32);
        let info = process_info(host_pid).expect("the runner's /proc entry");
        assert_eq!(info.namespace_pid, 1, "the runner is not PID 1");
        Pid1Runner {
            runner,
            host_pid,
            dir,
            build_dir,
            socket,
        }
    }

    fn exec(&self, env: &[(&str, &Path)], script: &str) -> Output {
        let mut command = Command::new(BIN);
        command
            .arg("exec")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--build-dir")
            .arg(&self.build_dir);
        for (key, value) in env {
            command
                .arg("--env")
                .arg(format!("{key}={}", value.display()));
        }
        command.args(["--", "sh", "-c", script]).output().unwrap()
    }
}

/// PID 1 gets no default signal actions: a SIGTERM the runner did not
/// handle itself would be ignored and the container killed after its
/// grace period. It must stop cleanly and leave no socket behind.
#[test]
fn as_pid_1_sigterm_exits_0_and_removes_the_socket() {
    if !running_as_root("as_pid_1_sigterm_exits_0_and_removes_the_socket") {
        return;
    }
    let runner = Pid1Runner::start();
    assert!(runner.socket.exists());
    let output = runner.exec(&[], "exit 0");
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));

    let socket = runner.socket.clone();
    let status = runner.runner.terminate_and_wait(runner.host_pid);

    // unshare exits with its child's status.
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!socket.exists(), "the socket was left behind");
    drop(runner.dir);
}

/// An action's double-forked daemon is re-parented to PID 1, the runner,
/// which must reap it when it exits: zombies would pile up over
/// thousands of actions until the container runs out of pids.
#[test]
fn as_pid_1_a_double_forked_orphan_of_an_action_is_reaped() {
    if !running_as_root("as_pid_1_a_double_forked_orphan_of_an_action_is_reaped") {
        return;
    }
    let runner = Pid1Runner::start();
    let pid_file = runner.dir.path().join("orphan.pid");
    let release = runner.dir.path().join("release");
    // The subshell forks the daemon and exits at once; setsid takes the
    // daemon out of the action's process group, so nothing kills it when
    // the action ends: it lives until it is released. The action waits
    // for its pid file, written after setsid: leftovers still in the
    // group when the action exits are killed.
    let output = runner.exec(
        &[("PID_FILE", &pid_file), ("RELEASE", &release)],
        r#"( setsid sh -c 'echo $$ > "$PID_FILE"; while [ ! -e "$RELEASE" ]; do sleep 0.05; done' & )
           while [ ! -s "$PID_FILE" ]; do sleep 0.01; done"#,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(eventually("the orphan wrote its pid", WAIT_LIMIT, || {
        std::fs::read_to_string(&pid_file).is_ok_and(|text| text.ends_with('\n'))
    }));
    let namespace_pid: i32 = read(&pid_file).trim().parse().unwrap();
    let orphan = processes_in_namespace_of(runner.host_pid)
        .into_iter()
        .find(|process| process.namespace_pid == namespace_pid)
        .expect("the orphan is running in the runner's namespace");
    assert_eq!(
        orphan.parent_host_pid, runner.host_pid,
        "the orphan was not re-parented to the runner"
    );

    std::fs::write(&release, b"").unwrap();

    // A zombie keeps its /proc entry until reaped: gone means reaped.
    rt.block_on(eventually(
        "the orphan has exited and been reaped",
        WAIT_LIMIT,
        || !process_exists(orphan.host_pid),
    ));
    // Besides the runner, only its spawn server (its child, which creates
    // actions' processes) may be left.
    let left: Vec<(i32, i32, char)> = processes_in_namespace_of(runner.host_pid)
        .iter()
        .filter(|process| {
            !(process.parent_host_pid == runner.host_pid && is_spawn_server(process.host_pid))
        })
        .map(|process| (process.host_pid, process.namespace_pid, process.state))
        .collect();
    assert_eq!(
        left,
        [(runner.host_pid, 1, 'S')],
        "only the runner and its spawn server should be left in its namespace (host pid, pid, state)"
    );
    let status = runner.runner.terminate_and_wait(runner.host_pid);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

// ---------------------------------------------------------------------------
// The static binary in a bare root

/// Builds the static runner with tools/build-static in the VM harness's
/// target directory, so that CI builds it once for both.
fn static_runner() -> PathBuf {
    let cache = std::env::var_os("RBE_VM_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target/vm"));
    let output = Command::new(repo_dir().join("tools/build-static"))
        .args(["--profile", "dev", "--target-dir"])
        .arg(cache.join("cargo"))
        .output()
        .expect("run tools/build-static");
    assert!(
        output.status.success(),
        "tools/build-static failed:\n{}",
        stderr_of(&output)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Whether /bin/busybox is the static busybox, which a bare root needs.
fn static_busybox(test: &str) -> Option<PathBuf> {
    let busybox = PathBuf::from("/bin/busybox");
    let is_static = Command::new("readelf")
        .arg("-lW")
        .arg(&busybox)
        .output()
        .is_ok_and(|output| {
            output.status.success()
                && !String::from_utf8_lossy(&output.stdout).contains("program interpreter")
        });
    if is_static {
        return Some(busybox);
    }
    skip(
        test,
        "needs a static /bin/busybox: apt-get install busybox-static",
    );
    None
}

/// The claim behind the static build: the runner needs no file of any
/// userland (no ld.so, libc, /etc/passwd, /etc/nsswitch.conf, /dev), so
/// it runs from /bb in whatever toolchain image a pod uses. The root holds
/// the runner, busybox, a config and /proc, nothing else; the runner
/// serves a Unix socket and numeric TCP, and the static client in the
/// same root runs actions over both.
#[test]
fn static_runner_serves_actions_in_a_root_holding_only_itself_and_busybox() {
    let test = "static_runner_serves_actions_in_a_root_holding_only_itself_and_busybox";
    if !running_as_root(test) {
        return;
    }
    let Some(busybox) = static_busybox(test) else {
        return;
    };
    let runner_binary = static_runner();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    for dir in ["bin", "proc", "build"] {
        std::fs::create_dir(root.join(dir)).unwrap();
    }
    std::fs::copy(&runner_binary, root.join("rbe-runner")).unwrap();
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    write_config(
        &root.join("runner.jsonnet"),
        Path::new("/build"),
        Path::new("/runner.sock"),
        json!({ "grpcServers": [{ "listenAddresses": ["127.0.0.1:0"] }] }),
    );

    // /proc is mounted in a mount namespace of the runner's own, so it
    // goes away with the runner.
    let mut command = Command::new("unshare");
    command
        .arg(format!("--mount-proc={}", root.join("proc").display()))
        .arg("--")
        .arg("chroot")
        .arg(root)
        .args(["/rbe-runner", "/runner.jsonnet"]);
    let runner = WrappedRunner::start(command);
    // unshare without --fork and chroot both exec: this is the runner.
    let runner_pid = runner.child.id() as i32;
    let tcp_address = runner
        .serving_line
        .split('"')
        .find(|part| part.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no TCP listener in {:?}", runner.serving_line))
        .to_string();

    let script = "busybox cat; echo stdin ended; busybox ls /";
    for target in [["--socket", "/runner.sock"], ["--address", &tcp_address]] {
        let output = Command::new("chroot")
            .arg(root)
            .args(["/rbe-runner", "exec"])
            .args(target)
            .args(["--build-dir", "/build", "--", "/bin/busybox", "sh", "-c"])
            .arg(script)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "exec {target:?}: {}",
            stderr_of(&output)
        );
        let response = exec_json(&output);
        assert_eq!(response["exitCode"], 0, "{response}");
        let stdout_path = response["stdoutPath"].as_str().unwrap();
        let stdout = read(&root.join(stdout_path.trim_start_matches('/')));
        // stdin is at end-of-file without a /dev/null, and the action
        // sees the bare root.
        assert_eq!(
            stdout, "stdin ended\nbin\nbuild\nproc\nrbe-runner\nrunner.jsonnet\nrunner.sock\n",
            "exec {target:?}"
        );
    }

    let status = runner.terminate_and_wait(runner_pid);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!root.join("runner.sock").exists());
}

// ---------------------------------------------------------------------------
// deploy/

/// Every file in deploy/ passes the tool that consumes it (see
/// tests/deploy/validate): a manifest that the API server would reject,
/// or a runner configuration in a ConfigMap that the runner would refuse,
/// fails here rather than at a user's first deployment.
#[test]
fn deployment_files_validate() {
    let output = Command::new(repo_dir().join("tests/deploy/validate"))
        .arg(BIN)
        .output()
        .expect("run tests/deploy/validate");
    let stderr = stderr_of(&output);
    eprintln!("{stderr}");
    assert!(output.status.success(), "tests/deploy/validate failed");
    // The validator skips a check whose tool is missing (and fails under
    // CI); each such check is a skip of this test.
    for line in stderr.lines() {
        if let Some((_, missing)) = line.split_once("SKIPPED: ") {
            skip("deployment_files_validate", missing);
        }
    }
}
