//! How an action ended, as one typed value: the facts every consumer (the
//! Run response, logs, events, metrics, the report) reads, and the one
//! classification of them ([`ActionOutcome::result`],
//! [`ActionOutcome::grpc_code`]).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tonic::Code;

use super::id::ActionId;
use super::oom_diagnosis;
use crate::bounded::quoted;
use crate::cgroup::attribution::{Attribution, OomVerdict};
use crate::fault::RunnerError;
use crate::proto::rbe_runner::resourceusage::v1::ActionAccounting;
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
use crate::proto::runner::RunResponse;
use crate::trace_context::CallTrace;

/// How long before its deadline a dropped call still counts as having hit
/// it: the client's timer fires first, and the cancellation takes a moment
/// to reach us.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// Why the runner stopped an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminationReason {
    /// The call's deadline passed (bb_worker's action timeout).
    Deadline,
    /// The caller cancelled the call before its deadline.
    Cancelled,
    /// The runner is shutting down.
    Shutdown,
}

impl TerminationReason {
    /// The reason of a call dropped at `dropped_at`, given its deadline.
    pub fn of_dropped_call(deadline: Option<Instant>, dropped_at: Instant) -> Self {
        match deadline {
            Some(deadline) if dropped_at + DEADLINE_MARGIN >= deadline => {
                TerminationReason::Deadline
            }
            _ => TerminationReason::Cancelled,
        }
    }

    /// The reason's name as metrics, events and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::Deadline => "Deadline",
            TerminationReason::Cancelled => "Cancelled",
            TerminationReason::Shutdown => "Shutdown",
        }
    }
}

impl std::fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the action's process ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// `wait4` returned a status that is neither (never seen; reported as
    /// our fault rather than guessed at).
    Unknown(i32),
}

impl ExitStatus {
    /// The status of a raw wait status.
    pub fn from_wait_status(status: i32) -> Self {
        if libc::WIFEXITED(status) {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Unknown(status)
        }
    }
}

/// How the action ended.
#[derive(Debug)]
pub enum Ended {
    /// Its process exited on its own.
    Exited(ExitStatus),
    /// The runner stopped it.
    Terminated {
        /// Why.
        reason: TerminationReason,
        /// Whether SIGKILL was needed at the end of the grace period.
        killed_at_grace_deadline: bool,
    },
    /// It never started: the request named something wrong, or the host
    /// could not prepare it.
    NotStarted(RunnerError),
}

/// Whether everything of the action is verified to be gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// The action's cgroup was seen empty and removed.
    Verified,
    /// The action ran in a process group, which was killed; nothing that
    /// left the group can be verified to be gone.
    ProcessGroupKilled,
    /// Its cgroup could not be emptied or removed; the runner refuses work
    /// until a background retry succeeds.
    Failed {
        /// The cgroup.
        cgroup: PathBuf,
        /// The processes left in it when cleanup gave up.
        pids: Vec<i32>,
        /// What was left, or what failed.
        detail: String,
    },
    /// Nothing was started, so nothing needed cleaning.
    NothingStarted,
}

impl Cleanup {
    /// The cleanup in one word, as the log's `cleanup` field says it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cleanup::Verified => "verified",
            Cleanup::ProcessGroupKilled => "process_group_killed",
            Cleanup::Failed { .. } => "failed",
            Cleanup::NothingStarted => "nothing_started",
        }
    }
}

/// The result classes of an action, as metrics, `watch` and the report
/// count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionResult {
    /// Exited with code 0.
    Success,
    /// Exited with another code.
    NonZeroExitCode,
    /// Killed by a signal it was not sent by the runner (the response
    /// carries exit code -1 and the signal's name).
    Signal,
    /// The Run call failed: not started, stopped by the runner, or an
    /// outcome that must be retried elsewhere.
    Failure,
}

impl ActionResult {
    /// The class of a Run call that ended with `code` and, when that is
    /// `Ok`, the response's `exit_code` (-1: killed by a signal). The one
    /// classification: of an outcome here, of an event in `watch` and the
    /// report.
    pub fn classify(code: Code, exit_code: i64) -> Self {
        match (code, exit_code) {
            (Code::Ok, 0) => ActionResult::Success,
            (Code::Ok, -1) => ActionResult::Signal,
            (Code::Ok, _) => ActionResult::NonZeroExitCode,
            _ => ActionResult::Failure,
        }
    }

    /// The class's name as metrics and the report spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionResult::Success => "Success",
            ActionResult::NonZeroExitCode => "NonZeroExitCode",
            ActionResult::Signal => "Signal",
            ActionResult::Failure => "Failure",
        }
    }
}

/// When one phase of an action began and ended (wall clock, as spans and
/// journals record time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// When it began.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
}

impl Phase {
    /// The phase that began at `start` and ends now.
    pub fn since(start: SystemTime) -> Self {
        Phase {
            start,
            end: SystemTime::now(),
        }
    }
}

/// The phases of an action's life, each `None` when it never got there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Checking the request, creating its outputs, placing it.
    pub prepare: Option<Phase>,
    /// Creating its first process, up to its exec.
    pub spawn: Option<Phase>,
    /// From its exec to its first process's reaping (termination included).
    pub run: Option<Phase>,
    /// Reading its usage and the OOM verdict.
    pub measure: Option<Phase>,
    /// Emptying and removing its cgroup or process group.
    pub release: Option<Phase>,
}

/// Everything known about one finished action.
#[derive(Debug)]
pub struct ActionOutcome {
    /// Its id.
    pub id: ActionId,
    /// `argv[0]` as the request gave it.
    pub argv0: String,
    /// The pid of its first process; `None` when it never started.
    pub pid: Option<i32>,
    /// When the runner began working on it.
    pub started_at: SystemTime,
    /// From the beginning of its preparation to its end, cleanup included.
    pub wall_time: Duration,
    /// How it ended.
    pub ended: Ended,
    /// The rusage of its first process (and the signal that killed it).
    pub posix_usage: Option<PosixResourceUsage>,
    /// Counter deltas of the cgroup that measured it, when sampled.
    pub cgroup_usage: Option<CgroupResourceUsage>,
    /// The cgroup that measured it, for the OOM diagnosis.
    pub measured_cgroup: Option<PathBuf>,
    /// Who is to blame for OOM kills in it, and whether that is retried.
    pub oom: Attribution,
    /// The verdict's evidence and the limits of its cgroup, when it had a
    /// measured cgroup of its own.
    pub accounting: Option<ActionAccounting>,
    /// Why its usage could not be measured after it exited; its result is
    /// then not trusted (INTERNAL).
    pub measurement_error: Option<String>,
    /// Whether everything of it is gone.
    pub cleanup: Cleanup,
    /// The trace of the call that asked for it, if the call carried one
    /// or the runner traces.
    pub trace: Option<CallTrace>,
    /// When each phase of its life began and ended.
    pub phases: Phases,
}

impl ActionOutcome {
    /// The result class; see [`ActionResult`].
    pub fn result(&self) -> ActionResult {
        ActionResult::classify(self.grpc_code(), self.exit_code())
    }

    /// The gRPC code the Run call ends with (`Ok` for a normal response).
    pub fn grpc_code(&self) -> Code {
        match &self.ended {
            Ended::NotStarted(error) => error.code(),
            Ended::Terminated { reason, .. } => match reason {
                TerminationReason::Deadline => Code::DeadlineExceeded,
                TerminationReason::Cancelled => Code::Cancelled,
                TerminationReason::Shutdown => Code::Unavailable,
            },
            Ended::Exited(ExitStatus::Unknown(_)) => Code::Internal,
            Ended::Exited(_) if self.measurement_error.is_some() => Code::Internal,
            Ended::Exited(_) if self.oom.retryable => Code::Unavailable,
            Ended::Exited(_) => Code::Ok,
        }
    }

    /// The exit code as `RunResponse` reports it: the process's code, -1
    /// when a signal killed it, 0 when it did not exit on its own.
    pub fn exit_code(&self) -> i64 {
        match self.ended {
            Ended::Exited(ExitStatus::Code(code)) => i64::from(code),
            Ended::Exited(ExitStatus::Signal(_)) => -1,
            _ => 0,
        }
    }

    /// The usages in the order `RunResponse.resource_usage` carries them:
    /// POSIX first (tools that read only the first expect it), then the
    /// cgroup's, then rbe-runner's accounting.
    pub fn resource_usage(&self) -> Vec<prost_types::Any> {
        let posix = self.posix_usage.iter().map(any_of);
        let cgroup = self.cgroup_usage.iter().map(any_of);
        let accounting = self.accounting.iter().map(any_of);
        posix.chain(cgroup).chain(accounting).collect()
    }

    /// The error the Run call fails with, with the evidence; `None` when
    /// it answers with a response. The events report it as the call's
    /// status.
    pub fn error(&self) -> Option<RunnerError> {
        let argv0 = &self.argv0;
        match &self.ended {
            Ended::NotStarted(error) => Some(error.clone()),
            Ended::Terminated { reason, .. } => Some(match reason {
                TerminationReason::Shutdown => RunnerError::unavailable(format!(
                    "action {} was terminated because the runner is shutting down",
                    quoted(argv0)
                )),
                TerminationReason::Deadline => RunnerError::DeadlineExceeded(format!(
                    "action {} was terminated because the call's deadline passed",
                    quoted(argv0)
                )),
                TerminationReason::Cancelled => RunnerError::Cancelled(format!(
                    "action {} was terminated because the call was cancelled",
                    quoted(argv0)
                )),
            }),
            Ended::Exited(ExitStatus::Unknown(status)) => Some(RunnerError::Internal(format!(
                "unexpected wait status {status:#x}"
            ))),
            Ended::Exited(_) => match (&self.measurement_error, self.grpc_code()) {
                (Some(error), _) => Some(RunnerError::Internal(error.clone())),
                (None, Code::Unavailable) => Some(RunnerError::Unavailable {
                    message: match self.oom.verdict {
                        OomVerdict::SharedLimit => oom_diagnosis::shared_limit_message(
                            &self.oom,
                            self.accounting.as_ref(),
                            self.cgroup_usage.as_ref(),
                        ),
                        _ => oom_diagnosis::foreign_oom_kill_message(
                            self.measured_cgroup.as_deref(),
                            self.cgroup_usage.as_ref(),
                        ),
                    },
                    details: self.resource_usage(),
                }),
                _ => None,
            },
        }
    }

    /// The Run call's answer: the response, or the error with the evidence.
    pub fn into_result(self) -> Result<RunResponse, RunnerError> {
        match self.error() {
            Some(error) => Err(error),
            None => Ok(RunResponse {
                exit_code: self.exit_code(),
                resource_usage: self.resource_usage(),
            }),
        }
    }
}

fn any_of<M: prost::Name>(message: &M) -> prost_types::Any {
    // Encoding into a Vec cannot fail: prost only fails when the buffer is
    // too small, and a Vec grows.
    prost_types::Any::from_msg(message).unwrap_or_else(|_| prost_types::Any {
        type_url: M::type_url(),
        value: Vec::new(),
    })
}

/// The `POSIXResourceUsage` of a child's rusage, with the name of the
/// signal that killed it, if one did.
pub fn posix_resource_usage(rusage: &libc::rusage, status: ExitStatus) -> PosixResourceUsage {
    let duration = |tv: libc::timeval| prost_types::Duration {
        seconds: tv.tv_sec,
        nanos: (tv.tv_usec * 1000) as i32,
    };
    PosixResourceUsage {
        user_time: Some(duration(rusage.ru_utime)),
        system_time: Some(duration(rusage.ru_stime)),
        // Linux reports ru_maxrss in KiB; the protocol wants bytes.
        maximum_resident_set_size: rusage.ru_maxrss.saturating_mul(1024),
        page_reclaims: rusage.ru_minflt,
        page_faults: rusage.ru_majflt,
        swaps: rusage.ru_nswap,
        block_input_operations: rusage.ru_inblock,
        block_output_operations: rusage.ru_oublock,
        messages_sent: rusage.ru_msgsnd,
        messages_received: rusage.ru_msgrcv,
        signals_received: rusage.ru_nsignals,
        voluntary_context_switches: rusage.ru_nvcsw,
        involuntary_context_switches: rusage.ru_nivcsw,
        termination_signal: match status {
            ExitStatus::Signal(signal) => crate::process::signal_name(signal),
            _ => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::id::{ActionIds, RunnerInstance};

    fn outcome(ended: Ended) -> ActionOutcome {
        ActionOutcome {
            id: ActionIds::new(RunnerInstance::random()).next(),
            argv0: "cc".into(),
            pid: Some(42),
            started_at: SystemTime::now(),
            wall_time: Duration::from_millis(5),
            ended,
            posix_usage: Some(PosixResourceUsage {
                maximum_resident_set_size: 1 << 20,
                ..PosixResourceUsage::default()
            }),
            cgroup_usage: None,
            measured_cgroup: None,
            oom: Attribution::NONE,
            accounting: None,
            measurement_error: None,
            cleanup: Cleanup::Verified,
            trace: None,
            phases: Default::default(),
        }
    }

    fn attributed(verdict: OomVerdict, retryable: bool) -> Attribution {
        Attribution {
            verdict,
            retryable,
            ..Attribution::NONE
        }
    }

    fn exited(status: ExitStatus) -> ActionOutcome {
        outcome(Ended::Exited(status))
    }

    fn terminated(reason: TerminationReason) -> ActionOutcome {
        outcome(Ended::Terminated {
            reason,
            killed_at_grace_deadline: false,
        })
    }

    #[test]
    fn each_ending_has_one_class_and_one_code() {
        // Why it matters: metrics, `watch` and the report all count by this
        // one classification; the Run call answers with the same code.
        let mut foreign = exited(ExitStatus::Signal(libc::SIGKILL));
        foreign.oom = attributed(OomVerdict::NotOwnLimit, true);
        let mut own = exited(ExitStatus::Signal(libc::SIGKILL));
        own.oom = attributed(OomVerdict::OwnLimit, false);
        let mut culprit = exited(ExitStatus::Signal(libc::SIGKILL));
        culprit.oom = attributed(OomVerdict::SharedLimit, false);
        let mut bystander = exited(ExitStatus::Signal(libc::SIGKILL));
        bystander.oom = attributed(OomVerdict::SharedLimit, true);
        let mut unmeasured = exited(ExitStatus::Code(0));
        unmeasured.measurement_error = Some("cannot read memory.events".into());
        let cases = [
            (exited(ExitStatus::Code(0)), ActionResult::Success, Code::Ok),
            (
                exited(ExitStatus::Code(3)),
                ActionResult::NonZeroExitCode,
                Code::Ok,
            ),
            (
                exited(ExitStatus::Signal(libc::SIGSEGV)),
                ActionResult::Signal,
                Code::Ok,
            ),
            (own, ActionResult::Signal, Code::Ok),
            (culprit, ActionResult::Signal, Code::Ok),
            (bystander, ActionResult::Failure, Code::Unavailable),
            (foreign, ActionResult::Failure, Code::Unavailable),
            (unmeasured, ActionResult::Failure, Code::Internal),
            (
                exited(ExitStatus::Unknown(0xffff)),
                ActionResult::Failure,
                Code::Internal,
            ),
            (
                terminated(TerminationReason::Deadline),
                ActionResult::Failure,
                Code::DeadlineExceeded,
            ),
            (
                terminated(TerminationReason::Cancelled),
                ActionResult::Failure,
                Code::Cancelled,
            ),
            (
                terminated(TerminationReason::Shutdown),
                ActionResult::Failure,
                Code::Unavailable,
            ),
            (
                outcome(Ended::NotStarted(RunnerError::InvalidArgument(
                    "no such program".into(),
                ))),
                ActionResult::Failure,
                Code::InvalidArgument,
            ),
        ];
        for (outcome, result, code) in cases {
            assert_eq!(
                (outcome.result(), outcome.grpc_code()),
                (result, code),
                "{:?}",
                outcome.ended
            );
            let answer = outcome.into_result();
            match code {
                Code::Ok => assert!(answer.is_ok(), "{answer:?}"),
                code => assert_eq!(answer.unwrap_err().code(), code),
            }
        }
    }

    #[test]
    fn a_response_carries_the_exit_code_and_the_usages_posix_first() {
        let mut signalled = exited(ExitStatus::Signal(libc::SIGKILL));
        signalled.cgroup_usage = Some(CgroupResourceUsage {
            memory_peak: 7,
            ..CgroupResourceUsage::default()
        });
        let response = signalled.into_result().unwrap();
        assert_eq!(response.exit_code, -1);
        assert_eq!(response.resource_usage.len(), 2);
        let posix: PosixResourceUsage = response.resource_usage[0].to_msg().unwrap();
        assert_eq!(posix.maximum_resident_set_size, 1 << 20);
        let cgroup: CgroupResourceUsage = response.resource_usage[1].to_msg().unwrap();
        assert_eq!(cgroup.memory_peak, 7);

        let response = exited(ExitStatus::Code(42)).into_result().unwrap();
        assert_eq!(response.exit_code, 42);
        assert_eq!(response.resource_usage.len(), 1);
    }

    #[test]
    fn a_foreign_oom_kill_keeps_the_usages_as_details() {
        // Why it matters: the UNAVAILABLE replaces the response, and the
        // evidence must not be lost with it.
        let mut foreign = exited(ExitStatus::Signal(libc::SIGKILL));
        foreign.oom = attributed(OomVerdict::NotOwnLimit, true);
        foreign.accounting = Some(ActionAccounting::default());
        foreign.measured_cgroup = Some("/sys/fs/cgroup/pod".into());
        foreign.cgroup_usage = Some(CgroupResourceUsage {
            memory_events_oom_kill: 1,
            ..CgroupResourceUsage::default()
        });
        let Err(RunnerError::Unavailable { message, details }) = foreign.into_result() else {
            panic!("expected UNAVAILABLE");
        };
        assert!(
            message.starts_with(oom_diagnosis::FOREIGN_OOM_KILL_MESSAGE),
            "{message}"
        );
        assert!(message.contains("/sys/fs/cgroup/pod"), "{message}");
        assert_eq!(details.len(), 3);
        let accounting: ActionAccounting = details[2].to_msg().unwrap();
        assert_eq!(accounting, ActionAccounting::default());
    }

    #[test]
    fn a_call_dropped_at_its_deadline_is_a_deadline_otherwise_a_cancellation() {
        // Why it matters: bb_worker enforces action timeouts by letting the
        // call's deadline pass; a user's cancellation is something else,
        // and metrics and events must tell them apart.
        let now = Instant::now();
        let of = TerminationReason::of_dropped_call;
        assert_eq!(of(None, now), TerminationReason::Cancelled);
        assert_eq!(
            of(Some(now + Duration::from_secs(10)), now),
            TerminationReason::Cancelled
        );
        assert_eq!(of(Some(now), now), TerminationReason::Deadline);
        assert_eq!(
            of(Some(now - Duration::from_secs(1)), now),
            TerminationReason::Deadline
        );
        // The client's timer fires a moment before ours would.
        assert_eq!(
            of(Some(now + Duration::from_millis(30)), now),
            TerminationReason::Deadline
        );
        assert_eq!(
            of(Some(now + Duration::from_millis(80)), now),
            TerminationReason::Cancelled
        );
    }

    #[test]
    fn wait_statuses_are_decoded() {
        assert_eq!(ExitStatus::from_wait_status(3 << 8), ExitStatus::Code(3));
        assert_eq!(
            ExitStatus::from_wait_status(libc::SIGKILL),
            ExitStatus::Signal(libc::SIGKILL)
        );
        // A stopped child (0x7f in the low byte) is neither.
        assert!(matches!(
            ExitStatus::from_wait_status(0x137f),
            ExitStatus::Unknown(_)
        ));
    }
}
