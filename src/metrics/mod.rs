//! Prometheus metrics, served as the text format 0.0.4 on `/metrics`.
//!
//! - [`grpc`]: go-grpc-prometheus's server metrics, from one tower layer
//!   around the gRPC routes, so Buildbarn's dashboards work unchanged.
//! - [`actions`]: what happened to actions, from an [`Observer`] of the
//!   action lifecycle (its outcome classification, its measured usage).
//! - [`cgroup_budget`]: the delegated cgroup's memory and stall totals,
//!   read when scraped.
//! - [`events`]: what the event stream lost (dropped events, journal
//!   lines not written), read when scraped.
//! - [`spans`]: trace spans dropped (queue full, export failed), read
//!   when scraped.
//! - [`spawn_server`]: whether the spawn server creates actions'
//!   processes, read when scraped.
//! - [`tls`]: Buildbarn's expiry metrics of the served TLS certificates,
//!   read when scraped.
//!
//! The `prometheus` crate is used because its `TextEncoder` writes exactly
//! the 0.0.4 text format with the names given (counters keep `_total`),
//! it ships the standard `process_*` collector, and it is the long-lived,
//! maintained client of the TiKV project.
//!
//! [`Observer`]: crate::action::Observer

pub mod actions;
pub mod cgroup_budget;
pub mod events;
pub mod grpc;
pub mod spans;
pub mod spawn_server;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use prometheus::{Encoder, IntCounter, IntGaugeVec, Opts, Registry, TextEncoder};

pub use actions::ActionMetrics;
pub use grpc::{GrpcMetrics, GrpcMetricsService};

/// The content type of `/metrics`.
pub const TEXT_FORMAT: &str = prometheus::TEXT_FORMAT;

/// Three bounds per decade from 1 ms to 1000 s (go-grpc-prometheus's
/// handling buckets as Buildbarn configures them, and bb_worker's decimal
/// buckets for times).
pub const DECIMAL_BUCKETS: [f64; 19] = [
    0.001, 0.0021544, 0.0046416, 0.01, 0.021544, 0.046416, 0.1, 0.21544, 0.46416, 1.0, 2.1544,
    4.6416, 10.0, 21.544, 46.416, 100.0, 215.44, 464.16, 1000.0,
];

/// Powers of two from `2^from` to `2^to`, both included.
pub fn powers_of_two(from: u32, to: u32) -> Vec<f64> {
    (from..=to)
        .map(|exponent| (1u64 << exponent) as f64)
        .collect()
}

/// A gRPC code as Go spells its name (`codes.Code.String()`), which is
/// what go-grpc-prometheus puts in `grpc_code`.
pub fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// All 17 gRPC codes, in numeric order.
pub const ALL_CODES: [tonic::Code; 17] = [
    tonic::Code::Ok,
    tonic::Code::Cancelled,
    tonic::Code::Unknown,
    tonic::Code::InvalidArgument,
    tonic::Code::DeadlineExceeded,
    tonic::Code::NotFound,
    tonic::Code::AlreadyExists,
    tonic::Code::PermissionDenied,
    tonic::Code::ResourceExhausted,
    tonic::Code::FailedPrecondition,
    tonic::Code::Aborted,
    tonic::Code::OutOfRange,
    tonic::Code::Unimplemented,
    tonic::Code::Internal,
    tonic::Code::Unavailable,
    tonic::Code::DataLoss,
    tonic::Code::Unauthenticated,
];

/// Every metric of one runner, in one registry.
pub struct Metrics {
    registry: Registry,
    /// The gRPC server metrics, shared by every listener's layer.
    pub grpc: Arc<GrpcMetrics>,
    /// The action metrics; wire it as an observer.
    pub actions: Arc<ActionMetrics>,
    /// `rbe_runner_diagnostics_connections_rejected_total`, counted by the
    /// diagnostics server.
    pub diagnostics_connections_rejected: IntCounter,
}

impl Metrics {
    /// All metrics, pre-created at zero. `delegated_cgroup` is the parent of
    /// the action cgroups, whose budget is read at scrape time, as are the
    /// losses of the event stream (`events`) and the spans dropped
    /// (`span_drops`).
    pub fn new(
        delegated_cgroup: Option<PathBuf>,
        events: crate::events::EventCounters,
        spawn_server: Option<Arc<crate::process::spawn_server::SpawnServer>>,
        served_certificates: crate::listener::tls::ServedCertificates,
        span_drops: Arc<crate::telemetry::SpanDrops>,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let grpc = Arc::new(GrpcMetrics::register(&registry)?);
        let actions = Arc::new(ActionMetrics::register(&registry)?);
        registry.register(Box::new(events::EventLosses::new(events)?))?;
        registry.register(Box::new(spawn_server::SpawnServerUp::new(spawn_server)?))?;
        registry.register(Box::new(spans::SpansDropped::new(span_drops)?))?;
        registry.register(Box::new(tls::TlsCertificateDates::new(
            served_certificates,
        )?))?;
        if let Some(cgroup) = delegated_cgroup {
            registry.register(Box::new(cgroup_budget::CgroupBudget::new(cgroup)?))?;
        }
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "rbe_runner_build_info",
                "Always 1; the version label names the running build.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let diagnostics_connections_rejected = IntCounter::new(
            "rbe_runner_diagnostics_connections_rejected_total",
            "Connections to the diagnostics HTTP server closed as soon as accepted, because it held as many as it may.",
        )?;
        registry.register(Box::new(diagnostics_connections_rejected.clone()))?;
        Ok(Metrics {
            registry,
            grpc,
            actions,
            diagnostics_connections_rejected,
        })
    }

    /// The exposition of every metric, in the text format 0.0.4.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        String::from_utf8(text).map_err(|err| prometheus::Error::Msg(err.to_string()))
    }
}
