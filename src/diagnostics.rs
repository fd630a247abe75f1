//! The diagnostics HTTP server of `global.diagnosticsHttpServer`, as every
//! Buildbarn component serves it: `/metrics` (when `enablePrometheus`),
//! `/-/healthy` and `/-/ready`.
//!
//! It binds after the gRPC listeners and stops with them, on the same
//! runtime. `/-/ready` answers 200 exactly when CheckReadiness would
//! succeed: the runner is not shutting down, no action cgroup is dirty,
//! and every `readinessCheckingPathnames` path exists (checked at each
//! probe, as CheckReadiness does); otherwise 503 with the reason as the
//! body, so a Kubernetes readiness probe takes the pod out of service as
//! soon as shutdown starts.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::action::observer::RunnerStateReporter;
use crate::config::DiagnosticsHttpServerConfig;
use crate::listener;
use crate::metrics::{Metrics, TEXT_FORMAT};
use crate::runner::readiness;

/// An address of `httpServers[].listenAddresses` could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("diagnosticsHttpServer: cannot listen on {address}: {source}")]
pub struct BindError {
    pub address: String,
    pub source: io::Error,
}

/// What `/-/ready` checks.
pub struct Readiness {
    /// Whether the runner accepts work, and why not.
    pub state: Arc<RunnerStateReporter>,
    /// `readinessCheckingPathnames`.
    pub pathnames: Arc<Vec<PathBuf>>,
}

impl Readiness {
    /// `Ok` when CheckReadiness would succeed, else the reason.
    async fn check(&self) -> Result<(), String> {
        readiness::check_pathnames(self.pathnames.clone(), &self.state)
            .await
            .map_err(|err| err.to_string())?;
        match self.state.refusal() {
            None => Ok(()),
            Some(reason) => Err(reason),
        }
    }
}

/// The diagnostics server with its listeners bound.
pub struct DiagnosticsServer {
    listeners: Vec<(String, TcpListener)>,
    handler: Arc<Handler>,
}

struct Handler {
    metrics: Option<Arc<Metrics>>,
    readiness: Readiness,
}

impl DiagnosticsServer {
    /// Binds every listen address of `config`; the first that fails stops
    /// startup, naming it. `metrics` is served when given.
    pub async fn bind(
        config: &DiagnosticsHttpServerConfig,
        metrics: Option<Arc<Metrics>>,
        readiness: Readiness,
    ) -> Result<Self, BindError> {
        let mut listeners = Vec::new();
        for address in config
            .http_servers
            .iter()
            .flat_map(|server| server.listen_addresses.iter())
        {
            let listener = listener::bind_tcp(address)
                .await
                .map_err(|source| BindError {
                    address: address.clone(),
                    source,
                })?;
            let name = listener
                .local_addr()
                .map(|bound| bound.to_string())
                .unwrap_or_else(|_| address.clone());
            listeners.push((name, listener));
        }
        Ok(DiagnosticsServer {
            listeners,
            handler: Arc::new(Handler { metrics, readiness }),
        })
    }

    /// The bound addresses, for the startup log.
    pub fn addresses(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Serves until `stop` becomes true; then closes the listeners and
    /// every connection (scrapes and probes are short and retried).
    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (name, listener) in self.listeners {
            tasks.spawn(accept_loop(name, listener, self.handler.clone()));
        }
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(name: String, listener: TcpListener, handler: Arc<Handler>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors, most likely: the gRPC listeners back
                // off the same way; a probe retries.
                tracing::warn!(listener = name, %err, "diagnostics server cannot accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let handler = handler.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";

impl Handler {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
        }
        match (request.uri().path(), &self.metrics) {
            ("/-/healthy", _) => text(StatusCode::OK, PLAIN, "OK\n".into()),
            ("/-/ready", _) => match self.readiness.check().await {
                Ok(()) => text(StatusCode::OK, PLAIN, "OK\n".into()),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, reason + "\n"),
            },
            ("/metrics", Some(metrics)) => match metrics.encode() {
                Ok(exposition) => text(StatusCode::OK, TEXT_FORMAT, exposition),
                Err(err) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    format!("cannot encode metrics: {err}\n"),
                ),
            },
            _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
        }
    }
}
