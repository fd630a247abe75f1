//! Who learns what the runner does: observers of typed facts.
//!
//! The action lifecycle, the dirty gate, the clean decorator, the readiness
//! decorator and shutdown report through one [`Observer`]; logs are one
//! observer ([`LogObserver`]), and the event stream or metrics are added
//! the same way, by implementing the trait and wiring it in `main`.
//! Observers are called synchronously on the runner's path, so they must
//! be quick and must never block: hand work off to a queue of your own.
//! Calls refused before an action exists (a decorator's refusal) are not
//! actions and are not reported here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::id::ActionId;
use super::outcome::{ActionOutcome, Ended, ExitStatus, TerminationReason};
use crate::cgroup::action::ActionCgroupManager;
use crate::process::stuck::StuckSpawns;
use crate::sync::lock_unpoisoned;
use crate::trace_context::CallTrace;

/// An action's process was started.
#[derive(Debug, Clone)]
pub struct ActionStarted {
    /// Its id.
    pub id: ActionId,
    /// Its argv, as the request gave it.
    pub arguments: Vec<String>,
    /// The request's input root, relative to the build directory.
    pub input_root_directory: String,
    /// The pid of its first process.
    pub pid: i32,
    /// Its own cgroup, with `actionCgroups`.
    pub cgroup: Option<PathBuf>,
    /// The files its stdout and stderr go to, created by the runner.
    pub outputs: OutputFiles,
    /// The trace of the call that asked for it, if any.
    pub trace: Option<CallTrace>,
}

/// The files an action's stdout and stderr go to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputFiles {
    /// Its standard output.
    pub stdout: OutputFile,
    /// Its standard error.
    pub stderr: OutputFile,
}

/// A file the runner created for an action's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputFile {
    /// Relative to the build directory, as the request gave it.
    pub path: String,
    /// Its device and inode when created, which tell it from a file the
    /// action (or anyone) put in its place; `None` if unknown.
    pub identity: Option<(u64, u64)>,
}

/// The runner began stopping an action (SIGTERM), and again when it had
/// to SIGKILL it at the end of the grace period.
#[derive(Debug, Clone)]
pub struct ActionTerminating {
    /// Its id.
    pub id: ActionId,
    /// Why.
    pub reason: TerminationReason,
    /// `false` when termination begins; `true` in the second report, once
    /// the action outlived its grace period and was killed.
    pub killed_at_grace_deadline: bool,
}

/// An action cgroup that could not be emptied and removed; the runner
/// refuses work until a background retry succeeds.
#[derive(Debug, Clone)]
pub struct CleanupFailed {
    /// The action, or `None` for a leftover of a previous runner.
    pub id: Option<ActionId>,
    /// The cgroup.
    pub cgroup: PathBuf,
    /// The processes left in it when cleanup gave up.
    pub pids: Vec<i32>,
    /// What was left in it, or what failed.
    pub detail: String,
}

/// Whether the runner accepts work, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerState {
    /// Whether Run and CheckReadiness may succeed.
    pub accepting_work: bool,
    /// Why: `startup`, `dirty cgroup`, `stuck spawn`, `readiness path missing`,
    /// `shutdown`, or what ended a refusal.
    pub reason: String,
    /// `memory.max` of the cgroup all actions share (the delegated parent
    /// with `actionCgroups`, else the runner's own when sampled); `None`
    /// when unlimited, not measured or unknown.
    pub memory_budget_bytes: Option<u64>,
}

/// A cleaner (`cleanProcessTable`, `cleanTemporaryDirectories`,
/// `runCommandCleaner`) ran.
#[derive(Debug, Clone)]
pub struct CleanerFinished {
    /// The cleaner's name, as in the configuration.
    pub cleaner: String,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Receives the runner's facts as they happen. Every method has an empty
/// default, so an observer implements only what it consumes.
pub trait Observer: Send + Sync {
    /// An action's process was started.
    fn action_started(&self, _started: &ActionStarted) {}
    /// The runner began stopping an action.
    fn action_terminating(&self, _terminating: &ActionTerminating) {}
    /// An action is over, whether it ran or not: its outcome.
    fn action_finished(&self, _outcome: &ActionOutcome) {}
    /// An action cgroup could not be cleaned.
    fn cleanup_failed(&self, _failed: &CleanupFailed) {}
    /// The runner started or stopped accepting work.
    fn runner_state_changed(&self, _state: &RunnerState) {}
    /// A cleaner ran.
    fn cleaner_finished(&self, _finished: &CleanerFinished) {}
}

/// The observers of one runner, called in order.
#[derive(Clone, Default)]
pub struct Observers(Vec<Arc<dyn Observer>>);

impl Observers {
    /// All of `observers`.
    pub fn new(observers: Vec<Arc<dyn Observer>>) -> Self {
        Observers(observers)
    }

    fn each(&self, call: impl Fn(&dyn Observer)) {
        for observer in &self.0 {
            call(observer.as_ref());
        }
    }
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observers({})", self.0.len())
    }
}

impl Observer for Observers {
    fn action_started(&self, started: &ActionStarted) {
        self.each(|observer| observer.action_started(started));
    }
    fn action_terminating(&self, terminating: &ActionTerminating) {
        self.each(|observer| observer.action_terminating(terminating));
    }
    fn action_finished(&self, outcome: &ActionOutcome) {
        self.each(|observer| observer.action_finished(outcome));
    }
    fn cleanup_failed(&self, failed: &CleanupFailed) {
        self.each(|observer| observer.cleanup_failed(failed));
    }
    fn runner_state_changed(&self, state: &RunnerState) {
        self.each(|observer| observer.runner_state_changed(state));
    }
    fn cleaner_finished(&self, finished: &CleanerFinished) {
        self.each(|observer| observer.cleaner_finished(finished));
    }
}

// ---------------------------------------------------------------------------
// Whether the runner accepts work
// ---------------------------------------------------------------------------

/// Something that makes the runner refuse work while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// An action cgroup could not be emptied and removed.
    DirtyCgroup,
    /// A spawn's exec has not returned within `stuckSpawnTimeout`.
    StuckSpawn,
    /// A `readinessCheckingPathnames` path is missing.
    ReadinessPathMissing,
    /// The runner is shutting down.
    Shutdown,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::DirtyCgroup => "dirty cgroup",
            Refusal::StuckSpawn => "stuck spawn",
            Refusal::ReadinessPathMissing => "readiness path missing",
            Refusal::Shutdown => "shutdown",
        }
    }
}

/// Tracks the reasons to refuse work, reported by the parts that find
/// them, and tells the observers whenever `accepting_work` changes.
pub struct RunnerStateReporter {
    observer: Arc<dyn Observer>,
    memory_budget_bytes: Option<u64>,
    state: Mutex<ReporterState>,
}

#[derive(Default)]
struct ReporterState {
    /// Changes are reported only once serving began ([`RunnerStateReporter::started`]).
    started: bool,
    refusals: BTreeMap<Refusal, String>,
}

impl RunnerStateReporter {
    /// A reporter telling `observer`.
    pub fn new(observer: Arc<dyn Observer>) -> Self {
        RunnerStateReporter {
            observer,
            memory_budget_bytes: None,
            state: Mutex::new(ReporterState::default()),
        }
    }

    /// Reports `memory_budget_bytes` (read at startup) with every state.
    pub fn with_memory_budget(mut self, memory_budget_bytes: Option<u64>) -> Self {
        self.memory_budget_bytes = memory_budget_bytes;
        self
    }

    fn state(&self, accepting_work: bool, reason: String) -> RunnerState {
        RunnerState {
            accepting_work,
            reason,
            memory_budget_bytes: self.memory_budget_bytes,
        }
    }

    /// The runner begins serving: reports its state once.
    pub fn started(&self) {
        let mut reporter = lock_unpoisoned(&self.state);
        reporter.started = true;
        let state = match reporter.refusals.iter().next() {
            None => self.state(true, "startup".into()),
            Some((refusal, detail)) => self.state(false, format!("{}: {detail}", refusal.as_str())),
        };
        self.observer.runner_state_changed(&state);
    }

    /// `refusal` holds, for the reason `detail`.
    pub fn refuse(&self, refusal: Refusal, detail: impl Into<String>) {
        let mut reporter = lock_unpoisoned(&self.state);
        let was_accepting = reporter.refusals.is_empty();
        reporter.refusals.insert(refusal, detail.into());
        if was_accepting && reporter.started {
            self.observer
                .runner_state_changed(&self.state(false, refusal.as_str().into()));
        }
    }

    /// `refusal` no longer holds.
    pub fn resolve(&self, refusal: Refusal) {
        let mut reporter = lock_unpoisoned(&self.state);
        let removed = reporter.refusals.remove(&refusal).is_some();
        if removed && reporter.refusals.is_empty() && reporter.started {
            self.observer
                .runner_state_changed(&self.state(true, format!("{} resolved", refusal.as_str())));
        }
    }

    /// Why work is refused now (the first reason, with its detail), or
    /// `None` when it is accepted.
    pub fn refusal(&self) -> Option<String> {
        let reporter = lock_unpoisoned(&self.state);
        let (refusal, detail) = reporter.refusals.iter().next()?;
        Some(format!("{}: {detail}", refusal.as_str()))
    }

    /// Whether work is accepted now.
    pub fn accepting_work(&self) -> bool {
        lock_unpoisoned(&self.state).refusals.is_empty()
    }
}

/// Reports the dirty gate of `manager` to `state`: the runner refuses work
/// while an action cgroup could not be emptied and removed. The reporting
/// task ends when the manager is gone.
pub fn report_dirty_cgroups(manager: &ActionCgroupManager, state: Arc<RunnerStateReporter>) {
    let mut dirty = manager.dirty_count();
    let report = move |count: usize| {
        if count == 0 {
            state.resolve(Refusal::DirtyCgroup);
        } else {
            state.refuse(
                Refusal::DirtyCgroup,
                format!("{count} action cgroup(s) could not be emptied and removed"),
            );
        }
    };
    report(*dirty.borrow_and_update());
    tokio::spawn(async move {
        while dirty.changed().await.is_ok() {
            let count = *dirty.borrow_and_update();
            report(count);
        }
    });
}

/// Reports the spawns whose exec has not returned within
/// `stuckSpawnTimeout` to `state`, as [`report_dirty_cgroups`] does dirty
/// cgroups: the runner refuses work while one is stuck. Starts the
/// watchdog that finds them; both tasks run for the runner's life.
pub fn report_stuck_spawns(spawns: Arc<StuckSpawns>, state: Arc<RunnerStateReporter>) {
    let mut stuck = spawns.count();
    tokio::spawn(spawns.clone().watch());
    tokio::spawn(async move {
        while stuck.changed().await.is_ok() {
            let count = *stuck.borrow_and_update();
            // The program and how long it had waited when it was found
            // stuck; CheckReadiness says how long it has waited by now.
            match spawns.reason() {
                Some(reason) if count > 0 => state.refuse(Refusal::StuckSpawn, reason),
                _ => state.resolve(Refusal::StuckSpawn),
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

/// Writes the facts to the log, every line about an action with its
/// `action_id`.
#[derive(Debug, Default)]
pub struct LogObserver;

impl Observer for LogObserver {
    fn action_started(&self, started: &ActionStarted) {
        tracing::debug!(action_id = %started.id, pid = started.pid,
            argv0 = started.arguments.first().map(String::as_str).unwrap_or_default(),
            "action started");
    }

    fn action_terminating(&self, terminating: &ActionTerminating) {
        // The SIGKILL at the grace deadline is in the action's last line.
        if !terminating.killed_at_grace_deadline {
            tracing::info!(action_id = %terminating.id, reason = %terminating.reason,
                "terminating action");
        }
    }

    fn action_finished(&self, outcome: &ActionOutcome) {
        let action_id = outcome.id.as_str();
        let argv0 = outcome.argv0.as_str();
        let wall_time = outcome.wall_time;
        // One line per action, the cleanup included: a line is a write to
        // stderr, paid by every action.
        let cleanup = outcome.cleanup.as_str();
        // The call's trace, to find the action's spans (or bb_worker's)
        // from its log line; left out when the call carried none.
        let trace_id = outcome.trace.map(|trace| trace.trace_id_hex());
        let trace_id = trace_id.as_deref();
        match &outcome.ended {
            Ended::Exited(status) => {
                let (exit_code, signal) = match status {
                    ExitStatus::Code(code) => (Some(*code), None),
                    ExitStatus::Signal(signal) => (None, Some(*signal)),
                    ExitStatus::Unknown(_) => (None, None),
                };
                tracing::info!(action_id, pid = ?outcome.pid, argv0, ?exit_code, ?signal,
                    ?wall_time, oom_verdict = %outcome.oom.verdict,
                    result = outcome.result().as_str(), %cleanup, trace_id, "action exited");
            }
            Ended::Terminated {
                reason,
                killed_at_grace_deadline,
            } => {
                let how = if *killed_at_grace_deadline {
                    "killed with SIGKILL at the grace deadline"
                } else {
                    "stopped by SIGTERM"
                };
                tracing::info!(action_id, pid = ?outcome.pid, argv0, %reason, outcome = how,
                    ?wall_time, %cleanup, trace_id, "action terminated");
            }
            Ended::NotStarted(error) => {
                tracing::info!(action_id, argv0, %error, code = ?outcome.grpc_code(),
                    trace_id, "action not started");
            }
        }
    }

    fn cleanup_failed(&self, failed: &CleanupFailed) {
        let action_id = failed.id.as_ref().map(ActionId::as_str);
        tracing::error!(action_id, cgroup = %failed.cgroup.display(), detail = failed.detail,
            "action cgroup could not be cleaned; refusing work until it is");
    }

    fn runner_state_changed(&self, state: &RunnerState) {
        if state.accepting_work {
            tracing::info!(reason = state.reason, "accepting work");
        } else {
            tracing::warn!(reason = state.reason, "refusing work");
        }
    }

    fn cleaner_finished(&self, finished: &CleanerFinished) {
        if let Some(error) = &finished.error {
            tracing::warn!(cleaner = finished.cleaner, error, "cleaner failed");
        } else {
            tracing::debug!(cleaner = finished.cleaner, "cleaner finished");
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! An observer that records what it is told, for tests.

    use super::*;

    /// One recorded call, as text that tests compare.
    #[derive(Debug, Default)]
    pub struct RecordingObserver {
        pub calls: Mutex<Vec<String>>,
        pub outcomes: Mutex<Vec<(ActionId, String, tonic::Code)>>,
    }

    impl RecordingObserver {
        pub fn calls(&self) -> Vec<String> {
            lock_unpoisoned(&self.calls).clone()
        }
        fn record(&self, call: String) {
            lock_unpoisoned(&self.calls).push(call);
        }
    }

    impl Observer for RecordingObserver {
        fn action_started(&self, started: &ActionStarted) {
            self.record(format!("started {}", started.id));
        }
        fn action_terminating(&self, terminating: &ActionTerminating) {
            self.record(format!(
                "terminating {} {}{}",
                terminating.id,
                terminating.reason,
                if terminating.killed_at_grace_deadline {
                    " SIGKILL"
                } else {
                    ""
                }
            ));
        }
        fn action_finished(&self, outcome: &ActionOutcome) {
            self.record(format!(
                "finished {} {}",
                outcome.id,
                outcome.result().as_str()
            ));
            lock_unpoisoned(&self.outcomes).push((
                outcome.id.clone(),
                outcome.result().as_str().into(),
                outcome.grpc_code(),
            ));
        }
        fn cleanup_failed(&self, failed: &CleanupFailed) {
            self.record(format!("cleanup failed {}", failed.cgroup.display()));
        }
        fn runner_state_changed(&self, state: &RunnerState) {
            self.record(format!("state {} {}", state.accepting_work, state.reason));
        }
        fn cleaner_finished(&self, finished: &CleanerFinished) {
            self.record(format!(
                "cleaner {} {}",
                finished.cleaner,
                if finished.error.is_some() {
                    "failed"
                } else {
                    "ok"
                }
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::RecordingObserver;
    use super::*;

    #[test]
    fn the_state_changes_only_when_accepting_work_changes() {
        // Why it matters: an event per change of `accepting_work` is what
        // operators alert on; repeated refusals must not flood them.
        let recorder = Arc::new(RecordingObserver::default());
        let reporter = RunnerStateReporter::new(recorder.clone());
        reporter.started();
        reporter.refuse(Refusal::DirtyCgroup, "actions/x");
        reporter.refuse(Refusal::ReadinessPathMissing, "/mnt/nfs");
        assert!(!reporter.accepting_work());
        reporter.resolve(Refusal::DirtyCgroup);
        reporter.resolve(Refusal::Shutdown);
        reporter.resolve(Refusal::ReadinessPathMissing);
        assert!(reporter.accepting_work());
        assert_eq!(
            recorder.calls(),
            [
                "state true startup",
                "state false dirty cgroup",
                "state true readiness path missing resolved",
            ]
        );
    }

    #[test]
    fn a_refusal_found_before_startup_is_the_first_state() {
        let recorder = Arc::new(RecordingObserver::default());
        let reporter = RunnerStateReporter::new(recorder.clone());
        reporter.refuse(Refusal::DirtyCgroup, "leftover actions/x");
        reporter.started();
        assert_eq!(
            recorder.calls(),
            ["state false dirty cgroup: leftover actions/x"]
        );
    }
}
