//! Who is at the other end of a connection: learned once when the
//! connection is accepted (and, with TLS, when its handshake completes),
//! then handed to every request on it as an `http::Extensions` entry, so
//! that authentication never goes back to the socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

/// The connection a request arrived on, as the authentication policies
/// see it. Requests built in-process (unit tests) carry none.
#[derive(Clone, Debug)]
pub struct ConnectionPeer {
    /// The transport and what it tells about the client.
    pub transport: PeerTransport,
    /// The certificates the client presented in the TLS handshake, leaf
    /// first, DER-encoded. Empty without TLS or when it sent none; nothing
    /// here has been verified.
    pub client_certificates: Arc<[Vec<u8>]>,
}

/// How a connection reached the runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTransport {
    /// A Unix socket; `credentials` is what `SO_PEERCRED` said when the
    /// connection was accepted, `None` if the kernel refused it.
    Unix {
        credentials: Option<PeerCredentials>,
    },
    /// A TCP connection from `address`.
    Tcp { address: Option<SocketAddr> },
}

/// The identity of the process that connected to a Unix socket, as of
/// its `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl ConnectionPeer {
    pub fn unix(stream: &tokio::net::UnixStream) -> Self {
        let credentials = match stream.peer_cred() {
            Ok(credentials) => Some(PeerCredentials {
                uid: credentials.uid(),
                gid: credentials.gid(),
                pid: credentials.pid(),
            }),
            Err(err) => {
                tracing::debug!(%err, "SO_PEERCRED refused on an accepted Unix connection");
                None
            }
        };
        ConnectionPeer {
            transport: PeerTransport::Unix { credentials },
            client_certificates: Arc::from(Vec::new()),
        }
    }

    pub fn tcp(stream: &tokio::net::TcpStream) -> Self {
        ConnectionPeer {
            transport: PeerTransport::Tcp {
                address: stream.peer_addr().ok(),
            },
            client_certificates: Arc::from(Vec::new()),
        }
    }
}

/// Adds the connection's [`ConnectionPeer`] to each request's extensions.
#[derive(Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: ConnectionPeer,
}

impl<S> WithPeer<S> {
    pub fn new(inner: S, peer: ConnectionPeer) -> Self {
        WithPeer { inner, peer }
    }
}

impl<S, B> Service<http::Request<B>> for WithPeer<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.peer.clone());
        self.inner.call(request)
    }
}
