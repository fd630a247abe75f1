//! Preparing an action from its request: the request checked, every path
//! it names resolved beneath the build directory, its environment, its
//! program found, its outputs created (and removed again if the action
//! never starts). Nothing here starts a process or touches a cgroup.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use super::mountpoints::check_mountpoints;
use super::observer::{OutputFile, OutputFiles};
use crate::bounded::quoted;
use crate::build_directory::{
    open_directory_beneath, BuildDirectory, CreatedFile, Filesystem, ResolvedDirectory,
};
use crate::exec_limit::{current_exec_limit, ExecSize};
use crate::fault::RunnerError;
use crate::process::input_root_mounts::InputRootMounts;
use crate::process::isolation::temporary_directory_for_child;
use crate::process::lookup::find_program;
use crate::proto::runner::RunRequest;

/// How actions are prepared, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Add `TMPDIR=<temporary directory>` unless the request sets TMPDIR.
    pub set_tmpdir_environment_variable: bool,
    /// Chroot into the input root before exec.
    pub chroot_into_input_root: bool,
    /// `isolation.tmp: 'private'`: the action's `temporary_directory` is
    /// mounted on `/tmp` (required, and TMPDIR, when set, is `/tmp`).
    pub private_tmp: bool,
    /// The mounts a chrooted action gets in its input root, whose
    /// mountpoints the input root must have.
    pub input_root_mounts: Option<std::sync::Arc<InputRootMounts>>,
    /// Actions' namespaces are made inside a user namespace (a runner
    /// without CAP_SYS_ADMIN): the child gets the directory itself for its
    /// private `/tmp`, not a detached mount.
    pub private_tmp_in_user_namespace: bool,
}

/// Where actions are prepared: decided once at startup from the build
/// directory's filesystem.
///
/// Preparing is a dozen system calls on the build directory (`openat2`
/// of four directories, looking up the program, creating stdout and
/// stderr). On a filesystem of this machine's memory or disks they take
/// microseconds, less than handing the work to another thread and back,
/// so they run on the async worker that serves the call. On FUSE (bb_worker's
/// virtual build directory, which may fetch from the CAS first), NFS or
/// anything not known to be local, each may wait on another process or
/// the network for as long as it likes, and must not hold up the async
/// workers that serve every other call: they go to the blocking pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preparation {
    /// On the async worker thread, without a hand-off.
    OnWorker,
    /// On the runtime's blocking pool.
    OnBlockingPool,
}

impl Preparation {
    /// The choice for a build directory on `filesystem`.
    pub fn for_filesystem(filesystem: Filesystem) -> Preparation {
        if filesystem.is_local() {
            Preparation::OnWorker
        } else {
            Preparation::OnBlockingPool
        }
    }

    /// The choice for `build_directory`.
    pub fn of(build_directory: &BuildDirectory) -> Preparation {
        Preparation::for_filesystem(build_directory.filesystem())
    }

    /// Says at startup where actions are prepared and why;
    /// `blocking_threads` is the blocking pool's size.
    pub fn log(build_directory: &BuildDirectory, blocking_threads: usize) {
        let filesystem = build_directory.filesystem();
        match Preparation::for_filesystem(filesystem) {
            Preparation::OnWorker => tracing::info!(
                %filesystem,
                "preparing actions on the async workers: the build directory is on {filesystem}, \
                 a local filesystem"
            ),
            Preparation::OnBlockingPool => tracing::info!(
                %filesystem,
                blocking_threads,
                "preparing actions on the blocking pool of at most {blocking_threads} threads: \
                 the build directory is on {filesystem}, which may block"
            ),
        }
    }
}

/// An action ready to be spawned.
#[derive(Debug)]
pub struct Prepared {
    /// Path handed to execve (see [`crate::process::spec::ProcessSpec`]).
    pub program: String,
    /// The complete environment.
    pub environment: Vec<(String, String)>,
    /// Directory the child starts in.
    pub working_directory: OwnedFd,
    /// The input root, when the child chroots into it.
    pub chroot_directory: Option<OwnedFd>,
    /// The temporary directory, when it is mounted on the action's `/tmp`.
    pub temporary_directory: Option<OwnedFd>,
    /// The child's standard output.
    pub stdout: File,
    /// The child's standard error.
    pub stderr: File,
    /// What was created for the outputs, to remove if it never starts.
    pub outputs: CreatedOutputs,
}

/// The output files created for an action.
#[derive(Debug, Default)]
pub struct CreatedOutputs {
    files: Vec<CreatedFile>,
}

impl CreatedOutputs {
    /// The stdout and stderr files created for `request`, as the
    /// action-started fact names them (empty without them).
    pub fn described(&self, request: &RunRequest) -> OutputFiles {
        let identity = |index: usize| self.files.get(index).and_then(CreatedFile::identity);
        OutputFiles {
            stdout: OutputFile {
                path: request.stdout_path.clone(),
                identity: identity(0),
            },
            stderr: OutputFile {
                path: request.stderr_path.clone(),
                identity: identity(1),
            },
        }
    }

    /// Removes the files of an action that never started, unless someone
    /// replaced them meanwhile. Needs no new descriptor. Blocking.
    pub fn remove(&self) {
        for file in &self.files {
            if let Err(err) = file.remove() {
                tracing::warn!(%err, "cannot remove the output of an action that did not start");
            }
        }
    }
}

/// Checks what the request asks to pass to the program before an action
/// exists for it: a program named, strings that `execve` can pass (no NUL
/// byte, none too long, not too large together), environment variables
/// that reach the program as named. Paths are checked when resolved.
pub fn check_request(request: &RunRequest) -> Result<(), RunnerError> {
    if request.arguments.is_empty() {
        return Err(RunnerError::InvalidArgument(
            "arguments is empty: the first argument must name the program to run".into(),
        ));
    }
    if let Some(index) = request.arguments.iter().position(|a| a.contains('\0')) {
        return Err(RunnerError::InvalidArgument(format!(
            "arguments[{index}] contains a NUL byte, which execve cannot pass"
        )));
    }
    for (key, value) in &request.environment_variables {
        check_environment_variable(key, value)?;
    }
    ExecSize::of(&request.arguments, &request.environment_variables)
        .and_then(|size| size.check(current_exec_limit()))
        .map_err(|err| {
            RunnerError::InvalidArgument(format!("the request cannot be executed: {err}"))
        })
}

/// The environment reaches the program as `KEY=VALUE` strings, split at
/// the first `=`: a key that is empty or holds `=` or NUL would arrive as
/// a different variable (`A=B` → `A` with value `B=…`), or not at all.
fn check_environment_variable(key: &str, value: &str) -> Result<(), RunnerError> {
    let problem = if key.is_empty() {
        "is empty"
    } else if key.contains('=') {
        "contains '=', so the program would see a different variable"
    } else if key.contains('\0') {
        "contains a NUL byte"
    } else if value.contains('\0') {
        "has a value containing a NUL byte"
    } else {
        return Ok(());
    };
    Err(RunnerError::InvalidArgument(format!(
        "environment_variables key {} {problem}",
        quoted(key)
    )))
}

/// Resolves everything `request` names and creates its outputs. Blocking.
/// The request must have passed [`check_request`] (before an action
/// exists).
pub fn prepare(
    build_directory: &BuildDirectory,
    options: &PrepareOptions,
    request: &RunRequest,
) -> Result<Prepared, RunnerError> {
    let input_root =
        build_directory.open_directory(&request.input_root_directory, "input_root_directory")?;
    // An empty working directory is the input root itself: unless the
    // child also chroots into it, one descriptor serves (one `openat2` and
    // one `close` fewer per action).
    let (working_directory, chroot_directory) = if options.chroot_into_input_root {
        if let Some(mounts) = &options.input_root_mounts {
            check_mountpoints(input_root.fd.as_fd(), mounts)?;
        }
        let working_directory = open_directory_beneath(
            input_root.fd.as_fd(),
            &request.working_directory,
            "working_directory",
        )?;
        (working_directory, Some(input_root.fd))
    } else if request.working_directory.is_empty() {
        (input_root.fd, None)
    } else {
        let working_directory = open_directory_beneath(
            input_root.fd.as_fd(),
            &request.working_directory,
            "working_directory",
        )?;
        (working_directory, None)
    };

    // Directories the runner itself does not use are still checked, so that
    // no request path, used or not, may point out of the build directory.
    let temporary_directory = optional_directory(
        build_directory,
        &request.temporary_directory,
        "temporary_directory",
    )?;
    optional_directory(
        build_directory,
        &request.server_logs_directory,
        "server_logs_directory",
    )?;

    let mut environment: BTreeMap<String, String> = request
        .environment_variables
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if options.private_tmp && temporary_directory.is_none() {
        return Err(RunnerError::InvalidArgument(
            "temporary_directory is empty; isolation.tmp 'private' mounts it on /tmp and needs one"
                .into(),
        ));
    }
    if let (true, Some(temporary)) = (
        options.set_tmpdir_environment_variable,
        &temporary_directory,
    ) {
        // With a private /tmp, the action sees its temporary directory
        // there.
        environment.entry("TMPDIR".into()).or_insert_with(|| {
            if options.private_tmp {
                "/tmp".into()
            } else {
                temporary.path.to_string_lossy().into_owned()
            }
        });
    }

    // The private /tmp: the directory as a mount the child can attach in
    // its own mount namespace.
    let temporary_directory = match temporary_directory.filter(|_| options.private_tmp) {
        Some(temporary) => Some(
            temporary_directory_for_child(
                temporary.fd.as_fd(),
                options.private_tmp_in_user_namespace,
            )
            .map_err(|error| {
                RunnerError::Internal(format!(
                    "cannot make a mount of temporary_directory {} for the action's /tmp: {error}",
                    quoted(&request.temporary_directory)
                ))
            })?,
        ),
        None => None,
    };
    let root = chroot_directory.as_ref().map(AsFd::as_fd);
    let program = find_program(
        &request.arguments[0],
        environment.get("PATH").map(String::as_str),
        working_directory.as_fd(),
        root,
    )
    .map_err(|err| RunnerError::InvalidArgument(err.to_string()))?;

    let mut outputs = CreatedOutputs::default();
    let (stdout, created) =
        create_output(build_directory, &request.stdout_path, "stdout_path", None)?;
    outputs.files.push(created);
    let (stderr, created) = create_output(
        build_directory,
        &request.stderr_path,
        "stderr_path",
        outputs.files.first(),
    )
    .inspect_err(|_| outputs.remove())?;
    outputs.files.push(created);
    Ok(Prepared {
        program,
        environment: environment.into_iter().collect(),
        working_directory,
        chroot_directory,
        temporary_directory,
        stdout,
        stderr,
        outputs,
    })
}

fn optional_directory(
    build_directory: &BuildDirectory,
    relative: &str,
    field: &'static str,
) -> Result<Option<ResolvedDirectory>, RunnerError> {
    if relative.is_empty() {
        return Ok(None);
    }
    Ok(Some(build_directory.open_directory(relative, field)?))
}

/// Creates the output at `relative`, `beside` another: see
/// [`BuildDirectory::create_output_beside`].
fn create_output(
    build_directory: &BuildDirectory,
    relative: &str,
    field: &'static str,
    beside: Option<&CreatedFile>,
) -> Result<(File, CreatedFile), RunnerError> {
    if relative.is_empty() {
        return Err(RunnerError::InvalidArgument(format!(
            "{field} is empty: a path relative to the build directory is required"
        )));
    }
    Ok(build_directory.create_output_beside(relative, field, beside)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: only filesystems that never wait on another process
    /// may be touched from an async worker.
    #[test]
    fn only_local_filesystems_are_prepared_on_the_workers() {
        for local in [
            Filesystem::Tmpfs,
            Filesystem::Ext4,
            Filesystem::Xfs,
            Filesystem::Btrfs,
        ] {
            assert_eq!(Preparation::for_filesystem(local), Preparation::OnWorker);
        }
        for remote in [
            Filesystem::Fuse,
            Filesystem::Nfs,
            Filesystem::Other(0x794C_7630),
            Filesystem::Unknown,
        ] {
            assert_eq!(
                Preparation::for_filesystem(remote),
                Preparation::OnBlockingPool
            );
        }
    }
}
