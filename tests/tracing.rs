//! OpenTelemetry tracing against a real OTLP receiver: a Python gRPC
//! server implementing `opentelemetry.proto.collector.trace.v1.TraceService`
//! (tests/python/otlp_receiver.py, from the `opentelemetry-proto` package),
//! the real binary exporting to it, and Python's grpcio sending Run with
//! the trace context bb_worker would send.
//!
//! Nothing here waits a fixed time for spans to be absent: the simple span
//! processor exports one span at a time, in order, so once a later call's
//! spans have arrived, an earlier call's spans would have too.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use prost::Message;
use rbe_runner::proto::runner::{RunRequest, RunResponse};
use serde_json::{json, Value};

/// How long spans may take to reach the receiver on a loaded machine.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The Python OTLP receiver, and the spans it received.
struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    spans: mpsc::Receiver<Value>,
    /// Every span received so far.
    seen: Vec<Value>,
}

impl Receiver {
    fn start(python: &Path) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/otlp_receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("the receiver says where it listens")
            .unwrap();
        let port = first
            .strip_prefix("LISTENING ")
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the receiver: {first:?}"));
        let (sender, spans) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span: Value = serde_json::from_str(&line).expect("a JSON span");
                if sender.send(span).is_err() {
                    break;
                }
            }
        });
        Receiver {
            child,
            stdin,
            port,
            spans,
            seen: Vec::new(),
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits for spans until `done` holds for those received so far.
    fn wait_for(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = std::time::Instant::now() + EXPORT_TIMEOUT;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.spans.recv_timeout(left) {
                Ok(span) => self.seen.push(span),
                Err(_) => panic!(
                    "timed out waiting for {what}; received: {}",
                    serde_json::to_string_pretty(&self.seen).unwrap()
                ),
            }
        }
        self.seen.clone()
    }

    /// Waits for the spans of trace `trace_id`, down to the action's five
    /// phases.
    fn wait_for_trace(&mut self, trace_id: &str) -> Vec<Value> {
        let spans = self.wait_for(&format!("the spans of trace {trace_id}"), |seen| {
            in_trace(seen, trace_id).len() >= 7
        });
        in_trace(&spans, trace_id)
    }

    /// Stops the receiver and waits until it is gone.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn in_trace(spans: &[Value], trace_id: &str) -> Vec<Value> {
    spans
        .iter()
        .filter(|span| span["traceId"] == trace_id)
        .cloned()
        .collect()
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|span| span["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

/// A runner exporting to `receiver` with `sampler`, with diagnostics
/// (metrics and `/active_spans`) and a journal in [`journal_of`].
fn traced_runner(receiver_address: &str, sampler: Value) -> (TestRunner, tempfile::TempDir) {
    let journal = tempfile::tempdir().expect("tempdir");
    let mut config = diagnostics_on_loopback();
    merge(
        &mut config,
        json!({
            "global": {
                "diagnosticsHttpServer": { "enableActiveSpans": true },
                "tracing": {
                    "backends": [{
                        "otlpSpanExporter": {
                            "address": receiver_address,
                            "addMetadata": [{ "header": "x-tenant", "values": ["builds"] }],
                        },
                        "simpleSpanProcessor": {},
                    }],
                    "resourceAttributes": [
                        { "key": "service.name", "value": { "stringValue": "runner-under-test" } },
                    ],
                    "sampler": sampler,
                },
            },
            "grpcServers": [{
                "authenticationPolicy": { "allow": { "tracingAttributes": [
                    { "key": "tenant", "value": { "stringValue": "team-a" } },
                ] } },
                "tracing": {
                    "/buildbarn.runner.Runner/Run": {
                        "attributesFromFirstRequestMessage": ["arguments"],
                        "attributesFromFirstResponseMessage": ["exit_code"],
                    },
                },
            }],
            "events": { "journalPath": journal.path().join("journal.jsonl") },
        }),
    );
    (TestRunner::start(config), journal)
}

/// Run through Python's grpcio with `metadata`: the response, or the
/// error code's name.
fn traced_run(
    python: &Path,
    runner: &TestRunner,
    request: &RunRequest,
    metadata: &[(&str, String)],
) -> Result<RunResponse, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_call.py");
    let mut command = Command::new(python);
    command
        .arg(script)
        .arg(format!("unix:{}", runner.socket.display()))
        .arg("Run");
    for (key, value) in metadata {
        command.arg(format!("{key}={value}"));
    }
    let hex: String = request
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let output = output_with_input(
        command.stdout(Stdio::piped()).stderr(Stdio::inherit()),
        hex.as_bytes(),
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = stdout.trim_end();
    match line.strip_prefix("OK") {
        Some(hex) => {
            let hex = hex.trim();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            Ok(RunResponse::decode(bytes.as_slice()).unwrap())
        }
        None => Err(line.to_owned()),
    }
}

/// A fresh W3C trace id for each call of a test.
fn trace_id(n: u8) -> String {
    let random: u64 = std::process::id() as u64
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64);
    format!("{random:016x}{:014x}{n:02x}", 0x5eed)
}

const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str, sampled: bool) -> (&'static str, String) {
    let flags = if sampled { "01" } else { "00" };
    (
        "traceparent",
        format!("00-{trace_id}-{CALLER_SPAN}-{flags}"),
    )
}

fn parent_based_always() -> Value {
    json!({ "parentBased": { "noParent": { "always": {} } } })
}

#[tokio::test]
async fn a_traced_run_is_exported_under_the_callers_span_with_its_outcome() {
    // Why it matters: this is the whole feature. In a traced deployment
    // the runner's spans must hang under bb_worker's, and carry what only
    // the runner knows (exit code, memory peak, phases), matching the Run
    // response the worker got.
    let test = "a_traced_run_is_exported_under_the_callers_span_with_its_outcome";
    let Some(python) = test_python(test) else {
        return;
    };
    let mut receiver = Receiver::start(&python);
    let (runner, journal) = traced_runner(&receiver.address(), parent_based_always());
    let action = runner.action();
    let request = shell_request(&action, "echo traced; exit 3");
    let trace = trace_id(1);
    let response =
        traced_run(&python, &runner, &request, &[traceparent(&trace, true)]).expect("Run succeeds");
    assert_eq!(response.exit_code, 3);

    let spans = receiver.wait_for_trace(&trace);
    let server = named(&spans, "buildbarn.runner.Runner/Run");
    assert_eq!(server["parentSpanId"], CALLER_SPAN, "{server:#}");
    assert_eq!(server["kind"], 2, "SPAN_KIND_SERVER: {server:#}");
    assert_eq!(server["attributes"]["rpc.grpc.status_code"], 0);
    assert_eq!(server["attributes"]["response.exit_code"], 3);
    assert_eq!(
        server["attributes"]["request.arguments"],
        json!(request.arguments)
    );
    assert_eq!(server["attributes"]["auth.tenant"], "team-a");
    assert_eq!(server["resource"]["service.name"], "runner-under-test");
    assert_eq!(server["metadata"]["x-tenant"], "builds");

    let action_span = named(&spans, "action");
    assert_eq!(action_span["parentSpanId"], server["spanId"]);
    let attributes = &action_span["attributes"];
    assert_eq!(attributes["rbe_runner.action.argv0"], "sh");
    assert_eq!(attributes["rbe_runner.action.exit_code"], 3);
    assert_eq!(attributes["rbe_runner.action.result"], "NonZeroExitCode");
    assert_eq!(attributes["rbe_runner.action.oom_verdict"], "None");
    assert!(
        attributes["rbe_runner.action.memory_peak_bytes"]
            .as_i64()
            .is_some_and(|bytes| bytes > 0),
        "{attributes:#}"
    );
    assert!(attributes["rbe_runner.action.wall_time_seconds"].as_f64() > Some(0.0));
    let action_id = attributes["rbe_runner.action.id"]
        .as_str()
        .expect("an action id")
        .to_owned();
    for phase in ["prepare", "spawn", "run", "measure", "release"] {
        let span = named(&spans, phase);
        assert_eq!(span["parentSpanId"], action_span["spanId"], "{phase}");
        assert!(span["startNanos"].as_u64() <= span["endNanos"].as_u64());
    }

    // The trace id is in the action's log line and its journal entry.
    let log = runner.log();
    assert!(
        log.iter()
            .any(|line| line.contains(&action_id) && line.contains(&trace)),
        "no log line names {action_id} with trace {trace}:\n{}",
        log.join("\n")
    );
    let journal = read(&journal.path().join("journal.jsonl"));
    assert!(
        journal.lines().any(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            event["actionFinished"]["actionId"] == action_id.as_str()
                && event["actionFinished"]["traceId"] == trace.as_str()
        }),
        "no journal line of {action_id} with trace {trace}"
    );
}

#[tokio::test]
async fn a_failed_call_has_an_error_status_and_a_cancelled_one_its_termination() {
    // Why it matters: operators open the red spans first; a program that
    // does not exist must show as the call's error, and an action stopped
    // because its call was dropped must say so, with the signal sent.
    let test = "a_failed_call_has_an_error_status_and_a_cancelled_one_its_termination";
    let Some(python) = test_python(test) else {
        return;
    };
    let mut receiver = Receiver::start(&python);
    let (runner, _journal) = traced_runner(&receiver.address(), parent_based_always());
    let action = runner.action();
    let request = action.request(vec!["/no/such/program".into()], vec![]);
    let trace = trace_id(2);
    let error = traced_run(&python, &runner, &request, &[traceparent(&trace, true)])
        .expect_err("Run fails");
    assert!(error.contains("INVALID_ARGUMENT"), "{error}");
    let spans = receiver.wait_for(&format!("the spans of trace {trace}"), |seen| {
        let spans = in_trace(seen, &trace);
        spans.iter().any(|span| span["name"] == "action")
            && spans
                .iter()
                .any(|span| span["name"] == "buildbarn.runner.Runner/Run")
    });
    let spans = in_trace(&spans, &trace);
    let server = named(&spans, "buildbarn.runner.Runner/Run");
    assert_eq!(server["statusCode"], 2, "STATUS_CODE_ERROR: {server:#}");
    assert_eq!(server["attributes"]["rpc.grpc.status_code"], 3);
    let action_span = named(&spans, "action");
    assert_eq!(action_span["statusCode"], 2);
    assert!(
        action_span["statusMessage"]
            .as_str()
            .unwrap()
            .contains("/no/such/program"),
        "{action_span:#}"
    );

    // A call dropped while its action runs: a new trace (no context), the
    // SIGTERM step as an event on the action's span.
    let action = runner.action();
    let ready = action.path.join("ready");
    let request = shell_request(
        &action,
        &format!(
            "trap 'exit 0' TERM; touch {}; while :; do sleep 0.1; done",
            ready.display()
        ),
    );
    runner.run_and_cancel_when(request, &ready).await;
    let spans = receiver.wait_for("the cancelled action's span", |seen| {
        seen.iter().any(|span| {
            span["name"] == "action"
                && span["attributes"]["rbe_runner.action.termination_reason"] == "Cancelled"
        })
    });
    let cancelled = spans
        .iter()
        .find(|span| span["attributes"]["rbe_runner.action.termination_reason"] == "Cancelled")
        .unwrap();
    assert_eq!(cancelled["events"][0], "SIGTERM sent", "{cancelled:#}");
    assert_eq!(cancelled["statusCode"], 2);
}

#[tokio::test]
async fn a_parent_based_sampler_drops_a_trace_its_caller_did_not_sample() {
    // Why it matters: bb_worker decides which builds are traced; a runner
    // that exported unsampled traces would flood the backend with
    // fragments no one asked for.
    let test = "a_parent_based_sampler_drops_a_trace_its_caller_did_not_sample";
    let Some(python) = test_python(test) else {
        return;
    };
    let mut receiver = Receiver::start(&python);
    let (runner, _journal) = traced_runner(&receiver.address(), parent_based_always());
    let unsampled = trace_id(3);
    let action = runner.action();
    traced_run(
        &python,
        &runner,
        &shell_request(&action, "exit 0"),
        &[traceparent(&unsampled, false)],
    )
    .expect("Run succeeds");
    // The fence: a sampled call after it.
    let sampled = trace_id(4);
    let action = runner.action();
    traced_run(
        &python,
        &runner,
        &shell_request(&action, "exit 0"),
        &[traceparent(&sampled, true)],
    )
    .expect("Run succeeds");
    receiver.wait_for_trace(&sampled);
    assert!(
        in_trace(&receiver.seen, &unsampled).is_empty(),
        "spans of the unsampled trace were exported: {:#?}",
        in_trace(&receiver.seen, &unsampled)
    );
    // The unsampled call's trace id still names the action in its log.
    assert!(runner.log().iter().any(|line| line.contains(&unsampled)));
}

#[tokio::test]
async fn b3_context_alone_joins_the_callers_trace() {
    // Why it matters: Buildbarn's propagator sends B3 too, and a caller
    // that sends only B3 must still get the runner's span in its trace.
    let test = "b3_context_alone_joins_the_callers_trace";
    let Some(python) = test_python(test) else {
        return;
    };
    let mut receiver = Receiver::start(&python);
    let (runner, _journal) = traced_runner(&receiver.address(), parent_based_always());
    let trace = trace_id(5);
    let action = runner.action();
    traced_run(
        &python,
        &runner,
        &shell_request(&action, "exit 0"),
        &[("b3", format!("{trace}-{CALLER_SPAN}-1"))],
    )
    .expect("Run succeeds");
    let spans = receiver.wait_for_trace(&trace);
    assert_eq!(
        named(&spans, "buildbarn.runner.Runner/Run")["parentSpanId"],
        CALLER_SPAN
    );
}

#[tokio::test]
async fn maximum_rate_samples_at_most_its_budget_per_epoch() {
    // Why it matters: maximumRate is what keeps a busy fleet's tracing
    // load bounded; its budget must hold across calls.
    let test = "maximum_rate_samples_at_most_its_budget_per_epoch";
    let Some(python) = test_python(test) else {
        return;
    };
    let mut receiver = Receiver::start(&python);
    // New traces at most once an hour; children follow their parent.
    let (runner, _journal) = traced_runner(
        &receiver.address(),
        json!({ "parentBased": { "noParent": { "maximumRate": {
            "samplesPerEpoch": 1, "epochDuration": "3600s" } } } }),
    );
    for _ in 0..3 {
        let action = runner.action();
        traced_run(&python, &runner, &shell_request(&action, "exit 0"), &[]).expect("Run succeeds");
    }
    // The fence: a call whose caller sampled it.
    let fence = trace_id(6);
    let action = runner.action();
    traced_run(
        &python,
        &runner,
        &shell_request(&action, "exit 0"),
        &[traceparent(&fence, true)],
    )
    .expect("Run succeeds");
    receiver.wait_for_trace(&fence);
    let mut traces: HashMap<String, usize> = HashMap::new();
    for span in &receiver.seen {
        if span["name"] == "buildbarn.runner.Runner/Run" && span["traceId"] != fence.as_str() {
            *traces
                .entry(span["traceId"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(traces.len(), 1, "one new trace per epoch, got {traces:?}");
}

/// The value of `series` on the runner's `/metrics`.
fn metric(address: &str, series: &str) -> Option<f64> {
    let (status, body) = http_get(address, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn actions_succeed_with_the_collector_down_and_the_dropped_spans_are_counted() {
    // Why it matters: tracing must never cost a build; a collector that is
    // down may only cost spans, and operators must see that it does.
    let test = "actions_succeed_with_the_collector_down_and_the_dropped_spans_are_counted";
    let Some(python) = test_python(test) else {
        return;
    };
    let mut receiver = Receiver::start(&python);
    let address = receiver.address();
    receiver.stop();
    let (runner, _journal) = traced_runner(&address, parent_based_always());
    let diagnostics = diagnostics_address(&runner);
    let export_failed = r#"rbe_runner_spans_dropped_total{reason="export_failed"}"#;
    let queue_full = r#"rbe_runner_spans_dropped_total{reason="queue_full"}"#;
    assert_eq!(metric(&diagnostics, export_failed), Some(0.0));
    assert_eq!(metric(&diagnostics, queue_full), Some(0.0));
    for n in 0..3 {
        let action = runner.action();
        let response = traced_run(
            &python,
            &runner,
            &shell_request(&action, "exit 0"),
            &[traceparent(&trace_id(10 + n), true)],
        )
        .expect("Run succeeds with the collector down");
        assert_eq!(response.exit_code, 0);
    }
    eventually("dropped spans counted", EXPORT_TIMEOUT, || {
        metric(&diagnostics, export_failed).is_some_and(|dropped| dropped > 0.0)
    })
    .await;
}

#[tokio::test]
async fn active_spans_lists_running_actions_without_tracing() {
    // Why it matters: bb-storage serves /active_spans whether or not
    // traces are exported; it is how an operator finds what a stuck
    // runner is doing, and under which of bb_worker's traces.
    let mut config = diagnostics_on_loopback();
    merge(
        &mut config,
        json!({ "global": { "diagnosticsHttpServer": { "enableActiveSpans": true } } }),
    );
    let runner = TestRunner::start(config);
    let diagnostics = diagnostics_address(&runner);
    let action = runner.action();
    let ready = action.path.join("ready");
    let request = shell_request(
        &action,
        &format!("touch {}; while :; do sleep 0.1; done", ready.display()),
    );
    let trace = trace_id(20);
    let mut client = runner.client().await;
    let mut call = tonic::Request::new(request);
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    let running = tokio::spawn(async move { client.run(call).await });
    eventually("the action runs", EXPORT_TIMEOUT, || ready.exists()).await;
    let (status, page) = http_get(&diagnostics, "/active_spans");
    assert_eq!(status, 200);
    assert!(page.contains(&trace), "{page}");
    assert!(page.contains(CALLER_SPAN), "{page}");
    assert!(page.contains("<td>sh</td>"), "{page}");
    running.abort();
    let _ = running.await;
    eventually("the action is no longer listed", EXPORT_TIMEOUT, || {
        !http_get(&diagnostics, "/active_spans").1.contains(&trace)
    })
    .await;
}
