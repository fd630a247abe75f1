//! The diagnosis of an OOM kill: the message of an UNAVAILABLE that carries
//! the evidence to the worker, and a text an engineer reads in the
//! action's server logs, whose first sentence states the verdict with the
//! numbers and what to do. Built from the typed outcome's facts.

use std::fmt::Write as _;
use std::path::Path;

use crate::build_directory::BuildDirectory;
use crate::cgroup::attribution::{Attribution, OomVerdict, SharedLimitRole};
use crate::proto::rbe_runner::resourceusage::v1::ActionAccounting;
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};

/// Name of the diagnosis written into the action's server logs directory
/// when an action process was OOM-killed.
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

/// Start of the UNAVAILABLE message for a bystander of a shared limit.
pub const SHARED_LIMIT_MESSAGE: &str =
    "An action process was OOM-killed because a memory budget shared by the running actions ran out";

/// The UNAVAILABLE message for an action killed by a shared limit that is
/// retried (a bystander, or a culprit under `sharedLimitCulprit: 'retry'`).
pub fn shared_limit_message(
    attribution: &Attribution,
    accounting: Option<&ActionAccounting>,
    usage: Option<&CgroupResourceUsage>,
) -> String {
    format!(
        "{SHARED_LIMIT_MESSAGE}: {}",
        verdict_sentence(attribution, accounting, usage)
    )
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// One sentence an engineer can act on: who ran out of what, the numbers,
/// and what follows.
pub fn verdict_sentence(
    attribution: &Attribution,
    accounting: Option<&ActionAccounting>,
    usage: Option<&CgroupResourceUsage>,
) -> String {
    let default_accounting = ActionAccounting::default();
    let accounting = accounting.unwrap_or(&default_accounting);
    let peak = usage.map_or(0, |usage| usage.memory_peak);
    let running = accounting.actions_running_at_oom;
    let fair_share = attribution
        .fair_share_bytes
        .map_or(0, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
    let outcome = if attribution.retryable {
        "the Run fails with UNAVAILABLE so that Bazel retries it"
    } else {
        "the action's result (exit -1, SIGKILL) is returned and the build fails"
    };
    match (attribution.verdict, attribution.role) {
        (OomVerdict::None, _) => "No process of the action was OOM-killed.".to_owned(),
        (OomVerdict::OwnLimit, _) => format!(
            "The action reached its own memory limit (memory.max {} of {}; memory peak {}) and was OOM-killed; {outcome}: raise actionCgroups.memoryMax if the action needs more, or make it use less.",
            mib(accounting.memory_max),
            accounting.oom_limiting_cgroup,
            describe_peak(peak),
        ),
        (OomVerdict::SharedLimit, role) => {
            let (role, remedy) = if role == Some(SharedLimitRole::Bystander) {
                (
                    "a bystander: its peak stayed below its fair share, so other actions ate the budget",
                    "set actionCgroups.memoryMax so that a greedy action fails on its own limit instead of taking others with it",
                )
            } else if running <= 1 {
                (
                    "the culprit: it ran alone",
                    "give the budget more memory or the action less to do",
                )
            } else {
                (
                    "the culprit: its peak reached its fair share",
                    "give each action more memory (a larger pod or fewer concurrent actions) or set actionCgroups.memoryMax per action",
                )
            };
            format!(
                "The memory budget {} (memory.max {}) that {running} running action(s) shared ran out and the kernel killed this action (memory peak {}, fair share {}); it is {role}; {outcome}; {remedy}.",
                accounting.oom_limiting_cgroup,
                mib(accounting.oom_limit_bytes),
                describe_peak(peak),
                mib(fair_share),
            )
        }
        (OomVerdict::NotOwnLimit, _) => format!(
            "No limit in the runner's subtree was reached, so the node (or a cgroup above the runner) ran out of memory and killed this action (memory peak {}); {outcome}; if it recurs the node is overcommitted.",
            describe_peak(peak),
        ),
    }
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

/// The text of [`OOM_DIAGNOSIS_FILE_NAME`]: the verdict in one sentence,
/// what happened, the evidence, and what an operator can do.
pub fn diagnosis(
    attribution: &Attribution,
    accounting: Option<&ActionAccounting>,
    cgroup: &Path,
    usage: &CgroupResourceUsage,
    exit_code: i64,
    posix_usage: Option<&PosixResourceUsage>,
) -> String {
    let mut text = format!(
        "rbe-runner: {}\n\n",
        verdict_sentence(attribution, accounting, Some(usage))
    );
    if attribution.verdict != OomVerdict::NotOwnLimit {
        write_counters(&mut text, usage, exit_code, posix_usage);
        return text;
    }
    // Writing to a String cannot fail.
    let _ = write!(
        text,
        "{FOREIGN_OOM_KILL_MESSAGE}.\n\
         \n\
         What happened: while this action ran, the kernel's OOM killer killed {oom_kill} \
         process(es) in the runner's cgroup\n\
         \x20 {cgroup}\n\
         but that cgroup never reached its own memory limit (memory.events \"oom\" did not \
         grow). The kill was ordered by a limit above it: a parent cgroup (container, pod, \
         systemd slice) or the whole node ran out of memory. The runner reported the Run as \
         UNAVAILABLE so that it is retried, instead of failing the build.\n\n",
        oom_kill = usage.memory_events_oom_kill,
        cgroup = cgroup.display(),
    );
    write_counters(&mut text, usage, exit_code, posix_usage);
    text.push_str(
        "\nWhat to do: nothing, if a retry succeeds. If this keeps happening, the node is \
         overcommitted: give it (or the runner's parent cgroup) more memory, run fewer actions \
         or other workloads on it, or set memory.max on the runner's cgroup below what the node \
         can provide, so that an action using too much memory fails on its own limit with a \
         clear result instead of being killed by the node.\n",
    );
    text
}

/// The counters of the action, for the diagnosis.
fn write_counters(
    text: &mut String,
    usage: &CgroupResourceUsage,
    exit_code: i64,
    posix_usage: Option<&PosixResourceUsage>,
) {
    let _ = write!(
        text,
        "Counters during the action:\n\
         \x20 memory.events: low {low}, high {high}, max {max}, oom {oom}, oom_kill {oom_kill}, \
         oom_group_kill {oom_group_kill}\n\
         \x20 memory peak of the cgroup: {peak}\n\
         \x20 memory pressure: some {memory_some}, full {memory_full}\n\
         \x20 exit code: {exit_code}\n",
        oom_kill = usage.memory_events_oom_kill,
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

    fn foreign() -> Attribution {
        Attribution {
            verdict: OomVerdict::NotOwnLimit,
            retryable: true,
            ..Attribution::NONE
        }
    }

    #[test]
    fn each_verdict_is_one_sentence_with_the_numbers_and_the_remedy() {
        // Why it matters: the first line of the server log is what an
        // engineer reads; it must say who ran out of what and what to do.
        let accounting = ActionAccounting {
            oom_limiting_cgroup: "/sys/fs/cgroup/pod/actions/x-1".into(),
            memory_max: 64 << 20,
            oom_limit_bytes: 128 << 20,
            actions_running_at_oom: 2,
            ..ActionAccounting::default()
        };
        let own = Attribution {
            verdict: OomVerdict::OwnLimit,
            ..Attribution::NONE
        };
        let sentence = verdict_sentence(&own, Some(&accounting), Some(&usage()));
        for expected in [
            "its own memory limit",
            "64.0 MiB",
            "100.0 MiB",
            "build fails",
            "actionCgroups.memoryMax",
        ] {
            assert!(
                sentence.contains(expected),
                "{expected:?} not in {sentence}"
            );
        }
        let bystander = Attribution {
            verdict: OomVerdict::SharedLimit,
            role: Some(SharedLimitRole::Bystander),
            fair_share_bytes: Some(120 << 20),
            retryable: true,
        };
        let sentence = verdict_sentence(&bystander, Some(&accounting), Some(&usage()));
        for expected in [
            "128.0 MiB",
            "2 running",
            "fair share 120.0 MiB",
            "bystander",
            "UNAVAILABLE",
            "memoryMax",
        ] {
            assert!(
                sentence.contains(expected),
                "{expected:?} not in {sentence}"
            );
        }
        let culprit = Attribution {
            role: Some(SharedLimitRole::Culprit),
            retryable: false,
            ..bystander
        };
        let sentence = verdict_sentence(&culprit, Some(&accounting), Some(&usage()));
        assert!(sentence.contains("the culprit"), "{sentence}");
        assert!(sentence.contains("build fails"), "{sentence}");
        assert_eq!(
            sentence.matches(". ").count(),
            0,
            "one sentence: {sentence}"
        );
        for attribution in [own, bystander, culprit, foreign()] {
            let sentence = verdict_sentence(&attribution, Some(&accounting), Some(&usage()));
            assert!(!sentence.contains("  "), "{sentence}");
        }
        let message = shared_limit_message(&bystander, Some(&accounting), Some(&usage()));
        assert!(message.starts_with(SHARED_LIMIT_MESSAGE), "{message}");
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
        let text = diagnosis(
            &foreign(),
            None,
            Path::new("/sys/fs/cgroup/pod"),
            &usage(),
            -1,
            Some(&posix),
        );
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
        let text = diagnosis(
            &foreign(),
            None,
            Path::new("/x"),
            &CgroupResourceUsage::default(),
            0,
            None,
        );
        assert!(
            text.contains("memory peak of the cgroup: not measured"),
            "{text}"
        );
        assert!(!text.contains("termination signal"), "{text}");
    }
}
