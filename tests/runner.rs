//! End-to-end tests of the runner service: the real binary on a temporary
//! Unix socket, driven over gRPC as bb_worker drives it. Each test names the
//! point of the Run semantics it proves.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::Duration;

use common::*;
use rbe_runner::proto::runner::{CheckReadinessRequest, RunRequest};
use serde_json::json;
use tonic::Code;

/// Generous bound for effects that have no notification (processes dying).
const SETTLE: Duration = Duration::from_secs(20);

// ---- 1. arguments ----

#[tokio::test]
async fn empty_arguments_are_invalid() {
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    let request = action.request(vec![], vec![]);
    let status = runner.client().await.run(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("arguments"),
        "{}",
        status.message()
    );
}

// ---- 2. paths stay inside the build directory ----

#[tokio::test]
async fn paths_escaping_the_build_directory_are_refused_and_nothing_is_written_outside() {
    let runner = TestRunner::start(json!({}));
    let outside = runner.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let action = runner.action();
    symlink(&outside, action.path.join("link-out")).unwrap();
    let base = shell_request(&action, "echo hi");
    let escapes: Vec<(&str, RunRequest)> = vec![
        (
            "stdout_path",
            RunRequest {
                stdout_path: outside.join("abs").display().to_string(),
                ..base.clone()
            },
        ),
        (
            "stdout_path",
            RunRequest {
                stdout_path: format!("{}/../../outside/dotdot", action.relative),
                ..base.clone()
            },
        ),
        (
            "stderr_path",
            RunRequest {
                stderr_path: format!("{}/link-out/via-symlink", action.relative),
                ..base.clone()
            },
        ),
        (
            "input_root_directory",
            RunRequest {
                input_root_directory: "/".into(),
                ..base.clone()
            },
        ),
        (
            "input_root_directory",
            RunRequest {
                input_root_directory: format!("{}/link-out", action.relative),
                ..base.clone()
            },
        ),
        (
            "working_directory",
            RunRequest {
                working_directory: "../../..".into(),
                ..base.clone()
            },
        ),
        (
            "temporary_directory",
            RunRequest {
                temporary_directory: "..".into(),
                ..base.clone()
            },
        ),
    ];
    let mut client = runner.client().await;
    for (field, request) in escapes {
        let status = client.run(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{field}: {}",
            status.message()
        );
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let written: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert!(
        written.is_empty(),
        "files were created outside: {written:?}"
    );
}

// ---- 3. stdout/stderr are created exclusively and written by the child ----

#[tokio::test]
async fn existing_output_file_is_an_error_and_is_not_clobbered() {
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    std::fs::write(action.path.join("stdout"), "precious").unwrap();
    let status = runner
        .client()
        .await
        .run(shell_request(&action, "echo overwritten"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("stdout_path"),
        "{}",
        status.message()
    );
    assert_eq!(read(&action.path.join("stdout")), "precious");
}

#[tokio::test]
async fn a_64_mib_stdout_arrives_whole() {
    let runner = TestRunner::start(json!({}));
    let (action, result) = runner
        .run_shell("head -c 67108864 /dev/zero; echo err >&2")
        .await;
    assert_eq!(result.unwrap().exit_code, 0);
    let metadata = std::fs::metadata(action.path.join("stdout")).unwrap();
    assert_eq!(metadata.len(), 64 * 1024 * 1024);
    assert_eq!(read(&action.path.join("stderr")), "err\n");
}

// ---- 4. working directory and PATH lookup ----

#[tokio::test]
async fn working_directory_is_relative_to_the_input_root() {
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    std::fs::create_dir_all(action.path.join("root/pkg/sub")).unwrap();
    let request = RunRequest {
        working_directory: "pkg/sub".into(),
        ..shell_request(&action, "pwd")
    };
    let response = runner
        .client()
        .await
        .run(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.exit_code, 0);
    let pwd = read(&action.path.join("stdout"));
    assert_eq!(
        pwd.trim(),
        action.path.join("root/pkg/sub").display().to_string()
    );
}

#[tokio::test]
async fn relative_path_entries_resolve_in_the_working_directory_and_argv0_stays_relative() {
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    let tool = action.path.join("root/tools/bin/hello");
    std::fs::create_dir_all(tool.parent().unwrap()).unwrap();
    std::fs::write(&tool, "#!/bin/sh\necho \"0=$0 1=$1\"\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let request = action.request(
        vec!["hello".into(), "world".into()],
        vec![("PATH".into(), format!("/nonexistent:tools/bin:{TEST_PATH}"))],
    );
    runner.run_successfully(&action, request).await;
    assert_eq!(
        read(&action.path.join("stdout")),
        "0=tools/bin/hello 1=world\n"
    );
}

#[tokio::test]
async fn program_not_in_path_is_invalid_and_named() {
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    let request = action.request(
        vec!["no-such-program-xyz".into()],
        vec![("PATH".into(), "/nonexistent:rel/bin".into())],
    );
    let status = runner.client().await.run(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("no-such-program-xyz"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("/nonexistent:rel/bin"),
        "{}",
        status.message()
    );
}

// ---- 5. environment ----

#[tokio::test]
async fn environment_is_exactly_the_request_plus_tmpdir() {
    let runner =
        TestRunner::start_with(json!({ "setTmpdirEnvironmentVariable": true }), |command| {
            command.env("RUNNER_SECRET_MARKER", "must-not-leak");
        });
    let action = runner.action();
    let request = action.request(
        vec!["/usr/bin/env".into()],
        vec![
            ("PATH".into(), TEST_PATH.into()),
            ("FOO".into(), "bar baz".into()),
        ],
    );
    let response = runner
        .client()
        .await
        .run(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.exit_code, 0);
    let mut lines: Vec<String> = read(&action.path.join("stdout"))
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    let mut expected = vec![
        "FOO=bar baz".to_string(),
        format!("PATH={TEST_PATH}"),
        format!("TMPDIR={}", action.path.join("tmp").display()),
    ];
    expected.sort();
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn tmpdir_from_the_request_wins() {
    let runner = TestRunner::start(json!({ "setTmpdirEnvironmentVariable": true }));
    let action = runner.action();
    let request = action.request(
        vec!["/bin/sh".into(), "-c".into(), "echo $TMPDIR".into()],
        vec![("TMPDIR".into(), "/custom".into())],
    );
    runner.client().await.run(request).await.unwrap();
    assert_eq!(read(&action.path.join("stdout")), "/custom\n");
}

// ---- 6. spawn failures ----

#[tokio::test]
async fn spawn_failures_are_invalid_arguments_naming_the_path() {
    let runner = TestRunner::start(json!({}));
    let mut client = runner.client().await;
    // (program, how the input root is prepared): EACCES, ENOEXEC, EACCES on
    // a directory, ENOENT relative and absolute.
    type Prepare = fn(&std::path::Path);
    let cases: [(&str, Prepare); 5] = [
        ("./not-executable", |root| {
            std::fs::write(root.join("not-executable"), "#!/bin/sh\n").unwrap()
        }),
        ("./garbage", |root| {
            std::fs::write(root.join("garbage"), [0u8, 1, 2, 3, 4, 5, 6, 7]).unwrap();
            std::fs::set_permissions(root.join("garbage"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }),
        ("./a-directory", |root| {
            std::fs::create_dir(root.join("a-directory")).unwrap()
        }),
        ("./missing", |_| {}),
        ("/nonexistent/tool", |_| {}),
    ];
    for (program, prepare) in cases {
        let action = runner.action();
        prepare(&action.path.join("root"));
        let request = action.request(vec![program.into()], vec![]);
        let status = client.run(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{program}: {}",
            status.message()
        );
        assert!(
            status.message().contains(program),
            "{program}: {}",
            status.message()
        );
    }
}

// ---- 7. exit codes and signals ----

#[tokio::test]
async fn exit_code_is_reported_as_is() {
    let runner = TestRunner::start(json!({}));
    let (_, result) = runner.run_shell("exit 42").await;
    let response = result.unwrap();
    assert_eq!(response.exit_code, 42);
    assert_eq!(posix_usage(&response).termination_signal, "");
}

#[tokio::test]
async fn killed_by_a_signal_is_minus_one_and_the_signal_name() {
    let runner = TestRunner::start(json!({}));
    for (signal, name) in [("SEGV", "SEGV"), ("KILL", "KILL"), ("TERM", "TERM")] {
        let (_, result) = runner.run_shell(&format!("kill -{signal} $$")).await;
        let response = result.unwrap();
        assert_eq!(response.exit_code, -1, "{signal}");
        assert_eq!(posix_usage(&response).termination_signal, name);
    }
}

// ---- 8. each action's own rusage ----

#[tokio::test]
async fn resource_usage_is_the_actions_own() {
    let runner = TestRunner::start(json!({}));
    // A big allocation (dd's 64 MiB buffer) runs concurrently with a small
    // action; with RUSAGE_CHILDREN the small one would report the big RSS.
    let big = runner.run_shell("dd if=/dev/zero of=/dev/null bs=64M count=4 2>/dev/null");
    let small = runner.run_shell("sleep 0.5; true");
    let ((_, big), (_, small)) = tokio::join!(big, small);
    let (big, small) = (big.unwrap(), small.unwrap());
    let any = &big.resource_usage[0];
    assert_eq!(
        any.type_url,
        "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage"
    );
    let big_rss = posix_usage(&big).maximum_resident_set_size;
    let small_rss = posix_usage(&small).maximum_resident_set_size;
    assert!(
        big_rss >= 64 * 1024 * 1024,
        "dd's maxrss in bytes: {big_rss}"
    );
    assert!(
        small_rss < 32 * 1024 * 1024,
        "the small action's maxrss: {small_rss}"
    );
    assert!(small_rss > 0);
}

// ---- 9. concurrency ----

#[tokio::test]
async fn six_actions_run_concurrently() {
    let runner = TestRunner::start(json!({}));
    let barrier = runner.dir.path().join("barrier");
    std::fs::create_dir(&barrier).unwrap();
    // Each action creates its file, then waits until all six exist. Only
    // concurrent execution lets any of them finish before the timeout.
    let script = |i: usize| {
        format!(
            "touch {b}/{i}; n=0; while [ $(ls {b} | wc -l) -lt 6 ]; do n=$((n+1)); [ $n -gt 600 ] && exit 1; sleep 0.1; done",
            b = barrier.display()
        )
    };
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let mut client = runner.client().await;
        let request = shell_request(&runner.action(), &script(i));
        calls.spawn(async move { client.run(request).await });
    }
    let all = async {
        while let Some(result) = calls.join_next().await {
            assert_eq!(result.unwrap().unwrap().into_inner().exit_code, 0);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the six actions did not meet at the barrier");
}

// ---- 10. cancellation and leftovers ----

#[tokio::test]
async fn cancelled_action_gets_sigterm_and_its_whole_group_is_gone() {
    let runner = TestRunner::start(json!({ "terminationGracePeriod": "5s" }));
    let action = runner.action();
    let script =
        "trap 'echo got-TERM > term; exit 0' TERM; sleep 1000 & echo $! > bg; echo $$ > pid; \
                  touch ready; wait";
    let root = action.path.join("root");
    runner
        .run_and_cancel_when(shell_request(&action, script), &root.join("ready"))
        .await;
    let leader: i32 = read(&root.join("pid")).trim().parse().unwrap();
    let background: i32 = read(&root.join("bg")).trim().parse().unwrap();
    eventually("the trap runs", SETTLE, || root.join("term").exists()).await;
    assert_eq!(read(&root.join("term")), "got-TERM\n");
    eventually("the group is gone", SETTLE, || {
        !process_exists(leader) && !process_exists(background)
    })
    .await;
    eventually("the outcome is logged", SETTLE, || {
        runner.log().join("\n").contains("stopped by SIGTERM")
    })
    .await;
    // Dropped well before any deadline (the call had none): a cancellation.
    let log = runner.log().join("\n");
    assert!(log.contains("reason=Cancelled"), "{log}");
    assert!(!log.contains("reason=Deadline"), "{log}");
}

/// bb_worker enforces action timeouts by the call's deadline; the runner
/// must tell that apart from a cancellation, from the `grpc-timeout` the
/// client sent, so that operators see timeouts as timeouts.
#[tokio::test]
async fn a_call_whose_deadline_passes_stops_its_action_as_a_deadline() {
    let runner = TestRunner::start(json!({ "terminationGracePeriod": "5s" }));
    let action = runner.action();
    let script = "trap 'exit 0' TERM; touch ready; while :; do sleep 0.1; done";
    let request = shell_request(&action, script);
    let status = runner
        .run_past_deadline(request, Duration::from_secs(2))
        .await;
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    eventually("the termination is logged", SETTLE, || {
        runner.log().join("\n").contains("action terminated")
    })
    .await;
    let log = runner.log().join("\n");
    assert!(log.contains("reason=Deadline"), "{log}");
    assert!(!log.contains("reason=Cancelled"), "{log}");
}

#[tokio::test]
async fn action_ignoring_sigterm_is_killed_at_the_grace_deadline() {
    let runner = TestRunner::start(json!({ "terminationGracePeriod": "1s" }));
    let action = runner.action();
    let script = "trap '' TERM; echo $$ > pid; touch ready; while :; do sleep 0.1; done";
    let root = action.path.join("root");
    runner
        .run_and_cancel_when(shell_request(&action, script), &root.join("ready"))
        .await;
    let leader: i32 = read(&root.join("pid")).trim().parse().unwrap();
    eventually("the action is killed", SETTLE, || !process_exists(leader)).await;
    eventually("the kill is logged", SETTLE, || {
        runner
            .log()
            .join("\n")
            .contains("killed with SIGKILL at the grace deadline")
    })
    .await;
}

#[tokio::test]
async fn background_children_do_not_survive_a_normal_exit() {
    let runner = TestRunner::start(json!({}));
    let (action, result) = runner.run_shell("sleep 1000 & echo $! > bg").await;
    assert_eq!(result.unwrap().exit_code, 0);
    let background: i32 = read(&action.path.join("root/bg")).trim().parse().unwrap();
    eventually("the background child is gone", SETTLE, || {
        !process_exists(background)
    })
    .await;
}

// ---- 11. readiness ----

#[tokio::test]
async fn check_readiness_requires_the_path_to_exist() {
    let runner = TestRunner::start(json!({}));
    let action = runner.action();
    let mut client = runner.client().await;
    client
        .check_readiness(CheckReadinessRequest {
            path: action.relative.clone(),
        })
        .await
        .unwrap();
    let status = client
        .check_readiness(CheckReadinessRequest {
            path: "missing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("missing"), "{}", status.message());
}

/// Why it matters: bb_runner's tests `NoPathSpecified` and `RootPath`: a
/// probe that names no path, or the build directory itself, is answered
/// OK; the empty path was answered INTERNAL, so such a probe saw a
/// healthy runner as broken.
#[tokio::test]
async fn check_readiness_with_no_path_or_the_root_succeeds() {
    let runner = TestRunner::start(json!({}));
    let mut client = runner.client().await;
    for path in ["", "."] {
        client
            .check_readiness(CheckReadinessRequest { path: path.into() })
            .await
            .unwrap_or_else(|status| panic!("path {path:?}: {status:?}"));
    }
}

// ---- 13. shutdown ----

// Multi-threaded: the test blocks in wait() while the call task runs.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_terminates_running_actions_and_removes_the_socket() {
    let mut runner = TestRunner::start(json!({ "terminationGracePeriod": "5s" }));
    let action = runner.action();
    let request = shell_request(
        &action,
        "trap 'echo got-TERM > term; exit 0' TERM; echo $$ > pid; sleep 1000 & wait",
    );
    let mut client = runner.client().await;
    let call = tokio::spawn(async move { client.run(request).await });
    let root = action.path.join("root");
    eventually("the action started", SETTLE, || root.join("pid").exists()).await;
    let status = runner.stop();
    assert!(status.success(), "runner exit status: {status}");
    assert!(!runner.socket.exists(), "socket file left behind");
    assert_eq!(read(&root.join("term")), "got-TERM\n");
    let answer = call.await.unwrap().unwrap_err();
    assert_eq!(answer.code(), Code::Unavailable, "{}", answer.message());
}

// Multi-threaded: the test blocks in wait() while the call task runs.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_with_stop_gracefully_lets_actions_finish() {
    let mut runner = TestRunner::start(json!({ "grpcServers": [{ "stopGracefully": true }] }));
    let action = runner.action();
    let marker = runner.dir.path().join("go");
    let script = format!(
        "echo started > started; while [ ! -e {} ]; do sleep 0.05; done; echo finished",
        marker.display()
    );
    let request = shell_request(&action, &script);
    let mut client = runner.client().await;
    let call = tokio::spawn(async move { client.run(request).await });
    let root = action.path.join("root");
    eventually("the action started", SETTLE, || {
        root.join("started").exists()
    })
    .await;
    runner.signal_terminate();
    // The runner must let the action run; allow it to finish now.
    std::fs::write(&marker, "").unwrap();
    let response = call.await.unwrap().unwrap().into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(read(&action.path.join("stdout")), "finished\n");
    let status = runner.wait();
    assert!(status.success(), "runner exit status: {status}");
    assert!(!runner.socket.exists(), "socket file left behind");
}

// ---- health and reflection ----

#[tokio::test]
async fn health_service_reports_serving() {
    let runner = TestRunner::start(json!({}));
    let mut health = tonic_health::pb::health_client::HealthClient::new(runner.channel().await);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "buildbarn.runner.Runner".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

// ---- 10. subreaper: orphans are reaped ----

/// Children of the runner process that are zombies (exited, not reaped).
fn zombie_children(pid: u32) -> Vec<String> {
    let mut zombies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            if stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
            {
                zombies.push(child.to_string());
            }
        }
    }
    zombies
}

#[tokio::test]
async fn orphans_of_actions_are_adopted_and_reaped() {
    let runner = TestRunner::start(json!({}));
    // The grandchild escapes the action's process group (setsid) and
    // outlives the action; when it exits it has been re-parented to the
    // runner (a subreaper), which must reap it.
    let (action, result) = runner
        .run_shell(
            "setsid sh -c 'echo $$ > orphan.tmp; mv orphan.tmp orphan; sleep 2' < /dev/null > /dev/null 2>&1 &
             while [ ! -e orphan ]; do sleep 0.05; done",
        )
        .await;
    assert_eq!(result.unwrap().exit_code, 0);
    let root = action.path.join("root");
    eventually("the orphan records its pid", SETTLE, || {
        root.join("orphan").exists()
    })
    .await;
    let orphan: i32 = read(&root.join("orphan")).trim().parse().unwrap();
    let parent = std::fs::read_to_string(format!("/proc/{orphan}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("PPid:").map(|pid| pid.trim().to_string()))
        .unwrap();
    assert_eq!(
        parent,
        runner.pid().to_string(),
        "the runner adopts orphans"
    );
    eventually("the orphan exits and is reaped", SETTLE, || {
        !process_exists(orphan)
    })
    .await;
    assert!(zombie_children(runner.pid()).is_empty());
}

// ---- the runner is not the OOM killer's first choice ----

#[tokio::test]
async fn the_runner_lowers_its_oom_score_adj_and_actions_keep_the_initial_one() {
    let initial: i32 = read(std::path::Path::new("/proc/self/oom_score_adj"))
        .trim()
        .parse()
        .unwrap();
    // A refusal to lower is a debug line here (see below): show it.
    let runner = TestRunner::start_with(json!({}), |command| {
        command.env("RUST_LOG", "info,rbe_runner=debug");
    });
    let (action, result) = runner.run_shell("cat /proc/self/oom_score_adj").await;
    assert_eq!(result.unwrap().exit_code, 0);
    assert_eq!(
        read(&action.path.join("stdout")).trim(),
        initial.to_string()
    );
    let own: i32 = read(std::path::Path::new(&format!(
        "/proc/{}/oom_score_adj",
        runner.pid()
    )))
    .trim()
    .parse()
    .unwrap();
    // Lowering needs CAP_SYS_RESOURCE (some sandboxes drop it even for
    // root); the runner must say which case it is in, and be right.
    let log = runner.log().join("\n");
    if log.contains("lowered the runner's oom_score_adj") {
        assert_eq!(own, (initial - 500).max(-1000));
    } else {
        let refused = runner
            .log()
            .into_iter()
            .find(|line| line.contains("cannot lower the runner's oom_score_adj"))
            .unwrap_or_else(|| panic!("{log}"));
        // Expected without actionCgroups (the development configuration):
        // not worth more than a debug line.
        assert!(refused.contains("DEBUG"), "{refused}");
        assert_eq!(own, initial);
    }
}

// Multi-threaded: the test blocks in wait().
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_actions_whose_calls_were_dropped() {
    let mut runner = TestRunner::start(json!({
        "terminationGracePeriod": "10s",
        "grpcServers": [{ "stopGracefully": true }],
    }));
    let action = runner.action();
    let root = action.path.join("root");
    // The handler takes a second: a runner that exits as soon as no call
    // is in flight would abandon it in the middle.
    let script = "trap 'sleep 1; echo done > handled; exit 0' TERM; touch ready; \
                  while :; do sleep 0.1; done";
    runner
        .run_and_cancel_when(shell_request(&action, script), &root.join("ready"))
        .await;
    runner.signal_terminate();
    let status = runner.wait();
    assert!(status.success(), "runner exit status: {status}");
    assert_eq!(read(&root.join("handled")), "done\n");
}

// Multi-threaded: the test blocks in wait().
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_terminates_actions_a_graceful_stop_waits_for() {
    let mut runner = TestRunner::start(json!({ "grpcServers": [{ "stopGracefully": true }] }));
    let action = runner.action();
    let root = action.path.join("root");
    let script =
        "trap 'echo got-TERM > term; exit 0' TERM; touch ready; while :; do sleep 0.05; done";
    let request = shell_request(&action, script);
    let mut client = runner.client().await;
    let call = tokio::spawn(async move { client.run(request).await });
    eventually("the action started", SETTLE, || root.join("ready").exists()).await;
    runner.signal_terminate();
    eventually("the graceful stop is logged", SETTLE, || {
        runner
            .log()
            .join("\n")
            .contains("letting running actions finish")
    })
    .await;
    assert!(
        !root.join("term").exists(),
        "a graceful stop must not terminate actions"
    );
    runner.signal_terminate();
    let answer = call.await.unwrap().unwrap_err();
    assert_eq!(answer.code(), Code::Unavailable, "{}", answer.message());
    assert_eq!(read(&root.join("term")), "got-TERM\n");
    assert!(runner.wait().success());
}

/// Why it matters: capacity analysts read `maximumResidentSetSize`. A
/// child that shared the runner's memory until exec (CLONE_VM, as
/// posix_spawn does) would report the runner's whole resident set for
/// every action; a copy carries only the runner's anonymous pages.
#[tokio::test]
async fn a_tiny_actions_maxrss_does_not_include_the_runners_resident_set() {
    let runner = TestRunner::start(json!({}));
    let response = runner.run_true().await.1.unwrap();
    let maxrss = posix_usage(&response).maximum_resident_set_size as u64;
    let (resident, anonymous) = (
        status_bytes(runner.pid(), "VmRSS:"),
        status_bytes(runner.pid(), "RssAnon:"),
    );
    assert!(maxrss > 0);
    assert!(
        maxrss < resident && maxrss <= anonymous + 4 * 1024 * 1024,
        "/bin/true's maxrss {maxrss} against the runner's RSS {resident} (anonymous {anonymous})"
    );
}

// ---- how actions are started ----

/// Why it matters: operators must be able to tell from the log whether
/// their seccomp profile let the runner use clone3, and CI forces the
/// fallback to keep both ways of starting actions proven.
#[tokio::test]
async fn the_startup_log_says_how_actions_are_started_and_the_variable_forces_the_fallback() {
    for (setting, expected) in [("auto", "clone3"), ("fallback", "clone")] {
        let runner = TestRunner::start_with(json!({}), |command| {
            command.env("RBE_RUNNER_SPAWN", setting);
        });
        let (line, method) = startup_field(&runner, "method");
        if setting == "auto" && method != expected {
            // A machine whose seccomp profile refuses clone3 falls back,
            // with the reason; CI's machine has clone3.
            skip(
                "the_startup_log_says_how_actions_are_started_and_the_variable_forces_the_fallback",
                &format!("its clone3 half: the runner fell back ({line})"),
            );
        } else {
            assert_eq!(method, expected, "{line}");
        }
        // Actions start either way.
        let (_, response) = runner.run_shell("exit 3").await;
        assert_eq!(response.unwrap().exit_code, 3, "{setting}");
    }
}

/// Why it matters: operators must be able to tell whether the runner waits
/// for actions on pidfds or with its reaper thread (kernels before 5.4,
/// older seccomp profiles), and CI forces the thread to keep it proven.
#[tokio::test]
async fn the_startup_log_says_how_actions_are_waited_for_and_the_variable_forces_the_thread() {
    for setting in ["auto", "thread"] {
        let runner = TestRunner::start_with(json!({}), |command| {
            command.env("RBE_RUNNER_WAIT", setting);
        });
        let (line, waiting) = startup_field(&runner, "waiting");
        let expected = if setting == "auto" { "pidfd" } else { "thread" };
        assert_eq!(waiting, expected, "{line}");
        let (_, response) = runner.run_shell("exit 3").await;
        assert_eq!(response.unwrap().exit_code, 3, "{setting}");
    }
}

/// The line that says how actions are started, and its field `name`.
fn startup_field(runner: &TestRunner, name: &str) -> (String, String) {
    let log = runner.log().join("\n");
    let line = log
        .lines()
        .find(|line| line.contains("spawning actions with"))
        .unwrap_or_else(|| panic!("no spawn method in the log:\n{log}"))
        .to_string();
    let value = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} field: {line}"))
        .to_string();
    (line, value)
}

#[test]
fn an_unknown_spawn_setting_stops_startup_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("build")).unwrap();
    let config = dir.path().join("runner.jsonnet");
    let socket = dir.path().join("runner.sock");
    std::fs::write(
        &config,
        json!({
            "buildDirectoryPath": dir.path().join("build"),
            "grpcServers": [{ "listenPaths": [&socket], "authenticationPolicy": { "allow": {} } }],
        })
        .to_string(),
    )
    .unwrap();
    let output = std::process::Command::new(runner_under_test())
        .arg(&config)
        .env("RBE_RUNNER_SPAWN", "vfork")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("RBE_RUNNER_SPAWN=\"vfork\""), "{stderr}");
    assert!(!socket.exists(), "it must not serve");
}

/// Why it matters: the spawn server creates every action's process; if it
/// is killed, the runner must go on creating them itself, each action
/// still the runner's child with its own exit code, and say so.
#[tokio::test]
async fn actions_still_start_when_the_spawn_server_is_killed() {
    let runner = TestRunner::start(json!({}));
    let server = spawn_server_of(runner.pid()).expect("the runner's spawn server");
    // Each action prints its parent: the runner, with or without server.
    let run_as_child_of_the_runner = |code: i64| {
        let runner = &runner;
        async move {
            let (action, response) = runner.run_shell(&format!("echo $PPID; exit {code}")).await;
            assert_eq!(response.unwrap().exit_code, code);
            assert_eq!(
                read(&action.path.join("stdout")).trim(),
                runner.pid().to_string(),
                "a child of the runner"
            );
        }
    };
    run_as_child_of_the_runner(5).await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for code in [6, 7] {
        run_as_child_of_the_runner(code).await;
    }
    let log = runner.log().join("\n");
    assert!(log.contains("the spawn server is gone"), "{log}");
    assert_eq!(
        log.matches("the spawn server is gone").count(),
        1,
        "said once: {log}"
    );
}

/// Why it matters: the spawn server must live as long as the runner. It
/// once died with the runner's thread that had started it (a blocking-pool
/// thread, which exits after 10 s idle), leaving the runner to create
/// every process itself, silently, at twice the CPU.
#[tokio::test]
async fn the_spawn_server_outlives_the_thread_that_started_it() {
    let runner = TestRunner::start(json!({}));
    let server = spawn_server_of(runner.pid()).expect("the runner's spawn server");
    let (_, response) = runner.run_shell("exit 0").await;
    assert_eq!(response.unwrap().exit_code, 0);
    // Longer than tokio's blocking-pool threads stay idle: nothing to
    // await, the runner is idle on purpose.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (_, response) = runner.run_shell("exit 4").await;
    assert_eq!(response.unwrap().exit_code, 4);
    assert!(process_exists(server), "the spawn server died");
    assert_eq!(spawn_server_of(runner.pid()), Some(server));
    let log = runner.log().join("\n");
    assert!(!log.contains("the spawn server is gone"), "{log}");
}

// ---- descriptors the runner inherited ----

/// The descriptor number the runner inherits in the test below.
const INHERITED_FD: i32 = 7;

/// Why it matters: a runner started by a shell or supervisor that leaks a
/// descriptor (`exec 7<file`) would hand it to every action, on both
/// spawn paths: an action could read or write what the runner's parent
/// opened.
#[tokio::test]
async fn a_descriptor_the_runner_inherited_reaches_no_action() {
    let inherited = std::fs::File::open("/etc/hostname").unwrap();
    let runner = TestRunner::start_with(json!({}), |command| {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let source = inherited.as_raw_fd();
        let place = move || {
            // SAFETY: dup2 takes only numbers; it leaves the copy without
            // close-on-exec, as a shell's `exec 7<file` does.
            if unsafe { libc::dup2(source, INHERITED_FD) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child before exec and
        // calls only dup2, which is async-signal-safe.
        unsafe { command.pre_exec(place) };
    });
    let in_runner = format!("/proc/{}/fd/{INHERITED_FD}", runner.pid());
    assert!(
        std::fs::read_link(&in_runner).is_ok(),
        "the runner inherited descriptor {INHERITED_FD}"
    );
    let script = format!("if [ -e /proc/$$/fd/{INHERITED_FD} ]; then echo leaked; fi");
    for path in ["spawn server", "runner itself"] {
        if path == "runner itself" {
            runner.without_spawn_server(SETTLE).await;
        }
        let (action, response) = runner.run_shell(&script).await;
        assert_eq!(response.unwrap().exit_code, 0, "{path}");
        assert_eq!(read(&action.path.join("stdout")), "", "{path}");
    }
}
