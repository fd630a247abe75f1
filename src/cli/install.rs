//! `rbe-runner install [DIR]`: the init container of a worker pod.
//!
//! bb-deployments runs the runner from the *toolchain* image the actions
//! need, with the runner binary copied into a shared `emptyDir` at `/bb` by
//! an init container; the runner container (or docker-compose) waits for
//! `/bb/installed` and then executes `/bb/bb_runner`. `install` plays that
//! init container's part: it writes its own executable as `DIR/rbe-runner`
//! and `DIR/bb_runner` (so bb-deployments' command works unchanged), then
//! the `DIR/installed` marker.
//!
//! Every file is written under a temporary name in `DIR`, synced and then
//! renamed over its final name, and the marker comes last: whoever sees
//! `installed` sees complete executables, and a crash leaves either the
//! old file or the new one, never half of one. Running it again replaces
//! everything the same way, also while a previous copy is being executed
//! (the old inode lives on until its process exits).
//!
//! Several installers may share `DIR` at once (init containers of pods on
//! one hostPath, a restarted one racing its predecessor): each writes under
//! a temporary name of its own (pid and a random number), so all of them
//! succeed and the last rename wins. Each holds a shared `flock` on `DIR`
//! while it writes; one that can take it exclusively is alone, and removes
//! the temporary files that installers which died left behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{status, USAGE};

/// Where bb-deployments' init container installs the runner.
pub const DEFAULT_INSTALL_DIR: &str = "/bb";

/// The running executable, whatever name it was started by.
pub const DEFAULT_PROC_SELF_EXE: &str = "/proc/self/exe";

/// Names the executable is installed under: our own, and bb_runner's so
/// that existing pod specs and compose files run us unchanged.
pub const EXECUTABLE_NAMES: [&str; 2] = ["rbe-runner", "bb_runner"];

/// Written last: its presence means every executable is complete.
pub const MARKER_NAME: &str = "installed";

const EXECUTABLE_MODE: u32 = 0o555;
const MARKER_MODE: u32 = 0o444;

/// What follows `.NAME` in a temporary file's name.
const TEMPORARY_SUFFIX: &str = ".installing";

/// How much of the executable is copied at a time.
const COPY_BUFFER_BYTES: usize = 128 * 1024;

/// What the marker says, for a human who finds it.
const MARKER_CONTENTS: &str = concat!("rbe-runner ", env!("CARGO_PKG_VERSION"), "\n");

/// Installing failed; each variant names the path it failed on. The I/O
/// error is part of the message, not a `source`, so that printing the
/// error chain does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read the executable to install, {path}: {error}")]
    ReadSource { path: PathBuf, error: io::Error },
    #[error("cannot install into {path}: {error}")]
    Directory { path: PathBuf, error: io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error("cannot replace {path}: {error}")]
    Replace { path: PathBuf, error: io::Error },
    #[error("cannot remove {path}, left by an install that did not finish: {error}")]
    Leftover { path: PathBuf, error: io::Error },
}

/// The files written, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Installed {
    pub executables: Vec<PathBuf>,
    pub marker: PathBuf,
}

/// `install [DIR]`: exit 0, or 1 with the error on stderr.
pub fn main(args: &[String]) -> ExitCode {
    status(install_into(args))
}

fn install_into(args: &[String]) -> anyhow::Result<()> {
    let dir = match args {
        [] => DEFAULT_INSTALL_DIR,
        [dir] => dir.as_str(),
        _ => bail!("install takes at most one argument, the directory\n{USAGE}"),
    };
    let installed = install(Path::new(DEFAULT_PROC_SELF_EXE), Path::new(dir))?;
    for path in installed.executables.iter().chain([&installed.marker]) {
        println!("installed {}", path.display());
    }
    Ok(())
}

/// Copies the executable at `source` into `dir` under each of
/// [`EXECUTABLE_NAMES`] (mode 0555), then writes the marker (mode 0444).
/// `dir` must exist: in a pod it is a mounted volume, and creating a
/// missing one would hide a wrong mount path.
pub fn install(source: &Path, dir: &Path) -> Result<Installed, InstallError> {
    let directory_error = |error| InstallError::Directory {
        path: dir.to_path_buf(),
        error,
    };
    let directory = File::open(dir).map_err(directory_error)?;
    let _installing = lock_directory(directory.try_clone().map_err(directory_error)?, dir)?;
    let mut executables = Vec::new();
    for name in EXECUTABLE_NAMES {
        let mut executable = File::open(source).map_err(|error| InstallError::ReadSource {
            path: source.to_path_buf(),
            error,
        })?;
        let path = dir.join(name);
        replace_atomically(&path, EXECUTABLE_MODE, |file| {
            copy_contents(&mut executable, file)
        })
        .map_err(|err| match err {
            ReplaceError::Content(error) => InstallError::ReadSource {
                path: source.to_path_buf(),
                error,
            },
            other => other.with_path(&path),
        })?;
        executables.push(path);
    }
    // The executables' renames are durable before the marker can be.
    sync_directory(&directory, dir)?;
    let marker = dir.join(MARKER_NAME);
    replace_atomically(&marker, MARKER_MODE, |file| {
        io::Write::write_all(file, MARKER_CONTENTS.as_bytes()).map_err(ReplaceError::Write)
    })
    .map_err(|err| err.with_path(&marker))?;
    sync_directory(&directory, dir)?;
    Ok(Installed {
        executables,
        marker,
    })
}

/// Takes the installers' shared lock on `directory` (`dir`), held until
/// the returned lock is dropped. When no other installer holds it, first
/// removes what installers that died left behind. Without locks (a
/// filesystem that refuses `flock`), installs unlocked and removes nothing:
/// a leftover costs space, removing a live installer's file fails it.
fn lock_directory(directory: File, dir: &Path) -> Result<Option<Flock<File>>, InstallError> {
    let lock_error = |errno: Errno| InstallError::Directory {
        path: dir.to_path_buf(),
        error: errno.into(),
    };
    match Flock::lock(directory, FlockArg::LockExclusiveNonblock) {
        Ok(alone) => {
            remove_leftovers(dir)?;
            // Not atomic: another installer may take the lock exclusively
            // in between, to find no temporary file of ours yet.
            alone.relock(FlockArg::LockShared).map_err(lock_error)?;
            Ok(Some(alone))
        }
        Err((directory, Errno::EWOULDBLOCK)) => Flock::lock(directory, FlockArg::LockShared)
            .map(Some)
            .map_err(|(_, errno)| lock_error(errno)),
        Err(_) => Ok(None),
    }
}

/// Removes the temporary files in `dir` of every name installed.
fn remove_leftovers(dir: &Path) -> Result<(), InstallError> {
    let entries = std::fs::read_dir(dir).map_err(|error| InstallError::Directory {
        path: dir.to_path_buf(),
        error,
    })?;
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(is_temporary_name) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(InstallError::Leftover {
                    path: entry.path(),
                    error,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Copies `source` into `destination`, telling whose the failure is: a
/// full volume is the destination's, not the executable's.
fn copy_contents(source: &mut File, destination: &mut File) -> Result<(), ReplaceError> {
    let mut buffer = vec![0; COPY_BUFFER_BYTES];
    loop {
        let read = match io::Read::read(source, &mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(ReplaceError::Content(error)),
        };
        io::Write::write_all(destination, &buffer[..read]).map_err(ReplaceError::Write)?;
    }
}

/// Makes the renames in `dir` durable.
fn sync_directory(directory: &File, dir: &Path) -> Result<(), InstallError> {
    directory
        .sync_all()
        .map_err(|error| InstallError::Directory {
            path: dir.to_path_buf(),
            error,
        })
}

/// Where [`replace_atomically`] failed.
enum ReplaceError {
    /// Writing the temporary file (other than its contents).
    Write(io::Error),
    /// Producing the contents (reading the source).
    Content(io::Error),
    /// Renaming the temporary file over the final name.
    Rename(io::Error),
}

impl ReplaceError {
    fn with_path(self, path: &Path) -> InstallError {
        let path = path.to_path_buf();
        match self {
            ReplaceError::Write(error) | ReplaceError::Content(error) => {
                InstallError::Write { path, error }
            }
            ReplaceError::Rename(error) => InstallError::Replace { path, error },
        }
    }
}

/// Writes `path` as a new file: `fill` writes the contents to a temporary
/// file next to it, which gets `mode`, is synced, and is renamed over
/// `path`. On failure the temporary file is removed and `path` is as it was.
fn replace_atomically(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> Result<(), ReplaceError>,
) -> Result<(), ReplaceError> {
    let temporary = temporary_name(path).map_err(ReplaceError::Write)?;
    // Writable by us while filling; the final mode is set before the rename
    // so that the name never shows a file with other permissions.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(ReplaceError::Write)?;
    let written = fill(&mut file)
        .and_then(|()| {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .and_then(|()| file.sync_all())
                .map_err(ReplaceError::Write)
        })
        .and_then(|()| std::fs::rename(&temporary, path).map_err(ReplaceError::Rename));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// `DIR/.NAME.installing.PID.RANDOM`: in the same directory (so the
/// rename is atomic), hidden, and this installer's own: the pid tells
/// installers on one host apart, the random number those in other pid
/// namespaces (every init container is pid 1).
fn temporary_name(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let random = getrandom::u64()
        .map_err(|error| io::Error::other(format!("no random number for its name: {error}")))?;
    Ok(path.with_file_name(format!(
        ".{name}{TEMPORARY_SUFFIX}.{}.{random:016x}",
        std::process::id()
    )))
}

/// Whether `file_name` is a temporary name of one of the files installed,
/// whoever wrote it (older versions used `.NAME.installing` alone).
fn is_temporary_name(file_name: &str) -> bool {
    EXECUTABLE_NAMES.iter().chain([&MARKER_NAME]).any(|name| {
        file_name
            .strip_prefix('.')
            .and_then(|rest| rest.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix(TEMPORARY_SUFFIX))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn source_file(dir: &Path, contents: &[u8]) -> PathBuf {
        let path = dir.join("source-binary");
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The shape bb-deployments' runner container expects: both names,
    /// executable by any uid (the runner runs as 65534), then the marker.
    #[test]
    fn installs_both_names_and_the_marker_with_their_modes() {
        let scratch = tempfile::tempdir().unwrap();
        let source = source_file(scratch.path(), b"\x7fELF pretend binary");
        let dir = scratch.path().join("bb");
        std::fs::create_dir(&dir).unwrap();

        let installed = install(&source, &dir).unwrap();

        assert_eq!(
            installed.executables,
            vec![dir.join("rbe-runner"), dir.join("bb_runner")]
        );
        for path in &installed.executables {
            assert_eq!(std::fs::read(path).unwrap(), b"\x7fELF pretend binary");
            assert_eq!(mode(path), 0o555, "{}", path.display());
        }
        assert_eq!(installed.marker, dir.join("installed"));
        assert_eq!(mode(&installed.marker), 0o444);
        assert_eq!(
            std::fs::read_to_string(&installed.marker).unwrap(),
            MARKER_CONTENTS
        );
        // No temporary file is left behind.
        assert_eq!(names_in(&dir), ["bb_runner", "installed", "rbe-runner"]);
    }

    /// An init container runs again on every pod restart, over read-only
    /// files it wrote before: the second run must replace them, not fail.
    #[test]
    fn installing_again_replaces_read_only_files() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("bb");
        std::fs::create_dir(&dir).unwrap();
        install(&source_file(scratch.path(), b"old"), &dir).unwrap();
        let old_inode = std::fs::metadata(dir.join("bb_runner")).unwrap().ino();

        install(&source_file(scratch.path(), b"new version"), &dir).unwrap();

        assert_eq!(
            std::fs::read(dir.join("bb_runner")).unwrap(),
            b"new version"
        );
        assert_eq!(
            std::fs::read(dir.join("rbe-runner")).unwrap(),
            b"new version"
        );
        // Replaced by rename, not rewritten in place: a runner still
        // executing the old file keeps its inode intact.
        assert_ne!(
            std::fs::metadata(dir.join("bb_runner")).unwrap().ino(),
            old_inode
        );
        assert_eq!(mode(&dir.join("rbe-runner")), 0o555);
        assert_eq!(names_in(&dir), ["bb_runner", "installed", "rbe-runner"]);
    }

    /// A crashed install leaves its temporary file; the next one, alone,
    /// removes it (and those of older versions' fixed names), and nothing
    /// else.
    #[test]
    fn leftover_temporary_files_are_removed() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("bb");
        std::fs::create_dir(&dir).unwrap();
        for leftover in [
            ".bb_runner.installing",
            ".rbe-runner.installing.1.00c0ffee00c0ffee",
            ".installed.installing.7.0123456789abcdef",
            ".bb_runner.installing-not-ours",
            ".other.installing.1.2",
        ] {
            std::fs::write(dir.join(leftover), b"half").unwrap();
        }

        install(&source_file(scratch.path(), b"whole"), &dir).unwrap();

        assert_eq!(std::fs::read(dir.join("bb_runner")).unwrap(), b"whole");
        assert_eq!(
            names_in(&dir),
            [
                ".bb_runner.installing-not-ours",
                ".other.installing.1.2",
                "bb_runner",
                "installed",
                "rbe-runner"
            ]
        );
    }

    /// Why it matters: an installer that is still writing holds the lock;
    /// removing its temporary file would fail it, the defect of one fixed
    /// name that every installer removed.
    #[test]
    fn a_live_installers_temporary_file_is_left_alone() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("bb");
        std::fs::create_dir(&dir).unwrap();
        let other = ".bb_runner.installing.1.00c0ffee00c0ffee";
        std::fs::write(dir.join(other), b"being written").unwrap();
        let _other_installer =
            Flock::lock(File::open(&dir).unwrap(), FlockArg::LockShared).unwrap();

        install(&source_file(scratch.path(), b"whole"), &dir).unwrap();

        assert_eq!(
            names_in(&dir),
            [other, "bb_runner", "installed", "rbe-runner"]
        );
    }

    #[test]
    fn temporary_names_are_unique_and_recognised() {
        let path = Path::new("/bb/bb_runner");
        let first = temporary_name(path).unwrap();
        let second = temporary_name(path).unwrap();
        assert_ne!(first, second);
        assert_eq!(first.parent(), Some(Path::new("/bb")));
        let name = first.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!(".bb_runner.installing.{}.", std::process::id())),
            "{name}"
        );
        assert!(is_temporary_name(name));
        assert!(!is_temporary_name("bb_runner"));
        assert!(!is_temporary_name(".bb_runner"));
    }

    /// A wrong volume path is a deployment error to report, not a
    /// directory to create.
    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("no-such-volume");

        let err = install(&source_file(scratch.path(), b"x"), &dir).unwrap_err();

        assert!(matches!(err, InstallError::Directory { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-volume"), "{err}");
        assert!(!dir.exists());
    }

    #[test]
    fn a_missing_source_is_an_error_naming_it_and_writes_nothing() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("bb");
        std::fs::create_dir(&dir).unwrap();

        let err = install(&scratch.path().join("gone"), &dir).unwrap_err();

        assert!(matches!(err, InstallError::ReadSource { .. }), "{err:?}");
        assert!(err.to_string().contains("gone"), "{err}");
        assert!(names_in(&dir).is_empty());
    }

    /// Something that is not a file where an executable goes (a directory
    /// mounted there by mistake) fails naming it; the marker is not
    /// written, so nobody starts a runner that is not there.
    #[test]
    fn an_unreplaceable_target_fails_naming_it_without_the_marker() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("bb");
        std::fs::create_dir_all(dir.join("bb_runner").join("occupied")).unwrap();

        let err = install(&source_file(scratch.path(), b"x"), &dir).unwrap_err();

        assert!(matches!(err, InstallError::Replace { .. }), "{err:?}");
        assert!(err.to_string().contains("bb_runner"), "{err}");
        assert!(!dir.join("installed").exists());
        assert_eq!(names_in(&dir), ["bb_runner", "rbe-runner"]);
    }
}
