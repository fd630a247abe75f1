//! Journal lines → typed records, one line at a time.
//!
//! The journal is proto3 JSON of `rbe_runner.events.v1.Event`, one event
//! a line (see [`crate::events::json`]). A line that is cut off at the end
//! of a file (the runner was killed mid-write), one that is not such an
//! event, an `EventsLost` line or a kind this build does not know is
//! counted in [`Skipped`] and never stops the report: an analyst's journal
//! is whatever a fleet left behind. The events an `EventsLost` line says
//! are missing are counted too, and a line longer than
//! [`MAX_LINE_BYTES`] is skipped unread and counted as corrupt.
//!
//! Each line is read into the fields the report uses and nothing else
//! (serde, borrowing from the line), not into a generic JSON tree; the
//! records hold their short strings inline ([`Id`]) and an argv as one
//! string ([`Arguments`]), so that a line costs no allocation.

mod arguments;
mod usage;

pub use arguments::Arguments;

use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead};
use std::marker::PhantomData;
use std::str::FromStr;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::id::Id;
use crate::action::TerminationReason;
use crate::cgroup::attribution::OomVerdict;

/// An action's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The runner instance (8 hex digits).
    pub instance: Id,
    /// The action id.
    pub action_id: Id,
    /// Seconds since the epoch.
    pub time: f64,
    /// Its group by program ([`super::stats::program_group`]).
    pub program: Id,
    /// The argv.
    pub arguments: Arguments,
}

/// An action's end, with what was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The runner instance (8 hex digits).
    pub instance: Id,
    /// The action id.
    pub action_id: Id,
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
    pub instance: Id,
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
    Finished(Finished),
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
    /// Lines that are not an event as the journal writes them, and
    /// lines longer than [`MAX_LINE_BYTES`].
    pub corrupt: u64,
    /// Events of a kind this build does not know.
    pub unknown_kind: u64,
    /// `EventsLost` lines (the journal writer fell behind, or could not
    /// write).
    pub events_lost: u64,
    /// The events those lines say are missing from the journal.
    pub lost_events: u64,
}

impl std::ops::AddAssign for Skipped {
    fn add_assign(&mut self, other: Skipped) {
        self.truncated += other.truncated;
        self.corrupt += other.corrupt;
        self.unknown_kind += other.unknown_kind;
        self.events_lost += other.events_lost;
        self.lost_events += other.lost_events;
    }
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

/// The longest line read: longer ones are skipped while streaming and
/// counted as corrupt. The runner's events are far shorter (argv is cut at
/// `events.maximumArgumentBytes`, 64 KiB by default), so only a damaged or
/// hostile file has such a line, and it must not cost its length in memory.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// A journal read record by record.
///
/// A line that lies whole in the reader's buffer is parsed where it is;
/// only one that straddles a refill is gathered into `line` first. Either
/// way no more than [`MAX_LINE_BYTES`] of a line is ever held.
pub struct JournalReader<R> {
    reader: R,
    /// The start of a line that straddles the reader's buffer.
    line: Vec<u8>,
    /// [`MAX_LINE_BYTES`], but for tests.
    max_line_bytes: usize,
    /// The current line is longer than [`MAX_LINE_BYTES`]: the rest of it
    /// is being skipped.
    overlong: bool,
    /// Where `reader` is in the file.
    position: u64,
    /// No line that starts here or later is read (`None`: read to the
    /// end of the file).
    end: Option<u64>,
}

/// How a line ended.
#[derive(Clone, Copy)]
enum LineEnd {
    /// With a newline.
    Newline,
    /// At the end of the file, without one: perhaps cut off mid-write.
    EndOfFile,
}

impl<R: BufRead> JournalReader<R> {
    /// Reads `reader` from where it is.
    pub fn new(reader: R) -> Self {
        Self::lines_between(reader, 0, None)
    }

    /// Reads the lines that start before `end` (`None`: all of them),
    /// `reader` being at `position` in the file, the start of a line.
    pub fn lines_between(reader: R, position: u64, end: Option<u64>) -> Self {
        JournalReader {
            reader,
            line: Vec::new(),
            max_line_bytes: MAX_LINE_BYTES,
            overlong: false,
            position,
            end,
        }
    }

    fn consume(&mut self, length: usize) {
        self.reader.consume(length);
        self.position += length as u64;
    }

    /// The next usable record, counting the lines skipped on the way in
    /// `skipped`; `None` at the end. Only an error reading the file is
    /// returned.
    pub fn next_record(&mut self, skipped: &mut Skipped) -> io::Result<Option<Record>> {
        loop {
            let at_line_start = self.line.is_empty() && !self.overlong;
            if at_line_start && self.end.is_some_and(|end| self.position >= end) {
                return Ok(None);
            }
            let buffer = match self.reader.fill_buf() {
                Ok(buffer) => buffer,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if buffer.is_empty() {
                let record = if std::mem::take(&mut self.overlong) {
                    skipped.corrupt += 1;
                    None
                } else if self.line.is_empty() {
                    return Ok(None);
                } else {
                    judge(&self.line, LineEnd::EndOfFile, skipped)
                };
                self.line.clear();
                match record {
                    Some(record) => return Ok(Some(record)),
                    None => continue,
                }
            }
            let Some(newline) = memchr::memchr(b'\n', buffer) else {
                let length = buffer.len();
                if !self.overlong && self.line.len() + length > self.max_line_bytes {
                    self.overlong = true;
                    self.line = Vec::new();
                }
                if !self.overlong {
                    self.line.extend_from_slice(buffer);
                }
                self.consume(length);
                continue;
            };
            let record = if std::mem::take(&mut self.overlong)
                || self.line.len() + newline > self.max_line_bytes
            {
                skipped.corrupt += 1;
                None
            } else if self.line.is_empty() {
                judge(&buffer[..newline], LineEnd::Newline, skipped)
            } else {
                self.line.extend_from_slice(&buffer[..newline]);
                judge(&self.line, LineEnd::Newline, skipped)
            };
            self.line.clear();
            self.consume(newline + 1);
            if let Some(record) = record {
                return Ok(Some(record));
            }
        }
    }
}

/// The record of one line (without its newline), or `None` with the line
/// counted in `skipped`.
fn judge(line: &[u8], end: LineEnd, skipped: &mut Skipped) -> Option<Record> {
    let text = line.trim_ascii();
    if text.is_empty() {
        return None;
    }
    match parse_bytes(text) {
        Ok(record) => return Some(record),
        Err(LineError::Corrupt(_)) => match end {
            LineEnd::EndOfFile => skipped.truncated += 1,
            LineEnd::Newline => skipped.corrupt += 1,
        },
        Err(LineError::UnknownKind) => skipped.unknown_kind += 1,
        Err(LineError::EventsLost(missing)) => {
            skipped.events_lost += 1;
            skipped.lost_events += missing;
        }
    }
    None
}

/// Reads one journal, calling `record` for every usable line and counting
/// the others in `skipped`. Only an error reading the file is returned.
pub fn read_journal(
    reader: impl BufRead,
    skipped: &mut Skipped,
    mut record: impl FnMut(Record),
) -> io::Result<()> {
    let mut journal = JournalReader::new(reader);
    while let Some(parsed) = journal.next_record(skipped)? {
        record(parsed);
    }
    Ok(())
}

/// One line of the journal, parsed.
pub fn parse_line(line: &str) -> Result<Record, LineError> {
    parse_bytes(line.as_bytes())
}

/// One line as bytes. Text that is not UTF-8 is read as the journal's
/// readers always did, with U+FFFD in place of bad bytes. The line is
/// checked once, as a whole: serde then need not check each string.
fn parse_bytes(line: &[u8]) -> Result<Record, LineError> {
    let text = match std::str::from_utf8(line) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(line),
    };
    serde_json::from_str::<EventLine>(&text)
        .map_err(|err| LineError::Corrupt(err.to_string()))?
        .record()
}

// The journal's lines as serde reads them: only the fields the report
// uses, each borrowed from the line where it can be (a string with no
// escapes), everything else skipped without being built. A field whose
// meaning depends on another (`@type`) or that older readers tolerated in
// any shape (`runnerName`, the enums) is a [`Scalar`], judged afterwards.

/// An `Event`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventLine<'a> {
    #[serde(borrow)]
    runner_instance: Cow<'a, str>,
    #[serde(borrow)]
    time: Option<Scalar<'a>>,
    #[serde(borrow)]
    action_started: Option<StartedLine<'a>>,
    #[serde(borrow)]
    action_finished: Option<FinishedLine<'a>>,
    #[serde(borrow)]
    runner_state: Option<RunnerStateLine<'a>>,
    cleanup_failed: Option<IgnoredAny>,
    action_terminating: Option<IgnoredAny>,
    #[serde(borrow)]
    events_lost: Option<EventsLostLine<'a>>,
}

/// `ActionStarted`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartedLine<'a> {
    #[serde(borrow)]
    action_id: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: arguments::RawArguments<'a>,
}

/// `ActionFinished`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FinishedLine<'a> {
    #[serde(borrow)]
    action_id: Cow<'a, str>,
    #[serde(borrow)]
    exit_code: Option<Scalar<'a>>,
    status: Option<StatusLine<'a>>,
    #[serde(borrow)]
    wall_time: Option<Scalar<'a>>,
    #[serde(borrow)]
    oom_verdict: Option<Scalar<'a>>,
    #[serde(borrow)]
    termination_reason: Option<Scalar<'a>>,
    #[serde(default)]
    resource_usage: usage::UsageList,
}

/// `google.rpc.Status`: only its code.
#[derive(Deserialize)]
struct StatusLine<'a> {
    #[serde(borrow)]
    code: Option<Scalar<'a>>,
}

/// `RunnerState`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunnerStateLine<'a> {
    #[serde(borrow)]
    memory_budget_bytes: Option<Scalar<'a>>,
    #[serde(borrow)]
    runner_name: Option<Scalar<'a>>,
}

/// `EventsLost`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsLostLine<'a> {
    #[serde(borrow)]
    first_sequence: Option<Scalar<'a>>,
    #[serde(borrow)]
    last_sequence: Option<Scalar<'a>>,
}

/// A JSON value read without judging it: proto3 JSON writes int64,
/// durations, timestamps and enums as strings, but a number is accepted
/// where protobuf's parsers accept one, and whether a field matters at all
/// can depend on another (`@type`).
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Integer(i64),
    /// A number that is not an `i64` (a fraction, or too large).
    OtherNumber,
    /// `true`, an object or a list.
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor(PhantomData))
    }
}

struct ScalarVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(text.to_string())))
    }

    fn visit_i64<E>(self, number: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Integer(number))
    }

    fn visit_u64<E>(self, number: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(number).map_or(Scalar::OtherNumber, Scalar::Integer))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::OtherNumber)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        while items.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
        while entries.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl Scalar<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            Scalar::Text(text) => Some(text),
            _ => None,
        }
    }
}

impl EventLine<'_> {
    /// The record of this event, or why there is none.
    fn record(self) -> Result<Record, LineError> {
        let instance = Id::from(&*self.runner_instance);
        let time = || -> Result<f64, LineError> {
            let text = self.time.as_ref().and_then(Scalar::text);
            timestamp(text.ok_or_else(|| corrupt("time is missing or not a string"))?)
        };
        if let Some(started) = self.action_started {
            let time = time()?;
            let (arguments, program) = started.arguments.read()?;
            return Ok(Record::Started(Started {
                time,
                instance,
                action_id: Id::from(&*started.action_id),
                program,
                arguments,
            }));
        }
        if let Some(finished) = self.action_finished {
            return Ok(Record::Finished(finished.record(instance, time()?)?));
        }
        if let Some(state) = self.runner_state {
            return Ok(Record::RunnerState(RunnerState {
                time: time()?,
                instance,
                memory_budget_bytes: int64(&state.memory_budget_bytes, "memoryBudgetBytes")?
                    .unwrap_or(0),
                runner_name: state
                    .runner_name
                    .as_ref()
                    .and_then(Scalar::text)
                    .unwrap_or_default()
                    .to_string(),
            }));
        }
        if self.cleanup_failed.is_some() {
            return Ok(Record::CleanupFailed { time: time()? });
        }
        if self.action_terminating.is_some() {
            return Ok(Record::Terminating);
        }
        if let Some(lost) = self.events_lost {
            let first = int64(&lost.first_sequence, "firstSequence")?.unwrap_or(0);
            let last = int64(&lost.last_sequence, "lastSequence")?.unwrap_or(0);
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
}

impl FinishedLine<'_> {
    fn record(self, instance: Id, time: f64) -> Result<Finished, LineError> {
        let code = match self.status.and_then(|status| status.code) {
            None => 0,
            Some(Scalar::Integer(code)) => {
                i32::try_from(code).map_err(|_| corrupt("status.code is not a number"))?
            }
            Some(_) => return Err(corrupt("status.code is not a number")),
        };
        let wall_seconds = optional_duration(&self.wall_time, "wallTime")?.unwrap_or(0.0);
        let oom_verdict = match self.oom_verdict.as_ref().and_then(Scalar::text) {
            Some("OOM_VERDICT_OWN_LIMIT") => OomVerdict::OwnLimit,
            Some("OOM_VERDICT_SHARED_LIMIT") => OomVerdict::SharedLimit,
            Some("OOM_VERDICT_NOT_OWN_LIMIT") => OomVerdict::NotOwnLimit,
            _ => OomVerdict::None,
        };
        let termination_reason = match self.termination_reason.as_ref().and_then(Scalar::text) {
            Some("TERMINATION_REASON_DEADLINE") => Some(TerminationReason::Deadline),
            Some("TERMINATION_REASON_CANCELLED") => Some(TerminationReason::Cancelled),
            Some("TERMINATION_REASON_SHUTDOWN") => Some(TerminationReason::Shutdown),
            _ => None,
        };
        Ok(Finished {
            instance,
            action_id: Id::from(&*self.action_id),
            time,
            exit_code: int64(&self.exit_code, "exitCode")?.unwrap_or(0),
            code: tonic::Code::from(code),
            wall_seconds,
            oom_verdict,
            termination_reason,
            usage: self.resource_usage.0?,
        })
    }
}

fn corrupt(what: &str) -> LineError {
    LineError::Corrupt(what.to_string())
}

/// A proto3 JSON int64: a string of digits (a number is accepted too, as
/// protobuf's parsers do).
fn int64(value: &Option<Scalar>, key: &str) -> Result<Option<i64>, LineError> {
    match value {
        None => Some(None),
        Some(Scalar::Text(text)) => text.parse().map(Some).ok(),
        Some(Scalar::Integer(number)) => Some(Some(*number)),
        Some(_) => None,
    }
    .ok_or_else(|| LineError::Corrupt(format!("{key} is not an int64")))
}

fn optional_duration(value: &Option<Scalar>, key: &str) -> Result<Option<f64>, LineError> {
    match value {
        None => Ok(None),
        Some(value) => value
            .text()
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

    fn records_and_skipped(
        journal: &[u8],
        buffer: usize,
        max_line_bytes: usize,
    ) -> (Vec<Record>, Skipped) {
        let mut reader = JournalReader::new(io::BufReader::with_capacity(buffer, journal));
        reader.max_line_bytes = max_line_bytes;
        let mut skipped = Skipped::default();
        let mut records = Vec::new();
        while let Some(record) = reader.next_record(&mut skipped).unwrap() {
            records.push(record);
        }
        (records, skipped)
    }

    #[test]
    fn overlong_lines_are_corrupt_and_lines_across_refills_whole() {
        // Why it matters: a line is held whole to be parsed, so one without
        // an end would cost its length in memory; lines that straddle the
        // reader's buffer must read as if it were not there.
        let long = format!("{{\"sequence\":\"{}\"}}", "9".repeat(400));
        let journal = format!("{STARTED}\n{long}\n\n{STARTED}\n{long}");
        for buffer in [1, 7, 64, 1 << 16] {
            let (records, skipped) = records_and_skipped(journal.as_bytes(), buffer, STARTED.len());
            assert_eq!(records.len(), 2, "buffer {buffer}");
            assert_eq!(
                skipped,
                Skipped {
                    corrupt: 2,
                    ..Skipped::default()
                },
                "buffer {buffer}"
            );
        }
        // At the limit a line is read; the cut-off last one is truncated.
        let (records, skipped) = records_and_skipped(journal.as_bytes(), 7, long.len());
        assert_eq!(records.len(), 2);
        assert_eq!((skipped.corrupt, skipped.truncated), (1, 1));
    }

    #[test]
    fn escaped_and_non_utf8_strings_are_read() {
        let escaped = STARTED.replace("javac x", "javac \\\"\\u00e9\\t");
        let Ok(Record::Started(started)) = parse_line(&escaped) else {
            panic!("not parsed: {escaped}");
        };
        assert_eq!(started.arguments.to_vec()[2], "javac \"\u{e9}\t");
        let mut bytes = STARTED.as_bytes().to_vec();
        let at = STARTED.find("javac").unwrap();
        bytes[at] = 0xff;
        let Ok(Record::Started(started)) = parse_bytes(&bytes) else {
            panic!("a bad byte in argv made the line unreadable");
        };
        assert_eq!(started.arguments.to_vec()[2], "\u{fffd}avac x");
    }

    #[test]
    fn argv_and_usage_that_are_not_what_the_journal_writes_make_the_line_corrupt() {
        // Why it matters: argv is kept unread until it is shown and usage
        // is summed as it is read, yet a line must be judged as when it
        // was read whole: the same lines are counted as corrupt.
        for arguments in ["null", r#"["a",5]"#, "{}", r#""sh""#] {
            let line = STARTED.replace(r#"["sh","-c","javac x"]"#, arguments);
            assert!(
                matches!(parse_line(&line), Err(LineError::Corrupt(_))),
                "{line}"
            );
        }
        let without = STARTED.replace(r#""arguments":["sh","-c","javac x"],"#, "");
        let Ok(Record::Started(started)) = parse_line(&without) else {
            panic!("not parsed: {without}");
        };
        assert_eq!(started.arguments.to_vec(), Vec::<String>::new());
        assert_eq!(started.program, "(no argv)");
        let finished = r#"{"time":"2026-01-01T00:00:03Z","runnerInstance":"0badcafe","actionFinished":{"actionId":"a","resourceUsage":USAGE}}"#;
        for usage in [
            "null",
            "[null]",
            r#"[{"@type":"type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage","memoryPeak":"many"}]"#,
        ] {
            let line = finished.replace("USAGE", usage);
            assert!(
                matches!(parse_line(&line), Err(LineError::Corrupt(_))),
                "{line}"
            );
        }
        let missing_instance = STARTED.replace(r#""runnerInstance":"0badcafe","#, "");
        assert!(matches!(
            parse_line(&missing_instance),
            Err(LineError::Corrupt(_))
        ));
    }

    #[test]
    fn a_started_line_keeps_its_argv() {
        let Ok(Record::Started(started)) = parse_line(STARTED) else {
            panic!("not parsed as started");
        };
        assert_eq!(started.arguments.to_vec(), ["sh", "-c", "javac x"]);
        assert_eq!(started.program, "javac");
        assert_eq!(started.time, 1_767_225_601.0);
    }
}
