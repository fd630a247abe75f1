//! What is kept of each finished action and each runner instance: the
//! figures are computed from these alone.

use super::super::parse::Stall;
use crate::cgroup::attribution::OomVerdict;

/// One finished action, as kept for the figures.
#[derive(Debug, Clone)]
pub struct Action {
    /// Index into the report's runner instances (`u32`: a few million
    /// of these are kept, and each byte of them counts).
    pub runner: u32,
    /// Index into the groups.
    pub group: u32,
    /// The end, seconds since the epoch (see [`Action::start`]).
    pub end: f64,
    /// Wall time in seconds.
    pub wall_seconds: f64,
    /// The cgroup's memory peak, else the POSIX maximum RSS.
    pub memory_bytes: Option<i64>,
    /// Whether `memory_bytes` is the POSIX maximum RSS.
    pub memory_from_rss: bool,
    /// User plus system CPU seconds.
    pub cpu_seconds: Option<f64>,
    /// PSI `some` totals.
    pub stall: Option<Stall>,
    /// Whose limit an OOM kill hit.
    pub oom_verdict: OomVerdict,
}

impl Action {
    /// The start, seconds since the epoch: the end less the wall time
    /// (computed, not kept: it is what was kept before).
    pub fn start(&self) -> f64 {
        self.end - self.wall_seconds
    }
}

/// A runner instance seen in the journals.
#[derive(Debug, Clone, Default)]
pub struct Runner {
    /// 8 hex digits.
    pub instance: String,
    /// `events.runnerName` from its last `RunnerState`.
    pub name: String,
    /// The budget from its last `RunnerState`; 0: none or unknown.
    pub memory_budget_bytes: i64,
}
