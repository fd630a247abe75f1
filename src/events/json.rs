//! An event as one line of proto3 JSON, the format of the journal and of
//! `watch --json`.
//!
//! The rules are protobuf's canonical JSON mapping, with fields that hold
//! their default value written too (as `json_format`'s
//! `always_print_fields_with_no_presence` does): lowerCamelCase names,
//! 64-bit integers as strings, enums by name, `Timestamp` in RFC 3339 UTC,
//! `Duration` as seconds with `s`, `Any` as an object with `@type` and the
//! fields of the message it holds. Unset message fields are left out, as
//! in that mapping. The usages in `ActionFinished.resource_usage` are
//! written from their typed values ([`Published::usages`]).

use serde_json::{json, Map, Value};

use super::{Published, Usage};
use crate::proto::rbe_runner::events::v1::event::Kind;
use crate::proto::rbe_runner::events::v1::{
    ActionFinished, ActionStarted, ActionTerminating, CleanupFailed, EventsLost, RunnerState,
};
use crate::proto::rbe_runner::resourceusage::v1::{OomVerdict, TerminationReason};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
use crate::proto::rpc;

/// The event as one line of JSON, without the newline.
pub fn event_line(published: &Published) -> String {
    event_json(published).to_string()
}

/// The event as a JSON object.
pub fn event_json(published: &Published) -> Value {
    let event = &published.event;
    let mut object = Map::new();
    object.insert("sequence".into(), uint64(event.sequence));
    if let Some(time) = &event.time {
        object.insert("time".into(), Value::String(time.to_string()));
    }
    object.insert("runnerInstance".into(), json!(event.runner_instance));
    let kind = match &event.kind {
        Some(Kind::ActionStarted(started)) => Some(("actionStarted", action_started(started))),
        Some(Kind::ActionFinished(finished)) => Some((
            "actionFinished",
            action_finished(finished, &published.usages),
        )),
        Some(Kind::ActionTerminating(terminating)) => {
            Some(("actionTerminating", action_terminating(terminating)))
        }
        Some(Kind::CleanupFailed(failed)) => Some(("cleanupFailed", cleanup_failed(failed))),
        Some(Kind::RunnerState(state)) => Some(("runnerState", runner_state(state))),
        Some(Kind::EventsLost(lost)) => Some(("eventsLost", events_lost(lost))),
        None => None,
    };
    if let Some((name, value)) = kind {
        object.insert(name.into(), value);
    }
    Value::Object(object)
}

fn action_started(started: &ActionStarted) -> Value {
    json!({
        "actionId": started.action_id,
        "arguments": started.arguments,
        "inputRootDirectory": started.input_root_directory,
        "pid": int64(started.pid),
        "cgroup": started.cgroup,
        "originalArgumentsBytes": uint64(started.original_arguments_bytes),
        "argumentsCut": started.arguments_cut,
    })
}

fn action_finished(finished: &ActionFinished, usages: &[Usage]) -> Value {
    let mut object = Map::new();
    object.insert("actionId".into(), json!(finished.action_id));
    object.insert("exitCode".into(), int64(finished.exit_code));
    if let Some(status) = &finished.status {
        object.insert("status".into(), status_json(status));
    }
    object.insert(
        "resourceUsage".into(),
        Value::Array(usages.iter().map(usage_json).collect()),
    );
    if let Some(wall_time) = &finished.wall_time {
        object.insert("wallTime".into(), Value::String(wall_time.to_string()));
    }
    object.insert(
        "oomVerdict".into(),
        enum_value(finished.oom_verdict, |value| {
            OomVerdict::try_from(value).ok().map(|v| v.as_str_name())
        }),
    );
    object.insert(
        "terminationReason".into(),
        termination_reason(finished.termination_reason),
    );
    object.insert("traceId".into(), json!(finished.trace_id));
    Value::Object(object)
}

fn status_json(status: &rpc::Status) -> Value {
    // Details are never set on events (see the observer); an Any could
    // not be written without its message.
    json!({ "code": status.code, "message": status.message, "details": [] })
}

fn action_terminating(terminating: &ActionTerminating) -> Value {
    json!({
        "actionId": terminating.action_id,
        "reason": termination_reason(terminating.reason),
        "killedAtGraceDeadline": terminating.killed_at_grace_deadline,
    })
}

fn cleanup_failed(failed: &CleanupFailed) -> Value {
    json!({
        "actionId": failed.action_id,
        "cgroup": failed.cgroup,
        "pids": failed.pids.iter().map(|&pid| int64(pid)).collect::<Vec<_>>(),
        "detail": failed.detail,
    })
}

fn runner_state(state: &RunnerState) -> Value {
    json!({
        "acceptingWork": state.accepting_work,
        "reason": state.reason,
        "memoryBudgetBytes": int64(state.memory_budget_bytes),
        "runnerName": state.runner_name,
    })
}

fn events_lost(lost: &EventsLost) -> Value {
    json!({
        "firstSequence": uint64(lost.first_sequence),
        "lastSequence": uint64(lost.last_sequence),
    })
}

/// A usage message as an `Any`: `@type`, then its fields.
pub fn usage_json(usage: &Usage) -> Value {
    let (type_url, mut fields) = match usage {
        Usage::Posix(posix) => (
            <PosixResourceUsage as prost::Name>::type_url(),
            posix_json(posix),
        ),
        Usage::Cgroup(cgroup) => (
            <CgroupResourceUsage as prost::Name>::type_url(),
            cgroup_json(cgroup),
        ),
    };
    fields.insert("@type".into(), Value::String(type_url));
    Value::Object(fields)
}

fn posix_json(usage: &PosixResourceUsage) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in usage.json_durations() {
        insert_duration(&mut map, name, value);
    }
    for (name, value) in usage.json_numbers() {
        map.insert(name.into(), int64(value));
    }
    map.insert("terminationSignal".into(), json!(usage.termination_signal));
    map
}

fn cgroup_json(usage: &CgroupResourceUsage) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in usage.json_numbers() {
        map.insert(name.into(), int64(value));
    }
    for (name, value) in usage.json_durations() {
        insert_duration(&mut map, name, value);
    }
    map
}

fn insert_duration(
    map: &mut Map<String, Value>,
    name: &str,
    value: Option<&prost_types::Duration>,
) {
    if let Some(duration) = value {
        map.insert(name.into(), Value::String(duration.to_string()));
    }
}

fn termination_reason(value: i32) -> Value {
    enum_value(value, |value| {
        TerminationReason::try_from(value)
            .ok()
            .map(|v| v.as_str_name())
    })
}

/// An enum by name; a value this build does not know by its number, as
/// the mapping prescribes.
fn enum_value(value: i32, name: impl Fn(i32) -> Option<&'static str>) -> Value {
    match name(value) {
        Some(name) => Value::String(name.into()),
        None => json!(value),
    }
}

fn int64(value: impl Into<i64>) -> Value {
    Value::String(value.into().to_string())
}

fn uint64(value: u64) -> Value {
    Value::String(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rbe_runner::events::v1::Event;

    fn published(kind: Kind, usages: Vec<Usage>) -> Published {
        Published {
            event: Event {
                sequence: 7,
                time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5_000_000,
                }),
                runner_instance: "0badcafe".into(),
                kind: Some(kind),
            },
            usages,
        }
    }

    #[test]
    fn defaults_are_written_and_64_bit_integers_are_strings() {
        // Why it matters: the report and other languages' parsers rely on
        // every field being present, in protobuf's canonical spelling.
        let line = event_line(&published(
            Kind::RunnerState(RunnerState::default()),
            Vec::new(),
        ));
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({
                "sequence": "7",
                "time": "2023-11-14T22:13:20.005Z",
                "runnerInstance": "0badcafe",
                "runnerState": {
                    "acceptingWork": false,
                    "reason": "",
                    "memoryBudgetBytes": "0",
                    "runnerName": "",
                },
            })
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_finished_action_writes_enums_by_name_and_usages_as_any() {
        let finished = ActionFinished {
            action_id: "0badcafe-3".into(),
            exit_code: -1,
            status: Some(rpc::Status::default()),
            resource_usage: Vec::new(),
            wall_time: Some(prost_types::Duration {
                seconds: 2,
                nanos: 250_000_000,
            }),
            oom_verdict: OomVerdict::OwnLimit as i32,
            termination_reason: 0,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        };
        let usages = vec![
            Usage::Posix(PosixResourceUsage {
                user_time: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1000,
                }),
                maximum_resident_set_size: 4096,
                termination_signal: "KILL".into(),
                ..PosixResourceUsage::default()
            }),
            Usage::Cgroup(CgroupResourceUsage {
                memory_peak: 1 << 30,
                cpu_pressure_some_total: Some(prost_types::Duration::default()),
                ..CgroupResourceUsage::default()
            }),
        ];
        let value = event_json(&published(Kind::ActionFinished(finished), usages));
        let finished = &value["actionFinished"];
        assert_eq!(finished["exitCode"], "-1");
        assert_eq!(
            finished["status"],
            json!({"code": 0, "message": "", "details": []})
        );
        assert_eq!(finished["wallTime"], "2.250s");
        assert_eq!(finished["oomVerdict"], "OOM_VERDICT_OWN_LIMIT");
        assert_eq!(finished["terminationReason"], "TERMINATION_REASON_NONE");
        assert_eq!(finished["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        let posix = &finished["resourceUsage"][0];
        assert_eq!(
            posix["@type"],
            "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage"
        );
        assert_eq!(posix["userTime"], "0.000001s");
        assert_eq!(posix["maximumResidentSetSize"], "4096");
        assert_eq!(posix["swaps"], "0");
        assert_eq!(posix["terminationSignal"], "KILL");
        assert!(
            posix.get("systemTime").is_none(),
            "unset messages are left out"
        );
        let cgroup = &finished["resourceUsage"][1];
        assert_eq!(
            cgroup["@type"],
            "type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage"
        );
        assert_eq!(cgroup["memoryPeak"], "1073741824");
        assert_eq!(cgroup["cpuPressureSomeTotal"], "0s");
        assert!(cgroup.get("ioPressureSomeTotal").is_none());
    }

    #[test]
    fn an_enum_value_this_build_does_not_know_is_written_as_its_number() {
        let terminating = ActionTerminating {
            action_id: "x".into(),
            reason: 42,
            killed_at_grace_deadline: true,
        };
        let value = event_json(&published(Kind::ActionTerminating(terminating), Vec::new()));
        assert_eq!(value["actionTerminating"]["reason"], 42);
        assert_eq!(value["actionTerminating"]["killedAtGraceDeadline"], true);
    }

    #[test]
    fn a_gap_and_a_dirty_cgroup_are_written_like_the_rest() {
        let value = event_json(&published(
            Kind::EventsLost(EventsLost {
                first_sequence: 2,
                last_sequence: 33,
            }),
            Vec::new(),
        ));
        assert_eq!(
            value["eventsLost"],
            json!({"firstSequence": "2", "lastSequence": "33"})
        );
        let value = event_json(&published(
            Kind::CleanupFailed(CleanupFailed {
                action_id: "a-1".into(),
                cgroup: "/sys/fs/cgroup/x".into(),
                pids: vec![12, 13],
                detail: "stuck".into(),
            }),
            Vec::new(),
        ));
        assert_eq!(value["cleanupFailed"]["pids"], json!(["12", "13"]));
    }
}
