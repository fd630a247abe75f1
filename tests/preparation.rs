//! Where actions are prepared, decided once at startup from the build
//! directory's filesystem and named in the startup line (issue 23): on the
//! async workers for a local filesystem, on the blocking pool for FUSE
//! (bb_worker's virtual build directory), whose every operation may wait.

mod common;

use common::slow_fuse::SlowFuse;
use common::*;
use rbe_runner::cli::exec::ActionDirectory;
use serde_json::json;

/// The runner's startup line that says `what`.
fn startup_line(runner: &TestRunner, what: &str) -> String {
    runner
        .log()
        .into_iter()
        .find(|line| line.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in {:#?}", runner.log()))
}

/// The startup line about preparation.
fn preparation_line(runner: &TestRunner) -> String {
    startup_line(runner, "preparing actions on")
}

/// Why it matters: on tmpfs preparing takes microseconds, less than a
/// hand-off to the blocking pool; and actions still run there.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_directory_on_tmpfs_is_prepared_on_the_async_workers() {
    if !running_as_root("a_build_directory_on_tmpfs_is_prepared_on_the_async_workers") {
        return;
    }
    let tmpfs = Tmpfs::mount("size=16m");
    let runner = TestRunner::start(json!({ "buildDirectoryPath": tmpfs.dir.path() }));
    let line = preparation_line(&runner);
    assert!(
        line.contains("preparing actions on the async workers"),
        "{line}"
    );
    assert!(line.contains("filesystem=tmpfs"), "{line}");

    let stdout = run_shell_in(&runner, tmpfs.dir.path(), "echo prepared here").await;
    assert_eq!(stdout, "prepared here\n");
}

/// Runs `sh -c script` in a fresh action directory beneath `directory`
/// (the runner's build directory), which must succeed; returns its stdout.
async fn run_shell_in(runner: &TestRunner, directory: &std::path::Path, script: &str) -> String {
    let action = ActionDirectory::create(directory).unwrap();
    let response = runner
        .client()
        .await
        .run(shell_request(&action, script))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.exit_code,
        0,
        "{script}: {}",
        read(&action.path.join("stderr"))
    );
    read(&action.path.join("stdout"))
}

/// Why it matters: on FUSE a lookup or a create may wait for the server as
/// long as it likes; on an async worker that would stall every call.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_directory_on_fuse_is_prepared_on_the_blocking_pool() {
    let test = "a_build_directory_on_fuse_is_prepared_on_the_blocking_pool";
    if !fuse_available(test) {
        return;
    }
    let mounted = tempfile::tempdir().unwrap();
    let _fuse = SlowFuse::mount(mounted.path(), std::time::Duration::from_millis(10));
    let runner = TestRunner::start(json!({ "buildDirectoryPath": mounted.path() }));
    let line = preparation_line(&runner);
    assert!(
        line.contains("preparing actions on the blocking pool"),
        "{line}"
    );
    assert!(line.contains("filesystem=fuse"), "{line}");
    assert!(line.contains("blocking_threads=512"), "{line}");
}

/// The context switches of each of the runner's threads but its first
/// (the async worker), by thread id.
fn other_threads_switches(runner: &TestRunner) -> std::collections::BTreeMap<u32, u64> {
    let pid = runner.pid();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            if tid == pid {
                return None;
            }
            // A thread that has just exited has no status left to read.
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let switches = status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some((tid, switches))
        })
        .collect()
}

/// Why it matters: bb_worker asks CheckReadiness before every action it
/// takes. On a local build directory the path is looked up on the async
/// worker, as actions are prepared there: no other thread of the runner
/// is started or woken for it (a hand-off to the blocking pool and back
/// cost two thread switches per call).
#[tokio::test(flavor = "multi_thread")]
async fn check_readiness_on_tmpfs_wakes_no_other_thread() {
    if !running_as_root("check_readiness_on_tmpfs_wakes_no_other_thread") {
        return;
    }
    let tmpfs = Tmpfs::mount("size=16m");
    let runner = TestRunner::start(json!({ "buildDirectoryPath": tmpfs.dir.path() }));
    let action = ActionDirectory::create(tmpfs.dir.path()).unwrap();
    let mut client = runner.client().await;
    let request =
        |path: &str| rbe_runner::proto::runner::CheckReadinessRequest { path: path.into() };
    // Startup's own work on other threads is done by the first answer.
    client.check_readiness(request("")).await.unwrap();

    let before = other_threads_switches(&runner);
    let name = action
        .path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for _ in 0..100 {
        client.check_readiness(request(&name)).await.unwrap();
        let missing = client
            .check_readiness(request(&format!("{name}/missing")))
            .await
            .unwrap_err();
        // bb_runner's answer for a path that does not exist.
        assert_eq!(missing.code(), tonic::Code::Internal, "{missing:?}");
        assert!(missing.message().contains("missing"), "{missing:?}");
    }
    let after = other_threads_switches(&runner);
    // A thread present before and after did nothing meanwhile, and none
    // was started (a blocking thread that ended after idling is gone from
    // `after`, and is not counted).
    let woken: Vec<_> = after
        .iter()
        .filter(|(tid, switches)| before.get(tid) != Some(switches))
        .collect();
    assert!(
        woken.is_empty(),
        "threads other than the async worker ran for CheckReadiness: {woken:?} (before: {before:?})"
    );
}

/// Why it matters: without `pid`, the spawn server sets an action's
/// namespaces up itself, changing into the action's working directory;
/// on tmpfs that cannot wait, and the action runs in them.
#[tokio::test(flavor = "multi_thread")]
async fn on_tmpfs_the_spawn_server_sets_up_namespaces_without_pid() {
    if !running_as_root("on_tmpfs_the_spawn_server_sets_up_namespaces_without_pid") {
        return;
    }
    let tmpfs = Tmpfs::mount("size=16m");
    let runner = TestRunner::start(json!({
        "buildDirectoryPath": tmpfs.dir.path(),
        "isolation": { "hostname": "set-up-by-the-server", "tmp": "private" },
    }));
    let line = startup_line(&runner, "actions run isolated");
    assert!(line.contains("set_up_by_spawn_server=true"), "{line}");
    let stdout = run_shell_in(&runner, tmpfs.dir.path(), "hostname; ls -A /tmp").await;
    // Its own host name, and a private /tmp: its temporary directory, empty.
    assert_eq!(stdout, "set-up-by-the-server\n");
}
