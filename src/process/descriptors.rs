//! Descriptors the runner inherited from whatever started it.
//!
//! A shell, a supervisor or a test harness may start the runner with open
//! descriptors beyond stdin, stdout and stderr that are not close-on-exec
//! (a shell's `exec 7<file`, a leaked pipe). Every action's child is a
//! copy of the runner (or of the spawn server, which the runner starts),
//! so each of those would reach every action: an action could read or
//! write a file the runner's parent opened, or hold a pipe open that its
//! parent waits on. The runner uses none of them, so at startup, before
//! any thread or child exists, it marks every descriptor above stderr
//! close-on-exec. Descriptors the runner opens itself are close-on-exec
//! already (Rust's standard library and ours open them so), and those an
//! action must have are placed by its child after the copy.

use std::io;

/// The first descriptor after stdin, stdout and stderr.
const FIRST_INHERITED: libc::c_uint = 3;

/// Marks every descriptor above stderr close-on-exec; returns how many
/// were open (and so are now closed at every exec). Call it before any
/// thread or child exists.
pub fn close_inherited_at_exec() -> io::Result<usize> {
    let open = open_above_stderr()?;
    // SAFETY: close_range takes only numbers and changes only the flags
    // of this process's descriptors; no memory is involved.
    let marked = unsafe {
        libc::close_range(
            FIRST_INHERITED,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    };
    if marked != 0 {
        // Kernels before 5.11 know no CLOSE_RANGE_CLOEXEC: one at a time.
        for fd in &open {
            // SAFETY: fcntl on a number with an integer argument; a number
            // closed meanwhile only answers EBADF.
            unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(open.len())
}

/// The descriptors above stderr open now, from `/proc/self/fd` (the
/// descriptor that lists them excluded).
fn open_above_stderr() -> io::Result<Vec<libc::c_int>> {
    let listing = std::fs::read_dir("/proc/self/fd")?;
    let mut open = Vec::new();
    for entry in listing {
        let name = entry?.file_name();
        if let Some(fd) = name
            .to_str()
            .and_then(|name| name.parse::<libc::c_int>().ok())
        {
            if fd >= FIRST_INHERITED as libc::c_int {
                open.push(fd);
            }
        }
    }
    // The directory's own descriptor was listed and is closed by now.
    open.retain(|fd| {
        // SAFETY: fcntl on a number with no argument; a closed one
        // answers EBADF.
        unsafe { libc::fcntl(*fd, libc::F_GETFD) >= 0 }
    });
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Why it matters: an inherited descriptor left without close-on-exec
    /// reaches every action.
    #[test]
    fn an_inherited_descriptor_is_marked_close_on_exec() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: clears the flag of the descriptor `file` owns.
        let cleared = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        assert_eq!(cleared, 0);
        let open = close_inherited_at_exec().unwrap();
        assert!(open >= 1, "the test's own descriptor is open: {open}");
        // SAFETY: reads the flags of the descriptor `file` owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
