//! The init of an isolated action's PID namespace (`isolation.pid`).
//!
//! The first process of a PID namespace ignores every signal it has no
//! handler for, cannot re-raise the action's signal on itself, and adopts
//! every orphan of the namespace; the kernel kills the whole namespace when
//! it exits. So the action is never that process: the child the runner (or
//! the spawn server) creates in the new namespace is, and it
//! ([`start_action`]):
//! 1. forks the action, a copy of itself, and so of its creator, as every
//!    action's child is: the kernel folds the peak RSS of the action's
//!    memory before its exec into its maxrss, and a fork copies the page
//!    tables of the first process's written memory only, not the code it
//!    faulted in to set up the namespaces (its mounts and `/proc`: about
//!    1.7 MiB of a debug build's text, mapped 64 KiB around each fault).
//!    So the action starts from the copy a plain action starts from.
//!    (Sharing the first process's memory until the exec, as `vfork`
//!    does, measured 1.9 MiB more, that text included.) The action is
//!    forked the way its creator made the first process (`clone3`'s first
//!    instructions or the raw `clone` system call: [`clone::fork_into`],
//!    which also forks the action of an isolated child without a PID
//!    namespace) and enters through the very
//!    function every child does, as a plain child whose namespaces and
//!    cgroup are set already ([`super::child`]), so that it faults in the
//!    same pages of this executable before its exec as a plain action.
//!    (Code of its own there, reading its pid from the host's `/proc`,
//!    measured 150 KiB to 1 MiB more, depending on where the build and
//!    the address space layout put it.) A step that fails says so
//!    through the status channel;
//! 2. says the action's pid as the runner sees it, read from the host's
//!    `/proc` (`thread-self/children`), then closes its copies of the
//!    status channel and the host's `/proc`: the channel then ends at the
//!    action's exec as every child's does (the runner wakes once for the
//!    spawn's outcome), with nothing of the init's in between; it keeps
//!    only the exit report's pipe ([`super::exit_report`]) and an empty
//!    stdin;
//! 3. becomes the init ([`supervise`]), small either way: created by the
//!    spawn server (the normal path), it is a copy of that small process
//!    with every other descriptor closed; created by the runner itself (no
//!    spawn server), it execs this executable in init mode ([`serve`]), so
//!    that it never carries the runner's resident set.
//!
//! The init then blocks every signal and reads, from a signalfd, SIGTERM,
//! SIGINT and SIGHUP, which it forwards to the action's process group, and
//! SIGCHLD, on which it reaps orphans; once `wait4` returns the action, it
//! writes the action's raw wait status and its own rusage to the report
//! pipe and exits, which ends the namespace.
//!
//! On the runner's side, [`follow_action`] makes of the init and that
//! report the action as the rest of the runner knows a child: its pid, and
//! its exit, known as soon as the report arrives. The init's own exit,
//! which comes once the kernel has dismantled the namespaces (150–275 µs
//! measured under load), is not waited for, as a plain action's leftover processes are not; the
//! reaper collects it. An init that ended without
//! reporting (an OOM group kill, a `cgroup.kill`) means the action was
//! killed too: SIGKILL.

use std::ffi::{c_void, CStr};
use std::os::fd::RawFd;
use std::process::ExitCode;

use tokio::sync::oneshot;

use super::child::errno;
use super::clone::{self, Method};
use super::exit_report::{ReportReader, ReportWriter};
use super::isolation;
use super::reaper::{ChildExit, SpawnedChild};
use super::spec::SpawnStep;
use super::status::StatusWriter;

/// The hidden first argument that makes the executable an action's init.
pub const INIT_ARGUMENT: &str = "__action-init";
/// [`INIT_ARGUMENT`] for the child, which may not allocate a C string.
const INIT_ARGUMENT_C: &CStr = c"__action-init";

/// This executable, as the init's PID namespace's `/proc` shows it to the
/// child that execs the init (the runner's or the spawn server's copy).
const SELF_EXE: &CStr = c"/proc/self/exe";

/// Where the init finds the exit report's pipe.
const REPORT_FD: RawFd = 3;
/// Where the exec'd init finds the pipe on which it says it is ready.
const READY_FD: RawFd = 4;

// The child's side: runs between clone and exec (see `super::child`).

/// How the action starts, and what the init closes once it has.
pub(super) struct ActionStart {
    /// The host's `/proc`, open (for the action's pid as the runner sees
    /// it).
    pub(super) host_proc: RawFd,
    /// The child's status channel.
    pub(super) status: StatusWriter,
    /// The action: sets itself up and execs, called with `arg` on its
    /// copy of the init's stack; returns only the exit status of a failed
    /// step, which it has written to the status channel.
    pub(super) main: extern "C" fn(*mut c_void) -> libc::c_int,
    pub(super) arg: *mut c_void,
    /// How the init's creator created it: the action is forked the same
    /// way, so that it starts through the same first instructions.
    pub(super) method: Method,
    /// For an init that execs: the ends (read, write) of the pipe on which
    /// it says it is ready ([`ready_pipe`]).
    pub(super) ready: Option<(RawFd, RawFd)>,
}

/// A pipe (read end, write end) for an init that execs to say it is
/// ready, both close-on-exec. `Err`: the errno.
pub(super) fn ready_pipe() -> Result<[RawFd; 2], i32> {
    let mut ends = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into `ends`, a live local array
    // of two.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(errno());
    }
    Ok(ends)
}

/// In the action, first thing: with `ready` (the read end of
/// [`ready_pipe`]), waits for its init's word that it can no longer be
/// read or traced (an init that execs is until then). Every other child
/// passes -1 and makes the same call, which fails at once. An init that
/// ends without its word ends the namespace, and the action with it;
/// `Err` is a read that failed otherwise.
pub(super) fn wait_until_ready(ready: RawFd) -> Result<(), i32> {
    let mut word = 0u8;
    // SAFETY: the kernel writes at most one byte into the live local.
    let read = unsafe { libc::read(ready, (&mut word as *mut u8).cast(), 1) };
    match read {
        _ if ready < 0 => Ok(()),
        1 => Ok(()),
        0 => Err(libc::EPIPE),
        _ => Err(errno()),
    }
}

/// In the namespace's first process, once its namespaces are set up:
/// creates the action from `start` and becomes its init (see the module),
/// reporting its exit to `report`. `quiet` is a descriptor the init may
/// have as its standard ones (the action's empty stdin). With `exec`, the
/// init is this executable exec'd in init mode; otherwise this process,
/// with only the descriptors it needs. Returns only the step and errno of
/// failing to.
pub(super) fn start_action(
    start: &ActionStart,
    report: RawFd,
    quiet: RawFd,
    exec: bool,
) -> (SpawnStep, i32) {
    // Under a runner without root, the action has its init's uid: not
    // dumpable, the init can be neither traced nor read by it (a traced
    // init would report whatever the action likes). Made so before the
    // action exists; an exec makes a process dumpable again, so an init
    // that execs says when it is so once more, and its action waits for
    // that ([`wait_until_ready`]).
    // SAFETY: prctl takes only numbers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // A fork (no CLONE_VM): the action runs `start.main` with its copy of
    // `start.arg`, on its copy of this stack, below this frame (a stack
    // carved out of this frame was too small in a release build, whose
    // first function of a child has a 17 KiB frame); SIGCHLD tells the
    // init of its exit.
    // SAFETY: `start.main` keeps the contract of a child between clone
    // and exec (raw system calls on values prepared beforehand, no
    // allocation, no locks, no unwinding; see `super::child`), on its own
    // copy of this single-threaded process, every signal blocked.
    let action = match unsafe { clone::fork_into(start.method, start.main, start.arg, false) } {
        Ok(pid) => pid,
        Err(errno) => return (SpawnStep::Init, errno),
    };
    // The init, not the action, says the action's pid as the runner sees
    // it: the action runs nothing before its setup that a plain child
    // does not.
    match isolation::first_child_through(start.host_proc) {
        Ok(pid) => start.status.action_started(pid),
        Err(errno) => {
            // SAFETY: kill takes only numbers; the action is this
            // process's child, not yet reaped.
            unsafe { libc::kill(action, libc::SIGKILL) };
            return (SpawnStep::Init, errno);
        }
    }
    // The action's copies close at its exec: the status channel ends
    // there, as every child's does.
    // SAFETY: close takes only descriptor numbers of this process.
    unsafe { libc::close(start.status.0) };
    // SAFETY: as above.
    unsafe { libc::close(start.host_proc) };
    let ready = start.ready.map(|(reader, writer)| {
        // SAFETY: as above: the action's end.
        unsafe { libc::close(reader) };
        writer
    });
    let errno = match keep_only_init_descriptors(report, quiet, ready) {
        Err(errno) => errno,
        Ok(()) if exec => exec_init(action),
        Ok(()) => {
            // Nothing but what the init needs stays open: not the
            // creator's connection, not the action's other descriptors.
            // SAFETY: close_range takes only numbers; every descriptor
            // above REPORT_FD is a copy of the creator's, unused here.
            unsafe { libc::close_range(REPORT_FD as libc::c_uint + 1, libc::c_uint::MAX, 0) };
            let code = supervise(action, None);
            // SAFETY: _exit ends this process without running anything
            // of the creator's (no atexit handlers, no unwinding).
            unsafe { libc::_exit(code) }
        }
    };
    // The init could not start: nothing would report or reap the action,
    // which is reported killed (the report's end of file).
    // SAFETY: kill takes only numbers; the action is this process's child.
    unsafe { libc::kill(action, libc::SIGKILL) };
    (SpawnStep::Init, errno)
}

/// Puts `quiet` on the standard descriptors, the report pipe on
/// [`REPORT_FD`] and `ready`'s write end on [`READY_FD`], all kept across
/// an exec. `Err`: the errno of a failure.
fn keep_only_init_descriptors(
    report: RawFd,
    quiet: RawFd,
    ready: Option<RawFd>,
) -> Result<(), i32> {
    // Neither source is a standard descriptor (the creator's are always
    // open), so the standard ones go first; the report is moved above the
    // target first, so that it is not the target.
    for target in 0..3 {
        // SAFETY: dup2 takes only descriptor numbers.
        if unsafe { libc::dup2(quiet, target) } < 0 {
            return Err(errno());
        }
    }
    // SAFETY: fcntl takes only numbers.
    let report_high = unsafe { libc::fcntl(report, libc::F_DUPFD_CLOEXEC, 10) };
    if report_high < 0 {
        return Err(errno());
    }
    // SAFETY: fcntl takes only numbers.
    let ready_high = ready.map(|ready| unsafe { libc::fcntl(ready, libc::F_DUPFD_CLOEXEC, 10) });
    if ready_high.is_some_and(|high| high < 0) {
        return Err(errno());
    }
    // dup2 clears close-on-exec on the target: it stays open.
    // SAFETY: dup2 takes only descriptor numbers.
    if unsafe { libc::dup2(report_high, REPORT_FD) } < 0 {
        return Err(errno());
    }
    if let Some(high) = ready_high {
        // SAFETY: as above.
        if unsafe { libc::dup2(high, READY_FD) } < 0 {
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
    ExitCode::from(supervise(action, Some(READY_FD)) as u8)
}

/// The init's loop (see the module), for `action` (its pid in the
/// namespace), with the report pipe on [`REPORT_FD`]; returns the init's
/// exit code once the action is reported. Raw system calls on the stack,
/// nothing allocated: it also runs in a copy of the spawn server that has
/// not exec'd.
fn supervise(action: i32, ready: Option<RawFd>) -> libc::c_int {
    // SAFETY: prctl with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"rbe-init".as_ptr(), 0, 0, 0) };
    // Not dumpable (see `start_action`); after an exec, again, and then
    // the action may go on.
    // SAFETY: prctl takes only numbers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if let Some(ready) = ready {
        // SAFETY: writes one byte of a literal; a failure leaves the
        // action waiting until the namespace ends with this process.
        unsafe { libc::write(ready, b"r".as_ptr().cast(), 1) };
        // SAFETY: close takes only a descriptor number.
        unsafe { libc::close(ready) };
    }
    let report = ReportWriter(REPORT_FD);
    // SAFETY: all-zero bytes are a valid `sigset_t`.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset writes only `all`, a live local.
    unsafe { libc::sigfillset(&mut all) };
    // Every signal stays blocked (as its creator left them), pending ones
    // included: a SIGCHLD of an action quicker than this is read below.
    // SAFETY: sigprocmask reads `all`, a live local.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) };
    // SAFETY: all-zero bytes are a valid `sigset_t`.
    let mut handled: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset writes only `handled`, a live local.
    unsafe { libc::sigemptyset(&mut handled) };
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut handled, signal) };
    }
    // SAFETY: signalfd reads `handled`; -1 makes a new descriptor.
    let signals = unsafe { libc::signalfd(-1, &handled, libc::SFD_CLOEXEC) };
    loop {
        // Without a signalfd, the init still reaps and reports: it waits
        // for its children one at a time, forwarding nothing.
        if let Some(code) = reap(action, report, signals < 0) {
            return code;
        }
        if signals >= 0 {
            forward_one(signals, action);
        }
    }
}

/// Reads one signal from the signalfd `signals`: forwarded to the
/// action's group, or SIGCHLD (reaped by the loop).
fn forward_one(signals: RawFd, action: i32) {
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
        unsafe { libc::kill(-action, signal) };
    }
}

/// Reaps every child that has exited (with `block`, waits for one);
/// once the action is among them, reports it to `report` and returns the
/// init's exit code.
fn reap(action: i32, report: ReportWriter, block: bool) -> Option<libc::c_int> {
    let mut options = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut status = 0;
        // SAFETY: all-zero bytes are a valid rusage.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes the status and rusage into live locals.
        let pid = unsafe { libc::wait4(-1, &mut status, options, &mut rusage) };
        if pid == action {
            report.exited(status, &rusage);
            return Some(0);
        }
        if pid <= 0 {
            return None;
        }
        options = libc::WNOHANG;
    }
}

// The runner's side.

/// The action under the init `init` (the child the runner created, and
/// registered), whose pid as the runner sees it is `action`, and whose
/// exit the init reports through `report`: the action's raw status and
/// own rusage as soon as they arrive; SIGKILL with the init's rusage when
/// the init ended without reporting.
pub(crate) fn follow_action(init: SpawnedChild, action: i32, report: ReportReader) -> SpawnedChild {
    let (exited, exit) = oneshot::channel();
    tokio::spawn(async move {
        let exit = match report.exit().await {
            Ok(Some(exit)) => exit,
            _ => match init.exit.await {
                Ok(init_exit) => ChildExit {
                    status: libc::SIGKILL,
                    rusage: init_exit.rusage,
                },
                // The init's exit was lost; so is the action's.
                Err(_) => return,
            },
        };
        let _ = exited.send(exit);
    });
    SpawnedChild {
        pid: action,
        exit,
        // The init holds the action's namespaces, and dismantles them
        // when it exits, after its report.
        mount_namespace: None,
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
