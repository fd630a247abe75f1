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
