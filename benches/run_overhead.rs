//! What the runner costs per action, measured against the kernel's spawn
//! floor on the same machine in the same run:
//!
//!   cargo bench --bench run_overhead          full figures (a few minutes)
//!   cargo test --all-targets                  one smoke iteration (seconds)
//!
//! The real binary serves on a temporary Unix socket, as bb_worker reaches
//! it. Each `Run(/bin/true)` is interleaved with a direct spawn of
//! `/bin/true` from this process, so that machine noise hits both alike:
//!
//! - latency: the medians (and 90th percentiles) of both, and their ratio;
//! - throughput: actions per second at concurrency 2 and 8, against one
//!   thread spawning `/bin/true` directly;
//! - growth: the runner's resident memory and open descriptors after 1,000
//!   and after 10,000 actions (full run only).
//!
//! Each is measured for the plain configuration and, where this process
//! may create a cgroup under a writable cgroup2 mount, with `actionCgroups`
//! (create, place, measure, kill, remove per action); otherwise that part
//! is skipped with the reason printed. A measurement, not a test: nothing
//! is asserted about time. Figures go to BENCHMARKS.md.
//!
//! Isolation (issue 26, as root): the median latency of `Run(/bin/true)`
//! with each `isolation` option alone, all except `network`, and all
//! together, each sample interleaved with a plain Run, a direct spawn, and
//! spawns of the same `/bin/true` through bubblewrap and `unshare` (the
//! Runs of a round in an order that rotates from round to round);
//! printed as p50 added over the plain Run of the same rounds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbe_runner::cli::client::{self, Target};
use rbe_runner::cli::exec::ActionDirectory;
use rbe_runner::process::spawn_server::SERVE_ARGUMENT;
use rbe_runner::proto::runner::runner_client::RunnerClient;
use tonic::transport::Channel;

/// The FUSE filesystem with slow reads that tests/slow_exec.rs uses.
#[path = "../tests/common/slow_fuse.rs"]
#[allow(dead_code)]
mod slow_fuse;

/// How much to measure.
struct Plan {
    latency_samples: usize,
    throughput_actions: usize,
    /// How long the delayed exec waits.
    exec_delay: Duration,
    growth: bool,
    /// Rounds of the isolation comparison (one sample of each per round).
    isolation_rounds: usize,
}

const FULL: Plan = Plan {
    latency_samples: 2000,
    throughput_actions: 2000,
    exec_delay: Duration::from_secs(1),
    growth: true,
    isolation_rounds: 1000,
};

/// At most a few seconds: `cargo test --all-targets` runs this too.
const SMOKE: Plan = Plan {
    latency_samples: 20,
    throughput_actions: 20,
    exec_delay: Duration::from_millis(200),
    growth: false,
    isolation_rounds: 5,
};

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let plan = if full { FULL } else { SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "run_overhead ({}), {} cores, build directories in {}, runner {}",
        if full { "full" } else { "smoke" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench_directory().display(),
        runner_executable().display()
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10} {:>10}",
        "config",
        "run p50",
        "run p90",
        "floor p50",
        "floor p90",
        "ratio",
        "c=2 /s",
        "c=8 /s",
        "floor /s"
    );
    // Both ways of creating children: clone3 where the runner finds it
    // (its startup log says which), and the clone fallback that
    // containers' seccomp profiles leave.
    // RBE_BENCH_ONLY=WORD measures only the configurations whose name
    // contains it ("plain", "actionCgroups", "clone"), for profiles.
    let only = std::env::var("RBE_BENCH_ONLY").unwrap_or_default();
    // RBE_BENCH_CONFIG=JSON: merged into every configuration measured
    // here, such as `{"isolation":{"network":"off"}}` for the sequential
    // and concurrent figures of isolated actions.
    let config: serde_json::Value = std::env::var("RBE_BENCH_CONFIG")
        .ok()
        .map(|json| serde_json::from_str(&json).expect("RBE_BENCH_CONFIG is JSON"))
        .unwrap_or_else(|| serde_json::json!({}));
    for (spawn, suffix) in [("auto", ""), ("fallback", " (clone)")] {
        let name = format!("plain{suffix}");
        if name.contains(&only) {
            runtime.block_on(measure(&name, config.clone(), spawn, &plan));
        }
        if !format!("actionCgroups{suffix}").contains(&only) {
            continue;
        }
        match TestCgroup::create() {
            Ok(cgroup) => {
                let mut extra = config.clone();
                extra["actionCgroups"] = serde_json::json!({ "parentPath": cgroup.relative });
                let name = format!("actionCgroups{suffix}");
                runtime.block_on(measure(&name, extra, spawn, &plan));
            }
            Err(reason) => println!("actionCgroups{suffix}: skipped: {reason}"),
        }
    }
    if "isolation".contains(&only) {
        runtime.block_on(measure_isolation(&plan));
    }
}

/// Starts a runner with `extra` merged into a minimal configuration,
/// measures it and stops it.
async fn measure(name: &str, extra: serde_json::Value, spawn: &str, plan: &Plan) {
    let runner = Runner::start(extra, spawn);
    let channel = client::connect(&Target::Socket(runner.socket.clone()))
        .await
        .expect("connect to the runner");

    let mut runs = Vec::with_capacity(plan.latency_samples);
    let mut floors = Vec::with_capacity(plan.latency_samples);
    let mut client = RunnerClient::new(channel.clone());
    let counting = InstructionCount::start(runner.child.id());
    let work_before = runner.work();
    let mut footprint_at_1000 = None;
    for done in 1..=plan.latency_samples {
        floors.push(spawn_true());
        let request = runner.request();
        let start = Instant::now();
        client.run(request).await.expect("Run(/bin/true)");
        runs.push(start.elapsed());
        if done == 1_000 {
            footprint_at_1000 = Some(runner.footprint());
        }
    }
    let instructions = counting.finish();
    let work = runner.work().since(&work_before, plan.latency_samples);
    let (run_p50, run_p90) = percentiles(&mut runs);
    let (floor_p50, floor_p90) = percentiles(&mut floors);

    // The server path alone: the same client and connection, a unary call
    // the runner answers without an action (CheckReadiness of the build
    // directory's default path). What the Run costs above this is the
    // action's.
    let readiness_before = runner.work();
    for _ in 0..plan.latency_samples {
        client
            .check_readiness(rbe_runner::proto::runner::CheckReadinessRequest::default())
            .await
            .expect("CheckReadiness");
    }
    let readiness = runner.work().since(&readiness_before, plan.latency_samples);

    // The same Runs one after another with nothing in between: the runner
    // alone, its caches warm. The sequential phase above spawns the floor's
    // `/bin/true` between Runs, which costs the runner CPU of its own
    // (caches and TLB refilled after each spawn of the benchmark's).
    let back_to_back_before = runner.work();
    for _ in 0..plan.latency_samples {
        let request = runner.request();
        client.run(request).await.expect("Run(/bin/true)");
    }
    let back_to_back = runner
        .work()
        .since(&back_to_back_before, plan.latency_samples);

    let client_before = own_cpu_micros();
    let runner_before = runner.work();
    let concurrent_2 = throughput(&runner, &channel, 2, plan.throughput_actions).await;
    let client_cpu = (own_cpu_micros() - client_before) / plan.throughput_actions as f64;
    let concurrent_work = runner.work().since(&runner_before, plan.throughput_actions);
    let before_8 = runner.work();
    let concurrent_8 = throughput(&runner, &channel, 8, plan.throughput_actions).await;
    // Eight at once: the shape of a worker pod (bb_worker's concurrency 8).
    let work_8 = runner.work().since(&before_8, plan.throughput_actions);
    let floor_rate = {
        let start = Instant::now();
        for _ in 0..plan.throughput_actions {
            spawn_true();
        }
        plan.throughput_actions as f64 / start.elapsed().as_secs_f64()
    };
    println!(
        "{name:<22} {:>10} {:>10} {:>10} {:>10} {:>6.2}x {:>10.0} {:>10.0} {:>10.0}",
        micros(run_p50),
        micros(run_p90),
        micros(floor_p50),
        micros(floor_p90),
        run_p50.as_secs_f64() / floor_p50.as_secs_f64(),
        concurrent_2,
        concurrent_8,
        floor_rate
    );

    println!(
        "{name:<22} runner per action (sequential): {:.0} µs of CPU, {:.1} context switches \
         ({:.1} of them preemptions); spawn server {:.0} µs",
        work.cpu_micros, work.context_switches, work.involuntary, work.spawn_server_micros
    );
    println!(
        "{name:<22} runner per action (sequential, back to back): {:.0} µs of CPU, \
         {:.1} context switches ({:.1} of them preemptions); spawn server {:.0} µs",
        back_to_back.cpu_micros,
        back_to_back.context_switches,
        back_to_back.involuntary,
        back_to_back.spawn_server_micros
    );
    println!(
        "{name:<22} runner per CheckReadiness (sequential, no action): {:.0} µs of CPU, \
         {:.1} context switches ({:.1} of them preemptions)",
        readiness.cpu_micros, readiness.context_switches, readiness.involuntary
    );
    println!(
        "{name:<22} at c=2: runner {:.0} µs of CPU and {:.1} context switches per action \
         ({:.1} of them preemptions), spawn server {:.0} µs, client (this benchmark) \
         {client_cpu:.0} µs of CPU per action",
        concurrent_work.cpu_micros,
        concurrent_work.context_switches,
        concurrent_work.involuntary,
        concurrent_work.spawn_server_micros
    );
    println!(
        "{name:<22} at c=8: runner {:.0} µs of CPU and {:.1} context switches per action \
         ({:.1} of them preemptions), spawn server {:.0} µs",
        work_8.cpu_micros, work_8.context_switches, work_8.involuntary, work_8.spawn_server_micros
    );
    match delayed_exec(&runner, &channel, plan).await {
        Ok((undelayed, delayed)) => println!(
            "{name:<22} c=2 while one exec waits {:?} on FUSE: {delayed:.0}/s against \
             {undelayed:.0}/s undelayed ({:.2}x)",
            plan.exec_delay,
            delayed / undelayed
        ),
        Err(reason) => println!("{name:<22} delayed exec: skipped: {reason}"),
    }
    match instructions {
        Ok(count) => println!(
            "{name:<22} runner instructions per action (perf stat): {}",
            count / plan.latency_samples as u64
        ),
        Err(reason) => println!("{name:<22} runner instructions per action: {reason}"),
    }

    if plan.growth {
        let mut client = RunnerClient::new(channel.clone());
        let mut done = plan.latency_samples + 2 * plan.throughput_actions;
        // By now the event stream's replay buffer (4,096 events by
        // default, two per action) is full: what grows after this is not
        // bounded by configuration.
        let (rss_full, _) = runner.footprint();
        let full_at = done;
        while done < 10_000 {
            client.run(runner.request()).await.expect("Run(/bin/true)");
            done += 1;
        }
        let (rss, fds) = runner.footprint();
        if let Some((rss_1000, fds_1000)) = footprint_at_1000 {
            println!(
                "{name:<22} RSS {rss_1000} KiB and {fds_1000} descriptors after 1,000 actions; \
                 {rss} KiB ({:+} KiB) and {fds} after {done}; {:+} KiB from {full_at} to {done}",
                rss as i64 - rss_1000 as i64,
                rss as i64 - rss_full as i64
            );
        }
    }
}

/// Actions per second with `concurrency` calls in flight on one
/// connection, as bb_worker sends them.
async fn throughput(runner: &Runner, channel: &Channel, concurrency: usize, actions: usize) -> f64 {
    let requests: Vec<_> = (0..actions).map(|_| runner.request()).collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(requests));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let queue = queue.clone();
            let mut client = RunnerClient::new(channel.clone());
            tokio::spawn(async move {
                loop {
                    let request = queue.lock().expect("queue lock").pop();
                    let Some(request) = request else { break };
                    client.run(request).await.expect("Run(/bin/true)");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a throughput worker");
    }
    actions as f64 / start.elapsed().as_secs_f64()
}

/// Runs per second at concurrency 2 over `plan.exec_delay`, first as it
/// is, then while one more Run's program waits that long for its first
/// read on a FUSE filesystem (bb_worker's virtual build directory loading
/// a tool from the CAS): only the Runs answered before the delayed one are
/// counted. Needs root and `/dev/fuse`.
async fn delayed_exec(
    runner: &Runner,
    channel: &Channel,
    plan: &Plan,
) -> Result<(f64, f64), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("mounting FUSE needs root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    let undelayed = rate_until(runner, channel, 2, tokio::time::sleep(plan.exec_delay)).await;
    let mounted = tempfile::tempdir().map_err(|err| err.to_string())?;
    let fuse = slow_fuse::SlowFuse::mount(mounted.path(), plan.exec_delay);
    let action = ActionDirectory::create(&runner.build_dir).map_err(|err| err.to_string())?;
    let request = action.request(vec![fuse.script().display().to_string()], Vec::new());
    let mut client = RunnerClient::new(channel.clone());
    let slow = tokio::spawn(async move { client.run(request).await });
    fuse.wait_for_a_read(Duration::from_secs(10));
    // The window is the delayed Run's own: from its read reaching the
    // server to its answer.
    let done = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = done.clone();
    let waiter = tokio::spawn(async move {
        let answered = slow.await;
        notify.notify_one();
        answered
    });
    let delayed = rate_until(runner, channel, 2, done.notified()).await;
    waiter
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| err.to_string())?
        .map_err(|status| format!("the delayed Run failed: {status}"))?;
    Ok((undelayed, delayed))
}

/// Runs per second with `concurrency` calls in flight on one connection,
/// counting those answered before `stop` resolves.
async fn rate_until(
    runner: &Runner,
    channel: &Channel,
    concurrency: usize,
    stop: impl std::future::Future<Output = ()>,
) -> f64 {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stopped = std::sync::Arc::new(AtomicBool::new(false));
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (stopped, answered) = (stopped.clone(), answered.clone());
            let mut client = RunnerClient::new(channel.clone());
            let build_dir = runner.build_dir.clone();
            tokio::spawn(async move {
                while !stopped.load(Ordering::SeqCst) {
                    let action = ActionDirectory::create(&build_dir).expect("an action directory");
                    let request = action.request(vec!["/bin/true".into()], Vec::new());
                    client.run(request).await.expect("Run(/bin/true)");
                    if !stopped.load(Ordering::SeqCst) {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    stop.await;
    stopped.store(true, Ordering::SeqCst);
    let rate = answered.load(Ordering::SeqCst) as f64 / start.elapsed().as_secs_f64();
    for worker in workers {
        worker.await.expect("a throughput worker");
    }
    rate
}

/// The isolated configurations measured: each option alone, `ipc` and
/// `hostname` together, everything but `network`, and everything.
fn isolation_configurations() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let all_but_network = json!({
        "pid": true, "tmp": "private", "ipc": true, "hostname": "localhost",
    });
    let mut all = all_but_network.clone();
    all["network"] = json!("off");
    vec![
        ("pid", json!({ "pid": true })),
        ("network off", json!({ "network": "off" })),
        ("tmp private", json!({ "tmp": "private" })),
        ("ipc", json!({ "ipc": true })),
        ("hostname", json!({ "hostname": "localhost" })),
        (
            "ipc + hostname",
            json!({ "ipc": true, "hostname": "localhost" }),
        ),
        ("all but network", all_but_network),
        ("all", all),
    ]
}

/// The sandbox tools' spawn of the same `/bin/true`, for comparison.
fn sandbox_commands() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "bwrap",
            vec![
                "bwrap",
                "--ro-bind",
                "/",
                "/",
                "--unshare-all",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "/bin/true",
            ],
        ),
        (
            "unshare",
            vec![
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--net",
                "--ipc",
                "--uts",
                "/bin/true",
            ],
        ),
    ]
}

/// How long one `Run(/bin/true)` on `runner` takes.
async fn timed_run(client: &mut RunnerClient<Channel>, runner: &Runner) -> Duration {
    let request = runner.request();
    let start = Instant::now();
    let response = client.run(request).await.expect("Run(/bin/true)");
    let took = start.elapsed();
    assert_eq!(response.into_inner().exit_code, 0);
    took
}

/// One spawn and wait of `command`; None if it cannot run here.
fn spawn_command(command: &[&str]) -> Option<Duration> {
    let start = Instant::now();
    let status = Command::new(command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let took = start.elapsed();
    status.success().then_some(took)
}

/// Issue 26's comparison: per round, one `Run(/bin/true)` on a plain
/// runner and on each isolated one, one direct spawn and one through each
/// sandbox tool, so that the machine's noise hits all alike; then each
/// median and what it adds over the plain Run's (the tools' over the
/// direct spawn's too).
async fn measure_isolation(plan: &Plan) {
    if !nix::unistd::Uid::effective().is_root() {
        println!("isolation: skipped: namespaces need root (CAP_SYS_ADMIN)");
        return;
    }
    let plain = Runner::start(serde_json::json!({}), "auto");
    // RBE_BENCH_ISOLATION_ONLY=WORD,WORD: only the configurations whose
    // name contains one of them, and no sandbox tools (an A/B look at one
    // change).
    let only = std::env::var("RBE_BENCH_ISOLATION_ONLY").ok();
    let mut runners = Vec::new();
    for (name, isolation) in isolation_configurations() {
        if only
            .as_ref()
            .is_some_and(|only| !only.split(',').any(|word| name.contains(word)))
        {
            continue;
        }
        match Runner::try_start(serde_json::json!({ "isolation": isolation }), "auto") {
            Ok(runner) => runners.push((name, runner)),
            Err(log) => println!(
                "isolation {name}: skipped: the runner refused it: {}",
                log.lines().last().unwrap_or_default()
            ),
        }
    }
    let mut tools = Vec::new();
    for (name, command) in sandbox_commands().into_iter().filter(|_| only.is_none()) {
        match spawn_command(&command) {
            Some(_) => tools.push((name, command)),
            None => println!(
                "isolation {name}: skipped: `{}` fails here",
                command.join(" ")
            ),
        }
    }
    let connect = |runner: &Runner| {
        let socket = runner.socket.clone();
        async move {
            RunnerClient::new(
                client::connect(&Target::Socket(socket))
                    .await
                    .expect("connect to the runner"),
            )
        }
    };
    let mut plain_client = connect(&plain).await;
    let mut clients = Vec::new();
    for (_, runner) in &runners {
        clients.push(connect(runner).await);
    }
    // RBE_BENCH_ISOLATION_ROUNDS=N: another count (a quick look).
    let rounds = std::env::var("RBE_BENCH_ISOLATION_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(plan.isolation_rounds);
    let (mut plain_runs, mut floors) = (Vec::new(), Vec::new());
    let mut isolated_runs = vec![Vec::with_capacity(rounds); runners.len()];
    let mut tool_spawns = vec![Vec::with_capacity(rounds); tools.len()];
    for round in 0..rounds {
        // The Runs in turns, starting one further each round: a Run that
        // follows a namespace's end (the tools', an isolated action's)
        // shares the cores with the kernel dismantling it, and a fixed
        // order gave that to the plain Run every round (`hostname` alone
        // came out below it).
        let turns = runners.len() + 1;
        for turn in 0..turns {
            match (round + turn) % turns {
                0 => plain_runs.push(timed_run(&mut plain_client, &plain).await),
                index => {
                    let (_, runner) = &runners[index - 1];
                    let took = timed_run(&mut clients[index - 1], runner).await;
                    isolated_runs[index - 1].push(took);
                }
            }
        }
        floors.push(spawn_true());
        for (index, (_, command)) in tools.iter().enumerate() {
            tool_spawns[index].push(spawn_command(command).expect("the tool ran before"));
        }
    }
    let (plain_p50, _) = percentiles(&mut plain_runs);
    let (floor_p50, _) = percentiles(&mut floors);
    println!(
        "isolation ({rounds} rounds): plain Run p50 {}, direct spawn p50 {}",
        micros(plain_p50),
        micros(floor_p50)
    );
    let added = |p50: Duration, over: Duration| p50.as_micros() as i128 - over.as_micros() as i128;
    // The lower quartile, which a loaded machine's queue for the cores
    // disturbs least: what an A/B under load compares.
    let quartile = |runs: &[Duration]| runs[(runs.len() - 1) / 4];
    let plain_p25 = quartile(&plain_runs);
    for (index, (name, _)) in runners.iter().enumerate() {
        let (p50, p90) = percentiles(&mut isolated_runs[index]);
        println!(
            "isolation {name:<16} Run p50 {:>8} p90 {:>8}: {:+} µs over the plain Run \
             (p25: {:+} µs)",
            micros(p50),
            micros(p90),
            added(p50, plain_p50),
            added(quartile(&isolated_runs[index]), plain_p25)
        );
    }
    for (index, (name, _)) in tools.iter().enumerate() {
        let (p50, p90) = percentiles(&mut tool_spawns[index]);
        println!(
            "isolation {name:<16} spawn p50 {:>8} p90 {:>8}: {:+} µs over the plain Run, \
             {:+} µs over a direct spawn",
            micros(p50),
            micros(p90),
            added(p50, plain_p50),
            added(p50, floor_p50)
        );
    }
}

/// This process's CPU time so far (user and system), in microseconds.
fn own_cpu_micros() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let micros = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 * 1e6 + time.tv_usec() as f64;
    micros(usage.user_time()) + micros(usage.system_time())
}

/// `perf stat -e instructions` attached to the runner (its threads and
/// the children it forks until they exec), for figures that are
/// reproducible on noisy machines.
struct InstructionCount(Option<Child>);

impl InstructionCount {
    fn start(pid: u32) -> Self {
        let perf = Command::new("perf")
            .args(["stat", "-x,", "-e", "instructions", "-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok();
        // perf needs a moment to attach.
        std::thread::sleep(Duration::from_millis(200));
        InstructionCount(perf)
    }

    /// The count, or why there is none.
    fn finish(self) -> Result<u64, String> {
        let Some(perf) = self.0 else {
            return Err("perf is not installed".into());
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(perf.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let output = perf
            .wait_with_output()
            .map_err(|err| format!("perf failed: {err}"))?;
        let text = String::from_utf8_lossy(&output.stderr);
        let line = text
            .lines()
            .find(|line| line.contains("instructions"))
            .ok_or_else(|| format!("perf printed no count: {}", text.trim()))?;
        let value = line.split(',').next().unwrap_or_default();
        value
            .parse()
            .map_err(|_| format!("perf stat reports {value:?} (no hardware counters here)"))
    }
}

/// CPU time and context switches of the runner: with hardware counters
/// missing, the figures that least depend on what else the machine does.
/// Switches are summed over the threads alive when read (a thread that
/// exits in between takes its count along), so they are approximate.
struct Work {
    cpu_micros: f64,
    context_switches: f64,
    /// Of those, the ones where the runner was preempted rather than
    /// going to sleep itself.
    involuntary: f64,
    /// CPU time of the runner's spawn server (its helper process that
    /// creates actions' processes), not in `cpu_micros`: what the runner
    /// costs per action is the two together.
    spawn_server_micros: f64,
}

impl Work {
    /// Per action, from `before` to this, over `actions` actions.
    fn since(&self, before: &Work, actions: usize) -> Work {
        let actions = actions.max(1) as f64;
        Work {
            cpu_micros: (self.cpu_micros - before.cpu_micros) / actions,
            context_switches: (self.context_switches - before.context_switches) / actions,
            involuntary: (self.involuntary - before.involuntary) / actions,
            spawn_server_micros: (self.spawn_server_micros - before.spawn_server_micros) / actions,
        }
    }
}

/// The runner measured: `RBE_BENCH_RUNNER` (another build, such as the one
/// before a change, for before/after figures from one benchmark), else
/// this package's.
fn runner_executable() -> PathBuf {
    std::env::var_os("RBE_BENCH_RUNNER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rbe-runner")))
}

/// Where the runners' build directories go: `RBE_BENCH_DIR`, else
/// `/dev/shm` (tmpfs) when there is one, else the temporary directory.
///
/// Each Run creates its stdout and stderr, which the floor does not. On
/// ext4, with many inodes deleted in the last seconds (each configuration
/// removes the 40,000 files and directories of the previous one, as
/// bb_worker removes every action's directory), allocating an inode scans
/// for ones not recently deleted (`find_inode_bit`, `recently_deleted`):
/// a third of the runner's CPU in a profile, a cost of the filesystem and
/// of bb_runner alike, not of the runner. tmpfs keeps it out of the
/// figures; `RBE_BENCH_DIR=/var/tmp` measures it.
fn bench_directory() -> PathBuf {
    if let Some(dir) = std::env::var_os("RBE_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let writable = tempfile::tempdir_in(shm).is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// One direct spawn and wait of `/bin/true`: the floor.
fn spawn_true() -> Duration {
    let start = Instant::now();
    let status = Command::new("/bin/true")
        .stdin(Stdio::null())
        .status()
        .expect("spawn /bin/true");
    assert!(status.success());
    start.elapsed()
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction) as usize];
    (at(0.5), at(0.9))
}

/// The CPU time (user and system) of the process at `proc` (`/proc/PID`),
/// in microseconds; 0 once it is gone.
fn cpu_micros_of(proc: &Path) -> f64 {
    let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
    // utime and stime are fields 14 and 15, counted after the
    // parenthesised command name (which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = fields.get(11..13).map_or(0, |pair| {
        pair.iter()
            .filter_map(|value| value.parse::<u64>().ok())
            .sum()
    });
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second * 1e6
}

/// `/proc/PID` of the spawn server among the children of `runner`: the
/// one started with [`rbe_runner::process::spawn_server::SERVE_ARGUMENT`].
fn spawn_server_of(runner: u32) -> Option<PathBuf> {
    let tasks = std::fs::read_dir(format!("/proc/{runner}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .map(|pid| Path::new("/proc").join(pid))
                .collect::<Vec<_>>()
        })
        .find(|proc| {
            std::fs::read(proc.join("cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|byte| *byte == 0)
                    .any(|argument| argument == SERVE_ARGUMENT.as_bytes())
            })
        })
}

fn micros(duration: Duration) -> String {
    format!("{} µs", duration.as_micros())
}

/// The real binary serving on a temporary socket.
struct Runner {
    _dir: tempfile::TempDir,
    build_dir: PathBuf,
    socket: PathBuf,
    child: Child,
    /// `/proc/PID` of the runner's spawn server, when it has one.
    spawn_server: Option<PathBuf>,
}

impl Runner {
    /// `spawn` is the runner's RBE_RUNNER_SPAWN.
    fn start(extra: serde_json::Value, spawn: &str) -> Runner {
        Runner::try_start(extra, spawn).unwrap_or_else(|log| {
            panic!("the runner did not start serving: {log}");
        })
    }

    /// Like [`Runner::start`]; if the runner exits instead of serving
    /// (a configuration it refuses here), its log.
    fn try_start(extra: serde_json::Value, spawn: &str) -> Result<Runner, String> {
        let dir = tempfile::tempdir_in(bench_directory()).expect("a temporary directory");
        let build_dir = dir.path().join("build");
        std::fs::create_dir(&build_dir).expect("the build directory");
        let socket = dir.path().join("runner.sock");
        let mut config = serde_json::json!({
            "buildDirectoryPath": build_dir,
            "grpcServers": [{ "listenPaths": [socket], "authenticationPolicy": { "allow": {} } }],
        });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        let config_path = dir.path().join("runner.jsonnet");
        std::fs::write(&config_path, config.to_string()).expect("write the configuration");
        // The default log level, as deployed: its line per action is part
        // of the cost.
        let log = dir.path().join("runner.log");
        let mut child = Command::new(runner_executable())
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("RBE_RUNNER_SPAWN", spawn)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the runner's log"))
            .spawn()
            .expect("start rbe-runner");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            let exited = child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let method = text
            .lines()
            .find(|line| line.contains("spawning actions with"))
            .and_then(|line| line.split("reason=").nth(1))
            .unwrap_or("(not logged)");
        println!("  (RBE_RUNNER_SPAWN={spawn}: {method})");
        let spawn_server = spawn_server_of(child.id());
        Ok(Runner {
            _dir: dir,
            build_dir,
            socket,
            child,
            spawn_server,
        })
    }

    /// A Run of `/bin/true` in a fresh action directory (made before the
    /// clock starts).
    fn request(&self) -> rbe_runner::proto::runner::RunRequest {
        let action = ActionDirectory::create(&self.build_dir).expect("an action directory");
        action.request(vec!["/bin/true".into()], Vec::new())
    }

    /// The runner's CPU time and its threads' context switches so far.
    fn work(&self) -> Work {
        let proc = Path::new("/proc").join(self.child.id().to_string());
        let mut context_switches = 0;
        let mut involuntary = 0;
        if let Ok(tasks) = std::fs::read_dir(proc.join("task")) {
            for task in tasks.flatten() {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                context_switches += status
                    .lines()
                    .filter(|line| line.contains("ctxt_switches:"))
                    .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
                involuntary += status
                    .lines()
                    .filter(|line| line.starts_with("nonvoluntary_ctxt_switches:"))
                    .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        Work {
            cpu_micros: cpu_micros_of(&proc),
            context_switches: context_switches as f64,
            involuntary: involuntary as f64,
            spawn_server_micros: self
                .spawn_server
                .as_ref()
                .map_or(0.0, |server| cpu_micros_of(server)),
        }
    }

    /// The runner's resident memory (KiB) and open descriptors.
    fn footprint(&self) -> (u64, usize) {
        let proc = Path::new("/proc").join(self.child.id().to_string());
        let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let fds = std::fs::read_dir(proc.join("fd")).map_or(0, |entries| entries.count());
        (rss, fds)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// A cgroup of this benchmark's own under the cgroup2 mount, for
/// `actionCgroups`; removed afterwards.
struct TestCgroup {
    path: PathBuf,
    /// Its path within the mount, as `parentPath` takes it.
    relative: String,
}

impl TestCgroup {
    fn create() -> Result<TestCgroup, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("needs root to create a cgroup".into());
        }
        let own = rbe_runner::cgroup::locate_own_cgroup(
            Path::new(rbe_runner::cgroup::DEFAULT_PROC_SELF_CGROUP),
            Path::new(rbe_runner::cgroup::DEFAULT_PROC_SELF_MOUNTINFO),
        )
        .map_err(|err| format!("no cgroup v2 here: {err}"))?;
        let mount = rbe_runner::cgroup::host::mount_point_of(&own);
        let name = format!("rbe-runner-bench-{}", std::process::id());
        let path = mount.join(&name);
        std::fs::create_dir(&path)
            .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
        Ok(TestCgroup {
            path,
            relative: format!("/{name}"),
        })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The runner that managed it has stopped; its leaves are empty.
        for leaf in ["actions", "runner"] {
            let _ = std::fs::remove_dir(self.path.join(leaf));
        }
        if let Err(err) = std::fs::remove_dir(&self.path) {
            eprintln!("cannot remove {}: {err}", self.path.display());
        }
    }
}
