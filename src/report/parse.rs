//! Journal lines → typed records, one line at a time.
//!
//! The journal is proto3 JSON of `rbe_runner.events.v1.Event`, one event
//! a line (see [`crate::events::json`]). A line that is cut off at the end
//! of a file (the runner was killed mid-write), one that is not such an
//! event, an `EventsLost` line or a kind this build does not know is
//! counted in [`Skipped`] and never stops the report: an analyst's journal
//! is whatever a fleet left behind. The events an `EventsLost` line says
//! are missing are counted too.

use std::io::{self, BufRead};
use std::str::FromStr;
use std::sync::LazyLock;

use prost::Name;

use serde_json::Value;

use crate::action::TerminationReason;
use crate::cgroup::attribution::OomVerdict;
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};

/// An action's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The runner instance (8 hex digits).
    pub instance: String,
    /// The action id.
    pub action_id: String,
    /// Seconds since the epoch.
    pub time: f64,
    /// The argv.
    pub arguments: Vec<String>,
}

/// An action's end, with what was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The runner instance (8 hex digits).
    pub instance: String,
    /// The action id.
    pub action_id: String,
    /// Seconds since the epoch.
    pub time: f64,
    /// As in `RunResponse`.
    pub exit_code: i64,
    /// The gRPC code of the Run call.
    pub code: tonic::Code,
    /// Wall time in seconds.
    pub wall_seconds: f64,
    /// Whose limit an OOM kill hit.
    pub oom_verdict: OomVerdict,
    /// Why the runner stopped it, if it did.
    pub termination_reason: Option<TerminationReason>,
    /// What the usage messages said.
    pub usage: Usage,
}

/// The parts of `PosixResourceUsage` and `CgroupResourceUsage` the report
/// uses; `None` when the message (or the value) was absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// The cgroup's `memory.peak` in bytes (absent when 0: not measured).
    pub memory_peak_bytes: Option<i64>,
    /// POSIX maximum resident set size in bytes.
    pub max_rss_bytes: Option<i64>,
    /// User plus system CPU time in seconds.
    pub cpu_seconds: Option<f64>,
    /// PSI `some` totals in seconds, from the cgroup usage.
    pub stall: Option<Stall>,
}

/// PSI `some` totals of an action's cgroup, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stall {
    /// Stalled on CPU.
    pub cpu: f64,
    /// Stalled on memory.
    pub memory: f64,
    /// Stalled on IO.
    pub io: f64,
}

/// The runner's state as recorded (its budget and name).
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerState {
    /// The runner instance.
    pub instance: String,
    /// Seconds since the epoch.
    pub time: f64,
    /// `memory.max` of the delegated parent; 0: none or unknown.
    pub memory_budget_bytes: i64,
    /// `events.runnerName`.
    pub runner_name: String,
}

/// One journal line the report uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// `actionStarted`.
    Started(Started),
    /// `actionFinished`.
    Finished(Box<Finished>),
    /// `cleanupFailed`, at this time (seconds since the epoch).
    CleanupFailed { time: f64 },
    /// `runnerState`.
    RunnerState(RunnerState),
    /// `actionTerminating`: counted through the `actionFinished` that
    /// follows, so nothing to keep.
    Terminating,
}

/// Lines not used, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// The last line of a file, without its newline, that does not parse.
    pub truncated: u64,
    /// Lines that are not an event as the journal writes them.
    pub corrupt: u64,
    /// Events of a kind this build does not know.
    pub unknown_kind: u64,
    /// `EventsLost` lines (the journal writer fell behind, or could not
    /// write).
    pub events_lost: u64,
    /// The events those lines say are missing from the journal.
    pub lost_events: u64,
}

/// Why a line was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Not JSON, or not an event as the journal writes it; says what.
    Corrupt(String),
    /// No kind this build knows.
    UnknownKind,
    /// An `EventsLost` line, saying this many events are missing.
    EventsLost(u64),
}

/// Reads one journal, calling `record` for every usable line and counting
/// the others in `skipped`. Only an error reading the file is returned.
pub fn read_journal(
    mut reader: impl BufRead,
    skipped: &mut Skipped,
    mut record: impl FnMut(Record),
) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match parse_line(text) {
            Ok(parsed) => record(parsed),
            Err(LineError::Corrupt(_)) if !complete => skipped.truncated += 1,
            Err(LineError::Corrupt(_)) => skipped.corrupt += 1,
            Err(LineError::UnknownKind) => skipped.unknown_kind += 1,
            Err(LineError::EventsLost(missing)) => {
                skipped.events_lost += 1;
                skipped.lost_events += missing;
            }
        }
    }
}

/// One line of the journal, parsed.
pub fn parse_line(line: &str) -> Result<Record, LineError> {
    let value: Value =
        serde_json::from_str(line).map_err(|err| LineError::Corrupt(err.to_string()))?;
    let event = value
        .as_object()
        .ok_or_else(|| corrupt("the line is not a JSON object"))?;
    let instance = string(&value, "runnerInstance")?;
    let time = || -> Result<f64, LineError> { timestamp(string(&value, "time")?) };
    if let Some(started) = event.get("actionStarted") {
        return Ok(Record::Started(Started {
            instance: instance.to_string(),
            action_id: string(started, "actionId")?.to_string(),
            time: time()?,
            arguments: strings(started, "arguments")?,
        }));
    }
    if let Some(finished) = event.get("actionFinished") {
        return Ok(Record::Finished(Box::new(finished_record(
            instance,
            time()?,
            finished,
        )?)));
    }
    if let Some(state) = event.get("runnerState") {
        return Ok(Record::RunnerState(RunnerState {
            instance: instance.to_string(),
            time: time()?,
            memory_budget_bytes: int64(state, "memoryBudgetBytes")?.unwrap_or(0),
            runner_name: string(state, "runnerName").unwrap_or_default().to_string(),
        }));
    }
    if event.contains_key("cleanupFailed") {
        return Ok(Record::CleanupFailed { time: time()? });
    }
    if event.contains_key("actionTerminating") {
        return Ok(Record::Terminating);
    }
    if let Some(lost) = event.get("eventsLost") {
        let first = int64(lost, "firstSequence")?.unwrap_or(0);
        let last = int64(lost, "lastSequence")?.unwrap_or(0);
        // Sequences start at 1; a range without one says nothing.
        let missing = if first >= 1 && last >= first {
            (last - first + 1) as u64
        } else {
            0
        };
        return Err(LineError::EventsLost(missing));
    }
    Err(LineError::UnknownKind)
}

fn finished_record(instance: &str, time: f64, finished: &Value) -> Result<Finished, LineError> {
    let code = match finished.get("status").and_then(|status| status.get("code")) {
        None => 0,
        Some(code) => code
            .as_i64()
            .and_then(|code| i32::try_from(code).ok())
            .ok_or_else(|| corrupt("status.code is not a number"))?,
    };
    let wall_seconds = match finished.get("wallTime") {
        None => 0.0,
        Some(wall) => duration(wall.as_str().ok_or_else(|| corrupt("wallTime"))?)?,
    };
    let verdict = match finished.get("oomVerdict").and_then(Value::as_str) {
        Some("OOM_VERDICT_OWN_LIMIT") => OomVerdict::OwnLimit,
        Some("OOM_VERDICT_SHARED_LIMIT") => OomVerdict::SharedLimit,
        Some("OOM_VERDICT_NOT_OWN_LIMIT") => OomVerdict::NotOwnLimit,
        _ => OomVerdict::None,
    };
    let termination_reason = match finished.get("terminationReason").and_then(Value::as_str) {
        Some("TERMINATION_REASON_DEADLINE") => Some(TerminationReason::Deadline),
        Some("TERMINATION_REASON_CANCELLED") => Some(TerminationReason::Cancelled),
        Some("TERMINATION_REASON_SHUTDOWN") => Some(TerminationReason::Shutdown),
        _ => None,
    };
    Ok(Finished {
        instance: instance.to_string(),
        action_id: string(finished, "actionId")?.to_string(),
        time,
        exit_code: int64(finished, "exitCode")?.unwrap_or(0),
        code: tonic::Code::from(code),
        wall_seconds,
        oom_verdict: verdict,
        termination_reason,
        usage: usage(finished)?,
    })
}

/// The `@type`s of the usage messages, as the journal writes them.
static POSIX_TYPE: LazyLock<String> = LazyLock::new(PosixResourceUsage::type_url);
static CGROUP_TYPE: LazyLock<String> = LazyLock::new(CgroupResourceUsage::type_url);

fn usage(finished: &Value) -> Result<Usage, LineError> {
    let mut usage = Usage::default();
    let Some(messages) = finished.get("resourceUsage").and_then(Value::as_array) else {
        return Ok(usage);
    };
    for message in messages {
        let kind = message.get("@type").and_then(Value::as_str);
        if kind == Some(POSIX_TYPE.as_str()) {
            usage.max_rss_bytes = int64(message, "maximumResidentSetSize")?;
            let user = optional_duration(message, "userTime")?;
            let system = optional_duration(message, "systemTime")?;
            if user.is_some() || system.is_some() {
                usage.cpu_seconds = Some(user.unwrap_or(0.0) + system.unwrap_or(0.0));
            }
        } else if kind == Some(CGROUP_TYPE.as_str()) {
            usage.memory_peak_bytes = int64(message, "memoryPeak")?.filter(|&peak| peak > 0);
            usage.stall = Some(Stall {
                cpu: optional_duration(message, "cpuPressureSomeTotal")?.unwrap_or(0.0),
                memory: optional_duration(message, "memoryPressureSomeTotal")?.unwrap_or(0.0),
                io: optional_duration(message, "ioPressureSomeTotal")?.unwrap_or(0.0),
            });
        }
    }
    Ok(usage)
}

fn corrupt(what: &str) -> LineError {
    LineError::Corrupt(what.to_string())
}

fn string<'a>(value: &'a Value, key: &str) -> Result<&'a str, LineError> {
    value
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| LineError::Corrupt(format!("{key} is missing or not a string")))
}

fn strings(value: &Value, key: &str) -> Result<Vec<String>, LineError> {
    let Some(items) = value.get(key) else {
        return Ok(Vec::new());
    };
    items
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| LineError::Corrupt(format!("{key} is not a list of strings")))
}

/// A proto3 JSON int64: a string of digits (a number is accepted too, as
/// protobuf's parsers do).
fn int64(value: &Value, key: &str) -> Result<Option<i64>, LineError> {
    match value.get(key) {
        None => Ok(None),
        Some(Value::String(text)) => text
            .parse()
            .map(Some)
            .map_err(|_| LineError::Corrupt(format!("{key} is not an int64"))),
        Some(number) => number
            .as_i64()
            .map(Some)
            .ok_or_else(|| LineError::Corrupt(format!("{key} is not an int64"))),
    }
}

fn optional_duration(value: &Value, key: &str) -> Result<Option<f64>, LineError> {
    match value.get(key) {
        None => Ok(None),
        Some(text) => text
            .as_str()
            .ok_or_else(|| LineError::Corrupt(format!("{key} is not a duration")))
            .and_then(duration)
            .map(Some),
    }
}

fn duration(text: &str) -> Result<f64, LineError> {
    let duration = prost_types::Duration::from_str(text)
        .map_err(|_| LineError::Corrupt(format!("{text:?} is not a duration")))?;
    Ok(duration.seconds as f64 + f64::from(duration.nanos) / 1e9)
}

fn timestamp(text: &str) -> Result<f64, LineError> {
    let time = prost_types::Timestamp::from_str(text)
        .map_err(|_| LineError::Corrupt(format!("{text:?} is not a timestamp")))?;
    Ok(time.seconds as f64 + f64::from(time.nanos) / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED: &str = r#"{"sequence":"2","time":"2026-01-01T00:00:01Z","runnerInstance":"0badcafe","actionStarted":{"actionId":"0badcafe-1","arguments":["sh","-c","javac x"],"inputRootDirectory":"/b","pid":"7","cgroup":""}}"#;

    #[test]
    fn a_finished_line_gives_its_measurements() {
        let line = r#"{"sequence":"3","time":"2026-01-01T00:00:03.5Z","runnerInstance":"0badcafe","actionFinished":{"actionId":"0badcafe-1","exitCode":"0","status":{"code":0,"message":"","details":[]},"resourceUsage":[{"@type":"type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage","userTime":"1.5s","systemTime":"0.5s","maximumResidentSetSize":"1000"},{"@type":"type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage","memoryPeak":"4096","cpuPressureSomeTotal":"0.25s","memoryPressureSomeTotal":"0s","ioPressureSomeTotal":"0.125s"}],"wallTime":"2.500s","oomVerdict":"OOM_VERDICT_SHARED_LIMIT","terminationReason":"TERMINATION_REASON_DEADLINE"}}"#;
        let Ok(Record::Finished(finished)) = parse_line(line) else {
            panic!("not parsed as finished");
        };
        assert_eq!(finished.time, 1_767_225_603.5);
        assert_eq!(finished.wall_seconds, 2.5);
        assert_eq!(finished.oom_verdict, OomVerdict::SharedLimit);
        assert_eq!(
            finished.termination_reason,
            Some(TerminationReason::Deadline)
        );
        assert_eq!(
            finished.usage,
            Usage {
                memory_peak_bytes: Some(4096),
                max_rss_bytes: Some(1000),
                cpu_seconds: Some(2.0),
                stall: Some(Stall {
                    cpu: 0.25,
                    memory: 0.0,
                    io: 0.125
                }),
            }
        );
    }

    #[test]
    fn truncated_corrupt_lost_and_unknown_lines_are_counted_not_fatal() {
        // Why it matters: a journal cut off by a crash, or written by a
        // newer runner, must still give a report.
        let journal = format!(
            "{STARTED}\nnot json\n{{\"sequence\":\"0\",\"runnerInstance\":\"0badcafe\",\"eventsLost\":{{}}}}\n\
             {{\"sequence\":\"0\",\"runnerInstance\":\"0badcafe\",\"eventsLost\":{{\"firstSequence\":\"3\",\"lastSequence\":\"90\"}}}}\n\
             {{\"sequence\":\"9\",\"time\":\"2026-01-01T00:00:01Z\",\"runnerInstance\":\"0badcafe\",\"somethingNew\":{{}}}}\n\
             {{\"sequence\":\"5\",\"time\":\"2026-01-01T00:00:01Z\",\"runnerInstance\":\"0badcafe\",\"actionFin"
        );
        let mut skipped = Skipped::default();
        let mut records = Vec::new();
        read_journal(journal.as_bytes(), &mut skipped, |record| {
            records.push(record)
        })
        .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            skipped,
            Skipped {
                truncated: 1,
                corrupt: 1,
                unknown_kind: 1,
                events_lost: 2,
                lost_events: 88,
            }
        );
    }

    #[test]
    fn a_started_line_keeps_its_argv() {
        let Ok(Record::Started(started)) = parse_line(STARTED) else {
            panic!("not parsed as started");
        };
        assert_eq!(started.arguments, ["sh", "-c", "javac x"]);
        assert_eq!(started.time, 1_767_225_601.0);
    }
}
