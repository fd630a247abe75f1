//! Hostile and unlucky requests, end to end against the real binary: the
//! runner's memory stays bounded, every failure gets the code that tells
//! the caller what to do (INVALID_ARGUMENT: the request; UNAVAILABLE: retry
//! elsewhere; INTERNAL: the runner), and a Run that never started leaves
//! nothing behind.

mod common;

use common::*;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::Message;
use rbe_runner::cli::exec::ActionDirectory;
use rbe_runner::exec_limit::{current_exec_limit, ExecSize};
use rbe_runner::proto::runner::{RunRequest, RunResponse};
use serde_json::json;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// Sending pre-encoded requests
// ---------------------------------------------------------------------------

/// Sends and receives messages as bytes: a huge request is encoded once
/// rather than built as millions of strings in the test, and a broken one
/// can be sent at all.
#[derive(Default)]
struct Raw;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Calls `method` over `channel` with the one request message `encoded`:
/// the response messages, or the status the call ended with. Every kind of
/// method (unary or streaming) looks the same on the wire.
async fn call_encoded(
    channel: Channel,
    method: &'static str,
    encoded: Bytes,
) -> Result<Vec<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    let mut responses = grpc
        .streaming(
            tonic::Request::new(futures_util::stream::iter([encoded])),
            PathAndQuery::from_static(method),
            Raw,
        )
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = responses.message().await? {
        messages.push(message);
    }
    Ok(messages)
}

/// Sends the encoded `RunRequest` `encoded` over `channel`.
async fn run_encoded(channel: Channel, encoded: Bytes) -> Result<RunResponse, Status> {
    let responses = call_encoded(channel, "/buildbarn.runner.Runner/Run", encoded).await?;
    let [response] = responses.as_slice() else {
        return Err(Status::internal(format!(
            "{} responses to a Run",
            responses.len()
        )));
    };
    RunResponse::decode(response.clone()).map_err(|err| Status::internal(err.to_string()))
}

/// The runner's peak resident set (`VmHWM`), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

// ---------------------------------------------------------------------------
// 1. Memory: a request is bounded before it is decoded
// ---------------------------------------------------------------------------

/// Why it matters: 1.3 million one-byte arguments fit in a 3.9 MB message
/// and decode into some 200 MB of strings; 16 of them in flight took the
/// runner to 1.75 GB, only for execve to refuse them with E2BIG.
#[tokio::test(flavor = "multi_thread")]
async fn sixteen_requests_of_a_million_arguments_keep_the_runner_small() {
    const CONCURRENT: usize = 16;
    const ARGUMENTS: usize = 1_300_000;
    const PEAK_LIMIT: u64 = 128 * 1024 * 1024;
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    let mut encoded = prost::Message::encode_to_vec(&shell_request(&action, "true"));
    for _ in 0..ARGUMENTS {
        encoded.extend_from_slice(&[0x0a, 1, b'a']);
    }
    assert!(encoded.len() > 3_900_000 && encoded.len() < 4 << 20);
    let encoded = Bytes::from(encoded);

    // One connection each, all sending at once.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT {
        calls.spawn(run_encoded(runner.channel().await, encoded.clone()));
    }
    let limit = current_exec_limit().to_string();
    while let Some(result) = calls.join_next().await {
        let status = result.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        let message = status.message();
        assert!(message.contains(&limit), "{message}");
        assert!(message.contains("13000"), "{message}");
    }
    let peak = peak_rss_bytes(runner.pid());
    eprintln!("runner peak RSS: {} MiB", peak >> 20);
    assert!(
        peak < PEAK_LIMIT,
        "the runner's peak RSS reached {} MiB",
        peak >> 20
    );
}

// ---------------------------------------------------------------------------
// 2. The request's faults: INVALID_ARGUMENT naming the field
// ---------------------------------------------------------------------------

/// Why it matters: each of these was answered INTERNAL, which Bazel
/// retries, or reached the action as something else than asked; and a
/// Run refused after its stdout was created left the file behind.
#[tokio::test]
async fn request_faults_are_invalid_arguments_naming_the_field_and_leave_nothing() {
    let runner = TestRunner::start(json!({}));
    let mut client = runner.client().await;
    type Adjust = fn(&ActionDirectory, &mut RunRequest);
    let cases: [(&str, &str, Adjust); 8] = [
        ("NUL in a path", "stdout_path", |a, r| {
            r.stdout_path = format!("{}/std\0out", a.relative)
        }),
        ("over-long component", "stdout_path", |a, r| {
            r.stdout_path = format!("{}/{}", a.relative, "x".repeat(300))
        }),
        ("over-long path", "input_root_directory", |a, r| {
            r.input_root_directory = format!("{}/{}", a.relative, ["root"; 1100].join("/"))
        }),
        ("trailing slash on stdout", "stdout_path", |a, r| {
            r.stdout_path = format!("{}/stdout/", a.relative)
        }),
        (
            "trailing slash on stderr, after stdout",
            "stderr_path",
            |a, r| r.stderr_path = format!("{}/stderr/", a.relative),
        ),
        ("'=' in an environment key", "\"A=B\"", |_, r| {
            r.environment_variables.insert("A=B".into(), "C".into());
        }),
        ("empty environment key", "environment_variables", |_, r| {
            r.environment_variables.insert(String::new(), "C".into());
        }),
        ("NUL in an argument", "arguments[1]", |_, r| {
            r.arguments.insert(1, "nul\0byte".into())
        }),
    ];
    for (case, named, adjust) in cases {
        let action = runner.action();
        let mut request = shell_request(&action, "echo ran");
        adjust(&action, &mut request);
        let status = client.run(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{case}: {}",
            status.message()
        );
        assert!(
            status.message().contains(named),
            "{case}: {}",
            status.message()
        );
        assert_only_prepared(&action);
    }
}

/// Why it matters: RESOLVE_BENEATH refuses every absolute symlink, also
/// one naming a place inside the build directory; "resolves outside" sent
/// users looking for an escape that was not there.
#[tokio::test]
async fn an_absolute_symlink_inside_is_refused_as_not_followed() {
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    std::os::unix::fs::symlink(action.path.join("root"), action.path.join("root-link")).unwrap();
    let request = RunRequest {
        input_root_directory: format!("{}/root-link", action.relative),
        ..shell_request(&action, "true")
    };
    let status = runner.client().await.run(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let message = status.message();
    assert!(message.contains("input_root_directory"), "{message}");
    assert!(
        message.contains("absolute symlinks are not followed"),
        "{message}"
    );
    assert!(!message.contains("outside"), "{message}");
}

/// Why it matters: execve refusing the arguments (E2BIG) is the request's
/// fault; INTERNAL made Bazel retry it elsewhere, in vain. This request
/// passes the check at decoding, and is pushed over the kernel's limit by
/// the TMPDIR the runner adds and the program's path the kernel copies.
#[tokio::test]
async fn an_exec_refused_with_e2big_is_invalid_argument_stating_the_size() {
    let runner = TestRunner::start(json!({ "setTmpdirEnvironmentVariable": true }));
    let action = runner.action();
    let limit = current_exec_limit();
    let mut arguments = vec!["/bin/true".to_string()];
    let size = |arguments: &[String]| ExecSize::of(arguments, []).unwrap().bytes();
    while size(&arguments) + 100_000 + 8 < limit - 8 {
        arguments.push("x".repeat(100_000 - 1));
    }
    let last = limit - 8 - size(&arguments) - 8 - 1;
    arguments.push("y".repeat(last as usize));
    assert_eq!(size(&arguments), limit - 8);
    let request = action.request(arguments, vec![]);
    let status = runner.client().await.run(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let message = status.message();
    assert!(message.contains("E2BIG"), "{message}");
    assert!(message.contains(&limit.to_string()), "{message}");
    assert!(message.contains("bytes"), "{message}");
    assert_only_prepared(&action);
}

/// Why it matters: an undecodable request to CheckReadiness, Events or
/// Health, and a Run with a string that is not UTF-8, were answered
/// INTERNAL (reflection answered OK, with nothing); Bazel retries INTERNAL
/// elsewhere in vain, since only the client can fix what it sent.
#[tokio::test]
async fn undecodable_requests_to_every_service_are_invalid_arguments_naming_the_field() {
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    let run = shell_request(&action, "echo ran").encode_to_vec();
    let then = |start: &[u8], end: &[u8]| Bytes::from([start, end].concat());
    // A string field (tag byte) holding "a\xff", and a string cut short.
    let not_utf8 = |tag: u8| [tag, 2, b'a', 0xff];
    let cut_short = [0x0a, 5, b'a'];
    const CHECK_READINESS: &str = "/buildbarn.runner.Runner/CheckReadiness";
    const RUN: &str = "/buildbarn.runner.Runner/Run";
    const SUBSCRIBE: &str = "/rbe_runner.events.v1.Events/Subscribe";
    const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
    const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
    const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
    let invalid = "not a valid protobuf encoding";
    let cases = [
        (
            CHECK_READINESS,
            then(&[], &not_utf8(0x0a)),
            "CheckReadinessRequest.path",
        ),
        (CHECK_READINESS, then(&[], &cut_short), invalid),
        (
            RUN,
            then(&run, &not_utf8(0x0a)),
            "arguments[3] is not valid UTF-8",
        ),
        (RUN, then(&run, &not_utf8(0x22)), "RunRequest.stdout_path"),
        (RUN, then(&run, &cut_short), invalid),
        (
            SUBSCRIBE,
            then(&[], &not_utf8(0x1a)),
            "SubscribeRequest.runner_instance",
        ),
        (SUBSCRIBE, then(&[], &cut_short), invalid),
        (
            HEALTH_CHECK,
            then(&[], &not_utf8(0x0a)),
            "HealthCheckRequest.service",
        ),
        (HEALTH_CHECK, then(&[], &cut_short), invalid),
        (
            HEALTH_WATCH,
            then(&[], &not_utf8(0x0a)),
            "HealthCheckRequest.service",
        ),
        (
            REFLECTION,
            then(&[], &not_utf8(0x0a)),
            "ServerReflectionRequest.host",
        ),
        (REFLECTION, then(&[], &cut_short), invalid),
    ];
    let channel = runner.channel().await;
    let mut wrong = Vec::new();
    for (method, encoded, named) in cases {
        let answer = call_encoded(channel.clone(), method, encoded.clone()).await;
        let right = matches!(&answer, Err(status)
            if status.code() == Code::InvalidArgument && status.message().contains(named));
        if !right {
            wrong.push(format!("{method} {encoded:?}: {answer:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "not INVALID_ARGUMENT naming the field:\n{}",
        wrong.join("\n")
    );
    assert_only_prepared(&action);
}

// ---------------------------------------------------------------------------
// 3. The node's trouble: UNAVAILABLE, and nothing left behind
// ---------------------------------------------------------------------------

/// Why it matters: a runner out of descriptors answered INTERNAL (Bazel
/// fails the build) and left files; it is the node's trouble, which
/// another worker does not have. Each attempt below runs with a few more
/// descriptors free, so that a different step runs out.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_out_of_descriptors_answers_unavailable_and_leaves_nothing() {
    let runner = TestRunner::start(json!({ "setTmpdirEnvironmentVariable": true }));
    let mut client = runner.client().await;
    // The connection exists: from here on only the Run needs descriptors.
    client
        .run(shell_request(&runner.action(), "true"))
        .await
        .unwrap();
    let base = lowest_free_descriptor(runner.pid());
    let mut unavailable = 0;
    for spare in 0..12 {
        set_descriptor_limit(runner.pid(), base + spare);
        let action = runner.action();
        match client.run(shell_request(&action, "echo ran")).await {
            Ok(response) => {
                assert_eq!(
                    response.into_inner().exit_code,
                    0,
                    "with {spare} spare descriptors"
                );
                assert_eq!(read(&action.path.join("stdout")), "ran\n");
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::Unavailable,
                    "with {spare} spare descriptors: {}",
                    status.message()
                );
                unavailable += 1;
                assert_only_prepared(&action);
            }
        }
    }
    assert!(unavailable > 0, "no attempt ran out of descriptors");
    set_descriptor_limit(runner.pid(), 1024);
    let (_, result) = runner.run_shell("true").await;
    assert_eq!(result.unwrap().exit_code, 0, "the runner recovered");
}

/// Why it matters: on a full build filesystem the action ran, could not
/// write its output and failed with exit code 1 and an empty stderr: a
/// broken build, on every worker with a full disk. It is the node's
/// trouble, named so that operators know which filesystem to free.
#[tokio::test]
async fn a_full_build_filesystem_is_unavailable_naming_it() {
    if !running_as_root("a_full_build_filesystem_is_unavailable_naming_it") {
        return;
    }
    let tmpfs = Tmpfs::mount("size=64k");
    let runner = TestRunner::start(json!({ "buildDirectoryPath": tmpfs.dir.path() }));
    let action = ActionDirectory::create(tmpfs.dir.path()).unwrap();
    let mut filler = std::fs::File::create(tmpfs.dir.path().join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    let status = runner
        .client()
        .await
        .run(shell_request(&action, "echo ran"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    let message = status.message();
    assert!(message.contains("no space left"), "{message}");
    assert!(
        message.contains(&tmpfs.dir.path().display().to_string()),
        "{message}"
    );
    assert_only_prepared(&action);
}
