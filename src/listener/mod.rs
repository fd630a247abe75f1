//! Accepting connections and serving HTTP/2 on them.
//!
//! Between the listening socket and the HTTP/2 server sit the defences of
//! the runner's edge, each in its own file:
//! - [`socket`]: binding a Unix socket without taking over a live one and
//!   with exact permissions; removing only our own socket on exit.
//! - [`accept`]: backing off when the process runs out of descriptors
//!   instead of retrying at once (a full descriptor table makes `accept`
//!   fail immediately, over and over, for as long as a connection is
//!   queued), and a cap on the connections a group of listeners holds.
//! - [`tls`]: with `tls`, the TLS handshake (client certificates
//!   requested, not required) and the server's key pair, reloaded from its
//!   files.
//! - [`handshake`]: a connection must complete the TLS handshake, if any,
//!   and send the HTTP/2 preface and SETTINGS within
//!   [`handshake::HANDSHAKE_TIMEOUT`] or is closed.
//! - [`idle`]: on TCP, a connection with no call for
//!   [`TcpLimits::idle_timeout`] (or `keepaliveParameters.maxConnectionIdle`,
//!   on any listener) is closed; `maxConnectionAge` and the server's PINGs
//!   (`time`, `timeout`) are applied around the HTTP/2 connection here.
//! - [`authority`]: on Unix sockets, every request's `:authority` becomes
//!   `localhost`, so that C-core and Java clients are served.
//! - [`deadline`]: an expired `grpc-timeout` answers `DEADLINE_EXCEEDED`.
//! - [`peer`]: who the client is (Unix credentials, TCP address, TLS
//!   certificates), attached to each of its requests.
//! - [`connection`]: an accepted connection, watched by the event loop for
//!   reading only, so that a client reading an answer does not wake it.
//! - [`keep_alive`]: the header-read and idle timeouts of the diagnostics
//!   server's HTTP/1 connections.
//!
//! TCP listeners are open to the network: all of them together hold at
//! most [`TcpLimits::max_connections`]. Unix sockets are guarded by their
//! permissions and have no cap: bb_worker keeps one connection there for
//! the runner's lifetime, idle or not.

/// Implements `AsyncWrite` for a wrapper that only changes what is read,
/// by passing every write to its `inner` stream.
macro_rules! write_through_to_inner {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

pub mod accept;
pub mod authority;
pub mod connection;
pub mod deadline;
pub mod handshake;
pub mod huffman;
pub mod idle;
pub mod keep_alive;
pub mod peer;
pub mod socket;
pub mod tls;

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use connection::Connection;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::config::{GrpcServerConfig, KeepaliveParameters, MINIMUM_WINDOW_SIZE_BYTES};

use accept::{serve_connections, Accept, Admission, ConnectionCap, Slot};
use authority::{AuthorityRewriting, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE};
use handshake::{read_handshake, Replay, HANDSHAKE_TIMEOUT};
use idle::{CountingCalls, OpenCalls};
use peer::{ConnectionPeer, WithPeer};

/// `grpcServers[].listenAddresses`: at most this many TCP connections at
/// once, over every TCP listener of the runner.
pub const DEFAULT_TCP_MAX_CONNECTIONS: usize = 256;
/// `grpcServers[].listenAddresses`: a TCP connection with no call open for
/// this long is closed. bb_worker's client reconnects on its next call.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a connection closed for idleness may take to acknowledge the
/// GOAWAY (a PING's round trip) before it is dropped; a call opened
/// meanwhile is served to its end.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// The bounds on the gRPC servers' TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Connections held at once over all TCP listeners; those beyond are
    /// closed as soon as they are accepted.
    pub max_connections: usize,
    /// A connection with no call open for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: DEFAULT_TCP_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        }
    }
}

/// How the connections of one `grpcServers` entry are served, past
/// accepting them.
#[derive(Clone, Default)]
pub struct ConnectionSettings {
    /// `tls`: the handshake every connection starts with.
    pub tls: Option<TlsAcceptor>,
    /// `keepaliveParameters`.
    pub keepalive: KeepaliveParameters,
    /// `initialWindowSizeBytes`, when grpc-go would apply it (64 KiB or
    /// more).
    pub initial_window_size_bytes: Option<u32>,
    /// `initialConnWindowSizeBytes`, likewise.
    pub initial_conn_window_size_bytes: Option<u32>,
}

impl ConnectionSettings {
    /// The settings of `config`'s listeners, with `tls` built from its
    /// `tls` field.
    pub fn new(config: &GrpcServerConfig, tls: Option<TlsAcceptor>) -> Self {
        let window = |size: Option<u32>| size.filter(|bytes| *bytes >= MINIMUM_WINDOW_SIZE_BYTES);
        ConnectionSettings {
            tls,
            keepalive: config.keepalive_parameters,
            initial_window_size_bytes: window(config.initial_window_size_bytes),
            initial_conn_window_size_bytes: window(config.initial_conn_window_size_bytes),
        }
    }
}

/// A listening socket, ready to accept.
pub enum Listener {
    Unix {
        name: String,
        listener: UnixListener,
        settings: ConnectionSettings,
    },
    Tcp {
        name: String,
        listener: TcpListener,
        /// Shared by every TCP listener.
        cap: ConnectionCap,
        /// A connection with no call for this long is closed, unless
        /// `keepaliveParameters.maxConnectionIdle` says otherwise.
        idle_timeout: Duration,
        settings: ConnectionSettings,
    },
}

/// A connection a [`Listener`] accepted.
pub(crate) enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Accept for Listener {
    type Connection = Accepted;

    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Unix { listener, .. } => listener
                .accept()
                .await
                .map(|(stream, _)| Accepted::Unix(stream)),
            Listener::Tcp { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                // Small unary calls: do not wait to fill a segment.
                let _ = stream.set_nodelay(true);
                Ok(Accepted::Tcp(stream))
            }
        }
    }
}

impl Listener {
    pub fn name(&self) -> &str {
        match self {
            Listener::Unix { name, .. } | Listener::Tcp { name, .. } => name,
        }
    }

    fn cap(&self) -> Option<ConnectionCap> {
        match self {
            Listener::Unix { .. } => None,
            Listener::Tcp { cap, .. } => Some(cap.clone()),
        }
    }

    /// What the connections of this listener are served with.
    fn connection_limits(&self) -> ConnectionLimits {
        let (settings, default_idle) = match self {
            Listener::Unix { settings, .. } => (settings, None),
            Listener::Tcp {
                settings,
                idle_timeout,
                ..
            } => (settings, Some(*idle_timeout)),
        };
        ConnectionLimits {
            tls: settings.tls.clone(),
            idle_timeout: settings.keepalive.max_connection_idle.or(default_idle),
            keepalive: settings.keepalive,
            initial_window_size_bytes: settings.initial_window_size_bytes,
            initial_conn_window_size_bytes: settings.initial_conn_window_size_bytes,
        }
    }
}

/// What one connection is served with.
#[derive(Clone, Default)]
struct ConnectionLimits {
    tls: Option<TlsAcceptor>,
    /// A connection with no call for this long gets a GOAWAY.
    idle_timeout: Option<Duration>,
    keepalive: KeepaliveParameters,
    initial_window_size_bytes: Option<u32>,
    initial_conn_window_size_bytes: Option<u32>,
}

/// Binds a TCP listen address as Buildbarn writes them: `host:port`, or
/// `:port` for every interface (Go's syntax), which binds the IPv6
/// wildcard (dual-stack on Linux) or, where IPv6 is unavailable, the IPv4
/// one. Numeric hosts need no name service; names are resolved by the C
/// library.
pub async fn bind_tcp(address: &str) -> io::Result<TcpListener> {
    let Some(port) = address.strip_prefix(':') else {
        return TcpListener::bind(address).await;
    };
    match TcpListener::bind(format!("[::]:{port}")).await {
        Ok(listener) => Ok(listener),
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            TcpListener::bind(format!("0.0.0.0:{port}")).await
        }
        Err(error) => Err(error),
    }
}

/// Serves `service` on every connection `listener` accepts until `stop`
/// becomes true; then stops accepting (closing the listening socket), lets
/// connections finish their calls (HTTP/2 graceful shutdown) and returns.
pub async fn serve<S>(listener: Listener, service: S, stop: watch::Receiver<bool>)
where
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let admission = Admission::new(listener.name(), listener.cap());
    let limits = listener.connection_limits();
    let stopping = stop.clone();
    serve_connections(listener, admission, stopping, move |connection, slot| {
        serve_connection(
            connection,
            service.clone(),
            stop.clone(),
            limits.clone(),
            slot,
        )
    })
    .await
}

/// One connection: the TLS and HTTP/2 handshakes within
/// [`HANDSHAKE_TIMEOUT`], then HTTP/2 until the client leaves, `limits`
/// end it or, after `stop`, its calls are done. Its `slot` is given back
/// when it closes.
async fn serve_connection<S>(
    connection: Accepted,
    service: S,
    stop: watch::Receiver<bool>,
    limits: ConnectionLimits,
    _slot: Slot,
) where
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    match connection {
        Accepted::Unix(stream) => {
            let peer = ConnectionPeer::unix(&stream);
            let transport = Transport::Unix;
            let stream = match Connection::unix(stream) {
                Ok(stream) => stream,
                Err(err) => return not_watched(&err),
            };
            serve_stream(stream, peer, transport, deadline, service, stop, limits).await
        }
        Accepted::Tcp(stream) => {
            let peer = ConnectionPeer::tcp(&stream);
            let transport = Transport::Tcp;
            let stream = match Connection::tcp(stream) {
                Ok(stream) => stream,
                Err(err) => return not_watched(&err),
            };
            serve_stream(stream, peer, transport, deadline, service, stop, limits).await
        }
    }
}

/// An accepted connection the event loop cannot watch is closed, saying
/// why (out of descriptors or memory).
fn not_watched(err: &io::Error) {
    tracing::warn!(%err, "cannot watch an accepted connection; closing it");
}

/// Which socket a stream came from: on a Unix socket, request authorities
/// are rewritten (see [`authority`]).
#[derive(Clone, Copy)]
enum Transport {
    Unix,
    Tcp,
}

/// The TLS handshake when the listener has TLS (the client's certificates
/// go into `peer`), then [`serve_decrypted`].
async fn serve_stream<IO, S>(
    stream: IO,
    mut peer: ConnectionPeer,
    transport: Transport,
    deadline: Instant,
    service: S,
    mut stop: watch::Receiver<bool>,
    limits: ConnectionLimits,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let Some(acceptor) = limits.tls.clone() else {
        return serve_decrypted(stream, peer, transport, deadline, service, stop, limits).await;
    };
    let accepted = tokio::select! {
        _ = stopped(&mut stop) => return,
        accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => accepted,
    };
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(%err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(timeout = ?HANDSHAKE_TIMEOUT, "closing a connection that did not complete the TLS handshake in time");
            return;
        }
    };
    peer.client_certificates = tls::client_certificates(&stream);
    serve_decrypted(stream, peer, transport, deadline, service, stop, limits).await
}

/// The HTTP/2 handshake by `deadline`, then HTTP/2 on `stream`.
async fn serve_decrypted<IO, S>(
    mut stream: IO,
    peer: ConnectionPeer,
    transport: Transport,
    deadline: Instant,
    service: S,
    mut stop: watch::Receiver<bool>,
    limits: ConnectionLimits,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let service = WithPeer::new(service, peer);
    let Some(prefix) = handshake(&mut stream, &mut stop, deadline).await else {
        return;
    };
    match transport {
        Transport::Unix => {
            let stream = AuthorityRewriting::new(stream, &prefix);
            serve_http2(stream, service, stop, limits).await
        }
        Transport::Tcp => serve_http2(Replay::new(stream, prefix), service, stop, limits).await,
    }
}

/// The bytes of the handshake, or `None` when the connection is to be
/// closed (timed out, failed, or the server is stopping).
async fn handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    stop: &mut watch::Receiver<bool>,
    deadline: Instant,
) -> Option<Vec<u8>> {
    let read = tokio::select! {
        _ = stopped(stop) => return None,
        read = tokio::time::timeout_at(deadline, read_handshake(stream)) => read,
    };
    match read {
        Ok(Ok(prefix)) => Some(prefix),
        Ok(Err(err)) => {
            tracing::debug!(%err, "connection closed during the HTTP/2 handshake");
            None
        }
        Err(_) => {
            tracing::debug!(
                timeout = ?HANDSHAKE_TIMEOUT,
                "closing a connection that did not send the HTTP/2 preface and SETTINGS in time"
            );
            None
        }
    }
}

/// grpc-go's jitter on `maxConnectionAge`: ±10%, so that connections made
/// together do not all reconnect together.
fn jittered(age: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    // 0.9 to 1.1 of the age, in 256 steps.
    age.mul_f64(0.9 + 0.2 * f64::from(byte[0]) / 255.0)
}

/// Completes `after` from now; never when `None`.
async fn sleep_for(after: Option<Duration>) {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}

async fn serve_http2<I, S>(
    io: I,
    service: S,
    mut stop: watch::Receiver<bool>,
    limits: ConnectionLimits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let calls = OpenCalls::default();
    let service = CountingCalls::new(service, calls.clone());
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_frame_size(MAX_FRAME_SIZE as u32)
        .max_header_list_size(MAX_HEADER_LIST_SIZE as u32)
        // keepaliveParameters.time and .timeout: with nothing received
        // for `time`, the server PINGs; no answer within `timeout` closes
        // the connection (grpc-go's server keepalive).
        .keep_alive_interval(limits.keepalive.ping_interval())
        .keep_alive_timeout(limits.keepalive.ping_timeout());
    if let Some(bytes) = limits.initial_window_size_bytes {
        builder.initial_stream_window_size(bytes);
    }
    if let Some(bytes) = limits.initial_conn_window_size_bytes {
        builder.initial_connection_window_size(bytes);
    }
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let idle_timeout = limits.idle_timeout;
    let max_age = limits.keepalive.max_connection_age.map(jittered);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        _ = calls.idle_for(idle_timeout) => {
            tracing::debug!(timeout = ?idle_timeout, "closing a connection with no call");
            // GOAWAY, then closed once the client acknowledged it (a PING
            // round trip) and any call it opened meanwhile is done. A
            // client that never answers is dropped after the grace.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = calls.idle_for(Some(IDLE_CLOSE_GRACE)) => Ok(()),
            }
        }
        _ = sleep_for(max_age) => {
            // keepaliveParameters.maxConnectionAge: GOAWAY; the calls open
            // get maxConnectionAgeGrace (no limit when unset) to finish.
            tracing::debug!(age = ?max_age, "closing a connection that reached its maximum age");
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = sleep_for(limits.keepalive.max_connection_age_grace) => Ok(()),
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "connection ended with an error");
    }
}

/// Completes when the server is to stop (or its stop sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send; drop it here.
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_port_alone_binds_every_interface() {
        // Why it matters: Buildbarn configurations write `:8991` for "all
        // interfaces", as Go does; it must bind, not fail a name lookup.
        let listener = bind_tcp(":0").await.unwrap();
        let local = listener.local_addr().unwrap();
        assert!(local.ip().is_unspecified(), "{local}");
        let reached = TcpStream::connect(("127.0.0.1", local.port())).await;
        assert!(reached.is_ok(), "{reached:?}");
        let specific = bind_tcp("127.0.0.1:0").await.unwrap();
        assert!(specific.local_addr().unwrap().ip().is_loopback());
    }

    /// A service that answers `/slow` once `release` is notified, and
    /// every other path at once.
    fn service(
        release: Arc<tokio::sync::Notify>,
    ) -> impl Service<
        http::Request<Incoming>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |request: http::Request<Incoming>| {
            let release = release.clone();
            async move {
                if request.uri().path() == "/slow" {
                    release.notified().await;
                }
                Ok(http::Response::new(tonic::body::Body::empty()))
            }
        })
    }

    fn idle_after(timeout: Duration) -> ConnectionLimits {
        ConnectionLimits {
            idle_timeout: Some(timeout),
            ..ConnectionLimits::default()
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::post(format!("http://runner{path}"))
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_tcp_connection_is_closed_after_the_idle_timeout_with_no_call_open() {
        // Why: TCP connections that finished the handshake and then sent
        // nothing (or a frame a byte at a time) used to be kept for good,
        // using up the runner's descriptors; but a call in flight, however
        // long (a Run, an event stream), must never be cut.
        let release = Arc::new(tokio::sync::Notify::new());
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(serve_http2(
            server,
            service(release.clone()),
            stopped,
            idle_after(DEFAULT_TCP_IDLE_TIMEOUT),
        ));
        let (mut sender, connection) = h2::client::handshake(client).await.unwrap();
        let connection = tokio::spawn(connection);

        let (slow, _) = sender.send_request(request("/slow"), true).unwrap();
        tokio::time::sleep(DEFAULT_TCP_IDLE_TIMEOUT * 3).await;
        assert!(!connection.is_finished(), "closed with a call in flight");
        release.notify_one();
        assert_eq!(slow.await.unwrap().status(), 200);

        let answered = Instant::now();
        let mut sender = sender.ready().await.unwrap();
        let (quick, _) = sender.send_request(request("/quick"), true).unwrap();
        assert_eq!(quick.await.unwrap().status(), 200);
        connection.await.unwrap().unwrap();
        assert!(answered.elapsed() >= DEFAULT_TCP_IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_ignores_the_goaway_is_dropped_after_the_grace() {
        // Why: an idle close waits for the client's answer to a PING; a
        // client that never answers must not keep its descriptor anyway.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (_stop, stopped) = watch::channel(false);
        let start = Instant::now();
        tokio::spawn(serve_http2(
            server,
            service(Arc::default()),
            stopped,
            idle_after(DEFAULT_TCP_IDLE_TIMEOUT),
        ));
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let mut sent = Vec::new();
        client.read_to_end(&mut sent).await.unwrap();
        assert!(start.elapsed() >= DEFAULT_TCP_IDLE_TIMEOUT + IDLE_CLOSE_GRACE);
    }

    /// Makes a CA, a server certificate for `runner.test` and a client
    /// certificate with the openssl command line in `dir`; `None` (the
    /// test skipped) without openssl.
    fn make_certificates(test: &str, dir: &std::path::Path) -> Option<()> {
        let script = "set -e
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -keyout ca.key -out ca.pem -days 2 -subj /CN=ca
            for name in server client; do
                openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                    -keyout $name.key -out $name.csr -subj /CN=$name
                printf 'subjectAltName=DNS:runner.test\n' > $name.ext
                openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -set_serial 7 \
                    -days 2 -extfile $name.ext -out $name.pem
            done";
        let made = crate::test_support::command_succeeds(
            std::process::Command::new("sh")
                .args(["-c", script])
                .current_dir(dir)
                .stderr(std::process::Stdio::null()),
        );
        if !made {
            crate::test_support::skip(test, "the openssl command cannot make certificates");
            return None;
        }
        Some(())
    }

    fn pem_certificates(path: &std::path::Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::pem_file_iter(path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A TLS configuration serving `make_certificates`'s server key pair.
    fn inline_server_key_pair(dir: &std::path::Path) -> crate::config::TlsServerConfig {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        crate::config::TlsServerConfig {
            server_key_pair: crate::config::KeyPairSource::Inline {
                certificate: read("server.pem"),
                private_key: read("server.key"),
            },
            cipher_suite_names: Vec::new(),
            tls12_cipher_suites: None,
        }
    }

    #[tokio::test]
    async fn the_client_certificate_of_the_tls_handshake_reaches_every_request() {
        // Why: the tlsClientCertificate policy decides per call from the
        // chain the client presented; it must be exactly that chain, and
        // a certificate the runner cannot verify (none is configured to)
        // must still complete the handshake.
        let test = "the_client_certificate_of_the_tls_handshake_reaches_every_request";
        let dir = tempfile::tempdir().unwrap();
        if make_certificates(test, dir.path()).is_none() {
            return;
        }
        let config = inline_server_key_pair(dir.path());
        let served = tls::ServedCertificates::default();
        let acceptor = tls::acceptor(&config, &[b"h2"], Vec::new(), &served).unwrap();
        let limits = ConnectionLimits {
            tls: Some(acceptor),
            ..ConnectionLimits::default()
        };
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let service = {
            let seen = seen.clone();
            tower::service_fn(move |request: http::Request<Incoming>| {
                let peer = request.extensions().get::<ConnectionPeer>().cloned();
                seen.lock().unwrap().push(peer);
                async { Ok(http::Response::new(tonic::body::Body::empty())) }
            })
        };
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_stop, stopped) = watch::channel(false);
        let peer = ConnectionPeer {
            transport: peer::PeerTransport::Tcp { address: None },
            client_certificates: Arc::from(Vec::new()),
        };
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        tokio::spawn(serve_stream(
            server,
            peer,
            Transport::Tcp,
            deadline,
            service,
            stopped,
            limits,
        ));

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(pem_certificates(&dir.path().join("ca.pem")).remove(0))
            .unwrap();
        let client_chain = pem_certificates(&dir.path().join("client.pem"));
        let client_key = {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::PrivateKeyDer::from_pem_file(dir.path().join("client.key")).unwrap()
        };
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(client_chain.clone(), client_key)
            .unwrap();
        client_config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let name = rustls_pki_types::ServerName::try_from("runner.test").unwrap();
        let tls_stream = connector.connect(name, client).await.unwrap();
        let (mut sender, connection) = h2::client::handshake(tls_stream).await.unwrap();
        tokio::spawn(connection);
        for _ in 0..2 {
            let (response, _) = sender.send_request(request("/any"), true).unwrap();
            assert_eq!(response.await.unwrap().status(), 200);
            sender = sender.ready().await.unwrap();
        }

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        for peer in seen.iter() {
            let peer = peer.as_ref().expect("every request carries its peer");
            let expected: Vec<Vec<u8>> = client_chain.iter().map(|der| der.to_vec()).collect();
            assert_eq!(&peer.client_certificates[..], &expected[..]);
        }
        assert_eq!(
            served.snapshot().len(),
            1,
            "the server certificate's dates are recorded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_handshake_bound_covers_the_tls_and_http2_handshakes_together() {
        // Why: a client that completes TLS and then never sends the HTTP/2
        // preface must not get the bound twice over.
        let test = "the_handshake_bound_covers_the_tls_and_http2_handshakes_together";
        let dir = tempfile::tempdir().unwrap();
        if make_certificates(test, dir.path()).is_none() {
            return;
        }
        let config = inline_server_key_pair(dir.path());
        let acceptor = tls::acceptor(&config, &[b"h2"], Vec::new(), &Default::default()).unwrap();
        let limits = ConnectionLimits {
            tls: Some(acceptor),
            ..ConnectionLimits::default()
        };
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_stop, stopped) = watch::channel(false);
        let peer = ConnectionPeer {
            transport: peer::PeerTransport::Tcp { address: None },
            client_certificates: Arc::from(Vec::new()),
        };
        let start = Instant::now();
        let serving = tokio::spawn(serve_stream(
            server,
            peer,
            Transport::Tcp,
            start + HANDSHAKE_TIMEOUT,
            service(Arc::default()),
            stopped,
            limits,
        ));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(pem_certificates(&dir.path().join("ca.pem")).remove(0))
            .unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let name = rustls_pki_types::ServerName::try_from("runner.test").unwrap();
        tokio::time::sleep(HANDSHAKE_TIMEOUT / 2).await;
        let _tls_stream = connector.connect(name, client).await.unwrap();
        serving.await.unwrap();
        assert_eq!(start.elapsed(), HANDSHAKE_TIMEOUT);
    }
}
