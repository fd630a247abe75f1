//! rbe-runner: a runner for Buildbarn's bb_worker.
//!
//! Module map.
//!
//! The server:
//! - [`proto`]: generated wire types (`buildbarn.runner`, `buildbarn.resourceusage`, `google.rpc`, `rbe_runner.resourceusage.v1`).
//! - [`action`]: one action's life (prepare, place, spawn, supervise, measure, release), its typed outcome, and the observers of it.
//! - [`events`]: action events: the broadcaster with its replay buffer, the journal and the `Events` service.
//! - [`output`]: following a running (or finished) action's stdout and stderr: which actions can be followed, the `Output` service, waiting with inotify.
//! - [`config`]: the bb_runner Jsonnet configuration, evaluated and decoded into typed, documented values.
//! - [`runner`]: the internal [`runner::Runner`] trait, the local runner and one decorator per file.
//! - [`build_directory`]: resolving request paths strictly beneath the build directory.
//! - [`exec_limit`]: the kernel's limit on what `execve` passes to a program.
//! - [`request_decoding`]: the gRPC codec that refuses a `RunRequest` too large to execute before decoding it, and any undecodable request with INVALID_ARGUMENT.
//! - [`checked_requests`]: the same refusal for the health and reflection services, whose codec is not ours.
//! - [`fault`]: who can fix a failure (the request, the node, the runner), classified once where the errno is known; [`fault::RunnerError`], the error every layer returns, and [`fault::blocking`].
//! - [`process`]: spawning processes (front door, spawn server, pre-exec child, clone mechanism), reaping, and graceful termination of process trees.
//! - [`cleaner`]: restoring the host between actions (leftover processes, temporary directories, a command).
//! - [`cgroup`]: the cgroup v2 model: locating cgroups, pure parsers of kernel files, counters, per-action limits, the OOM verdict.
//! - [`routes`]: Runner calls straight to the Runner service, the rest through tonic's router.
//! - [`server`]: serving the runner, shutdown, and the one mapping from runner errors to gRPC statuses.
//! - [`shutdown`]: the one deadline every wait at shutdown ends by, and the second signal that abandons waits on others.
//! - [`streams`]: the cap on long-lived streams, event subscriptions and output followers together.
//! - [`metrics`]: Prometheus metrics (gRPC server, actions, cgroup budget, process).
//! - [`diagnostics`]: the diagnostics HTTP server: `/metrics`, `/-/healthy`, `/-/ready`, `/active_spans`.
//! - [`telemetry`]: OpenTelemetry tracing (`global.tracing`): the server span of each call, the action's spans from its outcome, the exporter, and the running actions' spans for `/active_spans`.
//! - [`trace_context`]: the trace a call belongs to, as the runner's layers pass it along.
//! - [`auth`]: who may call: Buildbarn's authentication policies (peer credentials, client certificates, JMESPath), the `runAuthorizer` and `eventsAuthorizer`, and the gate in front of every server's services.
//! - [`listener`]: the connection edge: socket files, handshake limit, `:authority` rewriting, deadlines.
//! - [`bounded`]: request values quoted in error messages, bounded in length.
//! - [`resource_limits`]: `global.setResourceLimits`, and the descriptor limit the runner raises for itself while actions get back the one it started with.
//! - [`room_to_write`]: writing to a socket the event loop watches for reading only, registered for writing only while a write waits for room.
//! - [`sync`]: locking state that a panic cannot leave inconsistent.
//! - [`runtime`]: the async runtime: one worker, the blocking pool's cap, and the one thread SIGCHLD interrupts.
//! - `test_support` (unit tests only): the one way a test skips, shared with `tests/`.
//!
//! The operator's tools:
//! - [`cli`]: the commands other than serving, one file each: `check-config`, `install`, `exec`, `watch`, `report`.
//! - [`report`]: the statistics and renderings behind `rbe-runner report`, from event journals.

pub mod action;
pub mod auth;
pub mod bounded;
pub mod build_directory;
pub mod cgroup;
pub mod checked_requests;
pub mod cleaner;
pub mod cli;
pub mod config;
pub mod diagnostics;
pub mod events;
pub mod exec_limit;
pub mod fault;
pub mod listener;
pub mod metrics;
pub mod output;
pub mod process;
pub mod proto;
pub mod report;
pub mod request_decoding;
pub mod resource_limits;
pub mod room_to_write;
pub mod routes;
pub mod runner;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod streams;
pub mod sync;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod trace_context;
