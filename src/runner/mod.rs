//! The internal runner abstraction.
//!
//! bb_runner's architecture, kept here: a local runner that executes actions,
//! wrapped by decorators that each add one behaviour (cleaning, readiness
//! checks, cgroup accounting, ...). Decorators see plain protocol messages,
//! never `tonic::Request` wrappers, only the request and a small
//! [`CallContext`]; [`crate::server`] adapts the outermost runner to the
//! generated gRPC service and maps [`RunnerError`] to a gRPC status in one
//! place. What happens to one action (prepare, place, spawn, supervise,
//! measure, release) is [`crate::action`]'s; the local runner adapts it.

pub mod clean;
pub mod local;
pub mod readiness;
pub mod temporary_directory_symlinking;

use std::sync::Arc;

use tokio::time::Instant;

use crate::build_directory::PathError;
use crate::fault::Fault;
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

/// What the runner chain knows of a Run call besides its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallContext {
    /// When the caller's deadline (`grpc-timeout`) passes, if it set one.
    pub deadline: Option<Instant>,
}

/// One link of the runner chain.
///
/// `run` futures may be dropped at any point (the RPC was cancelled or its
/// deadline passed); implementations must then still clean up, detached from
/// the dropped future.
#[tonic::async_trait]
pub trait Runner: Send + Sync + 'static {
    /// Succeeds when the runner can accept work and the request's path exists.
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError>;

    /// Runs one action to completion.
    async fn run(&self, request: RunRequest, call: CallContext)
        -> Result<RunResponse, RunnerError>;
}

/// A shared, type-erased runner, as decorators hold their base.
pub type SharedRunner = Arc<dyn Runner>;

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

impl From<PathError> for RunnerError {
    /// A path the request names is its own fault (INVALID_ARGUMENT) unless
    /// the failure is the host's: the node's (out of descriptors or space:
    /// UNAVAILABLE) or ours (INTERNAL).
    fn from(error: PathError) -> Self {
        RunnerError::of_fault(error.fault(), error.to_string())
    }
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
