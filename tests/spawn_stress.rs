//! Stress test of the spawn path and the reaper (issue 17): the real
//! binary runs 1,000 actions, 8 in flight on one channel as bb_worker
//! sends them, and every action leaves a double-forked orphan behind.
//!
//! Spawning, waiting for actions and reaping adopted orphans all meet in
//! one process here: the runner is a child subreaper, so while actions
//! start and end, their orphans exit as the runner's own children. A status
//! handed to the wrong waiter, rusage taken from the wrong child or an
//! orphan left a zombie shows up as a wrong exit code, a wrong maximum RSS
//! or a zombie at the end. The flood runs once per spawn path: the default
//! (clone3 where the kernel allows it) and the fork fallback that
//! `RBE_RUNNER_SPAWN=fallback` forces.
//!
//! No assertion is about time; every wait is bounded and says what it
//! waited for.

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::*;
use futures_util::stream::{self, StreamExt};
use prost::Name;
use rbe_runner::cli::exec::ActionDirectory;
use rbe_runner::proto::resourceusage::PosixResourceUsage;
use rbe_runner::proto::runner::runner_client::RunnerClient;
use rbe_runner::proto::runner::{RunRequest, RunResponse};
use serde_json::json;
use tonic::transport::Channel;

/// Actions per run, the marker action included.
const ACTIONS: usize = 1000;

/// Calls in flight at once on the one channel, as a bb_worker with 8
/// concurrent actions sends them.
const IN_FLIGHT: usize = 8;

/// Every this many actions, one allocates and touches a large buffer.
const HEAVY_EVERY: usize = 25;

/// Buffer sizes of the heavy actions, in MiB, taken in turn: three classes
/// whose RSS ranges do not overlap, so that rusage swapped between two
/// heavy actions is caught as well as rusage swapped with a light one.
const HEAVY_SIZES_MIB: [i64; 3] = [64, 96, 128];

/// How far above its buffer a heavy action's maximum RSS may lie: dd's
/// code and libraries, the shell, about 2 MiB here.
const HEAVY_SLACK_BYTES: i64 = 16 << 20;

/// Above this, a light action's maximum RSS is not its own. Light actions
/// measure 3 to 6 MiB here: the child is a copy of the runner, charged
/// only with the runner's anonymous pages copied until the exec. A child
/// sharing the runner's memory until its exec (CLONE_VM) would be charged
/// with the runner's whole peak resident set (25 MiB, a debug build), and
/// fail this. Far below the smallest heavy buffer, so that a light action
/// never passes with a heavy one's rusage.
const LIGHT_LIMIT_BYTES: i64 = 16 << 20;

/// Bound on the whole flood of actions, which takes about 5 s here.
const FLOOD_LIMIT: Duration = Duration::from_secs(120);

/// Bound for orphans to exit and be reaped once the flood is over. The
/// longest an orphan sleeps is 0.2 s, the marker's orphan polls every 0.1 s.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// The script of every action but the marker. Arguments: its index, the
/// exit code it must return, how long its orphan sleeps, and the size of
/// the buffer it touches in MiB (0 for none).
///
/// The orphan is double-forked: the subshell exits at once, so the orphan
/// is re-parented to the runner. It calls setsid so that the runner's kill
/// of the action's process group after the action exits does not reach it:
/// it outlives the action and exits on its own, as the runner's child. The
/// action waits, on a pipe, for the orphan's line written after setsid
/// (and fails with 253 without it); otherwise the orphan would often still
/// be in the group when the group is killed. dd touches its whole buffer
/// (it reads /dev/zero into it), and a waited-for child's maximum RSS
/// counts in the action's own.
const ACTION_SCRIPT: &str = r#"
index=$1 code=$2 orphan_sleep=$3 buffer_mib=$4
( setsid sh -c 'echo started; exec sleep "$1" >/dev/null' orphan "$orphan_sleep" </dev/null 2>/dev/null & ) |
    read -r started || exit 253
if [ "$buffer_mib" -gt 0 ]; then
    dd if=/dev/zero of=/dev/null bs="${buffer_mib}M" count=1 2>/dev/null || exit 254
fi
echo "stdout of $index"
echo "stderr of $index" >&2
exit "$code"
"#;

/// The marker action, sent first: its orphan writes its own pid, then
/// lives until the file named by the second argument exists, so that the
/// test can see whose child it is after the action has ended. Argument 1
/// is the exit code.
const MARKER_SCRIPT: &str = r#"
( setsid sh -c 'echo $$ > orphan-pid.tmp && mv orphan-pid.tmp orphan-pid
                echo started
                while [ ! -e "$1" ]; do sleep 0.1; done' marker "$2" </dev/null 2>/dev/null & ) |
    read -r started || exit 253
exit "$1"
"#;

/// Environment variable every process of the run inherits, naming it, so
/// that a leftover can be found wherever it was re-parented to.
const RUN_MARKER: &str = "RBE_STRESS_RUN";

/// Two floods at once on a 2-core machine only make each slower and
/// double the number of processes; one at a time.
static ONE_FLOOD_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_thousand_actions_leaving_orphans_with_the_default_spawn_path() {
    stress("default", |command| {
        command.env_remove("RBE_RUNNER_SPAWN");
    });
}

#[test]
fn a_thousand_actions_leaving_orphans_with_the_fallback_spawn_path() {
    stress("fallback", |command| {
        command.env("RBE_RUNNER_SPAWN", "fallback");
    });
}

fn stress(mode: &str, adjust: impl FnOnce(&mut Command)) {
    let _one_at_a_time = ONE_FLOOD_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let runner = TestRunner::start_with(json!({}), adjust);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let client = RunnerClient::new(runner.channel().await);
        let release = runner.dir.path().join("release-the-marker-orphan");
        let marker_orphan = start_marker(&runner, client.clone(), &release).await;
        flood(mode, &runner, client).await;
        // Still the runner's after the flood, then let go.
        assert_adopted_by_runner(marker_orphan, runner.pid() as i32);
        std::fs::write(&release, b"").unwrap();
        wait_for_every_orphan_reaped(&runner).await;
    });
    eprintln!(
        "spawn_stress ({mode}): {ACTIONS} actions and their orphans in {:.1?}",
        started.elapsed()
    );
}

/// Sends every action but the marker, [`IN_FLIGHT`] at a time on the one
/// channel, and checks that each response is its own action's.
async fn flood(mode: &str, runner: &TestRunner, client: RunnerClient<Channel>) {
    let flood_started = Instant::now();
    let answered = AtomicUsize::new(0);
    let flood = stream::iter(1..ACTIONS)
        .map(|index| {
            let client = client.clone();
            let answered = &answered;
            async move {
                let action = action_directory(&runner.build_dir, index);
                let spec = ActionSpec::of(index);
                let response = send(client, spec.request(&action, runner)).await;
                answered.fetch_add(1, Ordering::Relaxed);
                spec.check(&action, response)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|problem| async move { problem })
        .collect::<Vec<String>>();
    let problems = match tokio::time::timeout(FLOOD_LIMIT, flood).await {
        Ok(problems) => problems,
        // A reaper stuck on an orphan it will not reap never gets to the
        // actions' exits: say how many zombies the runner holds.
        Err(_) => panic!(
            "only {} of {} actions were answered within {FLOOD_LIMIT:?}; {}",
            answered.load(Ordering::Relaxed),
            ACTIONS - 1,
            describe_children(runner.pid() as i32)
        ),
    };
    eprintln!(
        "spawn_stress ({mode}): {} actions answered in {:.1?}",
        ACTIONS - 1,
        flood_started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} of {} responses were not their own action's:\n{}",
        problems.len(),
        ACTIONS - 1,
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Waits until no process of the run is left, wherever it was re-parented
/// to, and the runner has no child left: no zombie among them.
async fn wait_for_every_orphan_reaped(runner: &TestRunner) {
    let run_marker = format!("{RUN_MARKER}={}", runner.dir.path().display());
    let runner_pid = runner.pid() as i32;
    wait_bounded(
        "every orphan of the run to exit",
        || processes_carrying(&run_marker).is_empty(),
        || {
            let mut text = String::from("still running (pid, parent, state, command):\n");
            for process in processes_carrying(&run_marker) {
                let _ = writeln!(text, "  {process:?}");
            }
            text
        },
    )
    .await;
    wait_bounded(
        "the runner to have reaped every child (orphans included)",
        || children_of(runner_pid).is_empty(),
        || describe_children(runner_pid),
    )
    .await;
}

/// The runner's children, zombies counted, for failure messages.
fn describe_children(runner_pid: i32) -> String {
    let children = children_of(runner_pid);
    let zombies = children.iter().filter(|child| child.state == 'Z').count();
    let mut text = format!(
        "the runner (pid {runner_pid}) has {} children, {zombies} of them zombies \
         (not reaped); the first (pid, parent, state, command):\n",
        children.len()
    );
    for child in children.iter().take(20) {
        let _ = writeln!(text, "  {child:?}");
    }
    text
}

/// Runs the marker action and checks that its orphan, alive after the
/// action ended, is the runner's child: otherwise orphans are not adopted
/// by the runner, and no zombie could ever show up in this test. Returns
/// the orphan's pid; it lives until `release` exists.
async fn start_marker(runner: &TestRunner, client: RunnerClient<Channel>, release: &Path) -> i32 {
    let action = action_directory(&runner.build_dir, 0);
    let code = exit_code(0);
    let request = action.request(
        vec![
            "sh".into(),
            "-c".into(),
            MARKER_SCRIPT.into(),
            "marker".into(),
            code.to_string(),
            release.display().to_string(),
        ],
        run_environment(runner),
    );
    let response = send(client, request)
        .await
        .unwrap_or_else(|status| panic!("the marker action failed: {status:?}"));
    assert_eq!(
        response.exit_code,
        i64::from(code),
        "marker action; stderr: {}",
        read(&action.path.join("stderr"))
    );
    // The action waited for the orphan's line, written after its pid file.
    let orphan: i32 = read(&action.path.join("root/orphan-pid"))
        .trim()
        .parse()
        .expect("the orphan wrote its pid");
    assert_adopted_by_runner(orphan, runner.pid() as i32);
    orphan
}

fn assert_adopted_by_runner(orphan: i32, runner_pid: i32) {
    let process = process_info(orphan)
        .unwrap_or_else(|| panic!("the marker action's orphan (pid {orphan}) is gone"));
    assert_eq!(
        (process.parent, process.state == 'Z'),
        (runner_pid, false),
        "the marker action's orphan {process:?} should be alive and a child of the runner \
         (pid {runner_pid}): its parent shell has exited"
    );
}

/// What one action of the flood does and what its response must show.
struct ActionSpec {
    index: usize,
    exit_code: i32,
    /// 0 for a light action.
    buffer_mib: i64,
}

impl ActionSpec {
    fn of(index: usize) -> ActionSpec {
        let buffer_mib = if index % HEAVY_EVERY == HEAVY_EVERY - 1 {
            HEAVY_SIZES_MIB[(index / HEAVY_EVERY) % HEAVY_SIZES_MIB.len()]
        } else {
            0
        };
        ActionSpec {
            index,
            exit_code: exit_code(index),
            buffer_mib,
        }
    }

    fn request(&self, action: &ActionDirectory, runner: &TestRunner) -> RunRequest {
        // The orphans sleep 20 to 200 ms, so that they keep exiting while
        // later actions start and end.
        let orphan_sleep_ms = (self.index % 10 + 1) * 20;
        action.request(
            vec![
                "sh".into(),
                "-c".into(),
                ACTION_SCRIPT.into(),
                "action".into(),
                self.index.to_string(),
                self.exit_code.to_string(),
                format!("0.{orphan_sleep_ms:03}"),
                self.buffer_mib.to_string(),
            ],
            run_environment(runner),
        )
    }

    /// What is wrong with `response` for this action, if anything.
    fn check(
        &self,
        action: &ActionDirectory,
        response: Result<RunResponse, tonic::Status>,
    ) -> Option<String> {
        let index = self.index;
        let response = match response {
            Ok(response) => response,
            Err(status) => return Some(format!("action {index}: {status:?}")),
        };
        let stderr = std::fs::read_to_string(action.path.join("stderr")).unwrap_or_default();
        let stdout = std::fs::read_to_string(action.path.join("stdout")).unwrap_or_default();
        if response.exit_code != i64::from(self.exit_code) {
            return Some(format!(
                "action {index}: exit code {} instead of {}; stderr {stderr:?}",
                response.exit_code, self.exit_code
            ));
        }
        if stdout != format!("stdout of {index}\n") || stderr != format!("stderr of {index}\n") {
            return Some(format!(
                "action {index}: stdout {stdout:?}, stderr {stderr:?}"
            ));
        }
        let usage = match response.resource_usage.first() {
            Some(any) if any.type_url == PosixResourceUsage::type_url() => {
                match any.to_msg::<PosixResourceUsage>() {
                    Ok(usage) => usage,
                    Err(err) => return Some(format!("action {index}: POSIX usage: {err}")),
                }
            }
            other => {
                return Some(format!(
                    "action {index}: no POSIX resource usage first, but {other:?}"
                ))
            }
        };
        self.check_usage(&usage)
            .map(|problem| format!("action {index}: {problem}; usage {usage:?}"))
    }

    fn check_usage(&self, usage: &PosixResourceUsage) -> Option<String> {
        // Any process that ran and executed a program used some CPU and
        // took page faults: zeros mean the usage is not a real child's.
        let cpu = |duration: &Option<prost_types::Duration>| {
            duration
                .as_ref()
                .map_or(0, |d| d.seconds * 1_000_000_000 + i64::from(d.nanos))
        };
        if cpu(&usage.user_time) + cpu(&usage.system_time) <= 0 {
            return Some("no CPU time".into());
        }
        if usage.page_reclaims <= 0 {
            return Some("no page reclaims".into());
        }
        if !usage.termination_signal.is_empty() {
            return Some("a termination signal".into());
        }
        let rss = usage.maximum_resident_set_size;
        if self.buffer_mib > 0 {
            let buffer = self.buffer_mib << 20;
            if rss < buffer || rss >= buffer + HEAVY_SLACK_BYTES {
                return Some(format!(
                    "touched {} MiB, yet its maximum RSS is {rss} bytes",
                    self.buffer_mib
                ));
            }
        } else if rss <= 0 || rss >= LIGHT_LIMIT_BYTES {
            return Some(format!("a light action with a maximum RSS of {rss} bytes"));
        }
        None
    }
}

/// The exit code of action `index`: never 0 (what a status of the wrong
/// process, such as an orphan's, would most likely carry), never 253 or 254
/// (the script's own failures), and different for any 250 consecutive actions.
fn exit_code(index: usize) -> i32 {
    (index % 250) as i32 + 1
}

/// The environment of every action: the test PATH and the marker naming
/// the run, which their orphans inherit.
fn run_environment(runner: &TestRunner) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), TEST_PATH.into()),
        (RUN_MARKER.into(), runner.dir.path().display().to_string()),
    ]
}

async fn send(
    mut client: RunnerClient<Channel>,
    request: RunRequest,
) -> Result<RunResponse, tonic::Status> {
    client.run(request).await.map(tonic::Response::into_inner)
}

/// The directory of action `index`, laid out as bb_worker lays it out,
/// named by its index so that no two actions of a run can share one.
fn action_directory(build_dir: &Path, index: usize) -> ActionDirectory {
    let relative = format!("stress-{index}");
    let path = build_dir.join(&relative);
    for sub in ["root", "tmp", "server_logs"] {
        std::fs::create_dir_all(path.join(sub)).expect("create action directory");
    }
    ActionDirectory { relative, path }
}

/// One process as /proc/<pid>/stat shows it.
#[derive(Debug)]
#[allow(dead_code)] // `command` is read through Debug in failure messages
struct ProcessInfo {
    pid: i32,
    parent: i32,
    state: char,
    command: String,
}

fn process_info(pid: i32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (command) state ppid ...": the command may hold spaces and
    // parentheses, so split at the last ") ".
    let (head, rest) = stat.rsplit_once(") ")?;
    let command = head.split_once(" (")?.1.to_string();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some(ProcessInfo {
        pid,
        parent,
        state,
        command,
    })
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("list /proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every child of `parent`, zombies included, but for its spawn server,
/// which lives as long as the runner.
fn children_of(parent: i32) -> Vec<ProcessInfo> {
    all_pids()
        .into_iter()
        .filter_map(process_info)
        .filter(|process| process.parent == parent && !is_spawn_server(process.pid))
        .collect()
}

/// Live processes whose environment holds `entry` (a zombie's environment
/// reads empty).
fn processes_carrying(entry: &str) -> Vec<ProcessInfo> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|byte| *byte == 0)
                    .any(|variable| variable == entry.as_bytes())
            })
        })
        .filter_map(process_info)
        .collect()
}

/// Waits until `done` holds, at most [`SETTLE_LIMIT`]; on timeout, panics
/// with what it waited for and what `describe` says about the state.
async fn wait_bounded(what: &str, mut done: impl FnMut() -> bool, describe: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {SETTLE_LIMIT:?} waiting for {what}; {}",
                describe()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
