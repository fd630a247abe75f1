//! One action's life, owned in one place: the spine that the Run response,
//! logs, events and metrics all consume.
//!
//! - [`id`]: `ActionId` = `<runner_instance>-<n>`; the action's cgroup is
//!   named after it and every log line about it carries it.
//! - [`prepare`]: the request's paths resolved beneath the build
//!   directory, its environment, its program, its outputs.
//! - [`mountpoints`]: the mountpoints a chrooted action's input root must
//!   have for the mounts it gets there.
//! - [`placement`]: where its processes live (a process group, or a cgroup
//!   of its own, the place limits are applied), and what measures it.
//! - [`lifecycle`]: prepare, place, spawn, supervise and terminate,
//!   measure, release, in order; produces the outcome.
//! - [`outcome`]: how it ended, as one typed value, with the one
//!   classification (`result()`, `grpc_code()`) every consumer uses.
//! - [`oom_diagnosis`]: the evidence of an OOM kill nothing in the
//!   runner's subtree caused, as an error message and a server-logs file.
//! - [`observer`]: the trait through which the lifecycle, the dirty gate,
//!   decorators and shutdown report typed facts; logs are one observer.
//! - [`running`]: the count of actions alive and the shutdown signal,
//!   shared with the decorators that wait for actions to be gone.
//!
//! A Run travels: `server` (gRPC, the call's deadline) → decorators →
//! `runner::local` (gates, the detached supervisor task) →
//! [`lifecycle::Actions::run`] → `process::spawn` (the child) → back as an
//! [`outcome::ActionOutcome`], which `runner::local` turns into the
//! response or the error.

pub mod id;
pub mod lifecycle;
pub mod mountpoints;
pub mod observer;
pub mod oom_diagnosis;
pub mod outcome;
pub mod placement;
pub mod prepare;
pub mod running;
#[cfg(test)]
mod tests;

pub use id::{ActionId, ActionIds, RunnerInstance};
pub use lifecycle::{ActionOptions, Actions, CallGone};
pub use observer::{Observer, Observers};
pub use outcome::{ActionOutcome, ActionResult, TerminationReason};
pub use placement::PlacementPolicy;
pub use running::{ActionsRunning, ShutdownSignal};
