//! A slow exec costs only its own action (issue 23).
//!
//! bb_worker's virtual build directory (FUSE, or NFSv4) loads a file from
//! the CAS on its first read, so the first exec of a large tool can wait
//! seconds. While one action's exec waits [`DELAY`] on a FUSE filesystem
//! whose reads are slow ([`common::slow_fuse`]), every other action must be
//! answered as if nothing waited: 20 `/bin/true` Runs, and the completions
//! of 4 `sleep 1` actions already running, each within [`SLACK`] of when
//! it would be answered otherwise; CheckReadiness and `/metrics` within
//! [`SLACK`] too. With the spawn server, and with it killed first (as an
//! operator would), when the runner creates every process itself; both
//! spawn paths (`tests/run-all` runs this file again with
//! `RBE_RUNNER_SPAWN=fallback`, and with `RBE_RUNNER_WAIT=thread`).
//!
//! These are the only timing bounds here, with generous margins: the
//! runner once held one lock from each child's creation to its exec, and
//! every one of these waited out the whole delay.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::slow_fuse::SlowFuse;
use common::test_cgroup::TestCgroup;
use common::*;
use rbe_runner::proto::runner::CheckReadinessRequest;
use serde_json::json;
use tokio::sync::Mutex;

/// How long each read of the slow filesystem takes.
const DELAY: Duration = Duration::from_secs(3);

/// How much later than otherwise anything may be answered meanwhile.
const SLACK: Duration = Duration::from_secs(1);

/// The bounds are about time: the two cases share 2 cores, one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_exec_holds_up_no_other_action() {
    slow_exec("a_slow_exec_holds_up_no_other_action", false, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_exec_holds_up_no_other_action_without_the_spawn_server() {
    slow_exec(
        "a_slow_exec_holds_up_no_other_action_without_the_spawn_server",
        true,
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_exec_holds_up_no_other_action_in_action_cgroups() {
    slow_exec(
        "a_slow_exec_holds_up_no_other_action_in_action_cgroups",
        false,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_exec_holds_up_no_other_action_in_action_cgroups_without_the_spawn_server() {
    slow_exec(
        "a_slow_exec_holds_up_no_other_action_in_action_cgroups_without_the_spawn_server",
        true,
        true,
    )
    .await;
}

/// The second case: the slow action's input root (with its program) and
/// its stdout and stderr live on the slow filesystem, as in bb_worker's
/// virtual build directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_exec_on_a_fuse_input_root_holds_up_no_other_action() {
    slow_exec_with(
        "a_slow_exec_on_a_fuse_input_root_holds_up_no_other_action",
        false,
        false,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_exec_on_a_fuse_input_root_holds_up_no_other_action_without_the_spawn_server() {
    slow_exec_with(
        "a_slow_exec_on_a_fuse_input_root_holds_up_no_other_action_without_the_spawn_server",
        true,
        false,
        true,
    )
    .await;
}

async fn slow_exec(test: &str, kill_the_spawn_server: bool, action_cgroups: bool) {
    slow_exec_with(test, kill_the_spawn_server, action_cgroups, false).await;
}

/// While one action's exec waits [`DELAY`] on the slow filesystem (its
/// program alone, or with `input_root_on_fuse` its whole input root and
/// its outputs), every other action is answered as if nothing waited.
async fn slow_exec_with(
    test: &str,
    kill_the_spawn_server: bool,
    action_cgroups: bool,
    input_root_on_fuse: bool,
) {
    if !fuse_available(test) {
        return;
    }
    // Dropped after the runner (declared before it).
    let cgroup = match action_cgroups {
        true => match TestCgroup::create(test) {
            Some(cgroup) => Some(cgroup),
            None => return,
        },
        false => None,
    };
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let runner = match &cgroup {
        Some(cgroup) => {
            let mut config = json!({ "actionCgroups": {} });
            merge(&mut config, diagnostics_on_loopback());
            cgroup.start_runner_with(config)
        }
        None => TestRunner::start(diagnostics_on_loopback()),
    };
    let slow_action = runner.action();
    let mounted = tempfile::tempdir().unwrap();
    let fuse = match input_root_on_fuse {
        true => SlowFuse::mount(&slow_action.path.join("root"), DELAY),
        false => SlowFuse::mount(mounted.path(), DELAY),
    };
    let address = diagnostics_address(&runner);
    if kill_the_spawn_server {
        kill_spawn_server(&runner, &address).await;
    }
    // Every action but the slow one says it ran here, once.
    let ran = runner.dir.path().join("ran");

    // Undelayed, for comparison.
    let mut true_alone = Duration::ZERO;
    for _ in 0..3 {
        true_alone = true_alone.max(run_true(&runner).await);
    }

    // Four actions that are running when the slow exec starts, each
    // answered to a task of its own.
    let mut sleepers = Vec::new();
    for index in 0..4 {
        let action = runner.action();
        let script = format!("echo sleep-{index} >> {}; sleep 1", ran.display());
        let request = shell_request(&action, &script);
        let mut client = runner.client().await;
        sleepers.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = client.run(request).await.unwrap().into_inner();
            assert_eq!(response.exit_code, 0, "sleep-{index}");
            started.elapsed()
        }));
    }
    let lines = |ran: &Path| std::fs::read_to_string(ran).unwrap_or_default();
    eventually("the four sleepers run", Duration::from_secs(30), || {
        lines(&ran).lines().count() == 4
    })
    .await;

    // The slow one, until its exec is waiting for the filesystem.
    let slow_request = if input_root_on_fuse {
        let mut request = slow_action.request(
            vec!["./slow".into(), "echo".into(), "slow-output".into()],
            vec![("PATH".into(), TEST_PATH.into())],
        );
        request.stdout_path = format!("{}/root/stdout", slow_action.relative);
        request.stderr_path = format!("{}/root/stderr", slow_action.relative);
        request
    } else {
        slow_action.request(
            vec![fuse.script().display().to_string()],
            vec![("PATH".into(), TEST_PATH.into())],
        )
    };
    let mut client = runner.client().await;
    let slow_started = Instant::now();
    let slow = tokio::spawn(async move { client.run(slow_request).await });
    let fuse = tokio::task::spawn_blocking(move || {
        fuse.wait_for_a_read(Duration::from_secs(30));
        fuse
    })
    .await
    .unwrap();

    // Meanwhile.
    for index in 0..20 {
        let took = run_true(&runner).await;
        assert!(
            took <= true_alone + SLACK,
            "/bin/true {index} took {took:?} while an exec waited (alone: {true_alone:?})"
        );
    }
    let asked = Instant::now();
    runner
        .client()
        .await
        .check_readiness(CheckReadinessRequest { path: ".".into() })
        .await
        .expect("ready");
    assert!(
        asked.elapsed() <= SLACK,
        "CheckReadiness took {:?}",
        asked.elapsed()
    );
    let asked = Instant::now();
    let (status, _) = scrape(&address).await;
    assert_eq!(status, 200);
    assert!(
        asked.elapsed() <= SLACK,
        "/metrics took {:?}",
        asked.elapsed()
    );
    for (index, sleeper) in sleepers.into_iter().enumerate() {
        let took = sleeper.await.unwrap();
        assert!(
            took <= Duration::from_secs(1) + true_alone + SLACK,
            "sleep-{index} was answered after {took:?} while an exec waited"
        );
    }
    assert!(
        slow_started.elapsed() < DELAY,
        "everything above must happen while the exec waits; the delay is too short here"
    );

    // The slow one runs in the end, once.
    let response = slow
        .await
        .unwrap()
        .expect("the slow action runs")
        .into_inner();
    if input_root_on_fuse {
        assert_eq!(
            read(&slow_action.path.join("root/stdout")),
            "slow-output\n",
            "its output, written on the slow filesystem"
        );
    }
    drop(fuse);
    assert_eq!(response.exit_code, 0);
    assert!(slow_started.elapsed() >= DELAY);
    let mut recorded: Vec<String> = lines(&ran).lines().map(String::from).collect();
    recorded.sort();
    assert_eq!(
        recorded,
        ["sleep-0", "sleep-1", "sleep-2", "sleep-3"],
        "each ran once"
    );
}

/// Runs `/bin/true`; how long it took to be answered.
async fn run_true(runner: &TestRunner) -> Duration {
    let action = runner.action();
    let request = action.request(vec!["/bin/true".into()], vec![]);
    let started = Instant::now();
    let response = runner.client().await.run(request).await.unwrap();
    assert_eq!(response.into_inner().exit_code, 0);
    started.elapsed()
}

async fn scrape(address: &str) -> (u16, String) {
    let address = address.to_string();
    tokio::task::spawn_blocking(move || http_get(&address, "/metrics"))
        .await
        .unwrap()
}

/// Kills the spawn server as an operator would; the runner must say so
/// in its metrics within a second.
async fn kill_spawn_server(runner: &TestRunner, address: &str) {
    let server = spawn_server_of(runner.pid()).expect("the runner's spawn server");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    loop {
        let (_, metrics) = scrape(address).await;
        if metrics
            .lines()
            .any(|line| line == "rbe_runner_spawn_server_up 0")
        {
            break;
        }
        assert!(
            killed.elapsed() <= SLACK,
            "rbe_runner_spawn_server_up still 1 after {:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Deadlines before and during spawn
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_deadline_creates_nothing() {
    expired_deadlines(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_deadline_creates_nothing_without_the_spawn_server() {
    expired_deadlines(true).await;
}

/// Calls whose `grpc-timeout` has passed on arrival (`1n`, `1u`, `0m`)
/// are answered DEADLINE_EXCEEDED, and nothing runs: the marker file each
/// command would write never exists, and the runner's complete log (read
/// after it stopped, so that no action can still be under way) shows no
/// action that ran.
async fn expired_deadlines(kill_the_spawn_server: bool) {
    let mut runner = TestRunner::start(diagnostics_on_loopback());
    if kill_the_spawn_server {
        let address = diagnostics_address(&runner);
        kill_spawn_server(&runner, &address).await;
    }
    let mut markers = Vec::new();
    for timeout in ["1n", "1u", "0m"] {
        let action = runner.action();
        let marker = action.path.join("ran");
        let request = shell_request(&action, &format!("echo ran > {}", marker.display()));
        let status = run_with_grpc_timeout(&runner, request, timeout).await;
        assert_eq!(
            status.code(),
            tonic::Code::DeadlineExceeded,
            "grpc-timeout {timeout}: {status:?}"
        );
        markers.push((timeout, marker));
    }
    let stopped = runner.stop();
    assert!(stopped.success(), "{stopped:?}");
    for (timeout, marker) in &markers {
        assert!(
            !marker.exists(),
            "grpc-timeout {timeout}: the command ran ({})",
            marker.display()
        );
    }
    let ran: Vec<String> = runner
        .log()
        .into_iter()
        .filter(|line| line.contains("action exited") || line.contains("action terminated"))
        .collect();
    assert!(ran.is_empty(), "actions ran: {ran:#?}");
}

/// Sends `request` with the literal `grpc-timeout` header `timeout`,
/// enforced only by the runner; the call must fail.
async fn run_with_grpc_timeout(
    runner: &TestRunner,
    request: rbe_runner::proto::runner::RunRequest,
    timeout: &str,
) -> tonic::Status {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("grpc-timeout", timeout.parse().unwrap());
    runner
        .untimed_client()
        .await
        .run(request)
        .await
        .expect_err("the call's deadline has passed")
}

/// A call whose deadline passes while its exec waits on a FUSE read is
/// answered DEADLINE_EXCEEDED at its deadline, and the process is stopped
/// as soon as the exec returns: gone within terminationGracePeriod (2 s in
/// the tests' configuration) of the read being answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_passing_during_a_blocked_exec_stops_the_process_when_it_returns() {
    let test = "a_deadline_passing_during_a_blocked_exec_stops_the_process_when_it_returns";
    if !fuse_available(test) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mounted = tempfile::tempdir().unwrap();
    let fuse = SlowFuse::mount_hung(mounted.path());
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    // The script, once exec'd, runs `sleep 1000`: only termination ends it.
    let script = fuse.script().display().to_string();
    let request = action.request(
        vec![script.clone(), "sleep".into(), "1000".into()],
        vec![("PATH".into(), TEST_PATH.into())],
    );
    let status = runner
        .run_past_deadline(request, Duration::from_millis(500))
        .await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    // The exec is still waiting on the read: nothing answers it yet.
    fuse.wait_for_a_read(Duration::from_secs(30));
    fuse.release();
    let released = Instant::now();
    eventually(
        "the action stopped after its exec returned",
        Duration::from_secs(30),
        || {
            runner
                .log()
                .iter()
                .any(|line| line.contains("action terminated"))
        },
    )
    .await;
    assert!(
        released.elapsed() <= Duration::from_secs(2) + SLACK,
        "stopped {:?} after the exec returned",
        released.elapsed()
    );
    assert!(
        processes_running(&script).is_empty(),
        "still running: {:?}",
        processes_running(&script)
    );
    let log = runner.log();
    let stopped = log
        .iter()
        .find(|line| line.contains("action terminated"))
        .unwrap();
    assert!(stopped.contains("reason=Deadline"), "{stopped}");
}

/// The pids of processes whose command line mentions `path`.
fn processes_running(path: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(path))
                .unwrap_or(false)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A stuck spawn makes the runner not ready
// ---------------------------------------------------------------------------

/// How long a spawn may wait for its exec in [`a_hung_exec_makes_the_runner_not_ready_until_it_returns`].
const STUCK_SPAWN_TIMEOUT: Duration = Duration::from_secs(1);

/// An exec hung on a FUSE read makes the runner refuse work once it has
/// waited `stuckSpawnTimeout`, in every way a dirty cgroup does
/// (CheckReadiness UNAVAILABLE naming the program, `/-/ready` 503,
/// `rbe_runner_refusing_work` 1, a `RunnerState` with reason `stuck
/// spawn`, Runs refused), and ready again once the read is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_exec_makes_the_runner_not_ready_until_it_returns() {
    let test = "a_hung_exec_makes_the_runner_not_ready_until_it_returns";
    if !fuse_available(test) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mounted = tempfile::tempdir().unwrap();
    let fuse = SlowFuse::mount_hung(mounted.path());
    let mut config = diagnostics_on_loopback();
    merge(&mut config, json!({ "stuckSpawnTimeout": "1s" }));
    let runner = TestRunner::start(config);
    let address = diagnostics_address(&runner);
    check_readiness(&runner).await.expect("ready at first");

    let action = runner.action();
    let script = fuse.script().display().to_string();
    let request = action.request(
        vec![script.clone()],
        vec![("PATH".into(), TEST_PATH.into())],
    );
    let mut client = runner.client().await;
    let sent = Instant::now();
    let hung = tokio::spawn(async move { client.run(request).await });
    let fuse = tokio::task::spawn_blocking(move || {
        fuse.wait_for_a_read(Duration::from_secs(30));
        fuse
    })
    .await
    .unwrap();

    let refusal = loop {
        match check_readiness(&runner).await {
            Ok(()) => assert!(sent.elapsed() < Duration::from_secs(30), "still ready"),
            Err(refusal) => break refusal,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        sent.elapsed() >= STUCK_SPAWN_TIMEOUT,
        "not ready after {:?}, before stuckSpawnTimeout",
        sent.elapsed()
    );
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains(&format!("\"{script}\""))
            && refusal.message().contains("has not returned after"),
        "{refusal:?}"
    );
    eventually(
        "/-/ready and the metric agree",
        Duration::from_secs(10),
        || {
            let (ready, _) = http_get(&address, "/-/ready");
            let (_, metrics) = http_get(&address, "/metrics");
            ready == 503
                && metrics
                    .lines()
                    .any(|line| line == "rbe_runner_refusing_work 1")
        },
    )
    .await;
    assert!(
        runner
            .log()
            .iter()
            .any(|line| line.contains("refusing work") && line.contains("stuck spawn")),
        "no RunnerState with reason stuck spawn"
    );
    let refused = runner
        .run_true()
        .await
        .1
        .expect_err("work is refused while a spawn is stuck");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // The storage answers: the spawn completes, the runner is ready.
    fuse.release();
    let response = hung
        .await
        .unwrap()
        .expect("the hung action runs")
        .into_inner();
    assert_eq!(response.exit_code, 0);
    eventually("ready again", Duration::from_secs(10), || {
        let (ready, _) = http_get(&address, "/-/ready");
        let (_, metrics) = http_get(&address, "/metrics");
        ready == 200
            && metrics
                .lines()
                .any(|line| line == "rbe_runner_refusing_work 0")
    })
    .await;
    check_readiness(&runner).await.expect("ready again");
    assert!(
        runner
            .log()
            .iter()
            .any(|line| line.contains("accepting work") && line.contains("stuck spawn resolved")),
        "no RunnerState saying the stuck spawn is resolved"
    );
    drop(fuse);
}

/// An exec hung on a FUSE read that the operator ends by aborting the
/// FUSE connection (`/sys/fs/fuse/connections/N/abort`): the action fails
/// with an error naming its program, and the runner, not ready while the
/// spawn was stuck, is ready again.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_exec_ended_by_aborting_the_fuse_connection_fails_and_the_runner_recovers() {
    let test = "a_hung_exec_ended_by_aborting_the_fuse_connection_fails_and_the_runner_recovers";
    if !fuse_available(test) {
        return;
    }
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let mounted = tempfile::tempdir().unwrap();
    let fuse = SlowFuse::mount_hung(mounted.path());
    let abort = match fuse.abort_file() {
        Ok(abort) => abort,
        Err(reason) => {
            common::skip(test, &reason);
            return;
        }
    };
    let mut config = diagnostics_on_loopback();
    merge(&mut config, json!({ "stuckSpawnTimeout": "1s" }));
    let runner = TestRunner::start(config);
    let action = runner.action();
    let script = fuse.script().display().to_string();
    let request = action.request(
        vec![script.clone()],
        vec![("PATH".into(), TEST_PATH.into())],
    );
    let mut client = runner.client().await;
    let hung = tokio::spawn(async move { client.run(request).await });
    let fuse = tokio::task::spawn_blocking(move || {
        fuse.wait_for_a_read(Duration::from_secs(30));
        fuse
    })
    .await
    .unwrap();
    eventually(
        "not ready while the exec hangs",
        Duration::from_secs(30),
        || {
            let (ready, _) = http_get(&diagnostics_address(&runner), "/-/ready");
            ready == 503
        },
    )
    .await;

    std::fs::write(&abort, "1").unwrap();
    let failed = hung
        .await
        .unwrap()
        .expect_err("an exec whose read was aborted fails");
    assert!(
        failed.message().contains(&format!("\"{script}\"")),
        "{failed:?}"
    );
    check_readiness(&runner).await.expect("ready again");
    let (_, response) = runner.run_true().await;
    assert_eq!(response.expect("runs again").exit_code, 0);
    drop(fuse);
}

/// What CheckReadiness answers.
async fn check_readiness(runner: &TestRunner) -> Result<(), tonic::Status> {
    runner
        .client()
        .await
        .check_readiness(CheckReadinessRequest { path: ".".into() })
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------
// The spawn server stopped or killed
// ---------------------------------------------------------------------------

/// Runs whose deadline passes while the spawn server is stopped (SIGSTOP)
/// are answered DEADLINE_EXCEEDED and never run their command, also once
/// the server resumes; a Run after that runs once.
#[tokio::test(flavor = "multi_thread")]
async fn runs_whose_deadline_passed_while_the_spawn_server_was_stopped_never_run() {
    let mut runner = TestRunner::start(json!({}));
    let server = nix::unistd::Pid::from_raw(
        spawn_server_of(runner.pid()).expect("the runner's spawn server"),
    );
    nix::sys::signal::kill(server, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut markers = Vec::new();
    for index in 0..3 {
        let action = runner.action();
        let marker = action.path.join("ran");
        let request = shell_request(&action, &format!("echo {index} >> {}", marker.display()));
        let status = runner
            .run_past_deadline(request, Duration::from_millis(300))
            .await;
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        markers.push(marker);
    }
    nix::sys::signal::kill(server, nix::sys::signal::Signal::SIGCONT).unwrap();
    let action = runner.action();
    let after = action.path.join("ran");
    let request = shell_request(&action, &format!("echo after >> {}", after.display()));
    runner.run_successfully(&action, request).await;
    let stopped = runner.stop();
    assert!(stopped.success(), "{stopped:?}");
    assert_eq!(read(&after), "after\n", "ran once");
    for marker in &markers {
        assert!(
            !marker.exists(),
            "a Run past its deadline ran: {}",
            marker.display()
        );
    }
    let ran = runner
        .log()
        .into_iter()
        .filter(|line| line.contains("action exited") || line.contains("action terminated"))
        .count();
    assert_eq!(ran, 1, "{:#?}", runner.log());
}

/// The spawn server killed while Runs are being spawned: the metric says
/// so within a second, and every Run runs its command exactly once (a
/// request the server took with it is created by the runner instead).
#[tokio::test(flavor = "multi_thread")]
async fn the_spawn_server_killed_under_load_runs_nothing_twice() {
    let runner = TestRunner::start(diagnostics_on_loopback());
    let address = diagnostics_address(&runner);
    let ran = runner.dir.path().join("ran");
    let mut runs = Vec::new();
    for index in 0..40 {
        let action = runner.action();
        let request = shell_request(&action, &format!("echo {index} >> {}", ran.display()));
        let mut client = runner.client().await;
        runs.push(tokio::spawn(async move {
            client
                .run(request)
                .await
                .map(|response| response.into_inner().exit_code)
        }));
    }
    let lines = |ran: &Path| std::fs::read_to_string(ran).unwrap_or_default();
    eventually("some Runs ran", Duration::from_secs(30), || {
        lines(&ran).lines().count() >= 5
    })
    .await;
    kill_spawn_server(&runner, &address).await;
    for (index, run) in runs.into_iter().enumerate() {
        let exit_code = run
            .await
            .unwrap()
            .unwrap_or_else(|status| panic!("Run {index}: {status:?}"));
        assert_eq!(exit_code, 0, "Run {index}");
    }
    let mut recorded: Vec<u32> = lines(&ran)
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    recorded.sort();
    assert_eq!(
        recorded,
        (0..40).collect::<Vec<u32>>(),
        "each ran exactly once"
    );
}

// ---------------------------------------------------------------------------
// actionCgroups
// ---------------------------------------------------------------------------
