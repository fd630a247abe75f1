//! Who can fix a failure: the request, the node, or the runner.
//!
//! Every layer that meets an error (resolving a request path, creating an
//! action cgroup, spawning) classifies it here, once, where the errno is
//! still known; `runner::RunnerError` is built from the classification and
//! `server` maps that to exactly one gRPC code. bb_worker and Bazel act on
//! the code: INVALID_ARGUMENT fails the build (retrying the same request
//! cannot help), UNAVAILABLE retries elsewhere, INTERNAL is our fault.

/// Who is to blame for a failure, and so what the caller should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request is wrong: INVALID_ARGUMENT.
    Request,
    /// The node is short of something a retry, or another worker, has:
    /// UNAVAILABLE.
    Node,
    /// The runner itself: INTERNAL.
    Runner,
}

impl Fault {
    /// The fault of a host errno met while preparing or starting an action
    /// for a request that is otherwise fine: running out of a node's
    /// resources is the node's trouble; anything else is ours.
    pub fn of_host_errno(errno: i32) -> Fault {
        if exhausts_node_resources(errno) {
            Fault::Node
        } else {
            Fault::Runner
        }
    }
}

/// Whether `errno` says the node ran out of something: descriptors (of the
/// runner, or of the whole system), disk space or quota, memory, or
/// processes (`fork` answers EAGAIN at `RLIMIT_NPROC` or `pids.max`).
pub fn exhausts_node_resources(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::EDQUOT | libc::ENOMEM | libc::EAGAIN
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: bb_worker retries UNAVAILABLE on another worker,
    /// which is the only cure for a node out of descriptors or space.
    #[test]
    fn exhausted_node_resources_are_the_nodes_fault_and_the_rest_ours() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOSPC,
            libc::EDQUOT,
            libc::ENOMEM,
            libc::EAGAIN,
        ] {
            assert_eq!(Fault::of_host_errno(errno), Fault::Node, "errno {errno}");
        }
        for errno in [libc::EIO, libc::EPERM, libc::EBADF, libc::EINVAL] {
            assert_eq!(Fault::of_host_errno(errno), Fault::Runner, "errno {errno}");
        }
    }
}
