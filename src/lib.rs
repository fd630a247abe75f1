//! rbe-runner: a runner for Buildbarn's bb_worker.
//!
//! Module map:
//! - [`proto`]: generated wire types (`buildbarn.runner`, `buildbarn.resourceusage`, `google.rpc`).
//! - [`config`]: the bb_runner Jsonnet configuration, evaluated and decoded into typed, documented values.
//! - [`runner`]: the internal [`runner::Runner`] trait, the local runner and one decorator per file.
//! - [`build_directory`]: resolving request paths strictly beneath the build directory.
//! - [`process`]: spawning actions, reaping, and graceful termination of process groups.
//! - [`cleaner`]: restoring the host between actions (leftover processes, temporary directories, a command).
//! - [`cgroup`]: the cgroup v2 model: locating cgroups, pure parsers of kernel files, counters.
//! - [`server`]: serving the runner, shutdown, and the one mapping from runner errors to gRPC statuses.
//! - [`listener`]: the connection edge: socket files, handshake limit, `:authority` rewriting, deadlines.
//! - [`bounded`]: request values quoted in error messages, bounded in length.
//! - [`client`]: the operator CLI's client side (`rbe-runner exec`).

pub mod bounded;
pub mod build_directory;
pub mod cgroup;
pub mod cleaner;
pub mod client;
pub mod config;
pub mod listener;
pub mod process;
pub mod proto;
pub mod runner;
pub mod server;
