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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, Mode};
use nix::sys::statvfs::fstatvfs;
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::fault::{Fault, RunnerError};

use crate::bounded::quoted;

/// Errors resolving a request path. Each names the request field and the path.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "{field} {} is absolute; paths in requests are relative to the build directory",
        quoted(path)
    )]
    Absolute { field: &'static str, path: String },
    #[error("{field} {} contains a NUL byte", quoted(path))]
    ContainsNul { field: &'static str, path: String },
    #[error("{field} {} resolves outside of the build directory", quoted(path))]
    Escapes { field: &'static str, path: String },
    #[error(
        "{field} {} goes through {}, a symlink to an absolute path; absolute \
         symlinks are not followed, even to places inside the build directory",
        quoted(path),
        quoted(link)
    )]
    AbsoluteSymlink {
        field: &'static str,
        path: String,
        /// The prefix of `path` that names the symlink.
        link: String,
    },
    #[error("{field} {} has too many levels of symbolic links", quoted(path))]
    SymlinkLoop { field: &'static str, path: String },
    #[error(
        "{field} {} is too long: a component longer than 255 bytes, or the whole longer \
         than 4095",
        quoted(path)
    )]
    TooLong { field: &'static str, path: String },
    #[error("{field} {} is a directory; a file path is required", quoted(path))]
    IsADirectory { field: &'static str, path: String },
    #[error("{field} {} does not exist in the build directory", quoted(path))]
    NotFound { field: &'static str, path: String },
    #[error("{field} {} is not a directory", quoted(path))]
    NotADirectory { field: &'static str, path: String },
    #[error("{field} {} already exists; refusing to overwrite it", quoted(path))]
    AlreadyExists { field: &'static str, path: String },
    #[error(
        "{field} {}: no space left on the build directory's filesystem {} ({detail})",
        quoted(path),
        filesystem.display()
    )]
    NoSpace {
        field: &'static str,
        path: String,
        /// Mount point of the filesystem holding the build directory.
        filesystem: PathBuf,
        /// What the filesystem reports as free.
        detail: String,
    },
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
            // symlinks pointing out) as EXDEV; see `resolution_error`.
            Errno::EXDEV => PathError::Escapes { field, path },
            Errno::ENOENT => PathError::NotFound { field, path },
            Errno::ENOTDIR => PathError::NotADirectory { field, path },
            Errno::EEXIST => PathError::AlreadyExists { field, path },
            Errno::ELOOP => PathError::SymlinkLoop { field, path },
            Errno::ENAMETOOLONG => PathError::TooLong { field, path },
            // Creating `dir/` (a trailing slash) or over a directory.
            Errno::EISDIR => PathError::IsADirectory { field, path },
            errno => PathError::Other { field, path, errno },
        }
    }

    /// Who can fix it: the request, unless the host failed (out of
    /// descriptors or space: the node; anything else: the runner).
    pub fn fault(&self) -> Fault {
        match self {
            PathError::NoSpace { .. } => Fault::Node,
            PathError::Other { errno, .. } => Fault::of_host_errno(*errno as i32),
            _ => Fault::Request,
        }
    }
}

impl From<PathError> for RunnerError {
    /// A path the request names is its own fault (INVALID_ARGUMENT) unless
    /// the failure is the host's: the node's (out of descriptors or space:
    /// UNAVAILABLE) or ours (INTERNAL).
    fn from(error: PathError) -> Self {
        RunnerError::of_fault(error.fault(), error.to_string())
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
    /// The filesystem it is on, read once when opened.
    filesystem: Filesystem,
}

/// The kind of filesystem holding the build directory, from the magic
/// number `statfs(2)` reports (`f_type`): what decides whether preparing
/// an action there can block for long (see
/// [`crate::action::prepare::Preparation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Tmpfs,
    /// ext2, ext3 and ext4 share one magic number.
    Ext4,
    Xfs,
    Btrfs,
    /// bb_worker's virtual build directory, among others: every operation
    /// is a round trip to a process that may itself wait on the network.
    Fuse,
    Nfs,
    /// Any other magic number.
    Other(i64),
    /// `statfs` failed (a FUSE server that does not implement it, say).
    Unknown,
}

/// `f_type` magic numbers (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;
const EXT4_SUPER_MAGIC: i64 = 0xEF53;
const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const NFS_SUPER_MAGIC: i64 = 0x6969;

impl Filesystem {
    /// The kind `statfs` reports as `magic`.
    pub fn from_magic(magic: i64) -> Filesystem {
        match magic {
            TMPFS_MAGIC => Filesystem::Tmpfs,
            EXT4_SUPER_MAGIC => Filesystem::Ext4,
            XFS_SUPER_MAGIC => Filesystem::Xfs,
            BTRFS_SUPER_MAGIC => Filesystem::Btrfs,
            FUSE_SUPER_MAGIC => Filesystem::Fuse,
            NFS_SUPER_MAGIC => Filesystem::Nfs,
            other => Filesystem::Other(other),
        }
    }

    /// The filesystem of `fd`; [`Filesystem::Unknown`] when `statfs` fails.
    pub fn of(fd: BorrowedFd<'_>) -> Filesystem {
        match nix::sys::statfs::fstatfs(fd) {
            #[allow(clippy::unnecessary_cast)] // fs_type_t is not i64 everywhere
            Ok(stat) => Filesystem::from_magic(stat.filesystem_type().0 as i64),
            Err(_) => Filesystem::Unknown,
        }
    }

    /// A filesystem of this machine's own memory or disks, whose
    /// operations never wait on another process or the network.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            Filesystem::Tmpfs | Filesystem::Ext4 | Filesystem::Xfs | Filesystem::Btrfs
        )
    }
}

impl std::fmt::Display for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Filesystem::Tmpfs => f.write_str("tmpfs"),
            Filesystem::Ext4 => f.write_str("ext4"),
            Filesystem::Xfs => f.write_str("xfs"),
            Filesystem::Btrfs => f.write_str("btrfs"),
            Filesystem::Fuse => f.write_str("fuse"),
            Filesystem::Nfs => f.write_str("nfs"),
            Filesystem::Other(magic) => write!(f, "a filesystem of type {magic:#x}"),
            Filesystem::Unknown => f.write_str("a filesystem statfs cannot name"),
        }
    }
}

/// How strictly a relative path is resolved.
const BENEATH: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);

/// How a directory is opened beneath another.
fn directory_how() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(BENEATH)
}

/// The empty path names the directory itself: ".".
fn non_empty(relative: &str) -> &str {
    if relative.is_empty() {
        "."
    } else {
        relative
    }
}

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
        let filesystem = Filesystem::of(fd.as_fd());
        Ok(BuildDirectory {
            fd,
            path,
            filesystem,
        })
    }

    /// The filesystem the build directory is on, as found when opened.
    /// A mount beneath it is not seen.
    pub fn filesystem(&self) -> Filesystem {
        self.filesystem
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
        self.create_output(relative, field).map(|(file, _)| file)
    }

    /// Creates the file at `relative` for writing, as [`Self::create_file`],
    /// and returns with it what removes it again.
    ///
    /// A filesystem with no space left is an error too, even when the
    /// (empty) file could be created, as it usually can: otherwise an
    /// action would only fail to write it, and show up as a build failure
    /// with an empty stderr instead of as the node's trouble. The file is
    /// then removed again.
    pub fn create_output(
        &self,
        relative: &str,
        field: &'static str,
    ) -> Result<(File, CreatedFile), PathError> {
        self.create_output_beside(relative, field, None)
    }

    /// As [`Self::create_output`], next to `beside`, another output of the
    /// same action created just before: when both are in one directory,
    /// that directory is opened once, and when both are on one filesystem
    /// (an action's stdout and stderr nearly always are), the space left
    /// is checked once. Each saved step is a system call per action.
    pub fn create_output_beside(
        &self,
        relative: &str,
        field: &'static str,
        beside: Option<&CreatedFile>,
    ) -> Result<(File, CreatedFile), PathError> {
        check_relative(relative, field)?;
        let (parent, name) = relative.rsplit_once('/').unwrap_or(("", relative));
        if name.is_empty() {
            return Err(PathError::IsADirectory {
                field,
                path: relative.to_string(),
            });
        }
        // The parent stays open, so that removing the file needs no
        // descriptor: running out of them is a reason to remove it.
        let parent = match beside.filter(|beside| beside.parent_relative() == parent) {
            Some(beside) => beside.parent.clone(),
            None => Arc::new(
                openat2_retrying(self.fd.as_fd(), non_empty(parent), directory_how())
                    .map_err(|errno| resolution_error(self.fd.as_fd(), errno, field, relative))?,
            ),
        };
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
        let fd = openat2_retrying(parent.as_fd(), name, how).map_err(|errno| match errno {
            Errno::ENOSPC | Errno::EDQUOT => self.no_space(field, relative),
            errno => resolution_error(self.fd.as_fd(), errno, field, relative),
        })?;
        let file = File::from(fd);
        let created = CreatedFile {
            parent,
            name: name.to_string(),
            relative: relative.to_string(),
            field,
            identity: fstat(&file).ok().map(|stat| (stat.st_dev, stat.st_ino)),
        };
        let checked_already = beside
            .and_then(CreatedFile::identity)
            .zip(created.identity)
            .is_some_and(|((checked, _), (created_on, _))| checked == created_on);
        if !checked_already && matches!(fstatvfs(&file), Ok(stat) if stat.blocks_available() == 0) {
            let _ = created.remove();
            return Err(self.no_space(field, relative));
        }
        Ok((file, created))
    }

    /// The error for a full build filesystem, naming it and what it has
    /// left, for the operator who has to free it.
    fn no_space(&self, field: &'static str, relative: &str) -> PathError {
        let detail = match fstatvfs(&self.fd) {
            Ok(stat) => format!(
                "{} bytes and {} inodes available",
                stat.blocks_available().saturating_mul(stat.fragment_size()),
                stat.files_available()
            ),
            Err(errno) => format!("cannot tell what is free: {errno}"),
        };
        PathError::NoSpace {
            field,
            path: relative.to_string(),
            filesystem: mount_point(&self.path),
            detail,
        }
    }

    /// Opens the file at `relative` for reading, beneath the build
    /// directory and through no symlink. `O_NONBLOCK`, so that a FIFO put
    /// in its place cannot hold the caller; callers check what they got
    /// (see [`CreatedFile::identity`]). Blocking.
    pub fn open_for_reading(&self, relative: &str) -> Result<File, Errno> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
            .resolve(BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        openat2_retrying(self.fd.as_fd(), non_empty(relative), how).map(File::from)
    }

    /// Whether `relative` exists beneath the build directory (the empty
    /// string is the build directory itself, as for bb_runner).
    pub fn check_exists(&self, relative: &str, field: &'static str) -> Result<(), PathError> {
        check_relative(relative, field)?;
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(BENEATH);
        openat2_retrying(self.fd.as_fd(), non_empty(relative), how)
            .map(drop)
            .map_err(|errno| resolution_error(self.fd.as_fd(), errno, field, relative))
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
    openat2_retrying(dir, non_empty(relative), directory_how())
        .map_err(|errno| resolution_error(dir, errno, field, relative))
}

/// A file the runner created, with what removes it again: its directory,
/// held open, and its identity (device and inode), so that removing it
/// needs no new descriptor and can never remove a file put in its place.
#[derive(Debug)]
pub struct CreatedFile {
    /// Shared with an output created beside it in the same directory.
    parent: Arc<OwnedFd>,
    name: String,
    /// The path the request gave, for messages.
    relative: String,
    field: &'static str,
    /// `None` if it could not be read: then it is never removed.
    identity: Option<(u64, u64)>,
}

impl CreatedFile {
    /// Its device and inode as created, which tell it from a file put in
    /// its place; `None` if they could not be read.
    pub fn identity(&self) -> Option<(u64, u64)> {
        self.identity
    }

    /// The directory it was created in, as the request's path names it.
    fn parent_relative(&self) -> &str {
        self.relative
            .rsplit_once('/')
            .map_or("", |(parent, _)| parent)
    }

    /// Removes the file unless someone replaced it meanwhile. Returns
    /// whether it was removed. Blocking.
    pub fn remove(&self) -> Result<bool, PathError> {
        let error = |errno| PathError::from_errno(errno, self.field, &self.relative);
        let current = fstatat(
            &*self.parent,
            self.name.as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(error)?;
        if self.identity != Some((current.st_dev, current.st_ino)) {
            return Ok(false);
        }
        unlinkat(
            &*self.parent,
            self.name.as_str(),
            UnlinkatFlags::NoRemoveDir,
        )
        .map_err(error)?;
        Ok(true)
    }
}

/// The error for a failed resolution of `relative` beneath `dir`.
///
/// `RESOLVE_BENEATH` answers EXDEV for a path that leaves `dir` and for
/// every absolute symlink, even one naming a place inside: look for the
/// first absolute symlink on the path, so that the message says what was
/// refused.
fn resolution_error(
    dir: BorrowedFd<'_>,
    errno: Errno,
    field: &'static str,
    relative: &str,
) -> PathError {
    if errno == Errno::EXDEV {
        if let Some(link) = absolute_symlink_on(dir, relative) {
            return PathError::AbsoluteSymlink {
                field,
                path: relative.to_string(),
                link,
            };
        }
    }
    PathError::from_errno(errno, field, relative)
}

/// At most this many components are examined when explaining an escape.
const MAXIMUM_EXPLAINED_COMPONENTS: usize = 256;

/// The first prefix of `relative` that resolves beneath `dir` to a symlink
/// whose target is absolute. `None` when a prefix does not resolve beneath
/// `dir` first (a `..` or a relative symlink leaving it): a real escape.
/// Only the symlink's own text is read, and only inside `dir`.
fn absolute_symlink_on(dir: BorrowedFd<'_>, relative: &str) -> Option<String> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(BENEATH);
    let ends = relative
        .match_indices('/')
        .map(|(index, _)| index)
        .chain(std::iter::once(relative.len()))
        .filter(|&end| end > 0 && !relative[..end].ends_with('/'))
        .take(MAXIMUM_EXPLAINED_COMPONENTS);
    for end in ends {
        let prefix = &relative[..end];
        let fd = openat2_retrying(dir, prefix, how).ok()?;
        // With an empty path, readlinkat reads the symlink the O_PATH
        // descriptor itself refers to; anything else answers an error.
        if let Ok(target) = readlinkat(&fd, "") {
            if target.as_encoded_bytes().starts_with(b"/") {
                return Some(prefix.to_string());
            }
        }
    }
    None
}

/// The mount point of the filesystem holding `path`: its highest ancestor
/// on the same device. Blocking; for messages only.
fn mount_point(path: &Path) -> PathBuf {
    let device = |path: &Path| std::fs::metadata(path).map(|m| m.dev()).ok();
    let Some(own) = device(path) else {
        return path.to_path_buf();
    };
    let mut mount = path;
    while let Some(parent) = mount.parent() {
        if device(parent) != Some(own) {
            break;
        }
        mount = parent;
    }
    mount.to_path_buf()
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
    // Checked here, because the system call would only answer EINVAL.
    if relative.contains('\0') {
        return Err(PathError::ContainsNul {
            field,
            path: relative.to_string(),
        });
    }
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
    use crate::fault::Fault;
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
        assert_eq!(err.fault(), crate::fault::Fault::Request, "{err}");
        let message = err.to_string();
        assert!(message.starts_with("stdout_path \"action/ddd"), "{message}");
        assert!(message.contains("bytes cut]…ddd"), "{message}");
        assert!(message.contains("is too long"), "{message}");
        // The quoted path is at most ~220 bytes; the rest is the reason.
        assert!(message.len() < 400, "{} bytes", message.len());
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
            assert_eq!(err.fault(), Fault::Request, "{link}: {err}");
            let file = format!("{link}/stdout");
            let err = f.build.create_file(&file, "stdout_path").unwrap_err();
            assert_eq!(err.fault(), Fault::Request, "{file}: {err}");
        }
        // The relative one leaves; the absolute one is not followed at all.
        let err = f
            .build
            .open_directory("action/rel-out", "input_root_directory")
            .unwrap_err();
        assert!(matches!(err, PathError::Escapes { .. }), "{err}");
        let err = f
            .build
            .create_file("action/out/stdout", "stdout_path")
            .unwrap_err();
        assert!(matches!(err, PathError::AbsoluteSymlink { .. }), "{err}");
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
        // bb_runner's NoPathSpecified and RootPath: both name the build
        // directory, which exists.
        f.build.check_exists("", "path").unwrap();
        f.build.check_exists(".", "path").unwrap();
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

    /// Why it matters: RESOLVE_BENEATH refuses every absolute symlink,
    /// also one pointing inside; "resolves outside" would send the user
    /// looking for an escape that is not there.
    #[test]
    fn an_absolute_symlink_inside_is_refused_as_not_followed() {
        let f = fixture();
        symlink(
            f.build.path().join("action/root"),
            f.build.path().join("action/abs-in"),
        )
        .unwrap();
        let err = f
            .build
            .open_directory("action/abs-in/sub", "working_directory")
            .unwrap_err();
        let PathError::AbsoluteSymlink { link, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(link, "action/abs-in");
        let message = err.to_string();
        assert!(message.contains("working_directory"), "{message}");
        assert!(
            message.contains("absolute symlinks are not followed"),
            "{message}"
        );
        assert!(!message.contains("outside"), "{message}");
        let err = f
            .build
            .create_file("action/abs-in/stdout", "stdout_path")
            .unwrap_err();
        assert!(matches!(err, PathError::AbsoluteSymlink { .. }), "{err}");
        assert_eq!(err.fault(), Fault::Request);
    }

    /// Why it matters: these are the request's fault, and were answered
    /// INTERNAL (which Bazel retries) before.
    #[test]
    fn nul_bytes_over_long_paths_and_trailing_slashes_are_the_requests_fault() {
        let f = fixture();
        let long_component = "x".repeat(300);
        let long_path = vec!["a"; 2100].join("/");
        let cases = [
            ("action/st\0dout".to_string(), "NUL"),
            (format!("action/{long_component}"), "too long"),
            (long_path, "too long"),
            ("action/stdout/".to_string(), "is a directory"),
        ];
        for (path, expected) in cases {
            let err = f.build.create_file(&path, "stdout_path").unwrap_err();
            assert_eq!(err.fault(), Fault::Request, "{err}");
            let message = err.to_string();
            assert!(message.contains("stdout_path"), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        let err = f
            .build
            .open_directory("action\0root", "input_root_directory")
            .unwrap_err();
        assert!(matches!(err, PathError::ContainsNul { .. }), "{err}");
        assert!(!f.build.path().join("action/stdout").exists());
    }

    /// Why it matters: running out of descriptors is the node's trouble
    /// (retry elsewhere); other host failures are the runner's.
    #[test]
    fn host_errors_are_the_nodes_or_the_runners_fault() {
        for (errno, fault) in [
            (Errno::EMFILE, Fault::Node),
            (Errno::ENFILE, Fault::Node),
            (Errno::EIO, Fault::Runner),
        ] {
            let err = PathError::from_errno(errno, "stdout_path", "action/stdout");
            assert_eq!(err.fault(), fault, "{err}");
        }
    }

    #[test]
    fn a_created_file_is_removed_but_a_replacement_is_not() {
        let f = fixture();
        let (_, created) = f
            .build
            .create_output("action/stdout", "stdout_path")
            .unwrap();
        assert!(created.remove().unwrap());
        assert!(!f.build.path().join("action/stdout").exists());

        // Held open, so that the replacement cannot reuse its inode.
        let (_file, created) = f.build.create_output("stderr", "stderr_path").unwrap();
        std::fs::remove_file(f.build.path().join("stderr")).unwrap();
        std::fs::write(f.build.path().join("stderr"), "someone else's").unwrap();
        assert!(!created.remove().unwrap());
        assert_eq!(
            std::fs::read_to_string(f.build.path().join("stderr")).unwrap(),
            "someone else's"
        );
    }

    /// A tmpfs of 64 KiB mounted on a temporary directory, unmounted on drop.
    struct SmallTmpfs {
        dir: tempfile::TempDir,
    }

    impl SmallTmpfs {
        /// For `test`, which is skipped without the root that mounting needs.
        fn mount(test: &str, options: &str) -> Option<SmallTmpfs> {
            if !crate::test_support::running_as_root(test) {
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let mounted = crate::test_support::command_succeeds(
                std::process::Command::new("mount")
                    .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                    .arg(dir.path()),
            );
            assert!(mounted, "mount -t tmpfs -o {options} failed");
            Some(SmallTmpfs { dir })
        }
    }

    impl Drop for SmallTmpfs {
        fn drop(&mut self) {
            let _ = crate::test_support::command_succeeds(
                std::process::Command::new("umount").arg(self.dir.path()),
            );
        }
    }

    /// Why it matters: on a full filesystem the empty output files can
    /// still be created; the action would then fail to write them and look
    /// like a broken build, on every worker it lands on with this disk.
    #[test]
    fn a_full_build_filesystem_is_the_nodes_fault_and_names_the_filesystem() {
        let test = "a_full_build_filesystem_is_the_nodes_fault_and_names_the_filesystem";
        let Some(tmpfs) = SmallTmpfs::mount(test, "size=64k") else {
            return;
        };
        let mut filler = File::create(tmpfs.dir.path().join("filler")).unwrap();
        while filler.write_all(&[0u8; 4096]).is_ok() {}
        let build = BuildDirectory::open(tmpfs.dir.path()).unwrap();
        let err = build.create_file("stdout", "stdout_path").unwrap_err();
        assert!(matches!(err, PathError::NoSpace { .. }), "{err}");
        assert_eq!(err.fault(), Fault::Node);
        let message = err.to_string();
        assert!(message.contains("stdout_path"), "{message}");
        assert!(
            message.contains(&tmpfs.dir.path().display().to_string()),
            "{message}"
        );
        assert!(!tmpfs.dir.path().join("stdout").exists(), "left behind");

        // Out of inodes, creating the file itself fails with ENOSPC.
        let Some(inodes) = SmallTmpfs::mount(test, "nr_inodes=2") else {
            return;
        };
        let build = BuildDirectory::open(inodes.dir.path()).unwrap();
        let mut created = 0;
        let err = loop {
            match build.create_file(&format!("file{created}"), "stderr_path") {
                Ok(_) => created += 1,
                Err(err) => break err,
            }
            assert!(created < 10, "nr_inodes=2 allowed {created} files");
        };
        assert!(matches!(err, PathError::NoSpace { .. }), "{err}");
    }

    /// Why it matters: where actions are prepared follows from this; a
    /// network or FUSE filesystem taken for a local one would let a slow
    /// server stall the async workers, and so every call.
    #[test]
    fn statfs_magic_numbers_name_the_filesystem_and_only_four_are_local() {
        let cases = [
            (0x0102_1994, Filesystem::Tmpfs, true),
            (0xEF53, Filesystem::Ext4, true),
            (0x5846_5342, Filesystem::Xfs, true),
            (0x9123_683E, Filesystem::Btrfs, true),
            (0x6573_5546, Filesystem::Fuse, false),
            (0x6969, Filesystem::Nfs, false),
            // overlayfs, cifs, ceph, proc: anything else is not local.
            (0x794C_7630, Filesystem::Other(0x794C_7630), false),
            (0xFF53_4D42, Filesystem::Other(0xFF53_4D42), false),
            (0x00C3_6400, Filesystem::Other(0x00C3_6400), false),
            (0x9FA0, Filesystem::Other(0x9FA0), false),
        ];
        for (magic, kind, local) in cases {
            assert_eq!(Filesystem::from_magic(magic), kind, "{magic:#x}");
            assert_eq!(kind.is_local(), local, "{kind}");
        }
        assert!(!Filesystem::Unknown.is_local());
        assert_eq!(
            Filesystem::Other(0x794C_7630).to_string(),
            "a filesystem of type 0x794c7630"
        );
    }

    /// Why it matters: the kernel's own answer on a real mount, not only
    /// the table above.
    #[test]
    fn a_build_directory_on_tmpfs_is_found_on_tmpfs() {
        let Some(tmpfs) =
            SmallTmpfs::mount("a_build_directory_on_tmpfs_is_found_on_tmpfs", "size=64k")
        else {
            return;
        };
        let build = BuildDirectory::open(tmpfs.dir.path()).unwrap();
        assert_eq!(build.filesystem(), Filesystem::Tmpfs);
        assert!(build.filesystem().is_local());
    }
}
