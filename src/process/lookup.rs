//! Finding the program of an action (`arguments[0]`).
//!
//! A program without a slash is looked up in the PATH of the *request's*
//! environment, never the runner's: the action's environment is exactly
//! what the client sent. Relative PATH entries resolve against the working
//! directory and an empty entry means the working directory itself; a match
//! found through a relative entry is executed by its relative path, so that
//! scripts see a relative `$0`, as they do under bb_runner.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::sys::stat::{fstat, fstatat, FileStat, SFlag};

use crate::bounded::quoted;
use crate::build_directory::open_in_root;

/// The program could not be found.
#[derive(Debug, thiserror::Error)]
#[error("program {} was not found as an executable file in PATH {} (relative entries are resolved against the working directory)", quoted(argv0), quoted(path))]
pub struct NotFound {
    pub argv0: String,
    pub path: String,
}

/// Returns the path to hand to execve for `argv0`. `root` is the input root
/// when actions are chrooted into it (absolute PATH entries then resolve
/// inside it).
pub fn find_program(
    argv0: &str,
    path_variable: Option<&str>,
    working_directory: BorrowedFd<'_>,
    root: Option<BorrowedFd<'_>>,
) -> Result<String, NotFound> {
    if argv0.contains('/') {
        return Ok(argv0.to_string());
    }
    let path = path_variable.unwrap_or("");
    if !argv0.is_empty() {
        for entry in path.split(':') {
            let candidate = if entry.is_empty() {
                format!("./{argv0}")
            } else {
                Path::new(entry).join(argv0).to_string_lossy().into_owned()
            };
            let stat = if candidate.starts_with('/') {
                match root {
                    Some(root) => open_in_root(root, &candidate).and_then(|fd| fstat(fd.as_fd())),
                    None => nix::sys::stat::stat(candidate.as_str()),
                }
            } else {
                fstatat(working_directory, candidate.as_str(), AtFlags::empty())
            };
            if stat.is_ok_and(|stat| is_executable_file(&stat)) {
                return Ok(candidate);
            }
        }
    }
    Err(NotFound {
        argv0: argv0.to_string(),
        path: path.to_string(),
    })
}

fn is_executable_file(stat: &FileStat) -> bool {
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    kind == SFlag::S_IFREG && stat.st_mode & 0o111 != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::PermissionsExt;

    fn open_dir(path: &Path) -> OwnedFd {
        nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap()
    }

    fn executable(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn argv0_with_a_slash_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let wd = open_dir(dir.path());
        assert_eq!(
            find_program("./tool", None, wd.as_fd(), None).unwrap(),
            "./tool"
        );
        assert_eq!(
            find_program("/bin/sh", None, wd.as_fd(), None).unwrap(),
            "/bin/sh"
        );
    }

    #[test]
    fn absolute_entries_are_host_paths() {
        let dir = tempfile::tempdir().unwrap();
        let wd = open_dir(dir.path());
        assert_eq!(
            find_program("sh", Some("/nonexistent:/bin"), wd.as_fd(), None).unwrap(),
            "/bin/sh"
        );
    }

    #[test]
    fn relative_entries_resolve_against_the_working_directory_and_stay_relative() {
        let dir = tempfile::tempdir().unwrap();
        executable(&dir.path().join("tools/bin/compile"));
        let wd = open_dir(dir.path());
        assert_eq!(
            find_program("compile", Some("/nonexistent:tools/bin"), wd.as_fd(), None).unwrap(),
            "tools/bin/compile"
        );
    }

    #[test]
    fn empty_entry_means_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        executable(&dir.path().join("script"));
        let wd = open_dir(dir.path());
        assert_eq!(
            find_program("script", Some("/nonexistent:"), wd.as_fd(), None).unwrap(),
            "./script"
        );
    }

    #[test]
    fn non_executable_files_and_directories_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/tool")).unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/tool"), "").unwrap();
        executable(&dir.path().join("c/tool"));
        let wd = open_dir(dir.path());
        assert_eq!(
            find_program("tool", Some("a:b:c"), wd.as_fd(), None).unwrap(),
            "c/tool"
        );
    }

    #[test]
    fn not_found_names_argv0_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let wd = open_dir(dir.path());
        let err =
            find_program("no-such-tool", Some("/nonexistent:rel"), wd.as_fd(), None).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("no-such-tool"), "{message}");
        assert!(message.contains("/nonexistent:rel"), "{message}");
        assert!(
            find_program("sh", None, wd.as_fd(), None).is_err(),
            "no PATH in the request means no lookup"
        );
    }

    #[test]
    fn absolute_entries_resolve_inside_the_chroot() {
        let dir = tempfile::tempdir().unwrap();
        executable(&dir.path().join("usr/bin/inside"));
        let root = open_dir(dir.path());
        assert_eq!(
            find_program("inside", Some("/usr/bin"), root.as_fd(), Some(root.as_fd())).unwrap(),
            "/usr/bin/inside"
        );
        // The host's /bin/sh is not visible inside the root.
        assert!(find_program("sh", Some("/bin"), root.as_fd(), Some(root.as_fd())).is_err());
    }
}
