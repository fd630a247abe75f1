//! Real-kernel tests: rbe-runner in a QEMU VM running Debian's 6.12 kernel
//! with cgroup v2, driven by the harness in `tests/vm/` (see its README).
//!
//! They need `qemu-system-x86_64` and a few Debian packages
//! (`sudo tests/vm/install-deps.sh`). Without them a developer's `cargo test`
//! skips them with one line on stderr; under `CI=true` they fail instead.
//! The VM runs one test at a time.

mod common;
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

// ----- sampleCgroupResourceUsage (src/runner/cgroup_sampling.rs)

const CGROUP_USAGE_TYPE: &str = "type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage";
const POSIX_USAGE_TYPE: &str = "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage";
const MIB: i64 = 1 << 20;

/// The usage entry of type `type_url` in a list of rendered usages.
fn usage_of_type<'a>(usages: &'a serde_json::Value, type_url: &str) -> &'a serde_json::Value {
    usages
        .as_array()
        .and_then(|usages| usages.iter().find(|usage| usage["@type"] == type_url))
        .unwrap_or_else(|| panic!("no {type_url} in {usages}"))
}

/// A protobuf-JSON duration ("1.250s") in seconds.
fn seconds(duration: &serde_json::Value) -> f64 {
    duration
        .as_str()
        .and_then(|text| text.strip_suffix('s'))
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("not a duration: {duration}"))
}

/// Seconds between the guest uptimes recorded in `NAME.start` and `NAME.end`.
fn elapsed(run: &harness::ScenarioRun, name: &str) -> f64 {
    let read = |suffix: &str| -> f64 {
        let text = run.read(&format!("{name}.{suffix}"));
        text.trim()
            .parse()
            .unwrap_or_else(|err| panic!("{name}.{suffix}: {err}: {text:?}"))
    };
    read("end") - read("start")
}

/// An action over the runner cgroup's own memory.max fails the build
/// honestly: the Run succeeds with the SIGKILL, and the cgroup usage shows
/// the action's own OOM and a peak at the limit.
#[test]
fn sampling_an_action_over_its_own_limit_reports_the_oom_and_the_peak() {
    let Some(_vm) =
        harness::vm_or_skip("sampling_an_action_over_its_own_limit_reports_the_oom_and_the_peak")
    else {
        return;
    };
    let run = harness::run_scenario("sampling-own-oom");
    let exec = run.json("exec.json");
    let context = format!("exec: {exec}\nexec's stderr: {}", run.read("exec.stderr"));

    assert_eq!(run.number("memory.max"), 64 * MIB);
    assert_eq!(exec["exitCode"], -1, "{context}");
    assert_eq!(
        harness::termination_signal(&exec),
        Some("KILL"),
        "{context}"
    );
    let usages = &exec["resourceUsage"];
    assert_eq!(
        usages[0]["@type"], POSIX_USAGE_TYPE,
        "POSIX usage first: {context}"
    );
    let cgroup = usage_of_type(usages, CGROUP_USAGE_TYPE);
    assert!(cgroup["memoryEventsOom"].as_i64() >= Some(1), "{context}");
    assert!(
        cgroup["memoryEventsOomKill"].as_i64() >= Some(1),
        "{context}"
    );
    let peak = cgroup["memoryPeak"].as_i64().unwrap_or(0);
    assert!(
        (56 * MIB..=64 * MIB).contains(&peak),
        "memory peak {peak} is not close to the 64 MiB limit: {context}"
    );
    eprintln!(
        "sampling-own-oom: memory peak {peak} bytes ({:.1} MiB), Run took {:.2} s; {cgroup}",
        peak as f64 / MIB as f64,
        elapsed(&run, "exec")
    );
    assert_eq!(run.number("runner.status"), 0);
}

/// The node runs out of memory, not the action: the Run fails with
/// UNAVAILABLE (which Bazel retries) carrying both usages, and the action's
/// server logs explain what happened.
#[test]
fn sampling_a_node_oom_is_unavailable_with_the_evidence() {
    let Some(_vm) = harness::vm_or_skip("sampling_a_node_oom_is_unavailable_with_the_evidence")
    else {
        return;
    };
    // 256M, as the issue asks: the Jsonnet loader falls back to a small
    // stack when the kernel refuses its large one on such a small machine.
    let run = harness::run_scenario_with("sampling-node-oom", &["--vm-memory", "256M"]);
    let stderr = run.read("exec.stderr");
    let context = format!(
        "exec's stderr: {stderr}\nmemory.events: {}\nrunner log:\n{}",
        run.read("memory.events"),
        run.read("runner.log")
    );

    assert_eq!(run.read("memory.max").trim(), "max", "no limit of its own");
    assert_eq!(run.number("exec.status"), 2, "a gRPC error: {context}");
    assert!(stderr.contains("Unavailable: An action process was OOM-killed without the action reaching its cgroup memory limit"), "{context}");
    let details: serde_json::Value = stderr
        .split_once("details: ")
        .and_then(|(_, json)| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("no details in exec's stderr: {context}"));
    assert_eq!(
        usage_of_type(&details, POSIX_USAGE_TYPE)["terminationSignal"],
        "KILL",
        "{context}"
    );
    let cgroup = usage_of_type(&details, CGROUP_USAGE_TYPE);
    assert_eq!(cgroup["memoryEventsOom"], 0, "{context}");
    assert!(
        cgroup["memoryEventsOomKill"].as_i64() >= Some(1),
        "{context}"
    );

    let diagnosis = run.read("rbe-runner-oom.txt");
    for expected in [
        "without the action reaching its cgroup memory limit",
        "oom 0, oom_kill",
        "What to do",
    ] {
        assert!(
            diagnosis.contains(expected),
            "{expected:?} not in the diagnosis:\n{diagnosis}"
        );
    }
    let dmesg = run.read("dmesg.txt");
    assert!(
        dmesg
            .lines()
            .any(|line| line.contains("Out of memory: Killed process") && line.contains("(hog)")),
        "no global OOM kill of the hog in dmesg:\n{dmesg}"
    );
    assert_eq!(run.read("runner-alive-after-action").trim(), "yes");
    eprintln!(
        "sampling-node-oom: Run took {:.2} s; {cgroup}",
        elapsed(&run, "exec")
    );
}

/// memory.peak keeps the cgroup's lifetime maximum; only the runner's
/// per-descriptor reset lets a small action after a big one report its own
/// peak.
#[test]
fn sampling_reports_each_actions_own_memory_peak() {
    let Some(_vm) = harness::vm_or_skip("sampling_reports_each_actions_own_memory_peak") else {
        return;
    };
    let run = harness::run_scenario("sampling-peak-reset");
    let peak = |mebibytes: u32| {
        let exec = run.json(&format!("hog-{mebibytes}.json"));
        assert_eq!(exec["exitCode"], 0, "hog {mebibytes}: {exec}");
        usage_of_type(&exec["resourceUsage"], CGROUP_USAGE_TYPE)["memoryPeak"]
            .as_i64()
            .unwrap_or_else(|| panic!("no memoryPeak: {exec}"))
    };
    let (big, small) = (peak(200), peak(20));
    let lifetime = run.number("memory.peak.lifetime");
    eprintln!(
        "sampling-peak-reset: 200 MiB action peak {:.1} MiB ({:.2} s), 20 MiB action peak {:.1} MiB ({:.2} s), lifetime {:.1} MiB",
        big as f64 / MIB as f64,
        elapsed(&run, "hog-200"),
        small as f64 / MIB as f64,
        elapsed(&run, "hog-20"),
        lifetime as f64 / MIB as f64,
    );
    assert!(big >= 200 * MIB, "the 200 MiB action's peak is {big}");
    assert!(lifetime >= 200 * MIB, "lifetime peak {lifetime}");
    assert!(
        (20 * MIB..64 * MIB).contains(&small),
        "the 20 MiB action's peak is {small}, not its own"
    );
}

/// A throttled action waits for CPU, and the cgroup's PSI shows it.
#[test]
fn sampling_reports_cpu_pressure_of_a_throttled_action() {
    let Some(_vm) = harness::vm_or_skip("sampling_reports_cpu_pressure_of_a_throttled_action")
    else {
        return;
    };
    let run = harness::run_scenario("sampling-cpu-pressure");
    let exec = run.json("exec.json");
    assert_eq!(exec["exitCode"], 0, "{exec}\n{}", run.read("exec.stderr"));
    let cgroup = usage_of_type(&exec["resourceUsage"], CGROUP_USAGE_TYPE);
    let some = seconds(&cgroup["cpuPressureSomeTotal"]);
    let throttled = run.flat_keyed("cpu.stat");
    eprintln!(
        "sampling-cpu-pressure: cpu.max {}, cpu pressure some {some:.3} s over a {:.2} s Run, nr_throttled {}; {cgroup}",
        run.read("cpu.max").trim(),
        elapsed(&run, "exec"),
        throttled.get("nr_throttled").copied().unwrap_or(0)
    );
    assert!(some > 0.0, "no CPU pressure reported: {cgroup}");
}

/// Sampling without the memory controller would have no OOM attribution:
/// the runner refuses to start and says what is missing and how to fix it.
#[test]
fn sampling_without_the_memory_controller_refuses_to_start() {
    let Some(_vm) = harness::vm_or_skip("sampling_without_the_memory_controller_refuses_to_start")
    else {
        return;
    };
    let run = harness::run_scenario("sampling-no-memory-controller");
    let files = run.read("runner-cgroup.files");
    assert!(
        !files.contains("memory.events"),
        "the setup failed: {files}"
    );
    let log = run.read("runner.log");
    assert_eq!(run.number("runner.status"), 1, "runner log:\n{log}");
    for expected in [
        "sampleCgroupResourceUsage is enabled",
        "memory.events is missing",
        "/sys/fs/cgroup/no-memory/rbe-runner",
        "cgroup.subtree_control",
    ] {
        assert!(
            log.contains(expected),
            "{expected:?} not in the runner log:\n{log}"
        );
    }
}

/// Issue "per-action cgroups": with actionCgroups, each action's usage
/// comes from its own cgroup, so concurrent actions are measured exactly.
#[test]
fn action_cgroups_measure_concurrent_actions_each_in_its_own_cgroup() {
    let Some(_vm) =
        harness::vm_or_skip("action_cgroups_measure_concurrent_actions_each_in_its_own_cgroup")
    else {
        return;
    };
    let run = harness::run_scenario("action-cgroups-concurrent");
    let context = format!("runner log:\n{}", run.read("runner.log"));
    assert!(
        run.read("runner.cgroup")
            .trim()
            .ends_with("/rbe-runner/runner"),
        "{context}"
    );
    let controllers = run.read("subtree_control");
    assert!(
        controllers.contains("memory"),
        "controllers for actions: {controllers}; {context}"
    );

    let mut peaks = Vec::new();
    for mebibytes in [120, 12] {
        let exec = run.json(&format!("hog-{mebibytes}.json"));
        assert_eq!(exec["exitCode"], 0, "hog {mebibytes}: {exec}; {context}");
        let cgroup = usage_of_type(&exec["resourceUsage"], CGROUP_USAGE_TYPE);
        assert_eq!(cgroup["memoryEventsOomKill"], 0, "{cgroup}");
        let peak = cgroup["memoryPeak"].as_i64().unwrap_or(0);
        peaks.push(peak);
        eprintln!(
            "action-cgroups-concurrent: hog {mebibytes} MiB peak {peak} bytes ({:.1} MiB)",
            peak as f64 / MIB as f64
        );
    }
    // Each peak is the action's own: the big one at least its allocation,
    // the small one nowhere near the big one's, although they overlapped.
    assert!(peaks[0] >= 120 * MIB && peaks[0] < 140 * MIB, "{peaks:?}");
    assert!(peaks[1] >= 12 * MIB && peaks[1] < 32 * MIB, "{peaks:?}");
    assert_eq!(
        run.read("actions.left").trim(),
        "",
        "no action cgroup is left"
    );
    assert_eq!(run.number("runner.status"), 0);
}

/// With actionCgroups, a kill by the runner's own memory limit shows as
/// `oom_kill` without `oom` in the action's cgroup; it must still count as
/// the action's fault (build fails with evidence), not as node pressure.
#[test]
fn action_cgroups_attribute_a_kill_by_the_runners_limit_to_the_action() {
    let Some(_vm) =
        harness::vm_or_skip("action_cgroups_attribute_a_kill_by_the_runners_limit_to_the_action")
    else {
        return;
    };
    let run = harness::run_scenario("action-cgroups-runner-limit");
    let context = format!(
        "exec's stderr: {}\nrunner log:\n{}",
        run.read("exec.stderr"),
        run.read("runner.log")
    );
    assert_eq!(
        run.number("exec.status"),
        137,
        "a normal response for a killed action: {context}"
    );
    let exec = run.json("exec.json");
    assert_eq!(exec["exitCode"], -1, "{context}");
    assert_eq!(
        harness::termination_signal(&exec),
        Some("KILL"),
        "{context}"
    );
    let cgroup = usage_of_type(&exec["resourceUsage"], CGROUP_USAGE_TYPE);
    assert!(
        cgroup["memoryEventsOomKill"].as_i64() >= Some(1),
        "{cgroup}"
    );
    // With memory.oom.group (the default now) the victim is counted once
    // for the OOM kill and once more for the group kill.
    let events = run.flat_keyed("memory.events");
    assert!(events["oom_kill"] >= 1, "{events:?}; {context}");
    let accounting = usage_of_type(&exec["resourceUsage"], ACCOUNTING_TYPE);
    assert_eq!(
        accounting["oomVerdict"], "OOM_VERDICT_SHARED_LIMIT",
        "{accounting}"
    );
    assert_eq!(accounting["actionsRunningAtOom"], 1, "alone: the culprit");
    assert_eq!(run.number("runner.status"), 0);
}

// ----- per-action limits and the three-way OOM verdict (issue 15)

const ACCOUNTING_TYPE: &str = "type.googleapis.com/rbe_runner.resourceusage.v1.ActionAccounting";

/// The JSON `exec` printed for action `name`, with its stderr for context.
fn action_json(run: &harness::ScenarioRun, name: &str) -> (serde_json::Value, String) {
    let context = format!(
        "{name}: exec status {}, stderr: {}",
        run.read(&format!("{name}.status")).trim(),
        run.read(&format!("{name}.stderr"))
    );
    let json = serde_json::from_str(&run.read(&format!("{name}.json")))
        .unwrap_or_else(|err| panic!("{err}; {context}"));
    (json, context)
}

/// The status details an UNAVAILABLE carried, from `exec`'s stderr.
fn error_details(stderr: &str) -> serde_json::Value {
    stderr
        .split_once("details: ")
        .and_then(|(_, json)| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("no details in exec's stderr: {stderr}"))
}

/// Scenarios a, b, d, e, f and g of issue 15 in one boot: an action over
/// its own memory.max (OWN_LIMIT, the whole action ended by
/// memory.oom.group, a normal response), a sibling running meanwhile that
/// keeps verdict NONE, pids.max and cpu.max counted, and a runner subtree
/// limit exhausted by a culprit (normal response) and by tmpfs pages that
/// make a small action a bystander (UNAVAILABLE).
#[test]
fn action_limits_are_enforced_and_each_oom_gets_its_verdict() {
    let Some(_vm) = harness::vm_or_skip("action_limits_are_enforced_and_each_oom_gets_its_verdict")
    else {
        return;
    };
    let run = harness::run_scenario_with("action-limits", &["--timeout", "400"]);
    let logs = format!(
        "runner 1 log:\n{}\nrunner 2 log:\n{}",
        run.read("runner-1.log"),
        run.read("runner-2.log")
    );

    // (a) + (e): its own limit, and memory.oom.group killed the shell too,
    // which would otherwise have survived and exited 3.
    let (a, context) = action_json(&run, "a");
    assert_eq!(a["exitCode"], -1, "{context}\n{logs}");
    assert_eq!(harness::termination_signal(&a), Some("KILL"), "{context}");
    let usage = usage_of_type(&a["resourceUsage"], CGROUP_USAGE_TYPE);
    assert!(usage["memoryEventsOom"].as_i64() >= Some(1), "{usage}");
    assert!(
        usage["memoryEventsOomGroupKill"].as_i64() >= Some(1),
        "memory.oom.group did not kill the action whole: {usage}"
    );
    let accounting = usage_of_type(&a["resourceUsage"], ACCOUNTING_TYPE);
    assert_eq!(
        accounting["oomVerdict"], "OOM_VERDICT_OWN_LIMIT",
        "{accounting}"
    );
    assert_eq!(accounting["memoryMax"], 64 * MIB, "{accounting}");
    assert_eq!(accounting["oomLimitBytes"], 64 * MIB, "{accounting}");
    assert_eq!(accounting["memorySwapMax"], 0, "{accounting}");
    assert_eq!(accounting["pidsMax"], 32, "{accounting}");
    assert_eq!(accounting["cpuMaxCores"], 0.5, "{accounting}");
    let limiting = accounting["oomLimitingCgroup"].as_str().unwrap_or("");
    assert!(
        limiting.starts_with("/sys/fs/cgroup/rbe-runner/actions/"),
        "{accounting}"
    );
    assert!(
        !run.read("a.json").contains("survived"),
        "the shell outlived the OOM kill"
    );

    // (d): running through its sibling's own-limit OOM changes nothing.
    let (d, context) = action_json(&run, "d");
    assert_eq!(d["exitCode"], 0, "{context}");
    let usage = usage_of_type(&d["resourceUsage"], CGROUP_USAGE_TYPE);
    assert_eq!(usage["memoryEventsOom"], 0, "{usage}");
    assert_eq!(usage["memoryEventsOomKill"], 0, "{usage}");
    let accounting = usage_of_type(&d["resourceUsage"], ACCOUNTING_TYPE);
    assert_eq!(accounting["oomVerdict"], "OOM_VERDICT_NONE", "{accounting}");

    // (f): forks refused by pids.max are counted.
    let (f, context) = action_json(&run, "f");
    let accounting = usage_of_type(&f["resourceUsage"], ACCOUNTING_TYPE);
    assert!(
        accounting["pidsEventsMax"].as_i64() > Some(0),
        "{accounting}; {context}"
    );

    // (g): a busy loop under cpu.max 0.5 is throttled, and waits for CPU.
    let (g, context) = action_json(&run, "g");
    assert_eq!(g["exitCode"], 0, "{context}");
    let accounting = usage_of_type(&g["resourceUsage"], ACCOUNTING_TYPE);
    assert!(
        accounting["cpuNrThrottled"].as_i64() > Some(0),
        "{accounting}"
    );
    assert!(seconds(&accounting["cpuThrottled"]) > 0.0, "{accounting}");
    let usage = usage_of_type(&g["resourceUsage"], CGROUP_USAGE_TYPE);
    assert!(seconds(&usage["cpuPressureSomeTotal"]) > 0.0, "{usage}");
    eprintln!("action-limits g: {accounting}");

    // (b): the runner's subtree ran out; the big action is the culprit and
    // gets its normal response; the small one is untouched.
    let (big, context) = action_json(&run, "b-big");
    assert_eq!(big["exitCode"], -1, "{context}\n{logs}");
    let accounting = usage_of_type(&big["resourceUsage"], ACCOUNTING_TYPE);
    assert_eq!(
        accounting["oomVerdict"], "OOM_VERDICT_SHARED_LIMIT",
        "{accounting}\n{logs}"
    );
    assert_eq!(
        accounting["oomLimitingCgroup"], "/sys/fs/cgroup/rbe-runner-2",
        "{accounting}"
    );
    assert_eq!(accounting["oomLimitBytes"], 128 * MIB, "{accounting}");
    assert_eq!(accounting["actionsRunningAtOom"], 2, "{accounting}");
    let usage = usage_of_type(&big["resourceUsage"], CGROUP_USAGE_TYPE);
    assert_eq!(usage["memoryEventsOom"], 0, "{usage}");
    let (small, context) = action_json(&run, "b-small");
    assert_eq!(small["exitCode"], 0, "{context}");
    assert!(
        run.read("b.memory.events.local").contains("oom_kill 0"),
        "the kill is counted in the action, not the budget"
    );

    // (b2): tmpfs pages filled the budget, the kernel killed the biggest
    // process, which used less than its fair share: retried elsewhere.
    let victim_stderr = run.read("b2-victim.stderr");
    assert_eq!(
        run.number("b2-victim.status"),
        2,
        "a gRPC error: {victim_stderr}\n{logs}"
    );
    assert!(
        victim_stderr.contains(
            "Unavailable: An action process was OOM-killed because a memory budget shared"
        ),
        "{victim_stderr}"
    );
    assert!(victim_stderr.contains("bystander"), "{victim_stderr}");
    let details = error_details(&victim_stderr);
    let accounting = usage_of_type(&details, ACCOUNTING_TYPE);
    assert_eq!(
        accounting["oomVerdict"], "OOM_VERDICT_SHARED_LIMIT",
        "{accounting}"
    );
    assert_eq!(accounting["actionsRunningAtOom"], 2, "{accounting}");
    let (filler, context) = action_json(&run, "b2-filler");
    assert_eq!(
        filler["exitCode"], 0,
        "the filler was not the victim: {context}"
    );

    // Each verdict is explained in the server logs in one sentence.
    let diagnoses = run.read("diagnoses.txt");
    for expected in ["it is the culprit", "it is a bystander"] {
        assert!(
            diagnoses.contains(expected),
            "{expected:?} not in:\n{diagnoses}"
        );
    }
    for left in ["actions-1.left", "actions-2.left"] {
        assert_eq!(run.read(left).trim(), "", "action cgroups left behind");
    }
    assert_eq!(run.number("runner-1.status"), 0, "{logs}");
    assert_eq!(run.number("runner-2.status"), 0, "{logs}");
}

/// Scenarios h and c of issue 15: eight actions that provably overlap each
/// report their own memory peak, within 5 % (or 2 MiB) of what they held,
/// and none sees another's OOM counters; then a node OOM with no limit
/// anywhere is NOT_OWN_LIMIT, UNAVAILABLE with the evidence.
#[test]
fn action_cgroups_are_exact_at_concurrency_8_and_a_node_oom_is_retried() {
    let Some(_vm) =
        harness::vm_or_skip("action_cgroups_are_exact_at_concurrency_8_and_a_node_oom_is_retried")
    else {
        return;
    };
    let run = harness::run_scenario_with(
        "action-exactness",
        &["--vm-memory", "768M", "--timeout", "400"],
    );
    let log = run.read("runner.log");
    assert_eq!(
        run.read("h-ready").lines().count(),
        8,
        "not all 8 hogs allocated before the barrier: {log}"
    );
    for mebibytes in [6, 12, 18, 24, 30, 36, 42, 48] {
        let name = format!("h-{mebibytes}");
        let context = format!("{name}: stderr: {}", run.read(&format!("{name}.stderr")));
        let json = run.json(&format!("{name}.json"));
        assert_eq!(json["exitCode"], 0, "{context}");
        let usage = usage_of_type(&json["resourceUsage"], CGROUP_USAGE_TYPE);
        assert_eq!(usage["memoryEventsOom"], 0, "{name}: {usage}");
        assert_eq!(usage["memoryEventsOomKill"], 0, "{name}: {usage}");
        let peak = usage["memoryPeak"].as_i64().unwrap_or(0);
        let held = mebibytes * MIB;
        let tolerance = (held / 20).max(2 * MIB);
        eprintln!(
            "action-exactness: hog {mebibytes} MiB: peak {peak} bytes ({:.2} MiB, {:+} KiB, {:.3}x)",
            peak as f64 / MIB as f64,
            (peak - held) / 1024,
            peak as f64 / held as f64
        );
        assert!(
            (held..=held + tolerance).contains(&peak),
            "hog {mebibytes} MiB reported a peak of {peak} bytes, not within {tolerance} of {held}"
        );
    }

    let stderr = run.read("c.stderr");
    assert_eq!(run.number("c.status"), 2, "a gRPC error: {stderr}\n{log}");
    assert!(
        stderr
            .contains("Unavailable: An action process was OOM-killed without the action reaching"),
        "{stderr}"
    );
    let details = error_details(&stderr);
    let accounting = usage_of_type(&details, ACCOUNTING_TYPE);
    assert_eq!(
        accounting["oomVerdict"], "OOM_VERDICT_NOT_OWN_LIMIT",
        "{accounting}"
    );
    assert_eq!(accounting["memoryMax"], 0, "no limit: {accounting}");
    let diagnosis = run.read("c-rbe-runner-oom.txt");
    assert!(
        diagnosis.contains("No limit in the runner's subtree was reached"),
        "{diagnosis}"
    );
    assert_eq!(run.read("runner-alive-after-action").trim(), "yes");
    assert_eq!(run.number("runner.status"), 0, "{log}");
}

/// The value of the sample `series` (name and labels exactly as the text
/// format writes them, labels in name order) in a scraped exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// `/metrics`, scraped with busybox wget inside the guest after actions
/// with sampling on: the memory-peak and stall histograms hold each
/// action's measurement, and the budget gauges show the runner's cgroup.
#[test]
fn diagnostics_metrics_scraped_in_the_guest_show_action_usage_and_the_cgroup_budget() {
    let Some(_vm) = harness::vm_or_skip(
        "diagnostics_metrics_scraped_in_the_guest_show_action_usage_and_the_cgroup_budget",
    ) else {
        return;
    };
    let run = harness::run_scenario("diagnostics-metrics");
    let context = format!(
        "hog's stderr: {}\nrunner log:\n{}",
        run.read("hog.stderr"),
        run.read("runner.log")
    );
    assert_eq!(run.number("hog.status"), 0, "{context}");
    assert_eq!(run.number("true.status"), 0, "{context}");
    assert_eq!(run.number("metrics.status"), 0, "{context}");
    assert_eq!(run.read("ready.txt"), "OK\n");
    let metrics = run.read("metrics.txt");
    let value = |series: &str| {
        sample(&metrics, series).unwrap_or_else(|| panic!("{series} missing from:\n{metrics}"))
    };

    assert_eq!(
        value(r#"rbe_runner_actions_finished_total{grpc_code="OK",result="Success"}"#),
        2.0
    );
    // The hog's peak (48 MiB and the runtime) is over 32 MiB, the shell's
    // is not; both are under 64 MiB.
    let hog_peak = usage_of_type(&run.json("hog.json")["resourceUsage"], CGROUP_USAGE_TYPE)
        ["memoryPeak"]
        .as_i64()
        .unwrap_or_default();
    assert!((48 * MIB..64 * MIB).contains(&hog_peak), "{hog_peak}");
    assert_eq!(value("rbe_runner_action_memory_peak_bytes_count"), 2.0);
    assert_eq!(
        value(r#"rbe_runner_action_memory_peak_bytes_bucket{le="33554432"}"#),
        1.0
    );
    assert_eq!(
        value(r#"rbe_runner_action_memory_peak_bytes_bucket{le="67108864"}"#),
        2.0
    );
    assert!(value("rbe_runner_action_memory_peak_bytes_sum") >= hog_peak as f64);
    for resource in ["cpu", "memory", "io"] {
        for kind in ["some", "full"] {
            assert_eq!(
                value(&format!(
                    r#"rbe_runner_action_pressure_stall_seconds_count{{kind="{kind}",resource="{resource}"}}"#
                )),
                2.0,
                "{resource} {kind}"
            );
            assert!(
                value(&format!(
                    r#"rbe_runner_cgroup_pressure_seconds_total{{kind="{kind}",resource="{resource}"}}"#
                )) >= 0.0
            );
        }
    }
    assert!(value("rbe_runner_cgroup_memory_current_bytes") > 0.0);
    assert_eq!(
        value("rbe_runner_cgroup_memory_max_bytes"),
        (256 * MIB) as f64
    );
    assert_eq!(run.number("runner.status"), 0);
}

// ----- isolation (issue 26)

/// Every isolation option together with per-action cgroups and a memory
/// limit, on the real kernel: an isolated action sees only itself, and an
/// OOM inside the PID namespace (memory.oom.group kills the namespace's
/// init with the action) keeps its verdict and its evidence: SIGKILL,
/// OWN_LIMIT, the cgroup's counters, the diagnosis in the server logs.
#[test]
fn an_oom_inside_the_pid_namespace_keeps_its_verdict_and_evidence() {
    let Some(_vm) =
        harness::vm_or_skip("an_oom_inside_the_pid_namespace_keeps_its_verdict_and_evidence")
    else {
        return;
    };
    let run = harness::run_scenario("isolation-oom");
    let log = format!("runner log:\n{}", run.read("runner.log"));
    assert!(
        run.read("uname").starts_with("6.12."),
        "{}",
        run.read("uname")
    );

    the_action_sees_only_its_own(&run, &log);
    the_oom_keeps_its_verdict_and_nothing_is_left(&run, &log);
    assert_eq!(run.number("runner.status"), 0, "{log}");
}

/// The lines of `seen` under the heading `name:`, up to the next heading.
fn section(seen: &str, name: &str) -> Vec<String> {
    seen.split(&format!("{name}:\n"))
        .nth(1)
        .unwrap_or_default()
        .lines()
        .take_while(|line| !line.ends_with(':'))
        .map(String::from)
        .collect()
}

/// The `view` action of an isolation scenario succeeded and saw only its
/// own: itself (the init, sh, ls, grep at most), its loopback, an empty
/// /tmp, the configured host name, its own cgroup. Returns what it saw.
fn the_action_sees_only_its_own(run: &harness::ScenarioRun, log: &str) -> String {
    let (view, context) = action_json(run, "view");
    assert_eq!(view["exitCode"], 0, "{context}\n{log}");
    let seen = run.read("view.stdout");
    let section = |name: &str| section(&seen, name);
    let processes: usize = section("processes")
        .first()
        .and_then(|count| count.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(processes <= 4, "{seen}");
    assert_eq!(section("interfaces"), ["lo"], "{seen}");
    assert!(section("tmp").is_empty(), "the host's /tmp: {seen}");
    assert_eq!(section("hostname"), ["isolated"], "{seen}");
    assert!(
        section("cgroup")
            .iter()
            .any(|line| line.starts_with("0::/rbe-runner/actions/")),
        "{seen}"
    );
    seen
}

/// The `oom` and `after` actions of an isolated scenario (isolation-oom,
/// userns-nonroot): an OOM inside the PID namespace keeps its verdict and
/// evidence, and afterwards actions still run, nothing is left behind.
fn the_oom_keeps_its_verdict_and_nothing_is_left(run: &harness::ScenarioRun, log: &str) {
    // The OOM: the whole action ended by SIGKILL (the shell never got to
    // `exit 3`), a normal response with the action's own verdict.
    let (oom, context) = action_json(run, "oom");
    assert_eq!(run.number("oom.status"), 137, "{context}\n{log}");
    assert_eq!(oom["exitCode"], -1, "{context}\n{log}");
    assert_eq!(harness::termination_signal(&oom), Some("KILL"), "{context}");
    assert!(!run.read("oom.json").contains("survived"), "{context}");
    let usage = usage_of_type(&oom["resourceUsage"], CGROUP_USAGE_TYPE);
    assert!(usage["memoryEventsOom"].as_i64() >= Some(1), "{usage}");
    assert!(usage["memoryEventsOomKill"].as_i64() >= Some(1), "{usage}");
    let accounting = usage_of_type(&oom["resourceUsage"], ACCOUNTING_TYPE);
    assert_eq!(
        accounting["oomVerdict"], "OOM_VERDICT_OWN_LIMIT",
        "{accounting}\n{log}"
    );
    assert_eq!(accounting["memoryMax"], 64 * MIB, "{accounting}");
    let diagnosis = run.read("oom-diagnosis.txt");
    assert!(
        diagnosis.contains("The action reached its own memory limit"),
        "{diagnosis}"
    );

    // Afterwards: actions still run isolated, nothing is left behind.
    let (after, context) = action_json(run, "after");
    assert_eq!(after["exitCode"], 4, "{context}");
    assert_eq!(run.read("actions.left").trim(), "", "action cgroups left");
    assert_eq!(run.number("inits.left"), 0, "{}", run.read("ps.after"));
    assert_eq!(run.read("host-file"), "host-file\n");
}

// ----- isolation without root (issue 27)

/// A runner started as nobody, without capabilities, makes actions'
/// namespaces inside user namespaces on the real kernel: with
/// user.max_user_namespaces 0 it refuses to start saying why and how to
/// fix it; with the sysctl back, every isolation option holds, and with
/// actionCgroups in a subtree delegated to nobody an OOM inside the PID
/// namespace keeps its verdict (OWN_LIMIT) and evidence.
#[test]
fn a_non_root_runner_isolates_in_user_namespaces_or_refuses_to_start() {
    let Some(_vm) =
        harness::vm_or_skip("a_non_root_runner_isolates_in_user_namespaces_or_refuses_to_start")
    else {
        return;
    };
    let run = harness::run_scenario("userns-nonroot");
    let refused = run.read("refused.log");
    assert_eq!(
        run.read("refused.served"),
        "no\n",
        "it served with user.max_user_namespaces 0:\n{refused}"
    );
    assert_ne!(run.number("refused.status"), 0, "{refused}");
    for needed in [
        "user namespace",
        "user.max_user_namespaces is 0",
        "sysctl -w user.max_user_namespaces=",
    ] {
        assert!(refused.contains(needed), "{needed}: {refused}");
    }

    let log = format!("runner log:\n{}", run.read("runner.log"));
    assert!(
        run.read("uname").starts_with("6.12."),
        "{}",
        run.read("uname")
    );
    assert!(
        run.read("runner.ps").starts_with("nobody"),
        "{}",
        run.read("runner.ps")
    );
    assert!(log.contains("inside a user namespace"), "{log}");
    let seen = the_action_sees_only_its_own(&run, &log);
    assert_eq!(section(&seen, "identity"), ["65534", "65534"], "{seen}");
    the_oom_keeps_its_verdict_and_nothing_is_left(&run, &log);
    assert_eq!(run.number("runner.status"), 0, "{log}");
}

// ----- chrooted actions: /proc, /dev and inputRootMounts (issue 27)

/// A chrooted action on the real 6.12 kernel, in an input root holding
/// only a static busybox (prepared on the host, in the build directory
/// `serve` shares with the guest): its own `/proc` (`isolation.pid`), a
/// minimal `/dev` (`isolation.dev`, a devpts of its own), a tmpfs from
/// `inputRootMounts`, and a missing mountpoint answered INVALID_ARGUMENT.
#[test]
fn a_chrooted_action_has_its_proc_and_dev_on_the_guest_kernel() {
    let test = "a_chrooted_action_has_its_proc_and_dev_on_the_guest_kernel";
    let Some(_vm) = harness::vm_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let build_dir = dir.path().join("build");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("create config dir");
    std::fs::write(
        config_dir.join("runner.jsonnet"),
        "{\n  buildDirectoryPath: '/nonexistent',\n  grpcServers: [],\n  \
         chrootIntoInputRoot: true,\n  isolation: { pid: true, dev: 'minimal' },\n  \
         inputRootMounts: [{ mountpoint: 'scratch', source: 'scratch', filesystemType: 'tmpfs' }],\n}\n",
    )
    .expect("write config");
    let serve = Serve::start(&config_dir.join("runner.jsonnet"), &build_dir, &[]);

    let busybox_root = |mountpoints: &[&str]| {
        let action = rbe_runner::cli::exec::ActionDirectory::create(&build_dir).unwrap();
        let root = action.path.join("root");
        std::fs::create_dir(root.join("bin")).unwrap();
        // tests/vm/lib.sh makes sure /bin/busybox is the static one.
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        for mountpoint in mountpoints {
            std::fs::create_dir_all(root.join(mountpoint)).unwrap();
        }
        action
    };
    let script = "export PATH=/bin; busybox --install -s /bin; uname -r; \
                  sh -c 'ls /proc/self >/dev/null && echo ok 2>/dev/null </dev/null'; \
                  echo through-stdin | cat /dev/stdin; ls /dev | tr '\\n' ' '; echo; \
                  ls -d /proc/[0-9]* | wc -l; grep -c devpts /proc/self/mountinfo; \
                  touch /scratch/written && echo scratch";
    let request = |action: &rbe_runner::cli::exec::ActionDirectory| {
        action.request(
            vec![
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                script.into(),
            ],
            vec![],
        )
    };
    let complete = busybox_root(&["proc", "dev", "scratch"]);
    let missing = busybox_root(&["proc", "dev"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (answer, refused) = runtime.block_on(async {
        let target = rbe_runner::cli::client::Target::Address(serve.address());
        let channel = rbe_runner::cli::client::connect(&target)
            .await
            .expect("connect to the guest runner");
        let mut client = rbe_runner::proto::runner::runner_client::RunnerClient::new(channel);
        let answer = client.run(request(&complete)).await;
        let refused = client.run(request(&missing)).await;
        (answer, refused)
    });
    let outputs = format!(
        "stdout:\n{}\nstderr:\n{}",
        std::fs::read_to_string(complete.path.join("stdout")).unwrap_or_default(),
        std::fs::read_to_string(complete.path.join("stderr")).unwrap_or_default()
    );
    let response = answer.unwrap_or_else(|status| panic!("{status:?}\n{outputs}"));
    assert_eq!(response.get_ref().exit_code, 0, "{outputs}");
    let stdout = std::fs::read_to_string(complete.path.join("stdout")).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("6.12."),
        "not the guest's kernel: {outputs}"
    );
    assert_eq!(lines[1..3], ["ok", "through-stdin"], "{outputs}");
    assert_eq!(
        lines[3].trim(),
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero",
        "{outputs}"
    );
    let pids: usize = lines[4].trim().parse().unwrap_or(usize::MAX);
    assert!(pids <= 5, "{outputs}");
    assert_eq!(lines[5..], ["1", "scratch"], "{outputs}");
    assert!(!complete.path.join("root/scratch/written").exists());

    let status = refused.expect_err("no scratch in the input root");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("\"scratch\""), "{status:?}");

    let status = serve.stop();
    assert!(status.success(), "serve exited with {status} after SIGTERM");
}
