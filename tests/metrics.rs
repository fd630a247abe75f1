//! The diagnostics HTTP server end to end: the real binary, a diagnostics
//! server on 127.0.0.1, known actions, and the scraped exposition checked
//! number by number and by Prometheus's own `promtool`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    diagnostics_address, diagnostics_on_loopback, eventually, http_get as get, merge,
    shell_request, skip, TestRunner,
};
use serde_json::json;

/// One sample of the exposition: its name and labels.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Every sample of a text-format exposition.
fn parse(exposition: &str) -> BTreeMap<Series, f64> {
    let mut samples = BTreeMap::new();
    for line in exposition.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').expect("label=value");
                (key.to_string(), value.trim_matches('"').to_string())
            })
            .collect();
        let value = match value {
            "+Inf" => f64::INFINITY,
            value => value.parse().expect("a number"),
        };
        samples.insert(
            Series {
                name: name.into(),
                labels,
            },
            value,
        );
    }
    samples
}

struct Scrape(BTreeMap<Series, f64>);

impl Scrape {
    fn of(address: &str) -> (Scrape, String) {
        let (status, body) = get(address, "/metrics");
        assert_eq!(status, 200, "{body}");
        (Scrape(parse(&body)), body)
    }

    /// The value of `name{labels}`; panics when the series is absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} is not exported"))
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let series = Series {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.0.get(&series).copied()
    }
}

const RUN: [(&str, &str); 3] = [
    ("grpc_type", "unary"),
    ("grpc_service", "buildbarn.runner.Runner"),
    ("grpc_method", "Run"),
];

fn run_with_code(code: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut labels = RUN.to_vec();
    labels.push(("grpc_code", code));
    labels
}

fn start(readiness_path: &Path) -> TestRunner {
    let mut config = diagnostics_on_loopback();
    merge(
        &mut config,
        json!({ "readinessCheckingPathnames": [readiness_path] }),
    );
    TestRunner::start(config)
}

/// Prometheus's promtool, or `None` with the promtool check of `test`
/// skipped.
fn promtool(test: &str) -> Option<PathBuf> {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/promtool");
    if installed.exists() {
        return Some(installed);
    }
    skip(
        test,
        "its promtool check: no target/tools/promtool (run tests/tools/install-promtool)",
    );
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scrape_counts_exactly_the_actions_that_ran() {
    let ready = tempfile::tempdir().unwrap();
    let runner = start(ready.path());
    let address = diagnostics_address(&runner);

    // Pre-created series are there at zero before anything ran.
    let (before, _) = Scrape::of(&address);
    for code in [
        "OK",
        "Canceled",
        "DeadlineExceeded",
        "Unavailable",
        "Unauthenticated",
    ] {
        assert_eq!(
            before.value("grpc_server_handled_total", &run_with_code(code)),
            0.0
        );
    }
    assert_eq!(before.value("grpc_server_started_total", &RUN), 0.0);
    assert_eq!(
        before.value(
            "grpc_server_started_total",
            &[
                ("grpc_type", "server_stream"),
                ("grpc_service", "grpc.health.v1.Health"),
                ("grpc_method", "Watch")
            ]
        ),
        0.0
    );
    assert_eq!(
        before.value("grpc_server_handling_seconds_count", &RUN),
        0.0
    );
    for result in ["Success", "NonZeroExitCode", "Signal", "Failure"] {
        assert_eq!(
            before.value(
                "rbe_runner_actions_finished_total",
                &[("result", result), ("grpc_code", "Internal")]
            ),
            0.0
        );
    }
    for verdict in ["OwnLimit", "SharedLimit", "NotOwnLimit"] {
        assert_eq!(
            before.value("rbe_runner_action_oom_kills_total", &[("verdict", verdict)]),
            0.0
        );
    }
    for reason in ["Deadline", "Cancelled", "Shutdown"] {
        for sigkill in ["true", "false"] {
            assert_eq!(
                before.value(
                    "rbe_runner_action_terminations_total",
                    &[("reason", reason), ("sigkill", sigkill)]
                ),
                0.0
            );
        }
    }
    assert_eq!(
        before.value(
            "rbe_runner_cleaner_runs_total",
            &[("cleaner", "cleanProcessTable"), ("result", "failed")]
        ),
        0.0
    );
    assert_eq!(
        before.value(
            "rbe_runner_action_pressure_stall_seconds_count",
            &[("resource", "io"), ("kind", "full")]
        ),
        0.0
    );
    assert_eq!(
        before.value("rbe_runner_action_cleanup_failures_total", &[]),
        0.0
    );
    assert_eq!(before.value("rbe_runner_refusing_work", &[]), 0.0);
    assert_eq!(before.value("rbe_runner_events_dropped_total", &[]), 0.0);
    for rejected in [
        "rbe_runner_diagnostics_connections_rejected_total",
        "rbe_runner_grpc_connections_rejected_total",
    ] {
        assert_eq!(before.value(rejected, &[]), 0.0, "{rejected}");
    }
    assert_eq!(before.value("rbe_runner_spawn_server_up", &[]), 1.0);
    assert_eq!(
        before.value("rbe_runner_events_journal_write_failures_total", &[]),
        0.0
    );
    assert_eq!(
        before.value(
            "rbe_runner_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Present; CPU time may still round to 0 this early.
    assert!(before.value("process_cpu_seconds_total", &[]) >= 0.0);
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(before.value(name, &[]) > 0.0, "{name}");
    }

    // Known actions: one of each.
    let (_, succeeded) = runner.run_shell("exit 0").await;
    assert_eq!(succeeded.unwrap().exit_code, 0);
    let (_, failed) = runner.run_shell("exit 3").await;
    assert_eq!(failed.unwrap().exit_code, 3);
    let (_, killed) = runner.run_shell("kill -KILL $$").await;
    assert_eq!(killed.unwrap().exit_code, -1);
    let action = runner.action();
    let mut refused = shell_request(&action, "exit 0");
    refused.working_directory = "../../outside".into();
    let status = runner.client().await.run(refused).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let action = runner.action();
    // The runner enforces the deadline, as for bb_worker.
    let status = runner
        .run_past_deadline(
            shell_request(&action, "exec sleep 60"),
            Duration::from_millis(500),
        )
        .await;
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );

    // The timed-out action ends after its call: wait until none runs.
    let mut after = None;
    eventually("no action runs", Duration::from_secs(30), || {
        let (scrape, _) = Scrape::of(&address);
        let idle = scrape.value("rbe_runner_actions_running", &[]) == 0.0
            && scrape.value("rbe_runner_action_wall_time_seconds_count", &[]) == 5.0;
        after = Some(scrape);
        idle
    })
    .await;
    let after = after.unwrap();

    let finished = |result: &str, code: &str| {
        after.value(
            "rbe_runner_actions_finished_total",
            &[("result", result), ("grpc_code", code)],
        )
    };
    assert_eq!(finished("Success", "OK"), 1.0);
    assert_eq!(finished("NonZeroExitCode", "OK"), 1.0);
    assert_eq!(finished("Signal", "OK"), 1.0);
    assert_eq!(finished("Failure", "InvalidArgument"), 1.0);
    assert_eq!(finished("Failure", "DeadlineExceeded"), 1.0);
    let total_finished: f64 = after
        .0
        .iter()
        .filter(|(series, _)| series.name == "rbe_runner_actions_finished_total")
        .map(|(_, value)| value)
        .sum();
    assert_eq!(total_finished, 5.0);
    assert_eq!(
        after.value(
            "rbe_runner_action_terminations_total",
            &[("reason", "Deadline"), ("sigkill", "false")]
        ),
        1.0
    );
    // The four that started have rusage; the refused one has none.
    assert_eq!(
        after.value("rbe_runner_action_posix_user_time_seconds_count", &[]),
        4.0
    );
    assert_eq!(
        after.value(
            "rbe_runner_action_posix_maximum_resident_set_size_bytes_count",
            &[]
        ),
        4.0
    );

    assert_eq!(after.value("grpc_server_started_total", &RUN), 5.0);
    assert_eq!(after.value("grpc_server_msg_received_total", &RUN), 5.0);
    assert_eq!(after.value("grpc_server_msg_sent_total", &RUN), 3.0);
    assert_eq!(
        after.value("grpc_server_handled_total", &run_with_code("OK")),
        3.0
    );
    assert_eq!(
        after.value(
            "grpc_server_handled_total",
            &run_with_code("InvalidArgument")
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "grpc_server_handled_total",
            &run_with_code("DeadlineExceeded")
        ),
        1.0
    );
    assert_eq!(after.value("grpc_server_handling_seconds_count", &RUN), 5.0);

    // Prometheus's own checker accepts the whole exposition.
    let (_, exposition) = Scrape::of(&address);
    if let Some(promtool) = promtool("the_scrape_counts_exactly_the_actions_that_ran") {
        let (status, output) = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(exposition.as_bytes());
        assert!(status.success(), "promtool check metrics: {output}");
    }
}

/// `Command::output` with bytes on stdin.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> (std::process::ExitStatus, String);
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> (std::process::ExitStatus, String) {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start promtool");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let output = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status, text)
    }
}

/// Why it matters: cleaner failures and cancelled actions are what an
/// operator alerts on; the series must move when they happen, not only be
/// there at zero.
#[tokio::test(flavor = "multi_thread")]
async fn cleaner_runs_and_a_cancelled_action_are_counted() {
    let scratch = tempfile::tempdir().unwrap();
    let mut config = diagnostics_on_loopback();
    merge(
        &mut config,
        json!({
            "cleanTemporaryDirectories": [scratch.path()],
            "terminationGracePeriod": "5s",
        }),
    );
    let runner = TestRunner::start(config);
    let address = diagnostics_address(&runner);
    let action = runner.action();
    runner
        .run_successfully(&action, shell_request(&action, "true"))
        .await;
    let action = runner.action();
    let root = action.path.join("root");
    runner
        .run_and_cancel_when(
            shell_request(
                &action,
                "trap 'exit 0' TERM; touch ready; while :; do sleep 0.1; done",
            ),
            &root.join("ready"),
        )
        .await;
    eventually(
        "the cancelled action is gone",
        Duration::from_secs(20),
        || {
            Scrape::of(&address).0.get(
                "rbe_runner_action_terminations_total",
                &[("reason", "Cancelled"), ("sigkill", "false")],
            ) == Some(1.0)
                && Scrape::of(&address)
                    .0
                    .value("rbe_runner_actions_running", &[])
                    == 0.0
        },
    )
    .await;
    let (scrape, _) = Scrape::of(&address);
    let cleanings: f64 = scrape
        .0
        .iter()
        .filter(|(series, _)| {
            series.name == "rbe_runner_cleaner_runs_total"
                && series.labels.get("result").map(String::as_str) == Some("ok")
        })
        .map(|(_, value)| value)
        .sum();
    // Becoming busy and becoming idle, around each of the two calls.
    assert!(cleanings >= 4.0, "{cleanings} cleaner runs");
    assert_eq!(
        scrape.value(
            "rbe_runner_action_terminations_total",
            &[("reason", "Deadline"), ("sigkill", "false")]
        ),
        0.0
    );
    assert_eq!(
        scrape.value(
            "rbe_runner_actions_finished_total",
            &[("result", "Failure"), ("grpc_code", "Canceled")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_turns_503_while_a_readiness_path_is_missing_and_back() {
    // Why it matters: a Kubernetes readiness probe must take the pod out
    // of service exactly when bb_worker's CheckReadiness would fail.
    let ready = tempfile::tempdir().unwrap();
    let path = ready.path().join("mounted");
    std::fs::write(&path, "").unwrap();
    let runner = start(&path);
    let address = diagnostics_address(&runner);

    assert_eq!(get(&address, "/-/healthy").0, 200);
    assert_eq!(get(&address, "/-/ready"), (200, "OK\n".into()));

    std::fs::remove_file(&path).unwrap();
    let (status, body) = get(&address, "/-/ready");
    assert_eq!(status, 503);
    assert!(body.contains("mounted"), "{body}");
    let (scrape, _) = Scrape::of(&address);
    assert_eq!(scrape.value("rbe_runner_refusing_work", &[]), 1.0);

    std::fs::write(&path, "").unwrap();
    assert_eq!(get(&address, "/-/ready").0, 200);
    let (scrape, _) = Scrape::of(&address);
    assert_eq!(scrape.value("rbe_runner_refusing_work", &[]), 0.0);
    assert_eq!(get(&address, "/nothing").0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_turns_503_as_soon_as_shutdown_starts() {
    let ready = tempfile::tempdir().unwrap();
    let runner = TestRunner::start(json!({
        "global": { "diagnosticsHttpServer": {
            "httpServers": [{
                "listenAddresses": ["127.0.0.1:0"],
                "authenticationPolicy": { "allow": {} },
            }],
        } },
        "grpcServers": [{ "stopGracefully": true }],
    }));
    let address = diagnostics_address(&runner);
    assert_eq!(get(&address, "/-/ready").0, 200);
    // Without enablePrometheus there is no /metrics.
    assert_eq!(get(&address, "/metrics").0, 404);

    // An action keeps the runner in its graceful stop.
    let action = runner.action();
    let marker = ready.path().join("started");
    let request = shell_request(
        &action,
        &format!("touch {}; exec sleep 60", marker.display()),
    );
    let mut client = runner.client().await;
    let call = tokio::spawn(async move { client.run(request).await });
    eventually("the action started", Duration::from_secs(30), || {
        marker.exists()
    })
    .await;
    runner.signal_terminate();
    let mut last = (0, String::new());
    eventually("/-/ready answers 503", Duration::from_secs(30), || {
        last = get(&address, "/-/ready");
        last.0 == 503
    })
    .await;
    assert!(last.1.contains("shutdown"), "{}", last.1);
    call.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_put_the_action_id_at_the_top_level() {
    // Why it matters: log pipelines index top-level fields; an action's
    // lines must be findable by its id without parsing nested objects.
    let runner = TestRunner::start(json!({ "logFormat": "json" }));
    let (_, result) = runner.run_shell("exit 0").await;
    assert_eq!(result.unwrap().exit_code, 0);
    let mut exited = None;
    eventually(
        "the action's line is logged",
        Duration::from_secs(30),
        || {
            exited = runner
                .log()
                .into_iter()
                .find(|line| line.contains("action exited"));
            exited.is_some()
        },
    )
    .await;
    let line: serde_json::Value = serde_json::from_str(&exited.unwrap()).expect("a JSON line");
    assert_eq!(line["message"], "action exited");
    assert!(
        line["action_id"]
            .as_str()
            .is_some_and(|id| id.ends_with("-1")),
        "{line}"
    );
    assert_eq!(line["result"], "Success");
    for line in runner.log() {
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
    }
}

#[test]
fn an_address_that_cannot_be_bound_stops_startup_naming_it() {
    // Why it matters: a scrape target that silently is not there is
    // found only when the dashboards are empty.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("build")).unwrap();
    let config = json!({
        "buildDirectoryPath": dir.path().join("build"),
        "grpcServers": [{
            "listenPaths": [dir.path().join("runner.sock")],
            "authenticationPolicy": { "allow": {} },
        }],
        "global": { "diagnosticsHttpServer": {
            "httpServers": [{
                "listenAddresses": [address],
                "authenticationPolicy": { "allow": {} },
            }],
        } },
    });
    let config_path = dir.path().join("runner.jsonnet");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let output = std::process::Command::new(common::runner_under_test())
        .arg(&config_path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "diagnosticsHttpServer: cannot listen on {address}"
        )),
        "{stderr}"
    );
}
