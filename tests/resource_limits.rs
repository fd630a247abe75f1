//! Resource limits: the runner raises its own soft descriptor limit and
//! gives actions back the one it started with, on either spawn path
//! (through the spawn server, and by the runner itself once it is gone);
//! `global.setResourceLimits` sets what the runner and its actions get, and
//! a limit the kernel refuses stops startup naming it.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{read, TestRunner};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use serde_json::json;

/// The soft limit systemd gives a service, which the runner is started
/// with here.
const STARTING_SOFT: u64 = 1024;

/// A hard limit above [`STARTING_SOFT`]: the test's own, or 4096 if that is
/// lower (root may raise it).
fn hard_limit() -> u64 {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    hard.max(4096)
}

/// Starts the runner with `config` under a soft descriptor limit of
/// [`STARTING_SOFT`] and a hard one of [`hard_limit`].
fn start_under_soft_limit(config: serde_json::Value) -> TestRunner {
    let hard = hard_limit();
    TestRunner::start_with(config, |command| {
        // SAFETY: setrlimit is a single system call, async-signal-safe, and
        // touches no memory shared with the parent.
        unsafe {
            command.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, STARTING_SOFT, hard)
                    .map_err(std::io::Error::from)
            });
        }
    })
}

/// The soft and hard `RLIMIT_NOFILE` of process `pid`, from its
/// `/proc/<pid>/limits`.
fn descriptor_limits_of(pid: u32) -> (String, String) {
    let limits = read(std::path::Path::new(&format!("/proc/{pid}/limits")));
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

/// What `ulimit -n` and `ulimit -Hn` say in an action.
async fn action_descriptor_limits(runner: &TestRunner) -> String {
    let (action, ran) = runner.run_shell("ulimit -n; ulimit -Hn").await;
    let response = ran.expect("the action runs");
    assert_eq!(
        response.exit_code,
        0,
        "{}",
        read(&action.path.join("stderr"))
    );
    read(&action.path.join("stdout"))
}

#[tokio::test]
async fn actions_get_the_soft_descriptor_limit_the_runner_started_with() {
    // Why: under systemd's soft limit of 1024, network clients used up the
    // runner's descriptors and its Runs failed; the runner now raises its
    // own soft limit, but actions must still see what they would have seen
    // (as under bb_runner), on both spawn paths.
    let hard = hard_limit();
    let runner = start_under_soft_limit(json!({}));
    assert_eq!(
        descriptor_limits_of(runner.pid()),
        (hard.to_string(), hard.to_string()),
        "the runner raised its soft limit to the hard one"
    );
    let expected = format!("{STARTING_SOFT}\n{hard}\n");
    let log = runner.log();
    assert!(
        log.iter().any(
            |line| line.contains("raised the runner's soft descriptor limit")
                && line.contains(&format!("starting_soft={STARTING_SOFT}"))
                && line.contains(&format!("hard={hard}"))
        ),
        "both limits are logged: {log:#?}"
    );

    // Through the spawn server.
    assert_eq!(action_descriptor_limits(&runner).await, expected);

    // By the runner itself, once the spawn server is gone.
    runner
        .without_spawn_server(std::time::Duration::from_secs(30))
        .await;
    assert_eq!(action_descriptor_limits(&runner).await, expected);
}

#[tokio::test]
async fn set_resource_limits_is_what_the_runner_and_its_actions_get() {
    // Why: `global.setResourceLimits` (bb-storage's) was ignored; it sets
    // the runner's limits at startup, and so its actions'. Its NOFILE soft
    // limit is the one actions get back after the runner raised its own.
    let runner = start_under_soft_limit(json!({
        "global": { "setResourceLimits": {
            "NOFILE": { "softLimit": 512, "hardLimit": "2048" },
            "CORE": { "softLimit": 0 },
        } },
    }));
    assert_eq!(
        descriptor_limits_of(runner.pid()),
        ("2048".to_owned(), "2048".to_owned())
    );
    assert_eq!(action_descriptor_limits(&runner).await, "512\n2048\n");
    let (action, ran) = runner.run_shell("ulimit -c; ulimit -Hc").await;
    assert_eq!(ran.unwrap().exit_code, 0);
    assert_eq!(
        read(&action.path.join("stdout")),
        "0\nunlimited\n",
        "an unset hardLimit is unlimited"
    );
}

#[test]
fn a_limit_the_kernel_refuses_stops_startup_naming_it() {
    // Why: a runner whose configured limits are not in force must not
    // serve; the operator must learn which entry to fix, and why.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runner.jsonnet");
    let socket = dir.path().join("runner.sock");
    std::fs::write(
        &config,
        json!({
            "buildDirectoryPath": dir.path(),
            "grpcServers": [{ "listenPaths": [&socket], "authenticationPolicy": { "allow": {} } }],
            // A soft limit above the hard one: EINVAL for anyone.
            "global": { "setResourceLimits": { "STACK": { "softLimit": 2, "hardLimit": 1 } } },
        })
        .to_string(),
    )
    .unwrap();
    let child = Command::new(common::runner_under_test())
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    // A runner that serves instead never exits by itself.
    let output = match receiver.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("the runner started despite a refused limit");
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for expected in ["setResourceLimits[\"STACK\"]", "EINVAL"] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
    assert!(!socket.exists(), "it must not serve");
}
