//! gRPC clients other than our own, against the real binary: Python's
//! grpcio (gRPC C-core, as operators' scripts and probes use it) over the
//! Unix socket, deadlines as a raw `grpc-timeout` header, and error
//! messages bounded for clients that refuse long ones.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use prost::Message;
use rbe_runner::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use serde_json::json;
use tonic::Code;

/// What grpc_call.py reported: the response bytes, or the code's name and
/// the details.
fn grpcio_call(
    python: &Path,
    socket: &Path,
    method: &str,
    request: &[u8],
) -> Result<Vec<u8>, (String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_call.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(format!("unix:{}", socket.display()))
        .arg(method)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start python");
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(hex.as_bytes())
        .unwrap();
    let output = child.wait_with_output().expect("wait for python");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = stdout.trim_end();
    if let Some(hex) = line.strip_prefix("OK") {
        let hex = hex.trim();
        return Ok((0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect());
    }
    let rest = line
        .strip_prefix("ERROR ")
        .unwrap_or_else(|| panic!("unexpected output from grpc_call.py: {stdout:?}"));
    let (code, details) = rest.split_once(' ').unwrap_or((rest, ""));
    Err((code.to_string(), details.to_string()))
}

#[tokio::test]
async fn python_grpcio_with_default_options_calls_check_readiness_and_run() {
    // Why: C-core sends the percent-encoded socket path as :authority, which
    // the HTTP/2 server refused (RST_STREAM) before any handler ran; bb_runner
    // serves such clients, so a drop-in replacement must.
    let Some(python) =
        test_python("python_grpcio_with_default_options_calls_check_readiness_and_run")
    else {
        return;
    };
    let runner = TestRunner::start(json!({}));
    let readiness = CheckReadinessRequest { path: ".".into() }.encode_to_vec();
    grpcio_call(&python, &runner.socket, "CheckReadiness", &readiness)
        .expect("CheckReadiness from grpcio");

    // Several calls on one channel: HPACK state carries across requests.
    let action = runner.action();
    let request = shell_request(&action, "echo from-grpcio; exit 7");
    let response = grpcio_call(&python, &runner.socket, "Run", &request.encode_to_vec())
        .expect("Run from grpcio");
    let response = RunResponse::decode(response.as_slice()).unwrap();
    assert_eq!(response.exit_code, 7);
    assert_eq!(read(&action.path.join("stdout")), "from-grpcio\n");

    let missing = CheckReadinessRequest {
        path: "missing".into(),
    }
    .encode_to_vec();
    let (code, details) =
        grpcio_call(&python, &runner.socket, "CheckReadiness", &missing).expect_err("missing path");
    assert_eq!(code, "INTERNAL");
    assert!(details.contains("missing"), "{details}");
}

#[tokio::test]
async fn a_100k_character_path_gets_its_real_code_with_a_bounded_message() {
    // Why: an 87 KB status message made C-core report RESOURCE_EXHAUSTED
    // instead of INVALID_ARGUMENT, so the worker could not act on it.
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    let long = format!("{}/{}/stdout", action.relative, "d".repeat(100_000));
    let request = RunRequest {
        stdout_path: long.clone(),
        ..shell_request(&action, "true")
    };
    let status = runner
        .client()
        .await
        .run(request.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(
        status.message().len() <= 1024,
        "{} bytes",
        status.message().len()
    );
    assert!(
        status.message().contains("stdout_path"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("bytes cut]"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&action.relative),
        "{}",
        status.message()
    );

    let Some(python) =
        test_python("a_100k_character_path_gets_its_real_code_with_a_bounded_message")
    else {
        return;
    };
    let (code, details) = grpcio_call(&python, &runner.socket, "Run", &request.encode_to_vec())
        .expect_err("escaping path");
    assert_eq!(code, "INVALID_ARGUMENT", "{details}");
}

/// One unary call over a bare HTTP/2 connection, headers exactly as given:
/// no client library adds or enforces a deadline. Returns the metadata that
/// carries grpc-status (the trailers, or the headers of a trailers-only
/// response).
async fn raw_unary(
    socket: &Path,
    method: &str,
    headers: &[(&str, &str)],
    message: &[u8],
) -> http::HeaderMap {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut body) = sender
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    body.send_data(frame.into(), true).unwrap();
    let (parts, mut body) = response.await.unwrap().into_parts();
    if parts.headers.contains_key("grpc-status") {
        return parts.headers;
    }
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    body.trailers().await.unwrap().expect("trailers")
}

#[tokio::test]
async fn an_expired_grpc_timeout_answers_deadline_exceeded() {
    // Why: workers act on DEADLINE_EXCEEDED (the action timed out); the
    // server used to answer CANCELLED. The client sets no deadline of its
    // own, so the answer can only come from the server.
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    let request = shell_request(&action, "sleep 60").encode_to_vec();
    let status = raw_unary(
        &runner.socket,
        "/buildbarn.runner.Runner/Run",
        &[("grpc-timeout", "500m")],
        &request,
    )
    .await;
    assert_eq!(
        status.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("4"),
        "DEADLINE_EXCEEDED expected: {status:?}"
    );
}
