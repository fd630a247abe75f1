//! The init of an isolated action's PID namespace (`isolation.pid`).
//!
//! The first process of a PID namespace ignores every signal it has no
//! handler for, cannot re-raise the action's signal on itself, and adopts
//! every orphan of the namespace; the kernel kills the whole namespace when
//! it exits. So the action is never that process: the child the runner (or
//! the spawn server) creates in the new namespace is, and it
//! ([`start_action`]):
//! 1. forks the action, a copy of itself like every action's child (so
//!    the action's maxrss is what it would be without isolation), which
//!    says its pid as the runner sees it and goes on to its exec;
//! 2. becomes the init ([`supervise`]), small either way: created by the
//!    spawn server (the normal path), it is a copy of that small process
//!    and closes every descriptor it does not need; created by the runner
//!    itself (no spawn server), it execs this executable in init mode
//!    ([`serve`]), so that it never carries the runner's resident set. The
//!    exec costs about a millisecond of dynamic loading, which a copy of
//!    the spawn server spares every action.
//!
//! The init then, in a loop on a signalfd and a pipe that ends at the
//! action's exec: says when the action has exec'd (the status channel's
//! end of file cannot say it, since the init keeps the channel open);
//! forwards SIGTERM, SIGINT and SIGHUP to the action's process group;
//! reaps orphans; and once `wait4` returns the action, sends its raw wait
//! status and its own rusage through the channel, and exits, which ends
//! the namespace.
//!
//! On the runner's side, [`follow_action`] makes of the init and that
//! report the action as the rest of the runner knows a child: its pid,
//! and its exit. An init killed before it reported (an OOM group kill, a
//! `cgroup.kill`) means the action was killed too: SIGKILL.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::process::ExitCode;

use tokio::sync::oneshot;

use super::isolation;
use super::reaper::{ChildExit, SpawnedChild};
use super::spec::SpawnStep;
use super::status::{ReportedExit, Status, StatusReader, StatusWriter};

/// The hidden first argument that makes the executable an action's init.
pub const INIT_ARGUMENT: &str = "__action-init";
/// [`INIT_ARGUMENT`] for the child, which may not allocate a C string.
const INIT_ARGUMENT_C: &CStr = c"__action-init";

/// This executable, as the init's PID namespace's `/proc` shows it to the
/// child that execs the init (the runner's or the spawn server's copy).
const SELF_EXE: &CStr = c"/proc/self/exe";

/// Where the init finds the status channel.
const STATUS_FD: RawFd = 3;
/// Where the init finds the pipe that ends at the action's exec.
const EXEC_FD: RawFd = 4;

// The child's side: runs between clone and exec (see `super::child`).

/// In the namespace's first process, once its namespaces are set up
/// (`host_proc` is the host's `/proc`, open): forks the action. Returns
/// `Ok` only in the action, which has said its pid as the runner sees
/// it; the first process becomes the init and returns only the error of
/// failing to.
/// `quiet` is a descriptor the init may have as its standard ones (the
/// action's empty stdin). With `exec`, the init is this executable exec'd
/// in init mode; otherwise this process, with only the descriptors it
/// needs.
pub(super) fn start_action(
    status: StatusWriter,
    host_proc: RawFd,
    quiet: RawFd,
    exec: bool,
) -> Result<(), (SpawnStep, i32)> {
    let mut exec_pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the live local array.
    let made = unsafe { libc::pipe2(exec_pipe.as_mut_ptr(), libc::O_CLOEXEC) };
    check(made)?;
    let [exec_read, exec_write] = exec_pipe;
    // A plain fork (a copy of this process, on its copy of this stack),
    // which ends the action's life as this process's child with SIGCHLD.
    // SAFETY: this process is single-threaded and between clone and exec:
    // the copy goes on from here with its own memory, as with fork().
    let forked = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    if forked < 0 {
        return Err((SpawnStep::Init, errno()));
    }
    if forked == 0 {
        // The action. Its end of the pipe closes at its exec.
        // SAFETY: close takes only a descriptor number of this process.
        unsafe { libc::close(exec_read) };
        let pid = isolation::host_pid_through(host_proc).map_err(|errno| (SpawnStep::Init, errno));
        // SAFETY: as above; the action must not keep the host's /proc.
        unsafe { libc::close(host_proc) };
        status.action_started(pid?);
        return Ok(());
    }
    // SAFETY: close takes only descriptor numbers of this process.
    unsafe { libc::close(exec_write) };
    // SAFETY: as above.
    unsafe { libc::close(host_proc) };
    let errno = match keep_only_init_descriptors(status, exec_read, quiet) {
        Err(errno) => errno,
        Ok(()) if exec => exec_init(forked as i32),
        Ok(()) => {
            // Nothing but what the init needs stays open: not the
            // creator's connection, not the action's other descriptors.
            // SAFETY: close_range takes only numbers; every descriptor
            // above EXEC_FD is a copy of the creator's, unused here.
            unsafe { libc::close_range(EXEC_FD as libc::c_uint + 1, libc::c_uint::MAX, 0) };
            let code = supervise(forked as i32);
            // SAFETY: _exit ends this process without running anything
            // of the creator's (no atexit handlers, no unwinding).
            unsafe { libc::_exit(code) }
        }
    };
    // The init could not start: nothing would report or reap the action.
    // SAFETY: kill takes only numbers; the action is this process's child.
    unsafe { libc::kill(forked as i32, libc::SIGKILL) };
    Err((SpawnStep::Init, errno))
}

/// Puts the status channel on [`STATUS_FD`], the exec pipe's read end on
/// [`EXEC_FD`] and `quiet` on the standard descriptors, all kept across an
/// exec. `Err`: the errno of a failure.
fn keep_only_init_descriptors(
    status: StatusWriter,
    exec_read: RawFd,
    quiet: RawFd,
) -> Result<(), i32> {
    // Above the targets first, so that neither source is a target.
    // SAFETY: fcntl takes only numbers.
    let status_high = unsafe { libc::fcntl(status.0, libc::F_DUPFD_CLOEXEC, 10) };
    // SAFETY: as above.
    let exec_high = unsafe { libc::fcntl(exec_read, libc::F_DUPFD_CLOEXEC, 10) };
    if status_high < 0 || exec_high < 0 {
        return Err(errno());
    }
    // dup2 clears close-on-exec on the target: these stay open.
    for (source, target) in [
        (status_high, STATUS_FD),
        (exec_high, EXEC_FD),
        (quiet, 0),
        (quiet, 1),
        (quiet, 2),
    ] {
        // SAFETY: dup2 takes only descriptor numbers.
        if unsafe { libc::dup2(source, target) } < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Execs this executable as the init of `action` (its pid in the
/// namespace), its descriptors in place ([`keep_only_init_descriptors`]);
/// every other descriptor is close-on-exec. Returns only the errno of a
/// failure.
fn exec_init(action: i32) -> i32 {
    let mut digits = [0u8; 12];
    format_decimal(action, &mut digits);
    let argv: [*const libc::c_char; 4] = [
        c"rbe-runner".as_ptr(),
        INIT_ARGUMENT_C.as_ptr(),
        digits.as_ptr().cast(),
        std::ptr::null(),
    ];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // Every signal stays blocked: the init takes the ones it handles
    // through a signalfd.
    // SAFETY: NUL-terminated strings in null-terminated arrays, all live
    // locals or literals.
    unsafe { libc::execve(SELF_EXE.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

/// Writes `value` (not negative) into `buffer` as decimal digits and a NUL.
fn format_decimal(value: i32, buffer: &mut [u8; 12]) {
    let mut reversed = [0u8; 11];
    let mut count = 0;
    let mut left = value.max(0) as u32;
    loop {
        reversed[count] = b'0' + (left % 10) as u8;
        count += 1;
        left /= 10;
        if left == 0 {
            break;
        }
    }
    for index in 0..count {
        buffer[index] = reversed[count - 1 - index];
    }
    buffer[count] = 0;
}

// The init mode: its own process, exec'd.

/// The exec'd init's main (see the module). `args` follow
/// [`INIT_ARGUMENT`]: the action's pid in the namespace.
pub fn serve(args: &[String]) -> ExitCode {
    let Some(action) = args.first().and_then(|pid| pid.parse::<i32>().ok()) else {
        return ExitCode::FAILURE;
    };
    ExitCode::from(supervise(action) as u8)
}

/// The init's loop (see the module), for `action` (its pid in the
/// namespace), with its descriptors in place
/// ([`keep_only_init_descriptors`]); returns the init's exit code once the
/// action is reported. Raw system calls on the stack, nothing allocated:
/// it also runs in a copy of the spawn server that has not exec'd.
fn supervise(action: i32) -> libc::c_int {
    // SAFETY: prctl with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"rbe-init".as_ptr(), 0, 0, 0) };
    // Under a runner without root, the action has its init's uid: not
    // dumpable, the init can be neither traced nor read by it (a traced
    // init would report whatever the action likes).
    // SAFETY: prctl takes only numbers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let status = StatusWriter(STATUS_FD);
    // SAFETY: all-zero bytes are a valid `sigset_t`.
    let mut handled: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset writes only `handled`, a live local.
    unsafe { libc::sigemptyset(&mut handled) };
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut handled, signal) };
    }
    // Exactly these stay blocked (pending ones included, a SIGCHLD of an
    // action that was quicker than this exec among them), taken through
    // the signalfd.
    // SAFETY: sigprocmask reads `handled`, a live local.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &handled, std::ptr::null_mut()) };
    // SAFETY: signalfd reads `handled`; -1 makes a new descriptor.
    let signals = unsafe { libc::signalfd(-1, &handled, libc::SFD_CLOEXEC) };
    if signals < 0 {
        return 1;
    }
    let mut init = Init {
        action,
        status,
        exec_pipe_open: true,
        executed: false,
    };
    loop {
        if let Some(code) = init.reap() {
            return code;
        }
        let mut ready = [
            libc::pollfd {
                fd: signals,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if init.exec_pipe_open { EXEC_FD } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes the live local array of two.
        if unsafe { libc::poll(ready.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if ready[1].revents != 0 {
            init.exec_pipe_ready();
        }
        if ready[0].revents != 0 {
            init.signal(signals);
        }
    }
}

/// What the init knows.
struct Init {
    /// The action's pid (in the namespace), which leads its process group.
    action: i32,
    status: StatusWriter,
    exec_pipe_open: bool,
    executed: bool,
}

impl Init {
    /// The exec pipe is readable: its end of file is the action's exec (or
    /// exit).
    fn exec_pipe_ready(&mut self) {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a live local.
        let read = unsafe { libc::read(EXEC_FD, (&mut byte as *mut u8).cast(), 1) };
        if read > 0 {
            return;
        }
        // SAFETY: close takes only a descriptor number of ours.
        unsafe { libc::close(EXEC_FD) };
        self.exec_pipe_open = false;
        self.say_executed();
    }

    fn say_executed(&mut self) {
        if !self.executed {
            self.executed = true;
            self.status.executed();
        }
    }

    /// One signal from the signalfd: forwarded to the action's group, or
    /// SIGCHLD (reaped by the loop).
    fn signal(&mut self, signals: RawFd) {
        // SAFETY: all-zero bytes are a valid `signalfd_siginfo`.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into the live local.
        let read = unsafe {
            libc::read(
                signals,
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if read as usize != size {
            return;
        }
        let signal = info.ssi_signo as i32;
        if signal != libc::SIGCHLD {
            // SAFETY: kill takes only numbers: the action's process group.
            unsafe { libc::kill(-self.action, signal) };
        }
    }

    /// Reaps every child that has exited; once the action is among them,
    /// reports it and returns the init's exit code.
    fn reap(&mut self) -> Option<libc::c_int> {
        loop {
            let mut status = 0;
            // SAFETY: all-zero bytes are a valid rusage.
            let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 writes the status and rusage into live locals.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut rusage) };
            if pid <= 0 {
                return None;
            }
            if pid == self.action {
                // Its exec pipe has ended by now: a process's descriptors
                // close before its parent can reap it.
                self.say_executed();
                self.status.exited(status, &rusage);
                return Some(0);
            }
        }
    }
}

// The runner's side.

/// The action under the init `init` (the child the runner created, and
/// registered), whose pid as the runner sees it is `action`, and whose
/// exit comes through `status` (read on after the action's exec): its
/// exit is the action's raw status and own rusage, once the init has
/// exited too; SIGKILL with the init's rusage when the init was killed
/// before it reported.
pub(crate) fn follow_action(
    init: SpawnedChild,
    action: i32,
    mut status: StatusReader,
) -> SpawnedChild {
    let (exited, exit) = oneshot::channel();
    tokio::spawn(async move {
        let mut reported = None;
        while let Ok(Some(told)) = status.next().await {
            if let Status::Exited(ReportedExit(exit)) = told {
                reported = Some(exit);
            }
        }
        let Ok(init_exit) = init.exit.await else {
            // The init's exit was lost; so is the action's.
            return;
        };
        let _ = exited.send(reported.unwrap_or(ChildExit {
            status: libc::SIGKILL,
            rusage: init_exit.rusage,
        }));
    });
    SpawnedChild { pid: action, exit }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(result: libc::c_int) -> Result<(), (SpawnStep, i32)> {
    if result == -1 {
        Err((SpawnStep::Init, errno()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_argument_is_the_same_in_both_spellings() {
        assert_eq!(INIT_ARGUMENT_C.to_str().unwrap(), INIT_ARGUMENT);
    }

    #[test]
    fn pids_are_formatted_without_allocating() {
        for value in [0, 2, 10, 4_194_304, i32::MAX] {
            let mut buffer = [0xffu8; 12];
            format_decimal(value, &mut buffer);
            let text = CStr::from_bytes_until_nul(&buffer).unwrap();
            assert_eq!(text.to_str().unwrap(), value.to_string());
        }
    }
}
