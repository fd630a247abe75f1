//! Unix socket files: binding without taking over a live socket and without
//! a moment in which the socket is more open than configured, and removing
//! only our own socket on exit.
//!
//! bb_runner unlinks whatever is at the path and binds. A second runner
//! started with the same path then steals the first one's live socket, and
//! when the first exits it unlinks the second's. Here a socket file that
//! still accepts connections is refused, one that refuses them (its server
//! is gone) is stale and replaced, and on exit the path is removed only if
//! it is still the inode this process bound.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use nix::sys::stat::Mode;

/// Pending connections the kernel queues before `accept`.
const BACKLOG: i32 = 1024;

/// Errors binding a Unix socket; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path} is served by another process (a connection to it succeeded); refusing to take it over. Stop that process, or give this runner another listenPaths entry")]
    Live { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path} was created by another process while this runner was binding it")]
    Raced { path: PathBuf },
    #[error("cannot listen on Unix socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// A bound, listening Unix socket and the file that names it.
#[derive(Debug)]
pub struct BoundSocket {
    pub path: PathBuf,
    pub listener: std::os::unix::net::UnixListener,
    /// Identity of the socket file, to recognise it on exit.
    identity: FileIdentity,
    /// Permission bits of the socket file.
    pub mode: u32,
}

impl BoundSocket {
    /// Binds `path`, replacing a stale socket; the file gets exactly `mode`
    /// when given, else what the umask leaves of 0777 (bb_runner's
    /// behaviour).
    pub fn bind(path: &Path, mode: Option<u32>) -> Result<BoundSocket, SocketError> {
        let io_error = |what: &'static str| {
            move |source: io::Error| SocketError::Io {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        remove_if_stale(path)?;
        // Bound under a temporary name in the same directory and linked to
        // the path only when complete: the path never names a socket with
        // other permissions, and link(2), unlike rename(2), fails instead of
        // replacing a socket another process bound meanwhile.
        let temporary = temporary_name(path);
        let _ = std::fs::remove_file(&temporary);
        let fd = bind_with_mode(&temporary, mode).map_err(io_error("bind"))?;
        let linked = std::fs::hard_link(&temporary, path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(SocketError::Raced {
                    path: path.to_path_buf(),
                })
            }
            Err(err) => return Err(io_error("link")(err)),
        }
        let metadata = std::fs::symlink_metadata(path).map_err(io_error("stat"))?;
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(io_error("set non-blocking"))?;
        Ok(BoundSocket {
            path: path.to_path_buf(),
            listener,
            identity: FileIdentity::of(&metadata),
            mode: metadata.permissions().mode() & 0o7777,
        })
    }

    /// What to call on exit to remove the socket file, if still ours.
    pub fn remover(&self) -> SocketFile {
        SocketFile {
            path: self.path.clone(),
            identity: self.identity,
        }
    }
}

/// The socket file a runner bound, removed on exit only if it is still the
/// same inode (another runner may have replaced it after we stopped
/// answering on it, and its socket must survive our exit).
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    identity: FileIdentity,
}

/// Device and inode number, plus the inode's change time: file systems
/// such as tmpfs hand a freed inode number to the next file at once, so a
/// socket bound by another runner right after ours was unlinked can have
/// our old number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
    changed: (i64, i64),
}

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> Self {
        FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

impl SocketFile {
    pub fn remove_if_ours(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(metadata) if FileIdentity::of(&metadata) == self.identity => {
                if let Err(err) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %err, "cannot remove socket file");
                }
            }
            Ok(_) => tracing::warn!(
                path = %self.path.display(),
                "not removing the socket file: it is no longer the socket this runner bound"
            ),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot check the socket file")
            }
        }
    }
}

/// Removes `path` if it is a socket nobody accepts on. A socket that still
/// accepts connections is another process's: refused.
fn remove_if_stale(path: &Path) -> Result<(), SocketError> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {}
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Io {
                path: path.to_path_buf(),
                what: "stat",
                source,
            })
        }
    }
    match std::os::unix::net::UnixStream::connect(path) {
        // EAGAIN: the backlog is full, so someone listens.
        Ok(_) => Err(SocketError::Live {
            path: path.to_path_buf(),
        }),
        Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => Err(SocketError::Live {
            path: path.to_path_buf(),
        }),
        Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .or_else(|source| match source.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(SocketError::Io {
                    path: path.to_path_buf(),
                    what: "remove the stale socket",
                    source,
                }),
            }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketError::Io {
            path: path.to_path_buf(),
            what: "probe whether the existing socket is served",
            source,
        }),
    }
}

/// A name next to `path`, unique to this process, kept short because socket
/// paths are limited to 107 bytes.
fn temporary_name(path: &Path) -> PathBuf {
    let name = format!(".rbe-runner-{}.bind", std::process::id());
    match path.parent() {
        Some(parent) => parent.join(name),
        None => PathBuf::from(name),
    }
}

/// A listening socket bound at `path`, whose file never has more
/// permissions than `mode` (when given).
fn bind_with_mode(path: &Path, mode: Option<u32>) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if let Some(mode) = mode {
        // Linux creates the socket file with the socket inode's mode minus
        // the umask, so restricting the unbound socket first means the file
        // is never more open than `mode`, not even between bind and chmod.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode))?;
    }
    let address = UnixAddr::new(path)?;
    socket::bind(fd.as_raw_fd(), &address)?;
    let finish = || -> io::Result<()> {
        if let Some(mode) = mode {
            // Exactly `mode`: give back what the umask took away.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        socket::listen(&fd, Backlog::new(BACKLOG)?)?;
        Ok(())
    };
    if let Err(err) = finish() {
        let _ = std::fs::remove_file(path);
        return Err(err);
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_but_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let bound = BoundSocket::bind(&socket, None).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
        drop(bound);
        let file = dir.path().join("precious");
        std::fs::write(&file, "data").unwrap();
        assert!(matches!(
            BoundSocket::bind(&file, None),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    }

    #[test]
    fn a_live_socket_is_refused_and_kept() {
        // Why: a second runner with the same listenPaths must not steal the
        // socket of one that is serving.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("live.sock");
        let first = BoundSocket::bind(&socket, None).unwrap();
        let err = BoundSocket::bind(&socket, None).unwrap_err();
        assert!(matches!(err, SocketError::Live { .. }), "{err}");
        assert!(err.to_string().contains(&socket.display().to_string()));
        // The first one's socket is still the one at the path.
        first.remover().remove_if_ours();
        assert!(!socket.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary left"
        );
    }

    #[test]
    fn only_our_own_socket_is_removed_on_exit() {
        // Why: a runner that exits after another took over a path (it was
        // stale to that one) must not unlink the other's socket.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("runner.sock");
        let first = BoundSocket::bind(&socket, None).unwrap();
        let remover = first.remover();
        drop(first);
        let second = BoundSocket::bind(&socket, None).unwrap();
        remover.remove_if_ours();
        assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
        second.remover().remove_if_ours();
        assert!(!socket.exists());
    }

    #[test]
    fn the_mode_is_exact_whatever_the_umask() {
        // Why: the socket's permissions are the runner's access control;
        // listenPathMode must give them exactly, wider or narrower than
        // what the umask would leave. (The umask is process-wide, so it is
        // not changed here; tests/listener.rs runs a runner with umask 000.)
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o660, 0o666] {
            let path = dir.path().join(format!("{mode:o}.sock"));
            let bound = BoundSocket::bind(&path, Some(mode)).unwrap();
            assert_eq!(bound.mode, mode);
            let on_disk = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(on_disk, mode);
        }
    }

    #[test]
    fn fchmod_before_bind_restricts_the_created_file() {
        // Why: the absence of a window rests on this kernel behaviour; if
        // a kernel stopped honouring it, this test says so.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o600)).unwrap();
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o600, 0, "created with {mode:o}");
    }
}
