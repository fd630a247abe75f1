//! The event stream end to end, against the real binary: replay and live
//! delivery, resuming, gaps, restarts, a subscriber that never reads, the
//! typed facts of terminated and never-started actions, the journal (as
//! another language's protobuf parser reads it) and `watch`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper_util::rt::TokioIo;
use rbe_runner::proto::rbe_runner::events::v1::event::Kind;
use rbe_runner::proto::rbe_runner::events::v1::events_client::EventsClient;
use rbe_runner::proto::rbe_runner::events::v1::{Event, EventsLost, SubscribeRequest};
use rbe_runner::proto::rbe_runner::resourceusage::v1::TerminationReason;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Streaming;

/// How long a test waits for one event that must come.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

async fn subscribe(runner: &TestRunner, request: SubscribeRequest) -> Streaming<Event> {
    EventsClient::new(runner.channel().await)
        .subscribe(request)
        .await
        .expect("subscribe")
        .into_inner()
}

fn after(after_sequence: u64) -> SubscribeRequest {
    SubscribeRequest {
        after_sequence,
        ..SubscribeRequest::default()
    }
}

async fn next_event(stream: &mut Streaming<Event>) -> Event {
    tokio::time::timeout(EVENT_TIMEOUT, stream.message())
        .await
        .expect("an event within the timeout")
        .expect("the stream is healthy")
        .expect("the stream goes on")
}

async fn events(stream: &mut Streaming<Event>, count: usize) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..count {
        events.push(next_event(stream).await);
    }
    events
}

fn sequences(events: &[Event]) -> Vec<u64> {
    events.iter().map(|event| event.sequence).collect()
}

/// The kind of each event, as a short name.
fn kinds(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|event| match &event.kind {
            Some(Kind::ActionStarted(_)) => "started",
            Some(Kind::ActionFinished(_)) => "finished",
            Some(Kind::ActionTerminating(_)) => "terminating",
            Some(Kind::CleanupFailed(_)) => "cleanup failed",
            Some(Kind::RunnerState(_)) => "state",
            Some(Kind::EventsLost(_)) => "lost",
            None => "none",
        })
        .collect()
}

/// Runs `count` actions that succeed, one after the other.
async fn run_actions(runner: &TestRunner, count: usize) {
    for _ in 0..count {
        let action = runner.action();
        runner
            .run_successfully(&action, shell_request(&action, "true"))
            .await;
    }
}

/// The events of startup plus `actions` successful actions: a state, then
/// started/finished pairs.
fn startup_and_actions(actions: usize) -> Vec<&'static str> {
    let mut expected = vec!["state"];
    for _ in 0..actions {
        expected.extend(["started", "finished"]);
    }
    expected
}

#[tokio::test]
async fn a_late_subscriber_gets_every_event_then_live_ones_numbered_from_one() {
    let runner = TestRunner::start(json!({}));
    run_actions(&runner, 5).await;
    let mut stream = subscribe(&runner, after(0)).await;
    let replayed = events(&mut stream, 11).await;
    assert_eq!(sequences(&replayed), (1..=11).collect::<Vec<u64>>());
    assert_eq!(kinds(&replayed), startup_and_actions(5));
    let instance = &replayed[0].runner_instance;
    assert_eq!(instance.len(), 8, "{instance}");
    for event in &replayed {
        assert_eq!(&event.runner_instance, instance);
        if let Some(Kind::ActionFinished(finished)) = &event.kind {
            assert!(finished.action_id.starts_with(&format!("{instance}-")));
            assert_eq!(finished.status.as_ref().unwrap().code, 0);
        }
    }
    let Some(Kind::RunnerState(state)) = &replayed[0].kind else {
        panic!("the first event is the runner's state: {:?}", replayed[0]);
    };
    assert!(state.accepting_work);
    assert_eq!(state.reason, "startup");

    run_actions(&runner, 1).await;
    let live = events(&mut stream, 2).await;
    assert_eq!(sequences(&live), [12, 13]);
    assert_eq!(kinds(&live), ["started", "finished"]);
}

#[tokio::test]
async fn after_sequence_resumes_exactly() {
    let runner = TestRunner::start(json!({}));
    run_actions(&runner, 3).await;
    let mut stream = subscribe(&runner, after(4)).await;
    assert_eq!(sequences(&events(&mut stream, 3).await), [5, 6, 7]);
    run_actions(&runner, 1).await;
    assert_eq!(sequences(&events(&mut stream, 2).await), [8, 9]);
}

#[tokio::test]
async fn a_subscriber_asking_for_more_than_the_buffer_holds_is_told_what_it_missed() {
    let runner = TestRunner::start(json!({ "events": { "replayBufferSize": 8 } }));
    run_actions(&runner, 20).await;
    let mut stream = subscribe(&runner, after(1)).await;
    let first = next_event(&mut stream).await;
    assert_eq!(first.sequence, 0);
    assert_eq!(
        first.kind,
        Some(Kind::EventsLost(EventsLost {
            first_sequence: 2,
            last_sequence: 33,
        }))
    );
    assert_eq!(
        sequences(&events(&mut stream, 8).await),
        (34..=41).collect::<Vec<u64>>()
    );
    run_actions(&runner, 1).await;
    assert_eq!(sequences(&events(&mut stream, 2).await), [42, 43]);
}

// Multi-threaded: the test blocks in stop() while the client's connections
// answer the server's graceful shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_runner_instance_after_a_restart_replays_from_the_start() {
    let mut before = TestRunner::start(json!({}));
    run_actions(&before, 2).await;
    let mut stream = subscribe(&before, after(0)).await;
    let seen = events(&mut stream, 5).await;
    let old_instance = seen[4].runner_instance.clone();
    drop(stream);
    before.stop();

    let restarted = TestRunner::start(json!({}));
    run_actions(&restarted, 3).await;
    // Without the instance, sequence 5 would be taken as this runner's.
    let mut resumed = subscribe(
        &restarted,
        SubscribeRequest {
            after_sequence: 5,
            runner_instance: old_instance.clone(),
            ..SubscribeRequest::default()
        },
    )
    .await;
    let replayed = events(&mut resumed, 7).await;
    assert_eq!(sequences(&replayed), (1..=7).collect::<Vec<u64>>());
    assert_eq!(kinds(&replayed), startup_and_actions(3));
    assert_ne!(replayed[0].runner_instance, old_instance);
    let mut same_instance = subscribe(
        &restarted,
        SubscribeRequest {
            after_sequence: 5,
            runner_instance: replayed[0].runner_instance.clone(),
            ..SubscribeRequest::default()
        },
    )
    .await;
    assert_eq!(sequences(&events(&mut same_instance, 2).await), [6, 7]);
}

/// A channel of its own to the runner's socket, with HTTP/2 windows of
/// 1 KiB, so that a client that never reads stalls its stream quickly.
async fn small_window_channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://[::1]:1")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_hold_up_600_actions() {
    // Why it matters: a stuck `watch` must cost actions nothing. The
    // actions completing is the assertion; the gap the subscriber is told
    // about afterwards proves it really fell behind.
    let runner = Arc::new(TestRunner::start(json!({})));
    let mut stalled = EventsClient::new(small_window_channel(&runner.socket).await)
        .subscribe(after(0))
        .await
        .expect("subscribe")
        .into_inner();
    let concurrency = Arc::new(tokio::sync::Semaphore::new(8));
    let mut actions = tokio::task::JoinSet::new();
    for _ in 0..600 {
        let runner = runner.clone();
        let permit = concurrency.clone().acquire_owned().await.unwrap();
        actions.spawn(async move {
            let action = runner.action();
            runner
                .run_successfully(&action, shell_request(&action, "true"))
                .await;
            drop(permit);
        });
    }
    let mut completed = 0;
    while let Some(joined) = actions.join_next().await {
        joined.expect("the action's Run succeeded");
        completed += 1;
    }
    assert_eq!(completed, 600);

    // 1 state + 600 × (started, finished): the last event is 1201, which
    // the subscriber receives or is told it missed.
    let accounted_for = |event: &Event| match &event.kind {
        Some(Kind::EventsLost(lost)) => lost.last_sequence,
        _ => event.sequence,
    };
    let mut received = Vec::new();
    while received.last().map(accounted_for) != Some(1201) {
        received.push(next_event(&mut stalled).await);
    }
    let lost: Vec<(usize, &EventsLost)> = received
        .iter()
        .enumerate()
        .filter_map(|(index, event)| match &event.kind {
            Some(Kind::EventsLost(lost)) => Some((index, lost)),
            _ => None,
        })
        .collect();
    assert!(!lost.is_empty(), "the stalled subscriber missed nothing?");
    let missed: u64 = lost
        .iter()
        .map(|(_, gap)| gap.last_sequence - gap.first_sequence + 1)
        .sum();
    eprintln!(
        "the stalled subscriber received {} events and was told of {missed} missed in {} gaps",
        received.len() - lost.len(),
        lost.len()
    );
    for (index, gap) in lost {
        if let Some(next) = received.get(index + 1) {
            assert_eq!(next.sequence, gap.last_sequence + 1);
        }
        if index > 0 {
            assert_eq!(received[index - 1].sequence + 1, gap.first_sequence);
        }
    }
}

#[tokio::test]
async fn a_deadline_is_reported_as_terminating_then_finished_with_its_reason() {
    let runner = TestRunner::start(json!({ "terminationGracePeriod": "0.2s" }));
    let mut stream = subscribe(
        &runner,
        SubscribeRequest {
            live_only: true,
            ..SubscribeRequest::default()
        },
    )
    .await;
    let action = runner.action();
    // SIGTERM is ignored, so the runner must also SIGKILL it.
    let request = shell_request(&action, "trap '' TERM; sleep 30");
    let status = runner
        .run_past_deadline(request, Duration::from_secs(1))
        .await;
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    let seen = events(&mut stream, 4).await;
    assert_eq!(
        kinds(&seen),
        ["started", "terminating", "terminating", "finished"]
    );
    let deadline = TerminationReason::Deadline as i32;
    let (Some(Kind::ActionTerminating(first)), Some(Kind::ActionTerminating(killed))) =
        (&seen[1].kind, &seen[2].kind)
    else {
        unreachable!()
    };
    assert_eq!(
        (first.reason, first.killed_at_grace_deadline),
        (deadline, false)
    );
    assert_eq!(
        (killed.reason, killed.killed_at_grace_deadline),
        (deadline, true)
    );
    let Some(Kind::ActionFinished(finished)) = &seen[3].kind else {
        unreachable!()
    };
    assert_eq!(finished.termination_reason, deadline);
    assert_eq!(
        finished.status.as_ref().unwrap().code,
        tonic::Code::DeadlineExceeded as i32
    );
    assert!(!finished.resource_usage.is_empty());
}

#[tokio::test]
async fn a_missing_program_is_an_action_finished_with_status_3_and_no_start() {
    let runner = TestRunner::start(json!({}));
    let mut stream = subscribe(
        &runner,
        SubscribeRequest {
            live_only: true,
            ..SubscribeRequest::default()
        },
    )
    .await;
    let action = runner.action();
    let request = action.request(vec!["no-such-program-xyz".into()], vec![]);
    let status = runner.client().await.run(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let event = next_event(&mut stream).await;
    let Some(Kind::ActionFinished(finished)) = &event.kind else {
        panic!("expected ActionFinished first, got {event:?}");
    };
    let finished_status = finished.status.as_ref().unwrap();
    assert_eq!(finished_status.code, 3);
    assert_eq!(finished_status.message, status.message());
    assert!(finished.resource_usage.is_empty());
}

/// The Python of the test virtualenv (Python's `protobuf`).
fn python_with_protobuf(test: &str) -> Option<PathBuf> {
    test_python(test)
}

// Multi-threaded: the test blocks in stop() while the client's connections
// answer the server's graceful shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn every_journal_line_parses_with_pythons_protobuf_and_the_journal_rotates() {
    let test = "every_journal_line_parses_with_pythons_protobuf_and_the_journal_rotates";
    let Some(python) = python_with_protobuf(test) else {
        return;
    };
    let journal_dir = tempfile::tempdir().unwrap();
    let journal = journal_dir.path().join("events.jsonl");
    let mut runner = TestRunner::start(json!({
        "events": { "journalPath": journal, "journalMaxBytes": "4K", "runnerName": "journal-test" },
    }));
    run_actions(&runner, 12).await;
    // A failure, a signal and a non-zero exit, for their fields.
    let action = runner.action();
    let _ = runner
        .client()
        .await
        .run(action.request(vec!["no-such-program-xyz".into()], vec![]))
        .await;
    for script in ["exit 3", "kill -KILL $$"] {
        let (_, result) = runner.run_shell(script).await;
        result.expect("a response");
    }
    // Stopping flushes the journal: every event is written by then.
    assert!(runner.stop().success());

    let rotated = journal_dir.path().join("events.jsonl.1");
    for file in [&journal, &rotated] {
        let size = std::fs::metadata(file).unwrap().len();
        assert!(size > 0 && size <= 4096, "{}: {size} bytes", file.display());
    }
    let descriptors = journal_dir.path().join("descriptors.pb");
    std::fs::write(&descriptors, rbe_runner::proto::FILE_DESCRIPTOR_SET).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/parse_journal.py");
    let output = Command::new(python)
        .arg(script)
        .arg(&descriptors)
        .arg(&rotated)
        .arg(&journal)
        .output()
        .expect("run parse_journal.py");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = [&rotated, &journal]
        .iter()
        .flat_map(|file| {
            read(file)
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let checked: usize = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(checked, lines.len());
    // What is kept is contiguous and ends with the state at shutdown.
    let sequences: Vec<u64> = lines
        .iter()
        .map(|line| line["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{sequences:?}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["runnerState"]["acceptingWork"], false);
    assert_eq!(last["runnerState"]["runnerName"], "journal-test");
    let statuses: Vec<&Value> = lines
        .iter()
        .filter_map(|line| line.get("actionFinished"))
        .map(|finished| &finished["status"]["code"])
        .collect();
    assert!(statuses.contains(&&json!(3)), "{statuses:?}");
}

#[test]
fn watch_json_no_follow_prints_the_events_of_an_action_run_with_exec() {
    let runner = TestRunner::start(json!({}));
    let exec = Command::new(BIN)
        .args(["exec", "--socket"])
        .arg(&runner.socket)
        .arg("--build-dir")
        .arg(&runner.build_dir)
        .args(["--", "sh", "-c", "echo watched; exit 3"])
        .output()
        .expect("run rbe-runner exec");
    assert_eq!(exec.status.code(), Some(3));
    let watch = Command::new(BIN)
        .args(["watch", "--json", "--no-follow", "--socket"])
        .arg(&runner.socket)
        .output()
        .expect("run rbe-runner watch");
    assert_eq!(
        watch.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&watch.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["runnerState"]["acceptingWork"], true);
    let started = &lines[1]["actionStarted"];
    assert_eq!(
        started["arguments"],
        json!(["sh", "-c", "echo watched; exit 3"])
    );
    let finished = &lines[2]["actionFinished"];
    assert_eq!(finished["actionId"], started["actionId"]);
    assert_eq!(finished["exitCode"], "3");
    assert_eq!(finished["status"]["code"], 0);
    assert_eq!(
        finished["resourceUsage"][0]["@type"],
        "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage"
    );
    assert_eq!(lines[2]["sequence"], "3");
}

// ---------------------------------------------------------------------------
// The journal's mode, event memory in bytes, whole lines on a full disk
// ---------------------------------------------------------------------------

/// The permission bits of `path`.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn rotated(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Why it matters: argv may hold secrets (`--password=…`), and actions
/// may run as other users: a journal created with the umask's mode let an
/// action running as uid 65534 read another action's arguments.
// Multi-threaded: the test blocks in stop() while the client's connections
// answer the server's graceful shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn the_journal_is_its_owners_alone_under_umask_0_and_an_existing_wider_one_is_narrowed() {
    let journal_dir = tempfile::tempdir().unwrap();
    let created = journal_dir.path().join("created.jsonl");
    let mut runner = TestRunner::start(json!({
        "global": { "setUmask": { "umask": 0 } },
        "events": { "journalPath": created, "journalMaxBytes": "4K" },
    }));
    // Enough lines to rotate: the `.1` is the journal renamed.
    run_actions(&runner, 12).await;
    assert!(runner.stop().success());
    assert_eq!(mode_of(&created), 0o600, "{}", created.display());
    assert_eq!(mode_of(&rotated(&created)), 0o600);

    let existing = journal_dir.path().join("existing.jsonl");
    for file in [existing.clone(), rotated(&existing)] {
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    let mut runner = TestRunner::start(json!({ "events": { "journalPath": existing } }));
    run_actions(&runner, 1).await;
    assert!(runner.stop().success());
    assert_eq!(mode_of(&existing), 0o600);
    assert_eq!(mode_of(&rotated(&existing)), 0o600);
    let narrowed = runner
        .log()
        .iter()
        .filter(|line| line.contains("narrowed"))
        .count();
    assert_eq!(
        narrowed,
        2,
        "one line for each file:\n{}",
        runner.log().join("\n")
    );
}

/// The value of the unlabelled metric `name` scraped from `runner`.
fn scraped(runner: &TestRunner, name: &str) -> f64 {
    let (status, body) = http_get(&diagnostics_address(runner), "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

/// Runs `count` actions, 4 at a time, each with 1 MB of argv (16
/// arguments of 64,000 bytes, as a long compiler command line might be).
async fn run_megabyte_actions(runner: &Arc<TestRunner>, count: usize) {
    let concurrency = Arc::new(tokio::sync::Semaphore::new(4));
    let mut actions = tokio::task::JoinSet::new();
    for _ in 0..count {
        let runner = runner.clone();
        let permit = concurrency.clone().acquire_owned().await.unwrap();
        actions.spawn(async move {
            let action = runner.action();
            let mut request = shell_request(&action, "true");
            request
                .arguments
                .extend((0..16).map(|_| "x".repeat(64_000)));
            runner.run_successfully(&action, request).await;
            drop(permit);
        });
    }
    while let Some(joined) = actions.join_next().await {
        joined.expect("the action's Run succeeded");
    }
}

/// Why it matters: with 1 MB argv the replay buffer (4,096 events) held
/// 2.1 GB, and a journal writer blocked on a hung file queued 181 MB with
/// no drop counted. Cut argv (the default) keeps events small; with argv
/// not cut, the byte budgets bound the replay buffer, the journal's queue
/// and a subscriber that never reads.
#[tokio::test(flavor = "multi_thread")]
async fn actions_with_a_megabyte_of_arguments_keep_the_runner_small() {
    const ACTIONS: usize = 400;
    // (what is configured, the peak RSS it may reach)
    let cases = [
        (json!({}), 160u64 << 20),
        (
            json!({
                "maximumArgumentBytes": "2Mi",
                "replayBufferBytes": "32Mi",
                "subscriberQueueBytes": "16Mi",
                "journalQueueBytes": "32Mi",
            }),
            224 << 20,
        ),
    ];
    for (events, peak_limit) in cases {
        // A FIFO nobody reads stands in for a hung journal filesystem.
        let journal_dir = tempfile::tempdir().unwrap();
        let journal = journal_dir.path().join("events.jsonl");
        nix::unistd::mkfifo(&journal, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let mut config = diagnostics_on_loopback();
        merge(&mut config, json!({ "events": { "journalPath": journal } }));
        merge(&mut config, json!({ "events": events.clone() }));
        let runner = Arc::new(TestRunner::start(config));
        let _stalled = EventsClient::new(small_window_channel(&runner.socket).await)
            .subscribe(after(0))
            .await
            .expect("subscribe")
            .into_inner();
        run_megabyte_actions(&runner, ACTIONS).await;
        let peak = status_bytes(runner.pid(), "VmHWM:");
        let dropped = scraped(&runner, "rbe_runner_events_dropped_total");
        eprintln!(
            "events {events}: peak RSS {} MiB after {ACTIONS} actions of 1 MB argv, {dropped} events dropped",
            peak >> 20
        );
        assert!(
            peak < peak_limit,
            "events {events}: the runner's peak RSS reached {} MiB (limit {} MiB)",
            peak >> 20,
            peak_limit >> 20
        );
        assert!(dropped > 0.0, "the hung journal missed nothing?");
        // The runner cannot flush a journal nobody reads; it is killed
        // when dropped.
    }
}

/// Why it matters: 1,000 subscribers that never read cost 270 MB (each
/// stream has its queue and its HTTP/2 send buffer); beyond the cap a
/// client is told to come back later, naming the setting.
#[tokio::test]
async fn one_subscriber_more_than_the_maximum_is_resource_exhausted_naming_the_cap() {
    let runner = TestRunner::start(json!({ "events": { "maximumSubscribers": 2 } }));
    let first = subscribe(&runner, after(0)).await;
    let _second = subscribe(&runner, after(0)).await;
    let mut events = EventsClient::new(runner.channel().await);
    let refused = events.subscribe(after(0)).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("events.maximumSubscribers"),
        "{}",
        refused.message()
    );
    assert!(refused.message().contains('2'), "{}", refused.message());
    drop(first);
    // The runner notices the stream ended when the client resets it.
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        match events.subscribe(after(0)).await {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

/// Why it matters: after ENOSPC the journal ended in half a line, the
/// next event was appended to it (both lost), and nothing recorded the
/// events never written, so `report` counted 88 of 520 actions without
/// saying so.
// Multi-threaded: the test blocks in stop() while the client's connections
// answer the server's graceful shutdown.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_journal_filesystem_leaves_whole_lines_and_an_events_lost_line_that_report_counts() {
    let test =
        "a_full_journal_filesystem_leaves_whole_lines_and_an_events_lost_line_that_report_counts";
    if !running_as_root(test) {
        return;
    }
    let tmpfs = Tmpfs::mount("size=256k");
    let journal = tmpfs.dir.path().join("events.jsonl");
    let mut runner = TestRunner::start(json!({ "events": { "journalPath": journal } }));
    run_actions(&runner, 3).await;
    // Wait until the journal has the first events: the filler must not
    // take the space of its first line.
    eventually("the journal has its first lines", EVENT_TIMEOUT, || {
        std::fs::read_to_string(&journal).is_ok_and(|text| text.lines().count() >= 7)
    })
    .await;
    // Fill every free page; the journal's last page keeps some room, so
    // its next line is written in part, then fails.
    let filler_path = tmpfs.dir.path().join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    drop(filler);
    run_actions(&runner, 5).await;
    eventually("the journal writer fails", EVENT_TIMEOUT, || {
        runner
            .log()
            .iter()
            .any(|line| line.contains("cannot write the events journal"))
    })
    .await;
    std::fs::remove_file(&filler_path).unwrap();
    run_actions(&runner, 3).await;
    assert!(runner.stop().success());

    // Every line parses; the events and the EventsLost ranges account
    // for every sequence once, in order.
    let text = read(&journal);
    let mut next = 1;
    let mut lost_in_lines = 0;
    for line in text.lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("a torn line ({err}): {line:?}"));
        let number = |value: &Value| value.as_str().unwrap().parse::<u64>().unwrap();
        match event.get("eventsLost") {
            Some(lost) => {
                let (first, last) = (
                    number(&lost["firstSequence"]),
                    number(&lost["lastSequence"]),
                );
                assert_eq!(first, next, "the gap starts where the events stop: {line}");
                lost_in_lines += last - first + 1;
                next = last + 1;
            }
            None => {
                assert_eq!(number(&event["sequence"]), next, "{line}");
                next += 1;
            }
        }
    }
    // 1 state + 11 actions + the state at shutdown.
    assert_eq!(next - 1, 24, "{text}");
    assert!(lost_in_lines > 0, "the full disk lost nothing?\n{text}");
    eprintln!("{lost_in_lines} events were not written while the journal's filesystem was full");

    let output = Command::new(runner_under_test())
        .args(["report", "--json"])
        .arg(&journal)
        .output()
        .expect("run rbe-runner report");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["skipped"]["corrupt"], 0, "{report:#}");
    assert_eq!(report["skipped"]["truncated"], 0, "{report:#}");
    assert_eq!(report["skipped"]["lostEvents"], lost_in_lines, "{report:#}");
}
