//! The child between its creation and exec, and creating it in this
//! process.
//!
//! The child is created as a copy of its creator ([`super::clone`]): the
//! spawn server ([`super::spawn_server`]), or the runner without one. It
//! says it exists, then sets itself up with raw system calls on values
//! prepared beforehand: its cgroup (unless created in it), signal
//! dispositions, process group, descriptors, `oom_score_adj`, descriptor
//! limit, root, directory and identity; with isolation, first its
//! namespaces ([`super::isolation`]) and, with a PID namespace, the
//! action's init ([`super::init`]). Everything it says goes into its status pipe
//! ([`super::status`]): no allocation in the child, and no one waits for
//! its exec but whoever reads that pipe.

use std::ffi::c_void;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

use super::call::SpawnDeadline;
use super::clone::{self, Creator, Method};
use super::init;
use super::input_root_mounts::ActionDirectories;
use super::isolation::{self, Isolation};
use super::spec::{DescriptorLimit, ExecArguments, Identity, OomScoreAdj, Parent, SpawnStep};
use super::status::StatusWriter;
use super::user_namespace::{self, MapWriter, MapsWritten};

/// Where a process sets its own OOM-killer preference. Opened by the child,
/// so `self` is the child.
pub const DEFAULT_PROC_SELF_OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// [`DEFAULT_PROC_SELF_OOM_SCORE_ADJ`] for the child, which may not
/// allocate a C string.
const PROC_SELF_OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

/// Creates the child described by `child` with `method` in this process,
/// reporting to the status pipe whose write end is `status`, and returns
/// its pid as soon as it exists. `creator` is held by the caller from
/// making the status pipe until it has closed its own write end.
pub(crate) fn create(
    creator: &Creator,
    child: &Child,
    method: Method,
    parent: Parent,
    status: RawFd,
) -> io::Result<i32> {
    // In a user namespace whose maps the creator writes, the child waits
    // on this until they are.
    let user_namespace = child
        .isolation
        .and_then(|isolation| isolation.user_namespace.as_ref());
    let maps_written = match user_namespace {
        Some(namespace) if namespace.writer == MapWriter::Creator => Some(MapsWritten::new()?),
        _ => None,
    };
    let argument = ChildArgument {
        child: *child,
        status: StatusWriter(status),
        joins_cgroup: match method {
            Method::Clone3 => None,
            Method::Clone => child.cgroup,
        },
        // A copy of the spawn server is small enough to be the init; a
        // copy of the runner is not.
        init_execs: parent == Parent::Creator,
        maps_written: maps_written.as_ref().map(MapsWritten::ends),
        method,
        waits_for_init: -1,
        says_pid_on: StatusWriter(status),
    };
    let created_in = match method {
        Method::Clone3 => child.cgroup,
        Method::Clone => None,
    };
    let previous = clone::block_all_signals();
    let namespaces = child.isolation.map_or(0, Isolation::clone_flags);
    // SAFETY: `ChildArgument::main` keeps the contract of `Creator::create`
    // (raw system calls on values prepared above, no allocation, no locks,
    // no unwinding), and `argument` is valid during the call; the child
    // reads its own copy of it.
    let pid = unsafe {
        creator.create_in_namespaces(
            method,
            created_in,
            parent == Parent::CreatorsParent,
            namespaces,
            ChildArgument::main,
            &argument as *const ChildArgument as *mut c_void,
        )
    };
    clone::restore_signals(&previous);
    if let (Ok(pid), Some(maps_written), Some(namespace)) = (&pid, maps_written, user_namespace) {
        maps_written.write_for(Path::new(super::DEFAULT_PROC_ROOT), *pid, namespace);
    }
    pid
}

/// Everything the child uses, prepared before it is created, as raw
/// descriptors and pointers into the creator's memory, of which the child
/// has a copy (descriptors too: the creator may close its own once the
/// child exists).
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
    /// The call's deadline: past it, the child exits instead of exec'ing.
    pub(crate) deadline: Option<SpawnDeadline>,
    pub(crate) descriptor_limit: Option<DescriptorLimit>,
    /// The namespaces of the action's own, if any.
    pub(crate) isolation: Option<&'a Isolation>,
    /// The action's `temporary_directory`, for a private `/tmp`.
    pub(crate) temporary_directory: Option<RawFd>,
    /// With a PID namespace, the write end of the pipe through which its
    /// init reports the action's exit ([`super::exit_report`]).
    pub(crate) report: Option<RawFd>,
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
            deadline: None,
            descriptor_limit: None,
            isolation: None,
            temporary_directory: None,
            report: None,
        }
    }

    /// The same child, in the namespaces of `isolation` (none when it
    /// isolates nothing), with `temporary_directory` for a private `/tmp`.
    pub(crate) fn with_isolation(
        mut self,
        isolation: Option<&'a Isolation>,
        temporary_directory: Option<RawFd>,
    ) -> Self {
        self.isolation = isolation.filter(|isolation| isolation.is_enabled());
        self.temporary_directory = temporary_directory;
        self
    }

    /// The same child, its init (with a PID namespace) reporting the
    /// action's exit to `report`.
    pub(crate) fn with_report(mut self, report: Option<RawFd>) -> Self {
        self.report = report;
        self
    }

    /// Whether the child will be the init of its action, in a PID
    /// namespace of its own: then it needs a report pipe.
    pub(crate) fn is_init(&self) -> bool {
        self.isolation.is_some_and(|isolation| isolation.pid)
    }

    /// The same child, exiting instead of exec'ing once `deadline` passed.
    pub(crate) fn with_deadline(mut self, deadline: Option<SpawnDeadline>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The same child, setting `RLIMIT_NOFILE` to `limit` before exec.
    pub(crate) fn with_descriptor_limit(mut self, limit: Option<DescriptorLimit>) -> Self {
        self.descriptor_limit = limit;
        self
    }
}

/// What the child's code is handed: the child, and what only the process
/// creating it knows. Built by [`create`] on its own stack, which the child
/// sees as it was when it was created (its memory is a copy).
struct ChildArgument<'a> {
    child: Child<'a>,
    /// The write end of the child's status pipe.
    status: StatusWriter,
    /// The cgroup to join by writing `cgroup.procs`, when the child is not
    /// created in it.
    joins_cgroup: Option<RawFd>,
    /// With a PID namespace, whether the init execs this executable
    /// rather than staying this copy of its creator (see [`init`]).
    init_execs: bool,
    /// In a user namespace whose maps the creator writes: the pipe on
    /// which it says they are (see [`user_namespace::enter`]).
    maps_written: Option<[RawFd; 2]>,
    /// How it was created.
    method: Method,
    /// The action under an init that execs (see [`init`]): the pipe on
    /// which the init says it is ready; -1 for every other child, which
    /// makes the same call (failing at once with EBADF), so that both
    /// fault in the same pages before their exec.
    waits_for_init: RawFd,
    /// Where the child says its pid: `status`, except for the action
    /// under an init (see [`init`]), whose init says it: there -1, so that
    /// the action makes the very calls a plain child makes (one fails with
    /// EBADF), and so faults in the same pages before its exec.
    says_pid_on: StatusWriter,
}

/// Highest signal number (glibc's `NSIG - 1`, the real-time signals
/// included).
const LAST_SIGNAL: libc::c_int = 64;

// Everything below runs in the child, between its creation and exec: raw
// system calls on values prepared beforehand, no allocation, no lock, no
// unwinding (see `Creator::create`). Each `unsafe` block is one call; its
// SAFETY comment names what the call relies on.

impl ChildArgument<'_> {
    /// The child's code, on its own stack. Returns (becoming the exit
    /// status) only when a step failed; the failure is written first.
    extern "C" fn main(arg: *mut c_void) -> libc::c_int {
        // SAFETY: `arg` is the `ChildArgument` that `create` passed to
        // `Creator::create`, non-null and aligned; the child's memory is a
        // copy of its creator's, so it stays valid for the child's life.
        let argument = unsafe { &*(arg as *const ChildArgument) };
        if let Err(errno) = init::wait_until_ready(argument.waits_for_init) {
            argument.status.failed(SpawnStep::Init, errno);
            return 127;
        }
        // First words, before anything can fail: whoever reads the pipe
        // learns the pid even when the spawn server does not say it. In a
        // PID namespace of its own the child is 1 to itself: its pid as
        // the runner sees it is read from the host's /proc.
        match argument.child.isolation.filter(|isolation| isolation.pid) {
            None => argument.says_pid_on.started(),
            Some(_) => match isolation::host_pid() {
                Ok(pid) => argument.status.started_as(pid),
                Err(errno) => {
                    argument.status.failed(SpawnStep::Init, errno);
                    return 127;
                }
            },
        }
        match argument.set_up_and_exec() {
            Ok(never) => match never {},
            Err((step, errno)) => {
                argument.status.failed(step, errno);
                127
            }
        }
    }

    /// Only glibc wrappers that are plain system calls are used (no
    /// `setuid`, whose wrapper would signal the copies of the runner's
    /// threads it believes exist; raw system calls instead). Every
    /// descriptor and pointer used is the child's copy of the creator's.
    /// With a PID namespace, this process becomes the init and the action
    /// goes on in [`ChildArgument::action_main`].
    fn set_up_and_exec(&self) -> Result<std::convert::Infallible, (SpawnStep, i32)> {
        let child = &self.child;
        if let Some(cgroup) = self.joins_cgroup {
            // "0" moves the writing process: this child.
            write_file(cgroup, c"cgroup.procs", b"0", SpawnStep::JoinCgroup)?;
        }
        if let Some(isolation) = child.isolation {
            if let Some(namespace) = &isolation.user_namespace {
                user_namespace::enter(
                    namespace,
                    self.maps_written,
                    isolation.mounts(),
                    child.temporary_directory.filter(|_| isolation.private_tmp),
                )?;
            }
            let directories = ActionDirectories {
                root: child.chroot_directory,
                working_directory: child.working_directory,
            };
            let host_proc = isolation::enter(isolation, child.temporary_directory, directories)?;
            if isolation.hands_over_action() {
                // Returns only the failure to fork the action.
                return Err(self.hand_over());
            }
            if let Some(host_proc) = host_proc {
                let report = child.report.ok_or((SpawnStep::Init, libc::EINVAL))?;
                // An init that execs is readable until it says it is
                // ready: the action waits for its word (see `init`).
                let ready = if self.init_execs {
                    Some(init::ready_pipe().map_err(|errno| (SpawnStep::Init, errno))?)
                } else {
                    None
                };
                // The action enters here as every child does, so that it
                // runs the very code a plain child runs (see `init`).
                let action = self.forked_action(ready.map_or(-1, |[reader, _]| reader));
                let start = init::ActionStart {
                    host_proc,
                    status: self.status,
                    main: ChildArgument::main,
                    arg: &action as *const ChildArgument as *mut c_void,
                    method: self.method,
                    ready: ready.map(|[reader, writer]| (reader, writer)),
                };
                // Returns only the failure to start the init.
                return Err(init::start_action(
                    &start,
                    report,
                    child.standard[0],
                    self.init_execs,
                ));
            }
        }
        self.set_up_action_and_exec()
    }

    /// The argument of the action that this child forks once it has set
    /// up the namespaces (under an init, or handed over): a plain child
    /// whose namespaces and cgroup are set already, which does not say its
    /// own pid (its forker says it, as the runner sees it; the action
    /// makes the plain child's call all the same, on descriptor -1) and
    /// waits for `waits_for_init` (-1: nothing to wait for).
    fn forked_action(&self, waits_for_init: RawFd) -> Self {
        ChildArgument {
            child: Child {
                isolation: None,
                ..self.child
            },
            status: self.status,
            joins_cgroup: None,
            init_execs: self.init_execs,
            maps_written: None,
            method: self.method,
            waits_for_init,
            says_pid_on: StatusWriter(-1),
        }
    }

    /// Forks the action as a sibling (a child of the runner, as this
    /// process is) once this process has set up the namespaces they
    /// share, says the action's pid and exits. Returns only the failure
    /// to fork. The spawn server sets most such namespaces up itself
    /// instead, and creates a plain child in them
    /// ([`Isolation::entered_by_spawn_server`]): this serves the runner's
    /// own path and what the server leaves to the child.
    ///
    /// Why: the setup's code ran here, faulting in pages of this
    /// executable and of libc (64 KiB around each fault), which the
    /// action's maxrss would count: 0.1 to 0.8 MiB more than a plain
    /// action's for `/bin/true`, depending on where the build put that
    /// code. A fork copies no page table entries of the executable's
    /// code, so the action, entering [`ChildArgument::main`] as a plain
    /// child whose namespaces and cgroup are set already, faults in the
    /// pages a plain child does, as the action under an init does. The
    /// runner waits for it as for any child of its own (its pidfd, its
    /// own rusage), and reaps this process, which exits at once (see
    /// `spawn::follow`).
    fn hand_over(&self) -> (SpawnStep, i32) {
        let action = self.forked_action(-1);
        let arg = &action as *const ChildArgument as *mut c_void;
        // SAFETY: `ChildArgument::main` keeps the contract of a child
        // between clone and exec (raw system calls on values prepared
        // beforehand, no allocation, no locks, no unwinding), on its own
        // copy of this single-threaded process, every signal blocked.
        match unsafe { clone::fork_into(self.method, ChildArgument::main, arg, true) } {
            Ok(pid) => {
                self.status.action_started(pid);
                // Its copy of the status channel closed now, the channel
                // ends at the action's exec, not after this process's
                // address space is torn down (an exit closes descriptors
                // last).
                // SAFETY: close takes only a descriptor number of this
                // process, used by nothing after it.
                unsafe { libc::close(self.status.0) };
                // SAFETY: _exit ends this process without running anything
                // of its creator's (no atexit handlers, no unwinding).
                unsafe { libc::_exit(0) }
            }
            Err(errno) => (SpawnStep::Handover, errno),
        }
    }

    /// The action's own setup, after its namespaces: signals, process
    /// group, descriptors, OOM score, limits, root, directory, identity,
    /// then exec. Never inlined: a plain child and the action under an
    /// init run the very same code, so that each faults in the same pages
    /// of this executable before its exec, which its maxrss counts.
    #[inline(never)]
    fn set_up_action_and_exec(&self) -> Result<std::convert::Infallible, (SpawnStep, i32)> {
        let child = &self.child;
        // SAFETY: this is the child (or the action under its init), a
        // single thread whose dispositions are its own (created without
        // CLONE_SIGHAND), not its creator's.
        unsafe { reset_signal_handlers() };
        // The action leads its own process group, so that termination
        // reaches every process it forked without touching the runner.
        // SAFETY: setpgid takes only numbers; no memory is passed.
        check(SpawnStep::Setup, unsafe { libc::setpgid(0, 0) })?;
        for (target, &source) in child.standard.iter().enumerate() {
            let target = target as RawFd;
            // The runner's own 0, 1 and 2 are always open (Rust's
            // runtime makes sure at startup), so no source is one of
            // the targets and dup2 clears close-on-exec.
            // SAFETY: dup2 takes only descriptor numbers; nothing in the
            // child uses the replaced 0, 1 and 2 before exec.
            check(SpawnStep::Setup, unsafe { libc::dup2(source, target) })?;
        }
        if let Some(value) = &child.oom_score_adj {
            write_file(
                libc::AT_FDCWD,
                PROC_SELF_OOM_SCORE_ADJ,
                value.bytes(),
                SpawnStep::OomScoreAdj,
            )?;
        }
        if let Some(limit) = child.descriptor_limit {
            let limit = libc::rlimit {
                rlim_cur: limit.soft,
                rlim_max: limit.hard,
            };
            // Lowering the soft limit is always allowed; done before the
            // identity switch all the same.
            // SAFETY: setrlimit reads only `limit`, a valid local.
            let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
            check(SpawnStep::DescriptorLimit, set)?;
        }
        if let Some(root) = child.chroot_directory {
            // SAFETY: fchdir takes only a descriptor number (the creator's
            // open root).
            check(SpawnStep::Chroot, unsafe { libc::fchdir(root) })?;
            // SAFETY: the path is a NUL-terminated literal.
            check(SpawnStep::Chroot, unsafe { libc::chroot(c".".as_ptr()) })?;
        }
        // After a chroot this descriptor still names the working
        // directory, which lies inside the new root.
        // SAFETY: fchdir takes only a descriptor number (the creator's open
        // working directory).
        let entered = unsafe { libc::fchdir(child.working_directory) };
        check(SpawnStep::WorkingDirectory, entered)?;
        if let Some(identity) = child.identity {
            // Groups first, then gid, then uid: after setuid we would
            // no longer be allowed to change the others.
            let groups = &identity.additional_group_ids;
            let calls = [
                // SAFETY: `groups` points to `groups.len()` group ids (u32,
                // the kernel's gid_t) in the child's copy of the creator's memory; the
                // kernel only reads them.
                unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) },
                // SAFETY: setgid takes only a number.
                unsafe { libc::syscall(libc::SYS_setgid, identity.group_id) },
                // SAFETY: setuid takes only a number.
                unsafe { libc::syscall(libc::SYS_setuid, identity.user_id) },
            ];
            for result in calls {
                check(SpawnStep::Identity, result as libc::c_int)?;
            }
        }
        self.still_wanted()?;
        // The parent blocked every signal before creating us.
        // SAFETY: all-zero bytes are a valid `sigset_t` (plain integers).
        let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigemptyset writes only `none`, a valid local.
        unsafe { libc::sigemptyset(&mut none) };
        // SAFETY: sigprocmask reads only `none`; a null old set is allowed.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) };
        let exec = child.exec;
        // SAFETY: the program is a NUL-terminated string and argv and envp
        // null-terminated arrays of them, all built by `ExecArguments`
        // before the child was created; the child has its copy of them.
        unsafe { libc::execve(exec.program.as_ptr(), exec.argv(), exec.envp()) };
        Err((SpawnStep::Exec, errno()))
    }
}

impl ChildArgument<'_> {
    /// The last step before exec: the call's deadline has not passed, and
    /// the runner has not cancelled the spawn (its call is over).
    fn still_wanted(&self) -> Result<(), (SpawnStep, i32)> {
        if self.child.deadline.is_some_and(SpawnDeadline::passed) {
            return Err((SpawnStep::Deadline, libc::ETIMEDOUT));
        }
        if self.status.cancelled() {
            return Err((SpawnStep::Cancelled, libc::ECANCELED));
        }
        Ok(())
    }
}

/// Writes `bytes` into the file at `path` beneath `directory`
/// (`AT_FDCWD`, or an open directory), as `step`.
fn write_file(
    directory: RawFd,
    path: &std::ffi::CStr,
    bytes: &[u8],
    step: SpawnStep,
) -> Result<(), (SpawnStep, i32)> {
    // SAFETY: `path` is NUL-terminated; `directory` is a number the kernel
    // checks.
    let fd = unsafe { libc::openat(directory, path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    check(step, fd)?;
    // SAFETY: the kernel reads `bytes.len()` bytes from a live slice.
    let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    // SAFETY: `fd` was opened above and nothing else refers to it.
    unsafe { libc::close(fd) };
    check(step, written as libc::c_int)
}

/// Puts every signal the runner handles back to its default disposition,
/// and SIGPIPE too (Rust's runtime ignores it, and ignored signals stay
/// ignored across exec). Other ignored signals stay ignored, as they were
/// when the runner was started.
///
/// # Safety
/// For the child only: changes the calling process's dispositions.
unsafe fn reset_signal_handlers() {
    // SAFETY: all-zero bytes are a valid `sigaction`: SIG_DFL, no flags,
    // an empty mask.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: all-zero bytes are a valid `sigaction`.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // glibc's own signals (SIGCANCEL, SIGSETXID) fail with EINVAL
        // and keep their value; nothing sends them to the child.
        // SAFETY: with a null new action, sigaction only writes the current
        // one into `current`, a valid local.
        if unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) } != 0 {
            continue;
        }
        let handled =
            current.sa_sigaction != libc::SIG_DFL && current.sa_sigaction != libc::SIG_IGN;
        if handled || (signal == libc::SIGPIPE && current.sa_sigaction == libc::SIG_IGN) {
            // SAFETY: sigaction reads only `default`, a valid local; changing
            // this process's dispositions is what the caller allows.
            unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
        }
    }
}

/// The errno of the last system call that failed. The helpers of the
/// code between clone and exec (here, `isolation`, `input_root_mounts`,
/// `user_namespace`, `init`) share these two.
pub(super) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `Err((step, errno))` when a system call returned -1.
pub(super) fn check(step: SpawnStep, result: libc::c_int) -> Result<(), (SpawnStep, i32)> {
    if result == -1 {
        Err((step, errno()))
    } else {
        Ok(())
    }
}
