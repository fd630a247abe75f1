//! The internal runner abstraction.
//!
//! bb_runner's architecture, kept here: a local runner that executes actions,
//! wrapped by decorators that each add one behaviour (cleaning, readiness
//! checks, cgroup accounting, ...). Decorators see plain protocol messages,
//! never `tonic::Request` wrappers; [`crate::server`] adapts the outermost
//! runner to the generated gRPC service and maps [`RunnerError`] to a gRPC
//! status in one place.

pub mod action_cgroup_attribution;
pub mod cgroup_sampling;
pub mod clean;
pub mod local;
pub mod oom_diagnosis;
pub mod readiness;
pub mod temporary_directory_symlinking;

use std::sync::Arc;

use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

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
    async fn run(&self, request: RunRequest) -> Result<RunResponse, RunnerError>;
}

/// A shared, type-erased runner, as decorators hold their base.
pub type SharedRunner = Arc<dyn Runner>;

/// Why a call failed, classified by who can fix it. [`crate::server`] maps
/// each kind to exactly one gRPC code.
#[derive(Debug, thiserror::Error)]
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
}

impl RunnerError {
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
        }
    }
}
