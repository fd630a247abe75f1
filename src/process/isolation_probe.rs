//! The startup probe of `isolation`: one action created, at startup, in
//! the configured namespaces by the path every action takes (the spawn
//! server when there is one, the same clone method, the same steps), so
//! that a kernel or a seccomp profile that refuses them stops the runner
//! once, naming the field and the kernel's answer, instead of failing
//! every action, and no action ever runs with less isolation than
//! configured. Made inside a user namespace (a runner without
//! CAP_SYS_ADMIN), a refusal is explained with its cause and its fix
//! ([`super::user_namespace::explain`]).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::call::CallGone;
use super::clone::Method;
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
        field: &'static str,
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
                field: named.unwrap_or_else(|| first_field(isolation)),
                hint: hint(&error, isolation),
                error,
            })
        }
        Err(Probed::Refused(error)) => Err(IsolationProbeError::Refused {
            field: field_of(error.step, isolation),
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

async fn run(
    isolation: Arc<Isolation>,
    method: Method,
    server: Option<&SpawnServer>,
    scratch: &Path,
) -> Result<(), Probed> {
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
        working_directory: open_directory(scratch)?,
        chroot_directory: None,
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
    let child = spawn(&spec, method, server, &mut call, None)
        .await
        .map_err(Probed::Refused)?;
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
