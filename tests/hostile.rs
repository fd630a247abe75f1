//! Hostile and unlucky requests, end to end against the real binary: the
//! runner's memory stays bounded, every failure gets the code that tells
//! the caller what to do (INVALID_ARGUMENT: the request; UNAVAILABLE: retry
//! elsewhere; INTERNAL: the runner), and a Run that never started leaves
//! nothing behind.

mod common;

use std::path::Path;

use common::*;
use prost::bytes::{BufMut, Bytes};
use rbe_runner::exec_limit::current_exec_limit;
use rbe_runner::proto::runner::RunResponse;
use serde_json::json;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// Sending pre-encoded requests
// ---------------------------------------------------------------------------

/// Sends bytes as they are, so that a huge request is encoded once rather
/// than built as millions of strings in the test.
#[derive(Default)]
struct PreEncoded;

struct PreEncodedEncoder;
struct ResponseDecoder;

impl Encoder for PreEncodedEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = RunResponse;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<RunResponse>, Status> {
        use prost::Message;
        RunResponse::decode(buf)
            .map(Some)
            .map_err(|err| Status::internal(err.to_string()))
    }
}

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = RunResponse;
    type Encoder = PreEncodedEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> PreEncodedEncoder {
        PreEncodedEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// Sends the encoded `RunRequest` `encoded` over `channel`.
async fn run_encoded(channel: Channel, encoded: Bytes) -> Result<RunResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|err| Status::unavailable(err.to_string()))?;
    grpc.unary(
        tonic::Request::new(encoded),
        PathAndQuery::from_static("/buildbarn.runner.Runner/Run"),
        PreEncoded,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The runner's peak resident set (`VmHWM`), in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"));
    kib * 1024
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
