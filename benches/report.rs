//! `rbe-runner report` over one million synthetic events: the time it
//! takes and the peak memory (maximum RSS) of the report process, for
//! BENCHMARKS.md. Not a test: nothing here fails on a slow machine.
//!
//!   cargo bench --bench report
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a smoke
//! run over 1,000 actions.
//!
//! The journal (500,000 actions on 8 slots: a start and a finish each, with
//! POSIX and cgroup usage, as the runner writes them) is generated under
//! target/tmp and removed afterwards.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Actions in the full run.
const ACTIONS: u64 = 500_000;
/// Actions in the smoke run.
const SMOKE_ACTIONS: u64 = 1_000;
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

fn write_journal(path: &Path, actions: u64) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        out,
        r#"{{"sequence":"1","time":"{}","runnerInstance":"0badcafe","runnerState":{{"acceptingWork":true,"reason":"startup","memoryBudgetBytes":"17179869184","runnerName":"bench"}}}}"#,
        timestamp(0)
    )?;
    let mut random: u64 = 0x2545_f491_4f6c_dd1d;
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
        let id = format!("0badcafe-{action}");
        sequence += 1;
        writeln!(
            out,
            r#"{{"sequence":"{sequence}","time":"{}","runnerInstance":"0badcafe","actionStarted":{{"actionId":"{id}","arguments":["{program}","-c","src/file{action}.c","-o","out/file{action}.o"],"inputRootDirectory":"/worker/build/{action}","pid":"{}","cgroup":"/sys/fs/cgroup/runner/{id}"}}}}"#,
            timestamp(start),
            1000 + action
        )?;
        sequence += 1;
        let wall = wall_nanos as f64 / 1e9;
        writeln!(
            out,
            r#"{{"sequence":"{sequence}","time":"{}","runnerInstance":"0badcafe","actionFinished":{{"actionId":"{id}","exitCode":"0","status":{{"code":0,"message":"","details":[]}},"resourceUsage":[{{"@type":"type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage","userTime":"{:.6}s","systemTime":"0.010s","maximumResidentSetSize":"{}","pageReclaims":"100","pageFaults":"0","swaps":"0","blockInputOperations":"0","blockOutputOperations":"8","messagesSent":"0","messagesReceived":"0","signalsReceived":"0","voluntaryContextSwitches":"10","involuntaryContextSwitches":"3","terminationSignal":""}},{{"@type":"type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage","memoryEventsLow":"0","memoryEventsHigh":"0","memoryEventsMax":"0","memoryEventsOom":"0","memoryEventsOomKill":"0","memoryEventsOomGroupKill":"0","memoryPeak":"{memory}","memoryPressureSomeTotal":"0.001s","memoryPressureFullTotal":"0s","cpuPressureSomeTotal":"{:.6}s","cpuPressureFullTotal":"0s","ioPressureSomeTotal":"0.002s","ioPressureFullTotal":"0s"}}],"wallTime":"{wall:.9}s","oomVerdict":"OOM_VERDICT_NONE","terminationReason":"TERMINATION_REASON_NONE"}}}}"#,
            timestamp(start + wall_nanos),
            wall * 0.9,
            memory / 2,
            wall * 0.05,
        )?;
    }
    out.flush()
}

fn main() {
    let actions = if std::env::args().any(|arg| arg == "--bench") {
        ACTIONS
    } else {
        SMOKE_ACTIONS
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&dir).expect("create target/tmp");
    let journal = dir.join("bench-report-journal.jsonl");
    write_journal(&journal, actions).expect("write the synthetic journal");
    let bytes = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
    for arguments in [vec!["--json"], vec!["--json", "--since", "1h"]] {
        let started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_rbe-runner"))
            .arg("report")
            .args(&arguments)
            .arg(&journal)
            .stdout(Stdio::null())
            .status()
            .expect("run rbe-runner report");
        let elapsed = started.elapsed();
        assert!(status.success(), "report failed: {status}");
        // The largest RSS of any waited-for child: only this report runs.
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .expect("getrusage");
        println!(
            "report {}: {} events ({:.0} MB journal) in {:.2} s, peak RSS {:.0} MiB",
            arguments.join(" "),
            actions * 2 + 1,
            bytes as f64 / 1e6,
            elapsed.as_secs_f64(),
            usage.max_rss() as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_file(&journal);
}
