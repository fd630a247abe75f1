//! Live output end to end, against the real binary: `rbe-runner logs` and
//! Python's grpcio following running actions' stdout and stderr, many at
//! once, from the start, halfway and without following; binary output;
//! NOT_FOUND for unknown and removed actions; a follower that never reads;
//! the shared cap with event subscribers; and no CPU spent while followers
//! wait on a silent action (no polling).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper_util::rt::TokioIo;
use prost::Message;
use rbe_runner::cli::exec::ActionDirectory;
use rbe_runner::proto::rbe_runner::events::v1::event::Kind;
use rbe_runner::proto::rbe_runner::events::v1::events_client::EventsClient;
use rbe_runner::proto::rbe_runner::events::v1::SubscribeRequest;
use rbe_runner::proto::rbe_runner::output::v1::output_client::OutputClient;
use rbe_runner::proto::rbe_runner::output::v1::{FollowRequest, OutputChunk, OutputStream};
use rbe_runner::proto::runner::RunResponse;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a test waits for something that must come.
const TIMEOUT: Duration = Duration::from_secs(60);

type RunCall = tokio::task::JoinHandle<Result<RunResponse, tonic::Status>>;

/// Starts `sh -c script` in a fresh action directory; the call runs on.
fn start_shell(runner: &Arc<TestRunner>, script: &str) -> (ActionDirectory, RunCall) {
    let action = runner.action();
    let call = start_shell_in(runner, &action, script);
    (action, call)
}

/// A fresh action directory whose input root holds the FIFO `fifo`: an
/// action reading it waits until the test writes a line.
fn action_with_fifo(runner: &TestRunner) -> ActionDirectory {
    let action = runner.action();
    nix::unistd::mkfifo(
        &action.path.join("root/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    action
}

/// Lets an action waiting on its FIFO go on.
fn release(action: &ActionDirectory) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(action.path.join("root/fifo"))
        .and_then(|mut fifo| fifo.write_all(b"go\n"))
        .unwrap();
}

/// Starts `sh -c script` in `action`; the call runs on.
fn start_shell_in(runner: &Arc<TestRunner>, action: &ActionDirectory, script: &str) -> RunCall {
    let request = shell_request(action, script);
    let runner = runner.clone();
    tokio::spawn(async move {
        runner
            .client()
            .await
            .run(request)
            .await
            .map(|response| response.into_inner())
    })
}

/// The id of the action whose argv holds `marker`, from the events (the
/// same id `watch` prints), once it has started.
async fn action_id(runner: &TestRunner, marker: &str) -> String {
    let mut events = EventsClient::new(runner.channel().await)
        .subscribe(SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    loop {
        let event = tokio::time::timeout(TIMEOUT, events.message())
            .await
            .expect("the action starts within the timeout")
            .expect("the event stream is healthy")
            .expect("the event stream goes on");
        if let Some(Kind::ActionStarted(started)) = event.kind {
            if started.arguments.iter().any(|a| a.contains(marker)) {
                return started.action_id;
            }
        }
    }
}

/// `rbe-runner logs --socket … ARGS`, its stdout and stderr piped.
fn logs(runner: &TestRunner, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .arg("logs")
        .arg("--socket")
        .arg(&runner.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start rbe-runner logs")
}

/// What a `logs` printed, once it exited 0.
async fn logs_output(child: tokio::process::Child) -> Vec<u8> {
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("logs ends within the timeout")
        .expect("logs ran");
    assert!(
        output.status.success(),
        "logs: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The exit status and stderr of a `logs` that must fail.
async fn logs_failure(runner: &TestRunner, args: &[&str]) -> String {
    let output = tokio::time::timeout(TIMEOUT, logs(runner, args).wait_with_output())
        .await
        .expect("logs ends within the timeout")
        .expect("logs ran");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

async fn finished(call: RunCall) -> RunResponse {
    let response = tokio::time::timeout(TIMEOUT, call)
        .await
        .expect("the action ends within the timeout")
        .expect("the call's task")
        .expect("the Run succeeds");
    assert_eq!(response.exit_code, 0);
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn many_followers_from_the_start_halfway_and_without_follow_each_get_the_exact_file() {
    // Why it matters: this is what an operator and a dashboard do at
    // once with a long action: follow it from its first byte, join late,
    // or take what is there now. Each must get exactly the file's bytes,
    // stdout and stderr apart, with nothing lost or repeated.
    let runner = Arc::new(TestRunner::start(json!({})));
    let marker = "many-followers";
    // A line every 100 ms for 3 s, waiting halfway until the test has
    // started its late followers.
    let action = action_with_fifo(&runner);
    let call = start_shell_in(
        &runner,
        &action,
        &format!(
            "i=1; while [ $i -le 30 ]; do echo \"out $i of 30\"; echo \"err $i\" >&2; \
             sleep 0.1; [ $i -eq 15 ] && read line < fifo; i=$((i + 1)); done # {marker}"
        ),
    );
    let id = action_id(&runner, marker).await;

    let from_start: Vec<_> = (0..10).map(|_| logs(&runner, &[&id])).collect();
    let stderr_follower = logs(&runner, &[&id, "--stderr"]);

    // Halfway: a follower has seen the 15th line while the action runs
    // (it waits): join from 0, from an offset, and take what is there
    // without following.
    let mut watched = logs(&runner, &[&id]);
    let mut lines = BufReader::new(watched.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let line = tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("15 lines within the timeout")
            .unwrap()
            .expect("the output goes on");
        seen.push(line);
    }
    let halfway = logs(&runner, &[&id]);
    let with_offset = logs(&runner, &[&id, "--offset", "5"]);
    let without_follow = logs(&runner, &[&id, "--no-follow"]);
    let now = logs_output(without_follow).await;
    release(&action);

    finished(call).await;
    let stdout = read_bytes(&action.path.join("stdout"));
    let stderr = read_bytes(&action.path.join("stderr"));
    assert_eq!(stdout.iter().filter(|&&b| b == b'\n').count(), 30);
    for follower in from_start {
        assert_eq!(logs_output(follower).await, stdout);
    }
    assert_eq!(logs_output(halfway).await, stdout);
    assert_eq!(logs_output(with_offset).await, stdout[5..]);
    assert_eq!(logs_output(stderr_follower).await, stderr);
    // Without following: exactly the 15 lines there were.
    assert!(
        stdout.starts_with(&now),
        "{:?}",
        String::from_utf8_lossy(&now)
    );
    assert!(String::from_utf8_lossy(&now).ends_with("out 15 of 30\n"));
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    assert_eq!(seen.join("\n") + "\n", String::from_utf8_lossy(&stdout));
    assert!(watched.wait().await.unwrap().success());

    // A finished action whose files exist can still be followed, from
    // anywhere; past the end it ends at once.
    assert_eq!(logs_output(logs(&runner, &[&id])).await, stdout);
    let past_end = (stdout.len() + 100).to_string();
    assert_eq!(
        logs_output(logs(&runner, &[&id, "--offset", &past_end])).await,
        b""
    );
}

/// Follows `request` with Python's grpcio; the chunks, in order.
async fn python_follow(
    python: &Path,
    runner: &TestRunner,
    request: &FollowRequest,
) -> Vec<OutputChunk> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/follow_output.py");
    let mut child = tokio::process::Command::new(python)
        .arg(&script)
        .arg(format!("unix:{}", runner.socket.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start python");
    let hex: String = request
        .encode_to_vec()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, hex.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("python ends within the timeout")
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "follow_output.py: {stdout}");
    let mut chunks = Vec::new();
    for line in stdout.lines() {
        match line.split_once(' ') {
            Some(("CHUNK", hex)) => {
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                chunks.push(OutputChunk::decode(bytes.as_slice()).unwrap());
            }
            _ => assert_eq!(line, "END", "{stdout}"),
        }
    }
    chunks
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_output_with_nul_bytes_reaches_a_python_grpcio_follower_exactly() {
    // Why it matters: output is bytes, not text: a test that writes a
    // core dump or a protobuf to stdout must arrive as written, in
    // chunks of at most 64 KiB whose offsets add up, for a client in
    // another language too.
    let test = "binary_output_with_nul_bytes_reaches_a_python_grpcio_follower_exactly";
    let Some(python) = test_python(test) else {
        return;
    };
    let runner = Arc::new(TestRunner::start(json!({})));
    let marker = "binary-output";
    let (action, call) = start_shell(
        &runner,
        &format!(
            "head -c 150000 /dev/urandom; printf 'a\\000b\\000\\000c'; sleep 0.5; \
             head -c 100000 /dev/urandom; printf '\\000' # {marker}"
        ),
    );
    let id = action_id(&runner, marker).await;
    let request = FollowRequest {
        action_id: id.clone(),
        stream: OutputStream::Stdout as i32,
        offset: 0,
        follow: true,
    };
    let chunks = python_follow(&python, &runner, &request).await;
    finished(call).await;
    let stdout = read_bytes(&action.path.join("stdout"));
    assert_eq!(stdout.len(), 250_007);

    let mut received = Vec::new();
    for chunk in &chunks {
        assert_eq!(chunk.offset, received.len() as u64, "no gap, no repeat");
        assert!(chunk.data.len() <= 64 << 10, "{} bytes", chunk.data.len());
        received.extend_from_slice(&chunk.data);
    }
    assert!(chunks.last().unwrap().end_of_output);
    assert_eq!(chunks.iter().filter(|chunk| chunk.end_of_output).count(), 1);
    assert!(received == stdout, "the bytes differ from the file");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_removed_actions_are_not_found_and_watch_ids_can_be_copied_into_logs() {
    // Why it matters: an operator copies an id from `watch`; once
    // bb_worker removed the action's directory the answer must say so,
    // not look like an empty output.
    let runner = Arc::new(TestRunner::start(json!({})));
    let (action, call) = start_shell(&runner, "echo copied from watch");
    finished(call).await;

    let watch = tokio::process::Command::new(BIN)
        .args(["watch", "--no-follow", "--socket"])
        .arg(&runner.socket)
        .output()
        .await
        .unwrap();
    let watch = String::from_utf8(watch.stdout).unwrap();
    let started = watch
        .lines()
        .find(|line| line.contains(" sh started, pid "))
        .unwrap_or_else(|| panic!("no started line in {watch}"));
    // `<time> <action id> <program> started, pid N`
    let id = started.split_whitespace().nth(1).unwrap();
    assert_eq!(
        logs_output(logs(&runner, &[id, "--no-follow"])).await,
        b"copied from watch\n"
    );

    let unknown = logs_failure(&runner, &["0badcafe-1"]).await;
    assert!(unknown.contains("Follow failed: NotFound"), "{unknown}");
    assert!(unknown.contains("no action \"0badcafe-1\""), "{unknown}");

    std::fs::remove_dir_all(&action.path).unwrap();
    let removed = logs_failure(&runner, &[id]).await;
    assert!(removed.contains("NotFound"), "{removed}");
    assert!(removed.contains("no longer exists"), "{removed}");
    assert!(removed.contains("bb_worker removes"), "{removed}");
    let removed = logs_failure(&runner, &[id, "--stderr", "--no-follow"]).await;
    assert!(removed.contains("the stderr of action"), "{removed}");
}

/// A channel whose HTTP/2 windows are 1 KiB, so that a client that never
/// reads stalls its stream quickly.
async fn small_window_channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://[::1]:1")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_never_reads_holds_up_neither_its_action_nor_other_runs() {
    // Why it matters: a stuck `logs` (a terminal scrolled back, a
    // crashed dashboard) must cost the action and every other call
    // nothing; and when it reads again, nothing was lost.
    let runner = Arc::new(TestRunner::start(json!({})));
    let marker = "never-reads";
    let action = action_with_fifo(&runner);
    let call = start_shell_in(
        &runner,
        &action,
        &format!("echo first; read line < fifo; head -c 8000000 /dev/zero # {marker}"),
    );
    let id = action_id(&runner, marker).await;
    let mut stalled = OutputClient::new(small_window_channel(&runner.socket).await)
        .follow(FollowRequest {
            action_id: id.clone(),
            stream: OutputStream::Stdout as i32,
            offset: 0,
            follow: true,
        })
        .await
        .expect("follow")
        .into_inner();
    let first = stalled.message().await.unwrap().unwrap();
    assert_eq!(first.data, b"first\n");

    // The action writes 8 MB the follower does not read, and ends.
    release(&action);
    finished(call).await;
    // Other actions run as usual meanwhile.
    for _ in 0..20 {
        let other = runner.action();
        runner
            .run_successfully(&other, shell_request(&other, "echo other"))
            .await;
    }

    let mut received = first.data;
    loop {
        let chunk = tokio::time::timeout(TIMEOUT, stalled.message())
            .await
            .expect("the rest within the timeout")
            .unwrap()
            .expect("the stream goes on until end_of_output");
        assert_eq!(chunk.offset, received.len() as u64);
        received.extend_from_slice(&chunk.data);
        if chunk.end_of_output {
            break;
        }
    }
    assert!(received == read_bytes(&action.path.join("stdout")));
}

#[tokio::test(flavor = "multi_thread")]
async fn followers_and_event_subscribers_share_the_cap() {
    // Why it matters: every stream holds a send buffer; the cap bounds
    // what clients can make the runner hold, whichever kind they open.
    let runner = Arc::new(TestRunner::start(
        json!({ "events": { "maximumSubscribers": 2 } }),
    ));
    let marker = "shared-cap";
    let action = action_with_fifo(&runner);
    let call = start_shell_in(
        &runner,
        &action,
        &format!("echo one; read line < fifo # {marker}"),
    );
    let id = action_id(&runner, marker).await; // its subscription ended
    let follow = FollowRequest {
        action_id: id.clone(),
        stream: OutputStream::Stdout as i32,
        offset: 0,
        follow: true,
    };
    let mut follower = OutputClient::new(runner.channel().await)
        .follow(follow.clone())
        .await
        .expect("the first stream is admitted")
        .into_inner();
    assert_eq!(follower.message().await.unwrap().unwrap().data, b"one\n");
    let _subscriber = EventsClient::new(runner.channel().await)
        .subscribe(SubscribeRequest::default())
        .await
        .expect("the second stream is admitted");

    let refused = OutputClient::new(runner.channel().await)
        .follow(follow.clone())
        .await
        .expect_err("a third stream is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("events.maximumSubscribers"),
        "{refused:?}"
    );
    let refused = EventsClient::new(runner.channel().await)
        .subscribe(SubscribeRequest::default())
        .await
        .expect_err("a third stream is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let refused = logs_failure(&runner, &[&id]).await;
    assert!(refused.contains("ResourceExhausted"), "{refused}");

    release(&action);
    finished(call).await;
    let end = follower.message().await.unwrap().unwrap();
    assert!(end.end_of_output);
    assert!(follower.message().await.unwrap().is_none());
    // The follower's place is free again once its stream is gone.
    drop(follower);
    let mut again = None;
    for _ in 0..100 {
        match OutputClient::new(runner.channel().await)
            .follow(follow.clone())
            .await
        {
            Ok(stream) => {
                again = Some(stream);
                break;
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tokio::task::yield_now().await
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    assert!(
        again.is_some(),
        "the place of an ended follower is given back"
    );
}

/// The runner's CPU time so far (user + system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14,
    // stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_followers_waiting_on_a_silent_action_cost_the_runner_no_cpu() {
    // Why it matters: followers wait on the kernel's word (inotify) and
    // the action's end, never by polling: waiting is free however many
    // wait and however long. 5 s of polling every few milliseconds by
    // ten followers would cost far more than the bound.
    let runner = Arc::new(TestRunner::start(json!({})));
    let marker = "silent";
    let action = action_with_fifo(&runner);
    let call = start_shell_in(
        &runner,
        &action,
        &format!("echo ready; read line < fifo # {marker}"),
    );
    let id = action_id(&runner, marker).await;
    let mut followers = Vec::new();
    for _ in 0..10 {
        let mut follower = logs(&runner, &[&id]);
        let mut stdout = follower.stdout.take().unwrap();
        let mut ready = [0u8; 6];
        tokio::time::timeout(TIMEOUT, stdout.read_exact(&mut ready))
            .await
            .expect("the first line within the timeout")
            .unwrap();
        assert_eq!(&ready, b"ready\n");
        followers.push((follower, stdout));
    }

    // All ten wait now; the window is the measurement, not a wait for
    // something.
    let before = cpu_time(runner.pid());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let spent = cpu_time(runner.pid()) - before;
    eprintln!("runner CPU time over 5 s with 10 waiting followers: {spent:?}");
    assert!(
        spent < Duration::from_millis(100),
        "{spent:?}: followers poll"
    );

    release(&action);
    finished(call).await;
    for (follower, mut stdout) in followers {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let status = tokio::time::timeout(TIMEOUT, follower.wait_with_output())
            .await
            .unwrap()
            .unwrap()
            .status;
        assert!(status.success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_output_service_is_on_every_listener_and_listed_by_reflection() {
    // Why it matters: an operator follows from wherever they reach the
    // runner, and tools like grpcurl find the service by reflection.
    let runner = Arc::new(TestRunner::start(
        json!({ "grpcServers": [{ "listenAddresses": ["127.0.0.1:0"] }] }),
    ));
    let line = runner
        .log()
        .into_iter()
        .find(|line| line.contains("serving"))
        .unwrap();
    let address = line
        .split(['"', ' ', '[', ']', ','])
        .find(|part| part.starts_with("127.0.0.1:") && !part.ends_with(":0"))
        .unwrap_or_else(|| panic!("no bound TCP address in {line:?}"))
        .to_string();
    let (_action, call) = start_shell(&runner, "printf 'over tcp' # every-listener");
    let id = action_id(&runner, "every-listener").await;
    finished(call).await;
    let over_tcp = tokio::process::Command::new(BIN)
        .args(["logs", "--address", &address, &id])
        .output()
        .await
        .unwrap();
    assert!(over_tcp.status.success(), "{over_tcp:?}");
    assert_eq!(over_tcp.stdout, b"over tcp");
    assert_eq!(logs_output(logs(&runner, &[&id])).await, b"over tcp");

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let response = ServerReflectionClient::new(runner.channel().await)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"rbe_runner.output.v1.Output".to_string()),
        "{names:?}"
    );
}
