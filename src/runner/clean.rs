//! Cleaning on idle transitions (`cleanProcessTable`,
//! `cleanTemporaryDirectories`, `runCommandCleaner`).
//!
//! Cleaning while an action runs would pull files or processes out from
//! under it, and cleaning only before each action would leave an idle
//! runner dirty. So, as bb_runner's idle invoker does, this decorator
//! counts calls in flight (Run and CheckReadiness alike) and cleans when
//! the count goes from 0 to 1 (before the call proceeds) and from 1 to 0
//! (before the call returns): an idle runner is always clean, a busy one
//! never disturbed.
//!
//! Cancellation is the hard part. A Run future is dropped when its RPC is
//! cancelled, at any await point. The count must still go down, and the
//! 1 → 0 cleaning still happen, so leaving is done by a guard whose `Drop`
//! starts it. Cleaning itself always runs in a task of its own: the caller
//! that triggered it may disappear, but callers arriving meanwhile wait for
//! it, and must not find it abandoned halfway. And since the local runner
//! terminates the action of a dropped call in the background (SIGTERM, a
//! grace period, SIGKILL), cleaning first waits until it reports no action
//! running: killing leftovers or emptying `/tmp` under a terminating action
//! would cut its grace period short or race its last writes.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::action::observer::{CleanerFinished, Observer};
use crate::action::ActionsRunning;
use crate::cleaner::Cleaner;
use crate::fault::RunnerError;
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

use super::{CallContext, Runner, SharedRunner};

/// Wraps `base` so that `cleaners` run, in the given order, whenever the
/// number of calls in flight goes from 0 to 1 or from 1 to 0. A failing
/// cleaner fails the call that triggered the cleaning with UNAVAILABLE (the
/// runner is not clean; another worker, or a later attempt, can do the
/// work), naming the cleaner. Later cleaners still run after one fails.
///
/// bb_runner's order, which main keeps: process table first (so nothing is
/// still writing), then temporary directories, then the command.
///
/// `actions_running` counts the actions not yet gone, including those
/// still being terminated after their call was dropped; every cleaning
/// waits for it to be zero first. Each cleaner's run is told to
/// `observer`.
///
/// Must be called within a Tokio runtime: cleanings started by a dropped
/// call are spawned onto it.
pub fn new(
    base: SharedRunner,
    cleaners: Vec<Box<dyn Cleaner>>,
    actions_running: ActionsRunning,
    observer: Arc<dyn Observer>,
) -> SharedRunner {
    Arc::new(CleanRunner {
        base,
        idle: Arc::new(IdleCleaner {
            cleaners,
            actions_running,
            observer,
            state: Mutex::new(State::default()),
            runtime: Handle::current(),
        }),
    })
}

struct CleanRunner {
    base: SharedRunner,
    idle: Arc<IdleCleaner>,
}

#[tonic::async_trait]
impl Runner for CleanRunner {
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError> {
        let in_flight = self.idle.enter().await?;
        let result = self.base.check_readiness(request).await;
        finish(result, in_flight.leave().await)
    }

    async fn run(
        &self,
        request: RunRequest,
        call: CallContext,
    ) -> Result<RunResponse, RunnerError> {
        let in_flight = self.idle.enter().await?;
        let result = self.base.run(request, call).await;
        finish(result, in_flight.leave().await)
    }
}

/// The call's own error wins; a failed 1 → 0 cleaning fails a call that
/// otherwise succeeded, as in bb_runner.
fn finish<T>(
    result: Result<T, RunnerError>,
    cleaned: Result<(), RunnerError>,
) -> Result<T, RunnerError> {
    match (result, cleaned) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(err)) => Err(err),
        (Err(err), _) => Err(err),
    }
}

/// Which way the runner is going when it cleans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    BecomingBusy,
    BecomingIdle,
}

impl Transition {
    fn describe(self) -> &'static str {
        match self {
            Transition::BecomingBusy => "cleaning before the call (the runner was idle)",
            Transition::BecomingIdle => "cleaning after the last call in flight",
        }
    }
}

/// The count of calls in flight, and the cleaning in progress if any.
struct IdleCleaner {
    cleaners: Vec<Box<dyn Cleaner>>,
    actions_running: ActionsRunning,
    observer: Arc<dyn Observer>,
    state: Mutex<State>,
    runtime: Handle,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    /// Set while cleaning; its sender is dropped when cleaning ends, which
    /// is what waiting callers wait for.
    cleaning: Option<watch::Receiver<()>>,
}

type Cleaning = JoinHandle<Result<Option<InFlight>, RunnerError>>;

/// What a caller entering finds.
enum Entry {
    /// Calls are in flight already: counted in, go ahead.
    Entered(InFlight),
    /// A cleaning is in progress: wait for it, then look again.
    WaitFor(watch::Receiver<()>),
    /// The runner was idle: this caller started the cleaning.
    Cleaning(Cleaning),
}

impl IdleCleaner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few assignments.
        crate::sync::lock_unpoisoned(&self.state)
    }

    /// Counts a call in. When the runner was idle, cleans first; callers
    /// arriving during any cleaning wait for it to end.
    async fn enter(self: &Arc<Self>) -> Result<InFlight, RunnerError> {
        loop {
            let cleaning = match self.enter_or_start_cleaning() {
                Entry::Entered(in_flight) => return Ok(in_flight),
                Entry::WaitFor(mut done) => {
                    // Err once the sender is gone, i.e. cleaning ended.
                    let _ = done.changed().await;
                    continue;
                }
                Entry::Cleaning(cleaning) => cleaning,
            };
            // If this future is dropped here, the task still finishes, and
            // the InFlight it returns is dropped with its output: the call
            // counted in by the cleaning is counted out again.
            return match cleaning.await {
                Ok(Ok(Some(in_flight))) => Ok(in_flight),
                Ok(Ok(None)) => Err(RunnerError::Internal(
                    "cleaning did not count the call in".into(),
                )),
                Ok(Err(err)) => Err(err),
                Err(err) => Err(RunnerError::Internal(format!(
                    "cleaning task failed: {err}"
                ))),
            };
        }
    }

    /// The locked part of [`IdleCleaner::enter`].
    fn enter_or_start_cleaning(self: &Arc<Self>) -> Entry {
        let mut state = self.lock();
        if let Some(done) = &state.cleaning {
            return Entry::WaitFor(done.clone());
        }
        if state.in_flight > 0 {
            state.in_flight += 1;
            return Entry::Entered(InFlight::new(self.clone()));
        }
        Entry::Cleaning(self.start_cleaning(&mut state, Transition::BecomingBusy))
    }

    /// Counts a call out; when it was the last one, starts cleaning.
    fn leave(self: &Arc<Self>) -> Option<Cleaning> {
        let mut state = self.lock();
        debug_assert!(
            state.cleaning.is_none(),
            "no cleaning while calls are in flight"
        );
        state.in_flight = state.in_flight.saturating_sub(1);
        (state.in_flight == 0).then(|| self.start_cleaning(&mut state, Transition::BecomingIdle))
    }

    /// Marks cleaning as in progress and runs it in a task of its own. When
    /// becoming busy, the task counts the triggering call in under the same
    /// lock that ends the cleaning, so no one can slip in between and start
    /// another cleaning.
    fn start_cleaning(self: &Arc<Self>, state: &mut State, transition: Transition) -> Cleaning {
        let (done, waiters) = watch::channel(());
        state.cleaning = Some(waiters);
        let this = self.clone();
        self.runtime.spawn(async move {
            let result = this.run_cleaners(transition).await;
            let in_flight = {
                let mut state = this.lock();
                state.cleaning = None;
                if result.is_ok() && transition == Transition::BecomingBusy {
                    state.in_flight += 1;
                    Some(InFlight::new(this.clone()))
                } else {
                    None
                }
            };
            drop(done);
            if let Err(err) = &result {
                tracing::warn!(%err, "cleaning failed");
            }
            result.map(|()| in_flight)
        })
    }

    /// Once no action is left running, runs every cleaner in order;
    /// reports all that failed.
    async fn run_cleaners(&self, transition: Transition) -> Result<(), RunnerError> {
        self.actions_running.wait_idle().await;
        let mut failures = Vec::new();
        for cleaner in &self.cleaners {
            let error = cleaner.clean().await.err().map(|err| err.to_string());
            self.observer.cleaner_finished(&CleanerFinished {
                cleaner: cleaner.name().to_owned(),
                error: error.clone(),
            });
            if let Some(err) = error {
                failures.push(format!("{}: {err}", cleaner.name()));
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        Err(RunnerError::unavailable(format!(
            "{} failed: {}",
            transition.describe(),
            failures.join("; ")
        )))
    }
}

/// One call in flight. Leaving explicitly gives the caller the result of
/// the cleaning it triggers; dropping leaves too, with the cleaning
/// detached (its failure is logged).
struct InFlight {
    idle: Option<Arc<IdleCleaner>>,
}

impl InFlight {
    fn new(idle: Arc<IdleCleaner>) -> Self {
        InFlight { idle: Some(idle) }
    }

    async fn leave(mut self) -> Result<(), RunnerError> {
        let Some(cleaning) = self.idle.take().and_then(|idle| idle.leave()) else {
            return Ok(());
        };
        match cleaning.await {
            Ok(result) => result.map(drop),
            Err(err) => Err(RunnerError::Internal(format!(
                "cleaning task failed: {err}"
            ))),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(idle) = self.idle.take() {
            // Detached: the task runs to completion on its own.
            drop(idle.leave());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::observer::testing::RecordingObserver;
    use crate::cleaner::CleanError;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use tokio::sync::Semaphore;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A cleaner that records its calls, can fail on demand, and can be
    /// held until the test lets it finish.
    struct FakeCleaner {
        name: String,
        calls: watch::Sender<usize>,
        journal: Arc<Mutex<Vec<String>>>,
        fail: Arc<AtomicBool>,
        gate: Option<Arc<Semaphore>>,
    }

    #[tonic::async_trait]
    impl Cleaner for FakeCleaner {
        fn name(&self) -> &str {
            &self.name
        }

        async fn clean(&self) -> Result<(), CleanError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.journal
                .lock()
                .unwrap()
                .push(format!("clean {}", self.name));
            self.calls.send_modify(|calls| *calls += 1);
            if self.fail.load(Ordering::SeqCst) {
                return Err(CleanError::Task("told to fail".into()));
            }
            Ok(())
        }
    }

    /// An inner runner that records calls and can be held mid-call.
    struct FakeRunner {
        journal: Arc<Mutex<Vec<String>>>,
        started: watch::Sender<usize>,
        gate: Arc<Semaphore>,
    }

    #[tonic::async_trait]
    impl Runner for FakeRunner {
        async fn check_readiness(&self, _: CheckReadinessRequest) -> Result<(), RunnerError> {
            self.journal.lock().unwrap().push("check_readiness".into());
            Ok(())
        }

        async fn run(
            &self,
            request: RunRequest,
            _: CallContext,
        ) -> Result<RunResponse, RunnerError> {
            self.journal
                .lock()
                .unwrap()
                .push(format!("run {}", request.arguments[0]));
            self.started.send_modify(|n| *n += 1);
            self.gate.acquire().await.unwrap().forget();
            Ok(RunResponse::default())
        }
    }

    struct Harness {
        runner: SharedRunner,
        journal: Arc<Mutex<Vec<String>>>,
        cleans: watch::Receiver<usize>,
        runs_started: watch::Receiver<usize>,
        fail: Arc<AtomicBool>,
        /// Permits let held runs finish.
        runs: Arc<Semaphore>,
        /// Permits let held cleanings finish (only when built with one).
        cleanings: Arc<Semaphore>,
        /// Plays the count of actions not yet gone.
        actions_running: ActionsRunning,
        /// What the decorator reported.
        observer: Arc<RecordingObserver>,
    }

    impl Harness {
        fn new(hold_cleanings: bool, names: &[&str]) -> Harness {
            let journal = Arc::new(Mutex::new(Vec::new()));
            let fail = Arc::new(AtomicBool::new(false));
            let cleanings = Arc::new(Semaphore::new(0));
            let (calls, cleans) = watch::channel(0);
            let cleaners: Vec<Box<dyn Cleaner>> = names
                .iter()
                .map(|name| {
                    Box::new(FakeCleaner {
                        name: name.to_string(),
                        calls: calls.clone(),
                        journal: journal.clone(),
                        fail: fail.clone(),
                        gate: hold_cleanings.then(|| cleanings.clone()),
                    }) as Box<dyn Cleaner>
                })
                .collect();
            let runs = Arc::new(Semaphore::new(0));
            let (started, runs_started) = watch::channel(0);
            let base = Arc::new(FakeRunner {
                journal: journal.clone(),
                started,
                gate: runs.clone(),
            });
            let actions_running = ActionsRunning::default();
            let observer = Arc::new(RecordingObserver::default());
            Harness {
                runner: new(base, cleaners, actions_running.clone(), observer.clone()),
                actions_running,
                observer,
                journal,
                cleans,
                runs_started,
                fail,
                runs,
                cleanings,
            }
        }

        fn journal(&self) -> Vec<String> {
            self.journal.lock().unwrap().clone()
        }

        fn run(&self, name: &str) -> tokio::task::JoinHandle<Result<RunResponse, RunnerError>> {
            let runner = self.runner.clone();
            let request = RunRequest {
                arguments: vec![name.to_string()],
                ..Default::default()
            };
            tokio::spawn(async move { runner.run(request, CallContext::default()).await })
        }

        async fn until_cleans(&self, count: usize) {
            let mut cleans = self.cleans.clone();
            tokio::time::timeout(LIMIT, cleans.wait_for(|n| *n >= count))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "waited for {count} cleanings; journal: {:?}",
                        self.journal()
                    )
                })
                .unwrap();
        }

        async fn until_runs_started(&self, count: usize) {
            let mut started = self.runs_started.clone();
            tokio::time::timeout(LIMIT, started.wait_for(|n| *n >= count))
                .await
                .unwrap_or_else(|_| {
                    panic!("waited for {count} runs; journal: {:?}", self.journal())
                })
                .unwrap();
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// The core promise: clean before the first call and after the last.
    #[tokio::test]
    async fn a_single_run_is_cleaned_before_and_after() {
        let h = Harness::new(false, &["a"]);
        h.runs.add_permits(1);
        h.run("one").await.unwrap().unwrap();
        assert_eq!(h.journal(), strings(&["clean a", "run one", "clean a"]));
    }

    /// Cleaners run in the order given (main passes bb_runner's order).
    #[tokio::test]
    async fn cleaners_run_in_the_given_order() {
        let h = Harness::new(false, &["processes", "directories", "command"]);
        h.runner
            .check_readiness(CheckReadinessRequest::default())
            .await
            .unwrap();
        assert_eq!(
            h.journal(),
            strings(&[
                "clean processes",
                "clean directories",
                "clean command",
                "check_readiness",
                "clean processes",
                "clean directories",
                "clean command",
            ])
        );
    }

    /// A busy runner is never disturbed: overlapping calls share one
    /// cleaning before and one after.
    #[tokio::test]
    async fn overlapping_runs_do_not_clean_while_busy() {
        let h = Harness::new(false, &["a"]);
        let first = h.run("first");
        h.until_runs_started(1).await;
        let second = h.run("second");
        h.until_runs_started(2).await;
        h.runs.add_permits(2);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        let journal = h.journal();
        assert_eq!(
            journal.iter().filter(|e| *e == "clean a").count(),
            2,
            "{journal:?}"
        );
        assert_eq!(journal.first().map(String::as_str), Some("clean a"));
        assert_eq!(journal.last().map(String::as_str), Some("clean a"));
    }

    /// CheckReadiness counts as in flight: during a Run it does not clean.
    #[tokio::test]
    async fn check_readiness_during_a_run_does_not_clean() {
        let h = Harness::new(false, &["a"]);
        let run = h.run("one");
        h.until_runs_started(1).await;
        h.runner
            .check_readiness(CheckReadinessRequest::default())
            .await
            .unwrap();
        assert_eq!(
            h.journal(),
            strings(&["clean a", "run one", "check_readiness"])
        );
        h.runs.add_permits(1);
        run.await.unwrap().unwrap();
        assert_eq!(*h.cleans.borrow(), 2);
    }

    /// Operators count cleaner runs and failures per cleaner; the
    /// decorator is the one that knows, so it reports each run.
    #[tokio::test]
    async fn each_cleaner_run_is_reported_with_its_result() {
        let h = Harness::new(false, &["a", "b"]);
        h.runs.add_permits(1);
        h.run("one").await.unwrap().unwrap();
        h.fail.store(true, Ordering::SeqCst);
        h.run("two").await.unwrap().unwrap_err();
        assert_eq!(
            h.observer.calls(),
            strings(&[
                "cleaner a ok",
                "cleaner b ok",
                "cleaner a ok",
                "cleaner b ok",
                "cleaner a failed",
                "cleaner b failed",
            ])
        );
    }

    /// A failing cleaner before the call fails it (UNAVAILABLE, naming the
    /// cleaner) without running the action; the next call cleans again.
    #[tokio::test]
    async fn a_failing_cleaner_before_the_call_fails_it_without_running_it() {
        let h = Harness::new(false, &["broken", "after"]);
        h.fail.store(true, Ordering::SeqCst);
        let err = h.run("one").await.unwrap().unwrap_err();
        let RunnerError::Unavailable { message, .. } = &err else {
            panic!("expected UNAVAILABLE, got {err:?}");
        };
        assert!(message.contains("broken: "), "{message}");
        assert!(message.contains("before the call"), "{message}");
        assert_eq!(
            h.journal(),
            strings(&["clean broken", "clean after"]),
            "all cleaners still run"
        );
        h.fail.store(false, Ordering::SeqCst);
        h.runs.add_permits(1);
        h.run("two").await.unwrap().unwrap();
        assert_eq!(
            h.journal()[2..],
            strings(&[
                "clean broken",
                "clean after",
                "run two",
                "clean broken",
                "clean after"
            ])
        );
    }

    /// A failing cleaner after the call turns its success into UNAVAILABLE.
    #[tokio::test]
    async fn a_failing_cleaner_after_the_call_fails_it() {
        let h = Harness::new(false, &["a"]);
        let run = h.run("one");
        h.until_runs_started(1).await;
        h.fail.store(true, Ordering::SeqCst);
        h.runs.add_permits(1);
        let err = run.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, RunnerError::Unavailable { message, .. } if message.contains("after the last call")),
            "{err:?}"
        );
    }

    /// A dropped Run (cancelled RPC) still counts out and cleans, and the
    /// runner is idle again afterwards: the next call cleans first.
    #[tokio::test]
    async fn a_cancelled_run_still_counts_out_and_cleans() {
        let h = Harness::new(false, &["a"]);
        let run = h.run("cancelled");
        h.until_runs_started(1).await;
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        h.until_cleans(2).await;
        h.runs.add_permits(1);
        h.run("next").await.unwrap().unwrap();
        assert_eq!(
            h.journal(),
            strings(&[
                "clean a",
                "run cancelled",
                "clean a",
                "clean a",
                "run next",
                "clean a"
            ])
        );
    }

    /// A dropped Run returns while the local runner still terminates its
    /// action; cleaning then must wait until the action is gone, or it
    /// would kill it before its grace period ends and race its last writes.
    #[tokio::test]
    async fn cleaning_waits_until_no_action_is_running() {
        let h = Harness::new(false, &["a"]);
        let run = h.run("cancelled");
        h.until_runs_started(1).await;
        let terminating = h.actions_running.count_in();
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *h.cleans.borrow(),
            1,
            "cleaned while the action was still terminating"
        );
        drop(terminating);
        h.until_cleans(2).await;
    }

    /// Callers arriving during the 0 → 1 cleaning wait for it, then run
    /// without another cleaning: nothing runs on a half-cleaned host.
    #[tokio::test]
    async fn callers_arriving_during_a_cleaning_wait_for_it() {
        let h = Harness::new(true, &["a"]);
        let first = h.run("first");
        let second = h.run("second");
        let readiness = {
            let runner = h.runner.clone();
            tokio::spawn(async move {
                runner
                    .check_readiness(CheckReadinessRequest::default())
                    .await
            })
        };
        // Let the tasks reach the cleaner; none may pass it while it is held.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(h.journal().is_empty(), "{:?}", h.journal());
        h.cleanings.add_permits(1);
        h.until_runs_started(2).await;
        readiness.await.unwrap().unwrap();
        assert_eq!(*h.cleans.borrow(), 1, "one cleaning for all three");
        h.runs.add_permits(2);
        h.cleanings.add_permits(1);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(*h.cleans.borrow(), 2);
    }

    /// The caller that triggered the 0 → 1 cleaning may be dropped while it
    /// cleans; its slot must not leak (else the runner is never idle again).
    #[tokio::test]
    async fn a_caller_dropped_during_its_cleaning_does_not_leak_its_slot() {
        let h = Harness::new(true, &["a"]);
        let run = h.run("dropped");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        // The cleaning finishes, counts the call in, its output is dropped,
        // which counts out and cleans again.
        h.cleanings.add_permits(2);
        h.until_cleans(2).await;
        h.cleanings.add_permits(2);
        h.runs.add_permits(1);
        h.run("next").await.unwrap().unwrap();
        assert_eq!(
            h.journal(),
            strings(&["clean a", "clean a", "clean a", "run next", "clean a"])
        );
    }
}
