//! `rbe-runner report` end to end: known actions run through the real
//! binary with a journal give the counts and maxima that were run; a
//! synthetic journal with a budget and OOM kills gives an HTML page with
//! its figures, the CSP and no schemed URL; and headless Chromium renders
//! that page into something visible.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

fn run_report(args: &[&str]) -> Output {
    let output = Command::new(runner_under_test())
        .arg("report")
        .args(args)
        .output()
        .expect("run rbe-runner report");
    assert!(
        output.status.success(),
        "report {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn report_json(journal: &Path) -> Value {
    let output = run_report(&["--json", journal.to_str().unwrap()]);
    serde_json::from_slice(&output.stdout).expect("report --json prints JSON")
}

fn group<'a>(report: &'a Value, program: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|group| group["program"] == program)
        .unwrap_or_else(|| panic!("no group {program} in {report:#}"))
}

const MIB: f64 = 1024.0 * 1024.0;

// Multi-threaded: the runner's graceful stop waits for the client's idle
// connections to close, which needs this runtime to run while `stop`
// blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_actions_run_through_the_runner_give_their_counts_and_maxima() {
    // Why it matters: the report is only useful if it says what happened.
    let journal_dir = tempfile::tempdir().unwrap();
    let journal = journal_dir.path().join("events.jsonl");
    let mut runner = TestRunner::start(json!({
        "events": { "journalPath": journal, "runnerName": "report-test" },
    }));
    for script in [
        "exit 0",
        "exit 0",
        "exit 3",
        "kill -KILL $$",
        "sleep 1.2",
        // Touches 48 MiB, so the largest process's RSS is at least that.
        "python3 -c 'b = b\"x\" * (48 << 20)'",
    ] {
        let (_, result) = runner.run_shell(script).await;
        result.expect("a response");
    }
    let action = runner.action();
    let _ = runner
        .client()
        .await
        .run(action.request(vec!["no-such-program-xyz".into()], vec![]))
        .await;
    // Stopping flushes the journal.
    assert!(runner.stop().success());

    let report = report_json(&journal);
    let summary = &report["summary"];
    assert_eq!(summary["actions"], 7);
    assert_eq!(summary["runners"], 1);
    assert_eq!(
        summary["results"],
        json!({"Success": 4, "NonZeroExitCode": 1, "Signal": 1, "Failure": 1})
    );
    assert_eq!(summary["failures"], json!({"InvalidArgument": 1}));
    assert_eq!(summary["oomKills"], json!({}));
    assert_eq!(summary["cleanupFailures"], 0);
    assert_eq!(
        report["skipped"],
        json!({"truncated": 0, "corrupt": 0, "unknownKind": 0, "eventsLost": 0, "lostEvents": 0})
    );

    assert_eq!(group(&report, "exit")["count"], 3);
    assert_eq!(group(&report, "(not started)")["count"], 1);
    let sleep = group(&report, "sleep");
    let sleep_max = sleep["wallTimeSeconds"]["max"].as_f64().unwrap();
    assert!(
        (1.2..30.0).contains(&sleep_max),
        "sleep 1.2 took {sleep_max} s"
    );
    assert_eq!(report["topWall"][0]["arguments"][2], "sleep 1.2");

    let python = group(&report, "python3");
    let peak = python["memoryPeakBytes"]["max"].as_f64().unwrap();
    assert!(
        (48.0 * MIB..48.0 * MIB + 200.0 * MIB).contains(&peak),
        "python3 held 48 MiB; the report says {peak} bytes"
    );
    assert_eq!(report["topMemory"][0]["program"], "python3");
    assert_eq!(report["sizing"]["memoryMaxP100Bytes"].as_f64(), Some(peak));
    // Run one after the other, the concurrent peak is the largest action.
    assert_eq!(
        report["sizing"]["peakConcurrentMemoryBytes"].as_f64(),
        Some(peak)
    );
    assert_eq!(report["sizing"]["runners"][0]["name"], "report-test");
    assert_eq!(report["sizing"]["runners"][0]["peakConcurrency"], 1);

    // The tables for a terminal fit 100 columns.
    let text = run_report(&[journal.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("Sizing"), "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "too wide: {line:?}");
    }
}

/// Seconds since the epoch where the synthetic journal starts.
const T0: f64 = 1_767_225_600.0;

fn time(offset: f64) -> String {
    let whole = (T0 + offset).floor();
    prost_types::Timestamp {
        seconds: whole as i64,
        nanos: ((T0 + offset - whole) * 1e9) as i32,
    }
    .to_string()
}

/// A journal of one runner with a 1 GiB budget: 40 compiles of 100–490
/// MiB overlapping in pairs, and two OOM kills; then a rotated `.1`, a
/// corrupt line and a line cut off at the end.
fn synthetic_journal(dir: &Path) -> PathBuf {
    let journal = dir.join("events.jsonl");
    let mut lines = vec![
        json!({"sequence": "1", "time": time(0.0), "runnerInstance": "0badcafe",
        "runnerState": {"acceptingWork": true, "reason": "startup",
                        "memoryBudgetBytes": (1i64 << 30).to_string(), "runnerName": "pod-7"}}),
    ];
    for index in 0..40 {
        let id = format!("0badcafe-{index}");
        let start = f64::from(index) * 5.0;
        let memory = (100 + 10 * i64::from(index)) << 20;
        let verdict = match index {
            17 => "OOM_VERDICT_SHARED_LIMIT",
            33 => "OOM_VERDICT_OWN_LIMIT",
            _ => "OOM_VERDICT_NONE",
        };
        let program = if index % 2 == 0 {
            "/usr/bin/clang"
        } else {
            "javac"
        };
        lines.push(json!({"sequence": "2", "time": time(start), "runnerInstance": "0badcafe",
            "actionStarted": {"actionId": id, "arguments": [program, "-c", format!("file{index}.c")],
                              "inputRootDirectory": "", "pid": "9", "cgroup": ""}}));
        lines.push(json!({"sequence": "3", "time": time(start + 8.0), "runnerInstance": "0badcafe",
            "actionFinished": {"actionId": id, "exitCode": if verdict == "OOM_VERDICT_NONE" { "0" } else { "-1" },
                "status": {"code": 0, "message": "", "details": []},
                "resourceUsage": [
                    {"@type": "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage",
                     "userTime": "6s", "systemTime": "1s", "maximumResidentSetSize": "1000",
                     "terminationSignal": ""},
                    {"@type": "type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage",
                     "memoryPeak": memory.to_string(), "cpuPressureSomeTotal": "0.8s",
                     "memoryPressureSomeTotal": "0.2s", "ioPressureSomeTotal": "0.4s"}],
                "wallTime": "8s", "oomVerdict": verdict, "terminationReason": "TERMINATION_REASON_NONE"}}));
    }
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    let (older, newer) = text.split_at(41);
    std::fs::write(dir.join("events.jsonl.1"), older.join("\n") + "\n").unwrap();
    let mut file = std::fs::File::create(&journal).unwrap();
    writeln!(file, "{}", newer.join("\n")).unwrap();
    writeln!(file, "{{this is not json").unwrap();
    write!(file, "{{\"sequence\":\"99\",\"time\":\"2026-").unwrap();
    journal
}

#[test]
fn a_rotated_journal_with_bad_lines_gives_the_sizing_and_counts_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = synthetic_journal(dir.path());
    let report = report_json(&journal);
    assert_eq!(report["summary"]["actions"], 40);
    assert_eq!(
        report["summary"]["oomKills"],
        json!({"OwnLimit": 1, "SharedLimit": 1})
    );
    assert_eq!(report["skipped"]["corrupt"], 1);
    assert_eq!(report["skipped"]["truncated"], 1);
    // Peaks 100, 110, …, 490 MiB: the 40th (p100) and the ceil(39.6) =
    // 40th (p99) are 490 MiB.
    let mib = |n: i64| json!(n << 20);
    assert_eq!(report["sizing"]["memoryMaxP100Bytes"], mib(490));
    assert_eq!(report["sizing"]["memoryMaxP99Bytes"], mib(490));
    // Each action overlaps the next by 3 s: the largest pair is 480 + 490.
    assert_eq!(report["sizing"]["peakConcurrentMemoryBytes"], mib(970));
    assert_eq!(
        report["sizing"]["runners"][0]["memoryBudgetBytes"],
        mib(1024)
    );
    // 7 CPU seconds in 8 s, two at once.
    assert_eq!(report["sizing"]["peakConcurrentCpuCores"], json!(1.75));
    assert_eq!(group(&report, "clang")["count"], 20);
    let stall = &group(&report, "javac")["stallShare"];
    for (resource, share) in [("cpu", 0.1), ("memory", 0.025), ("io", 0.05)] {
        let reported = stall[resource].as_f64().unwrap();
        assert!((reported - share).abs() < 1e-9, "{resource}: {reported}");
    }
}

/// Whether `html` loads anything by a URL with a scheme (`https:`,
/// `data:` aside from none being used, `//host`).
fn schemed_urls(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for marker in ["src=", "href=", "url("] {
        for (at, _) in lower.match_indices(marker) {
            let value: String = lower[at + marker.len()..]
                .trim_start_matches(['"', '\'', ' '])
                .chars()
                .take_while(|c| !matches!(c, '"' | '\'' | ')' | ' ' | '>'))
                .collect();
            let scheme = value.split_once(':').is_some_and(|(scheme, _)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
            });
            if scheme || value.starts_with("//") {
                found.push(value);
            }
        }
    }
    found
}

fn render_html(dir: &Path) -> (PathBuf, String) {
    let journal = synthetic_journal(dir);
    let page = dir.join("report.html");
    run_report(&["--html", page.to_str().unwrap(), journal.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    (page, html)
}

#[test]
fn the_html_page_has_its_figures_the_csp_and_no_schemed_url() {
    let dir = tempfile::tempdir().unwrap();
    let (_, html) = render_html(dir.path());
    assert!(html.contains(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; img-src data:\">"
    ));
    assert_eq!(schemed_urls(&html), Vec::<String>::new());
    assert_eq!(
        schemed_urls("<img src=\"https://x/y.png\"><a href='//evil'>"),
        ["https://x/y.png", "//evil"],
        "the check itself finds schemed URLs"
    );
    for figure in [
        "490.0 MiB",          // memoryMax for 99 % and 100 %
        "970.0 MiB",          // peak concurrent memory
        "1.2 GiB",            // pod memory: 970 MiB + 25 %
        "budget 1.0 GiB",     // the recorded budget on the timeline
        "OOM kill, OwnLimit", // the markers
        "OOM kill, SharedLimit",
        "Memory peak per action",
        "Wall time per action",
        "Pressure stalls per program",
        "file39.c", // the largest action's argv
    ] {
        assert!(html.contains(figure), "the page lacks {figure:?}");
    }
    assert!(
        html.matches("<svg").count() >= 4,
        "histograms, stalls, timeline"
    );
}

/// The page's Content-Security-Policy, from its `<meta>`.
fn content_security_policy(html: &str) -> &str {
    let marker = "http-equiv=\"Content-Security-Policy\" content=\"";
    let start = html.find(marker).expect("a CSP <meta>") + marker.len();
    let length = html[start..].find('"').expect("the end of the CSP");
    &html[start..start + length]
}

#[test]
fn the_page_may_run_no_script() {
    // Why it matters: the page has no script, and shows argv that whoever
    // sent an action wrote. Were escaping ever to slip, a policy that
    // allows inline scripts would run what the argv smuggled in; with no
    // `script-src`, `default-src 'none'` forbids every script.
    let dir = tempfile::tempdir().unwrap();
    let (_, html) = render_html(dir.path());
    let csp = content_security_policy(&html);
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    assert!(directives.contains(&"default-src 'none'"), "{csp}");
    assert!(
        !directives.iter().any(|d| d.starts_with("script-src")),
        "the CSP allows scripts: {csp}"
    );
    for directive in &directives {
        assert!(
            !directive.contains("'unsafe-inline'") || directive.starts_with("style-src"),
            "{directive} in {csp}"
        );
    }
    assert!(!html.to_ascii_lowercase().contains("<script"));
}

/// A journal of one action whose argv holds NUL, a terminal's escape
/// sequence, C1 and DEL, a newline and a right-to-left override.
const HOSTILE_ARGV: [&str; 3] = [
    "sh",
    "-c",
    "cat /etc/passwd\u{0}\u{1b}[2J\u{202e}fdp.exe\u{9b}\u{7f}\nnext",
];

fn hostile_journal(dir: &Path) -> PathBuf {
    let journal = dir.join("events.jsonl");
    let lines = [
        json!({"sequence": "1", "time": time(0.0), "runnerInstance": "0badcafe",
            "actionStarted": {"actionId": "0badcafe-1", "arguments": HOSTILE_ARGV,
                              "inputRootDirectory": "", "pid": "9", "cgroup": ""}}),
        json!({"sequence": "2", "time": time(2.0), "runnerInstance": "0badcafe",
            "actionFinished": {"actionId": "0badcafe-1", "exitCode": "0",
                "resourceUsage": [{
                    "@type": "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage",
                    "userTime": "1s", "maximumResidentSetSize": "1000"}],
                "wallTime": "2s"}}),
    ];
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&journal, text.join("\n") + "\n").unwrap();
    journal
}

/// The control and bidirectional characters of `text`, other than the
/// newlines (and for JSON tabs) that lay it out.
fn raw_hidden(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
        })
        .collect()
}

#[test]
fn control_and_bidirectional_characters_from_argv_are_shown_escaped() {
    // Why it matters: argv is whatever the client sent. Written raw, a NUL
    // or an escape sequence acts on the analyst's terminal, and U+202E
    // turns the rest of the line around, so that an argv reads as
    // something other than what ran.
    let dir = tempfile::tempdir().unwrap();
    let journal = hostile_journal(dir.path());
    let page = dir.path().join("report.html");
    let text = run_report(&["--html", page.to_str().unwrap(), journal.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).expect("UTF-8 text");
    assert_eq!(raw_hidden(&text), Vec::<char>::new(), "text:\n{text}");
    assert!(
        text.contains("cat /etc/passwd\\u{0}\\u{1b}[2J\\u{202e}"),
        "{text}"
    );
    for line in text.lines() {
        assert!(line.chars().count() <= 100, "too wide: {line:?}");
    }

    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(raw_hidden(&html), Vec::<char>::new(), "the page");
    assert!(html.contains("\\u{202e}fdp.exe\\u{9b}\\u{7f}\\u{a}next"));

    let output = run_report(&["--json", journal.to_str().unwrap()]);
    let json_text = String::from_utf8(output.stdout).expect("UTF-8 JSON");
    assert_eq!(
        raw_hidden(&json_text),
        Vec::<char>::new(),
        "JSON:\n{json_text}"
    );
    assert!(json_text.contains("\\u0000\\u001b[2J\\u202efdp.exe\\u009b\\u007f\\nnext"));
    // JSON's escapes give a reader the argv that ran.
    let report: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(report["topWall"][0]["arguments"], json!(HOSTILE_ARGV));
}

/// The most address space the report may use on a 2 GB line: a fixed
/// bound, well under the line, that the kernel enforces (an allocation
/// beyond it fails and the report aborts), so the test cannot pass by a
/// lucky sample.
const REPORT_ADDRESS_SPACE: u64 = 512 << 20;

#[test]
fn a_two_gigabyte_line_is_skipped_as_corrupt_under_a_memory_bound() {
    // Why it matters: a damaged or hostile file with no newline for 2 GB
    // cost the report 2.1 GB of memory, enough to take down the analyst's
    // machine or be killed. Lines beyond 64 MiB are skipped while
    // streaming, and the lines after them still count.
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("events.jsonl");
    let action = |index: u32| {
        let id = format!("0badcafe-{index}");
        format!(
            "{}\n{}\n",
            json!({"sequence": "1", "time": time(0.0), "runnerInstance": "0badcafe",
                "actionStarted": {"actionId": id, "arguments": ["cc"]}}),
            json!({"sequence": "2", "time": time(1.0), "runnerInstance": "0badcafe",
                "actionFinished": {"actionId": id, "exitCode": "0", "wallTime": "1s"}})
        )
    };
    // Sparse: the holes read as NUL bytes and take no disk.
    let mut file = std::fs::File::create(&journal).unwrap();
    file.write_all(action(1).as_bytes()).unwrap();
    let mut end = file.metadata().unwrap().len() + (2 << 30);
    file.set_len(end).unwrap();
    use std::io::Seek;
    file.seek(std::io::SeekFrom::End(0)).unwrap();
    file.write_all(format!("\n{}", action(2)).as_bytes())
        .unwrap();
    // And a line just over the limit, cut off by the end of the file.
    end = file.metadata().unwrap().len() + (64 << 20) + 1;
    file.set_len(end).unwrap();
    drop(file);

    let mut command = Command::new(runner_under_test());
    command.args(["report", "--json"]).arg(&journal);
    // SAFETY: setrlimit is a single system call, async-signal-safe, and
    // touches no memory shared with the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_AS,
                REPORT_ADDRESS_SPACE,
                REPORT_ADDRESS_SPACE,
            )
            .map_err(std::io::Error::from)
        });
    }
    let output = command.output().expect("run rbe-runner report");
    assert!(
        output.status.success(),
        "report over a 2 GB line within {} MiB of address space: {}; {}",
        REPORT_ADDRESS_SPACE >> 20,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["summary"]["actions"], 2);
    assert_eq!(report["skipped"]["corrupt"], 2);
    assert_eq!(report["skipped"]["truncated"], 0);
}

/// Debian's Chromium, or `None` with `test` skipped (a panic under CI,
/// whose setup installs it).
fn chromium(test: &str) -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
    });
    if found.is_none() {
        skip(test, "no chromium on PATH; run tests/run-all as root");
    }
    found
}

/// The share of pixels that differ from the most common colour.
fn share_not_background(png_path: &Path) -> f64 {
    let file = std::io::BufReader::new(std::fs::File::open(png_path).unwrap());
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buffer = vec![0; reader.output_buffer_size().expect("a size")];
    let frame = reader.next_frame(&mut buffer).expect("a frame");
    let channels = frame.color_type.samples();
    let pixels: Vec<&[u8]> = buffer[..frame.buffer_size()]
        .chunks(channels)
        .map(|pixel| &pixel[..channels.min(3)])
        .collect();
    let mut counts = std::collections::HashMap::new();
    for pixel in &pixels {
        *counts.entry(*pixel).or_insert(0usize) += 1;
    }
    let background = counts.values().copied().max().unwrap_or(0);
    1.0 - background as f64 / pixels.len() as f64
}

#[test]
fn chromium_renders_the_page_into_something_visible() {
    // Why it matters: a page that does not render (broken markup, a
    // blocked resource) would pass the text checks and show nothing.
    let test = "chromium_renders_the_page_into_something_visible";
    let Some(chromium) = chromium(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (page, _) = render_html(dir.path());
    // Kept under target/ so that a person can look at it.
    let png_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-page.png");
    let _ = std::fs::remove_file(&png_path);
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg("--window-size=1280,2000")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        png_path.is_file(),
        "chromium wrote no screenshot ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let share = share_not_background(&png_path);
    assert!(
        share >= 0.02,
        "only {:.2} % of {} differs from the background",
        share * 100.0,
        png_path.display()
    );
    eprintln!(
        "{}: {:.1} % of pixels differ from the background",
        png_path.display(),
        share * 100.0
    );
}

#[test]
fn an_unreadable_journal_or_bad_option_is_a_clear_error() {
    let output = Command::new(runner_under_test())
        .args(["report", "/nonexistent/events.jsonl"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/events.jsonl"), "{stderr}");
    let output = Command::new(runner_under_test())
        .args(["report", "--group-by", "colour", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--group-by"));
}

/// Why it matters: the journal is its owner's alone (`journalMode`
/// 0600), so an analyst who is not that owner must be told why it cannot
/// be read, and which file it is, not given an empty report.
#[test]
fn a_journal_the_caller_may_not_read_is_permission_denied_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let journal = dir.path().join("events.jsonl");
    let rotated = dir.path().join("events.jsonl.1");
    std::fs::write(&journal, "").unwrap();
    std::fs::write(&rotated, "").unwrap();
    // Root reads whatever the mode says; the report runs as nobody then.
    let report = |readable: &Path, unreadable: &Path| {
        std::fs::set_permissions(readable, PermissionsExt::from_mode(0o644)).unwrap();
        std::fs::set_permissions(unreadable, PermissionsExt::from_mode(0o600)).unwrap();
        let mut command = Command::new(runner_under_test());
        command.arg("report").arg(&journal);
        if nix::unistd::geteuid().is_root() {
            command.uid(65534).gid(65534);
        }
        command.output().expect("run rbe-runner report")
    };
    for (readable, unreadable) in [(&rotated, &journal), (&journal, &rotated)] {
        let output = report(readable, unreadable);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("{}:", unreadable.display())),
            "{stderr}"
        );
        assert!(stderr.contains("ermission denied"), "{stderr}");
    }
}
