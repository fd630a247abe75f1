//! Waiting for room in a socket that the event loop does not watch for
//! writing.
//!
//! An edge-triggered registration for writing wakes the event loop each
//! time the peer reads: every time a Unix socket's buffer drains, the
//! kernel reports it writable again. For the runner's two busiest sockets
//! that was a wake-up per action for nothing: bb_worker's connection
//! (the worker reads each answer) and the spawn server's (the server reads
//! each request). Both are nearly always writable, and a write that finds
//! them full is rare. So they are registered for reading only (or not at
//! all), every write is tried at once, and only a write that finds the
//! socket full registers a copy of its descriptor for writing, which
//! [`RoomToWrite`] holds until a write succeeds again.
//!
//! No wake-up is lost: epoll reports a descriptor's readiness at the
//! moment it is added, so room made between the failed write and the
//! registration is seen at once.

use std::future::poll_fn;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The registration for writing of a socket whose last write found it
/// full; empty otherwise.
#[derive(Debug, Default)]
pub struct RoomToWrite {
    waiting: Option<AsyncFd<OwnedFd>>,
}

impl RoomToWrite {
    /// Runs `write` (a non-blocking write to `socket`) until it does not
    /// find the socket full, waiting for room in between. While it waits,
    /// a copy of `socket`'s descriptor is registered for writing; once the
    /// write is done (or failed otherwise), that registration is dropped.
    pub fn poll_write<T>(
        &mut self,
        socket: BorrowedFd<'_>,
        cx: &mut Context<'_>,
        mut write: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        let waiting = match &self.waiting {
            Some(waiting) => waiting,
            None => match write() {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let copy = socket.try_clone_to_owned()?;
                    // SAFETY: the AsyncFd owns the copy, which stays open
                    // and the same until the registration is dropped.
                    let registered =
                        unsafe { AsyncFd::register_with_interest(copy, Interest::WRITABLE) }
                            .map_err(io::Error::from)?;
                    self.waiting.insert(registered)
                }
                done => return Poll::Ready(done),
            },
        };
        loop {
            let mut guard = ready!(waiting.poll_write_ready(cx))?;
            // A write that finds the socket full again clears the
            // readiness, so that the next poll waits for the kernel.
            let tried = guard.try_io(|_| write());
            drop(guard);
            if let Ok(done) = tried {
                self.waiting = None;
                return Poll::Ready(done);
            }
        }
    }

    /// [`Self::poll_write`] as a future.
    pub async fn write<T>(
        &mut self,
        socket: BorrowedFd<'_>,
        mut write: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        poll_fn(|cx| self.poll_write(socket, cx, &mut write)).await
    }

    /// Whether a write is waiting for room (the socket is registered for
    /// writing).
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// Fills `socket` without blocking; returns how many bytes it took.
    fn fill(socket: &mut UnixStream) -> usize {
        socket.set_nonblocking(true).unwrap();
        let chunk = [0u8; 65536];
        let mut total = 0;
        loop {
            match socket.write(&chunk) {
                Ok(written) => total += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return total,
                Err(error) => panic!("filling the socket: {error}"),
            }
        }
    }

    /// Why it matters: a writer that found the socket full must be woken
    /// when the peer reads, though the socket was never registered for
    /// writing before; otherwise an answer larger than the buffer would
    /// hang its call. Once written, the socket is no longer watched.
    #[tokio::test]
    async fn a_full_socket_wakes_its_writer_when_the_peer_reads() {
        let (mut writer, mut reader) = UnixStream::pair().unwrap();
        let filled = fill(&mut writer);
        let mut room = RoomToWrite::default();
        let writing = writer.try_clone().unwrap();
        let mut write = || (&writing).write(b"after");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(room
            .poll_write(writer.as_fd(), &mut cx, &mut write)
            .is_pending());
        assert!(room.is_waiting(), "registered for writing while full");
        let drain = std::thread::spawn(move || {
            let mut buffer = vec![0u8; filled + 5];
            reader.read_exact(&mut buffer).unwrap();
            buffer
        });
        let written = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            room.write(writer.as_fd(), &mut write),
        )
        .await
        .expect("woken once the peer read")
        .unwrap();
        assert_eq!(written, 5);
        assert!(!room.is_waiting(), "no longer watched for writing");
        assert!(drain.join().unwrap().ends_with(b"after"));
    }

    /// Why it matters: a write to a socket with room never registers it,
    /// which is the point: no registration, no wake-up when the peer
    /// reads.
    #[tokio::test]
    async fn a_socket_with_room_is_written_at_once_and_never_registered() {
        let (writer, mut reader) = UnixStream::pair().unwrap();
        let mut room = RoomToWrite::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let done = room.poll_write(writer.as_fd(), &mut cx, || (&writer).write(b"hello"));
        assert!(matches!(done, Poll::Ready(Ok(5))));
        assert!(!room.is_waiting());
        let mut buffer = [0u8; 5];
        reader.read_exact(&mut buffer).unwrap();
        assert_eq!(&buffer, b"hello");
    }

    /// Why it matters: an error other than a full socket is the caller's
    /// (a peer gone), returned as it is, not retried.
    #[tokio::test]
    async fn other_errors_are_returned_as_they_are() {
        let (writer, reader) = UnixStream::pair().unwrap();
        drop(reader);
        let mut room = RoomToWrite::default();
        let error = room
            .write(writer.as_fd(), || {
                nix::sys::socket::send(
                    std::os::fd::AsRawFd::as_raw_fd(&writer),
                    b"x",
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                )
                .map_err(io::Error::from)
            })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
