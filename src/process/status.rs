//! The status pipe: how a child tells whoever waits for its exec what
//! became of it, without making anyone else wait.
//!
//! Each child gets the write end of a pipe of its own, close-on-exec, as
//! musl's `posix_spawn` and Go's os/exec do. The child writes its pid
//! first, then, if a step before exec fails, the step and its errno, and
//! exits. The pipe reaches end of file when its last write end closes:
//! the child's at exec (or exit), the creator's right after creating it.
//! So the reader learns the exec outcome from this one child alone: no
//! lock, no page shared between children, no creator suspended until the
//! exec (a program on a slow FUSE or NFS mount can take seconds).
//!
//! A creator in a process with other threads that create children must
//! not let another child inherit the write end, or the reader would wait
//! for that child's exec too: it holds [`super::clone::Creator`] from
//! making the pipe until it has closed its write end.
//!
//! Each message is [`MESSAGE_SIZE`] bytes, written with one `write`, which
//! a pipe keeps whole (below `PIPE_BUF`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::spec::SpawnStep;

/// The size of one message: its kind and two numbers.
const MESSAGE_SIZE: usize = 12;

const STARTED: u32 = 1;
const FAILED: u32 = 2;
const NOT_CREATED: u32 = 3;

/// What a child, or whoever was asked to create it, reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The child exists: its first words, with its pid.
    Started(i32),
    /// A step before exec failed with this errno; the child exits.
    Failed(SpawnStep, i32),
    /// The child could not be created (the spawn server's answer).
    NotCreated(i32),
}

/// A new status pipe: its read end, and its write end for the child.
pub(crate) fn pipe() -> io::Result<(StatusReader, OwnedFd)> {
    let mut ends = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `ends`, a valid array of
    // two.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nothing else.
    let read = unsafe { OwnedFd::from_raw_fd(ends[0]) };
    // SAFETY: as above.
    let write = unsafe { OwnedFd::from_raw_fd(ends[1]) };
    Ok((
        StatusReader {
            fd: read,
            buffer: [0; 4 * MESSAGE_SIZE],
            filled: 0,
        },
        write,
    ))
}

/// The write end as the child (or the spawn server) uses it: a bare
/// descriptor number, written with raw system calls, nothing allocated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StatusWriter(pub(crate) RawFd);

impl StatusWriter {
    /// The child's first words: its pid, read with a raw system call.
    pub(crate) fn started(self) {
        // SAFETY: getpid takes nothing and cannot fail.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) } as i32;
        self.write(STARTED, pid, 0);
    }

    /// `step` failed with `errno`; the child exits next.
    pub(crate) fn failed(self, step: SpawnStep, errno: i32) {
        self.write(FAILED, step as i32, errno);
    }

    /// The child could not be created (the spawn server's words).
    pub(crate) fn not_created(self, errno: i32) {
        self.write(NOT_CREATED, 0, errno);
    }

    fn write(self, kind: u32, value: i32, errno: i32) {
        let mut message = [0u8; MESSAGE_SIZE];
        message[0..4].copy_from_slice(&kind.to_le_bytes());
        message[4..8].copy_from_slice(&value.to_le_bytes());
        message[8..12].copy_from_slice(&errno.to_le_bytes());
        // A reader that gave up has closed its end: the write fails (its
        // SIGPIPE is blocked or ignored in every writer), and nothing is
        // left to tell.
        // SAFETY: the kernel reads MESSAGE_SIZE bytes from a live local
        // array; the descriptor is a number the kernel checks.
        unsafe { libc::write(self.0, message.as_ptr().cast(), MESSAGE_SIZE) };
    }
}

/// The read end: the messages in order, then the end of file.
#[derive(Debug)]
pub(crate) struct StatusReader {
    fd: OwnedFd,
    buffer: [u8; 4 * MESSAGE_SIZE],
    filled: usize,
}

impl StatusReader {
    /// The next message, or `None` at the end of file (every write end is
    /// closed: the child has exec'd or exited, or was never created).
    /// Blocking.
    pub(crate) fn next(&mut self) -> io::Result<Option<Status>> {
        loop {
            if self.filled >= MESSAGE_SIZE {
                let message = decode(&self.buffer[..MESSAGE_SIZE]);
                self.buffer.copy_within(MESSAGE_SIZE..self.filled, 0);
                self.filled -= MESSAGE_SIZE;
                return Ok(Some(message));
            }
            let free = &mut self.buffer[self.filled..];
            // SAFETY: the kernel writes at most `free.len()` bytes into the
            // live, exclusively borrowed `free`.
            let read =
                unsafe { libc::read(self.fd.as_raw_fd(), free.as_mut_ptr().cast(), free.len()) };
            match read {
                // A torn message cannot happen (each is one write); what
                // is left of one is dropped with the pipe.
                0 => return Ok(None),
                read if read > 0 => self.filled += read as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
    }
}

fn decode(message: &[u8]) -> Status {
    let number = |at: usize| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&message[at..at + 4]);
        bytes
    };
    let value = i32::from_le_bytes(number(4));
    let errno = i32::from_le_bytes(number(8));
    match u32::from_le_bytes(number(0)) {
        STARTED => Status::Started(value),
        FAILED => Status::Failed(SpawnStep::from_code(value as u8), errno),
        NOT_CREATED => Status::NotCreated(errno),
        // Only we write to this pipe: a kind of ours that this build does
        // not know says nothing about the child.
        _ => Status::NotCreated(libc::EPROTO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: the reader must see each message whole and in
    /// order, then the end of file once the writer is gone, however the
    /// bytes arrive.
    #[test]
    fn messages_arrive_in_order_then_the_end_of_file() {
        let (mut reader, writer) = pipe().unwrap();
        let status = StatusWriter(writer.as_raw_fd());
        status.started();
        status.failed(SpawnStep::Chroot, libc::EPERM);
        status.not_created(libc::EAGAIN);
        drop(writer);
        assert_eq!(
            reader.next().unwrap(),
            Some(Status::Started(std::process::id() as i32))
        );
        assert_eq!(
            reader.next().unwrap(),
            Some(Status::Failed(SpawnStep::Chroot, libc::EPERM))
        );
        assert_eq!(
            reader.next().unwrap(),
            Some(Status::NotCreated(libc::EAGAIN))
        );
        assert_eq!(reader.next().unwrap(), None);
    }

    /// Why it matters: a child must never pass its status pipe on to the
    /// program it executes, or the reader would wait for that program.
    #[test]
    fn both_ends_are_closed_on_exec() {
        let (reader, writer) = pipe().unwrap();
        for fd in [reader.fd.as_raw_fd(), writer.as_raw_fd()] {
            // SAFETY: F_GETFD only reads the flags of a descriptor we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
    }
}
