//! `cleanTemporaryDirectories`: emptying a directory that actions write to.
//!
//! Whatever an action left there is hostile input: a symlink to `/etc`, a
//! directory swapped for a symlink, a tree deeper than any path may be long.
//! So nothing here resolves a path string. Every step is relative to a
//! directory descriptor (`openat`, `unlinkat`), directories are opened with
//! `O_NOFOLLOW`, and a symlink is removed as the entry it is, never through
//! to its target. `std::fs::remove_dir_all` also does not follow symlinks,
//! but it works from a path (the configured directory could itself be
//! replaced by a symlink between runs) and needs one descriptor per level,
//! so a deep enough tree would make cleaning fail forever.
//!
//! Depth is handled by moving: once [`MAX_OPEN_LEVELS`] directories are
//! open, a deeper subdirectory is renamed to the top of the cleaned
//! directory (same file system, so `rename` is cheap) and emptied later
//! from there. Every pass removes or shortens something, so it ends.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{open, openat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::{CleanError, Cleaner};

/// Directories held open at once while descending; deeper ones are moved up.
const MAX_OPEN_LEVELS: usize = 64;

/// Empties one directory, keeping the directory itself.
pub struct DirectoryCleaner {
    name: String,
    path: PathBuf,
    /// Opened once, at startup: later changes to `path` (say, an action
    /// replacing it with a symlink) do not redirect cleaning.
    directory: OwnedFd,
}

impl DirectoryCleaner {
    /// Opens `path`, which must be an existing directory. Symlinks in the
    /// configured path itself are followed: that is the operator's choice.
    pub fn open(path: &Path) -> Result<Self, CleanError> {
        let directory = open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| CleanError::FileSystem {
            operation: "open the directory",
            path: path.to_path_buf(),
            errno,
        })?;
        Ok(DirectoryCleaner {
            name: format!("cleanTemporaryDirectories {:?}", path),
            path: path.to_path_buf(),
            directory,
        })
    }
}

#[tonic::async_trait]
impl Cleaner for DirectoryCleaner {
    fn name(&self) -> &str {
        &self.name
    }

    async fn clean(&self) -> Result<(), CleanError> {
        let directory = nix::unistd::dup(&self.directory)
            .map_err(|errno| fs_error("duplicate the descriptor of", &self.path, errno))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || empty_directory(directory.as_fd(), &path))
            .await
            .map_err(|err| CleanError::Task(err.to_string()))?
    }
}

/// Removes everything inside `top`, whose host path is `top_path` (used in
/// messages only).
pub fn empty_directory(top: BorrowedFd<'_>, top_path: &Path) -> Result<(), CleanError> {
    let device = fstat(top)
        .map_err(|errno| fs_error("stat", top_path, errno))?
        .st_dev;
    let mut moved = 0u64;
    loop {
        // A fresh open file description each pass: the listing must start
        // at the beginning and see what earlier passes moved up.
        let mut listing = open_directory(top, c".", top_path)?;
        let entries = read_entries(&mut listing, top_path)?;
        if entries.is_empty() {
            return Ok(());
        }
        for (name, file_type) in entries {
            remove_entry(top, device, &listing, top_path, name, file_type, &mut moved)?;
        }
    }
}

/// A directory being emptied: its descriptor, what is left to remove in
/// it, and where it is (for messages and for removing it when empty).
struct Level {
    directory: Dir,
    path: PathBuf,
    name: CString,
    pending: Vec<(CString, Option<Type>)>,
}

/// Removes the entry `name` of `parent`, recursively when it is a directory.
fn remove_entry(
    top: BorrowedFd<'_>,
    device: u64,
    parent: &Dir,
    parent_path: &Path,
    name: CString,
    file_type: Option<Type>,
    moved: &mut u64,
) -> Result<(), CleanError> {
    let Some(first) = open_subdirectory(parent, parent_path, &name, file_type, device)? else {
        return Ok(());
    };
    let mut stack = vec![first];
    while let Some(level) = stack.last_mut() {
        let Some((name, file_type)) = level.pending.pop() else {
            let done = stack.pop().expect("the loop saw a last level");
            let (holder, holder_path) = match stack.last() {
                Some(up) => (&up.directory, up.path.as_path()),
                None => (parent, parent_path),
            };
            unlink(holder, holder_path, &done.name, UnlinkatFlags::RemoveDir)?;
            continue;
        };
        let maybe_directory = matches!(file_type, None | Some(Type::Directory));
        if stack.len() >= MAX_OPEN_LEVELS && maybe_directory {
            let level = stack.last().expect("checked above");
            move_to_top(&level.directory, &level.path, &name, top, moved)?;
            continue;
        }
        let level = stack.last().expect("checked above");
        let (directory, path) = (&level.directory, level.path.clone());
        if let Some(deeper) = open_subdirectory(directory, &path, &name, file_type, device)? {
            stack.push(deeper);
        }
    }
    Ok(())
}

/// Opens `name` in `parent` when it is a directory and lists it. Anything
/// else (files, symlinks, a directory swapped for a symlink) is unlinked
/// right away and `None` is returned.
fn open_subdirectory(
    parent: &Dir,
    parent_path: &Path,
    name: &CStr,
    file_type: Option<Type>,
    device: u64,
) -> Result<Option<Level>, CleanError> {
    let path = parent_path.join(OsStr::from_bytes(name.to_bytes()));
    let maybe_directory = matches!(file_type, None | Some(Type::Directory));
    if !maybe_directory {
        unlink(parent, parent_path, name, UnlinkatFlags::NoRemoveDir)?;
        return Ok(None);
    }
    let mut directory = match open_directory(parent.as_fd(), name, &path) {
        Ok(directory) => directory,
        Err(CleanError::FileSystem {
            errno: Errno::ENOTDIR | Errno::ELOOP,
            ..
        }) => {
            unlink(parent, parent_path, name, UnlinkatFlags::NoRemoveDir)?;
            return Ok(None);
        }
        Err(CleanError::FileSystem {
            errno: Errno::ENOENT,
            ..
        }) => return Ok(None),
        Err(err) => return Err(err),
    };
    let stat = fstat(directory.as_fd()).map_err(|errno| fs_error("stat", &path, errno))?;
    if stat.st_dev != device {
        return Err(CleanError::OtherFileSystem { path });
    }
    let pending = read_entries(&mut directory, &path)?;
    Ok(Some(Level {
        directory,
        path,
        name: name.to_owned(),
        pending,
    }))
}

/// Opens a directory beneath `parent` without following a final symlink.
fn open_directory(parent: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<Dir, CleanError> {
    let fd = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| fs_error("open", path, errno))?;
    Dir::from_fd(fd).map_err(|errno| fs_error("read", path, errno))
}

/// Every entry but `.` and `..`, with its type when the file system says.
fn read_entries(
    directory: &mut Dir,
    path: &Path,
) -> Result<Vec<(CString, Option<Type>)>, CleanError> {
    let mut entries = Vec::new();
    for entry in directory.iter() {
        let entry = entry.map_err(|errno| fs_error("list", path, errno))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        entries.push((name.to_owned(), entry.file_type()));
    }
    Ok(entries)
}

fn unlink(
    parent: &Dir,
    parent_path: &Path,
    name: &CStr,
    flag: UnlinkatFlags,
) -> Result<(), CleanError> {
    match unlinkat(parent.as_fd(), name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(fs_error(
            "remove",
            &parent_path.join(OsStr::from_bytes(name.to_bytes())),
            errno,
        )),
    }
}

/// Renames `name` (in `parent`) to a fresh name at the top of the cleaned
/// directory, so that it is emptied later with few descriptors open.
fn move_to_top(
    parent: &Dir,
    parent_path: &Path,
    name: &CStr,
    top: BorrowedFd<'_>,
    moved: &mut u64,
) -> Result<(), CleanError> {
    loop {
        *moved += 1;
        let new_name = OsString::from(format!(".rbe-runner-deep-{}", *moved));
        match renameat2(
            parent.as_fd(),
            name,
            top,
            new_name.as_os_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EEXIST) => continue,
            Err(errno) => {
                let from = parent_path.join(OsStr::from_bytes(name.to_bytes()));
                return Err(fs_error("move up", &from, errno));
            }
        }
    }
}

fn fs_error(operation: &'static str, path: &Path, errno: Errno) -> CleanError {
    CleanError::FileSystem {
        operation,
        path: path.to_path_buf(),
        errno,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A directory to clean next to an "outside" one that must survive.
    struct Fixture {
        _tmp: tempfile::TempDir,
        scratch: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path().join("scratch");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&scratch).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep me").unwrap();
        Fixture {
            _tmp: tmp,
            scratch,
            outside,
        }
    }

    fn names(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    async fn clean(path: &Path) -> Result<(), CleanError> {
        DirectoryCleaner::open(path).unwrap().clean().await
    }

    /// The basic promise: everything goes, the directory itself stays.
    #[tokio::test]
    async fn empties_a_nested_tree_and_keeps_the_directory() {
        let f = fixture();
        std::fs::create_dir_all(f.scratch.join("a/b/c")).unwrap();
        std::fs::write(f.scratch.join("a/b/c/file"), "x").unwrap();
        std::fs::write(f.scratch.join(".hidden"), "x").unwrap();
        nix::unistd::mkfifo(&f.scratch.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        clean(&f.scratch).await.unwrap();
        assert!(f.scratch.is_dir());
        assert!(names(&f.scratch).is_empty(), "{:?}", names(&f.scratch));
    }

    /// An action can plant symlinks to anything; cleaning must remove the
    /// link and never touch what it points at.
    #[tokio::test]
    async fn symlinks_pointing_outside_are_removed_and_their_targets_kept() {
        let f = fixture();
        symlink(&f.outside, f.scratch.join("to-dir")).unwrap();
        symlink(f.outside.join("precious"), f.scratch.join("to-file")).unwrap();
        std::fs::create_dir(f.scratch.join("sub")).unwrap();
        symlink("../../outside", f.scratch.join("sub/relative")).unwrap();
        clean(&f.scratch).await.unwrap();
        assert!(names(&f.scratch).is_empty());
        assert_eq!(names(&f.outside), vec!["precious"]);
        assert_eq!(
            std::fs::read_to_string(f.outside.join("precious")).unwrap(),
            "keep me"
        );
    }

    /// The configured directory is opened at startup: replacing its path
    /// with a symlink afterwards must not redirect cleaning elsewhere.
    #[tokio::test]
    async fn replacing_the_configured_path_with_a_symlink_does_not_redirect_cleaning() {
        let f = fixture();
        let cleaner = DirectoryCleaner::open(&f.scratch).unwrap();
        let moved = f.scratch.with_file_name("moved-away");
        std::fs::rename(&f.scratch, &moved).unwrap();
        std::fs::write(moved.join("leftover"), "x").unwrap();
        symlink(&f.outside, &f.scratch).unwrap();
        cleaner.clean().await.unwrap();
        assert!(
            names(&moved).is_empty(),
            "the opened directory is the one cleaned"
        );
        assert_eq!(names(&f.outside), vec!["precious"]);
    }

    /// A tree deeper than the descriptors we hold at once is still emptied
    /// (by moving deep parts up), so an action cannot wedge cleaning.
    #[tokio::test]
    async fn a_tree_deeper_than_the_open_descriptor_budget_is_emptied() {
        let f = fixture();
        let mut path = f.scratch.clone();
        for _ in 0..(MAX_OPEN_LEVELS * 3 + 5) {
            path.push("d");
        }
        // Three times the budget: deep parts are moved up more than once.
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("bottom"), "x").unwrap();
        clean(&f.scratch).await.unwrap();
        assert!(names(&f.scratch).is_empty(), "{:?}", names(&f.scratch));
    }

    /// A missing directory is a startup error naming the path.
    #[test]
    fn opening_a_missing_directory_fails_with_its_path() {
        let err = DirectoryCleaner::open(Path::new("/nonexistent/rbe-runner-scratch"))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/rbe-runner-scratch"),
            "{err}"
        );
    }

    /// The cleaner's name carries the directory, for error messages.
    #[test]
    fn name_names_the_directory() {
        let f = fixture();
        let cleaner = DirectoryCleaner::open(&f.scratch).unwrap();
        assert!(cleaner.name().starts_with("cleanTemporaryDirectories"));
        assert!(cleaner.name().contains(&f.scratch.display().to_string()));
    }
}
