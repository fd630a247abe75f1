//! The internal runner abstraction.
//!
//! bb_runner's architecture, kept here: a local runner that executes actions,
//! wrapped by decorators that each add one behaviour (cleaning, readiness
//! checks, cgroup accounting, ...). Decorators see plain protocol messages,
//! never `tonic::Request` wrappers, only the request and a small
//! [`CallContext`]; [`crate::server`] adapts the outermost runner to the
//! generated gRPC service and maps [`RunnerError`] (which lives in
//! [`crate::fault`], below both the runner and [`crate::action`]) to a gRPC
//! status in one place. What happens to one action (prepare, place, spawn,
//! supervise, measure, release) is [`crate::action`]'s; the local runner
//! adapts it.

pub mod clean;
pub mod local;
pub mod readiness;
pub mod temporary_directory_symlinking;

use std::sync::Arc;

use tokio::time::Instant;

use crate::fault::RunnerError;
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};
use crate::trace_context::CallTrace;

/// What the runner chain knows of a Run call besides its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallContext {
    /// When the caller's deadline (`grpc-timeout`) passes, if it set one.
    pub deadline: Option<Instant>,
    /// The trace the call belongs to: the runner's server span, or the
    /// caller's span when the runner does not trace.
    pub trace: Option<CallTrace>,
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
