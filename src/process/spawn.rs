//! Building an action's process: what happens between fork and exec.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::reaper::{reaper, SpawnedChild};

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
    /// The child's standard output (its standard input is `/dev/null`).
    pub stdout: File,
    /// The child's standard error.
    pub stderr: File,
    /// `cgroup.procs` of the action's cgroup: the child moves itself in
    /// before anything else, so no instruction of the action runs outside.
    pub cgroup_procs: Option<File>,
    /// Value the child writes to its own `oom_score_adj` (the runner lowers
    /// its own; actions get back what the runner started with).
    pub oom_score_adj: Option<i32>,
}

/// Where a process sets its own OOM-killer preference. Opened by the child
/// after fork, so `self` is the child.
pub const DEFAULT_PROC_SELF_OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// Starts the process described by `spec` as the leader of a new process
/// group, registered with the reaper.
///
/// The final exec is an `execve` of our own, made at the end of the
/// pre-exec hook: std would `execvp`, whose fallback of running a file that
/// fails with ENOEXEC through `/bin/sh` would hide a broken executable
/// behind exit code 127 instead of reporting it, as bb_runner does.
pub fn spawn(spec: ProcessSpec) -> Result<SpawnedChild, SpawnError> {
    let setup_error = |source| SpawnError {
        step: SpawnStep::Setup,
        source,
    };
    let exec = ExecArguments::new(&spec).map_err(|source| SpawnError {
        step: SpawnStep::Exec,
        source,
    })?;
    // The child reports which step failed through this pipe (std only
    // passes the errno on), so that a host fault such as a refused cgroup
    // join is not blamed on the request like a missing program.
    let (step_reader, step_writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|errno| setup_error(errno.into()))?;
    // Actions read end-of-file from stdin, as from /dev/null, but from a
    // pipe whose write end is closed: the runner must not depend on /dev,
    // which a bare root (a chroot, an image FROM scratch) may lack.
    let (stdin, stdin_writer) = std::io::pipe().map_err(setup_error)?;
    drop(stdin_writer);
    let mut command = Command::new(&spec.program);
    command
        .env_clear()
        .stdin(stdin)
        .stdout(spec.stdout)
        .stderr(spec.stderr)
        // The action leads its own process group, so that termination
        // reaches every process it forked without touching the runner.
        .process_group(0);

    let report_fd = step_writer.as_raw_fd();
    let cgroup_procs = spec.cgroup_procs.as_ref().map(|file| file.as_raw_fd());
    let oom_score_adj = spec.oom_score_adj.map(|value| {
        let path = CString::new(DEFAULT_PROC_SELF_OOM_SCORE_ADJ).expect("no NUL in a constant");
        (path, value.to_string().into_bytes())
    });
    let working_directory = spec.working_directory.as_raw_fd();
    let chroot_directory = spec.chroot_directory.as_ref().map(|fd| fd.as_raw_fd());
    let identity = spec.identity.clone();
    let dot = CString::new(".").expect("no NUL in a literal");
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe functions may be called. It calls only raw
    // system calls (write, open, close, fchdir, chroot, setgroups, setgid,
    // setuid, execve) on values prepared before the fork, and allocates
    // nothing. The descriptors it uses are kept open by `spec` and
    // `step_writer`, which outlive `spawn` below; the argv and envp arrays
    // point into `exec`, which the closure owns.
    unsafe {
        command.pre_exec(move || {
            // Runs `result` as `step`: on failure, the step goes to the
            // parent through the pipe before the errno goes through std's.
            let step = |step: SpawnStep, result: io::Result<()>| {
                if result.is_err() {
                    let code = step as u8;
                    libc::write(report_fd, (&code as *const u8).cast(), 1);
                }
                result
            };
            if let Some(procs) = cgroup_procs {
                // "0" moves the writing process: this child.
                let written = libc::write(procs, b"0".as_ptr().cast(), 1);
                step(SpawnStep::JoinCgroup, check_write(written))?;
            }
            if let Some((path, value)) = &oom_score_adj {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                step(SpawnStep::OomScoreAdj, check(fd))?;
                let written = libc::write(fd, value.as_ptr().cast(), value.len());
                libc::close(fd);
                step(SpawnStep::OomScoreAdj, check_write(written))?;
            }
            if let Some(root) = chroot_directory {
                step(SpawnStep::Chroot, check(libc::fchdir(root)))?;
                step(SpawnStep::Chroot, check(libc::chroot(dot.as_ptr())))?;
            }
            // After a chroot this descriptor still names the working
            // directory, which lies inside the new root.
            step(
                SpawnStep::WorkingDirectory,
                check(libc::fchdir(working_directory)),
            )?;
            if let Some(identity) = &identity {
                // Groups first, then gid, then uid: after setuid we would
                // no longer be allowed to change the others.
                let groups = &identity.additional_group_ids;
                step(
                    SpawnStep::Identity,
                    check(libc::setgroups(groups.len(), groups.as_ptr())),
                )?;
                step(SpawnStep::Identity, check(libc::setgid(identity.group_id)))?;
                step(SpawnStep::Identity, check(libc::setuid(identity.user_id)))?;
            }
            libc::execve(exec.program.as_ptr(), exec.argv(), exec.envp());
            // execve only returns on failure; std reports this error from
            // spawn(). No step byte: an empty pipe means the exec failed.
            Err(io::Error::last_os_error())
        });
    }
    let spawned = reaper().spawn(&mut command);
    drop(spec.working_directory);
    drop(spec.chroot_directory);
    drop(spec.cgroup_procs);
    // Only the (dead) child could still hold the write end; with ours
    // closed, reading cannot block.
    drop(step_writer);
    spawned.map_err(|source| {
        let mut code = [0u8; 1];
        let step = match nix::unistd::read(&step_reader, &mut code) {
            Ok(1) => SpawnStep::from_code(code[0]),
            _ => SpawnStep::Exec,
        };
        SpawnError { step, source }
    })
}

/// The step between fork and exec that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SpawnStep {
    /// Preparing the spawn in the runner, before the fork.
    Setup = 1,
    JoinCgroup = 2,
    OomScoreAdj = 3,
    Chroot = 4,
    WorkingDirectory = 5,
    Identity = 6,
    /// The execve of the program itself.
    Exec = 7,
}

impl SpawnStep {
    fn from_code(code: u8) -> Self {
        match code {
            1 => SpawnStep::Setup,
            2 => SpawnStep::JoinCgroup,
            3 => SpawnStep::OomScoreAdj,
            4 => SpawnStep::Chroot,
            5 => SpawnStep::WorkingDirectory,
            6 => SpawnStep::Identity,
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

/// NUL-terminated argv and envp arrays, built before the fork so that the
/// child allocates nothing. Pointers are stored as `usize` (same size and
/// representation on Linux) so that the closure owning them is Send.
struct ExecArguments {
    program: CString,
    _strings: Vec<CString>,
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
        let argv_strings = spec
            .arguments
            .iter()
            .map(|argument| cstring(argument.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        let env_strings = spec
            .environment
            .iter()
            .map(|(key, value)| cstring(format!("{key}={value}")))
            .collect::<io::Result<Vec<_>>>()?;
        // Moving a CString does not move its heap buffer, so these pointers
        // stay valid for as long as `_strings` lives.
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr() as usize)
                .chain(std::iter::once(0))
                .collect::<Vec<usize>>()
        };
        let argv = pointers(&argv_strings);
        let envp = pointers(&env_strings);
        let mut strings = argv_strings;
        strings.extend(env_strings);
        Ok(ExecArguments {
            program,
            _strings: strings,
            argv,
            envp,
        })
    }

    fn argv(&self) -> *const *const libc::c_char {
        self.argv.as_ptr() as *const *const libc::c_char
    }

    fn envp(&self) -> *const *const libc::c_char {
        self.envp.as_ptr() as *const *const libc::c_char
    }
}

fn check_write(result: libc::ssize_t) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
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
            cgroup_procs: None,
            oom_score_adj: None,
        }
    }

    /// Why it matters: a missing program is the request's fault (the build
    /// fails), a step before exec failing is the host's (retry elsewhere);
    /// the caller can only tell them apart by the step.
    #[test]
    fn a_failing_exec_is_reported_as_the_exec_step() {
        let dir = tempfile::tempdir().unwrap();
        let err = spawn(spec(dir.path(), "/nonexistent/program")).unwrap_err();
        assert_eq!(err.step, SpawnStep::Exec);
        assert_eq!(err.source.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn a_failing_step_before_exec_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A descriptor that cannot be written: the cgroup join fails.
        let mut joining = spec(dir.path(), "/bin/true");
        joining.cgroup_procs = Some(File::open(dir.path().join("stdout")).unwrap());
        let err = spawn(joining).unwrap_err();
        assert_eq!(err.step, SpawnStep::JoinCgroup, "{err}");
        assert!(err.to_string().contains("cgroup"), "{err}");

        // A working directory that is not a directory.
        let mut entering = spec(dir.path(), "/bin/true");
        entering.working_directory = nix::fcntl::open(
            &dir.path().join("stderr"),
            nix::fcntl::OFlag::O_PATH,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let err = spawn(entering).unwrap_err();
        assert_eq!(err.step, SpawnStep::WorkingDirectory, "{err}");
    }

    #[test]
    fn a_successful_spawn_runs_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn(spec(dir.path(), "/bin/true")).unwrap();
        let exit = child.exit.blocking_recv().unwrap();
        assert_eq!(exit.exit_code(), Some(0));
    }
}
