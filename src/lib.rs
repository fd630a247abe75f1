//! rbe-runner: a runner for Buildbarn's bb_worker.
//!
//! Module map:
//! - [`proto`]: generated wire types (`buildbarn.runner`, `buildbarn.resourceusage`, `google.rpc`).
//! - [`action`]: one action's life (prepare, place, spawn, supervise, measure, release), its typed outcome, and the observers of it.
//! - [`events`]: action events: the broadcaster with its replay buffer, the journal, the `Events` service and `watch`.
//! - [`config`]: the bb_runner Jsonnet configuration, evaluated and decoded into typed, documented values.
//! - [`runner`]: the internal [`runner::Runner`] trait, the local runner and one decorator per file.
//! - [`build_directory`]: resolving request paths strictly beneath the build directory.
//! - [`process`]: spawning processes, reaping, and graceful termination of process trees.
//! - [`cleaner`]: restoring the host between actions (leftover processes, temporary directories, a command).
//! - [`cgroup`]: the cgroup v2 model: locating cgroups, pure parsers of kernel files, counters.
//! - [`server`]: listeners, shutdown, and the one mapping from runner errors to gRPC statuses.
//! - [`client`]: the operator CLI's client side (`rbe-runner exec`).
//! - [`sync`]: locking state that a panic cannot leave inconsistent.

pub mod action;
pub mod build_directory;
pub mod cgroup;
pub mod cleaner;
pub mod client;
pub mod config;
pub mod events;
pub mod process;
pub mod proto;
pub mod runner;
pub mod server;
pub mod sync;
