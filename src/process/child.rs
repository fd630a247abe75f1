//! The child between its creation and exec, and creating it in this
//! process.
//!
//! The child is created as a copy of its creator ([`super::clone`]): the
//! spawn server ([`super::spawn_server`]), or the runner without one. It
//! sets itself up with raw system calls on values prepared beforehand: its
//! cgroup (unless created in it), signal dispositions, process group,
//! descriptors, `oom_score_adj`, root, directory and identity. A step that
//! fails is written into the shared [`Report`], which the parent reads once
//! it resumes: no pipe, no allocation in the child.

use std::ffi::c_void;
use std::io;
use std::os::fd::RawFd;

use super::clone::{self, Method, Report};
use super::spec::{Created, ExecArguments, Identity, OomScoreAdj, Parent, SpawnStep};

/// Where a process sets its own OOM-killer preference. Opened by the child,
/// so `self` is the child.
pub const DEFAULT_PROC_SELF_OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// [`DEFAULT_PROC_SELF_OOM_SCORE_ADJ`] for the child, which may not
/// allocate a C string.
const PROC_SELF_OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

/// Creates the child described by `child` with `method` in this process,
/// and returns once it has exec'd or failed.
pub(crate) fn create(child: &Child, method: Method, parent: Parent) -> Created {
    let creator = match clone::creator() {
        Ok(creator) => creator,
        Err(error) => {
            return Created {
                pid: Err(error),
                failed: None,
            }
        }
    };
    let child = Child {
        joins_cgroup: match method {
            Method::Clone3 => None,
            Method::Clone => child.cgroup,
        },
        report: creator.report(),
        ..*child
    };
    let created_in = match method {
        Method::Clone3 => child.cgroup,
        Method::Clone => None,
    };
    let previous = clone::block_all_signals();
    // SAFETY: `Child::main` keeps the contract of `Creator::create` (raw
    // system calls on values prepared above, no allocation, no locks, no
    // unwinding), and `child` outlives the call, which returns only once
    // the child has exec'd or exited.
    let pid = unsafe {
        creator.create(
            method,
            created_in,
            parent == Parent::CreatorsParent,
            Child::main,
            &child as *const Child as *mut c_void,
        )
    };
    clone::restore_signals(&previous);
    let failed = match &pid {
        Ok(_) => creator
            .report()
            .get()
            .map(|(step, errno)| (SpawnStep::from_code(step), errno)),
        Err(_) => None,
    };
    Created { pid, failed }
}

/// Everything the child uses, prepared before it is created, as raw
/// descriptors and pointers into memory the creator keeps alive (it is
/// suspended until the child has exec'd or exited).
#[derive(Clone, Copy)]
pub(crate) struct Child<'a> {
    /// The directory of the action's cgroup.
    pub(crate) cgroup: Option<RawFd>,
    /// stdin, stdout and stderr, in that order.
    pub(crate) standard: [RawFd; 3],
    pub(crate) oom_score_adj: Option<OomScoreAdj>,
    pub(crate) chroot_directory: Option<RawFd>,
    pub(crate) working_directory: RawFd,
    pub(crate) identity: Option<&'a Identity>,
    pub(crate) exec: &'a ExecArguments,
    /// Where a failed step is reported (shared with the creator).
    report: *const Report,
    /// The cgroup to join by writing `cgroup.procs`, when the child is not
    /// created in it.
    joins_cgroup: Option<RawFd>,
}

impl<'a> Child<'a> {
    /// A child with these descriptors and values (see the fields).
    pub(crate) fn new(
        cgroup: Option<RawFd>,
        standard: [RawFd; 3],
        oom_score_adj: Option<OomScoreAdj>,
        chroot_directory: Option<RawFd>,
        working_directory: RawFd,
        identity: Option<&'a Identity>,
        exec: &'a ExecArguments,
    ) -> Self {
        Child {
            cgroup,
            standard,
            oom_score_adj,
            chroot_directory,
            working_directory,
            identity,
            exec,
            report: std::ptr::null(),
            joins_cgroup: None,
        }
    }
}

/// Highest signal number (glibc's `NSIG - 1`, the real-time signals
/// included).
const LAST_SIGNAL: libc::c_int = 64;

impl Child<'_> {
    /// The child's code, on its own stack. Returns (becoming the exit
    /// status) only when a step failed; the failure is written first.
    extern "C" fn main(arg: *mut c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Child` the parent passed to
        // `clone::create`, alive until the child has exec'd or exited.
        let child = unsafe { &*(arg as *const Child) };
        match child.set_up_and_exec() {
            Ok(never) => match never {},
            Err((step, errno)) => {
                // SAFETY: the creator's shared report page, mapped for the
                // life of the process.
                unsafe { &*child.report }.set(step as u8, errno);
                127
            }
        }
    }

    /// Only glibc wrappers that are plain system calls are used (no
    /// `setuid`, whose wrapper would signal the copies of the runner's
    /// threads it believes exist; raw system calls instead).
    fn set_up_and_exec(&self) -> Result<std::convert::Infallible, (SpawnStep, i32)> {
        // SAFETY (for the calls below): each is a system call on
        // descriptors and pointers the parent keeps valid; none allocates
        // or takes a lock.
        unsafe {
            if let Some(cgroup) = self.joins_cgroup {
                let procs = libc::openat(
                    cgroup,
                    c"cgroup.procs".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                check(SpawnStep::JoinCgroup, procs)?;
                // "0" moves the writing process: this child.
                let written = libc::write(procs, b"0".as_ptr().cast(), 1);
                libc::close(procs);
                check(SpawnStep::JoinCgroup, written as libc::c_int)?;
            }
            reset_signal_handlers();
            // The action leads its own process group, so that termination
            // reaches every process it forked without touching the runner.
            check(SpawnStep::Setup, libc::setpgid(0, 0))?;
            for (target, &source) in self.standard.iter().enumerate() {
                let target = target as RawFd;
                // The runner's own 0, 1 and 2 are always open (Rust's
                // runtime makes sure at startup), so no source is one of
                // the targets and dup2 clears close-on-exec.
                check(SpawnStep::Setup, libc::dup2(source, target))?;
            }
            if let Some(value) = &self.oom_score_adj {
                let value = value.bytes();
                let fd = libc::open(
                    PROC_SELF_OOM_SCORE_ADJ.as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                check(SpawnStep::OomScoreAdj, fd)?;
                let written = libc::write(fd, value.as_ptr().cast(), value.len());
                libc::close(fd);
                check(SpawnStep::OomScoreAdj, written as libc::c_int)?;
            }
            if let Some(root) = self.chroot_directory {
                check(SpawnStep::Chroot, libc::fchdir(root))?;
                check(SpawnStep::Chroot, libc::chroot(c".".as_ptr()))?;
            }
            // After a chroot this descriptor still names the working
            // directory, which lies inside the new root.
            check(
                SpawnStep::WorkingDirectory,
                libc::fchdir(self.working_directory),
            )?;
            if let Some(identity) = self.identity {
                // Groups first, then gid, then uid: after setuid we would
                // no longer be allowed to change the others.
                let groups = &identity.additional_group_ids;
                let calls = [
                    libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                    libc::syscall(libc::SYS_setgid, identity.group_id),
                    libc::syscall(libc::SYS_setuid, identity.user_id),
                ];
                for result in calls {
                    check(SpawnStep::Identity, result as libc::c_int)?;
                }
            }
            // The parent blocked every signal before creating us.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execve(
                self.exec.program.as_ptr(),
                self.exec.argv(),
                self.exec.envp(),
            );
            Err((SpawnStep::Exec, errno()))
        }
    }
}

/// Puts every signal the runner handles back to its default disposition,
/// and SIGPIPE too (Rust's runtime ignores it, and ignored signals stay
/// ignored across exec). Other ignored signals stay ignored, as they were
/// when the runner was started.
///
/// # Safety
/// For the child only: changes the calling process's dispositions.
unsafe fn reset_signal_handlers() {
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: zeroed sigaction is a valid "default" disposition; the
        // calls only read and write these locals.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            // glibc's own signals (SIGCANCEL, SIGSETXID) fail with EINVAL
            // and keep their value; nothing sends them to the child.
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            let handled =
                current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
            if handled || (signal == libc::SIGPIPE && current.sa_sigaction == libc::SIG_IGN) {
                let default: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `Err((step, errno))` when a system call returned -1.
fn check(step: SpawnStep, result: libc::c_int) -> Result<(), (SpawnStep, i32)> {
    if result == -1 {
        Err((step, errno()))
    } else {
        Ok(())
    }
}
