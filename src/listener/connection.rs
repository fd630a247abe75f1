//! An accepted connection that wakes the event loop only for what the
//! client sends.
//!
//! Tokio's streams are registered for reading and writing, so each time
//! bb_worker read an answer, the kernel's report that the socket had room
//! again woke the runner's event loop: one wake-up per action for nothing,
//! measured as one of the runner's five per sequential action. This
//! connection is registered for reading only; writes are tried at once
//! and wait for room only when the socket is full, through
//! [`RoomToWrite`]. Unix and TCP connections alike.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::room_to_write::RoomToWrite;

/// An accepted connection (`S`: a std `UnixStream` or `TcpStream`),
/// watched by the event loop for reading only.
#[derive(Debug)]
pub struct Connection<S: AsRawFd> {
    socket: AsyncFd<S>,
    room: RoomToWrite,
}

/// What a socket of a [`Connection`] must do: read, write, and shut down
/// its writing side, through a shared reference (as std's sockets do).
pub trait Socket: AsFd + AsRawFd + Send + Unpin + 'static
where
    for<'a> &'a Self: Read + Write,
{
    /// Shuts down the writing side.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Socket for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Socket for TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Connection<UnixStream> {
    /// Takes over an accepted Unix stream: it leaves Tokio's registration
    /// for one for reading only.
    pub fn unix(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Connection::watching(stream.into_std()?)
    }
}

impl Connection<TcpStream> {
    /// Takes over an accepted TCP stream, as [`Connection::unix`].
    pub fn tcp(stream: tokio::net::TcpStream) -> io::Result<Self> {
        Connection::watching(stream.into_std()?)
    }
}

impl<S: Socket> Connection<S>
where
    for<'a> &'a S: Read + Write,
{
    /// Watches `socket` (non-blocking already) for reading only.
    fn watching(socket: S) -> io::Result<Self> {
        // SAFETY: the AsyncFd owns the socket, which stays open and the
        // same until it is dropped.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Connection {
            socket,
            room: RoomToWrite::default(),
        })
    }
}

impl<S: Socket> AsyncRead for Connection<S>
where
    for<'a> &'a S: Read + Write,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.socket.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|socket| socket.get_ref().read(unfilled)) {
                Ok(Ok(read)) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl<S: Socket> AsyncWrite for Connection<S>
where
    for<'a> &'a S: Read + Write,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let socket = this.socket.get_ref();
        this.room
            .poll_write(socket.as_fd(), cx, || (&*socket).write(data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let socket = this.socket.get_ref();
        this.room
            .poll_write(socket.as_fd(), cx, || (&*socket).write_vectored(data))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write goes straight to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown_write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair: ours, taken over, and the peer's plain end.
    fn pair() -> (Connection<UnixStream>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let ours = tokio::net::UnixStream::from_std(ours).unwrap();
        (Connection::unix(ours).unwrap(), theirs)
    }

    /// Why it matters: bb_worker's requests and the runner's answers go
    /// through this connection; bytes must arrive whole both ways, an
    /// answer larger than the socket's buffer included (it waits for room
    /// without ever having been registered for writing), and the end of
    /// the peer's stream must read as the end.
    #[tokio::test]
    async fn bytes_go_both_ways_including_more_than_the_buffer_holds() {
        let (mut ours, mut theirs) = pair();
        let peer = std::thread::spawn(move || {
            theirs.write_all(b"request").unwrap();
            let mut answer = vec![0u8; 4 << 20];
            theirs.read_exact(&mut answer).unwrap();
            theirs.shutdown(Shutdown::Write).unwrap();
            answer
        });
        let mut request = [0u8; 7];
        ours.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"request");
        let answer: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        tokio::time::timeout(std::time::Duration::from_secs(30), ours.write_all(&answer))
            .await
            .expect("the answer is written once the peer reads")
            .unwrap();
        assert_eq!(peer.join().unwrap(), answer);
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    /// Why it matters: TCP connections (remote workers, TLS) go through
    /// the same type; an answer larger than the socket's buffers must
    /// arrive whole there too.
    #[tokio::test]
    async fn a_tcp_connection_carries_more_than_its_buffers_hold() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut theirs = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut ours = Connection::tcp(tokio::net::TcpStream::from_std(ours).unwrap()).unwrap();
        let answer: Vec<u8> = (0..16u32 << 20).map(|i| (i % 253) as u8).collect();
        let length = answer.len();
        let peer = std::thread::spawn(move || {
            let mut received = vec![0u8; length];
            theirs.read_exact(&mut received).unwrap();
            received
        });
        tokio::time::timeout(std::time::Duration::from_secs(30), ours.write_all(&answer))
            .await
            .expect("the answer is written once the peer reads")
            .unwrap();
        assert_eq!(peer.join().unwrap(), answer);
    }

    /// The event masks with which the process's epoll instances watch
    /// the open socket `fd` (told apart from other tests' descriptors of
    /// the same number by its inode), from `/proc/self/fdinfo`; an epoll
    /// instance open twice (Tokio keeps a copy) counts once.
    fn watched_as(fd: i32) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let wanted = (fd.to_string(), format!("ino:{inode:x}"));
        let mut masks = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_epoll = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:[eventpoll]");
            if !is_epoll {
                continue;
            }
            let info_path = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
            let info = std::fs::read_to_string(info_path).unwrap_or_default();
            for line in info.lines() {
                // "tfd:        4 events:       19 data: 4  pos:0 ino:13a1424 sdev:9"
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() == Some(&"tfd:")
                    && words.get(1) == Some(&wanted.0.as_str())
                    && words.contains(&wanted.1.as_str())
                {
                    let mask = words
                        .get(3)
                        .and_then(|hex| u32::from_str_radix(hex, 16).ok());
                    masks.insert(words.get(5).map(|data| data.to_string()), mask.unwrap_or(0));
                }
            }
        }
        masks.into_values().collect()
    }

    /// Why it matters: the point of this type is that the event loop is not
    /// woken when the peer reads what the runner wrote. So the connection
    /// is watched for reading (and hang-ups) only, and after a write that
    /// found room nothing watches it for writing.
    #[tokio::test]
    async fn the_event_loop_watches_the_connection_for_reading_only() {
        let (mut ours, mut theirs) = pair();
        let fd = std::os::fd::AsRawFd::as_raw_fd(ours.socket.get_ref());
        ours.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        theirs.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"answer");
        let masks = watched_as(fd);
        assert_eq!(masks.len(), 1, "one registration: {masks:x?}");
        assert_ne!(masks[0] & libc::EPOLLIN as u32, 0, "{:x}", masks[0]);
        assert_eq!(masks[0] & libc::EPOLLOUT as u32, 0, "{:x}", masks[0]);
        assert!(!ours.room.is_waiting());
        // Tokio's own stream, for contrast: watched for writing too, which
        // is what this type is for.
        let (tokio_end, _peer) = tokio::net::UnixStream::pair().unwrap();
        let tokio_masks = watched_as(std::os::fd::AsRawFd::as_raw_fd(&tokio_end));
        assert!(tokio_masks
            .iter()
            .any(|mask| mask & libc::EPOLLOUT as u32 != 0));
    }
}
