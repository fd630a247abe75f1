//! Preparing an action from its request: every path it names resolved
//! beneath the build directory, its environment, its program found, its
//! outputs created. Nothing here starts a process or touches a cgroup.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use crate::build_directory::{open_directory_beneath, BuildDirectory, ResolvedDirectory};
use crate::process::lookup::find_program;
use crate::proto::runner::RunRequest;
use crate::runner::RunnerError;

/// How actions are prepared, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Add `TMPDIR=<temporary directory>` unless the request sets TMPDIR.
    pub set_tmpdir_environment_variable: bool,
    /// Chroot into the input root before exec.
    pub chroot_into_input_root: bool,
}

/// An action ready to be spawned.
#[derive(Debug)]
pub struct Prepared {
    /// Path handed to execve (see [`crate::process::spawn::ProcessSpec`]).
    pub program: String,
    /// The complete environment.
    pub environment: Vec<(String, String)>,
    /// Directory the child starts in.
    pub working_directory: OwnedFd,
    /// The input root, when the child chroots into it.
    pub chroot_directory: Option<OwnedFd>,
    /// The child's standard output.
    pub stdout: File,
    /// The child's standard error.
    pub stderr: File,
}

/// Resolves everything `request` names. Blocking. `request.arguments` must
/// not be empty (checked before an action exists).
pub fn prepare(
    build_directory: &BuildDirectory,
    options: &PrepareOptions,
    request: &RunRequest,
) -> Result<Prepared, RunnerError> {
    let input_root =
        build_directory.open_directory(&request.input_root_directory, "input_root_directory")?;
    let working_directory = open_directory_beneath(
        input_root.fd.as_fd(),
        &request.working_directory,
        "working_directory",
    )?;

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
    if let (true, Some(temporary)) = (
        options.set_tmpdir_environment_variable,
        &temporary_directory,
    ) {
        environment
            .entry("TMPDIR".into())
            .or_insert_with(|| temporary.path.to_string_lossy().into_owned());
    }

    let root = options
        .chroot_into_input_root
        .then(|| input_root.fd.as_fd());
    let program = find_program(
        &request.arguments[0],
        environment.get("PATH").map(String::as_str),
        working_directory.as_fd(),
        root,
    )
    .map_err(|err| RunnerError::InvalidArgument(err.to_string()))?;

    let stdout = create_output(build_directory, &request.stdout_path, "stdout_path")?;
    let stderr = create_output(build_directory, &request.stderr_path, "stderr_path")?;
    Ok(Prepared {
        program,
        environment: environment.into_iter().collect(),
        working_directory,
        chroot_directory: options.chroot_into_input_root.then_some(input_root.fd),
        stdout,
        stderr,
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

fn create_output(
    build_directory: &BuildDirectory,
    relative: &str,
    field: &'static str,
) -> Result<File, RunnerError> {
    if relative.is_empty() {
        return Err(RunnerError::InvalidArgument(format!(
            "{field} is empty: a path relative to the build directory is required"
        )));
    }
    Ok(build_directory.create_file(relative, field)?)
}
