//! Who can fix a failure: the request, the node, or the runner.
//!
//! Every layer that meets an error (resolving a request path, creating an
//! action cgroup, spawning) classifies it here, once, where the errno is
//! still known; [`RunnerError`] is built from the classification and
//! `server` maps that to exactly one gRPC code. bb_worker and Bazel act on
//! the code: INVALID_ARGUMENT fails the build (retrying the same request
//! cannot help), UNAVAILABLE retries elsewhere, INTERNAL is our fault.
//!
//! [`RunnerError`] and [`blocking`] live here, below `runner` and `action`,
//! which both return them: a lower layer never imports from a higher one.

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

/// Why a call failed, classified by who can fix it. [`crate::server`] maps
/// each kind to exactly one gRPC code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunnerError {
    /// The request itself is wrong (a path escapes the build directory, the
    /// program does not exist, ...). Retrying the same request cannot help.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something a retry, or another worker, could fix: node-level memory
    /// pressure, a vanished mount, a runner that is not clean yet.
    #[error("{message}")]
    Unavailable {
        message: String,
        /// Evidence attached as `google.rpc.Status` details, so that it is
        /// not lost with the response the error replaces.
        details: Vec<prost_types::Any>,
    },
    /// Our own fault, or the environment's in a way a retry will not fix.
    #[error("{0}")]
    Internal(String),
    /// The call's deadline passed and its action was stopped. The caller
    /// is gone by then; this is what its outcome is counted as.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller cancelled the call and its action was stopped.
    #[error("{0}")]
    Cancelled(String),
}

impl RunnerError {
    /// The error for a failure classified as `fault`.
    pub fn of_fault(fault: Fault, message: String) -> Self {
        match fault {
            Fault::Request => RunnerError::InvalidArgument(message),
            Fault::Node => RunnerError::unavailable(message),
            Fault::Runner => RunnerError::Internal(message),
        }
    }

    /// An UNAVAILABLE error without details.
    pub fn unavailable(message: impl Into<String>) -> Self {
        RunnerError::Unavailable {
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// Prefixes the message with context, keeping the kind and any details.
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        match self {
            RunnerError::InvalidArgument(m) => {
                RunnerError::InvalidArgument(format!("{prefix}: {m}"))
            }
            RunnerError::Unavailable { message, details } => RunnerError::Unavailable {
                message: format!("{prefix}: {message}"),
                details,
            },
            RunnerError::Internal(m) => RunnerError::Internal(format!("{prefix}: {m}")),
            RunnerError::DeadlineExceeded(m) => {
                RunnerError::DeadlineExceeded(format!("{prefix}: {m}"))
            }
            RunnerError::Cancelled(m) => RunnerError::Cancelled(format!("{prefix}: {m}")),
        }
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> tonic::Code {
        match self {
            RunnerError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            RunnerError::Unavailable { .. } => tonic::Code::Unavailable,
            RunnerError::Internal(_) => tonic::Code::Internal,
            RunnerError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            RunnerError::Cancelled(_) => tonic::Code::Cancelled,
        }
    }
}

/// Runs blocking filesystem and process work off the async worker threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RunnerError> + Send + 'static,
) -> Result<T, RunnerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| RunnerError::Internal(format!("blocking task failed: {err}")))?
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
