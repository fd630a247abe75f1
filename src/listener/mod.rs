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
//! - [`handshake`]: a connection must send the HTTP/2 preface and SETTINGS
//!   within [`handshake::HANDSHAKE_TIMEOUT`] or is closed.
//! - [`idle`]: on TCP, a connection with no call for
//!   [`TcpLimits::idle_timeout`] is closed.
//! - [`authority`]: on Unix sockets, every request's `:authority` becomes
//!   `localhost`, so that C-core and Java clients are served.
//! - [`deadline`]: an expired `grpc-timeout` answers `DEADLINE_EXCEEDED`.
//! - [`peer`]: who the client is (Unix credentials, TCP address, TLS
//!   certificates), attached to each of its requests.
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
pub mod deadline;
pub mod handshake;
pub mod huffman;
pub mod idle;
pub mod keep_alive;
pub mod peer;
pub mod socket;

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tower::Service;

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

/// A listening socket, ready to accept.
pub enum Listener {
    Unix {
        name: String,
        listener: UnixListener,
    },
    Tcp {
        name: String,
        listener: TcpListener,
        /// Shared by every TCP listener.
        cap: ConnectionCap,
        /// A connection with no call for this long is closed.
        idle_timeout: Duration,
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

    fn idle_timeout(&self) -> Option<Duration> {
        match self {
            Listener::Unix { .. } => None,
            Listener::Tcp { idle_timeout, .. } => Some(*idle_timeout),
        }
    }
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
    let idle_timeout = listener.idle_timeout();
    let stopping = stop.clone();
    serve_connections(listener, admission, stopping, move |connection, slot| {
        serve_connection(
            connection,
            service.clone(),
            stop.clone(),
            idle_timeout,
            slot,
        )
    })
    .await
}

/// One connection: the handshake within its time limit, then HTTP/2 until
/// the client leaves, it has had no call for `idle_timeout` or, after
/// `stop`, its calls are done. Its `slot` is given back when it closes.
async fn serve_connection<S>(
    connection: Accepted,
    service: S,
    mut stop: watch::Receiver<bool>,
    idle_timeout: Option<Duration>,
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
    match connection {
        Accepted::Unix(mut stream) => {
            let service = WithPeer::new(service, ConnectionPeer::unix(&stream));
            let Some(prefix) = handshake(&mut stream, &mut stop).await else {
                return;
            };
            let stream = AuthorityRewriting::new(stream, &prefix);
            serve_http2(stream, service, stop, idle_timeout).await
        }
        Accepted::Tcp(mut stream) => {
            let service = WithPeer::new(service, ConnectionPeer::tcp(&stream));
            let Some(prefix) = handshake(&mut stream, &mut stop).await else {
                return;
            };
            serve_http2(Replay::new(stream, prefix), service, stop, idle_timeout).await
        }
    }
}

/// The bytes of the handshake, or `None` when the connection is to be
/// closed (timed out, failed, or the server is stopping).
async fn handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<u8>> {
    let read = tokio::select! {
        _ = stopped(stop) => return None,
        read = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_handshake(stream)) => read,
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

async fn serve_http2<I, S>(
    io: I,
    service: S,
    mut stop: watch::Receiver<bool>,
    idle_timeout: Option<Duration>,
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
        .max_header_list_size(MAX_HEADER_LIST_SIZE as u32);
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
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
    use tokio::time::Instant;

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
            Some(DEFAULT_TCP_IDLE_TIMEOUT),
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
            Some(DEFAULT_TCP_IDLE_TIMEOUT),
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
}
