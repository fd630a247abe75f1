//! What a spawn is asked for and what it answers, shared by the front door
//! ([`super::spawn`]), the child ([`super::child`]) and the spawn server
//! ([`super::spawn_server`]), so that none of them imports another for it:
//! the action's description ([`ProcessSpec`], [`Identity`]), the values
//! prepared from it before the child exists (`ExecArguments`,
//! `OomScoreAdj`), and the answer (the [`SpawnStep`] that failed,
//! [`SpawnError`]).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

pub use crate::resource_limits::DescriptorLimit;

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
    /// The child's standard input; `None` for one that reads end of file
    /// (an empty pipe), as every action's.
    pub stdin: Option<OwnedFd>,
    /// The child's standard output.
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
    /// `RLIMIT_NOFILE` the child sets before exec (the runner raises its
    /// own soft limit; actions get back the one it started with).
    pub descriptor_limit: Option<DescriptorLimit>,
    /// The namespaces of the action's own (`isolation`); `None`: the
    /// runner's.
    pub isolation: Option<std::sync::Arc<super::isolation::Isolation>>,
    /// The action's `temporary_directory` (`O_PATH`), mounted on `/tmp`
    /// and `/var/tmp` with a private `/tmp`.
    pub temporary_directory: Option<OwnedFd>,
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
    pub(crate) fn new(spec: &ProcessSpec) -> io::Result<Self> {
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

    pub(crate) fn argv(&self) -> *const *const libc::c_char {
        self.argv.as_ptr() as *const *const libc::c_char
    }

    pub(crate) fn envp(&self) -> *const *const libc::c_char {
        self.envp.as_ptr() as *const *const libc::c_char
    }
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

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.text[..self.length]
    }
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
    /// The call's deadline had passed before the exec: nothing ran.
    Deadline = 9,
    /// The call was over (cancelled) before the exec: nothing ran.
    Cancelled = 10,
    /// Restoring the starting soft `RLIMIT_NOFILE` before the exec.
    DescriptorLimit = 11,
    /// Making the mounts of the action's mount namespace private, so that
    /// nothing it mounts reaches the host (`isolation`).
    MountPropagation = 12,
    /// Bringing up the loopback of the action's network namespace
    /// (`isolation.network`).
    Loopback = 13,
    /// Setting the host name of the action's UTS namespace
    /// (`isolation.hostname`).
    Hostname = 14,
    /// Mounting the `temporary_directory` on `/tmp` and `/var/tmp`
    /// (`isolation.tmp`).
    PrivateTmp = 15,
    /// Mounting a private tmpfs on `/dev/shm` (`isolation.ipc`).
    PrivateShm = 16,
    /// Mounting the PID namespace's `/proc` and its masks (`isolation.pid`).
    Proc = 17,
    /// Starting the PID namespace's init and the action under it
    /// (`isolation.pid`).
    Init = 18,
    /// Mounting the action's `/proc` in its input root (`isolation.pid`
    /// with `chrootIntoInputRoot`).
    InputRootProc = 30,
    /// Mounting the minimal `/dev` in the input root (`isolation.dev`).
    InputRootDev = 31,
    /// Mounting an `inputRootMounts` entry.
    InputRootMount = 32,
    /// Writing the uid and gid maps of the action's user namespace, or
    /// waiting for the runner to (a runner without CAP_SYS_ADMIN).
    UserNamespace = 19,
    /// Forking the action from the process that set up its namespaces
    /// (`isolation` without `pid`; see `super::child`).
    Handover = 20,
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
            9 => SpawnStep::Deadline,
            10 => SpawnStep::Cancelled,
            11 => SpawnStep::DescriptorLimit,
            12 => SpawnStep::MountPropagation,
            13 => SpawnStep::Loopback,
            14 => SpawnStep::Hostname,
            15 => SpawnStep::PrivateTmp,
            16 => SpawnStep::PrivateShm,
            17 => SpawnStep::Proc,
            18 => SpawnStep::Init,
            30 => SpawnStep::InputRootProc,
            31 => SpawnStep::InputRootDev,
            32 => SpawnStep::InputRootMount,
            19 => SpawnStep::UserNamespace,
            20 => SpawnStep::Handover,
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
            SpawnStep::Deadline => "the call's deadline passed before the exec",
            SpawnStep::Cancelled => "the call was over before the exec",
            SpawnStep::DescriptorLimit => "restoring the action's descriptor limit (RLIMIT_NOFILE)",
            SpawnStep::MountPropagation => {
                "making the action's mounts private (isolation: mount namespace)"
            }
            SpawnStep::Loopback => "bringing up the action's loopback (isolation.network)",
            SpawnStep::Hostname => "setting the action's host name (isolation.hostname)",
            SpawnStep::PrivateTmp => {
                "mounting the temporary_directory on /tmp and /var/tmp (isolation.tmp)"
            }
            SpawnStep::PrivateShm => "mounting a private /dev/shm (isolation.ipc)",
            SpawnStep::Proc => "mounting the action's /proc (isolation.pid)",
            SpawnStep::Init => "starting the action's init (isolation.pid)",
            SpawnStep::InputRootProc => {
                "mounting the action's /proc in the input root (isolation.pid)"
            }
            SpawnStep::InputRootDev => {
                "mounting the minimal /dev in the input root (isolation.dev)"
            }
            SpawnStep::InputRootMount => "mounting an inputRootMounts entry in the input root",
            SpawnStep::Handover => {
                "forking the action from the process that set up its namespaces (isolation)"
            }
            SpawnStep::UserNamespace => {
                "mapping the runner's uid and gid in the action's user namespace (isolation \
                 without CAP_SYS_ADMIN)"
            }
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
