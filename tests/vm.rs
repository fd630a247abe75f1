//! Real-kernel tests: rbe-runner in a QEMU VM running Debian's 6.12 kernel
//! with cgroup v2, driven by the harness in `tests/vm/` (see its README).
//!
//! They need `qemu-system-x86_64` and a few Debian packages
//! (`sudo tests/vm/install-deps.sh`). Without them a developer's `cargo test`
//! skips them with one line on stderr; under `CI=true` they fail instead.
//! The VM runs one test at a time.

#[path = "vm/harness.rs"]
mod harness;

use std::process::{Command, Stdio};

use harness::{ExecResult, Serve};

/// The harness itself, without the runner: a process over its cgroup's
/// memory.max is OOM-killed and counted. When this fails, suspect the
/// kernel or the harness; when only the runner tests fail, suspect the runner.
#[test]
fn kernel_oom_kills_a_hog_over_its_cgroups_memory_max() {
    let Some(_vm) = harness::vm_or_skip("kernel_oom_kills_a_hog_over_its_cgroups_memory_max")
    else {
        return;
    };
    let run = harness::run_scenario("cgroup-oom");

    assert_eq!(run.number("memory.max"), 64 << 20);
    assert_eq!(
        run.number("hog.status"),
        128 + 9,
        "the hog should die of SIGKILL"
    );
    let events = run.flat_keyed("memory.events");
    // Killed under its own cgroup's limit: both counters move (a system OOM
    // would show oom 0, oom_kill 1; `oom` may exceed `oom_kill`).
    assert!(events["oom"] >= 1, "memory.events: {events:?}");
    assert!(events["oom_kill"] >= 1, "memory.events: {events:?}");
}

/// The first runner scenario: an action that outgrows the runner's cgroup
/// is OOM-killed by the kernel, the cgroup counts it, the runner survives,
/// and `exec` reports the SIGKILL as bb_worker would see it.
#[test]
fn runner_action_over_the_runners_memory_max_is_oom_killed() {
    let Some(_vm) = harness::vm_or_skip("runner_action_over_the_runners_memory_max_is_oom_killed")
    else {
        return;
    };
    let run = harness::run_scenario("runner-oom");

    assert_eq!(run.number("memory.max"), 64 << 20);
    let events = run.flat_keyed("memory.events");
    assert!(events["oom"] >= 1, "memory.events: {events:?}");
    assert!(events["oom_kill"] >= 1, "memory.events: {events:?}");

    let exec = run.json("exec.json");
    assert_eq!(
        harness::termination_signal(&exec),
        Some("KILL"),
        "exec's JSON: {exec}\nexec's stderr: {}",
        run.read("exec.stderr")
    );
    assert_eq!(run.number("exec.status"), 128 + 9, "exec exits 128+signal");

    // The OOM killer's victim was the action, not the runner.
    let dmesg = run.read("dmesg.txt");
    assert!(
        dmesg.lines().any(
            |line| line.contains("Memory cgroup out of memory: Killed process")
                && line.contains("(hog)")
        ),
        "no memcg OOM kill of the hog in dmesg:\n{dmesg}"
    );
    assert_eq!(run.read("runner-alive-after-action").trim(), "yes");
    assert_eq!(
        run.number("runner.status"),
        0,
        "the runner should exit 0 on SIGTERM"
    );
}

/// `tests/vm/serve` as a developer uses it: the runner in the guest, the
/// build directory shared with the host, and a host-side client preparing
/// action directories and calling it over TCP.
#[test]
fn serve_runs_host_prepared_actions_on_the_guest_kernel() {
    let Some(_vm) = harness::vm_or_skip("serve_runs_host_prepared_actions_on_the_guest_kernel")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let build_dir = dir.path().join("build");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("create config dir");
    // A relative import, and a build directory and listener that serve must
    // replace: the config is evaluated in the guest, where neither exists.
    std::fs::write(
        config_dir.join("common.libsonnet"),
        "{ terminationGracePeriod: '2s' }\n",
    )
    .expect("write libsonnet");
    std::fs::write(
        config_dir.join("runner.jsonnet"),
        "(import 'common.libsonnet') + {\n  buildDirectoryPath: '/nonexistent',\n  grpcServers: [],\n}\n",
    )
    .expect("write config");

    let serve = Serve::start(
        &config_dir.join("runner.jsonnet"),
        &build_dir,
        &["--runner-memory-max", "64M"],
    );

    let hello = exec(
        &serve,
        &build_dir,
        &["/bin/sh", "-c", "uname -r; cat /proc/self/cgroup"],
    );
    assert_eq!(
        hello.json["exitCode"], 0,
        "exec: {}\n{}",
        hello.json, hello.stderr
    );
    assert!(hello.status.success());
    let stdout = hello.stdout_file();
    assert!(
        stdout.starts_with("6.12."),
        "not the guest's kernel: {stdout:?}"
    );
    assert!(
        stdout.contains("0::/rbe-runner"),
        "not in the runner's cgroup: {stdout:?}"
    );

    let hog = exec(&serve, &build_dir, &["/bin/hog", "200"]);
    assert_eq!(
        hog.termination_signal(),
        Some("KILL"),
        "exec: {}\n{}",
        hog.json,
        hog.stderr
    );
    assert_eq!(hog.status.code(), Some(128 + 9));

    let status = serve.stop();
    assert!(status.success(), "serve exited with {status} after SIGTERM");
}

/// Runs `rbe-runner exec` on the host against `serve`'s runner.
fn exec(serve: &Serve, build_dir: &std::path::Path, command: &[&str]) -> ExecResult {
    let output = Command::new(env!("CARGO_BIN_EXE_rbe-runner"))
        .arg("exec")
        .arg("--address")
        .arg(serve.address())
        .arg("--build-dir")
        .arg(build_dir)
        .args(["--timeout", "120s", "--"])
        .args(command)
        .stdin(Stdio::null())
        .output()
        .expect("run rbe-runner exec");
    ExecResult::from_output(output)
}
