//! Shutdown ends within its stated bound (`terminationGracePeriod` plus
//! the margin of src/shutdown.rs) whatever clients and the journal do, and a
//! second SIGTERM ends it at once.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitStatus;
use std::time::Duration;

use common::TestRunner;
use rbe_runner::shutdown::shutdown_bound;
use serde_json::json;

/// The grace period of these tests: the bound is this plus the margin.
const GRACE: Duration = Duration::from_secs(1);

/// Well past the bound, for a loaded machine; a runner still running by
/// then waits without limit.
const SLACK: Duration = Duration::from_secs(40);

fn start(extra: serde_json::Value) -> TestRunner {
    let mut config = json!({ "terminationGracePeriod": format!("{}s", GRACE.as_secs()) });
    common::merge(&mut config, extra);
    TestRunner::start(config)
}

/// Waits for the runner to exit within `limit`; kills it (and fails)
/// otherwise.
fn exits_within(runner: &mut TestRunner, limit: Duration, what: &str) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(runner.pid() as i32);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| sender.send(runner.wait()));
        match receiver.recv_timeout(limit) {
            Ok(status) => status,
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                panic!("{what}: the runner did not exit within {limit:?}");
            }
        }
    })
}

/// A client that sent the HTTP/2 preface and its SETTINGS, and nothing
/// more: it never acknowledges the GOAWAY's PING.
fn preface_only(runner: &TestRunner) -> UnixStream {
    let mut stream = UnixStream::connect(&runner.socket).unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    // The server's own SETTINGS frame header: the connection is accepted
    // and served, so a signal sent next finds it open (otherwise the
    // runner may stop before it ever accepted it, with nothing to wait for).
    let mut header = [0u8; 9];
    stream.set_read_timeout(Some(SLACK)).unwrap();
    stream
        .read_exact(&mut header)
        .expect("the runner answers the preface with its SETTINGS");
    assert_eq!(header[3], 4, "the first frame is SETTINGS: {header:?}");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn a_journal_write_that_blocks_does_not_hold_the_exit() {
    // Why: a journal on a hung NFS mount blocked the final flush, and the
    // runner never exited. A FIFO nobody else reads blocks the same way once
    // its buffer (64 KiB) is full: the runner opens it for reading too.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.jsonl");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut runner = start(json!({ "events": { "journalPath": fifo } }));
    // Arguments in events fill the FIFO's buffer.
    let filler = "x".repeat(40_000);
    for _ in 0..3 {
        let (_, ran) = runner.run_shell(&format!("true {filler}")).await;
        ran.unwrap();
    }
    runner.signal_terminate();
    let status = tokio::task::block_in_place(|| {
        exits_within(&mut runner, shutdown_bound(GRACE) + SLACK, "FIFO journal")
    });
    assert!(status.success(), "{status:?}");
    assert!(
        runner
            .log()
            .iter()
            .any(|line| line.contains("events not written to the journal")),
        "the loss is logged"
    );
}

#[test]
fn a_client_that_only_sent_the_preface_does_not_hold_the_exit() {
    // Why: the graceful close waits for the client to acknowledge the
    // GOAWAY, which this one never does.
    let mut runner = start(json!({}));
    let _client = preface_only(&runner);
    runner.signal_terminate();
    let status = exits_within(&mut runner, shutdown_bound(GRACE) + SLACK, "preface only");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_does_not_hold_the_exit() {
    // Why: an event stream ends only once its last event is sent, which a
    // subscriber with a window of 0 never lets happen.
    let mut runner = start(json!({}));
    // Events to replay, which the stream can then never send.
    let (_, ran) = runner.run_shell("true").await;
    ran.unwrap();
    let stream = tokio::net::UnixStream::connect(&runner.socket)
        .await
        .unwrap();
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(stream)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut sender = sender.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri("http://localhost/rbe_runner.events.v1.Events/Subscribe")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = sender.send_request(request, false).unwrap();
    // An empty SubscribeRequest: replay everything buffered.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);

    runner.signal_terminate();
    let status = tokio::task::block_in_place(|| {
        exits_within(
            &mut runner,
            shutdown_bound(GRACE) + SLACK,
            "window-0 subscriber",
        )
    });
    assert!(status.success(), "{status:?}");
    connection.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_ends_a_shutdown_that_would_wait() {
    // Why: an operator (or a supervisor) that cannot wait for the bound
    // signals again; the runner then stops waiting for clients at once.
    let mut runner = TestRunner::start(json!({ "terminationGracePeriod": "600s" }));
    let _client = preface_only(&runner);
    runner.signal_terminate();
    common::eventually("the first signal is seen", SLACK, || {
        runner
            .log()
            .iter()
            .any(|line| line.contains("shutting down"))
    })
    .await;
    runner.signal_terminate();
    let status = tokio::task::block_in_place(|| exits_within(&mut runner, SLACK, "second SIGTERM"));
    assert!(status.success(), "{status:?}");
    assert!(runner
        .log()
        .iter()
        .any(|line| line.contains("second signal")));
}

/// Whether `pid` is a live process: not gone, and not a zombie (a process
/// killed but not yet reaped, which may be left to init once the runner
/// exited).
fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !matches!(state.and_then(|rest| rest.chars().next()), Some('Z' | 'X'))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_kills_actions_that_ignore_sigterm_at_once() {
    // Why: an operator who signals twice means "now"; an action that
    // ignores SIGTERM must not be left its grace period (ten minutes
    // here), and the runner must not exit leaving it behind.
    signals_kill_an_action_that_ignores_sigterm(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_graceful_stop_a_third_sigterm_kills_actions_at_once() {
    // Why: with stopGracefully the first signal lets actions run and the
    // second terminates them (their grace period); the next one is "now".
    signals_kill_an_action_that_ignores_sigterm(true).await;
}

/// Starts an action that ignores SIGTERM (and a helper process of its),
/// signals the runner until it is terminating the action (once; twice with
/// `stop_gracefully`), then once more: the runner exits and the action's
/// processes are killed, its end recorded as a kill.
async fn signals_kill_an_action_that_ignores_sigterm(stop_gracefully: bool) {
    let mut runner = TestRunner::start(json!({
        "terminationGracePeriod": "600s",
        "grpcServers": [{ "stopGracefully": stop_gracefully }],
    }));
    let action = runner.action();
    let (leader, helper) = (action.path.join("leader"), action.path.join("helper"));
    let script = format!(
        "trap '' TERM; sleep 100000 & echo $! > {helper}; echo $$ > {leader}; wait",
        helper = helper.display(),
        leader = leader.display(),
    );
    let mut client = runner.client().await;
    let call =
        tokio::spawn(async move { client.run(common::shell_request(&action, &script)).await });
    common::eventually("the action started its helper", SLACK, || {
        leader.exists() && helper.exists()
    })
    .await;
    let pid = |path: &std::path::Path| -> i32 { common::read(path).trim().parse().unwrap() };
    let pids = [pid(&leader), pid(&helper)];

    let seen = |text: &'static str| {
        let runner = &runner;
        move || runner.log().iter().any(|line| line.contains(text))
    };
    if stop_gracefully {
        runner.signal_terminate();
        common::eventually(
            "the graceful stop is seen",
            SLACK,
            seen("letting running actions finish"),
        )
        .await;
    }
    runner.signal_terminate();
    common::eventually(
        "the action is being terminated",
        SLACK,
        seen("terminating action"),
    )
    .await;
    assert!(
        pids.iter().all(|pid| is_alive(*pid)),
        "SIGTERM is ignored by the action"
    );
    runner.signal_terminate();
    let status = tokio::task::block_in_place(|| exits_within(&mut runner, SLACK, "last SIGTERM"));
    assert!(status.success(), "{status:?}");
    // Killed before the runner exited; a killed process may take a moment
    // to be gone.
    common::eventually("the action's processes are gone", SLACK, || {
        pids.iter().all(|pid| !is_alive(*pid))
    })
    .await;
    // The log reader may still be reading what the runner wrote last.
    common::eventually("the action's end is recorded as a kill", SLACK, || {
        runner
            .log()
            .iter()
            .any(|line| line.contains("action terminated") && line.contains("SIGKILL"))
    })
    .await;
    // Its call was answered (or dropped with the connection): it ended.
    let _ = call.await.unwrap();
}

/// Whether the socket of the established TCP connection whose local port
/// is `port` (the runner's side) has as much queued as its send buffer
/// holds, so that its next write blocks: `wmem_queued >= sndbuf`, read
/// with `ss` from the kernel's socket memory figures.
fn send_buffer_full(port: &str) -> bool {
    let output = std::process::Command::new("ss")
        .args([
            "-tmnH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| -> Option<u64> {
        let memory = text.split("skmem:(").nth(1)?.split(')').next()?;
        memory
            .split(',')
            .find_map(|item| item.strip_prefix(name)?.parse().ok())
    };
    matches!((field("w"), field("tb")), (Some(queued), Some(buffer)) if queued >= buffer)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diagnostics_client_that_stops_reading_does_not_hold_the_exit() {
    // Why: the diagnostics server answers a request in flight before it
    // stops, and an answer may take its 60 s idle timeout to be written to
    // a client that does not read: longer than the shutdown bound.
    const TEST: &str = "a_diagnostics_client_that_stops_reading_does_not_hold_the_exit";
    if std::process::Command::new("ss").arg("-V").output().is_err() {
        common::skip(
            TEST,
            "needs ss (iproute2) to see the runner's socket buffer fill",
        );
        return;
    }
    let mut runner = start(common::diagnostics_on_loopback());
    let address = common::diagnostics_address(&runner);
    let client = std::net::TcpStream::connect(&address).unwrap();
    // A small receive buffer: the runner's answers soon fill it.
    nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::RcvBuf, &4096).unwrap();
    let port = address.rsplit_once(':').unwrap().1.to_owned();
    // Requests pipelined without reading an answer: the answers (metrics,
    // kilobytes each) soon fill the socket buffers and the runner is left
    // blocked writing one. The writer stops when the runner closes the
    // connection.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n");
    let pipelined = request.repeat(100_000);
    let mut writer = client.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = writer.write_all(pipelined.as_bytes());
    });
    common::eventually("the runner is blocked writing an answer", SLACK, || {
        send_buffer_full(&port)
    })
    .await;

    runner.signal_terminate();
    let status = tokio::task::block_in_place(|| {
        exits_within(
            &mut runner,
            shutdown_bound(GRACE) + SLACK,
            "unread diagnostics answer",
        )
    });
    assert!(status.success(), "{status:?}");
    // The log reader may still be reading what the runner wrote last.
    common::eventually("the connection is cut at the deadline", SLACK, || {
        runner
            .log()
            .iter()
            .any(|line| line.contains("closing the diagnostics connections still open"))
    })
    .await;
    drop(client);
}
