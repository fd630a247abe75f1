//! The listener under adversarial use, against the real binary: a second
//! runner on the same path, permissions under umask 000, signals, a full
//! descriptor table, and connections that never finish their handshake.
//! Each test reproduces a way the runner used to be hijacked or starved.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rbe_runner::proto::runner::CheckReadinessRequest;
use serde_json::json;

/// Bound for effects that have no notification to await.
const SETTLE: Duration = Duration::from_secs(30);

/// The client preface and an empty SETTINGS frame: a complete handshake.
const HANDSHAKE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

async fn ready(runner: &TestRunner) {
    runner
        .client()
        .await
        .check_readiness(CheckReadinessRequest { path: ".".into() })
        .await
        .expect("the runner serves");
}

/// Runs `command` to its exit, bounded: a runner that does not exit (it
/// took the socket over and serves) fails the test instead of hanging it.
fn run_to_exit(command: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status, stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the second runner did not exit: it is serving on the first one's socket");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_second_runner_refuses_a_live_socket_and_the_first_keeps_serving() {
    // Why: a second runner with the same listenPaths used to unlink the
    // live socket and bind its own, leaving the first unreachable.
    let first = TestRunner::start(json!({}));
    let config = first.dir.path().join("second.jsonnet");
    let second_build = first.dir.path().join("second-build");
    std::fs::create_dir(&second_build).unwrap();
    let text = json!({
        "buildDirectoryPath": second_build,
        "grpcServers": [{ "listenPaths": [first.socket], "authenticationPolicy": { "allow": {} } }],
    });
    std::fs::write(&config, text.to_string()).unwrap();
    let (status, stderr) = run_to_exit(Command::new(runner_under_test()).arg(&config));
    assert!(!status.success());
    assert!(
        stderr.contains(&first.socket.display().to_string()) && stderr.contains("another process"),
        "{stderr}"
    );
    ready(&first).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_exiting_after_another_took_its_path_leaves_the_new_socket() {
    // Why: a stopping runner (stopGracefully, waiting for an action) no
    // longer accepts, so a new runner may replace its socket; when the old
    // one exits it used to unlink the path, now the new runner's socket.
    let mut old = TestRunner::start(json!({ "grpcServers": [{ "stopGracefully": true }] }));
    let action = old.action();
    let started = action.path.join("started");
    let go = action.path.join("go");
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
        started.display(),
        go.display()
    );
    let mut client = old.client().await;
    let request = shell_request(&action, &script);
    let call = tokio::spawn(async move { client.run(request).await });
    eventually("the action started", SETTLE, || started.exists()).await;
    old.signal_terminate();
    let socket = old.socket.clone();
    eventually("the stopping runner refuses connections", SETTLE, || {
        UnixStream::connect(&socket).is_err()
    })
    .await;

    let mut new = TestRunner::start(json!({
        "grpcServers": [{ "listenPaths": [old.socket] }],
    }));
    new.socket = old.socket.clone();
    ready(&new).await;

    std::fs::write(&go, "").unwrap();
    assert_eq!(call.await.unwrap().unwrap().into_inner().exit_code, 0);
    assert!(old.wait().success());
    assert!(
        old.socket.exists(),
        "the exiting runner removed the new one's socket"
    );
    ready(&new).await;
    assert!(new.stop().success());
    assert!(!new.socket.exists(), "a runner removes its own socket");
}

#[tokio::test]
async fn listen_path_mode_gives_the_socket_exact_permissions_under_umask_000() {
    // Why: with umask 000 the socket was srwxrwxrwx: any local user could
    // run commands as the runner's user, root included.
    let runner = TestRunner::start(json!({
        "global": { "setUmask": { "umask": 0 } },
        "listenPathMode": "0660",
    }));
    let mode = std::fs::metadata(&runner.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o660);
    ready(&runner).await;
    assert!(
        !runner
            .log()
            .iter()
            .any(|line| line.contains("writable by every local user")),
        "no warning for a closed socket"
    );
}

#[tokio::test]
async fn a_socket_open_to_everyone_is_warned_about_when_the_runner_is_root() {
    // Why: keeping the umask default is compatible, but an operator must
    // learn that any local user can then run commands as root.
    if !running_as_root("a_socket_open_to_everyone_is_warned_about_when_the_runner_is_root") {
        return;
    }
    let runner = TestRunner::start(json!({ "global": { "setUmask": { "umask": 0 } } }));
    let mode = std::fs::metadata(&runner.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o777, "the umask-derived default is kept");
    let log = runner.log();
    assert!(
        log.iter()
            .any(|line| line.contains("writable by every local user")
                && line.contains(&runner.socket.display().to_string())),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigusr1_and_sigusr2_are_ignored_and_sighup_stops_cleanly() {
    // Why: these signals killed the runner without a shutdown: callers got
    // a broken stream, actions were orphaned, the socket file was left.
    let mut runner = TestRunner::start(json!({}));
    let pid = nix::unistd::Pid::from_raw(runner.pid() as i32);
    for signal in [
        nix::sys::signal::Signal::SIGUSR1,
        nix::sys::signal::Signal::SIGUSR2,
    ] {
        nix::sys::signal::kill(pid, signal).unwrap();
        let name = signal.as_str();
        eventually("the signal is logged", SETTLE, || {
            runner
                .log()
                .iter()
                .any(|line| line.contains(name) && line.contains("ignored"))
        })
        .await;
        ready(&runner).await;
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let status = runner.wait();
    assert!(status.success(), "{status:?}");
    assert!(!runner.socket.exists(), "the socket is removed on SIGHUP");
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    ticks as f64 / per_second
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_descriptor_table_does_not_spin_the_accept_loop() {
    // Why: with its descriptors used up, accept4 failed with EMFILE about
    // 11,000 times a second, burning over a core, nothing logged. This is a
    // resource bound (under 0.5 CPU-seconds in 5 s), not a speed goal.
    const LIMIT: u64 = 128;
    let runner = TestRunner::start_with(json!({}), |command| {
        // SAFETY: setrlimit is a single system call, async-signal-safe, and
        // touches no memory shared with the parent.
        unsafe {
            command.pre_exec(|| {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    LIMIT,
                    LIMIT,
                )
                .map_err(std::io::Error::from)
            });
        }
    });
    let pid = runner.pid();
    // Established connections (handshake sent) are kept by the runner, so
    // the table stays full; the rest wait in the backlog.
    let mut connections = Vec::new();
    for _ in 0..LIMIT + 40 {
        let mut stream = UnixStream::connect(&runner.socket).unwrap();
        stream.write_all(HANDSHAKE).unwrap();
        connections.push(stream);
    }
    eventually("the runner's descriptor table is full", SETTLE, || {
        open_descriptors(pid) as u64 >= LIMIT
    })
    .await;
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "{used} CPU-seconds in 5 s with a full descriptor table"
    );
    let warnings = runner
        .log()
        .iter()
        .filter(|line| line.contains("out of descriptors"))
        .count();
    assert_eq!(warnings, 1, "logged once per episode");

    drop(connections);
    ready(&runner).await;
    assert!(runner
        .log()
        .iter()
        .any(|line| line.contains("accepting connections again")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_without_a_handshake_is_closed_and_an_established_one_is_kept() {
    // Why: idle half-open connections were never closed, so a local client
    // could exhaust the runner's descriptors; but bb_worker keeps one
    // established connection open for good, and that one must stay.
    let runner = TestRunner::start(json!({}));
    let stream = tokio::net::UnixStream::connect(&runner.socket)
        .await
        .unwrap();
    let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
    let established = tokio::spawn(connection);
    let request = || {
        http::Request::builder()
            .method("POST")
            .uri("http://localhost/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let call = |sender: &mut h2::client::SendRequest<bytes::Bytes>| {
        let (response, mut body) = sender.send_request(request(), false).unwrap();
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        response
    };
    assert_eq!(call(&mut sender).await.unwrap().status(), 200);

    let mut idle = UnixStream::connect(&runner.socket).unwrap();
    idle.set_read_timeout(Some(SETTLE)).unwrap();
    let start = Instant::now();
    let mut received = Vec::new();
    let result = idle.read_to_end(&mut received);
    assert!(
        result.is_ok() && received.is_empty(),
        "closed without a word: {result:?} after {:?}, {} bytes",
        start.elapsed(),
        received.len()
    );

    // Older than the handshake limit by now, and still served.
    let mut sender = sender.ready().await.expect("established connection kept");
    assert_eq!(call(&mut sender).await.unwrap().status(), 200);
    assert!(!established.is_finished());
}

#[tokio::test]
async fn a_client_that_is_not_http2_is_refused_through_the_rewriting() {
    // Why: the handshake reader and the rewriting sit in front of the
    // HTTP/2 server on Unix sockets; garbage must still end the connection
    // at once, not hang it, and not disturb the runner.
    let runner = TestRunner::start(json!({}));
    let mut stream = UnixStream::connect(&runner.socket).unwrap();
    stream.set_read_timeout(Some(SETTLE)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .expect("the runner closes the connection");
    ready(&runner).await;
}
