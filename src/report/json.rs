//! `report --json`: the report as one JSON object, camelCase keys, tallies
//! keyed by the label values the metrics use. Byte counts are numbers
//! (not proto3's strings): this is not a protobuf message, and analysts'
//! tools compare them as numbers. Control and bidirectional characters
//! from the journal are written as JSON escapes
//! ([`json_escape_hidden`]): a reader gets the argv that ran, a terminal
//! showing the output does not act on it.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::stats::{GroupStats, Report, RunnerSizing, TopAction};
use super::visible::json_escape_hidden;

/// The report as printed: indented JSON and a newline.
pub fn render(report: &Report) -> String {
    let text = format!("{:#}\n", report_json(report));
    json_escape_hidden(&text).into_owned()
}

/// The report as JSON.
pub fn report_json(report: &Report) -> Value {
    let tallies = &report.tallies;
    let sizing = &report.sizing;
    json!({
        "summary": {
            "actions": tallies.actions,
            "firstTime": report.span.map(|(first, _)| rfc3339(first)),
            "lastTime": report.span.map(|(_, last)| rfc3339(last)),
            "runners": report.runners.len(),
            "results": counts(&tallies.results),
            "failures": counts(&tallies.failures),
            "oomKills": counts(&tallies.oom_kills),
            "terminations": counts(&tallies.terminations),
            "cleanupFailures": tallies.cleanup_failures,
        },
        "groups": report.groups.iter().map(group_json).collect::<Vec<_>>(),
        "sizing": {
            "memoryMaxP99Bytes": sizing.memory_max_p99_bytes,
            "memoryMaxP100Bytes": sizing.memory_max_p100_bytes,
            "peakConcurrentMemoryBytes": sizing.peak_concurrent_memory_bytes,
            "peakConcurrentMemoryIsUpperBound": true,
            "podMemoryBytes": sizing.pod_memory_bytes,
            "headroom": sizing.headroom,
            "peakConcurrentCpuCores": sizing.peak_concurrent_cpu_cores,
            "cpuPressureKnee": sizing.cpu_pressure_knee,
            "cpuStallShareByConcurrency": report.knee_table.iter().map(|row| json!({
                "concurrency": row.concurrency,
                "actions": row.actions,
                "medianCpuStallShare": row.median_cpu_stall_share,
            })).collect::<Vec<_>>(),
            "runners": report.runners.iter().map(runner_json).collect::<Vec<_>>(),
        },
        "topMemory": report.top_memory.iter().map(top_json).collect::<Vec<_>>(),
        "topWall": report.top_wall.iter().map(top_json).collect::<Vec<_>>(),
        "skipped": {
            "truncated": report.skipped.truncated,
            "corrupt": report.skipped.corrupt,
            "unknownKind": report.skipped.unknown_kind,
            "eventsLost": report.skipped.events_lost,
            "lostEvents": report.skipped.lost_events,
        },
    })
}

fn counts(counts: &BTreeMap<&'static str, u64>) -> Value {
    Value::Object(
        counts
            .iter()
            .map(|(name, count)| (name.to_string(), json!(count)))
            .collect::<Map<_, _>>(),
    )
}

fn group_json(group: &GroupStats) -> Value {
    let [p50, p95, max] = group.wall_seconds;
    json!({
        "program": group.program,
        "count": group.count,
        "wallTimeSeconds": { "p50": p50, "p95": p95, "max": max },
        "memoryPeakBytes": group.memory_bytes.map(|[p50, p95, p99, max]| json!({
            "p50": p50, "p95": p95, "p99": p99, "max": max,
        })),
        "memoryIsMaxRss": group.memory_from_rss,
        "cpuSeconds": group.cpu_seconds,
        "stallShare": group.stall_share.map(|share| json!({
            "cpu": share.cpu, "memory": share.memory, "io": share.io,
        })),
    })
}

fn runner_json(runner: &RunnerSizing) -> Value {
    json!({
        "instance": runner.instance,
        "name": runner.name,
        "memoryBudgetBytes": runner.memory_budget_bytes,
        "peakConcurrency": runner.peak_concurrency,
        "peakConcurrentMemoryBytes": runner.peak_concurrent_memory_bytes,
        "podMemoryBytes": runner.pod_memory_bytes,
        "peakConcurrentCpuCores": runner.peak_concurrent_cpu_cores,
    })
}

fn top_json(top: &TopAction) -> Value {
    json!({
        "actionId": top.action_id,
        "program": top.program,
        "arguments": top.arguments,
        "memoryPeakBytes": top.memory_bytes,
        "memoryIsMaxRss": top.memory_from_rss,
        "wallTimeSeconds": top.wall_seconds,
    })
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(seconds: f64) -> String {
    let whole = seconds.floor();
    prost_types::Timestamp {
        seconds: whole as i64,
        nanos: ((seconds - whole) * 1e9) as i32,
    }
    .to_string()
}
