//! The front door, checked: the README's runnable examples run verbatim in
//! a fresh copy of the repository, and the reference (README.md and
//! docs/) keeps every configuration key, metric and error code the runner
//! has, with links that lead somewhere.

#[path = "../common/mod.rs"]
mod common;
mod examples;
mod markdown;
mod pattern;
mod run;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::json;

use common::TestRunner;
use rbe_runner::fault::{Fault, RunnerError};

/// The repository this test was built from.
fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown file under docs/, with their paths
/// relative to the repository.
fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![PathBuf::from("README.md")];
    if let Ok(entries) = std::fs::read_dir(repository().join("docs")) {
        let mut docs: Vec<PathBuf> = entries
            .map(|entry| entry.expect("list docs/").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
            .map(|path| Path::new("docs").join(path.file_name().unwrap()))
            .collect();
        docs.sort();
        paths.extend(docs);
    }
    paths
        .into_iter()
        .map(|path| {
            let text = common::read(&repository().join(&path));
            (path, text)
        })
        .collect()
}

/// Every word written as inline code anywhere in the reference: the names
/// an operator can search for. `grpcServers[].listenPaths` gives
/// `grpcServers` and `listenPaths`.
fn documented_names() -> BTreeSet<String> {
    documents()
        .iter()
        .flat_map(|(_, text)| markdown::code_spans(&markdown::prose(text).unwrap()))
        .flat_map(|span| {
            span.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|word| !word.is_empty())
        .collect()
}

/// Why it matters: the README is the front door, and a command in it that
/// fails for a new user is the first thing they learn about us. Costs the
/// release build when it is not there yet (about 4.5 minutes on 2 cores).
#[test]
fn readme_examples_run_verbatim_in_a_fresh_copy() {
    let readme = common::read(&repository().join("README.md"));
    let examples = examples::examples(&markdown::pieces(&readme).unwrap()).unwrap();
    assert!(!examples.is_empty(), "README.md has no runnable block");
    let copy = tempfile::Builder::new()
        .prefix("readme-check-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    run::fresh_copy(repository(), copy.path()).unwrap();
    let reader = run::Reader {
        checkout: copy.path().to_path_buf(),
        target_dir: Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target/tmp is in the target directory")
            .to_path_buf(),
        is_root: nix::unistd::geteuid().is_root(),
    };
    let mut session = run::Session::new(reader);
    for example in &examples {
        eprintln!("[readme] block at line {}", example.line);
        if let Err(error) = session.run(example) {
            let _ = session.stop_quick_start();
            panic!("README.md {error}");
        }
    }
    if let Err(error) = session.stop_quick_start() {
        panic!("README.md {error}");
    }
}

/// Why it matters: a link from the front door into docs/ that leads
/// nowhere loses the reader exactly when they look for more.
#[test]
fn every_relative_link_and_anchor_resolves() {
    let documents = documents();
    let mut broken = Vec::new();
    for (path, text) in &documents {
        let prose = markdown::prose(text).unwrap();
        for target in markdown::link_targets(&prose) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let linked = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            let full = repository().join(&linked);
            if !full.exists() {
                broken.push(format!(
                    "{}: {target} (no file {})",
                    path.display(),
                    linked.display()
                ));
                continue;
            }
            if !anchor.is_empty() {
                let anchors = markdown::anchors(&common::read(&full)).unwrap();
                if !anchors.iter().any(|known| known == anchor) {
                    broken.push(format!(
                        "{}: {target} (no heading with that anchor)",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// A configuration that sets every field check-config can print.
fn configuration_with_every_field() -> serde_json::Value {
    json!({
        "buildDirectoryPath": "/worker/build",
        "grpcServers": [{
            "listenPaths": ["/worker/runner"],
            "listenAddresses": ["127.0.0.1:8991"],
            "authenticationPolicy": { "allow": {} },
            "stopGracefully": true,
            "maximumReceivedMessageSizeBytes": 8388608,
            "tls": {
                "serverKeyPair": { "files": {
                    "certificatePath": "/etc/runner/tls.crt",
                    "privateKeyPath": "/etc/runner/tls.key",
                    "refreshInterval": "3600s",
                } },
                "cipherSuites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
            },
            "keepaliveParameters": { "maxConnectionIdle": "300s", "time": "60s" },
            "initialWindowSizeBytes": 1048576,
            "initialConnWindowSizeBytes": 1048576,
            "healthCheckService": "runner",
        }],
        "cleanTemporaryDirectories": ["/tmp"],
        "global": {
            "setUmask": { "umask": 18 },
            "diagnosticsHttpServer": {
                "httpServers": [{ "listenAddresses": ["127.0.0.1:9980"], "authenticationPolicy": { "allow": {} } }],
                "enablePrometheus": true,
            },
        },
        "setTmpdirEnvironmentVariable": true,
        "chrootIntoInputRoot": true,
        "cleanProcessTable": true,
        "readinessCheckingPathnames": ["/worker/.mounted"],
        "runCommandsAs": { "userId": 65534, "groupId": 65534, "additionalGroupIds": [65533] },
        "symlinkTemporaryDirectories": [],
        "runCommandCleaner": ["/usr/local/bin/cleanup"],
        "terminationGracePeriod": "10s",
        "sampleCgroupResourceUsage": true,
        "actionCgroups": {
            "parentPath": "/rbe",
            "memoryMax": "4Gi",
            "memoryHigh": "3Gi",
            "memorySwapMax": "0",
            "memoryOomGroup": true,
            "cpuMax": "2",
            "pidsMax": 1024,
            "sharedLimitCulprit": "retry",
        },
        "listenPathMode": "0660",
        "events": {
            "replayBufferSize": 1024,
            "journalPath": "/var/log/rbe-runner/events.jsonl",
            "journalMaxBytes": "64Mi",
            "runnerName": "runner-0",
        },
        "logFormat": "json",
        "isolation": { "pid": true, "dev": "minimal" },
        "inputRootMounts": [
            { "mountpoint": "opt/toolchain", "source": "/opt/toolchain", "filesystemType": "bind" },
        ],
    })
}

/// The keys of check-config's output: `key:` at the start of a line, and
/// `key:` after `{` or `,` in a one-line object.
fn printed_keys(printed: &str) -> BTreeSet<String> {
    let is_key = |word: &str| {
        word.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && word.chars().all(|c| c.is_ascii_alphanumeric())
    };
    let mut keys = BTreeSet::new();
    for line in printed.lines() {
        let mut candidates = vec![line.trim_start()];
        candidates.extend(line.split(['{', ',']).skip(1).map(str::trim_start));
        for candidate in candidates {
            if let Some((word, _)) = candidate.split_once(':') {
                if is_key(word) {
                    keys.insert(word.to_string());
                }
            }
        }
    }
    keys
}

/// Why it matters: an operator reads check-config's output and looks each
/// key up; moving the reference into docs/ must not lose one.
#[test]
fn every_key_check_config_prints_is_documented() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runner.jsonnet");
    std::fs::write(&config, configuration_with_every_field().to_string()).unwrap();
    let output = std::process::Command::new(common::BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "check-config failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let keys = printed_keys(&printed);
    assert!(
        keys.contains("memoryMax") && keys.contains("journalPath"),
        "{printed}"
    );
    let documented = documented_names();
    let missing: Vec<_> = keys
        .iter()
        .filter(|key| !documented.contains(*key))
        .collect();
    assert!(
        missing.is_empty(),
        "check-config prints keys the reference does not name: {missing:?}\n{printed}"
    );
}

/// Why it matters: dashboards and alerts are written from the metrics
/// table; a metric the runner serves but the reference lacks is invisible.
#[test]
fn every_metric_served_is_documented() {
    let runner = TestRunner::start(common::diagnostics_on_loopback());
    let (status, exposition) = common::http_get(&common::diagnostics_address(&runner), "/metrics");
    assert_eq!(status, 200, "{exposition}");
    let families: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(
        families.contains("rbe_runner_actions_running"),
        "{exposition}"
    );
    let documented = documented_names();
    let missing: Vec<_> = families
        .iter()
        .filter(|name| !documented.contains(**name))
        .collect();
    assert!(
        missing.is_empty(),
        "/metrics serves families the reference does not name: {missing:?}"
    );
}

/// Every kind of runner error, by an exhaustive match: a new kind does not
/// compile until it is listed here, and so documented.
fn every_runner_error() -> Vec<RunnerError> {
    let errors = vec![
        RunnerError::InvalidArgument(String::new()),
        RunnerError::unavailable(String::new()),
        RunnerError::Internal(String::new()),
        RunnerError::DeadlineExceeded(String::new()),
        RunnerError::Cancelled(String::new()),
    ];
    for error in &errors {
        match error {
            RunnerError::InvalidArgument(_)
            | RunnerError::Unavailable { .. }
            | RunnerError::Internal(_)
            | RunnerError::DeadlineExceeded(_)
            | RunnerError::Cancelled(_) => {}
        }
    }
    errors
}

/// `InvalidArgument` → `INVALID_ARGUMENT`.
fn screaming_snake(code: tonic::Code) -> String {
    let mut name = String::new();
    for (index, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Why it matters: bb_worker and Bazel act on the code, and operators look
/// the code up in the error-code table; every code the runner answers with
/// needs its row, and every errno that makes a Run retryable must be named
/// in the `UNAVAILABLE` row.
#[test]
fn every_error_code_has_a_row_and_every_node_errno_is_named() {
    let rows: Vec<Vec<String>> = documents()
        .iter()
        .flat_map(|(_, text)| markdown::table_rows(&markdown::prose(text).unwrap()))
        .filter(|cells| cells.len() == 2)
        .collect();
    let row_of = |code: &str| {
        rows.iter()
            .find(|cells| cells[0] == format!("`{code}`"))
            .map(|cells| cells[1].clone())
    };
    for error in every_runner_error() {
        let code = screaming_snake(rbe_runner::server::status_from_error(error).code());
        assert!(
            row_of(&code).is_some(),
            "the error-code table has no row for `{code}`"
        );
    }
    let unavailable = row_of("UNAVAILABLE").unwrap();
    for errno in 1..200 {
        if Fault::of_host_errno(errno) == Fault::Node {
            let name = format!("{:?}", nix::errno::Errno::from_raw(errno));
            assert!(
                unavailable.contains(&format!("`{name}`")),
                "the UNAVAILABLE row does not name `{name}`"
            );
        }
    }
}

#[test]
fn printed_keys_are_read_from_lines_and_one_line_objects() {
    let keys = printed_keys("a: 1\n  [0]:\n  bB: x\nevents: { c: 1, dE: \"x:y\" }\n");
    let keys: Vec<_> = keys.into_iter().collect();
    assert_eq!(keys, vec!["a", "bB", "c", "dE", "events"]);
}
