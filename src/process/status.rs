//! The status pipe: how a child tells whoever waits for its exec what
//! became of it, without making anyone else wait, and how the runner tells
//! the child (and the spawn server) that its call is over.
//!
//! Each child gets one end of a channel of its own, close-on-exec, as
//! musl's `posix_spawn` and Go's os/exec do with a pipe. The child writes its pid
//! first, then, if a step before exec fails, the step and its errno, and
//! exits. The channel reaches end of file when the last copy of the
//! child's end closes: the child's at exec (or exit), the creator's right
//! after creating it. So the reader learns the exec outcome from this one
//! child alone: no lock, no page shared between children, no creator
//! suspended until the exec (a program on a slow FUSE or NFS mount can
//! take seconds).
//!
//! It is a Unix `SOCK_SEQPACKET` pair rather than a pipe so that it also
//! carries word the other way: the reader cancels by shutting down its
//! sending side ([`StatusReader::cancel`]), which the writer sees as a
//! hang-up ([`StatusWriter::cancelled`]) without reading anything. The
//! spawn server checks that before creating a child, the child as its
//! last step before `execve`. The reader keeps reading after cancelling:
//! a child created meanwhile still says its pid.
//!
//! A creator in a process with other threads that create children must
//! not let another child inherit the write end, or the reader would wait
//! for that child's exec too: it holds [`super::clone::Creator`] from
//! making the pipe until it has closed its write end.
//!
//! Each message is [`MESSAGE_SIZE`] bytes, sent as one packet; the init of
//! an isolated action's PID namespace ([`super::init`]) adds three: the
//! action's pid, its exec (the end of file cannot say it: the init keeps
//! its end open), and its exit with its rusage, a longer packet.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::spec::SpawnStep;

/// The size of one message: its kind and two numbers.
const MESSAGE_SIZE: usize = 12;

const STARTED: u32 = 1;
const FAILED: u32 = 2;
const NOT_CREATED: u32 = 3;
const ACTION_STARTED: u32 = 4;
const EXECUTED: u32 = 5;
const EXITED: u32 = 6;

/// The size of an exit message: a message, then the action's rusage.
const EXIT_MESSAGE_SIZE: usize = MESSAGE_SIZE + std::mem::size_of::<libc::rusage>();

/// What a child, or whoever was asked to create it, reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The child exists: its first words, with its pid.
    Started(i32),
    /// A step before exec failed with this errno; the child exits.
    Failed(SpawnStep, i32),
    /// The child could not be created (the spawn server's answer).
    NotCreated(i32),
    /// The action under a PID namespace's init exists, with this pid as
    /// the runner sees it (the child that said [`Status::Started`] is its
    /// init).
    ActionStarted(i32),
    /// The action under an init has exec'd (or exited before).
    Executed,
    /// The action under an init has exited: its raw wait status and its
    /// own rusage, as the init's `wait4` returned them.
    Exited(ReportedExit),
}

/// An exit reported by an init, comparable for tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReportedExit(pub(crate) super::reaper::ChildExit);

impl PartialEq for ReportedExit {
    fn eq(&self, other: &Self) -> bool {
        self.0.status == other.0.status
            && rusage_bytes(&self.0.rusage) == rusage_bytes(&other.0.rusage)
    }
}

impl Eq for ReportedExit {}

/// The bytes of `rusage` (plain integers, no padding), as sent.
fn rusage_bytes(rusage: &libc::rusage) -> &[u8] {
    // SAFETY: `rusage` is a live value of plain integer fields; viewing it
    // as bytes reads nothing beyond it.
    unsafe {
        std::slice::from_raw_parts(
            (rusage as *const libc::rusage).cast::<u8>(),
            std::mem::size_of::<libc::rusage>(),
        )
    }
}

/// A new status channel: the reader's end (non-blocking, waited for in
/// the event loop), and the child's end (blocking). Needs a Tokio runtime.
pub(crate) fn pipe() -> io::Result<(StatusReader, OwnedFd)> {
    let mut ends = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into `ends`, a valid array
    // of two.
    let made = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            ends.as_mut_ptr(),
        )
    };
    if made != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nothing else.
    let read = unsafe { OwnedFd::from_raw_fd(ends[0]) };
    // SAFETY: as above.
    let write = unsafe { OwnedFd::from_raw_fd(ends[1]) };
    // SAFETY: F_SETFL on the reader's own end, only its flags change (the
    // child's end is another open file, and stays blocking).
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the AsyncFd owns the descriptor, which stays open and the
    // same until it is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(read, Interest::READABLE) }
        .map_err(io::Error::from)?;
    Ok((StatusReader { fd }, write))
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

    /// The first words of a child whose own pid is not what the runner
    /// sees (the init of a PID namespace is 1 to itself): `pid`.
    pub(crate) fn started_as(self, pid: i32) {
        self.write(STARTED, pid, 0);
    }

    /// The action under an init exists, as `pid` to the runner.
    pub(crate) fn action_started(self, pid: i32) {
        self.write(ACTION_STARTED, pid, 0);
    }

    /// The action under an init has exec'd.
    pub(crate) fn executed(self) {
        self.write(EXECUTED, 0, 0);
    }

    /// The action under an init has exited with the raw wait `status` and
    /// its own `rusage`. No allocation: the init calls it.
    pub(crate) fn exited(self, status: i32, rusage: &libc::rusage) {
        let mut message = [0u8; EXIT_MESSAGE_SIZE];
        message[0..4].copy_from_slice(&EXITED.to_le_bytes());
        message[4..8].copy_from_slice(&status.to_le_bytes());
        message[MESSAGE_SIZE..].copy_from_slice(rusage_bytes(rusage));
        // SAFETY: the kernel reads the live local array; the descriptor is
        // a number the kernel checks.
        unsafe {
            libc::send(
                self.0,
                message.as_ptr().cast(),
                message.len(),
                libc::MSG_NOSIGNAL,
            )
        };
    }

    /// The runner has cancelled this spawn (its call is over): it shut
    /// down its sending side, or closed its end. One raw `poll`, nothing
    /// allocated (the child calls it).
    pub(crate) fn cancelled(self) -> bool {
        let mut end = libc::pollfd {
            fd: self.0,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd, a valid local; a zero
        // timeout never waits.
        let ready = unsafe { libc::poll(&mut end, 1, 0) };
        ready > 0
            && end.revents & (libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    fn write(self, kind: u32, value: i32, errno: i32) {
        let mut message = [0u8; MESSAGE_SIZE];
        message[0..4].copy_from_slice(&kind.to_le_bytes());
        message[4..8].copy_from_slice(&value.to_le_bytes());
        message[8..12].copy_from_slice(&errno.to_le_bytes());
        // A reader that gave up has closed its end: the send fails (with
        // no SIGPIPE), and nothing is left to tell.
        // SAFETY: the kernel reads MESSAGE_SIZE bytes from a live local
        // array; the descriptor is a number the kernel checks.
        unsafe {
            libc::send(
                self.0,
                message.as_ptr().cast(),
                MESSAGE_SIZE,
                libc::MSG_NOSIGNAL,
            )
        };
    }
}

/// The reader's end: the messages in order, then the end of file.
#[derive(Debug)]
pub(crate) struct StatusReader {
    fd: AsyncFd<OwnedFd>,
}

impl StatusReader {
    /// The next message, or `None` at the end of file (every copy of the
    /// child's end is closed: the child has exec'd or exited, or was
    /// never created). Waits in the event loop, blocking no thread.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Status>> {
        let mut message = [0u8; EXIT_MESSAGE_SIZE];
        let read = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                // SAFETY: the kernel writes at most the array's length into
                // the live local `message`.
                let read = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        message.as_mut_ptr().cast(),
                        message.len(),
                        0,
                    )
                };
                if read < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(read as usize)
                }
            })
            .await?;
        Ok(match read {
            0 => None,
            // Each packet is one whole message; anything else is not ours.
            MESSAGE_SIZE => Some(decode(&message)),
            EXIT_MESSAGE_SIZE if kind(&message) == EXITED => Some(decode_exit(&message)),
            _ => Some(Status::NotCreated(libc::EPROTO)),
        })
    }

    /// Tells the child's end that the call is over: the spawn server then
    /// creates no child, and a child created already exits before its
    /// exec. Messages still arrive.
    pub(crate) fn cancel(&self) {
        // SAFETY: shutdown takes only a descriptor number of ours.
        unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_WR) };
    }
}

fn kind(message: &[u8]) -> u32 {
    u32::from_le_bytes([message[0], message[1], message[2], message[3]])
}

/// An [`EXITED`] message of [`EXIT_MESSAGE_SIZE`] bytes.
fn decode_exit(message: &[u8]) -> Status {
    let status = i32::from_le_bytes([message[4], message[5], message[6], message[7]]);
    // SAFETY: all-zero bytes are a valid rusage (plain integers).
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `rusage` is a live local of plain integers, exactly as many
    // bytes as follow the header; any bytes are valid for it.
    let target = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut rusage as *mut libc::rusage).cast::<u8>(),
            std::mem::size_of::<libc::rusage>(),
        )
    };
    target.copy_from_slice(&message[MESSAGE_SIZE..EXIT_MESSAGE_SIZE]);
    Status::Exited(ReportedExit(super::reaper::ChildExit { status, rusage }))
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
        ACTION_STARTED => Status::ActionStarted(value),
        EXECUTED => Status::Executed,
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
    #[tokio::test]
    async fn messages_arrive_in_order_then_the_end_of_file() {
        let (mut reader, writer) = pipe().unwrap();
        let status = StatusWriter(writer.as_raw_fd());
        status.started();
        status.failed(SpawnStep::Chroot, libc::EPERM);
        status.not_created(libc::EAGAIN);
        drop(writer);
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Status::Started(std::process::id() as i32))
        );
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Status::Failed(SpawnStep::Chroot, libc::EPERM))
        );
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Status::NotCreated(libc::EAGAIN))
        );
        assert_eq!(reader.next().await.unwrap(), None);
    }

    /// Why it matters: the spawn server and the child must see that the
    /// runner gave up on a spawn, while the runner still hears them.
    #[tokio::test]
    async fn a_cancel_reaches_the_writer_and_messages_still_arrive() {
        let (mut reader, writer) = pipe().unwrap();
        let status = StatusWriter(writer.as_raw_fd());
        assert!(!status.cancelled());
        reader.cancel();
        assert!(status.cancelled());
        status.failed(SpawnStep::Deadline, libc::ETIMEDOUT);
        drop(writer);
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Status::Failed(SpawnStep::Deadline, libc::ETIMEDOUT))
        );
        assert_eq!(reader.next().await.unwrap(), None);
        let (reader, writer) = pipe().unwrap();
        drop(reader);
        assert!(StatusWriter(writer.as_raw_fd()).cancelled());
    }

    /// Why it matters: the Run reports the action's own status and rusage,
    /// which only its init's wait4 sees, whole.
    #[tokio::test]
    async fn an_init_reports_the_action_its_exec_and_its_exit_with_rusage() {
        let (mut reader, writer) = pipe().unwrap();
        let status = StatusWriter(writer.as_raw_fd());
        status.started_as(4242);
        status.action_started(4243);
        status.executed();
        // SAFETY: all-zero bytes are a valid rusage.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        rusage.ru_maxrss = 1234;
        rusage.ru_utime.tv_usec = 56;
        status.exited(9, &rusage);
        drop(writer);
        assert_eq!(reader.next().await.unwrap(), Some(Status::Started(4242)));
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Status::ActionStarted(4243))
        );
        assert_eq!(reader.next().await.unwrap(), Some(Status::Executed));
        match reader.next().await.unwrap() {
            Some(Status::Exited(ReportedExit(exit))) => {
                assert_eq!(exit.signal(), Some(libc::SIGKILL));
                assert_eq!(exit.rusage.ru_maxrss, 1234);
                assert_eq!(exit.rusage.ru_utime.tv_usec, 56);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.next().await.unwrap(), None);
    }

    /// Why it matters: a child must never pass its status pipe on to the
    /// program it executes, or the reader would wait for that program.
    #[tokio::test]
    async fn both_ends_are_closed_on_exec() {
        let (reader, writer) = pipe().unwrap();
        for fd in [reader.fd.get_ref().as_raw_fd(), writer.as_raw_fd()] {
            // SAFETY: F_GETFD only reads the flags of a descriptor we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
    }
}
