//! Synthetic journals for the statistics' tests.

use super::super::parse::{read_journal, Skipped};
use super::{Analysis, GroupBy, Report};
use serde_json::json;

/// Seconds since the epoch of the synthetic journals' start.
pub(super) const T0: i64 = 1_767_225_600;

pub(super) fn time(offset: f64) -> String {
    super::super::json::rfc3339(T0 as f64 + offset)
}

pub(super) fn started(instance: &str, id: &str, at: f64, argv: &[&str]) -> String {
    json!({"sequence": "1", "time": time(at), "runnerInstance": instance,
           "actionStarted": {"actionId": id, "arguments": argv, "inputRootDirectory": "",
                             "pid": "1", "cgroup": ""}})
    .to_string()
}

/// What a synthetic action measured.
#[derive(Default)]
pub(super) struct Measured {
    pub(super) memory_peak: Option<i64>,
    pub(super) max_rss: i64,
    pub(super) cpu_seconds: f64,
    pub(super) cpu_stall: Option<f64>,
    pub(super) verdict: &'static str,
    pub(super) code: i32,
    pub(super) exit_code: i64,
}

pub(super) fn finished(
    instance: &str,
    id: &str,
    end: f64,
    wall: f64,
    measured: Measured,
) -> String {
    let mut usage = vec![json!({
        "@type": "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage",
        "userTime": format!("{}s", measured.cpu_seconds), "systemTime": "0s",
        "maximumResidentSetSize": measured.max_rss.to_string(),
    })];
    if let Some(peak) = measured.memory_peak {
        usage.push(json!({
            "@type": "type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage",
            "memoryPeak": peak.to_string(),
            "cpuPressureSomeTotal": format!("{}s", measured.cpu_stall.unwrap_or(0.0)),
            "memoryPressureSomeTotal": "0s", "ioPressureSomeTotal": "0s",
        }));
    }
    let verdict = if measured.verdict.is_empty() {
        "OOM_VERDICT_NONE"
    } else {
        measured.verdict
    };
    json!({"sequence": "2", "time": time(end), "runnerInstance": instance,
           "actionFinished": {"actionId": id, "exitCode": measured.exit_code.to_string(),
               "status": {"code": measured.code, "message": "", "details": []},
               "resourceUsage": usage, "wallTime": format!("{wall}s"),
               "oomVerdict": verdict, "terminationReason": "TERMINATION_REASON_NONE"}})
    .to_string()
}

/// One action from `start` to `end` with a cgroup memory peak and
/// CPU seconds.
pub(super) fn action(
    instance: &str,
    id: &str,
    start: f64,
    end: f64,
    program: &str,
    memory: i64,
    cpu: f64,
) -> String {
    let measured = Measured {
        memory_peak: Some(memory),
        max_rss: memory / 2,
        cpu_seconds: cpu,
        ..Measured::default()
    };
    format!(
        "{}\n{}\n",
        started(instance, id, start, &[program]),
        finished(instance, id, end, end - start, measured)
    )
}

pub(super) fn analyse(journal: &str, group_by: GroupBy, cutoff: Option<f64>) -> Report {
    let mut analysis = Analysis::new(group_by, cutoff);
    let mut skipped = Skipped::default();
    read_journal(journal.as_bytes(), &mut skipped, |record| {
        analysis.add(record)
    })
    .unwrap();
    analysis.skipped = skipped;
    analysis.finish(0.25)
}
