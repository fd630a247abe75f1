//! Resolving request paths strictly beneath the build directory.
//!
//! Every path in a `RunRequest` (stdout, stderr, input root, temporary
//! directory, server logs) and the path of a `CheckReadinessRequest` is
//! relative to the build directory bb_worker prepared. A request must never
//! make the runner create, write or expose anything outside of it, not even
//! through a symlink an earlier action planted. String checks cannot promise
//! that (symlinks are resolved by the kernel, later), so every lookup goes
//! through `openat2(2)` with `RESOLVE_BENEATH` on a descriptor of the build
//! directory: the kernel itself refuses any resolution that leaves it.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::bounded::quoted;

/// Errors resolving a request path. Each names the request field and the path.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "{field} {} is absolute; paths in requests are relative to the build directory",
        quoted(path)
    )]
    Absolute { field: &'static str, path: String },
    #[error("{field} {} resolves outside of the build directory", quoted(path))]
    Escapes { field: &'static str, path: String },
    #[error("{field} {} does not exist in the build directory", quoted(path))]
    NotFound { field: &'static str, path: String },
    #[error("{field} {} is not a directory", quoted(path))]
    NotADirectory { field: &'static str, path: String },
    #[error("{field} {} already exists; refusing to overwrite it", quoted(path))]
    AlreadyExists { field: &'static str, path: String },
    #[error("{field} {}: {errno}", quoted(path))]
    Other {
        field: &'static str,
        path: String,
        errno: Errno,
    },
}

impl PathError {
    fn from_errno(errno: Errno, field: &'static str, path: &str) -> Self {
        let path = path.to_string();
        match errno {
            // RESOLVE_BENEATH reports every escape (`..`, absolute symlinks,
            // symlinks pointing out) as EXDEV.
            Errno::EXDEV => PathError::Escapes { field, path },
            Errno::ENOENT => PathError::NotFound { field, path },
            Errno::ENOTDIR => PathError::NotADirectory { field, path },
            Errno::EEXIST => PathError::AlreadyExists { field, path },
            // O_NOFOLLOW on a final symlink component.
            Errno::ELOOP => PathError::Escapes { field, path },
            errno => PathError::Other { field, path, errno },
        }
    }

    /// Whether the request is at fault (as opposed to the runner's host).
    /// A path too long for the kernel is the request's, however it fails.
    pub fn is_request_error(&self) -> bool {
        match self {
            PathError::Other { errno, .. } => *errno == Errno::ENAMETOOLONG,
            _ => true,
        }
    }
}

/// A directory resolved beneath the build directory: a descriptor that keeps
/// referring to the same directory whatever happens to its path, plus the
/// host path for places that need a string (TMPDIR, symlink targets).
#[derive(Debug)]
pub struct ResolvedDirectory {
    /// `O_PATH` descriptor of the directory.
    pub fd: OwnedFd,
    /// Absolute host path of the directory.
    pub path: PathBuf,
}

/// The build directory, opened once at startup.
#[derive(Debug)]
pub struct BuildDirectory {
    fd: OwnedFd,
    path: PathBuf,
}

/// How strictly a relative path is resolved.
const BENEATH: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

impl BuildDirectory {
    /// Opens the build directory. The path is made absolute so that TMPDIR
    /// and symlink targets derived from it are meaningful to actions.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let path = std::path::absolute(path)?;
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| {
            std::io::Error::new(
                std::io::Error::from(errno).kind(),
                format!("cannot open build directory {}: {errno}", path.display()),
            )
        })?;
        Ok(BuildDirectory { fd, path })
    }

    /// Absolute host path of the build directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory at `relative` (the empty string is the build
    /// directory itself). `field` names the request field for errors.
    pub fn open_directory(
        &self,
        relative: &str,
        field: &'static str,
    ) -> Result<ResolvedDirectory, PathError> {
        let fd = open_directory_beneath(self.fd.as_fd(), relative, field)?;
        Ok(ResolvedDirectory {
            fd,
            path: join_host_path(&self.path, relative),
        })
    }

    /// Creates the file at `relative` for writing. It must not exist yet:
    /// an existing file (or symlink) is an error and is never clobbered.
    pub fn create_file(&self, relative: &str, field: &'static str) -> Result<File, PathError> {
        check_relative(relative, field)?;
        let how = OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o666))
            .resolve(BENEATH);
        let fd = openat2_retrying(self.fd.as_fd(), relative, how)
            .map_err(|errno| PathError::from_errno(errno, field, relative))?;
        Ok(File::from(fd))
    }

    /// Whether `relative` exists beneath the build directory.
    pub fn check_exists(&self, relative: &str, field: &'static str) -> Result<(), PathError> {
        check_relative(relative, field)?;
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(BENEATH);
        openat2_retrying(self.fd.as_fd(), relative, how)
            .map(drop)
            .map_err(|errno| PathError::from_errno(errno, field, relative))
    }
}

/// Opens the directory at `relative` beneath `dir` (the empty string is
/// `dir` itself), refusing any resolution that leaves `dir`.
pub fn open_directory_beneath(
    dir: BorrowedFd<'_>,
    relative: &str,
    field: &'static str,
) -> Result<OwnedFd, PathError> {
    check_relative(relative, field)?;
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(BENEATH);
    let target = if relative.is_empty() { "." } else { relative };
    openat2_retrying(dir, target, how)
        .map_err(|errno| PathError::from_errno(errno, field, relative))
}

/// Resolves `path` as if `root` were `/` (symlinks and `..` cannot leave
/// it), for looking up programs inside a chroot. Returns the descriptor.
pub fn open_in_root(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2_retrying(root, path, how)
}

/// How often `openat2` is retried after EAGAIN.
const OPENAT2_ATTEMPTS: usize = 8;

/// `openat2`, retried on EAGAIN: with `RESOLVE_BENEATH` or
/// `RESOLVE_IN_ROOT` the kernel answers EAGAIN when a rename anywhere on
/// the machine raced a lookup through `..`; that is no fault of the request.
fn openat2_retrying(dir: BorrowedFd<'_>, path: &str, how: OpenHow) -> Result<OwnedFd, Errno> {
    let mut attempt = 1;
    loop {
        match openat2(dir, path, how) {
            Err(Errno::EAGAIN) if attempt < OPENAT2_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// The host path of `relative` beneath `base`, for messages and TMPDIR.
pub fn join_host_path(base: &Path, relative: &str) -> PathBuf {
    if relative.is_empty() {
        base.to_path_buf()
    } else {
        base.join(relative)
    }
}

fn check_relative(relative: &str, field: &'static str) -> Result<(), PathError> {
    if relative.starts_with('/') {
        return Err(PathError::Absolute {
            field,
            path: relative.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    /// A build directory in a tempdir, next to an "outside" directory that
    /// escapes must never reach.
    struct Fixture {
        _tmp: tempfile::TempDir,
        outside: PathBuf,
        build: BuildDirectory,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let build_path = tmp.path().join("build");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(build_path.join("action/root/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "secret").unwrap();
        let build = BuildDirectory::open(&build_path).unwrap();
        Fixture {
            _tmp: tmp,
            outside,
            build,
        }
    }

    #[test]
    fn opens_nested_directory_and_reports_host_path() {
        let f = fixture();
        let dir = f
            .build
            .open_directory("action/root", "input_root_directory")
            .unwrap();
        assert_eq!(dir.path, f.build.path().join("action/root"));
        let sub = open_directory_beneath(dir.fd.as_fd(), "sub", "working_directory").unwrap();
        drop(sub);
    }

    #[test]
    fn empty_path_is_the_build_directory_itself() {
        let f = fixture();
        let dir = f.build.open_directory("", "input_root_directory").unwrap();
        assert_eq!(dir.path, f.build.path());
    }

    #[test]
    fn absolute_paths_are_refused_with_the_field_name() {
        let f = fixture();
        let err = f
            .build
            .open_directory("/etc", "input_root_directory")
            .unwrap_err();
        assert!(matches!(err, PathError::Absolute { .. }), "{err}");
        assert!(err.to_string().contains("input_root_directory"));
        let err = f.build.create_file("/tmp/x", "stdout_path").unwrap_err();
        assert!(matches!(err, PathError::Absolute { .. }), "{err}");
    }

    #[test]
    fn dot_dot_leaving_the_build_directory_is_refused() {
        let f = fixture();
        let err = f
            .build
            .open_directory("../outside", "temporary_directory")
            .unwrap_err();
        assert!(matches!(err, PathError::Escapes { .. }), "{err}");
        let err = f
            .build
            .create_file("action/../../outside/new", "stdout_path")
            .unwrap_err();
        assert!(matches!(err, PathError::Escapes { .. }), "{err}");
        assert!(
            !f.outside.join("new").exists(),
            "nothing may be created outside"
        );
    }

    #[test]
    fn overlong_paths_are_the_requests_fault_and_quoted_bounded() {
        // Why: a client sending a 100k-character path must get
        // INVALID_ARGUMENT with a message it accepts, not INTERNAL.
        let f = fixture();
        let long = format!("action/{}/stdout", "d".repeat(100_000));
        let err = f.build.create_file(&long, "stdout_path").unwrap_err();
        assert!(err.is_request_error(), "{err}");
        let message = err.to_string();
        assert!(message.starts_with("stdout_path \"action/ddd"), "{message}");
        assert!(message.contains("bytes cut]…ddd"), "{message}");
        assert!(message.len() < 300, "{} bytes", message.len());
    }

    #[test]
    fn dot_dot_staying_inside_is_allowed() {
        let f = fixture();
        f.build
            .open_directory("action/root/../root/sub", "working_directory")
            .unwrap();
    }

    #[test]
    fn symlink_pointing_out_is_refused_for_directories_and_files() {
        let f = fixture();
        symlink(&f.outside, f.build.path().join("action/out")).unwrap();
        symlink("../../outside", f.build.path().join("action/rel-out")).unwrap();
        for link in ["action/out", "action/rel-out"] {
            let err = f
                .build
                .open_directory(link, "input_root_directory")
                .unwrap_err();
            assert!(matches!(err, PathError::Escapes { .. }), "{link}: {err}");
            let file = format!("{link}/stdout");
            let err = f.build.create_file(&file, "stdout_path").unwrap_err();
            assert!(matches!(err, PathError::Escapes { .. }), "{file}: {err}");
        }
        assert!(
            !f.outside.join("stdout").exists(),
            "nothing may be written outside"
        );
    }

    #[test]
    fn symlink_within_the_build_directory_is_followed() {
        let f = fixture();
        symlink("root", f.build.path().join("action/alias")).unwrap();
        f.build
            .open_directory("action/alias/sub", "working_directory")
            .unwrap();
    }

    #[test]
    fn output_file_is_created_and_existing_files_are_never_clobbered() {
        let f = fixture();
        let mut file = f.build.create_file("action/stdout", "stdout_path").unwrap();
        file.write_all(b"hello").unwrap();
        let err = f
            .build
            .create_file("action/stdout", "stdout_path")
            .unwrap_err();
        assert!(matches!(err, PathError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            std::fs::read(f.build.path().join("action/stdout")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn final_symlink_of_an_output_file_is_not_followed() {
        let f = fixture();
        symlink(
            f.outside.join("secret"),
            f.build.path().join("action/stderr"),
        )
        .unwrap();
        let err = f
            .build
            .create_file("action/stderr", "stderr_path")
            .unwrap_err();
        assert!(matches!(err, PathError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(f.outside.join("secret")).unwrap(),
            "secret"
        );
    }

    #[test]
    fn missing_and_non_directory_paths_are_named() {
        let f = fixture();
        let err = f
            .build
            .open_directory("action/nope", "temporary_directory")
            .unwrap_err();
        assert!(matches!(err, PathError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("action/nope"));
        std::fs::write(f.build.path().join("action/file"), "").unwrap();
        let err = f
            .build
            .open_directory("action/file", "temporary_directory")
            .unwrap_err();
        assert!(matches!(err, PathError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn check_exists_follows_the_same_rules() {
        let f = fixture();
        f.build.check_exists("action/root", "path").unwrap();
        assert!(matches!(
            f.build.check_exists("action/missing", "path"),
            Err(PathError::NotFound { .. })
        ));
        assert!(matches!(
            f.build.check_exists("../outside", "path"),
            Err(PathError::Escapes { .. })
        ));
    }

    #[test]
    fn open_in_root_treats_the_directory_as_root() {
        let f = fixture();
        let root = f
            .build
            .open_directory("action/root", "input_root_directory")
            .unwrap();
        // "/sub" and "/../sub" both name <root>/sub, never the host's /.
        open_in_root(root.fd.as_fd(), "/sub").unwrap();
        open_in_root(root.fd.as_fd(), "/../sub").unwrap();
        assert_eq!(
            open_in_root(root.fd.as_fd(), "/etc").unwrap_err(),
            Errno::ENOENT
        );
    }
}
