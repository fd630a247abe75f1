//! `rbe-runner report` over ten million synthetic events in eight files:
//! the time it takes and the peak memory (maximum RSS) of the report
//! process, for BENCHMARKS.md. Not a test: nothing here fails on a slow
//! machine.
//!
//!   cargo bench --bench report
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a smoke
//! run over 1,000 actions. `RBE_RUNNER_UNDER_TEST=PATH` measures another
//! build (an older one, for a before and after) instead of this one.
//!
//! Each run's wall time, CPU time (user plus system) and peak RSS are
//! printed: on a machine others share, the CPU time says more about the
//! report than the wall time.
//!
//! The journals are four runners' (5,000,000 actions on 8 slots each
//! runner: a start and a finish each, with POSIX and cgroup usage, as the
//! runner writes them), each split into `events.jsonl.1` and
//! `events.jsonl` with the action at the split started in one and
//! finished in the other, as rotation leaves them. The full set (7.4 GB)
//! is generated once under `target/bench-report/` and reused: generating
//! it takes longer than reading it.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Actions in the full run, over all runners.
const ACTIONS: u64 = 5_000_000;
/// Actions in the smoke run.
const SMOKE_ACTIONS: u64 = 1_000;
const RUNNERS: u64 = 4;
const SLOTS: u64 = 8;
const PROGRAMS: [&str; 6] = ["javac", "clang", "python3", "ld.lld", "protoc", "go"];

fn timestamp(nanos: u64) -> String {
    let seconds = 1_767_225_600 + nanos / 1_000_000_000;
    prost_types::Timestamp {
        seconds: seconds as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
    .to_string()
}

/// Writes one runner's journal, `actions` actions, into `journal.1` and
/// `journal`.
fn write_runner(journal: &Path, runner: u64, actions: u64) -> std::io::Result<()> {
    let instance = format!("0badcaf{runner}");
    let mut rotated = journal.as_os_str().to_owned();
    rotated.push(".1");
    let create = |path: &Path| -> std::io::Result<BufWriter<std::fs::File>> {
        Ok(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path)?,
        ))
    };
    let mut older = create(Path::new(&rotated))?;
    let mut newer = create(journal)?;
    writeln!(
        older,
        r#"{{"sequence":"1","time":"{}","runnerInstance":"{instance}","runnerState":{{"acceptingWork":true,"reason":"startup","memoryBudgetBytes":"17179869184","runnerName":"bench-{runner}"}}}}"#,
        timestamp(0)
    )?;
    let mut random: u64 = 0x2545_f491_4f6c_dd1d ^ runner;
    let mut sequence = 1;
    for action in 0..actions {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        // Each slot runs its actions back to back; wall 0.1–2.1 s.
        let wall_nanos = 100_000_000 + random % 2_000_000_000;
        let start = (action / SLOTS) * 2_200_000_000 + (action % SLOTS) * 1_000_000;
        let program = PROGRAMS[(random % PROGRAMS.len() as u64) as usize];
        let memory = (16_u64 << 20) + (random >> 20) % (2 << 30);
        let id = format!("{instance}-{action}");
        // The action at the split starts before the rotation and finishes
        // after it.
        let out = if action < actions / 2 {
            &mut older
        } else {
            &mut newer
        };
        sequence += 1;
        writeln!(
            out,
            r#"{{"sequence":"{sequence}","time":"{}","runnerInstance":"{instance}","actionStarted":{{"actionId":"{id}","arguments":["{program}","-c","src/file{action}.c","-o","out/file{action}.o"],"inputRootDirectory":"/worker/build/{action}","pid":"{}","cgroup":"/sys/fs/cgroup/runner/{id}"}}}}"#,
            timestamp(start),
            1000 + action
        )?;
        let out = if action + 1 < actions / 2 {
            &mut older
        } else {
            &mut newer
        };
        sequence += 1;
        let wall = wall_nanos as f64 / 1e9;
        writeln!(
            out,
            r#"{{"sequence":"{sequence}","time":"{}","runnerInstance":"{instance}","actionFinished":{{"actionId":"{id}","exitCode":"0","status":{{"code":0,"message":"","details":[]}},"resourceUsage":[{{"@type":"type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage","userTime":"{:.6}s","systemTime":"0.010s","maximumResidentSetSize":"{}","pageReclaims":"100","pageFaults":"0","swaps":"0","blockInputOperations":"0","blockOutputOperations":"8","messagesSent":"0","messagesReceived":"0","signalsReceived":"0","voluntaryContextSwitches":"10","involuntaryContextSwitches":"3","terminationSignal":""}},{{"@type":"type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage","memoryEventsLow":"0","memoryEventsHigh":"0","memoryEventsMax":"0","memoryEventsOom":"0","memoryEventsOomKill":"0","memoryEventsOomGroupKill":"0","memoryPeak":"{memory}","memoryPressureSomeTotal":"0.001s","memoryPressureFullTotal":"0s","cpuPressureSomeTotal":"{:.6}s","cpuPressureFullTotal":"0s","ioPressureSomeTotal":"0.002s","ioPressureFullTotal":"0s"}}],"wallTime":"{wall:.9}s","oomVerdict":"OOM_VERDICT_NONE","terminationReason":"TERMINATION_REASON_NONE"}}}}"#,
            timestamp(start + wall_nanos),
            wall * 0.9,
            memory / 2,
            wall * 0.05,
        )?;
    }
    older.flush()?;
    newer.flush()
}

/// The journals named on the command line (each with its `.1`), written
/// into `dir` unless a complete set of this size is already there.
fn journals(dir: &Path, actions: u64) -> Vec<PathBuf> {
    let journals: Vec<PathBuf> = (0..RUNNERS)
        .map(|runner| dir.join(format!("runner-{runner}/events.jsonl")))
        .collect();
    // Written last, so that an interrupted generation is started again.
    let complete = dir.join("complete");
    let expected = format!("{actions} actions, {RUNNERS} runners\n");
    if std::fs::read_to_string(&complete).ok().as_deref() == Some(expected.as_str()) {
        return journals;
    }
    let _ = std::fs::remove_file(&complete);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (runner, journal) in journals.iter().enumerate() {
            scope.spawn(move || {
                std::fs::create_dir_all(journal.parent().unwrap()).expect("create the directory");
                write_runner(journal, runner as u64, actions / RUNNERS)
                    .expect("write the synthetic journal");
            });
        }
    });
    std::fs::write(&complete, expected).expect("mark the journals complete");
    println!(
        "generated {} in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    journals
}

/// What one run of the report cost.
struct Cost {
    wall_seconds: f64,
    cpu_seconds: f64,
    peak_rss_bytes: u64,
}

/// Runs `rbe-runner report ARGUMENTS JOURNALS`; its own usage comes from
/// `wait4`, not `RUSAGE_CHILDREN`, whose peak RSS would be the largest of
/// every run so far.
#[allow(
    clippy::zombie_processes,
    reason = "reaped by wait4, which std's Child::wait cannot replace: it drops the rusage"
)]
fn measure(binary: &Path, arguments: &[&str], journals: &[PathBuf]) -> Cost {
    let started = Instant::now();
    let child = Command::new(binary)
        .arg("report")
        .args(arguments)
        .args(journals)
        .stdout(Stdio::null())
        .spawn()
        .expect("run rbe-runner report");
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child (std never reaps a child it was not
    // asked to wait for) with pointers to two live locals.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(waited, child.id() as i32, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "report failed: wait status {status:#x}"
    );
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Cost {
        wall_seconds: elapsed,
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        peak_rss_bytes: usage.ru_maxrss as u64 * 1024,
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let (dir, actions) = if full {
        (target.join("bench-report"), ACTIONS)
    } else {
        (target.join("tmp/bench-report-smoke"), SMOKE_ACTIONS)
    };
    let journals = journals(&dir, actions);
    let bytes: u64 = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|runner| std::fs::read_dir(runner.path()).into_iter().flatten())
        .flatten()
        .filter_map(|file| file.metadata().ok())
        .map(|metadata| metadata.len())
        .sum();
    let binary = std::env::var_os("RBE_RUNNER_UNDER_TEST").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_rbe-runner")),
        PathBuf::from,
    );
    println!("{}", binary.display());
    for arguments in [vec!["--json"], vec!["--json", "--since", "1h"]] {
        let cost = measure(&binary, &arguments, &journals);
        println!(
            "report {}: {} events in {} files ({:.0} MB) in {:.2} s ({:.2} s of CPU), \
             peak RSS {:.0} MiB",
            arguments.join(" "),
            actions * 2 + RUNNERS,
            RUNNERS * 2,
            bytes as f64 / 1e6,
            cost.wall_seconds,
            cost.cpu_seconds,
            cost.peak_rss_bytes as f64 / f64::from(1 << 20)
        );
    }
    if !full {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
