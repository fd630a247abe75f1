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
//! Each message is [`MESSAGE_SIZE`] bytes, sent as one packet; the
//! init of an isolated PID namespace ([`super::init`]) adds one, its
//! action's pid as the runner sees it. The init closes its end once the
//! action has exec'd, so the end of file is the action's exec there too;
//! the action's exit comes through a pipe of its own
//! ([`super::exit_report`]), which the runner attaches to the reader
//! ([`StatusReader::with_report`]).
//!
//! The reader is woken by the hang-up alone, not by each message: the
//! child's pid comes a few microseconds after its creation and its exec
//! some tens later, and waking for each cost the event loop one more
//! sleep and wake-up per action. The channel's end is watched by an
//! epoll instance of its own that asks only for the hang-up
//! (`EPOLLRDHUP`); that instance is what the event loop waits on. The
//! messages are read once the channel hangs up, or at once when asked
//! ([`StatusReader::wake_for_messages`]: an orphan waits for this child's
//! pid, see [`super::reaper`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::exit_report::ReportReader;
use super::spec::SpawnStep;

/// The size of one message: its kind and two numbers.
const MESSAGE_SIZE: usize = 12;

const STARTED: u32 = 1;
const FAILED: u32 = 2;
const NOT_CREATED: u32 = 3;
const ACTION_STARTED: u32 = 4;

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
    let watch = Watch::new(&read)?;
    Ok((
        StatusReader {
            fd: read,
            watch,
            report: None,
        },
        write,
    ))
}

/// The epoll instance of one reader's end, registered with the event
/// loop: it turns readable when the child's end hangs up (every copy
/// closed), and on messages only once asked to.
#[derive(Debug)]
struct Watch(AsyncFd<OwnedFd>);

/// What the watch asks of the reader's end at first: its hang-up alone
/// (`EPOLLHUP` and `EPOLLERR` are always reported).
const HANG_UP: u32 = libc::EPOLLRDHUP as u32;

impl Watch {
    fn new(end: &OwnedFd) -> io::Result<Watch> {
        // SAFETY: epoll_create1 takes only flags; its result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just created this descriptor; nothing else
        // owns it.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        Watch::control(&epoll, libc::EPOLL_CTL_ADD, end, HANG_UP)?;
        // SAFETY: the AsyncFd owns the epoll instance, which stays open
        // and the same until it is dropped.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Watch(epoll))
    }

    /// Adds `end` to `epoll`, or changes what is asked of it.
    fn control(
        epoll: &OwnedFd,
        operation: libc::c_int,
        end: &OwnedFd,
        events: u32,
    ) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: 0 };
        // SAFETY: epoll_ctl reads one epoll_event, a valid local, and
        // takes descriptor numbers of ours.
        let done =
            unsafe { libc::epoll_ctl(epoll.as_raw_fd(), operation, end.as_raw_fd(), &mut event) };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
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
    /// Closed first (which takes it out of the watch).
    fd: OwnedFd,
    watch: Watch,
    /// The exit report of the action under an init, if the child is one.
    report: Option<ReportReader>,
}

/// What one non-blocking read found.
enum Heard {
    Message(Status),
    End,
    Nothing,
}

impl StatusReader {
    /// The same reader, carrying the runner's end of the exit report of
    /// the action under the init this child will be.
    pub(crate) fn with_report(mut self, report: ReportReader) -> Self {
        self.report = Some(report);
        self
    }

    /// The exit report attached with [`Self::with_report`], once.
    pub(crate) fn take_report(&mut self) -> Option<ReportReader> {
        self.report.take()
    }

    /// The next message, or `None` at the end of file (every copy of the
    /// child's end is closed: the child has exec'd or exited, or was
    /// never created). Waits in the event loop, blocking no thread, for
    /// the hang-up (or, after [`Self::wake_for_messages`], any message):
    /// a message sent earlier is read then, with those after it.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Status>> {
        loop {
            match self.read_now()? {
                Heard::Message(status) => return Ok(Some(status)),
                Heard::End => return Ok(None),
                Heard::Nothing => {}
            }
            let mut ready = self.watch.0.readable().await?;
            match self.read_now()? {
                Heard::Message(status) => return Ok(Some(status)),
                Heard::End => return Ok(None),
                // Woken by our own cancel, or a message read already.
                Heard::Nothing => ready.clear_ready(),
            }
        }
    }

    /// From now on, wakes [`Self::next`] for each message too, not only
    /// for the hang-up: for a child whose pid is needed before its exec.
    pub(crate) fn wake_for_messages(&self) -> io::Result<()> {
        let events = HANG_UP | libc::EPOLLIN as u32;
        Watch::control(
            self.watch.0.get_ref(),
            libc::EPOLL_CTL_MOD,
            &self.fd,
            events,
        )
    }

    /// One message if there is one, without waiting.
    fn read_now(&self) -> io::Result<Heard> {
        let mut message = [0u8; MESSAGE_SIZE];
        loop {
            // SAFETY: the kernel writes at most the array's length into the
            // live local `message`.
            let read = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    message.as_mut_ptr().cast(),
                    message.len(),
                    0,
                )
            };
            return Ok(match read {
                0 => Heard::End,
                // Each packet is one whole message; anything else is not ours.
                n if n as usize == MESSAGE_SIZE => Heard::Message(decode(&message)),
                n if n > 0 => Heard::Message(Status::NotCreated(libc::EPROTO)),
                _ => match io::Error::last_os_error() {
                    error if error.kind() == io::ErrorKind::WouldBlock => Heard::Nothing,
                    error if error.kind() == io::ErrorKind::Interrupted => continue,
                    error => return Err(error),
                },
            });
        }
    }

    /// Tells the child's end that the call is over: the spawn server then
    /// creates no child, and a child created already exits before its
    /// exec. Messages still arrive.
    pub(crate) fn cancel(&self) {
        // SAFETY: shutdown takes only a descriptor number of ours.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
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
        ACTION_STARTED => Status::ActionStarted(value),
        // Only we write to this pipe: a kind of ours that this build does
        // not know says nothing about the child.
        _ => Status::NotCreated(libc::EPROTO),
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Poll, Waker};

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

    /// Why it matters: the runner learns the pid of the action under an
    /// init, which is not the child it created.
    #[tokio::test]
    async fn an_init_says_its_pid_and_the_actions() {
        let (mut reader, writer) = pipe().unwrap();
        let status = StatusWriter(writer.as_raw_fd());
        status.started_as(4242);
        status.action_started(4243);
        drop(writer);
        assert_eq!(reader.next().await.unwrap(), Some(Status::Started(4242)));
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Status::ActionStarted(4243))
        );
        assert_eq!(reader.next().await.unwrap(), None);
    }

    /// Counts its wake-ups.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Waits (at most 5 s) until `waker` was woken.
    async fn until_woken(waker: &CountingWaker) {
        for _ in 0..500 {
            if waker.0.load(Ordering::SeqCst) > 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("never woken");
    }

    /// Why it matters: waking for the child's pid, a few microseconds
    /// before its exec, cost every action one more sleep and wake-up of
    /// the event loop; only the hang-up (the exec) may wake the reader.
    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_the_hang_up_not_by_a_message() {
        let (mut reader, writer) = pipe().unwrap();
        let counting = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counting.clone());
        let mut context = std::task::Context::from_waker(&waker);
        let mut next = Box::pin(reader.next());
        assert!(next.as_mut().poll(&mut context).is_pending());
        StatusWriter(writer.as_raw_fd()).started();
        // Time for the event loop to see whatever there is to see.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(counting.0.load(Ordering::SeqCst), 0, "woken by a message");
        drop(writer);
        until_woken(&counting).await;
        let Poll::Ready(heard) = next.as_mut().poll(&mut context) else {
            panic!("woken, yet not ready");
        };
        assert_eq!(
            heard.unwrap(),
            Some(Status::Started(std::process::id() as i32))
        );
    }

    /// Why it matters: many spawns are in flight at once; each reader
    /// must be told of its own hang-up, in whatever order they come, and
    /// the others must wait on.
    #[tokio::test]
    async fn readers_waiting_at_once_each_hear_their_own_hang_up() {
        let mut waiting: Vec<_> = (0..5)
            .map(|_| {
                let (mut reader, writer) = pipe().unwrap();
                let task = tokio::spawn(async move { reader.next().await.map_err(|e| e.kind()) });
                Some((task, writer))
            })
            .collect();
        tokio::task::yield_now().await;
        for index in [3, 0, 4, 1, 2] {
            let (task, writer) = waiting[index].take().unwrap();
            drop(writer);
            let heard = tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .expect("the reader whose end hung up returns")
                .unwrap();
            assert_eq!(heard, Ok(None));
            for (others, _) in waiting.iter().flatten() {
                assert!(
                    !others.is_finished(),
                    "a reader returned before its hang-up"
                );
            }
        }
    }

    /// Why it matters: the runner's own cancel wakes the reader's end
    /// without a hang-up; the reader must ask again and still hear the
    /// hang-up that follows.
    #[tokio::test]
    async fn a_reader_woken_by_its_own_cancel_still_hears_the_hang_up() {
        let (mut reader, writer) = pipe().unwrap();
        tokio::select! {
            heard = reader.next() => panic!("returned before the hang-up: {heard:?}"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
        }
        reader.cancel();
        tokio::select! {
            heard = reader.next() => panic!("returned before the hang-up: {heard:?}"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
        }
        assert!(StatusWriter(writer.as_raw_fd()).cancelled());
        let hang_up = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            drop(writer);
        });
        let heard = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
            .await
            .expect("the hang-up is heard");
        assert_eq!(heard.unwrap(), None);
        hang_up.await.unwrap();
    }

    /// Why it matters: a child must never pass its status pipe on to the
    /// program it executes, or the reader would wait for that program.
    #[tokio::test]
    async fn both_ends_are_closed_on_exec() {
        let (reader, writer) = pipe().unwrap();
        for fd in [reader.fd.as_raw_fd(), writer.as_raw_fd()] {
            // SAFETY: F_GETFD only reads the flags of a descriptor we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
    }
}
