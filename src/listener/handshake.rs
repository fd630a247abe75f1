//! The first bytes of a connection: the client's HTTP/2 preface and its
//! first SETTINGS frame, read before the connection is handed to the HTTP/2
//! server, so that a client that never sends them can be closed after
//! [`HANDSHAKE_TIMEOUT`] instead of holding a descriptor (and a task)
//! forever. Past the handshake, a connection on a Unix socket is never
//! closed for idleness (bb_worker keeps one open for the runner's
//! lifetime); one over TCP is, after [`super::TcpLimits::idle_timeout`]
//! with no call (see [`super::idle`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::authority::{MAX_FRAME_SIZE, PREFACE};

/// How long a new connection may take to send its preface and SETTINGS.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const FRAME_HEADER_LEN: usize = 9;

/// How many bytes of the handshake are known to be due after `received`:
/// the preface, one frame header, then that frame's payload. A preface that
/// is not HTTP/2's, or a first frame too large to be SETTINGS, ends the
/// handshake early: the HTTP/2 server answers those with a protocol error.
fn handshake_length(received: &[u8]) -> usize {
    let header_end = PREFACE.len() + FRAME_HEADER_LEN;
    if received.len() < header_end {
        if !PREFACE.starts_with(&received[..received.len().min(PREFACE.len())]) {
            return received.len();
        }
        return header_end;
    }
    let header = &received[PREFACE.len()..header_end];
    let length =
        (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
    if length > MAX_FRAME_SIZE {
        return received.len();
    }
    header_end + length
}

/// Reads the preface and the first frame from `stream`, returning every
/// byte read. End of stream before that is an error.
pub async fn read_handshake<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut received = Vec::with_capacity(PREFACE.len() + FRAME_HEADER_LEN + 64);
    loop {
        let due = handshake_length(&received);
        if received.len() >= due {
            return Ok(received);
        }
        let start = received.len();
        received.resize(due, 0);
        let n = stream.read(&mut received[start..]).await?;
        received.truncate(start + n);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during the HTTP/2 handshake",
            ));
        }
    }
}

/// A stream whose first bytes, already read from it, are served again.
pub struct Replay<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Replay<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Replay {
            prefix: Bytes::from(prefix),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

write_through_to_inner!(Replay);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn settings_frame(payload_len: usize) -> Vec<u8> {
        let mut frame = vec![
            0,
            (payload_len >> 8) as u8,
            payload_len as u8,
            0x4,
            0,
            0,
            0,
            0,
            0,
        ];
        frame.resize(FRAME_HEADER_LEN + payload_len, 0);
        frame
    }

    #[tokio::test]
    async fn the_handshake_is_the_preface_and_the_whole_first_frame() {
        // Why: the connection is handed on exactly when the client has
        // proven to speak HTTP/2, with nothing of later frames swallowed.
        let mut sent = PREFACE.to_vec();
        sent.extend(settings_frame(12));
        sent.extend_from_slice(b"later frames");
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&sent).await.unwrap();
        let handshake = read_handshake(&mut server).await.unwrap();
        assert_eq!(handshake.len(), PREFACE.len() + FRAME_HEADER_LEN + 12);
        let mut replay = Replay::new(server, handshake);
        drop(client);
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, sent);
    }

    #[tokio::test]
    async fn a_client_that_is_not_http2_is_handed_on_at_once() {
        // Why: the HTTP/2 server answers a bad preface with an error the
        // client can read; waiting for more would only delay that.
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let handshake = read_handshake(&mut server).await.unwrap();
        assert!(handshake.starts_with(b"GET"));
        assert!(handshake.len() <= 16);
    }

    #[tokio::test]
    async fn end_of_stream_during_the_handshake_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&PREFACE[..10]).await.unwrap();
        drop(client);
        let err = read_handshake(&mut server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
