//! The startup probe of `isolation`: one action created, at startup, in
//! the configured namespaces by the path every action takes (the spawn
//! server when there is one, the same clone method, the same steps), so
//! that a kernel or a seccomp profile that refuses them stops the runner
//! once, naming the field and the kernel's answer, instead of failing
//! every action, and no action ever runs with less isolation than
//! configured. Made inside a user namespace (a runner without
//! CAP_SYS_ADMIN), a refusal is explained with its cause and its fix
//! ([`super::user_namespace::explain`]).
//!
//! With mounts in a chrooted action's input root (`inputRootMounts`,
//! `isolation.dev`, `pid`'s `/proc` there), the probe chroots into an
//! input root of its own holding just their mountpoints, so that a mount
//! the kernel refuses (an unknown `filesystemType`, a bind source that is
//! missing) stops the runner naming its entry, not every Run. Its
//! program cannot run in that root (there is no dynamic loader there), so
//! there reaching the exec is success: every mount was made.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::call::CallGone;
use super::clone::Method;
use super::input_root_mounts::{InputRootMounts, MountKind};
use super::isolation::{temporary_directory_for_child, Isolation};
use super::spawn::spawn;
use super::spawn_server::SpawnServer;
use super::spec::{ProcessSpec, SpawnError, SpawnStep};
use super::user_namespace::{self, HostFacts};

/// How long the probe may take; a kernel that takes longer to create a
/// process has a problem an operator should see.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the configured isolation cannot be had here.
#[derive(Debug, thiserror::Error)]
pub enum IsolationProbeError {
    /// The kernel refused a step (an errno, from the child or the clone).
    #[error("{field}: the runner cannot give actions this isolation here: {error}{hint}")]
    Refused {
        field: String,
        error: SpawnError,
        /// What commonly causes it, and the fix.
        hint: String,
    },
    /// The probe could not be prepared, or its action did not succeed.
    #[error("{field}: the startup probe of isolation failed: {message}")]
    Failed {
        field: &'static str,
        message: String,
    },
}

/// Says what commonly refuses namespaces; inside a user namespace, what
/// of the host ([`HostFacts`]) refused it and how to change it.
fn hint(error: &SpawnError, isolation: &Isolation) -> String {
    let errno = error.source.raw_os_error().unwrap_or(0);
    if isolation.user_namespace.is_some() {
        let host = HostFacts::read(Path::new(super::DEFAULT_PROC_ROOT));
        let made = " (the runner lacks CAP_SYS_ADMIN, so actions' namespaces are made inside a \
                    user namespace)";
        return match user_namespace::explain(error.step, errno, &host) {
            Some(explanation) => format!("{made}: {explanation}"),
            None => made.into(),
        };
    }
    match (error.step, errno) {
        (SpawnStep::Create, libc::EPERM | libc::ENOSYS) => {
            " (container runtimes' default seccomp profiles refuse every CLONE_NEW* flag \
             without CAP_SYS_ADMIN)"
                .into()
        }
        _ => String::new(),
    }
}

/// The field of the configuration that asks for what `step` does.
fn field_of(step: SpawnStep, isolation: &Isolation) -> &'static str {
    match step {
        SpawnStep::Loopback => "isolation.network",
        SpawnStep::Hostname => "isolation.hostname",
        SpawnStep::PrivateTmp => "isolation.tmp",
        SpawnStep::PrivateShm => "isolation.ipc",
        SpawnStep::Proc | SpawnStep::Init | SpawnStep::InputRootProc => "isolation.pid",
        SpawnStep::InputRootDev => "isolation.dev",
        SpawnStep::InputRootMount => "inputRootMounts",
        _ => first_field(isolation),
    }
}

/// The first option `isolation` sets, as its path in the file.
fn first_field(isolation: &Isolation) -> &'static str {
    if isolation.pid {
        "isolation.pid"
    } else if isolation.network_off {
        "isolation.network"
    } else if isolation.private_tmp {
        "isolation.tmp"
    } else if isolation.ipc {
        "isolation.ipc"
    } else if isolation.hostname.is_some() {
        "isolation.hostname"
    } else {
        "inputRootMounts"
    }
}

/// Each option of `isolation` alone, to tell which one the kernel refuses.
fn alone(isolation: &Isolation) -> Vec<Isolation> {
    let none = || Isolation {
        user_namespace: isolation.user_namespace.clone(),
        spawn_server_may_enter: isolation.spawn_server_may_enter,
        ..Isolation::default()
    };
    let mut options = Vec::new();
    if isolation.pid {
        options.push(Isolation {
            pid: true,
            ..none()
        });
    }
    if isolation.network_off {
        options.push(Isolation {
            network_off: true,
            ..none()
        });
    }
    if isolation.private_tmp {
        options.push(Isolation {
            private_tmp: true,
            ..none()
        });
    }
    if isolation.ipc {
        options.push(Isolation {
            ipc: true,
            ..none()
        });
    }
    if isolation.hostname.is_some() {
        options.push(Isolation {
            hostname: isolation.hostname.clone(),
            ..none()
        });
    }
    options
}

/// Creates one action in the namespaces of `isolation`, with `method`
/// through `server` when there is one, in a temporary directory made
/// beneath `directory` (the build directory, where actions' temporary
/// directories are) and removed after. The action is this executable
/// printing its version.
pub async fn probe(
    isolation: &Arc<Isolation>,
    method: Method,
    server: Option<&SpawnServer>,
    directory: &Path,
) -> Result<(), IsolationProbeError> {
    let scratch = Scratch::new(directory).map_err(|message| IsolationProbeError::Failed {
        field: first_field(isolation),
        message,
    })?;
    let result = match run(isolation.clone(), method, server, &scratch.0).await {
        Err(Probed::Refused(error)) if error.step == SpawnStep::Create => {
            // Which option does the clone refuse?
            let mut named = None;
            for option in alone(isolation) {
                if let Err(Probed::Refused(_)) =
                    run(Arc::new(option.clone()), method, server, &scratch.0).await
                {
                    named = Some(first_field(&option));
                    break;
                }
            }
            Err(IsolationProbeError::Refused {
                field: named.unwrap_or_else(|| first_field(isolation)).into(),
                hint: hint(&error, isolation),
                error,
            })
        }
        Err(Probed::Refused(error))
            if matches!(
                error.step,
                SpawnStep::InputRootMount | SpawnStep::InputRootDev | SpawnStep::InputRootProc
            ) =>
        {
            // Which mount does the kernel refuse? They are made in order:
            // the first whose prefix fails.
            let field = failing_mount(isolation, method, server, &scratch.0)
                .await
                .unwrap_or_else(|| field_of(error.step, isolation).into());
            Err(IsolationProbeError::Refused {
                field,
                hint: hint(&error, isolation),
                error,
            })
        }
        Err(Probed::Refused(error)) => Err(IsolationProbeError::Refused {
            field: field_of(error.step, isolation).into(),
            hint: hint(&error, isolation),
            error,
        }),
        Err(Probed::Failed(message)) => Err(IsolationProbeError::Failed {
            field: first_field(isolation),
            message,
        }),
        Ok(()) => Ok(()),
    };
    drop(scratch);
    result
}

enum Probed {
    Refused(SpawnError),
    Failed(String),
}

/// The field of the first mount in the input root that the kernel
/// refuses, found by probing ever longer prefixes of them.
async fn failing_mount(
    isolation: &Isolation,
    method: Method,
    server: Option<&SpawnServer>,
    scratch: &Path,
) -> Option<String> {
    let mounts = isolation.input_root_mounts.as_ref()?;
    for end in 1..=mounts.mounts.len() {
        let prefix = Isolation {
            input_root_mounts: Some(Arc::new(InputRootMounts {
                mounts: mounts.mounts[..end].to_vec(),
            })),
            ..isolation.clone()
        };
        if let Err(Probed::Refused(_)) = run(Arc::new(prefix), method, server, scratch).await {
            return Some(mounts.mounts[end - 1].origin.setting());
        }
    }
    None
}

/// An input root beneath `scratch` (emptied first) holding the
/// mountpoints of `mounts`: a file where a bind's source is not a
/// directory, a directory everywhere else.
fn input_root_with_mountpoints(
    scratch: &Path,
    mounts: &InputRootMounts,
) -> Result<PathBuf, Probed> {
    use std::os::unix::ffi::OsStrExt;
    let root = scratch.join("root");
    let made = |path: &Path, error: std::io::Error| {
        Probed::Failed(format!("cannot make {}: {error}", path.display()))
    };
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(|error| made(&root, error))?;
    }
    std::fs::create_dir(&root).map_err(|error| made(&root, error))?;
    for mount in &mounts.mounts {
        let path = root.join(std::ffi::OsStr::from_bytes(mount.mountpoint.as_bytes()));
        let a_file = match &mount.kind {
            MountKind::Bind { source, .. } => {
                !Path::new(std::ffi::OsStr::from_bytes(source.as_bytes())).is_dir()
            }
            _ => false,
        };
        let result = match (a_file, path.parent()) {
            (true, Some(parent)) => std::fs::create_dir_all(parent)
                .and_then(|()| std::fs::File::create(&path).map(drop)),
            _ => std::fs::create_dir_all(&path),
        };
        result.map_err(|error| made(&path, error))?;
    }
    Ok(root)
}

async fn run(
    isolation: Arc<Isolation>,
    method: Method,
    server: Option<&SpawnServer>,
    scratch: &Path,
) -> Result<(), Probed> {
    let root = match &isolation.input_root_mounts {
        Some(mounts) => Some(input_root_with_mountpoints(scratch, mounts)?),
        None => None,
    };
    let open_directory = |path: &Path| -> Result<OwnedFd, Probed> {
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|error| Probed::Failed(format!("cannot open {}: {error}", path.display())))
    };
    let output = |name: &str| {
        std::fs::File::create(scratch.join(name))
            .map_err(|error| Probed::Failed(format!("cannot create {name}: {error}")))
    };
    let spec = ProcessSpec {
        program: super::spawn_server::DEFAULT_PROC_SELF_EXE.into(),
        arguments: vec!["rbe-runner".into(), "--version".into()],
        environment: Vec::new(),
        working_directory: open_directory(root.as_deref().unwrap_or(scratch))?,
        chroot_directory: root.as_deref().map(open_directory).transpose()?,
        identity: None,
        stdin: None,
        stdout: output("stdout")?,
        stderr: output("stderr")?,
        cgroup: None,
        oom_score_adj: None,
        descriptor_limit: None,
        temporary_directory: match isolation.private_tmp {
            true => Some(
                temporary_directory_for_child(
                    open_directory(scratch)?.as_fd(),
                    isolation.user_namespace.is_some(),
                )
                .map_err(|error| {
                    Probed::Refused(SpawnError {
                        step: SpawnStep::PrivateTmp,
                        source: error,
                    })
                })?,
            ),
            false => None,
        },
        isolation: Some(isolation),
    };
    let (_forever, dropped) = oneshot::channel();
    let mut call = CallGone::new(dropped, Some(tokio::time::Instant::now() + PROBE_TIMEOUT));
    let child = match spawn(&spec, method, server, &mut call, None).await {
        Ok(child) => child,
        // Chrooted, reaching the exec is success (see the module).
        Err(error) if root.is_some() && error.step == SpawnStep::Exec => return Ok(()),
        Err(error) => return Err(Probed::Refused(error)),
    };
    let exit = tokio::time::timeout(PROBE_TIMEOUT, child.exit)
        .await
        .map_err(|_| {
            Probed::Failed(format!(
                "the probe's action did not exit within {PROBE_TIMEOUT:?}"
            ))
        })?
        .map_err(|_| Probed::Failed("the probe's action's exit was lost".into()))?;
    if exit.exit_code() != Some(0) {
        let stderr = std::fs::read_to_string(scratch.join("stderr")).unwrap_or_default();
        return Err(Probed::Failed(format!(
            "its action ended with code {:?}, signal {:?}: {}",
            exit.exit_code(),
            exit.signal(),
            crate::bounded::quoted(stderr.trim())
        )));
    }
    Ok(())
}

/// A directory of the probe's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(beneath: &Path) -> Result<Scratch, String> {
        let template = beneath.join(".rbe-runner-isolation-probe.XXXXXX");
        nix::unistd::mkdtemp(&template)
            .map(Scratch)
            .map_err(|error| {
                format!(
                    "cannot make a directory beneath {}: {error}",
                    beneath.display()
                )
            })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
