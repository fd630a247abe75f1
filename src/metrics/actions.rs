//! The action metrics: one [`Observer`] of the action lifecycle, counting
//! outcomes with their one classification ([`ActionOutcome::result`],
//! [`ActionOutcome::grpc_code`]) and observing the usage measured.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::{go_code_name, powers_of_two, ALL_CODES, DECIMAL_BUCKETS};
use crate::action::observer::{
    ActionStarted, CleanerFinished, CleanupFailed, Observer, RunnerState,
};
use crate::action::outcome::{ActionResult, Ended};
use crate::action::{ActionId, ActionOutcome, TerminationReason};
use crate::cgroup::attribution::OomVerdict;
use crate::sync::lock_unpoisoned;

const RESULTS: [ActionResult; 4] = [
    ActionResult::Success,
    ActionResult::NonZeroExitCode,
    ActionResult::Signal,
    ActionResult::Failure,
];
const REASONS: [TerminationReason; 3] = [
    TerminationReason::Deadline,
    TerminationReason::Cancelled,
    TerminationReason::Shutdown,
];
const VERDICTS: [OomVerdict; 3] = [
    OomVerdict::OwnLimit,
    OomVerdict::SharedLimit,
    OomVerdict::NotOwnLimit,
];
/// The cleaners' configuration keys, which label `cleaner`.
const CLEANERS: [&str; 3] = [
    "cleanProcessTable",
    "cleanTemporaryDirectories",
    "runCommandCleaner",
];
const PRESSURE_RESOURCES: [&str; 3] = ["cpu", "memory", "io"];
const PRESSURE_KINDS: [&str; 2] = ["some", "full"];

/// The action metrics, pre-created at zero; an [`Observer`].
pub struct ActionMetrics {
    finished: IntCounterVec,
    wall_time: Histogram,
    running: IntGauge,
    /// The actions started and not yet finished, so that an action that
    /// never started does not move `running`.
    running_ids: Mutex<HashSet<ActionId>>,
    terminations: IntCounterVec,
    oom_kills: IntCounterVec,
    cleanup_failures: IntCounter,
    refusing_work: IntGauge,
    cleaner_runs: IntCounterVec,
    memory_peak: Histogram,
    pressure_stall: HistogramVec,
    posix_user_time: Histogram,
    posix_system_time: Histogram,
    posix_maximum_resident_set_size: Histogram,
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(histogram.clone()))?;
    Ok(histogram)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let gauge = IntGauge::new(name, help)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

impl ActionMetrics {
    /// Creates the metrics in `registry`, every enumerable series at zero.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let finished = counter_vec(
            registry,
            "rbe_runner_actions_finished_total",
            "Actions finished, by result class and the gRPC code of their Run call.",
            &["result", "grpc_code"],
        )?;
        for result in RESULTS {
            for code in ALL_CODES {
                finished.with_label_values(&[result.as_str(), go_code_name(code)]);
            }
        }
        let terminations = counter_vec(
            registry,
            "rbe_runner_action_terminations_total",
            "Actions the runner stopped, by why and whether SIGKILL was needed at the grace deadline.",
            &["reason", "sigkill"],
        )?;
        for reason in REASONS {
            for sigkill in ["true", "false"] {
                terminations.with_label_values(&[reason.as_str(), sigkill]);
            }
        }
        let oom_kills = counter_vec(
            registry,
            "rbe_runner_action_oom_kills_total",
            "Actions with OOM-killed processes, by whose limit was reached.",
            &["verdict"],
        )?;
        for verdict in VERDICTS {
            oom_kills.with_label_values(&[verdict_name(verdict)]);
        }
        let cleaner_runs = counter_vec(
            registry,
            "rbe_runner_cleaner_runs_total",
            "Cleaner runs, by cleaner (its configuration key) and result.",
            &["cleaner", "result"],
        )?;
        for cleaner in CLEANERS {
            for result in ["ok", "failed"] {
                cleaner_runs.with_label_values(&[cleaner, result]);
            }
        }
        let cleanup_failures = IntCounter::new(
            "rbe_runner_action_cleanup_failures_total",
            "Action cgroups that could not be emptied and removed.",
        )?;
        registry.register(Box::new(cleanup_failures.clone()))?;
        let pressure_stall = HistogramVec::new(
            HistogramOpts::new(
                "rbe_runner_action_pressure_stall_seconds",
                "Per action, time stalled on a resource (PSI of its cgroup), by resource and kind.",
            )
            .buckets(DECIMAL_BUCKETS.to_vec()),
            &["resource", "kind"],
        )?;
        registry.register(Box::new(pressure_stall.clone()))?;
        for resource in PRESSURE_RESOURCES {
            for kind in PRESSURE_KINDS {
                pressure_stall.with_label_values(&[resource, kind]);
            }
        }
        Ok(ActionMetrics {
            finished,
            wall_time: histogram(
                registry,
                "rbe_runner_action_wall_time_seconds",
                "Per action, from the start of its preparation to its end, cleanup included.",
                DECIMAL_BUCKETS.to_vec(),
            )?,
            running: gauge(
                registry,
                "rbe_runner_actions_running",
                "Actions whose process was started and that have not finished.",
            )?,
            running_ids: Mutex::new(HashSet::new()),
            terminations,
            oom_kills,
            cleanup_failures,
            refusing_work: gauge(
                registry,
                "rbe_runner_refusing_work",
                "1 while the runner refuses work (dirty cgroup, readiness path missing, shutdown).",
            )?,
            cleaner_runs,
            memory_peak: histogram(
                registry,
                "rbe_runner_action_memory_peak_bytes",
                "Per action measured by its cgroup, the highest memory use seen.",
                powers_of_two(20, 36),
            )?,
            pressure_stall,
            posix_user_time: histogram(
                registry,
                "rbe_runner_action_posix_user_time_seconds",
                "Per action, user CPU time in the POSIXResourceUsage sent to bb_worker (rusage of its process).",
                DECIMAL_BUCKETS.to_vec(),
            )?,
            posix_system_time: histogram(
                registry,
                "rbe_runner_action_posix_system_time_seconds",
                "Per action, system CPU time in the POSIXResourceUsage sent to bb_worker (rusage of its process).",
                DECIMAL_BUCKETS.to_vec(),
            )?,
            posix_maximum_resident_set_size: histogram(
                registry,
                "rbe_runner_action_posix_maximum_resident_set_size_bytes",
                "Per action, maximum resident set size in the POSIXResourceUsage sent to bb_worker.",
                powers_of_two(10, 32),
            )?,
        })
    }

    fn observe_usage(&self, outcome: &ActionOutcome) {
        if let Some(posix) = &outcome.posix_usage {
            if let Some(user) = &posix.user_time {
                self.posix_user_time.observe(seconds(user));
            }
            if let Some(system) = &posix.system_time {
                self.posix_system_time.observe(seconds(system));
            }
            self.posix_maximum_resident_set_size
                .observe(posix.maximum_resident_set_size as f64);
        }
        if let Some(cgroup) = &outcome.cgroup_usage {
            // 0 means the peak could not be measured.
            if cgroup.memory_peak > 0 {
                self.memory_peak.observe(cgroup.memory_peak as f64);
            }
            let stalls = [
                ("cpu", "some", &cgroup.cpu_pressure_some_total),
                ("cpu", "full", &cgroup.cpu_pressure_full_total),
                ("memory", "some", &cgroup.memory_pressure_some_total),
                ("memory", "full", &cgroup.memory_pressure_full_total),
                ("io", "some", &cgroup.io_pressure_some_total),
                ("io", "full", &cgroup.io_pressure_full_total),
            ];
            // Absent when the kernel has no PSI for the cgroup.
            for (resource, kind, stall) in stalls {
                if let Some(stall) = stall {
                    self.pressure_stall
                        .with_label_values(&[resource, kind])
                        .observe(seconds(stall));
                }
            }
        }
    }
}

fn seconds(duration: &prost_types::Duration) -> f64 {
    duration.seconds as f64 + f64::from(duration.nanos) / 1e9
}

fn verdict_name(verdict: OomVerdict) -> &'static str {
    match verdict {
        OomVerdict::None => "None",
        OomVerdict::OwnLimit => "OwnLimit",
        OomVerdict::SharedLimit => "SharedLimit",
        OomVerdict::NotOwnLimit => "NotOwnLimit",
    }
}

impl Observer for ActionMetrics {
    fn action_started(&self, started: &ActionStarted) {
        let mut running = lock_unpoisoned(&self.running_ids);
        running.insert(started.id.clone());
        self.running.set(running.len() as i64);
    }

    fn action_finished(&self, outcome: &ActionOutcome) {
        // Everything about the action is recorded before it counts as
        // finished (out of `running`, into the wall-time count): a scrape
        // that sees it finished sees all of its figures.
        if let Ended::Terminated {
            reason,
            killed_at_grace_deadline,
        } = &outcome.ended
        {
            let sigkill = if *killed_at_grace_deadline {
                "true"
            } else {
                "false"
            };
            self.terminations
                .with_label_values(&[reason.as_str(), sigkill])
                .inc();
        }
        if outcome.oom.verdict != OomVerdict::None {
            self.oom_kills
                .with_label_values(&[verdict_name(outcome.oom.verdict)])
                .inc();
        }
        self.observe_usage(outcome);
        self.finished
            .with_label_values(&[outcome.result().as_str(), go_code_name(outcome.grpc_code())])
            .inc();
        self.wall_time.observe(outcome.wall_time.as_secs_f64());
        let mut running = lock_unpoisoned(&self.running_ids);
        running.remove(&outcome.id);
        self.running.set(running.len() as i64);
    }

    fn cleanup_failed(&self, _failed: &CleanupFailed) {
        self.cleanup_failures.inc();
    }

    fn runner_state_changed(&self, state: &RunnerState) {
        self.refusing_work
            .set(if state.accepting_work { 0 } else { 1 });
    }

    fn cleaner_finished(&self, finished: &CleanerFinished) {
        // `cleanTemporaryDirectories "/tmp"`: the label is the key alone,
        // so that the series stay few and known.
        let cleaner = finished
            .cleaner
            .split_whitespace()
            .next()
            .unwrap_or_default();
        let result = if finished.error.is_some() {
            "failed"
        } else {
            "ok"
        };
        self.cleaner_runs
            .with_label_values(&[cleaner, result])
            .inc();
    }
}
