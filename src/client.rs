//! The client side of `rbe-runner exec`: acting as a worker for one action.
//!
//! It prepares an action directory the way bb_worker does (`root/`, `tmp/`,
//! `server_logs/` under the build directory), sends one Run, and renders the
//! response as JSON for operators and scripts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prost::{Message, Name};
use serde_json::{json, Map, Value};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::rbe_runner::resourceusage::v1::{ActionAccounting, OomVerdict};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
use crate::proto::rpc;
use crate::proto::runner::runner_client::RunnerClient;
use crate::proto::runner::{RunRequest, RunResponse};

/// Where the runner listens.
#[derive(Debug, Clone)]
pub enum Target {
    Socket(PathBuf),
    Address(String),
}

/// Errors of the exec client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("cannot prepare action directory {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Run failed: {}", describe_status(.0))]
    Rpc(tonic::Status),
    #[error("Subscribe failed: {}", describe_status(.0))]
    Subscribe(tonic::Status),
}

/// Opens a channel to the runner.
pub async fn connect(target: &Target) -> Result<Channel, ClientError> {
    let connected = match target {
        Target::Socket(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector below
            // ignores it and dials the socket.
            Endpoint::from_static("http://[::1]:1")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        }
        Target::Address(address) => match Endpoint::from_shared(format!("http://{address}")) {
            Ok(endpoint) => endpoint.connect().await,
            Err(err) => Err(err),
        },
    };
    connected.map_err(|source| ClientError::Connect {
        target: target_name(target),
        source,
    })
}

fn target_name(target: &Target) -> String {
    match target {
        Target::Socket(path) => format!("Unix socket {}", path.display()),
        Target::Address(address) => address.clone(),
    }
}

/// A prepared action directory, relative to the build directory.
#[derive(Debug, Clone)]
pub struct ActionDirectory {
    /// Name of the directory, relative to the build directory.
    pub relative: String,
    /// Its host path.
    pub path: PathBuf,
}

impl ActionDirectory {
    /// Creates a fresh, uniquely named action directory with `root/`,
    /// `tmp/` and `server_logs/`, as bb_worker lays it out.
    pub fn create(build_directory: &Path) -> Result<Self, ClientError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let relative = format!("exec-{nanos}-{}", std::process::id());
        // Absolute, so that the printed stdout/stderr paths work from anywhere.
        let path = std::path::absolute(build_directory)
            .map_err(|source| ClientError::Prepare {
                path: build_directory.to_path_buf(),
                source,
            })?
            .join(&relative);
        for sub in ["root", "tmp", "server_logs"] {
            let dir = path.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|source| ClientError::Prepare { path: dir, source })?;
        }
        Ok(ActionDirectory { relative, path })
    }

    /// The Run request for `arguments` in this directory.
    pub fn request(
        &self,
        arguments: Vec<String>,
        environment: Vec<(String, String)>,
    ) -> RunRequest {
        let at = |sub: &str| format!("{}/{sub}", self.relative);
        RunRequest {
            arguments,
            environment_variables: environment.into_iter().collect(),
            working_directory: String::new(),
            stdout_path: at("stdout"),
            stderr_path: at("stderr"),
            input_root_directory: at("root"),
            temporary_directory: at("tmp"),
            server_logs_directory: at("server_logs"),
        }
    }
}

/// Sends `request` with an optional deadline.
pub async fn run(
    channel: Channel,
    request: RunRequest,
    timeout: Option<Duration>,
) -> Result<RunResponse, ClientError> {
    let mut client = RunnerClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let mut request = tonic::Request::new(request);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    client
        .run(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(ClientError::Rpc)
}

/// The JSON object `exec` prints for a response.
pub fn response_json(response: &RunResponse, action: &ActionDirectory) -> Value {
    json!({
        "exitCode": response.exit_code,
        "resourceUsage": response.resource_usage.iter().map(any_json).collect::<Vec<_>>(),
        "stdoutPath": action.path.join("stdout"),
        "stderrPath": action.path.join("stderr"),
    })
}

/// The process exit status `exec` uses: the action's exit code, 128+signal
/// when it was killed by a signal.
pub fn exit_status(response: &RunResponse) -> i32 {
    if response.exit_code >= 0 {
        return i32::try_from(response.exit_code).unwrap_or(255);
    }
    let signal = response
        .resource_usage
        .iter()
        .find_map(|any| any.to_msg::<PosixResourceUsage>().ok())
        .and_then(|usage| signal_number(&usage.termination_signal));
    match signal {
        Some(signal) => 128 + signal,
        None => 255,
    }
}

fn signal_number(name: &str) -> Option<i32> {
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|signal| signal as i32)
}

/// A status with its code, message and any decoded details, for stderr.
pub fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Ok(decoded) = rpc::Status::decode(status.details()) {
        if !decoded.details.is_empty() {
            let details: Vec<Value> = decoded.details.iter().map(any_json).collect();
            text.push_str(&format!(
                "\ndetails: {}",
                serde_json::to_string_pretty(&details).unwrap_or_default()
            ));
        }
    }
    text
}

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
    fn exit_status_is_exit_code_or_128_plus_signal() {
        let usage = PosixResourceUsage {
            termination_signal: "KILL".into(),
            ..Default::default()
        };
        let killed = RunResponse {
            exit_code: -1,
            resource_usage: vec![prost_types::Any::from_msg(&usage).unwrap()],
        };
        assert_eq!(exit_status(&killed), 137);
        let exited = RunResponse {
            exit_code: 3,
            resource_usage: vec![],
        };
        assert_eq!(exit_status(&exited), 3);
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
