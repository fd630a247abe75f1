//! The operator CLI and the listeners, as a new user meets them: the
//! shipped local configuration, `exec`, `check-config`, TCP listeners,
//! health and reflection.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn exec(runner: &TestRunner, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("exec")
        .arg("--socket")
        .arg(&runner.socket)
        .arg("--build-dir")
        .arg(&runner.build_dir)
        .args(args)
        .output()
        .expect("run rbe-runner exec")
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "exec printed no JSON ({err}): stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn exec_prints_one_json_object_and_exits_with_the_action_code() {
    let runner = TestRunner::start(json!({}));
    let output = exec(
        &runner,
        &[
            "--env",
            "GREETING=hi",
            "--",
            "sh",
            "-c",
            "echo $GREETING; exit 3",
        ],
    );
    assert_eq!(output.status.code(), Some(3));
    let value = stdout_json(&output);
    assert_eq!(value["exitCode"], 3);
    let usage = &value["resourceUsage"][0];
    assert_eq!(
        usage["@type"],
        "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage"
    );
    assert!(usage["maximumResidentSetSize"].as_i64().unwrap() > 0);
    assert!(usage["userTime"].as_str().unwrap().ends_with('s'));
    let stdout_path = value["stdoutPath"].as_str().unwrap();
    assert!(Path::new(stdout_path).starts_with(&runner.build_dir));
    assert_eq!(read(Path::new(stdout_path)), "hi\n");
    assert!(Path::new(value["stderrPath"].as_str().unwrap()).exists());
}

#[test]
fn exec_exits_128_plus_signal_for_a_killed_action() {
    let runner = TestRunner::start(json!({}));
    let output = exec(&runner, &["--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(output.status.code(), Some(137));
    let value = stdout_json(&output);
    assert_eq!(value["exitCode"], -1);
    assert_eq!(value["resourceUsage"][0]["terminationSignal"], "KILL");
}

#[test]
fn exec_exits_2_and_prints_the_status_on_a_grpc_error() {
    let runner = TestRunner::start(json!({}));
    let output = exec(&runner, &["--", "no-such-program-xyz"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(stderr.contains("no-such-program-xyz"), "{stderr}");
}

/// `--timeout` is the call's deadline, and the runner enforces it: exec
/// prints the runner's DEADLINE_EXCEEDED (the action ran out of time), not
/// a CANCELLED of its own making (the caller gave up). A local timer
/// racing the runner's answer wins only some of the time, hence several
/// rounds.
#[test]
fn exec_timeout_prints_the_runners_deadline_exceeded() {
    let runner = TestRunner::start(json!({ "terminationGracePeriod": "1s" }));
    for round in 0..5 {
        let output = exec(&runner, &["--timeout", "0.5s", "--", "sleep", "5"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "round {round}: {stderr}");
        assert!(
            stderr.contains("DeadlineExceeded") && stderr.contains("grpc-timeout"),
            "round {round}: {stderr}"
        );
        assert!(
            !stderr.contains("Cancelled") && !stderr.contains("Timeout expired"),
            "round {round}: {stderr}"
        );
    }
}

/// A runner that accepts the connection but never answers (hung, or not a
/// runner at all) must not hang exec: it gives up a second after the
/// deadline, and says the runner did not answer.
#[test]
fn exec_timeout_reports_a_runner_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Accepts and holds every connection, reading nothing, answering
    // nothing; the thread ends with the test process.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let started = Instant::now();
    let output = Command::new(BIN)
        .arg("exec")
        .arg("--socket")
        .arg(&socket)
        .arg("--build-dir")
        .arg(dir.path())
        .args(["--timeout", "0.2s", "--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DEADLINE_EXCEEDED (no answer from the runner)"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    // The deadline plus the second exec grants the runner's answer.
    assert!(started.elapsed() >= Duration::from_millis(1200), "{stderr}");
}

#[test]
fn exec_usage_errors_exit_2_with_a_message() {
    let output = Command::new(BIN)
        .args(["exec", "--build-dir", "/tmp", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--socket"));
}

#[test]
fn check_config_prints_what_it_understood() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runner.jsonnet");
    std::fs::write(
        &file,
        "{ buildDirectoryPath: '/nonexistent/build', grpc_servers: [{ listenPaths: ['/nonexistent/sock'], authenticationPolicy: { allow: {} } }], terminationGracePeriod: '7s' }",
    )
    .unwrap();
    let output = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // No filesystem access: the paths do not exist, yet the file is valid.
    assert!(stdout.contains("/nonexistent/build"), "{stdout}");
    assert!(stdout.contains("7s"), "{stdout}");
}

#[test]
fn check_config_rejects_a_misspelled_key_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runner.jsonnet");
    std::fs::write(
        &file,
        "{ buildDirectoryPath: '/b', grpcServers: [{ listenPath: ['/s'], authenticationPolicy: { allow: {} } }] }",
    )
    .unwrap();
    let output = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("grpcServers[0].listenPath"), "{stderr}");
    assert!(stderr.contains("runner.jsonnet"), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_config_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runner.jsonnet");
    std::fs::write(&file, "{ buildDirectoryPath: '/b' ").unwrap();
    let output = Command::new(BIN).arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("runner.jsonnet"));
}

/// The README's first command: serve with config/local.jsonnet from a
/// directory with `run/build`, then try it with exec.
#[test]
fn the_shipped_local_config_serves_and_exec_works_against_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run/build")).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.jsonnet");
    let child = Command::new(BIN)
        .arg(&config)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("serving"));
    assert!(serving.is_some(), "the runner did not report serving");
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "exec",
            "--socket",
            "run/runner.sock",
            "--build-dir",
            "run/build",
            "--",
            "echo",
            "hello",
        ])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = stdout_json(&output);
    assert_eq!(
        read(Path::new(value["stdoutPath"].as_str().unwrap())),
        "hello\n"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(child.0.wait().unwrap().success());
    assert!(!dir.path().join("run/runner.sock").exists());
}

/// Kills the child if a test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tcp_listener_serves_the_runner_health_and_reflection() {
    let runner =
        TestRunner::start(json!({ "grpcServers": [{ "listenAddresses": ["127.0.0.1:0"] }] }));
    let line = runner
        .log()
        .into_iter()
        .find(|line| line.contains("serving"))
        .unwrap();
    let address = line
        .split(['"', ' ', '[', ']', ','])
        .find(|part| part.starts_with("127.0.0.1:") && !part.ends_with(":0"))
        .unwrap_or_else(|| panic!("no bound TCP address in {line:?}"))
        .to_string();
    let channel =
        rbe_runner::cli::client::connect(&rbe_runner::cli::client::Target::Address(address))
            .await
            .unwrap();

    let action = runner.action();
    let mut client = rbe_runner::proto::runner::runner_client::RunnerClient::new(channel.clone());
    let response = client
        .run(shell_request(&action, "exit 0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.exit_code, 0);

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"buildbarn.runner.Runner".to_string()),
        "{names:?}"
    );
}

/// Why it matters: `tests/run-all` ends with this summary; it must
/// count what `record` wrote, once each, and say `0 skipped` for none.
/// (Here rather than with `record`'s unit tests: the crate's unit-test
/// process also runs the runner's reaper, which takes unknown zombies for
/// orphans, so a unit test's own `Command` can lose its child's status.)
#[test]
fn run_alls_summary_lists_the_recorded_skips() {
    let summary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/skip-summary");
    let summarize = |log: &std::path::Path| {
        let output = std::process::Command::new(&summary)
            .arg(log)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips.txt");
    assert_eq!(summarize(&log), "0 skipped\n");
    common::skip::record(&log, "decorators", "a_chrooted_action", "needs root").unwrap();
    common::skip::record(&log, "vm", "cgroup_oom", "no VM (qemu missing)").unwrap();
    common::skip::record(&log, "decorators", "a_chrooted_action", "needs root").unwrap();
    assert_eq!(
        summarize(&log),
        "2 skipped:\n  decorators: a_chrooted_action (needs root)\n  \
         vm: cgroup_oom (no VM (qemu missing))\n"
    );
}
