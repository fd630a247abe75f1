//! Reaching a runner, for the commands that talk to one (`exec`, `watch`):
//! where it listens, the connection, and its errors as operators read them.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use prost::Message;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

use super::usage_json::any_json;
use crate::proto::rpc;

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
        source: tonic::transport::Error,
    },
    #[error("cannot prepare action directory {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Run failed: {}", describe_status(.0))]
    Rpc(tonic::Status),
    #[error("Subscribe failed: {}", describe_status(.0))]
    Subscribe(tonic::Status),
}

/// Opens a channel to the runner.
pub async fn connect(target: &Target) -> Result<Channel, ClientError> {
    let connected = match target {
        Target::Socket(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector below
            // ignores it and dials the socket.
            Endpoint::from_static("http://[::1]:1")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        }
        Target::Address(address) => match Endpoint::from_shared(format!("http://{address}")) {
            Ok(endpoint) => endpoint.connect().await,
            Err(err) => Err(err),
        },
    };
    connected.map_err(|source| ClientError::Connect {
        target: target_name(target),
        source,
    })
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
