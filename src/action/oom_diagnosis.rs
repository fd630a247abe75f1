//! The diagnosis of an OOM kill that no limit in the runner's subtree
//! caused: the message of the UNAVAILABLE that carries the evidence to the
//! worker, and the same evidence as a text an engineer reads in the
//! action's server logs. Built from the typed outcome's facts.

use std::fmt::Write as _;
use std::path::Path;

use crate::build_directory::BuildDirectory;
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};

/// Name of the diagnosis written into the action's server logs directory
/// when an action process was OOM-killed by a limit other than its own.
pub const OOM_DIAGNOSIS_FILE_NAME: &str = "rbe-runner-oom.txt";

/// Start of the UNAVAILABLE message for an OOM kill the action's own cgroup
/// did not cause.
pub const FOREIGN_OOM_KILL_MESSAGE: &str =
    "An action process was OOM-killed without the action reaching its cgroup memory limit";

/// The UNAVAILABLE message for an action process killed by an OOM killer
/// acting for a limit other than those of `cgroup`, whose counters during
/// the action are `usage`.
pub fn foreign_oom_kill_message(
    cgroup: Option<&Path>,
    usage: Option<&CgroupResourceUsage>,
) -> String {
    let default = CgroupResourceUsage::default();
    let usage = usage.unwrap_or(&default);
    format!(
        "{FOREIGN_OOM_KILL_MESSAGE} (memory.events of {} during the action: \
         oom_kill {}, oom {}, max {}; memory peak {}): a cgroup above the \
         runner's or the whole node ran out of memory, so another attempt may \
         succeed",
        cgroup.map_or_else(
            || "the runner's cgroup".into(),
            |cgroup| cgroup.display().to_string()
        ),
        usage.memory_events_oom_kill,
        usage.memory_events_oom,
        usage.memory_events_max,
        describe_peak(usage.memory_peak),
    )
}

fn describe_peak(bytes: i64) -> String {
    if bytes == 0 {
        "not measured".to_owned()
    } else {
        format!(
            "{bytes} bytes ({:.1} MiB)",
            bytes as f64 / (1024.0 * 1024.0)
        )
    }
}

fn describe_duration(duration: Option<&prost_types::Duration>) -> String {
    match duration {
        Some(duration) => format!(
            "{:.3} s",
            duration.seconds as f64 + f64::from(duration.nanos) / 1e9
        ),
        None => "not available".to_owned(),
    }
}

/// The text of [`OOM_DIAGNOSIS_FILE_NAME`]: what happened, the evidence,
/// and what an operator can do.
pub fn diagnosis(
    cgroup: &Path,
    usage: &CgroupResourceUsage,
    exit_code: i64,
    posix_usage: Option<&PosixResourceUsage>,
) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        text,
        "rbe-runner: {FOREIGN_OOM_KILL_MESSAGE}.\n\
         \n\
         What happened: while this action ran, the kernel's OOM killer killed {oom_kill} \
         process(es) in the runner's cgroup\n\
         \x20 {cgroup}\n\
         but that cgroup never reached its own memory limit (memory.events \"oom\" did not \
         grow). The kill was ordered by a limit above it: a parent cgroup (container, pod, \
         systemd slice) or the whole node ran out of memory. The runner reported the Run as \
         UNAVAILABLE so that it is retried, instead of failing the build.\n\
         \n\
         Counters during the action:\n\
         \x20 memory.events: low {low}, high {high}, max {max}, oom {oom}, oom_kill {oom_kill}, \
         oom_group_kill {oom_group_kill}\n\
         \x20 memory peak of the cgroup: {peak}\n\
         \x20 memory pressure: some {memory_some}, full {memory_full}\n\
         \x20 exit code: {exit_code}\n",
        oom_kill = usage.memory_events_oom_kill,
        cgroup = cgroup.display(),
        low = usage.memory_events_low,
        high = usage.memory_events_high,
        max = usage.memory_events_max,
        oom = usage.memory_events_oom,
        oom_group_kill = usage.memory_events_oom_group_kill,
        peak = describe_peak(usage.memory_peak),
        memory_some = describe_duration(usage.memory_pressure_some_total.as_ref()),
        memory_full = describe_duration(usage.memory_pressure_full_total.as_ref()),
    );
    if let Some(posix_usage) = posix_usage {
        if !posix_usage.termination_signal.is_empty() {
            let _ = writeln!(
                text,
                "  termination signal: {}",
                posix_usage.termination_signal
            );
        }
        let _ = writeln!(
            text,
            "  maximum resident set size (rusage of the action): {} bytes",
            posix_usage.maximum_resident_set_size
        );
    }
    text.push_str(
        "\nWhat to do: nothing, if a retry succeeds. If this keeps happening, the node is \
         overcommitted: give it (or the runner's parent cgroup) more memory, run fewer actions \
         or other workloads on it, or set memory.max on the runner's cgroup below what the node \
         can provide, so that an action using too much memory fails on its own limit with a \
         clear result instead of being killed by the node.\n",
    );
    text
}

/// Writes the diagnosis beneath the build directory. A failure is logged:
/// the evidence also travels with the UNAVAILABLE status, and the Run's
/// outcome must not depend on the server logs directory.
pub fn write_diagnosis(build_directory: &BuildDirectory, server_logs_directory: &str, text: &str) {
    use std::io::Write;

    if server_logs_directory.is_empty() {
        tracing::warn!(
            "the request has no server_logs_directory; the OOM diagnosis is not written"
        );
        return;
    }
    let relative = format!(
        "{}/{OOM_DIAGNOSIS_FILE_NAME}",
        server_logs_directory.trim_end_matches('/')
    );
    let result = build_directory
        .create_file(&relative, "server_logs_directory")
        .map_err(|error| error.to_string())
        .and_then(|mut file| {
            file.write_all(text.as_bytes())
                .map_err(|error| format!("writing {relative:?}: {error}"))
        });
    if let Err(error) = result {
        tracing::error!(%error, "cannot write the OOM diagnosis into the server logs directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> CgroupResourceUsage {
        CgroupResourceUsage {
            memory_events_oom_kill: 1,
            memory_events_max: 3,
            memory_peak: 100 << 20,
            memory_pressure_some_total: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            ..CgroupResourceUsage::default()
        }
    }

    #[test]
    fn the_diagnosis_states_the_evidence_and_the_remedy() {
        // Why it matters: the engineer reading the server logs needs the
        // numbers and what to change, not just "OOM".
        let posix = PosixResourceUsage {
            termination_signal: "KILL".into(),
            maximum_resident_set_size: 99 << 20,
            ..PosixResourceUsage::default()
        };
        let text = diagnosis(Path::new("/sys/fs/cgroup/pod"), &usage(), -1, Some(&posix));
        for expected in [
            FOREIGN_OOM_KILL_MESSAGE,
            "/sys/fs/cgroup/pod",
            "max 3, oom 0, oom_kill 1",
            "104857600 bytes (100.0 MiB)",
            "memory pressure: some 1.500 s, full not available",
            "exit code: -1",
            "termination signal: KILL",
            "103809024 bytes",
            "What to do",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
    }

    #[test]
    fn an_unmeasured_peak_says_so() {
        assert_eq!(describe_peak(0), "not measured");
        let text = diagnosis(Path::new("/x"), &CgroupResourceUsage::default(), 0, None);
        assert!(
            text.contains("memory peak of the cgroup: not measured"),
            "{text}"
        );
        assert!(!text.contains("termination signal"), "{text}");
    }
}
