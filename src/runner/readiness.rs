//! `readinessCheckingPathnames`: host paths without which the runner is not
//! fit for work, such as a file on an NFS mount the actions need.
//!
//! A missing path makes CheckReadiness fail, so bb_worker stops taking
//! actions. And since a mount can vanish while an action runs, a Run that
//! failed (non-zero exit code) is checked again: if a path has gone, the
//! failure is most likely the host's, not the action's, so the result is
//! replaced by UNAVAILABLE, which Bazel retries, instead of failing a build.

use std::path::PathBuf;
use std::sync::Arc;

use crate::action::observer::{Refusal, RunnerStateReporter};
use crate::fault::{blocking, RunnerError};
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

use super::{CallContext, Runner, SharedRunner};

/// Wraps `base` so that CheckReadiness first requires every path in
/// `pathnames` to exist (stat, following symlinks), and a Run that exits
/// non-zero is turned into UNAVAILABLE when one of them has disappeared.
/// Whether the paths are present is reported to `state` whenever checked.
pub fn new(
    base: SharedRunner,
    pathnames: Vec<PathBuf>,
    state: Arc<RunnerStateReporter>,
) -> SharedRunner {
    Arc::new(PathExistenceCheckingRunner {
        base,
        pathnames: Arc::new(pathnames),
        state,
    })
}

struct PathExistenceCheckingRunner {
    base: SharedRunner,
    pathnames: Arc<Vec<PathBuf>>,
    state: Arc<RunnerStateReporter>,
}

impl PathExistenceCheckingRunner {
    async fn check_paths(&self) -> Result<(), RunnerError> {
        check_pathnames(self.pathnames.clone(), &self.state).await
    }
}

/// UNAVAILABLE naming the first of `pathnames` that cannot be stat'ed;
/// the result is reported to `state`. Blocking work: a hung NFS mount
/// blocks `stat`, and must not block the runtime. Also used by the
/// diagnostics server's `/-/ready`.
pub async fn check_pathnames(
    pathnames: Arc<Vec<PathBuf>>,
    state: &RunnerStateReporter,
) -> Result<(), RunnerError> {
    if pathnames.is_empty() {
        return Ok(());
    }
    let checked = blocking(move || {
        for path in pathnames.iter() {
            if let Err(err) = std::fs::metadata(path) {
                return Err(RunnerError::unavailable(format!(
                    "readiness checking path {path:?}: {err}"
                )));
            }
        }
        Ok(())
    })
    .await;
    match &checked {
        Ok(()) => state.resolve(Refusal::ReadinessPathMissing),
        Err(error) => state.refuse(Refusal::ReadinessPathMissing, error.to_string()),
    }
    checked
}

#[tonic::async_trait]
impl Runner for PathExistenceCheckingRunner {
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError> {
        self.check_paths().await?;
        self.base.check_readiness(request).await
    }

    async fn run(
        &self,
        request: RunRequest,
        call: CallContext,
    ) -> Result<RunResponse, RunnerError> {
        let response = self.base.run(request, call).await?;
        if response.exit_code != 0 {
            self.check_paths()
                .await
                .map_err(|err| err.context("required files disappeared during execution"))?;
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::observer::testing::RecordingObserver;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

    /// Answers every Run with a set exit code; counts readiness checks.
    struct FakeRunner {
        exit_code: AtomicI64,
        checks: AtomicUsize,
        /// Removed during Run, like a mount vanishing under the action.
        vanishes: Option<PathBuf>,
    }

    #[tonic::async_trait]
    impl Runner for FakeRunner {
        async fn check_readiness(&self, _: CheckReadinessRequest) -> Result<(), RunnerError> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        async fn run(&self, _: RunRequest, _: CallContext) -> Result<RunResponse, RunnerError> {
            if let Some(path) = &self.vanishes {
                std::fs::remove_file(path).unwrap();
            }
            Ok(RunResponse {
                exit_code: self.exit_code.load(Ordering::SeqCst),
                resource_usage: vec![],
            })
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        present: PathBuf,
        base: Arc<FakeRunner>,
        runner: SharedRunner,
        observer: Arc<RecordingObserver>,
    }

    impl Fixture {
        async fn run(&self) -> Result<RunResponse, RunnerError> {
            self.runner
                .run(RunRequest::default(), CallContext::default())
                .await
        }
    }

    /// A runner checking one present file, whose inner Run exits with
    /// `exit_code` and deletes that file when `vanish` is set.
    fn fixture(exit_code: i64, vanish: bool) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let present = tmp.path().join("mounted");
        std::fs::write(&present, "").unwrap();
        let base = Arc::new(FakeRunner {
            exit_code: AtomicI64::new(exit_code),
            checks: AtomicUsize::new(0),
            vanishes: vanish.then(|| present.clone()),
        });
        let observer = Arc::new(RecordingObserver::default());
        let state = Arc::new(RunnerStateReporter::new(observer.clone()));
        state.started();
        let runner = new(base.clone(), vec![present.clone()], state);
        Fixture {
            _tmp: tmp,
            present,
            base,
            runner,
            observer,
        }
    }

    /// With every path present the check passes through to the base.
    #[tokio::test]
    async fn readiness_passes_through_when_the_paths_exist() {
        let f = fixture(0, false);
        f.runner
            .check_readiness(CheckReadinessRequest::default())
            .await
            .unwrap();
        assert_eq!(f.base.checks.load(Ordering::SeqCst), 1);
    }

    /// A missing path keeps the worker from taking actions, and says which.
    #[tokio::test]
    async fn a_missing_path_makes_readiness_unavailable_naming_it() {
        let f = fixture(0, false);
        std::fs::remove_file(&f.present).unwrap();
        let err = f
            .runner
            .check_readiness(CheckReadinessRequest::default())
            .await
            .unwrap_err();
        let RunnerError::Unavailable { message, .. } = &err else {
            panic!("expected UNAVAILABLE, got {err:?}");
        };
        assert!(
            message.contains(&f.present.display().to_string()),
            "{message}"
        );
        assert_eq!(
            f.base.checks.load(Ordering::SeqCst),
            0,
            "the base is not asked"
        );
    }

    /// The point of the decorator: a failure caused by a vanished mount
    /// must not fail the build, so it becomes UNAVAILABLE.
    #[tokio::test]
    async fn a_failing_run_with_a_vanished_path_becomes_unavailable() {
        let f = fixture(1, true);
        let err = f.run().await.unwrap_err();
        let RunnerError::Unavailable { message, .. } = &err else {
            panic!("expected UNAVAILABLE, got {err:?}");
        };
        assert!(
            message.starts_with("required files disappeared during execution"),
            "{message}"
        );
        assert!(
            message.contains(&f.present.display().to_string()),
            "{message}"
        );
    }

    /// Real build failures on a healthy host are reported as they are.
    #[tokio::test]
    async fn a_failing_run_with_the_paths_present_is_returned_as_is() {
        let f = fixture(2, false);
        assert_eq!(f.run().await.unwrap().exit_code, 2);
    }

    /// A successful action is not second-guessed, even if a path is gone.
    #[tokio::test]
    async fn a_successful_run_is_not_rechecked() {
        let f = fixture(0, true);
        assert_eq!(f.run().await.unwrap().exit_code, 0);
    }

    /// Operators alert on the runner refusing work; a vanished mount must
    /// show as a state change, and its return as another.
    #[tokio::test]
    async fn a_missing_path_is_reported_as_refusing_work_until_it_returns() {
        let f = fixture(0, false);
        let check = || f.runner.check_readiness(CheckReadinessRequest::default());
        check().await.unwrap();
        std::fs::remove_file(&f.present).unwrap();
        check().await.unwrap_err();
        check().await.unwrap_err();
        std::fs::write(&f.present, "").unwrap();
        check().await.unwrap();
        assert_eq!(
            f.observer.calls(),
            [
                "state true startup",
                "state false readiness path missing",
                "state true readiness path missing resolved",
            ]
        );
    }
}
