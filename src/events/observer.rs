//! The observer that turns the runner's typed facts into events.

use std::sync::Arc;

use super::hub::EventHub;
use super::Usage;
use crate::action::observer::{ActionStarted, ActionTerminating, CleanupFailed, RunnerState};
use crate::action::outcome::Ended;
use crate::action::{ActionOutcome, Observer, TerminationReason};
use crate::cgroup::attribution::OomVerdict;
use crate::proto::rbe_runner::events::v1 as proto;
use crate::proto::rbe_runner::events::v1::event::Kind;
use crate::proto::rbe_runner::resourceusage::v1 as resourceusage;
use crate::proto::rpc;

/// Publishes every fact the lifecycle, the dirty gate, readiness and
/// shutdown report, as an event on `hub`.
pub struct EventObserver {
    hub: Arc<EventHub>,
    runner_name: String,
    maximum_argument_bytes: u64,
}

impl EventObserver {
    /// Publishes on `hub`; `runner_name` goes into every `RunnerState`;
    /// an `ActionStarted` carries at most `maximum_argument_bytes` of argv.
    pub fn new(hub: Arc<EventHub>, runner_name: String, maximum_argument_bytes: u64) -> Self {
        EventObserver {
            hub,
            runner_name,
            maximum_argument_bytes,
        }
    }
}

impl Observer for EventObserver {
    fn action_started(&self, started: &ActionStarted) {
        let arguments = cut_arguments(&started.arguments, self.maximum_argument_bytes);
        let event = proto::ActionStarted {
            action_id: started.id.to_string(),
            arguments: arguments.kept,
            input_root_directory: started.input_root_directory.clone(),
            pid: i64::from(started.pid),
            cgroup: started
                .cgroup
                .as_ref()
                .map(|cgroup| cgroup.display().to_string())
                .unwrap_or_default(),
            original_arguments_bytes: arguments.original_bytes,
            arguments_cut: arguments.cut,
        };
        self.hub.publish(Kind::ActionStarted(event), Vec::new());
    }

    fn action_terminating(&self, terminating: &ActionTerminating) {
        let event = proto::ActionTerminating {
            action_id: terminating.id.to_string(),
            reason: termination_reason(Some(terminating.reason)) as i32,
            killed_at_grace_deadline: terminating.killed_at_grace_deadline,
        };
        self.hub.publish(Kind::ActionTerminating(event), Vec::new());
    }

    fn action_finished(&self, outcome: &ActionOutcome) {
        let (event, usages) = action_finished(outcome);
        self.hub.publish(Kind::ActionFinished(event), usages);
    }

    fn cleanup_failed(&self, failed: &CleanupFailed) {
        let event = proto::CleanupFailed {
            action_id: failed
                .id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            cgroup: failed.cgroup.display().to_string(),
            pids: failed.pids.iter().map(|&pid| i64::from(pid)).collect(),
            detail: failed.detail.clone(),
        };
        self.hub.publish(Kind::CleanupFailed(event), Vec::new());
    }

    fn runner_state_changed(&self, state: &RunnerState) {
        let event = proto::RunnerState {
            accepting_work: state.accepting_work,
            reason: state.reason.clone(),
            memory_budget_bytes: state
                .memory_budget_bytes
                .map_or(0, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
            runner_name: self.runner_name.clone(),
        };
        self.hub.publish(Kind::RunnerState(event), Vec::new());
    }
}

/// An argv as an event carries it.
#[derive(Debug, PartialEq)]
struct CutArguments {
    /// What fits the limit.
    kept: Vec<String>,
    /// The sum of the arguments' lengths in bytes, as requested.
    original_bytes: u64,
    /// Whether `kept` holds less than the argv.
    cut: bool,
}

/// `arguments` within `maximum_bytes` in total: whole arguments while they
/// fit, then the start of the one that crosses the limit (at a character
/// boundary); later ones are left out. Every event is held in memory by the
/// replay buffer and the queues, so one long command line must not cost
/// what thousands of short ones do.
fn cut_arguments(arguments: &[String], maximum_bytes: u64) -> CutArguments {
    let original_bytes: u64 = arguments.iter().map(|argument| argument.len() as u64).sum();
    if original_bytes <= maximum_bytes {
        return CutArguments {
            kept: arguments.to_vec(),
            original_bytes,
            cut: false,
        };
    }
    let mut kept = Vec::new();
    let mut left = usize::try_from(maximum_bytes).unwrap_or(usize::MAX);
    for argument in arguments {
        if argument.len() <= left {
            kept.push(argument.clone());
            left -= argument.len();
            continue;
        }
        let mut end = left;
        while !argument.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            kept.push(argument[..end].to_owned());
        }
        break;
    }
    CutArguments {
        kept,
        original_bytes,
        cut: true,
    }
}

/// The `ActionFinished` of an outcome, and its usages typed.
fn action_finished(outcome: &ActionOutcome) -> (proto::ActionFinished, Vec<Usage>) {
    let status = rpc::Status {
        code: outcome.grpc_code() as i32,
        message: outcome
            .error()
            .map(|error| error.to_string())
            .unwrap_or_default(),
        // The evidence an UNAVAILABLE carries as details is the same as
        // `resource_usage`; it is not repeated.
        details: Vec::new(),
    };
    let reason = match outcome.ended {
        Ended::Terminated { reason, .. } => Some(reason),
        _ => None,
    };
    let usages: Vec<Usage> = outcome
        .posix_usage
        .iter()
        .cloned()
        .map(Usage::Posix)
        .chain(outcome.cgroup_usage.iter().cloned().map(Usage::Cgroup))
        .collect();
    let event = proto::ActionFinished {
        action_id: outcome.id.to_string(),
        exit_code: outcome.exit_code(),
        status: Some(status),
        resource_usage: outcome.resource_usage(),
        wall_time: Some(
            prost_types::Duration::try_from(outcome.wall_time).unwrap_or(prost_types::Duration {
                seconds: i64::MAX,
                nanos: 0,
            }),
        ),
        oom_verdict: oom_verdict(outcome.oom.verdict) as i32,
        termination_reason: termination_reason(reason) as i32,
        trace_id: outcome
            .trace
            .map(|trace| trace.trace_id_hex())
            .unwrap_or_default(),
    };
    (event, usages)
}

fn oom_verdict(verdict: OomVerdict) -> resourceusage::OomVerdict {
    match verdict {
        OomVerdict::None => resourceusage::OomVerdict::None,
        OomVerdict::OwnLimit => resourceusage::OomVerdict::OwnLimit,
        OomVerdict::SharedLimit => resourceusage::OomVerdict::SharedLimit,
        OomVerdict::NotOwnLimit => resourceusage::OomVerdict::NotOwnLimit,
    }
}

fn termination_reason(reason: Option<TerminationReason>) -> resourceusage::TerminationReason {
    match reason {
        None => resourceusage::TerminationReason::None,
        Some(TerminationReason::Deadline) => resourceusage::TerminationReason::Deadline,
        Some(TerminationReason::Cancelled) => resourceusage::TerminationReason::Cancelled,
        Some(TerminationReason::Shutdown) => resourceusage::TerminationReason::Shutdown,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::action::outcome::{Cleanup, ExitStatus};
    use crate::action::{ActionIds, RunnerInstance};
    use crate::cgroup::attribution::Attribution;
    use crate::fault::RunnerError;
    use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};

    fn outcome(ended: Ended) -> ActionOutcome {
        ActionOutcome {
            id: ActionIds::new(RunnerInstance::random()).next(),
            argv0: "cc".into(),
            pid: Some(42),
            started_at: SystemTime::now(),
            wall_time: Duration::from_millis(1500),
            ended,
            posix_usage: Some(PosixResourceUsage {
                maximum_resident_set_size: 1 << 20,
                ..PosixResourceUsage::default()
            }),
            cgroup_usage: Some(CgroupResourceUsage {
                memory_peak: 7 << 20,
                ..CgroupResourceUsage::default()
            }),
            measured_cgroup: None,
            oom: Attribution {
                verdict: OomVerdict::OwnLimit,
                ..Attribution::NONE
            },
            accounting: None,
            measurement_error: None,
            cleanup: Cleanup::Verified,
            trace: None,
            phases: Default::default(),
        }
    }

    #[test]
    fn a_finished_action_carries_the_calls_code_message_and_typed_usages() {
        // Why it matters: subscribers see what the Run call answered,
        // and the journal writes the usages from typed values.
        let (event, usages) = action_finished(&outcome(Ended::Exited(ExitStatus::Signal(9))));
        assert_eq!(event.exit_code, -1);
        assert_eq!(event.status.as_ref().unwrap().code, 0);
        assert_eq!(event.status.as_ref().unwrap().message, "");
        assert_eq!(
            event.oom_verdict,
            resourceusage::OomVerdict::OwnLimit as i32
        );
        assert_eq!(
            event.termination_reason,
            resourceusage::TerminationReason::None as i32
        );
        assert_eq!(
            event.wall_time,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(event.resource_usage.len(), 2);
        assert!(
            matches!(&usages[..], [Usage::Posix(posix), Usage::Cgroup(cgroup)]
            if posix.maximum_resident_set_size == 1 << 20 && cgroup.memory_peak == 7 << 20)
        );

        let (event, usages) = action_finished(&outcome(Ended::Terminated {
            reason: TerminationReason::Deadline,
            killed_at_grace_deadline: true,
        }));
        let status = event.status.unwrap();
        assert_eq!(status.code, tonic::Code::DeadlineExceeded as i32);
        assert!(status.message.contains("deadline"), "{}", status.message);
        assert_eq!(
            event.termination_reason,
            resourceusage::TerminationReason::Deadline as i32
        );
        assert_eq!(usages.len(), 2);
    }

    #[test]
    fn a_long_argv_is_cut_at_the_limit_and_says_so() {
        // Why it matters: one event with 1 MB of argv costs the replay
        // buffer and every queue a megabyte; cut, it costs the limit.
        let arguments: Vec<String> = ["cc", "-c", "a.c"].map(String::from).to_vec();
        assert_eq!(
            cut_arguments(&arguments, 7),
            CutArguments {
                kept: arguments.clone(),
                original_bytes: 7,
                cut: false,
            }
        );
        assert_eq!(
            cut_arguments(&arguments, 4),
            CutArguments {
                kept: ["cc", "-c"].map(String::from).to_vec(),
                original_bytes: 7,
                cut: true,
            }
        );
        assert_eq!(cut_arguments(&arguments, 6).kept, ["cc", "-c", "a."]);
        // A character is never split.
        let wide = vec!["é".repeat(4)];
        assert_eq!(cut_arguments(&wide, 5).kept, ["éé"]);
        assert_eq!(cut_arguments(&wide, 1).kept, Vec::<String>::new());
        let megabyte: Vec<String> = (0..16).map(|_| "x".repeat(64_000)).collect();
        let cut = cut_arguments(&megabyte, 64 << 10);
        assert_eq!(cut.original_bytes, 1_024_000);
        assert!(cut.cut);
        assert_eq!(cut.kept.iter().map(String::len).sum::<usize>(), 64 << 10);
        assert_eq!(cut.kept.len(), 2);
    }

    #[test]
    fn an_action_that_never_started_has_the_error_status() {
        let mut not_started = outcome(Ended::NotStarted(RunnerError::InvalidArgument(
            "cannot execute \"nope\"".into(),
        )));
        not_started.posix_usage = None;
        not_started.cgroup_usage = None;
        let (event, usages) = action_finished(&not_started);
        let status = event.status.unwrap();
        assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
        assert_eq!(status.message, "cannot execute \"nope\"");
        assert_eq!(event.exit_code, 0);
        assert!(usages.is_empty() && event.resource_usage.is_empty());
    }
}
