//! Serving the runner: listeners, shutdown, and the one place where runner
//! errors become gRPC statuses.
//!
//! Each listener (Unix socket or TCP) of each `grpcServers` entry serves
//! `buildbarn.runner.Runner`, `rbe_runner.events.v1.Events`,
//! `rbe_runner.output.v1.Output`, gRPC health
//! and server reflection, through the connection handling of
//! [`crate::listener`], each call past the server's [`CallGate`]
//! (`authenticationPolicy`, `runAuthorizer`, `eventsAuthorizer`); TCP listeners together hold at most
//! [`TcpLimits::max_connections`] connections and close those with no call
//! for [`TcpLimits::idle_timeout`]. On shutdown the listeners stop
//! accepting, in-flight calls finish (the caller decides beforehand whether
//! actions are allowed to run to completion or are terminated) until the
//! [`ShutdownBound`] closes what is left, and socket files are removed if
//! they are still ours.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;

use prost::Message;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use crate::auth::gate::{Authenticating, CallGate, GateError};
use crate::auth::metadata::AuthenticationMetadata;
use crate::bounded::bounded_message;
use crate::checked_requests::CheckedRequests;
use crate::config::GrpcServerConfig;
use crate::events::service::EventsService;
use crate::fault::RunnerError;
use crate::listener::accept::ConnectionCap;
use crate::listener::deadline::{parse_grpc_timeout, DeadlineService};
use crate::listener::socket::{BoundSocket, SocketError, SocketFile};
use crate::listener::tls::{ServedCertificates, TlsError};
use crate::listener::{self, ConnectionSettings, Listener, TcpLimits};
use crate::metrics::{GrpcMetrics, GrpcMetricsService};
use crate::output::service::OutputService;
use crate::process::privileges::{self, CAP_SETUID};
use crate::proto::rbe_runner::events::v1::events_server::EventsServer;
use crate::proto::rbe_runner::output::v1::output_server::OutputServer;
use crate::proto::rpc;
use crate::proto::runner::runner_server::{Runner as RunnerService, RunnerServer};
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use crate::routes::RunnerFirst;
use crate::runner::{CallContext, SharedRunner};
use crate::shutdown::{Cut, ShutdownBound};
use crate::telemetry::message_attributes::MessageAttributes;
use crate::telemetry::{ServerSpan, Telemetry};
use crate::trace_context::CallTrace;

/// How long connections may take to close after a second signal cut the
/// wait on them: enough for answers already being written, not for a
/// stalled client.
const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Maps a runner error to its gRPC status. The only such mapping.
/// Messages are cut to [`crate::bounded::MAX_MESSAGE_BYTES`]: C-core
/// clients refuse long ones and report RESOURCE_EXHAUSTED instead.
pub fn status_from_error(error: RunnerError) -> Status {
    match error {
        RunnerError::InvalidArgument(message) => Status::invalid_argument(bounded_message(message)),
        RunnerError::Internal(message) => Status::internal(bounded_message(message)),
        RunnerError::DeadlineExceeded(message) => {
            Status::deadline_exceeded(bounded_message(message))
        }
        RunnerError::Cancelled(message) => Status::cancelled(bounded_message(message)),
        RunnerError::Unavailable { message, details } if details.is_empty() => {
            Status::unavailable(bounded_message(message))
        }
        RunnerError::Unavailable { message, details } => {
            let message = bounded_message(message);
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
/// the caller set (`grpc-timeout`), counted from `received`, and the
/// trace it belongs to.
fn call_context(
    metadata: &tonic::metadata::MetadataMap,
    received: Instant,
    trace: Option<CallTrace>,
) -> CallContext {
    let deadline = metadata
        .get("grpc-timeout")
        .and_then(|value| parse_grpc_timeout(value.as_bytes()))
        .and_then(|timeout| received.checked_add(timeout));
    CallContext { deadline, trace }
}

/// The service name server spans carry.
const RUNNER_SERVICE: &str = "buildbarn.runner.Runner";

/// Adapts a [`SharedRunner`] to the generated gRPC service; each call in
/// a server span of `telemetry`'s.
pub struct RunnerGrpcService {
    runner: SharedRunner,
    telemetry: Arc<Telemetry>,
    attributes: Arc<MessageAttributes>,
}

impl RunnerGrpcService {
    pub fn new(
        runner: SharedRunner,
        telemetry: Arc<Telemetry>,
        attributes: Arc<MessageAttributes>,
    ) -> Self {
        RunnerGrpcService {
            runner,
            telemetry,
            attributes,
        }
    }
}

/// Ends `span` with `result`'s status, and gives the result back.
fn finish_span<T>(span: ServerSpan, result: Result<T, Status>) -> Result<T, Status> {
    match &result {
        Ok(_) => span.finish(Code::Ok, ""),
        Err(status) => span.finish(status.code(), status.message()),
    }
    result
}

#[tonic::async_trait]
impl RunnerService for RunnerGrpcService {
    async fn check_readiness(
        &self,
        request: Request<CheckReadinessRequest>,
    ) -> Result<Response<()>, Status> {
        let mut span =
            self.telemetry
                .server_span(RUNNER_SERVICE, "CheckReadiness", request.metadata());
        span.add_authentication(request.extensions().get::<AuthenticationMetadata>());
        self.attributes
            .check_readiness_request(&mut span, request.get_ref());
        let result = self
            .runner
            .check_readiness(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status_from_error);
        finish_span(span, result)
    }

    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        let received = Instant::now();
        let mut span = self
            .telemetry
            .server_span(RUNNER_SERVICE, "Run", request.metadata());
        span.add_authentication(request.extensions().get::<AuthenticationMetadata>());
        self.attributes.run_request(&mut span, request.get_ref());
        let call = call_context(request.metadata(), received, span.trace());
        let result = self
            .runner
            .run(request.into_inner(), call)
            .await
            .map_err(status_from_error);
        if let Ok(response) = &result {
            self.attributes.run_response(&mut span, response);
        }
        finish_span(span, result.map(Response::new))
    }
}

/// Errors setting up listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    UnixSocket(#[from] SocketError),
    #[error("cannot listen on {address}: {source}")]
    Tcp { address: String, source: io::Error },
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    #[error(transparent)]
    Auth(#[from] GateError),
    #[error("grpcServers[{index}].tls: {source}")]
    Tls { index: usize, source: TlsError },
}

/// One bound listener of one server configuration.
enum Bound {
    Unix(BoundSocket),
    Tcp {
        address: String,
        listener: TcpListener,
    },
}

impl Bound {
    fn name(&self) -> String {
        match self {
            Bound::Unix(socket) => socket.path.display().to_string(),
            Bound::Tcp { address, .. } => address.clone(),
        }
    }
}

/// All configured listeners, bound. Binding happens before serving so that
/// a bad address fails startup instead of one server silently missing.
pub struct BoundServers {
    servers: Vec<(
        GrpcServerConfig,
        Arc<CallGate>,
        ConnectionSettings,
        Vec<Bound>,
    )>,
    /// go-grpc-prometheus's metrics of every call, when enabled.
    metrics: Option<Arc<GrpcMetrics>>,
    /// The server spans of unary calls.
    telemetry: Arc<Telemetry>,
}

impl BoundServers {
    /// Binds every listener of every server. Socket files get `socket_mode`
    /// (`listenPathMode`) when given; stale ones are replaced, live ones
    /// refused. TLS key pairs are loaded (a bad one stops startup) and
    /// their dates recorded in `served`.
    pub async fn bind(
        configs: &[GrpcServerConfig],
        socket_mode: Option<u32>,
        served: &ServedCertificates,
    ) -> Result<Self, ServeError> {
        let mut servers = Vec::new();
        for (index, config) in configs.iter().enumerate() {
            // authenticationPolicy and the authorizers, started (files read)
            // before anything is bound.
            let gate = CallGate::start(
                &config.authentication_policy,
                &config.authorizers,
                &format!("grpcServers[{index}]"),
            )?;
            if config.tls.is_none() && config.authentication_policy.uses_client_certificates() {
                // As in Buildbarn this is not an error (an `any` may have
                // other ways in), but that branch can never accept.
                tracing::warn!(
                    server = format!("grpcServers[{index}]"),
                    "tlsClientCertificate in authenticationPolicy, but no tls: no caller can present a client certificate"
                );
            }
            let tls = match &config.tls {
                // The CA names hinted at in the certificate request are
                // the authentication policy's (tlsClientCertificate);
                // none are hinted when it has none.
                Some(tls) => {
                    let hints = config
                        .authentication_policy
                        .client_certificate_authorities()
                        .iter()
                        .flat_map(|pem| listener::tls::hint_subjects_from_pem(pem.as_bytes()))
                        .collect();
                    Some(
                        listener::tls::acceptor(tls, &[b"h2"], hints, served)
                            .map_err(|source| ServeError::Tls { index, source })?,
                    )
                }
                None => None,
            };
            let settings = ConnectionSettings::new(config, tls);
            let mut listeners = Vec::new();
            for path in &config.listen_paths {
                let socket = BoundSocket::bind(path, socket_mode)?;
                if gate.lets_anyone_run() {
                    warn_if_open_to_others(&socket);
                }
                listeners.push(Bound::Unix(socket));
            }
            for address in &config.listen_addresses {
                let listener =
                    listener::bind_tcp(address)
                        .await
                        .map_err(|source| ServeError::Tcp {
                            address: address.clone(),
                            source,
                        })?;
                let address = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| address.clone());
                listeners.push(Bound::Tcp { address, listener });
            }
            servers.push((config.clone(), Arc::new(gate), settings, listeners));
        }
        Ok(BoundServers {
            servers,
            metrics: None,
            telemetry: Arc::new(Telemetry::off()),
        })
    }

    /// Starts a server span for every unary Runner call, with `telemetry`
    /// (`global.tracing`; without it the caller's trace is still passed on
    /// to logs and the journal).
    pub fn trace_calls(&mut self, telemetry: Arc<Telemetry>) {
        self.telemetry = telemetry;
    }

    /// Counts every call in `metrics` (one layer around each server's
    /// routes, outside the deadline handling, so it sees what clients get).
    pub fn count_calls(&mut self, metrics: Arc<GrpcMetrics>) {
        self.metrics = Some(metrics);
    }

    /// Names of all listeners (socket paths and TCP addresses).
    pub fn listener_names(&self) -> Vec<String> {
        self.servers
            .iter()
            .flat_map(|(_, _, _, listeners)| listeners.iter().map(Bound::name))
            .collect()
    }

    /// Serves `runner`, `events` and `output` on every listener until
    /// `shutdown` completes, then waits for in-flight calls (event streams
    /// included: they end when the events are closed; output streams end
    /// with their actions) until `bound` cuts the wait
    /// short, and removes the socket files that are still ours.
    pub async fn serve(
        self,
        runner: SharedRunner,
        events: EventsServer<EventsService>,
        output: OutputServer<OutputService>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        bound: &ShutdownBound,
    ) -> Result<(), ServeError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<RunnerServer<RunnerGrpcService>>()
            .await;
        // grpcServers[].healthCheckService: a name of the operator's
        // choosing, reported SERVING as bb-storage does (by every
        // listener: the health service is shared).
        for (config, _, _, _) in &self.servers {
            if !config.health_check_service.is_empty() {
                health_reporter
                    .set_service_status(
                        &config.health_check_service,
                        tonic_health::ServingStatus::Serving,
                    )
                    .await;
            }
        }
        let reflection_service = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|err| ServeError::Reflection(err.to_string()))?;

        // One cap for every TCP listener: together they hold at most
        // max_connections descriptors, whatever clients do.
        let tcp_limits = TcpLimits::default();
        let tcp_cap = ConnectionCap::new(
            tcp_limits.max_connections,
            self.metrics
                .as_ref()
                .map(|metrics| metrics.connections_rejected()),
        );
        let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut socket_files: Vec<SocketFile> = Vec::new();
        for (config, gate, settings, listeners) in self.servers {
            // grpcServers[].tracing: attributes from the first request and
            // response messages of the server's calls.
            let attributes = Arc::new(MessageAttributes::new(&config.tracing));
            let mut runner_service = RunnerServer::new(RunnerGrpcService::new(
                runner.clone(),
                self.telemetry.clone(),
                attributes,
            ));
            if let Some(limit) = config.maximum_received_message_size_bytes {
                runner_service = runner_service.max_decoding_message_size(limit);
            }
            // Health and reflection decode with their own codec, which
            // answers INTERNAL for what the client got wrong.
            let routes = Routes::new(events.clone())
                .add_service(output.clone())
                .add_service(CheckedRequests::<_, HealthCheckRequest>::new(
                    health_service.clone(),
                ))
                .add_service(CheckedRequests::<_, ServerReflectionRequest>::new(
                    reflection_service.clone(),
                ))
                .prepare();
            // Runner calls, one per action, skip the router (src/routes.rs).
            let routes = RunnerFirst::new(runner_service, routes);
            // Every call passes the server's gate (authentication, then the
            // authorizer of its service) inside the metrics, which count
            // its refusals by their code.
            let service = GrpcMetricsService::new(
                Authenticating::new(DeadlineService::new(routes), gate),
                self.metrics.clone(),
            );
            for bound in listeners {
                let name = bound.name();
                let listener = match bound {
                    Bound::Unix(socket) => {
                        socket_files.push(socket.remover());
                        let listener = tokio::net::UnixListener::from_std(socket.listener)
                            .map_err(|source| SocketError::Io {
                                path: socket.path.clone(),
                                what: "register with the runtime",
                                source,
                            })?;
                        Listener::Unix {
                            name,
                            listener,
                            settings: settings.clone(),
                        }
                    }
                    Bound::Tcp { listener, .. } => Listener::Tcp {
                        name,
                        listener,
                        cap: tcp_cap.clone(),
                        idle_timeout: tcp_limits.idle_timeout,
                        settings: settings.clone(),
                    },
                };
                tasks.spawn(listener::serve(
                    listener,
                    service.clone(),
                    stop_receiver.clone(),
                ));
            }
        }

        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_sender.send(true);
        });
        let all_closed = async |tasks: &mut tokio::task::JoinSet<_>| {
            while let Some(joined) = tasks.join_next().await {
                if let Err(err) = joined {
                    tracing::error!(%err, "listener task failed");
                }
            }
        };
        // A client that ignores the GOAWAY or stopped reading (a full
        // flow-control window) would hold its connection, and the runner,
        // forever: past the bound, every connection still open is dropped.
        if let Err(cut) = bound.bounded(all_closed(&mut tasks)).await {
            // After a second signal, answers already on their way (the
            // calls of the actions it terminated) get a moment to be
            // written; at the deadline nothing more is waited for.
            let answered = cut == Cut::Abandoned
                && tokio::time::timeout(ANSWER_GRACE, all_closed(&mut tasks))
                    .await
                    .is_ok();
            if !answered {
                tracing::warn!(%cut, "closing the connections of clients still connected");
                tasks.shutdown().await;
            }
        }
        for file in socket_files {
            file.remove_if_ours();
        }
        Ok(())
    }
}

/// Warns when any local user may connect to a socket of a runner that can
/// act as root: connecting is running commands as the runner.
fn warn_if_open_to_others(socket: &BoundSocket) {
    if socket.mode & 0o002 == 0 {
        return;
    }
    let can_act_as_root = nix::unistd::geteuid().is_root()
        || privileges::require(
            Path::new(crate::process::DEFAULT_PROC_ROOT),
            "listenPaths",
            &[CAP_SETUID],
        )
        .is_ok();
    if can_act_as_root {
        tracing::warn!(
            path = %socket.path.display(),
            mode = format!("{:04o}", socket.mode),
            "socket is writable by every local user, who can then run commands as this runner (which can act as root); set listenPathMode (e.g. '0660') or a umask"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn the_call_deadline_counts_from_receipt() {
        // Why it matters: the deadline tells a timed-out action from a
        // cancelled one.
        let mut metadata = tonic::metadata::MetadataMap::new();
        let now = Instant::now();
        assert_eq!(call_context(&metadata, now, None).deadline, None);
        metadata.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(
            call_context(&metadata, now, None).deadline,
            Some(now + Duration::from_millis(1500))
        );
        metadata.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(call_context(&metadata, now, None).deadline, None);
    }
}
