//! The diagnostics HTTP server of `global.diagnosticsHttpServer`, as every
//! Buildbarn component serves it: `/metrics` (when `enablePrometheus`),
//! `/active_spans` (when `enableActiveSpans`: the running actions'
//! spans, with or without `global.tracing`), `/-/healthy` and `/-/ready`.
//!
//! It binds after the gRPC listeners and stops with them, on the same
//! runtime. `/-/ready` answers 200 exactly when CheckReadiness would
//! succeed: the runner is not shutting down, no action cgroup is dirty,
//! and every `readinessCheckingPathnames` path exists (checked at each
//! probe, as CheckReadiness does); otherwise 503 with the reason as the
//! body, so a Kubernetes readiness probe takes the pod out of service as
//! soon as shutdown starts.
//!
//! Its port may be reachable from the network (Kubernetes scrapes it), so
//! no client may hold it, or the runner's descriptors, for long: a request
//! head must arrive within [`DEFAULT_HEADER_READ_TIMEOUT`], a kept-alive
//! connection waits at most [`DEFAULT_IDLE_TIMEOUT`] for its next request
//! (and an answer takes at most that long), and at most
//! [`DEFAULT_MAX_CONNECTIONS`] are open at once over all its addresses
//! (beyond, new ones are closed at once and counted in
//! `rbe_runner_diagnostics_connections_rejected_total`). Out of
//! descriptors, accepting backs off as the gRPC listeners do. At shutdown
//! the listeners close, idle connections close, and requests in flight are
//! answered first, each within those same timeouts but never past the
//! shutdown deadline ([`ShutdownBound`]): a client that stopped reading
//! an answer is cut off there, like the gRPC servers' clients.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::action::observer::RunnerStateReporter;
use crate::config::DiagnosticsHttpServerConfig;
use crate::listener::accept::{serve_connections, Admission, ConnectionCap, Slot};
use crate::listener::idle::Holding;
use crate::listener::keep_alive::{ConnectionClock, KeepAliveTimeouts};
use crate::listener::tls::{ServedCertificates, TlsError};
use crate::listener::{self, stopped};
use crate::metrics::{Metrics, TEXT_FORMAT};
use crate::runner::readiness;
use crate::shutdown::ShutdownBound;
use crate::telemetry::active_spans::ActiveSpans;

/// How long a client may take to send a request head: from accepting the
/// connection for the first request, from its first byte for later ones.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a kept-alive connection may wait for its next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections open at once, over all listen addresses.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The bounds on the diagnostics server's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagnosticsLimits {
    /// The header-read and idle timeouts of every connection.
    pub timeouts: KeepAliveTimeouts,
    /// Connections open at once; those beyond are closed as soon as they
    /// are accepted.
    pub max_connections: usize,
}

impl Default for DiagnosticsLimits {
    fn default() -> Self {
        DiagnosticsLimits {
            timeouts: KeepAliveTimeouts {
                header_read: DEFAULT_HEADER_READ_TIMEOUT,
                idle: DEFAULT_IDLE_TIMEOUT,
            },
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// An address of `httpServers[].listenAddresses` could not be bound, or
/// the `tls` of an entry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("diagnosticsHttpServer: cannot listen on {address}: {source}")]
    Listen { address: String, source: io::Error },
    #[error("diagnosticsHttpServer.httpServers[{index}].tls: {source}")]
    Tls { index: usize, source: TlsError },
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
    /// Each address, with the TLS of its `httpServers` entry.
    listeners: Vec<(String, TcpListener, Option<TlsAcceptor>)>,
    handler: Arc<Handler>,
    limits: DiagnosticsLimits,
}

struct Handler {
    metrics: Option<Arc<Metrics>>,
    readiness: Readiness,
    active_spans: Option<Arc<ActiveSpans>>,
}

impl DiagnosticsServer {
    /// Binds every listen address of `config`; the first that fails stops
    /// startup, naming it. `metrics` and `active_spans` are served when
    /// given. The key pairs of `tls` entries are loaded, their dates
    /// recorded in `served`.
    pub async fn bind(
        config: &DiagnosticsHttpServerConfig,
        metrics: Option<Arc<Metrics>>,
        active_spans: Option<Arc<ActiveSpans>>,
        readiness: Readiness,
        served: &ServedCertificates,
    ) -> Result<Self, BindError> {
        let mut listeners = Vec::new();
        for (index, server) in config.http_servers.iter().enumerate() {
            let tls = match &server.tls {
                Some(tls) => Some(
                    listener::tls::acceptor(tls, &[b"http/1.1"], Vec::new(), served)
                        .map_err(|source| BindError::Tls { index, source })?,
                ),
                None => None,
            };
            for address in &server.listen_addresses {
                let listener =
                    listener::bind_tcp(address)
                        .await
                        .map_err(|source| BindError::Listen {
                            address: address.clone(),
                            source,
                        })?;
                let name = listener
                    .local_addr()
                    .map(|bound| bound.to_string())
                    .unwrap_or_else(|_| address.clone());
                listeners.push((name, listener, tls.clone()));
            }
        }
        Ok(DiagnosticsServer {
            listeners,
            handler: Arc::new(Handler {
                metrics,
                readiness,
                active_spans,
            }),
            limits: DiagnosticsLimits::default(),
        })
    }

    /// Other bounds than the defaults (tests use short ones).
    pub fn with_limits(mut self, limits: DiagnosticsLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound addresses, for the startup log.
    pub fn addresses(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|(name, _, _)| name.clone())
            .collect()
    }

    /// Serves until `stop` becomes true; then closes the listeners and
    /// the idle connections, and answers the requests in flight before
    /// returning, or closes their connections when `bound` cuts the wait.
    pub async fn serve(self, stop: watch::Receiver<bool>, bound: ShutdownBound) {
        let rejected = self
            .handler
            .metrics
            .as_ref()
            .map(|metrics| metrics.diagnostics_connections_rejected.clone());
        let cap = ConnectionCap::new(self.limits.max_connections, rejected);
        let timeouts = self.limits.timeouts;
        let mut tasks = tokio::task::JoinSet::new();
        for (name, listener, tls) in self.listeners {
            let admission = Admission::new(name, Some(cap.clone()));
            let (handler, stopping) = (self.handler.clone(), stop.clone());
            let stop = stop.clone();
            tasks.spawn(serve_connections(
                listener,
                admission,
                stopping,
                move |stream, slot| {
                    let (handler, stop, tls) = (handler.clone(), stop.clone(), tls.clone());
                    async move {
                        match tls {
                            None => serve_connection(stream, handler, timeouts, stop, slot).await,
                            Some(tls) => {
                                serve_tls_connection(stream, tls, handler, timeouts, stop, slot)
                                    .await
                            }
                        }
                    }
                },
            ));
        }
        // Serving is not bounded; only the wait after `stop` is.
        stopped(&mut stop.clone()).await;
        let all_closed = async { while tasks.join_next().await.is_some() {} };
        if let Err(cut) = bound.bounded(all_closed).await {
            tracing::warn!(%cut, "closing the diagnostics connections still open");
            // Aborting a listener's task drops its connections' tasks.
            tasks.shutdown().await;
        }
    }
}

/// One HTTP/1 connection, until the client closes it, a timeout of
/// `timeouts` passes or, once `stop` is true, its request in flight is
/// answered. Its `slot` is given back when it closes.
async fn serve_connection<S>(
    stream: S,
    handler: Arc<Handler>,
    timeouts: KeepAliveTimeouts,
    mut stop: watch::Receiver<bool>,
    _slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = ConnectionClock::accepted(timeouts);
    let service = {
        let clock = clock.clone();
        hyper::service::service_fn(move |request| {
            let (handler, answering) = (handler.clone(), clock.answering());
            async move {
                let response = handler.handle(request).await;
                Ok::<_, Infallible>(response.map(|body| Holding::new(body, answering)))
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(clock.reads(stream)), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            expired = clock.expired() => {
                tracing::debug!(?expired, "closing a diagnostics connection that timed out");
                return;
            }
            // Closes the connection once idle, after any request in flight.
            _ = stopped(&mut stop), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// An HTTPS connection: the TLS handshake within the header-read
/// timeout, then [`serve_connection`].
async fn serve_tls_connection(
    stream: tokio::net::TcpStream,
    tls: TlsAcceptor,
    handler: Arc<Handler>,
    timeouts: KeepAliveTimeouts,
    stop: watch::Receiver<bool>,
    slot: Slot,
) {
    match tokio::time::timeout(timeouts.header_read, tls.accept(stream)).await {
        Ok(Ok(stream)) => serve_connection(stream, handler, timeouts, stop, slot).await,
        Ok(Err(err)) => tracing::debug!(%err, "diagnostics: TLS handshake failed"),
        Err(_) => tracing::debug!("diagnostics: TLS handshake not completed in time"),
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
const HTML: &str = "text/html; charset=utf-8";

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
            ("/active_spans", _) => match &self.active_spans {
                Some(spans) => text(StatusCode::OK, HTML, spans.render_html()),
                None => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
            },
            _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::observer::Observers;
    use crate::config::HttpServerConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    const HEALTHY: &[u8] = b"GET /-/healthy HTTP/1.1\r\nHost: runner\r\n\r\n";

    fn handler() -> Arc<Handler> {
        let state = RunnerStateReporter::new(Arc::new(Observers::new(vec![])));
        Arc::new(Handler {
            metrics: None,
            readiness: Readiness {
                state: Arc::new(state),
                pathnames: Arc::new(Vec::new()),
            },
            active_spans: None,
        })
    }

    /// The client end of a connection served with the default limits,
    /// through a buffer of `buffer` bytes, and the sender that stops it.
    fn connect(buffer: usize) -> (DuplexStream, watch::Sender<bool>) {
        let (client, server) = tokio::io::duplex(buffer);
        let (stop, stopped) = watch::channel(false);
        let timeouts = DiagnosticsLimits::default().timeouts;
        tokio::spawn(serve_connection(
            server,
            handler(),
            timeouts,
            stopped,
            Slot::uncapped(),
        ));
        (client, stop)
    }

    /// Reads one whole `/-/healthy` answer.
    async fn read_answer(client: &mut (impl AsyncRead + Unpin)) {
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nOK\n") {
            let mut byte = [0];
            assert_eq!(client.read(&mut byte).await.unwrap(), 1, "{answer:?}");
            answer.push(byte[0]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200 OK"), "{answer:?}");
    }

    /// Waits until the server closes the connection; returns what it sent
    /// until then.
    async fn read_to_close(client: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        rest
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_closed_at_the_header_read_timeout() {
        // Why: 1,100 such connections used to take every descriptor of the
        // runner, so that its Runs failed.
        let (mut client, _stop) = connect(4096);
        let start = Instant::now();
        assert!(read_to_close(&mut client).await.is_empty());
        assert!(start.elapsed() >= DEFAULT_HEADER_READ_TIMEOUT);
        assert!(start.elapsed() < DEFAULT_IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_sent_a_byte_a_second_is_closed_at_the_header_read_timeout() {
        // Why: slowloris clients (a byte every few seconds) used to be
        // kept for good.
        let (client, _stop) = connect(4096);
        let (mut reader, mut writer) = tokio::io::split(client);
        let start = Instant::now();
        let closed = read_to_close(&mut reader);
        tokio::pin!(closed);
        let endless_head = b"GET /-/healthy HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'));
        for byte in endless_head {
            writer.write_all(&[*byte]).await.unwrap();
            tokio::select! {
                rest = closed.as_mut() => {
                    assert!(rest.is_empty(), "{rest:?}");
                    break;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        assert!(start.elapsed() < DEFAULT_IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_waits_the_idle_timeout_for_its_next_request() {
        // Why: Prometheus scrapes every 15 to 60 s over one kept-alive
        // connection; the header-read timeout must not cut it between
        // scrapes, and the idle timeout must end it when scrapes stop.
        let (mut client, _stop) = connect(4096);
        client.write_all(HEALTHY).await.unwrap();
        read_answer(&mut client).await;
        tokio::time::sleep(DEFAULT_HEADER_READ_TIMEOUT * 3).await;
        client.write_all(HEALTHY).await.unwrap();
        read_answer(&mut client).await;
        let answered = Instant::now();
        assert!(read_to_close(&mut client).await.is_empty());
        assert!(answered.elapsed() >= DEFAULT_IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_an_answer_in_flight_is_finished_and_idle_connections_close() {
        // Why: stopping used to abort every connection, cutting a scrape
        // half-written; one kept alive must not hold the stop up.
        let (mut scraping, stop) = connect(8);
        scraping.write_all(HEALTHY).await.unwrap();
        let mut first = [0];
        scraping.read_exact(&mut first).await.unwrap();
        let (mut idle, stop_idle) = connect(4096);
        idle.write_all(HEALTHY).await.unwrap();
        read_answer(&mut idle).await;

        let stopping = Instant::now();
        stop.send(true).unwrap();
        stop_idle.send(true).unwrap();
        let rest = read_to_close(&mut scraping).await;
        let answer = [&first[..], &rest].concat();
        assert!(answer.starts_with(b"HTTP/1.1 200 OK"), "{answer:?}");
        assert!(answer.ends_with(b"\r\n\r\nOK\n"), "{answer:?}");
        assert!(read_to_close(&mut idle).await.is_empty());
        assert_eq!(stopping.elapsed(), Duration::ZERO, "no timeout waited for");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once_and_the_others_served() {
        // Why: without a cap, clients of the diagnostics port could use up
        // the descriptors the runner's actions need.
        let config = DiagnosticsHttpServerConfig {
            http_servers: vec![HttpServerConfig {
                listen_addresses: vec!["127.0.0.1:0".into()],
                tls: None,
            }],
            enable_prometheus: false,
            enable_pprof: false,
            enable_active_spans: false,
        };
        let readiness = Readiness {
            state: handler().readiness.state.clone(),
            pathnames: Arc::new(Vec::new()),
        };
        let hour = Duration::from_secs(3600);
        let server = DiagnosticsServer::bind(&config, None, None, readiness, &Default::default())
            .await
            .unwrap()
            .with_limits(DiagnosticsLimits {
                timeouts: KeepAliveTimeouts {
                    header_read: hour,
                    idle: hour,
                },
                max_connections: 2,
            });
        let address = server.addresses().remove(0);
        let (stop, stopped) = watch::channel(false);
        let serving = tokio::spawn(server.serve(stopped, ShutdownBound::new(hour)));

        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(tokio::net::TcpStream::connect(&address).await.unwrap());
        }
        let mut beyond = tokio::net::TcpStream::connect(&address).await.unwrap();
        assert!(read_to_close(&mut beyond).await.is_empty());
        for connection in &mut held {
            connection.write_all(HEALTHY).await.unwrap();
            read_answer(connection).await;
        }

        stop.send(true).unwrap();
        serving.await.unwrap();
    }
}
