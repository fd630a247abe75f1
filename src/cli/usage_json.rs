//! Resource usage messages as protobuf JSON, the way `exec` prints them
//! (and the details of a status): the messages we know decoded, others
//! kept as their type URL and raw bytes.

use prost::Name;
use serde_json::{json, Map, Value};

use crate::proto::rbe_runner::resourceusage::v1::{ActionAccounting, OomVerdict};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};

/// protobuf-JSON-like rendering of the usage messages we know; others keep
/// their type URL and raw bytes. int64 values are JSON numbers here, for
/// the convenience of `jq` users.
pub fn any_json(any: &prost_types::Any) -> Value {
    let mut object = Map::new();
    object.insert("@type".into(), Value::String(any.type_url.clone()));
    if any.type_url == PosixResourceUsage::type_url() {
        if let Ok(usage) = any.to_msg::<PosixResourceUsage>() {
            object.extend(posix_json(&usage));
            return Value::Object(object);
        }
    }
    if any.type_url == CgroupResourceUsage::type_url() {
        if let Ok(usage) = any.to_msg::<CgroupResourceUsage>() {
            object.extend(cgroup_json(&usage));
            return Value::Object(object);
        }
    }
    if any.type_url == ActionAccounting::type_url() {
        if let Ok(accounting) = any.to_msg::<ActionAccounting>() {
            object.extend(accounting_json(&accounting));
            return Value::Object(object);
        }
    }
    object.insert(
        "valueHex".into(),
        Value::String(any.value.iter().map(|b| format!("{b:02x}")).collect()),
    );
    Value::Object(object)
}

fn posix_json(usage: &PosixResourceUsage) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in usage.json_durations() {
        map.insert(name.into(), duration_json(value));
    }
    for (name, value) in usage.json_numbers() {
        map.insert(name.into(), json!(value));
    }
    if !usage.termination_signal.is_empty() {
        map.insert("terminationSignal".into(), json!(usage.termination_signal));
    }
    map
}

fn cgroup_json(usage: &CgroupResourceUsage) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in usage.json_numbers() {
        map.insert(name.into(), json!(value));
    }
    for (name, value) in usage.json_durations() {
        map.insert(name.into(), duration_json(value));
    }
    map
}

fn accounting_json(accounting: &ActionAccounting) -> Map<String, Value> {
    let mut map = Map::new();
    // Enums by name, as protobuf-JSON writes them; an unknown number stays
    // a number.
    let verdict = OomVerdict::try_from(accounting.oom_verdict)
        .map(|verdict| json!(verdict.as_str_name()))
        .unwrap_or_else(|_| json!(accounting.oom_verdict));
    map.insert("oomVerdict".into(), verdict);
    map.insert(
        "oomLimitingCgroup".into(),
        json!(accounting.oom_limiting_cgroup),
    );
    let numbers = [
        ("oomLimitBytes", accounting.oom_limit_bytes),
        ("actionsRunningAtOom", accounting.actions_running_at_oom),
        ("memoryMax", accounting.memory_max),
        ("memorySwapMax", accounting.memory_swap_max),
        ("pidsMax", accounting.pids_max),
        ("pidsEventsMax", accounting.pids_events_max),
        ("cpuNrThrottled", accounting.cpu_nr_throttled),
    ];
    for (name, value) in numbers {
        map.insert(name.into(), json!(value));
    }
    map.insert("cpuMaxCores".into(), json!(accounting.cpu_max_cores));
    map.insert(
        "cpuThrottled".into(),
        duration_json(accounting.cpu_throttled.as_ref()),
    );
    map
}

/// protobuf-JSON Duration: seconds with 0, 3, 6 or 9 fractional digits.
pub fn duration_json(duration: Option<&prost_types::Duration>) -> Value {
    let (seconds, nanos) = duration.map(|d| (d.seconds, d.nanos)).unwrap_or((0, 0));
    let text = if nanos == 0 {
        format!("{seconds}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{seconds}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{seconds}.{:06}s", nanos / 1_000)
    } else {
        format!("{seconds}.{nanos:09}s")
    };
    Value::String(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_render_as_protobuf_json() {
        let d = |seconds, nanos| duration_json(Some(&prost_types::Duration { seconds, nanos }));
        assert_eq!(d(3, 0), "3s");
        assert_eq!(d(1, 500_000_000), "1.500s");
        assert_eq!(d(0, 1_000), "0.000001s");
        assert_eq!(d(0, 7), "0.000000007s");
        assert_eq!(duration_json(None), "0s");
    }

    #[test]
    fn known_usage_messages_are_decoded_with_their_type() {
        let usage = PosixResourceUsage {
            maximum_resident_set_size: 4096,
            termination_signal: "SEGV".into(),
            ..Default::default()
        };
        let value = any_json(&prost_types::Any::from_msg(&usage).unwrap());
        assert_eq!(
            value["@type"],
            "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage"
        );
        assert_eq!(value["maximumResidentSetSize"], 4096);
        assert_eq!(value["terminationSignal"], "SEGV");

        let accounting = ActionAccounting {
            oom_verdict: OomVerdict::SharedLimit as i32,
            oom_limiting_cgroup: "/sys/fs/cgroup/pod".into(),
            oom_limit_bytes: 128 << 20,
            cpu_max_cores: 0.5,
            cpu_throttled: Some(prost_types::Duration {
                seconds: 1,
                nanos: 250_000_000,
            }),
            ..Default::default()
        };
        let value = any_json(&prost_types::Any::from_msg(&accounting).unwrap());
        assert_eq!(
            value["@type"],
            "type.googleapis.com/rbe_runner.resourceusage.v1.ActionAccounting"
        );
        assert_eq!(value["oomVerdict"], "OOM_VERDICT_SHARED_LIMIT");
        assert_eq!(value["oomLimitingCgroup"], "/sys/fs/cgroup/pod");
        assert_eq!(value["oomLimitBytes"], 128 << 20);
        assert_eq!(value["cpuMaxCores"], 0.5);
        assert_eq!(value["cpuThrottled"], "1.250s");
        assert_eq!(value["pidsEventsMax"], 0);
        assert!(value.get("valueHex").is_none(), "{value}");
    }
}
