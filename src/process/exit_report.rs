//! The exit report: how the init of an isolated action's PID namespace
//! ([`super::init`]) hands the runner the action's raw wait status and its
//! own rusage, which only the init's `wait4` sees.
//!
//! A pipe of its own, apart from the child's status channel
//! ([`super::status`]), so that the status channel ends at the action's
//! exec exactly as every child's does: the runner then wakes once to learn
//! the spawn's outcome, not once per message, and once more when the
//! report arrives. The init holds the write end until it has reported; the
//! end of file without a report is an init that died first (killed with
//! its namespace: an OOM group kill, a `cgroup.kill`).
//!
//! The report is one write of [`REPORT_SIZE`] bytes, less than
//! `PIPE_BUF`, so it arrives whole or not at all.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::reaper::ChildExit;

/// The raw wait status, then the rusage.
const REPORT_SIZE: usize = 4 + std::mem::size_of::<libc::rusage>();

/// A new report pipe: the runner's end (non-blocking, registered with the
/// event loop only when waited on) and the init's (blocking,
/// close-on-exec like every descriptor the runner makes).
pub(crate) fn pipe() -> io::Result<(ReportReader, OwnedFd)> {
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
    // SAFETY: F_SETFL on the runner's own end; the init's end is another
    // open file and stays blocking.
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((ReportReader(read), write))
}

/// The init's end: a bare descriptor number, written with one raw system
/// call, nothing allocated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReportWriter(pub(crate) RawFd);

impl ReportWriter {
    /// The action has exited with the raw wait `status` and its own
    /// `rusage`.
    pub(crate) fn exited(self, status: i32, rusage: &libc::rusage) {
        let mut report = [0u8; REPORT_SIZE];
        report[..4].copy_from_slice(&status.to_le_bytes());
        report[4..].copy_from_slice(rusage_bytes(rusage));
        // A runner that stopped listening has closed its end: the write
        // fails with EPIPE, SIGPIPE being blocked (or ignored) in the init.
        // SAFETY: the kernel reads the live local array; the descriptor is
        // a number the kernel checks.
        unsafe { libc::write(self.0, report.as_ptr().cast(), report.len()) };
    }
}

/// The runner's end.
#[derive(Debug)]
pub(crate) struct ReportReader(OwnedFd);

impl ReportReader {
    /// The action's exit as the init reported it, or `None` when the init
    /// ended without reporting. Waits in the event loop.
    pub(crate) async fn exit(self) -> io::Result<Option<ChildExit>> {
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the
        // same until it is dropped.
        let end = unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) }
            .map_err(io::Error::from)?;
        loop {
            let mut ready = end.readable().await?;
            let mut report = [0u8; REPORT_SIZE];
            // SAFETY: the kernel writes at most the array's length into the
            // live local.
            let read = unsafe {
                libc::read(
                    end.get_ref().as_raw_fd(),
                    report.as_mut_ptr().cast(),
                    report.len(),
                )
            };
            match read {
                n if n as usize == REPORT_SIZE => return Ok(Some(decode(&report))),
                // The end of file, or (never from our init) a torn write.
                n if n >= 0 => return Ok(None),
                _ => match io::Error::last_os_error() {
                    error if error.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                    error if error.kind() == io::ErrorKind::Interrupted => {}
                    error => return Err(error),
                },
            }
        }
    }
}

fn decode(report: &[u8; REPORT_SIZE]) -> ChildExit {
    let status = i32::from_le_bytes([report[0], report[1], report[2], report[3]]);
    // SAFETY: all-zero bytes are a valid rusage (plain integers).
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `rusage` is a live local of plain integers, exactly as many
    // bytes as follow the status; any bytes are valid for it.
    let target = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut rusage as *mut libc::rusage).cast::<u8>(),
            std::mem::size_of::<libc::rusage>(),
        )
    };
    target.copy_from_slice(&report[4..]);
    ChildExit { status, rusage }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: the Run reports the action's own status and rusage,
    /// which only its init's wait4 sees, whole.
    #[tokio::test]
    async fn a_report_arrives_whole() {
        let (reader, writer) = pipe().unwrap();
        // SAFETY: all-zero bytes are a valid rusage.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        rusage.ru_maxrss = 1234;
        rusage.ru_utime.tv_usec = 56;
        ReportWriter(writer.as_raw_fd()).exited(9, &rusage);
        let exit = reader.exit().await.unwrap().unwrap();
        assert_eq!(exit.signal(), Some(libc::SIGKILL));
        assert_eq!(exit.rusage.ru_maxrss, 1234);
        assert_eq!(exit.rusage.ru_utime.tv_usec, 56);
    }

    /// Why it matters: an init killed before it reported must read as
    /// such (the action is then reported killed), not hang the Run.
    #[tokio::test]
    async fn an_init_gone_without_a_report_reads_as_none() {
        let (reader, writer) = pipe().unwrap();
        drop(writer);
        assert!(reader.exit().await.unwrap().is_none());
    }

    /// Why it matters: the action must never inherit the init's end, nor
    /// any child the runner's.
    #[tokio::test]
    async fn both_ends_are_closed_on_exec() {
        let (reader, writer) = pipe().unwrap();
        for fd in [reader.0.as_raw_fd(), writer.as_raw_fd()] {
            // SAFETY: F_GETFD only reads the flags of a descriptor we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
    }
}
