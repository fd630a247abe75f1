//! The monitoring kit (deploy/monitoring/) against the real thing: its
//! rules pass `promtool check rules` and their unit tests; a real
//! Prometheus server (Debian's binary, extracted by
//! tests/tools/install-promtool, never installed as a service) scrapes a
//! real runner every second while known actions run, and every dashboard
//! expression, every recording rule and an alert caused on purpose are read
//! back through Prometheus's HTTP API. The kit's metric names are checked
//! against the reference table (docs/metrics.md) and a real `/metrics`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::test_cgroup::TestCgroup;
use common::{diagnostics_address, diagnostics_on_loopback, http_get, read, shell_request, skip};
use common::{merge, TestRunner};
use serde_json::{json, Value};

/// The job the kit's rules select, as its scrape job and PodMonitor set it.
const JOB: &str = "rbe-runner";
/// How long a test waits for Prometheus to start, scrape or evaluate
/// (it does both every second).
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);
/// The DNS name in the certificate of the runner's TLS listener.
const TLS_NAME: &str = "runner.monitoring.test";
/// The prefixes of the families the runner serves; label names never
/// start with them.
const FAMILY_PREFIXES: [&str; 4] = ["rbe_runner_", "grpc_server_", "process_", "buildbarn_"];
/// Families a runner serves only when its delegated cgroup has cgroup v2's
/// memory controller. Hosts with a hybrid hierarchy (memory on cgroup v1)
/// cannot show them; tests/vm.rs scrapes them from a runner on a cgroup v2
/// kernel, so on such a host they count as served when tests/vm.rs still
/// asserts them.
const MEMORY_CONTROLLER_FAMILIES: [&str; 2] = [
    "rbe_runner_cgroup_memory_current_bytes",
    "rbe_runner_cgroup_memory_max_bytes",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules_path() -> PathBuf {
    repo().join("deploy/monitoring/prometheus/rbe-runner.rules.yml")
}

fn rules_test_path() -> PathBuf {
    repo().join("deploy/monitoring/prometheus/rbe-runner.rules.test.yml")
}

fn dashboard() -> Value {
    let path = repo().join("deploy/monitoring/grafana/rbe-runner.json");
    serde_json::from_str(&read(&path)).expect("the dashboard is JSON")
}

/// `target/tools/NAME` (promtool, prometheus), or `None` with `test`
/// skipped.
fn tool(test: &str, name: &str) -> Option<PathBuf> {
    let path = repo().join("target/tools").join(name);
    if path.exists() {
        return Some(path);
    }
    skip(
        test,
        &format!("no target/tools/{name} (run tests/tools/install-promtool)"),
    );
    None
}

/// Runs `tool args`, asserting success; returns its output.
fn run_tool(tool: &Path, args: &[&Path]) -> String {
    let output = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{text}",
        tool.display()
    );
    text
}

// ---------------------------------------------------------------------------
// The kit's text: alerts, expressions, metric names

/// The names of the alerting rules, in file order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(|name| name.trim().to_string())
        .collect()
}

/// Every `expr:` of a rule file, single-line or a block.
fn rule_expressions(rules: &str) -> Vec<String> {
    let mut expressions = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut expression = rest.trim().trim_start_matches('|').to_string();
        while let Some(next) = lines.peek() {
            let next_indent = next.len() - next.trim_start().len();
            if next.trim().is_empty() || next_indent <= indent {
                break;
            }
            expression.push('\n');
            expression.push_str(next.trim());
            lines.next();
        }
        expressions.push(expression);
    }
    expressions
}

/// Every (panel title, target expression) of the dashboard.
fn panel_expressions(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|panel| panel["type"] != "row")
        .flat_map(|panel| {
            let title = panel["title"].as_str().expect("a title").to_string();
            panel["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .map(move |target| {
                    let expr = target["expr"].as_str().expect("an expr").to_string();
                    (title.clone(), expr)
                })
        })
        .collect()
}

/// The metric names a PromQL expression selects: identifiers with one of
/// the runner's family prefixes outside string literals. Recording rules'
/// names hold colons and are not counted.
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_string = false;
    let mut token = String::new();
    for c in expression.chars().chain(std::iter::once(' ')) {
        if in_string {
            in_string = c != '"';
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
            continue;
        }
        if !token.contains(':') && FAMILY_PREFIXES.iter().any(|p| token.starts_with(p)) {
            names.insert(token.clone());
        }
        token.clear();
        in_string = c == '"';
    }
    names
}

/// The family a sample name belongs to: histograms' `_bucket`, `_sum` and
/// `_count` series belong to the histogram.
fn family_of(name: &str, families: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families.contains(base) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// Every metric family named in the first column of the metrics table of
/// the reference (docs/metrics.md, linked from the README).
fn documented_families() -> BTreeSet<String> {
    let reference = read(&repo().join("docs/metrics.md"));
    let table = reference
        .split_once("\n## Metrics\n")
        .expect("docs/metrics.md has a Metrics section")
        .1;
    let mut families = BTreeSet::new();
    for row in table.lines().filter(|line| line.starts_with("| `")) {
        let first_cell = row[1..].split(" | ").next().unwrap_or_default();
        for (index, span) in first_cell.split('`').enumerate() {
            if index % 2 == 1 {
                let name = span.split('{').next().unwrap_or_default().trim();
                families.insert(name.to_string());
            }
        }
    }
    families
}

/// The families of a text-format exposition (its `# TYPE` lines).
fn served_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------------------
// A runner with every family the kit watches

/// A runner serving everything the kit watches: per-action cgroups with
/// sampling (OOM verdicts, memory peaks, stalls, the cgroup budget), a TLS
/// listener (certificate dates), a readiness path the test can remove,
/// and metrics on a loopback port.
struct KitRunner {
    // Dropped first: the runner leaves the cgroup before it is removed.
    runner: TestRunner,
    _cgroup: TestCgroup,
    _certificate: tempfile::TempDir,
    _readiness: tempfile::TempDir,
    readiness_path: PathBuf,
    diagnostics: String,
    /// Whether the delegated cgroup has cgroup v2's memory controller, so
    /// that the budget families are served and actions are sampled
    /// (`sampleCgroupResourceUsage` needs it; without it the OOM and
    /// memory-peak families are still served, at their startup 0).
    memory_controller: bool,
}

impl KitRunner {
    fn start(test: &str) -> Option<KitRunner> {
        let found = Command::new("openssl").arg("version").output();
        if !found.is_ok_and(|output| output.status.success()) {
            skip(test, "the openssl command is not installed");
            return None;
        }
        let cgroup = TestCgroup::create(test)?;
        let memory_controller = read(&cgroup.path.join("cgroup.controllers"))
            .split_whitespace()
            .any(|controller| controller == "memory");
        if memory_controller {
            // A limit, so that memory.max is a number and the budget's
            // share can be computed.
            std::fs::write(cgroup.path.join("memory.max"), (4u64 << 30).to_string())
                .expect("set the test cgroup's memory.max");
        }
        let certificate = self_signed_certificate();
        let readiness = tempfile::tempdir().unwrap();
        let readiness_path = readiness.path().join("ready");
        std::fs::create_dir(&readiness_path).unwrap();
        let mut config = diagnostics_on_loopback();
        merge(
            &mut config,
            json!({
                "actionCgroups": {},
                "sampleCgroupResourceUsage": memory_controller,
                "readinessCheckingPathnames": [readiness_path],
                "grpcServers": [{}, {
                    "listenAddresses": ["127.0.0.1:0"],
                    "authenticationPolicy": { "allow": {} },
                    "tls": { "serverKeyPair": { "inline": {
                        "certificate": read(&certificate.path().join("server.pem")),
                        "privateKey": read(&certificate.path().join("server.key")),
                    } } },
                }],
            }),
        );
        let runner = cgroup.start_runner_with(config);
        let diagnostics = diagnostics_address(&runner);
        Some(KitRunner {
            runner,
            _cgroup: cgroup,
            _certificate: certificate,
            _readiness: readiness,
            readiness_path,
            diagnostics,
            memory_controller,
        })
    }
}

/// A self-signed ECDSA certificate for [`TLS_NAME`], valid 30 days, as
/// `server.pem` and `server.key` in a temporary directory.
fn self_signed_certificate() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .args(["-keyout", "server.key", "-out", "server.pem"])
        .args(["-subj", &format!("/CN={TLS_NAME}")])
        .args(["-addext", &format!("subjectAltName=DNS:{TLS_NAME}")])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    dir
}

// ---------------------------------------------------------------------------
// A real Prometheus server

/// One sample of an instant vector.
#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// Debian's `prometheus` server, started on a temporary storage directory
/// and a free loopback port, scraping one runner and evaluating the kit's
/// rules every second; killed on drop.
struct Prometheus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(binary: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        // JSON is YAML.
        let contents = json!({
            "global": { "scrape_interval": "1s", "evaluation_interval": "1s" },
            "rule_files": [rules_path()],
            "scrape_configs": [{
                "job_name": JOB,
                "static_configs": [{ "targets": [target] }],
            }],
        });
        std::fs::write(&config, contents.to_string()).unwrap();
        // Bound and released at once: the port is free unless another
        // process takes it in between, which would fail the start loudly.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus {
            child,
            address,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + PROMETHEUS_TIMEOUT;
        while get(&prometheus.address, "/-/ready").map(|(status, _)| status) != Some(200) {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited at startup: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus was not ready within {PROMETHEUS_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        prometheus
    }

    /// `GET /api/v1/PATH`: the `data` of a success, or the error.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = get(&self.address, &format!("/api/v1/{path}"))
            .ok_or_else(|| "cannot connect to prometheus".to_string())?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|err| format!("HTTP {status}, not JSON ({err}): {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("HTTP {status}: {answer}"));
        }
        Ok(answer["data"].clone())
    }

    /// An instant query now: its samples, or Prometheus's error.
    fn query(&self, expression: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("query?query={}", url_encode(expression)))?;
        if data["resultType"] != "vector" {
            return Err(format!("not an instant vector: {data}"));
        }
        Ok(data["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|sample| Sample {
                labels: serde_json::from_value(sample["metric"].clone()).expect("labels"),
                value: sample["value"][1]
                    .as_str()
                    .and_then(|value| value.parse().ok())
                    .expect("a value"),
            })
            .collect())
    }

    /// Polls `expression` (bounded) until its samples satisfy `condition`;
    /// returns them.
    async fn wait_for(
        &self,
        what: &str,
        expression: &str,
        condition: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = tokio::time::Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            let samples = self.query(expression);
            match &samples {
                Ok(samples) if condition(samples) => return samples.clone(),
                _ if tokio::time::Instant::now() >= deadline => panic!(
                    "timed out after {PROMETHEUS_TIMEOUT:?} waiting for {what}: {expression} \
                     returned {samples:?}"
                ),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.0 (so the answer is not chunked): the status and
/// body, or `None` when nothing listens yet.
fn get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A dashboard expression as Grafana sends it: its variables replaced by
/// this job, every instance, and windows that cover the test.
fn substitute_variables(expression: &str) -> String {
    expression
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$job", JOB)
        .replace("$instance", ".+")
}

fn has(samples: &[Sample], labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| labels.iter().all(|(k, v)| sample.label(k) == *v))
        .map(|sample| sample.value)
}

// ---------------------------------------------------------------------------
// The rules alone

/// Why it matters: Prometheus refuses a whole rule file for one bad rule,
/// so an error anywhere would silence every alert.
#[test]
fn rules_pass_promtool_check_rules() {
    let Some(promtool) = tool("rules_pass_promtool_check_rules", "promtool") else {
        return;
    };
    let output = run_tool(
        &promtool,
        &[Path::new("check"), Path::new("rules"), &rules_path()],
    );
    assert!(output.contains("SUCCESS"), "{output}");
}

/// Why it matters: an alert never seen firing on known input may never
/// fire; one without a runbook line leaves the person paged guessing.
#[test]
fn every_alert_has_a_runbook_and_unit_tests_that_pass() {
    let test = "every_alert_has_a_runbook_and_unit_tests_that_pass";
    let rules = read(&rules_path());
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 12, "{alerts:?}");
    for (alert, block) in alerts.iter().zip(rules.split("- alert: ").skip(1)) {
        assert!(
            block.contains("\n          runbook: \""),
            "alert {alert} has no runbook annotation"
        );
    }
    let unit_tests = read(&rules_test_path());
    let untested: Vec<_> = alerts
        .iter()
        .filter(|alert| !unit_tests.contains(&format!("alertname: {alert}\n")))
        .collect();
    assert!(
        untested.is_empty(),
        "alerts without a unit test: {untested:?}"
    );

    let Some(promtool) = tool(test, "promtool") else {
        return;
    };
    let output = run_tool(
        &promtool,
        &[Path::new("test"), Path::new("rules"), &rules_test_path()],
    );
    assert!(output.contains("SUCCESS"), "{output}");
}

// ---------------------------------------------------------------------------
// Names

/// Why it matters: a documented metric that no panel or rule shows is not
/// watched; a name in the kit that the runner does not serve is a panel
/// that stays empty or an alert that can never fire.
#[test]
fn every_documented_metric_is_in_the_kit_and_every_kit_metric_is_served() {
    let test = "every_documented_metric_is_in_the_kit_and_every_kit_metric_is_served";
    let mut in_kit: BTreeSet<String> = rule_expressions(&read(&rules_path()))
        .iter()
        .flat_map(|expression| metric_names(expression))
        .collect();
    in_kit.extend(
        panel_expressions(&dashboard())
            .iter()
            .flat_map(|(_, expression)| metric_names(expression)),
    );

    let documented = documented_families();
    assert!(
        documented.contains("rbe_runner_actions_running"),
        "{documented:?}"
    );
    let unwatched: Vec<_> = documented
        .iter()
        .filter(|family| !in_kit.iter().any(|name| name.starts_with(*family)))
        .collect();
    assert!(
        unwatched.is_empty(),
        "documented metrics no panel or rule uses: {unwatched:?}"
    );

    let Some(kit_runner) = KitRunner::start(test) else {
        return;
    };
    let (status, exposition) = http_get(&kit_runner.diagnostics, "/metrics");
    assert_eq!(status, 200, "{exposition}");
    let mut served = served_families(&exposition);
    if !kit_runner.memory_controller {
        let vm_tests = read(&repo().join("tests/vm.rs"));
        for family in MEMORY_CONTROLLER_FAMILIES {
            assert!(
                vm_tests.contains(&format!("value(\"{family}\")")),
                "{family} is not served on this host (no memory controller on cgroup v2), \
                 and tests/vm.rs no longer asserts it on a cgroup v2 kernel"
            );
            served.insert(family.to_string());
        }
    }
    let not_served: Vec<_> = in_kit
        .iter()
        .map(|name| family_of(name, &served))
        .filter(|family| !served.contains(family))
        .collect();
    assert!(
        not_served.is_empty(),
        "the kit uses metrics a real runner does not serve: {not_served:?}\n{exposition}"
    );
}

// ---------------------------------------------------------------------------
// End to end

/// Why it matters: the kit is only as good as what Prometheus makes of it
/// on a real runner: an expression that errors, a recording rule that
/// computes something else, or an alert that does not fire when the
/// runner stops taking work would each be found by an operator during an
/// incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scraping_a_real_runner_evaluates_the_dashboard_rules_and_alerts() {
    let test = "prometheus_scraping_a_real_runner_evaluates_the_dashboard_rules_and_alerts";
    let Some(binary) = tool(test, "prometheus") else {
        return;
    };
    let Some(kit_runner) = KitRunner::start(test) else {
        return;
    };
    let runner = &kit_runner.runner;
    let prometheus = Prometheus::start(&binary, &kit_runner.diagnostics).await;
    // Every counter's first sample is its startup 0, so rates over the
    // test's few minutes are exact ratios of the counts.
    prometheus
        .wait_for(
            "the first scrape of the runner",
            &format!("up{{job=\"{JOB}\"}} == 1 and on (instance) rbe_runner_build_info"),
            |samples| samples.len() == 1,
        )
        .await;

    // Known actions: three succeed, one exits 3, and one is held running
    // until Prometheus has seen it.
    for _ in 0..3 {
        let (_, response) = runner.run_shell("exit 0").await;
        assert_eq!(response.expect("Run").exit_code, 0);
    }
    let (_, response) = runner.run_shell("exit 3").await;
    assert_eq!(response.expect("Run").exit_code, 3);
    let release = runner.dir.path().join("release");
    let action = runner.action();
    let request = shell_request(
        &action,
        &format!("until [ -e {} ]; do sleep 0.01; done", release.display()),
    );
    let mut client = runner.client().await;
    let held = tokio::spawn(async move { client.run(request).await });
    prometheus
        .wait_for(
            "the held action counted as running",
            "job:rbe_runner_actions_running:sum",
            |samples| samples.len() == 1 && samples[0].value == 1.0,
        )
        .await;
    std::fs::write(&release, "").unwrap();
    let response = held.await.unwrap().expect("Run").into_inner();
    assert_eq!(response.exit_code, 0);

    // Recording rules, once the last action is scraped and evaluated.
    let finished = "job_result_grpc_code:rbe_runner_actions_finished:rate5m";
    prometheus
        .wait_for(
            "four successes for one non-zero exit in the recorded rates",
            &format!(
                "{finished}{{result=\"Success\",grpc_code=\"OK\"}} \
                 / on (job) {finished}{{result=\"NonZeroExitCode\",grpc_code=\"OK\"}}"
            ),
            |samples| samples.len() == 1 && (samples[0].value - 4.0).abs() < 1e-9,
        )
        .await;
    let rates = prometheus.query(finished).unwrap();
    for sample in &rates {
        let expected_nonzero = sample.label("grpc_code") == "OK"
            && ["Success", "NonZeroExitCode"].contains(&sample.label("result"));
        assert_eq!(sample.value > 0.0, expected_nonzero, "{sample:?}");
    }
    prometheus
        .wait_for(
            "no action running after the held one finished",
            "job:rbe_runner_actions_running:sum",
            |samples| samples.len() == 1 && samples[0].value == 0.0,
        )
        .await;
    let oom_kills = prometheus
        .query("job_verdict:rbe_runner_action_oom_kills:increase1h")
        .unwrap();
    let verdicts: BTreeSet<_> = oom_kills.iter().map(|s| s.label("verdict")).collect();
    assert_eq!(
        verdicts,
        BTreeSet::from(["NotOwnLimit", "OwnLimit", "SharedLimit"]),
        "{oom_kills:?}"
    );
    assert!(oom_kills.iter().all(|s| s.value == 0.0), "{oom_kills:?}");
    // No Run was answered UNAVAILABLE (promtool's unit tests cover a
    // share above 0).
    let unavailable = prometheus
        .query("instance:rbe_runner_run_unavailable:ratio_rate5m")
        .unwrap();
    assert!(
        unavailable.len() == 1 && unavailable[0].value == 0.0,
        "{unavailable:?}"
    );
    let budget = prometheus
        .query("instance:rbe_runner_cgroup_memory:ratio")
        .unwrap();
    if kit_runner.memory_controller {
        assert!(
            budget.len() == 1 && budget[0].value > 0.0 && budget[0].value < 1.0,
            "{budget:?}"
        );
    } else {
        assert!(budget.is_empty(), "{budget:?}");
    }

    check_dashboard(&prometheus, kit_runner.memory_controller);

    // Every rule evaluated on real data without an error, and every alert
    // carries its runbook as loaded.
    let groups = prometheus.api("rules").expect("rules");
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 19, "{groups}");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        if rule["type"] == "alerting" {
            assert!(rule["annotations"]["runbook"].as_str().is_some(), "{rule}");
        }
    }

    // Not ready on purpose: the readiness path is removed. The next check
    // (here /-/ready, as the kubelet's probe; bb_worker's CheckReadiness
    // alike) fails, so the runner refuses work and RbeRunnerNotReady is
    // pending (it fires after 5 minutes). A Run that then exits non-zero
    // is answered UNAVAILABLE (the host's fault, retried elsewhere): one
    // Run in six.
    std::fs::remove_dir(&kit_runner.readiness_path).unwrap();
    let (status, reason) = http_get(&kit_runner.diagnostics, "/-/ready");
    assert_eq!(status, 503, "{reason}");
    let (_, refused) = runner.run_shell("exit 1").await;
    assert_eq!(
        refused
            .expect_err("a failed Run without the readiness path")
            .code(),
        tonic::Code::Unavailable
    );
    let pending = prometheus
        .wait_for(
            "RbeRunnerNotReady pending",
            "ALERTS{alertname=\"RbeRunnerNotReady\"}",
            |samples| !samples.is_empty(),
        )
        .await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].label("alertstate"), "pending", "{pending:?}");
    assert_eq!(pending[0].label("instance"), kit_runner.diagnostics);
    assert_eq!(pending[0].label("severity"), "warning");
    prometheus
        .wait_for(
            "one Run in six answered UNAVAILABLE",
            "instance:rbe_runner_run_unavailable:ratio_rate5m",
            |samples| samples.len() == 1 && (samples[0].value - 1.0 / 6.0).abs() < 1e-9,
        )
        .await;
    let alerts = prometheus.api("alerts").expect("alerts");
    let not_ready = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|alert| alert["labels"]["alertname"] == "RbeRunnerNotReady")
        .unwrap_or_else(|| panic!("{alerts}"));
    assert_eq!(not_ready["state"], "pending", "{not_ready}");
    assert!(
        not_ready["annotations"]["runbook"]
            .as_str()
            .is_some_and(|runbook| runbook.contains("/-/ready")),
        "{not_ready}"
    );
    // One Run in six UNAVAILABLE is over the 10% of
    // RbeRunnerRetryableFailuresHigh, pending too (once its group has
    // evaluated the recorded share); nothing else is wrong.
    let all = prometheus
        .wait_for(
            "RbeRunnerRetryableFailuresHigh pending",
            "ALERTS",
            |alerts| {
                alerts
                    .iter()
                    .any(|alert| alert.label("alertname") == "RbeRunnerRetryableFailuresHigh")
            },
        )
        .await;
    let states: BTreeSet<_> = all
        .iter()
        .map(|alert| (alert.label("alertname"), alert.label("alertstate")))
        .collect();
    assert_eq!(
        states,
        BTreeSet::from([
            ("RbeRunnerNotReady", "pending"),
            ("RbeRunnerRetryableFailuresHigh", "pending"),
        ]),
        "{all:?}"
    );
}

/// Every target of every panel, its variables substituted, evaluates
/// without error and returns the series that panel should show for the
/// actions the end-to-end test ran.
fn check_dashboard(prometheus: &Prometheus, memory_controller: bool) {
    let dashboard = dashboard();
    let expressions = panel_expressions(&dashboard);
    assert!(expressions.len() >= 30, "{expressions:?}");
    let mut by_title: BTreeMap<String, Vec<Vec<Sample>>> = BTreeMap::new();
    for (title, expression) in &expressions {
        let query = substitute_variables(expression);
        assert!(!query.contains('$'), "{title}: unsubstituted {query}");
        let samples = prometheus
            .query(&query)
            .unwrap_or_else(|err| panic!("panel {title:?}: {query} fails: {err}"));
        let memory_panel = title.starts_with("Memory budget");
        if memory_panel && !memory_controller {
            assert!(samples.is_empty(), "{title}: {samples:?}");
        } else {
            assert!(
                !samples.is_empty(),
                "panel {title:?}: {query} returns nothing"
            );
        }
        by_title.entry(title.clone()).or_default().push(samples);
    }
    let panel = |title: &str| {
        by_title
            .get(title)
            .unwrap_or_else(|| panic!("no panel {title:?}"))
    };

    let finished = &panel("Actions finished by result and code")[0];
    for result in ["Success", "NonZeroExitCode"] {
        let rate = has(finished, &[("result", result), ("grpc_code", "OK")]);
        assert!(
            rate.is_some_and(|rate| rate > 0.0),
            "{result}: {finished:?}"
        );
    }
    let peak = &panel("Running actions and their peak")[1];
    assert_eq!(peak.len(), 1, "{peak:?}");
    assert_eq!(peak[0].value, 1.0, "the held action: {peak:?}");
    let oom = &panel("OOM kills by verdict")[0];
    let verdicts: BTreeSet<_> = oom.iter().map(|s| s.label("verdict")).collect();
    assert_eq!(
        verdicts,
        BTreeSet::from(["NotOwnLimit", "OwnLimit", "SharedLimit"])
    );
    let expiry = &panel("TLS certificates: time to expiry")[0];
    assert_eq!(expiry.len(), 1, "{expiry:?}");
    assert_eq!(expiry[0].label("dns_name"), TLS_NAME);
    let days = expiry[0].value / 86400.0;
    assert!((29.0..=30.0).contains(&days), "{days} days");
    let versions = &panel("Runners by version")[0];
    assert_eq!(
        has(versions, &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0),
        "{versions:?}"
    );
    let handled = &panel("gRPC calls handled by method and code")[0];
    let run_rate = has(handled, &[("grpc_method", "Run"), ("grpc_code", "OK")]);
    assert!(run_rate.is_some_and(|rate| rate > 0.0), "{handled:?}");
    let memory_peak = &panel("Action memory peak")[0];
    assert!(
        memory_peak
            .iter()
            .any(|sample| sample.label("le") == "+Inf"),
        "{memory_peak:?}"
    );
}
