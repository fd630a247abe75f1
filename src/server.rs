//! Serving the runner: listeners, shutdown, and the one place where runner
//! errors become gRPC statuses.
//!
//! Each `grpcServers` entry becomes one tonic server per listener (Unix
//! socket or TCP), each serving `buildbarn.runner.Runner`,
//! `rbe_runner.events.v1.Events`, gRPC health and server reflection. On shutdown the listeners stop accepting, in-flight
//! calls finish (the caller decides beforehand whether actions are allowed
//! to run to completion or are terminated), and socket files are removed.

use std::future::Future;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use prost::Message;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{Code, Request, Response, Status};

use crate::config::GrpcServerConfig;
use crate::events::service::EventsService;
use crate::proto::rbe_runner::events::v1::events_server::EventsServer;
use crate::proto::rpc;
use crate::proto::runner::runner_server::{Runner as RunnerService, RunnerServer};
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use crate::runner::{CallContext, RunnerError, SharedRunner};

/// Maps a runner error to its gRPC status. The only such mapping.
pub fn status_from_error(error: RunnerError) -> Status {
    match error {
        RunnerError::InvalidArgument(message) => Status::invalid_argument(message),
        RunnerError::Internal(message) => Status::internal(message),
        RunnerError::DeadlineExceeded(message) => Status::deadline_exceeded(message),
        RunnerError::Cancelled(message) => Status::cancelled(message),
        RunnerError::Unavailable { message, details } if details.is_empty() => {
            Status::unavailable(message)
        }
        RunnerError::Unavailable { message, details } => {
            // Rich error model: the encoded google.rpc.Status travels in
            // grpc-status-details-bin, which bb_worker copies into the
            // ExecuteResponse, so the evidence reaches the client.
            let encoded = rpc::Status {
                code: Code::Unavailable as i32,
                message: message.clone(),
                details,
            }
            .encode_to_vec();
            Status::with_details(Code::Unavailable, message, encoded.into())
        }
    }
}

/// What the runner chain learns of a call from its metadata: the deadline
/// the caller set (`grpc-timeout`), counted from `received`.
fn call_context(metadata: &tonic::metadata::MetadataMap, received: Instant) -> CallContext {
    let deadline = metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .and_then(|timeout| received.checked_add(timeout));
    CallContext { deadline }
}

/// Parses gRPC's `grpc-timeout` header: at most 8 ASCII digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). `None` for anything else, which is then
/// treated as no deadline.
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// Adapts a [`SharedRunner`] to the generated gRPC service.
pub struct RunnerGrpcService {
    runner: SharedRunner,
}

impl RunnerGrpcService {
    pub fn new(runner: SharedRunner) -> Self {
        RunnerGrpcService { runner }
    }
}

#[tonic::async_trait]
impl RunnerService for RunnerGrpcService {
    async fn check_readiness(
        &self,
        request: Request<CheckReadinessRequest>,
    ) -> Result<Response<()>, Status> {
        self.runner
            .check_readiness(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status_from_error)
    }

    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        let call = call_context(request.metadata(), Instant::now());
        self.runner
            .run(request.into_inner(), call)
            .await
            .map(Response::new)
            .map_err(status_from_error)
    }
}

/// Errors setting up listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on Unix socket {path}: {source}")]
    UnixSocket { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {address}: {source}")]
    Tcp { address: String, source: io::Error },
    #[error("gRPC server on {listener} failed: {source}")]
    Transport {
        listener: String,
        source: tonic::transport::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
}

/// A bound listener, ready to serve.
enum Listener {
    Unix {
        path: PathBuf,
        listener: UnixListener,
    },
    Tcp {
        address: String,
        listener: TcpListener,
    },
}

impl Listener {
    fn name(&self) -> String {
        match self {
            Listener::Unix { path, .. } => path.display().to_string(),
            Listener::Tcp { address, .. } => address.clone(),
        }
    }
}

/// All configured listeners, bound. Binding happens before serving so that
/// a bad address fails startup instead of one server silently missing.
pub struct BoundServers {
    servers: Vec<(GrpcServerConfig, Vec<Listener>)>,
}

impl BoundServers {
    /// Binds every listener of every server. Stale socket files are removed.
    pub async fn bind(configs: &[GrpcServerConfig]) -> Result<Self, ServeError> {
        let mut servers = Vec::new();
        for config in configs {
            let mut listeners = Vec::new();
            for path in &config.listen_paths {
                remove_stale_socket(path)?;
                let listener =
                    UnixListener::bind(path).map_err(|source| ServeError::UnixSocket {
                        path: path.clone(),
                        source,
                    })?;
                listeners.push(Listener::Unix {
                    path: path.clone(),
                    listener,
                });
            }
            for address in &config.listen_addresses {
                let listener =
                    TcpListener::bind(address)
                        .await
                        .map_err(|source| ServeError::Tcp {
                            address: address.clone(),
                            source,
                        })?;
                let address = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| address.clone());
                listeners.push(Listener::Tcp { address, listener });
            }
            servers.push((config.clone(), listeners));
        }
        Ok(BoundServers { servers })
    }

    /// Names of all listeners (socket paths and TCP addresses).
    pub fn listener_names(&self) -> Vec<String> {
        self.servers
            .iter()
            .flat_map(|(_, listeners)| listeners.iter().map(Listener::name))
            .collect()
    }

    /// Serves `runner` and `events` on every listener until `shutdown`
    /// completes, then waits for in-flight calls (event streams included:
    /// they end when the events are closed) and removes the socket files.
    pub async fn serve(
        self,
        runner: SharedRunner,
        events: EventsServer<EventsService>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<RunnerServer<RunnerGrpcService>>()
            .await;
        let reflection_service = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|err| ServeError::Reflection(err.to_string()))?;

        let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut socket_paths = Vec::new();
        for (config, listeners) in self.servers {
            for listener in listeners {
                let mut runner_service = RunnerServer::new(RunnerGrpcService::new(runner.clone()));
                if let Some(limit) = config.maximum_received_message_size_bytes {
                    runner_service = runner_service.max_decoding_message_size(limit);
                }
                let router = tonic::transport::Server::builder()
                    .add_service(runner_service)
                    .add_service(events.clone())
                    .add_service(health_service.clone())
                    .add_service(reflection_service.clone());
                let name = listener.name();
                let mut stop = stop_receiver.clone();
                let stopped = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                // One serving future per listener; only the stream of
                // incoming connections differs between Unix and TCP.
                let serving: Pin<Box<dyn Future<Output = _> + Send>> = match listener {
                    Listener::Unix { path, listener } => {
                        socket_paths.push(path);
                        let incoming = UnixListenerStream::new(listener);
                        Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
                    }
                    Listener::Tcp { listener, .. } => {
                        let incoming = TcpListenerStream::new(listener);
                        Box::pin(router.serve_with_incoming_shutdown(incoming, stopped))
                    }
                };
                tasks.spawn(async move {
                    serving.await.map_err(|source| ServeError::Transport {
                        listener: name,
                        source,
                    })
                });
            }
        }

        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_sender.send(true);
        });
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::error!(%err, "gRPC server stopped with an error");
                    result = Err(err);
                }
                Err(err) => tracing::error!(%err, "gRPC server task failed"),
            }
        }
        for path in socket_paths {
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %err, "cannot remove socket file");
            }
        }
        result
    }
}

/// Removes a socket file left by a previous run. Anything that is not a
/// socket is left alone: that is an operator error, not staleness.
fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ServeError::UnixSocket {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(_) => Err(ServeError::NotASocket {
            path: path.to_path_buf(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServeError::UnixSocket {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_maps_to_its_code() {
        let cases = [
            (
                RunnerError::InvalidArgument("bad".into()),
                Code::InvalidArgument,
            ),
            (RunnerError::Internal("ours".into()), Code::Internal),
            (RunnerError::unavailable("retry"), Code::Unavailable),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = status_from_error(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn unavailable_details_travel_as_google_rpc_status() {
        let detail = prost_types::Any {
            type_url: "type.googleapis.com/example.Evidence".into(),
            value: vec![1, 2, 3],
        };
        let status = status_from_error(RunnerError::Unavailable {
            message: "node OOM".into(),
            details: vec![detail.clone()],
        });
        assert_eq!(status.code(), Code::Unavailable);
        let decoded = rpc::Status::decode(status.details()).unwrap();
        assert_eq!(decoded.code, Code::Unavailable as i32);
        assert_eq!(decoded.message, "node OOM");
        assert_eq!(decoded.details, vec![detail]);
    }

    #[test]
    fn stale_socket_is_removed_but_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        remove_stale_socket(&socket).unwrap();
        assert!(!socket.exists());
        let file = dir.path().join("precious");
        std::fs::write(&file, "data").unwrap();
        assert!(matches!(
            remove_stale_socket(&file),
            Err(ServeError::NotASocket { .. })
        ));
        assert!(file.exists());
    }

    #[test]
    fn grpc_timeouts_are_parsed_in_every_unit() {
        // Why it matters: the deadline tells a timed-out action from a
        // cancelled one; every client spells it its own way.
        for (text, expected) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("30S", Duration::from_secs(30)),
            ("500m", Duration::from_millis(500)),
            ("250u", Duration::from_micros(250)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            assert_eq!(parse_grpc_timeout(text), Some(expected), "{text}");
        }
        for bad in ["", "m", "100", "123456789S", "-1S", "1.5S", "10s", "10 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_call_deadline_counts_from_receipt() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        let now = Instant::now();
        assert_eq!(call_context(&metadata, now).deadline, None);
        metadata.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(
            call_context(&metadata, now).deadline,
            Some(now + Duration::from_millis(1500))
        );
    }
}
