//! End-to-end tests of the configuration fields that decorate the local
//! runner (and of the identity and root options of the local runner
//! itself): the real binary, configured as bb_runner would be, driven over
//! gRPC. Host paths the options name live in each test's own temporary
//! directory, never in the real `/tmp`.
//!
//! Tests that start processes as other users or chroot need root; without
//! it they print `SKIPPED (needs root)`, and fail under CI.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use rbe_runner::proto::runner::CheckReadinessRequest;
use serde_json::json;
use tonic::Code;

/// The state letter of a process (`S`, `Z`, ...), or "gone".
fn process_state(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1.to_string();
            after_name.split_whitespace().next().map(String::from)
        })
        .unwrap_or_else(|| "gone".into())
}

/// The script of an action that leaves a daemon behind: `setsid` puts it
/// in a session (and process group) of its own, out of the reach of the
/// process-group kill at the end of the action. The action waits until the
/// daemon leads its own session (field 6 of its stat), else it could end,
/// and have its group killed, before the daemon escaped. Prints its pid.
const LEAVE_A_DAEMON: &str = "setsid sh -c 'sleep 1000' & d=$!; \
    until [ \"$(cut -d' ' -f6 /proc/$d/stat)\" = \"$d\" ]; do sleep 0.01; done; echo $d";

fn stdout_pid(action_path: &Path) -> i32 {
    read(&action_path.join("stdout"))
        .trim()
        .parse()
        .expect("the action printed a pid")
}

// ---- cleanProcessTable ----

#[tokio::test]
async fn a_daemon_left_behind_by_an_action_is_gone_before_the_next_action_starts() {
    if !running_as_root("a_daemon_left_behind_by_an_action_is_gone_before_the_next_action_starts") {
        return;
    }
    // A uid of its own, so that the cleaner cannot select processes of
    // other tests running at the same time.
    const USER_ID: u32 = 48_301;
    let run_as = json!({ "runCommandsAs": { "userId": USER_ID, "groupId": USER_ID } });

    // Control: without cleaning the daemon really does outlive its action.
    let control = TestRunner::start(run_as.clone());
    let (action, result) = control.run_shell(LEAVE_A_DAEMON).await;
    assert_eq!(result.unwrap().exit_code, 0);
    let escaped = stdout_pid(&action.path);
    let state = process_state(escaped);
    // The daemon leads its own process group: kill all of it (its `sleep`
    // too), so the control leaves nothing behind.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(escaped),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        !matches!(state.as_str(), "gone" | "Z"),
        "the daemon did not escape: state {state}"
    );

    let mut config = run_as;
    config["cleanProcessTable"] = json!(true);
    let runner = TestRunner::start(config);
    let (first, result) = runner.run_shell(LEAVE_A_DAEMON).await;
    assert_eq!(result.unwrap().exit_code, 0);
    let daemon = stdout_pid(&first.path);
    let (second, result) = runner
        .run_shell(&format!(
            "cut -d' ' -f3 /proc/{daemon}/stat 2>/dev/null || echo gone"
        ))
        .await;
    assert_eq!(result.unwrap().exit_code, 0);
    // A zombie is dead; only its parent's reaping is pending.
    let seen = read(&second.path.join("stdout"));
    assert!(
        matches!(seen.trim(), "gone" | "Z"),
        "the next action saw the daemon in state {seen:?}"
    );
}

#[tokio::test]
async fn a_cancelled_action_keeps_its_grace_period_before_leftovers_are_killed() {
    if !running_as_root("a_cancelled_action_keeps_its_grace_period_before_leftovers_are_killed") {
        return;
    }
    const USER_ID: u32 = 48_302;
    let runner = TestRunner::start(json!({
        "runCommandsAs": { "userId": USER_ID, "groupId": USER_ID },
        "cleanProcessTable": true,
        "terminationGracePeriod": "10s",
    }));
    let action = runner.action();
    let root = action.path.join("root");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    // The trap takes a second to finish: cleaning the process table as soon
    // as the call is dropped would SIGKILL it first.
    let script = "trap 'sleep 1; echo done > handled; exit 0' TERM; touch started; \
                  while :; do sleep 0.1; done";
    runner
        .run_and_cancel_when(shell_request(&action, script), &root.join("started"))
        .await;
    let handled = root.join("handled");
    eventually(
        "the SIGTERM handler finishes",
        std::time::Duration::from_secs(20),
        || handled.exists(),
    )
    .await;
    assert_eq!(read(&handled), "done\n");
}

// ---- cleanTemporaryDirectories ----

#[tokio::test]
async fn a_temporary_directory_is_emptied_and_symlinks_out_of_it_keep_their_targets() {
    let host = tempfile::tempdir().unwrap();
    let scratch = host.path().join("scratch");
    let outside = host.path().join("outside");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), "keep me").unwrap();
    std::fs::write(scratch.join("stale"), "from before the runner started").unwrap();
    let runner = TestRunner::start(json!({ "cleanTemporaryDirectories": [scratch] }));

    let script = format!(
        "ls -A {s} > seen-at-start; mkdir -p {s}/a/b && echo x > {s}/a/b/f && \
         ln -s {o} {s}/to-dir && ln -s {o}/precious {s}/to-file && ln -s {o} {s}/a/deep-link",
        s = scratch.display(),
        o = outside.display()
    );
    let (action, result) = runner.run_shell(&script).await;
    assert_eq!(
        result.unwrap().exit_code,
        0,
        "{}",
        read(&action.path.join("stderr"))
    );
    assert_eq!(
        read(&action.path.join("root/seen-at-start")),
        "",
        "cleaned before the action"
    );
    assert!(scratch.is_dir(), "the directory itself is kept");
    let left: Vec<_> = std::fs::read_dir(&scratch).unwrap().collect();
    assert!(left.is_empty(), "left in the temporary directory: {left:?}");
    assert_eq!(read(&outside.join("precious")), "keep me");
}

// ---- runCommandCleaner ----

#[tokio::test]
async fn the_cleaning_command_runs_when_the_runner_becomes_busy_and_idle() {
    let host = tempfile::tempdir().unwrap();
    let log = host.path().join("cleanings");
    let runner = TestRunner::start(json!({
        "runCommandCleaner": ["sh", "-c", format!("echo cleaned >> {}", log.display())],
    }));
    let (_, result) = runner.run_shell("true").await;
    assert_eq!(result.unwrap().exit_code, 0);
    assert_eq!(read(&log), "cleaned\ncleaned\n");
}

#[tokio::test]
async fn a_failing_cleaning_command_fails_the_call_with_its_stderr() {
    let runner = TestRunner::start(json!({
        "runCommandCleaner": ["sh", "-c", "echo 'scratch volume is read-only' >&2; exit 3"],
    }));
    let (action, result) = runner.run_shell("echo ran > ran").await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("runCommandCleaner"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("scratch volume is read-only"),
        "{}",
        status.message()
    );
    assert!(
        !action.path.join("root/ran").exists(),
        "the action must not run on an unclean host"
    );
}

// ---- readinessCheckingPathnames ----

#[tokio::test]
async fn a_vanished_readiness_path_turns_a_failing_run_into_unavailable() {
    let host = tempfile::tempdir().unwrap();
    let mounted = host.path().join("nfs-is-mounted");
    std::fs::write(&mounted, "").unwrap();
    let runner = TestRunner::start(json!({ "readinessCheckingPathnames": [mounted] }));

    // With the path present, a failing action is just a failing action.
    let (_, result) = runner.run_shell("exit 1").await;
    assert_eq!(result.unwrap().exit_code, 1);

    let (action, result) = runner
        .run_shell(&format!("rm {}; exit 1", mounted.display()))
        .await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("disappeared during execution"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(&mounted.display().to_string()),
        "{}",
        status.message()
    );

    let status = runner
        .client()
        .await
        .check_readiness(CheckReadinessRequest {
            path: action.relative.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains(&mounted.display().to_string()),
        "{}",
        status.message()
    );
}

// ---- symlinkTemporaryDirectories ----

#[tokio::test]
async fn the_tmp_symlink_points_at_each_actions_own_temporary_directory() {
    let host = tempfile::tempdir().unwrap();
    let link = host.path().join("tmp");
    let runner = TestRunner::start(json!({ "symlinkTemporaryDirectories": [link] }));
    for _ in 0..2 {
        let script = format!("readlink {l}; echo written > {l}/file", l = link.display());
        let (action, result) = runner.run_shell(&script).await;
        assert_eq!(
            result.unwrap().exit_code,
            0,
            "{}",
            read(&action.path.join("stderr"))
        );
        assert_eq!(
            read(&action.path.join("stdout")).trim(),
            action.path.join("tmp").display().to_string()
        );
        assert_eq!(read(&action.path.join("tmp/file")), "written\n");
    }
}

// ---- chrootIntoInputRoot ----

#[tokio::test]
async fn a_chrooted_action_sees_only_its_input_root() {
    if !running_as_root("a_chrooted_action_sees_only_its_input_root") {
        return;
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "a static busybox is needed at /bin/busybox (apt-get install busybox-static)"
    );
    let runner = TestRunner::start(json!({ "chrootIntoInputRoot": true }));
    let action = runner.action();
    let root = action.path.join("root");
    std::fs::create_dir(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("only-in-the-input-root"), "").unwrap();
    let request = action.request(
        vec!["/bin/busybox".into(), "ls".into(), "/".into()],
        vec![("PATH".into(), "/bin".into())],
    );
    runner.run_successfully(&action, request).await;
    assert_eq!(
        read(&action.path.join("stdout")),
        "bin\nonly-in-the-input-root\n"
    );
}

// ---- runCommandsAs ----

#[tokio::test]
async fn an_action_run_as_another_user_reports_that_identity() {
    if !running_as_root("an_action_run_as_another_user_reports_that_identity") {
        return;
    }
    let runner = TestRunner::start(json!({
        "runCommandsAs": { "userId": 65534, "groupId": 65534, "additionalGroupIds": [65533] },
    }));
    let (action, result) = runner.run_shell("id -u; id -g; id -G").await;
    assert_eq!(
        result.unwrap().exit_code,
        0,
        "{}",
        read(&action.path.join("stderr"))
    );
    assert_eq!(
        read(&action.path.join("stdout")),
        "65534\n65534\n65534 65533\n"
    );
}

// ---- global.setUmask ----

#[tokio::test]
async fn set_umask_applies_to_actions() {
    let runner = TestRunner::start(json!({ "global": { "setUmask": { "umask": 0o027 } } }));
    let (action, result) = runner.run_shell("umask; touch file; mkdir dir").await;
    assert_eq!(
        result.unwrap().exit_code,
        0,
        "{}",
        read(&action.path.join("stderr"))
    );
    assert_eq!(read(&action.path.join("stdout")), "0027\n");
    let mode = |name: &str| {
        std::fs::metadata(action.path.join("root").join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("file"), 0o640);
    assert_eq!(mode("dir"), 0o750);
}

// ---- symlinkTemporaryDirectories: one action at a time ----

#[tokio::test]
async fn a_concurrent_run_is_refused_while_symlinking_temporary_directories() {
    let host = tempfile::tempdir().unwrap();
    let link = host.path().join("tmp");
    let go = host.path().join("go");
    let runner = TestRunner::start(json!({ "symlinkTemporaryDirectories": [link] }));
    let first = runner.action();
    let request = shell_request(
        &first,
        &format!(
            "touch started; n=0; while [ ! -e {} ] && [ $n -lt 1200 ]; do n=$((n+1)); sleep 0.05; done",
            go.display()
        ),
    );
    let mut client = runner.client().await;
    let call = tokio::spawn(async move { client.run(request).await });
    let started = first.path.join("root/started");
    eventually(
        "the first action started",
        std::time::Duration::from_secs(20),
        || started.exists(),
    )
    .await;

    let second = runner.action();
    let status = runner
        .client()
        .await
        .run(shell_request(&second, "true"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert!(
        status.message().contains("one action at a time"),
        "{}",
        status.message()
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), first.path.join("tmp"));

    std::fs::write(&go, "").unwrap();
    assert_eq!(call.await.unwrap().unwrap().into_inner().exit_code, 0);
}

#[tokio::test]
async fn run_commands_as_without_the_privileges_is_refused_at_startup() {
    if !running_as_root("run_commands_as_without_the_privileges_is_refused_at_startup") {
        return;
    }
    use std::os::unix::process::CommandExt;
    // Started as root, the test can start the runner as an unprivileged
    // user, which must refuse rather than fail every action with EPERM.
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let build = host.path().join("build");
    std::fs::create_dir(&build).unwrap();
    let config = host.path().join("runner.jsonnet");
    let text = json!({
        "buildDirectoryPath": build,
        "grpcServers": [{
            "listenPaths": [host.path().join("runner.sock")],
            "authenticationPolicy": { "allow": {} },
        }],
        "runCommandsAs": { "userId": 65534, "groupId": 65534 },
    });
    std::fs::write(&config, text.to_string()).unwrap();
    let output = std::process::Command::new(BIN)
        .arg(&config)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the runner started: {stderr}");
    assert!(
        stderr.contains("runCommandsAs needs rbe-runner to run as root"),
        "{stderr}"
    );
}
