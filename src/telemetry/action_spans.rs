//! Each finished action as spans: an `action` span under the call's
//! server span, with the typed outcome as attributes, the termination
//! steps as events and an error status for a failed call; and one child
//! span per phase it reached (prepare, spawn, run, measure, release).
//!
//! An observer like the metrics and the events: it consumes the action's
//! facts, and builds the spans after the fact from their timestamps, so
//! the action's path only records a termination step or hands over the
//! outcome.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, Tracer};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracer;

use crate::action::observer::{ActionTerminating, Observer};
use crate::action::outcome::{ActionOutcome, Ended, ExitStatus, Phase};
use crate::action::ActionId;
use crate::sync::lock_unpoisoned;
use crate::trace_context::CallTrace;

/// Attribute names, one place for the span, the docs and the tests.
pub mod attribute {
    pub const ACTION_ID: &str = "rbe_runner.action.id";
    pub const ARGV0: &str = "rbe_runner.action.argv0";
    pub const PID: &str = "rbe_runner.action.pid";
    pub const RESULT: &str = "rbe_runner.action.result";
    pub const GRPC_CODE: &str = "rpc.grpc.status_code";
    pub const EXIT_CODE: &str = "rbe_runner.action.exit_code";
    pub const SIGNAL: &str = "rbe_runner.action.signal";
    pub const TERMINATION_REASON: &str = "rbe_runner.action.termination_reason";
    pub const KILLED_AT_GRACE_DEADLINE: &str = "rbe_runner.action.killed_at_grace_deadline";
    pub const WALL_TIME: &str = "rbe_runner.action.wall_time_seconds";
    pub const MEMORY_PEAK: &str = "rbe_runner.action.memory_peak_bytes";
    pub const OOM_VERDICT: &str = "rbe_runner.action.oom_verdict";
    pub const OOM_RETRYABLE: &str = "rbe_runner.action.oom_retryable";
    pub const CLEANUP: &str = "rbe_runner.action.cleanup";
    /// Prefix of the PSI stall totals, e.g. `…memory_some_seconds`.
    pub const PRESSURE: &str = "rbe_runner.action.pressure.";
}

/// A termination step, kept until the action's spans are made.
struct Step {
    at: SystemTime,
    terminating: ActionTerminating,
}

/// Makes the spans of each finished action of a sampled trace.
pub struct ActionSpans {
    tracer: SdkTracer,
    steps: Mutex<HashMap<ActionId, Vec<Step>>>,
}

impl ActionSpans {
    /// Spans made with `tracer`.
    pub fn new(tracer: SdkTracer) -> Self {
        ActionSpans {
            tracer,
            steps: Mutex::new(HashMap::new()),
        }
    }

    fn record(&self, outcome: &ActionOutcome, trace: &CallTrace, steps: Vec<Step>) {
        let parent = super::context_of(trace);
        let end = outcome.started_at + outcome.wall_time;
        let mut action = self.tracer.build_with_context(
            SpanBuilder::from_name("action")
                .with_kind(SpanKind::Internal)
                .with_start_time(outcome.started_at)
                .with_attributes(attributes(outcome)),
            &parent,
        );
        for step in steps {
            let name = if step.terminating.killed_at_grace_deadline {
                "SIGKILL sent"
            } else {
                "SIGTERM sent"
            };
            action.add_event_with_timestamp(
                name,
                step.at,
                vec![KeyValue::new(
                    attribute::TERMINATION_REASON,
                    step.terminating.reason.as_str(),
                )],
            );
        }
        if let Some(error) = outcome.error() {
            action.set_status(Status::error(error.to_string()));
        }
        let action_trace = super::call_trace(action.span_context());
        let action_context = super::context_of(&action_trace);
        let phases = &outcome.phases;
        for (name, phase) in [
            ("prepare", phases.prepare),
            ("spawn", phases.spawn),
            ("run", phases.run),
            ("measure", phases.measure),
            ("release", phases.release),
        ] {
            let Some(Phase { start, end }) = phase else {
                continue;
            };
            let mut span = self.tracer.build_with_context(
                SpanBuilder::from_name(name)
                    .with_kind(SpanKind::Internal)
                    .with_start_time(start),
                &action_context,
            );
            span.end_with_timestamp(end);
        }
        action.end_with_timestamp(end);
    }
}

impl Observer for ActionSpans {
    fn action_terminating(&self, terminating: &ActionTerminating) {
        lock_unpoisoned(&self.steps)
            .entry(terminating.id.clone())
            .or_default()
            .push(Step {
                at: SystemTime::now(),
                terminating: terminating.clone(),
            });
    }

    fn action_finished(&self, outcome: &ActionOutcome) {
        let steps = lock_unpoisoned(&self.steps)
            .remove(&outcome.id)
            .unwrap_or_default();
        if let Some(trace) = outcome.trace.filter(|trace| trace.sampled) {
            self.record(outcome, &trace, steps);
        }
    }
}

/// The outcome's facts as span attributes.
pub fn attributes(outcome: &ActionOutcome) -> Vec<KeyValue> {
    use attribute::*;
    let mut attributes = vec![
        KeyValue::new(ACTION_ID, outcome.id.to_string()),
        KeyValue::new(ARGV0, outcome.argv0.clone()),
        KeyValue::new(RESULT, outcome.result().as_str()),
        KeyValue::new(GRPC_CODE, outcome.grpc_code() as i64),
        KeyValue::new(WALL_TIME, outcome.wall_time.as_secs_f64()),
        KeyValue::new(OOM_VERDICT, outcome.oom.verdict.as_str()),
        KeyValue::new(OOM_RETRYABLE, outcome.oom.retryable),
        KeyValue::new(CLEANUP, outcome.cleanup.as_str()),
    ];
    if let Some(pid) = outcome.pid {
        attributes.push(KeyValue::new(PID, i64::from(pid)));
    }
    match &outcome.ended {
        Ended::Exited(ExitStatus::Code(code)) => {
            attributes.push(KeyValue::new(EXIT_CODE, i64::from(*code)));
        }
        Ended::Exited(ExitStatus::Signal(signal)) => {
            let name = outcome
                .posix_usage
                .as_ref()
                .map(|usage| usage.termination_signal.clone())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| signal.to_string());
            attributes.push(KeyValue::new(SIGNAL, name));
        }
        Ended::Terminated {
            reason,
            killed_at_grace_deadline,
        } => {
            attributes.push(KeyValue::new(TERMINATION_REASON, reason.as_str()));
            attributes.push(KeyValue::new(
                KILLED_AT_GRACE_DEADLINE,
                *killed_at_grace_deadline,
            ));
        }
        Ended::Exited(ExitStatus::Unknown(_)) | Ended::NotStarted(_) => {}
    }
    let memory_peak = match (&outcome.cgroup_usage, &outcome.posix_usage) {
        (Some(cgroup), _) if cgroup.memory_peak > 0 => Some(cgroup.memory_peak),
        (_, Some(posix)) => Some(posix.maximum_resident_set_size),
        _ => None,
    };
    if let Some(bytes) = memory_peak {
        attributes.push(KeyValue::new(MEMORY_PEAK, bytes));
    }
    if let Some(cgroup) = &outcome.cgroup_usage {
        for (name, total) in [
            ("memory_some_seconds", &cgroup.memory_pressure_some_total),
            ("memory_full_seconds", &cgroup.memory_pressure_full_total),
            ("cpu_some_seconds", &cgroup.cpu_pressure_some_total),
            ("cpu_full_seconds", &cgroup.cpu_pressure_full_total),
            ("io_some_seconds", &cgroup.io_pressure_some_total),
            ("io_full_seconds", &cgroup.io_pressure_full_total),
        ] {
            if let Some(total) = total {
                let seconds = total.seconds as f64 + f64::from(total.nanos) / 1e9;
                attributes.push(KeyValue::new(format!("{PRESSURE}{name}"), seconds));
            }
        }
    }
    attributes
}
