//! Reaching a runner, for the commands that talk to one (`exec`, `watch`):
//! where it listens, the connection, and its errors as operators read them.
//!
//! Two kinds of connection: tonic's [`Channel`], and an
//! [`UntimedConnection`] for a call with a deadline. A `Channel` enforces a
//! request's `grpc-timeout` itself, with a timer started before the request
//! is even sent, so it fires before the runner's: the caller would read its
//! own `CANCELLED: Timeout expired` instead of the runner's
//! `DEADLINE_EXCEEDED`, which is what bb_worker acts on and what says the
//! action ran out of time. Under an `UntimedConnection` the generated client
//! talks plain HTTP/2, and the deadline is the runner's to enforce.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint, Uri};

use super::usage_json::any_json;
use crate::proto::rpc;
use crate::proto::runner::runner_client::RunnerClient;

/// Where the runner listens.
#[derive(Debug, Clone)]
pub enum Target {
    Socket(PathBuf),
    Address(String),
}

/// Errors of `exec` and `watch` talking to a runner.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot prepare action directory {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Run failed: {}", describe_status(.0))]
    Rpc(tonic::Status),
    /// The runner did not answer a call with a deadline, not even with
    /// `DEADLINE_EXCEEDED`, by the time the caller stopped waiting.
    #[error("Run failed: DEADLINE_EXCEEDED (no answer from the runner) after {waited:?}")]
    NoAnswer { waited: std::time::Duration },
    #[error("Subscribe failed: {}", describe_status(.0))]
    Subscribe(tonic::Status),
}

/// Opens a channel to the runner, for calls without a deadline (it would
/// enforce one itself; see the module's comment).
pub async fn connect(target: &Target) -> Result<Channel, ClientError> {
    let dialled = target.clone();
    Endpoint::from(origin(target)?)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = dialled.clone();
            async move { dial(&target).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| connect_error(target, source))
}

/// A Runner client over one HTTP/2 connection with no timer of its own:
/// a call's `grpc-timeout` is only sent, for the runner to enforce. The
/// caller keeps a later timer of its own, for a runner that never answers.
pub async fn connect_untimed(
    target: &Target,
) -> Result<RunnerClient<UntimedConnection>, ClientError> {
    let origin = origin(target)?;
    let stream = dial(target)
        .await
        .map_err(|source| connect_error(target, source))?;
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|source| connect_error(target, source))?;
    // Drives the connection; its failure reaches the call as the call's.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection to the runner ended");
        }
    });
    Ok(RunnerClient::with_origin(
        UntimedConnection { sender },
        origin,
    ))
}

/// The service under [`connect_untimed`]'s client: hyper's HTTP/2 sender,
/// and nothing else.
#[derive(Clone)]
pub struct UntimedConnection {
    sender: http2::SendRequest<Body>,
}

impl tower::Service<http::Request<Body>> for UntimedConnection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}

/// A byte stream to the runner, over either kind of socket.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

async fn dial(target: &Target) -> std::io::Result<Box<dyn Stream>> {
    Ok(match target {
        Target::Socket(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        Target::Address(address) => {
            let stream = tokio::net::TcpStream::connect(address.as_str()).await?;
            // Small gRPC frames should go out at once, as tonic's own TCP
            // connector sends them.
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
    })
}

/// The scheme and authority calls carry. A Unix socket's is a placeholder,
/// which the runner ignores.
fn origin(target: &Target) -> Result<Uri, ClientError> {
    let origin = match target {
        Target::Socket(_) => "http://[::1]:1".to_string(),
        Target::Address(address) => format!("http://{address}"),
    };
    Uri::try_from(origin).map_err(|source| connect_error(target, source))
}

fn connect_error(
    target: &Target,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ClientError {
    ClientError::Connect {
        target: target_name(target),
        source: source.into(),
    }
}

fn target_name(target: &Target) -> String {
    match target {
        Target::Socket(path) => format!("Unix socket {}", path.display()),
        Target::Address(address) => address.clone(),
    }
}

/// A status with its code, message and any decoded details, for stderr.
pub fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Ok(decoded) = rpc::Status::decode(status.details()) {
        if !decoded.details.is_empty() {
            let details: Vec<Value> = decoded.details.iter().map(any_json).collect();
            text.push_str(&format!(
                "\ndetails: {}",
                serde_json::to_string_pretty(&details).unwrap_or_default()
            ));
        }
    }
    text
}
