//! Building an action's process: what happens between its creation and
//! exec.
//!
//! The child is created as a copy of its creator ([`super::clone`]): the
//! spawn server ([`super::spawn_server`]), or the runner without one. It
//! sets itself up with raw system calls on values prepared here: its
//! cgroup (unless created in it), signal dispositions, process group,
//! descriptors, `oom_score_adj`, root, directory and identity. A step that
//! fails is written into the shared [`Report`], which the parent reads once
//! it resumes: no pipe, no allocation in the child.

use std::ffi::{c_void, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::clone::{self, Method, Report};
use super::reaper::{reaper, SpawnedChild};
use super::spawn_server::{ServerGone, SpawnServer};

/// The identity an action runs as (`runCommandsAs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id set with `setuid`.
    pub user_id: u32,
    /// The primary group id set with `setgid`.
    pub group_id: u32,
    /// The supplementary groups set with `setgroups`; empty drops them all.
    pub additional_group_ids: Vec<u32>,
}

/// Everything needed to start one action.
#[derive(Debug)]
pub struct ProcessSpec {
    /// Path handed to execve: absolute, or relative to the working
    /// directory (always containing a slash, so no PATH search happens).
    pub program: String,
    /// argv, including argv[0] exactly as the request gave it.
    pub arguments: Vec<String>,
    /// The complete environment.
    pub environment: Vec<(String, String)>,
    /// Directory the child starts in (`O_PATH` descriptor).
    pub working_directory: OwnedFd,
    /// When set, the child chroots into this directory first.
    pub chroot_directory: Option<OwnedFd>,
    /// When set, the child drops to this identity before exec.
    pub identity: Option<Identity>,
    /// The child's standard output (its standard input is an empty pipe).
    pub stdout: File,
    /// The child's standard error.
    pub stderr: File,
    /// The directory of the action's cgroup (opened for reading): the child
    /// is created in it, or joins it before anything else, so no
    /// instruction of the action runs outside.
    pub cgroup: Option<OwnedFd>,
    /// Value the child writes to its own `oom_score_adj` (the runner lowers
    /// its own; actions get back what the runner started with).
    pub oom_score_adj: Option<i32>,
}

/// Where a process sets its own OOM-killer preference. Opened by the child,
/// so `self` is the child.
pub const DEFAULT_PROC_SELF_OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// [`DEFAULT_PROC_SELF_OOM_SCORE_ADJ`] for the child, which may not
/// allocate a C string.
const PROC_SELF_OOM_SCORE_ADJ: &std::ffi::CStr = c"/proc/self/oom_score_adj";

/// Starts the process described by `spec` with `method`, as the leader of
/// a new process group, registered with the reaper. The spawn server
/// creates it when there is one (see [`super::spawn_server`]); without
/// one, or once it is gone, the runner creates it itself.
///
/// The exec is a plain `execve`: no PATH search and no fallback of running
/// a file that fails with ENOEXEC through `/bin/sh`, which would hide a
/// broken executable behind exit code 127 instead of reporting it, as
/// bb_runner does.
pub fn spawn(
    spec: ProcessSpec,
    method: Method,
    server: Option<&SpawnServer>,
) -> Result<SpawnedChild, SpawnError> {
    let exec = ExecArguments::new(&spec).map_err(|source| SpawnError {
        step: SpawnStep::Exec,
        source,
    })?;
    // Actions read end-of-file from stdin, as from /dev/null, but from a
    // pipe whose write end is closed: the runner must not depend on /dev,
    // which a bare root (a chroot, an image FROM scratch) may lack.
    let (stdin, stdin_writer) = std::io::pipe().map_err(|source| SpawnError {
        step: SpawnStep::Setup,
        source,
    })?;
    drop(stdin_writer);
    let stdin: OwnedFd = stdin.into();
    let child = Child::new(
        spec.cgroup.as_ref().map(AsRawFd::as_raw_fd),
        [
            stdin.as_raw_fd(),
            spec.stdout.as_raw_fd(),
            spec.stderr.as_raw_fd(),
        ],
        spec.oom_score_adj.map(OomScoreAdj::new),
        spec.chroot_directory.as_ref().map(AsRawFd::as_raw_fd),
        spec.working_directory.as_raw_fd(),
        spec.identity.as_ref(),
        &exec,
    );
    let holding = reaper().holding_children();
    let created = match server.map(|server| server.create(&child, method)) {
        Some(Ok(created)) => created,
        Some(Err(ServerGone::BeforeRequest(error))) => {
            tracing::error!(%error, "the spawn server is gone; the runner creates actions' processes itself from now on");
            create(&child, method, Parent::Creator)
        }
        Some(Err(ServerGone::DuringRequest(error))) => {
            tracing::error!(%error, "the spawn server is gone; the runner creates actions' processes itself from now on");
            // It may have died after creating this child, which would then
            // run unknown to us: never create it a second time. With a
            // cgroup of its own, discarding the placement kills it.
            return Err(SpawnError {
                step: SpawnStep::Create,
                source: io::Error::other(format!(
                    "the spawn server stopped during this request ({error})"
                )),
            });
        }
        Some(Err(ServerGone::Earlier)) | None => create(&child, method, Parent::Creator),
    };
    let pid = created.pid.map_err(|source| SpawnError {
        // With CLONE_INTO_CGROUP, the kernel's refusal to place the child
        // is the only failure particular to this spawn.
        step: if method == Method::Clone3 && child.cgroup.is_some() {
            SpawnStep::JoinCgroup
        } else {
            SpawnStep::Create
        },
        source,
    })?;
    if let Some((step, errno)) = created.failed {
        // The child has exited; reap it while the reaper is held off, so
        // that it never reaches the reaper as an orphan.
        let mut status = 0;
        // SAFETY: our own child; `status` is a valid local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        drop(holding);
        return Err(SpawnError {
            step,
            source: io::Error::from_raw_os_error(errno),
        });
    }
    Ok(holding.register(pid))
}

/// Whose child the new process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// The process creating it (the runner).
    Creator,
    /// The creator's parent (`CLONE_PARENT`): the spawn server creates
    /// children of the runner.
    CreatorsParent,
}

/// What creating a child gave.
#[derive(Debug)]
pub struct Created {
    /// The child's pid, or why it could not be created.
    pub pid: Result<i32, io::Error>,
    /// The step that failed in the child, with its errno: the child has
    /// then exited without executing the program.
    pub failed: Option<(SpawnStep, i32)>,
}

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

/// The value a child writes to its `oom_score_adj`, formatted before it is
/// created (the child may not allocate).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OomScoreAdj {
    text: [u8; 12],
    length: usize,
}

impl OomScoreAdj {
    pub(crate) fn new(value: i32) -> Self {
        let formatted = value.to_string();
        let mut text = [0u8; 12];
        let length = formatted.len().min(text.len());
        text[..length].copy_from_slice(&formatted.as_bytes()[..length]);
        OomScoreAdj { text, length }
    }

    pub(crate) fn value(&self) -> i32 {
        std::str::from_utf8(&self.text[..self.length])
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(0)
    }

    fn bytes(&self) -> &[u8] {
        &self.text[..self.length]
    }
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

/// The step between creating the child and exec that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SpawnStep {
    /// Preparing the spawn, in the runner or in the child (its process
    /// group and descriptors).
    Setup = 1,
    JoinCgroup = 2,
    OomScoreAdj = 3,
    Chroot = 4,
    WorkingDirectory = 5,
    Identity = 6,
    /// The execve of the program itself.
    Exec = 7,
    /// Creating the child process.
    Create = 8,
}

impl SpawnStep {
    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            1 => SpawnStep::Setup,
            2 => SpawnStep::JoinCgroup,
            3 => SpawnStep::OomScoreAdj,
            4 => SpawnStep::Chroot,
            5 => SpawnStep::WorkingDirectory,
            6 => SpawnStep::Identity,
            8 => SpawnStep::Create,
            _ => SpawnStep::Exec,
        }
    }
}

impl std::fmt::Display for SpawnStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpawnStep::Setup => "preparing the spawn",
            SpawnStep::JoinCgroup => "moving the action into its cgroup",
            SpawnStep::OomScoreAdj => "setting the action's oom_score_adj",
            SpawnStep::Chroot => "chrooting into the input root",
            SpawnStep::WorkingDirectory => "entering the working directory",
            SpawnStep::Identity => "switching to runCommandsAs's identity",
            SpawnStep::Exec => "executing the program",
            SpawnStep::Create => "creating the process",
        })
    }
}

/// A failed spawn: which step, and the error.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct SpawnError {
    /// The step of preparing the child that failed.
    pub step: SpawnStep,
    /// The error that step got from the kernel.
    #[source]
    pub source: io::Error,
}

/// NUL-terminated argv and envp arrays, built before the child is created
/// so that it allocates nothing. Pointers are stored as `usize` (same size and
/// representation on Linux) so that the closure owning them is Send.
pub(crate) struct ExecArguments {
    pub(crate) program: CString,
    pub(crate) arguments: Vec<CString>,
    pub(crate) environment: Vec<CString>,
    argv: Vec<usize>,
    envp: Vec<usize>,
}

impl ExecArguments {
    fn new(spec: &ProcessSpec) -> io::Result<Self> {
        let cstring = |text: String| {
            CString::new(text).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "argument or environment contains NUL",
                )
            })
        };
        let program = cstring(spec.program.clone())?;
        let arguments = spec
            .arguments
            .iter()
            .map(|argument| cstring(argument.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        let environment = spec
            .environment
            .iter()
            .map(|(key, value)| cstring(format!("{key}={value}")))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self::of(program, arguments, environment))
    }

    /// The vectors of `arguments` and `environment` (`KEY=VALUE`).
    pub(crate) fn of(program: CString, arguments: Vec<CString>, environment: Vec<CString>) -> Self {
        // Moving a CString does not move its heap buffer, so these pointers
        // stay valid for as long as the strings live.
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr() as usize)
                .chain(std::iter::once(0))
                .collect::<Vec<usize>>()
        };
        let argv = pointers(&arguments);
        let envp = pointers(&environment);
        ExecArguments {
            program,
            arguments,
            environment,
            argv,
            envp,
        }
    }

    fn argv(&self) -> *const *const libc::c_char {
        self.argv.as_ptr() as *const *const libc::c_char
    }

    fn envp(&self) -> *const *const libc::c_char {
        self.envp.as_ptr() as *const *const libc::c_char
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, program: &str) -> ProcessSpec {
        let working_directory = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        ProcessSpec {
            program: program.into(),
            arguments: vec![program.into()],
            environment: vec![],
            working_directory,
            chroot_directory: None,
            identity: None,
            stdout: File::create(dir.join("stdout")).unwrap(),
            stderr: File::create(dir.join("stderr")).unwrap(),
            cgroup: None,
            oom_score_adj: None,
        }
    }

    /// Both ways of creating children for `test`, the clone3 one only
    /// where this machine has it (otherwise that half is skipped).
    fn methods(test: &str) -> Vec<Method> {
        let mut methods = vec![Method::Clone];
        match clone::probe(Method::Clone3, None) {
            Ok(()) => methods.push(Method::Clone3),
            Err(error) => crate::test_support::skip(
                test,
                &format!("its clone3 half: clone3 is unavailable here ({error})"),
            ),
        }
        methods
    }

    /// Why it matters: a missing program is the request's fault (the build
    /// fails), a step before exec failing is the host's (retry elsewhere);
    /// the caller can only tell them apart by the step.
    #[test]
    fn a_failing_exec_is_reported_as_the_exec_step() {
        for method in methods("a_failing_exec_is_reported_as_the_exec_step") {
            let dir = tempfile::tempdir().unwrap();
            let err = spawn(spec(dir.path(), "/nonexistent/program"), method, None).unwrap_err();
            assert_eq!(err.step, SpawnStep::Exec, "{method}");
            assert_eq!(err.source.raw_os_error(), Some(libc::ENOENT), "{method}");
        }
    }

    #[test]
    fn a_failing_step_before_exec_is_named() {
        for method in methods("a_failing_step_before_exec_is_named") {
            let dir = tempfile::tempdir().unwrap();
            // A directory that is not a cgroup: the child cannot join it.
            let mut joining = spec(dir.path(), "/bin/true");
            joining.cgroup = Some(
                nix::fcntl::open(
                    dir.path(),
                    nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
                    nix::sys::stat::Mode::empty(),
                )
                .unwrap(),
            );
            let err = spawn(joining, method, None).unwrap_err();
            assert_eq!(err.step, SpawnStep::JoinCgroup, "{method}: {err}");
            assert!(err.to_string().contains("cgroup"), "{method}: {err}");

            // A working directory that is not a directory.
            let mut entering = spec(dir.path(), "/bin/true");
            entering.working_directory = nix::fcntl::open(
                &dir.path().join("stderr"),
                nix::fcntl::OFlag::O_PATH,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap();
            let err = spawn(entering, method, None).unwrap_err();
            assert_eq!(err.step, SpawnStep::WorkingDirectory, "{method}: {err}");
        }
    }

    #[test]
    fn a_successful_spawn_runs_the_program() {
        for method in methods("a_successful_spawn_runs_the_program") {
            let dir = tempfile::tempdir().unwrap();
            let child = spawn(spec(dir.path(), "/bin/true"), method, None).unwrap();
            let exit = child.exit.blocking_recv().unwrap();
            assert_eq!(exit.exit_code(), Some(0), "{method}");
        }
    }

    /// Why it matters: the child shares the runner's memory, so a handler
    /// of the runner's must never run in it, and an action must start as
    /// from a shell: nothing blocked, SIGPIPE not ignored (Rust ignores it
    /// in the runner), its own process group, stdin at end of file.
    #[test]
    fn the_action_starts_with_clean_signals_its_own_group_and_empty_stdin() {
        for method in methods("the_action_starts_with_clean_signals_its_own_group_and_empty_stdin")
        {
            let dir = tempfile::tempdir().unwrap();
            let mut shell = spec(dir.path(), "/bin/sh");
            shell.arguments = vec![
                "/bin/sh".into(),
                "-c".into(),
                "grep -E '^Sig(Blk|Ign)' /proc/self/status; \
                 ps -o pgid= -p $$ | tr -d ' '; echo $$; cat; echo end"
                    .into(),
            ];
            let _previous = clone::block_all_signals();
            let child = spawn(shell, method, None).unwrap();
            let pid = child.pid;
            let exit = child.exit.blocking_recv().unwrap();
            assert_eq!(exit.exit_code(), Some(0), "{method}");
            let output = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
            let lines: Vec<&str> = output.lines().collect();
            assert_eq!(lines[0], "SigBlk:\t0000000000000000", "{method}: {output}");
            // Signals ignored by whoever started us stay ignored, as with
            // a shell; SIGPIPE, which Rust ignores, is back to default.
            let ours = std::fs::read_to_string("/proc/self/status").unwrap();
            let ignored_here = ours
                .lines()
                .find_map(|line| line.strip_prefix("SigIgn:\t"))
                .map(|mask| u64::from_str_radix(mask, 16).unwrap())
                .unwrap();
            assert_ne!(ignored_here & (1 << (libc::SIGPIPE - 1)), 0);
            let expected = ignored_here & !(1 << (libc::SIGPIPE - 1));
            assert_eq!(
                lines[1],
                format!("SigIgn:\t{expected:016x}"),
                "{method}: {output}"
            );
            assert_eq!(lines[2], pid.to_string(), "{method}: group, {output}");
            assert_eq!(lines[3], pid.to_string(), "{method}: {output}");
            assert_eq!(lines[4], "end", "{method}: {output}");
        }
    }
}
