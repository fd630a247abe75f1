//! Accepting connections and serving HTTP/2 on them.
//!
//! Between the listening socket and the HTTP/2 server sit the defences of
//! the runner's edge, each in its own file:
//! - [`socket`]: binding a Unix socket without taking over a live one and
//!   with exact permissions; removing only our own socket on exit.
//! - [`handshake`]: a connection must send the HTTP/2 preface and SETTINGS
//!   within [`handshake::HANDSHAKE_TIMEOUT`] or is closed.
//! - [`authority`]: on Unix sockets, every request's `:authority` becomes
//!   `localhost`, so that C-core and Java clients are served.
//! - [`deadline`]: an expired `grpc-timeout` answers `DEADLINE_EXCEEDED`.
//!
//! The accept loop backs off when the process runs out of descriptors
//! instead of retrying at once: a full descriptor table makes `accept` fail
//! immediately, over and over, for as long as a connection is queued.

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

pub mod authority;
pub mod deadline;
pub mod handshake;
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

use authority::{AuthorityRewriting, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE};
use handshake::{read_handshake, Replay, HANDSHAKE_TIMEOUT};

/// First pause after `accept` fails for lack of descriptors.
const EXHAUSTION_FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause: descriptors freed are noticed within this.
const EXHAUSTION_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listening socket, ready to accept.
pub enum Listener {
    Unix {
        name: String,
        listener: UnixListener,
    },
    Tcp {
        name: String,
        listener: TcpListener,
    },
}

enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Listener {
    pub fn name(&self) -> &str {
        match self {
            Listener::Unix { name, .. } | Listener::Tcp { name, .. } => name,
        }
    }

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

/// Whether an `accept` error means the process or system is out of
/// descriptors (or memory), which retrying at once cannot fix.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Backoff of one listener's accept loop: 10 ms doubling to 1 s while
/// `accept` keeps failing for lack of resources, one log line per episode.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failures in the current episode; 0 when accepting normally.
    failures: u64,
    delay: Duration,
}

impl AcceptBackoff {
    /// Records a failure; returns how long to pause and whether this
    /// failure starts an episode (and so is to be logged).
    fn failed(&mut self) -> (Duration, bool) {
        self.failures += 1;
        self.delay = if self.failures == 1 {
            EXHAUSTION_FIRST_BACKOFF
        } else {
            (self.delay * 2).min(EXHAUSTION_MAX_BACKOFF)
        };
        (self.delay, self.failures == 1)
    }

    /// Records a success; returns the failures of the episode it ends.
    fn succeeded(&mut self) -> u64 {
        std::mem::take(&mut self.failures)
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
pub async fn serve<S>(listener: Listener, service: S, mut stop: watch::Receiver<bool>)
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
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(connection) => {
                let failures = backoff.succeeded();
                if failures > 0 {
                    tracing::info!(
                        listener = listener.name(),
                        failures,
                        "accepting connections again"
                    );
                }
                connections.spawn(serve_connection(connection, service.clone(), stop.clone()));
            }
            Err(err) if is_resource_exhaustion(&err) => {
                let (delay, first) = backoff.failed();
                if first {
                    tracing::warn!(
                        listener = listener.name(),
                        %err,
                        "cannot accept connections: out of descriptors; retrying with backoff (up to 1 s) until some are freed"
                    );
                }
                tokio::select! {
                    _ = stopped(&mut stop) => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            // Per-connection failures (ECONNABORTED, ...): the next accept
            // is unaffected.
            Err(err) => tracing::debug!(listener = listener.name(), %err, "accept failed"),
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One connection: the handshake within its time limit, then HTTP/2 until
/// the client leaves or, after `stop`, its calls are done.
async fn serve_connection<S>(connection: Accepted, service: S, mut stop: watch::Receiver<bool>)
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
    match connection {
        Accepted::Unix(mut stream) => {
            let Some(prefix) = handshake(&mut stream, &mut stop).await else {
                return;
            };
            serve_http2(AuthorityRewriting::new(stream, &prefix), service, stop).await
        }
        Accepted::Tcp(mut stream) => {
            let Some(prefix) = handshake(&mut stream, &mut stop).await else {
                return;
            };
            serve_http2(Replay::new(stream, prefix), service, stop).await
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

async fn serve_http2<I, S>(io: I, service: S, mut stop: watch::Receiver<bool>)
where
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
    };
    if let Err(err) = result {
        tracing::debug!(%err, "connection ended with an error");
    }
}

/// Completes when the server is to stop (or its stop sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send; drop it here.
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn backoff_doubles_from_10ms_to_1s_and_logs_once_per_episode() {
        // Why: a full descriptor table must neither spin the accept loop
        // nor flood the log.
        let mut backoff = AcceptBackoff::default();
        let delays: Vec<(u128, bool)> = (0..10)
            .map(|_| {
                let (delay, log) = backoff.failed();
                (delay.as_millis(), log)
            })
            .collect();
        assert_eq!(
            delays,
            [
                (10, true),
                (20, false),
                (40, false),
                (80, false),
                (160, false),
                (320, false),
                (640, false),
                (1000, false),
                (1000, false),
                (1000, false)
            ]
        );
        assert_eq!(backoff.succeeded(), 10);
        assert_eq!(backoff.succeeded(), 0);
        assert_eq!(backoff.failed(), (EXHAUSTION_FIRST_BACKOFF, true));
    }

    #[test]
    fn only_resource_exhaustion_backs_off() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EINTR, libc::EPROTO] {
            assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
                errno
            )));
        }
    }
}
