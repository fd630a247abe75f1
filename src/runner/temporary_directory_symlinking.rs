//! `symlinkTemporaryDirectories`: making a fixed path such as `/tmp` lead
//! to the running action's own temporary directory.
//!
//! Tools that hard-code `/tmp` ignore TMPDIR; with this, what they write
//! lands in the directory bb_worker created for the action (and removes
//! with it) instead of on the host. Before each Run the configured path is
//! replaced by a symlink to the action's `temporary_directory`, atomically:
//! a new symlink is created next to it and renamed over it, so the path
//! never stops existing, and a leftover directory there is only removed
//! when empty.
//!
//! One path can only lead to one directory, so this is only correct with
//! one action at a time (bb_worker's concurrency set to 1 for this runner).
//! A second concurrent Run would redirect the first action's `/tmp`
//! mid-flight; it is refused instead (see [`new`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::build_directory::BuildDirectory;
use crate::fault::{blocking, RunnerError};
use crate::proto::runner::{CheckReadinessRequest, RunRequest, RunResponse};

use crate::action::ActionsRunning;

use super::{CallContext, Runner, SharedRunner};

/// Where the symlink points while the runner is idle and CheckReadiness
/// probes that it can be replaced: nowhere, so that a process outside any
/// action cannot use a stale action's directory through it.
const PROBE_TARGET: &str = "/nonexistent";

/// Wraps `base` so that before each Run, `symlink_path` is replaced by a
/// symlink to the request's `temporary_directory` (resolved beneath
/// `build_directory`). While no Run is in progress, CheckReadiness replaces
/// it with a symlink to [`PROBE_TARGET`], so that a worker that could not
/// do so (read-only parent, a non-empty directory in the way) reports
/// itself not ready instead of failing actions.
///
/// Only one Run at a time is allowed. A concurrent second Run fails with
/// INTERNAL before touching the symlink: the request is fine (not
/// INVALID_ARGUMENT), and UNAVAILABLE would have Bazel retry quietly,
/// hiding a deployment error (bb_worker's concurrency above 1) that will
/// keep happening; INTERNAL fails loudly with the fix in the message.
///
/// `actions_running` counts the actions not yet gone: an action whose call was dropped may still be in its grace
/// period, writing to the `/tmp` it was given, so the path is not repointed
/// (by a Run or a readiness probe) until it is gone.
pub fn new(
    base: SharedRunner,
    symlink_path: PathBuf,
    build_directory: Arc<BuildDirectory>,
    actions_running: ActionsRunning,
) -> SharedRunner {
    Arc::new(TemporaryDirectorySymlinkingRunner {
        base,
        symlink_path,
        build_directory,
        running: AtomicBool::new(false),
        updating: tokio::sync::Mutex::new(()),
        actions_running,
    })
}

struct TemporaryDirectorySymlinkingRunner {
    base: SharedRunner,
    symlink_path: PathBuf,
    build_directory: Arc<BuildDirectory>,
    /// A Run is in progress (from before its symlink update until it ends).
    running: AtomicBool,
    /// Serialises symlink updates, so that a readiness probe that began
    /// before a Run cannot overwrite that Run's symlink.
    updating: tokio::sync::Mutex<()>,
    /// See [`new`].
    actions_running: ActionsRunning,
}

/// Clears `running` when the Run ends, also when its future is dropped.
struct RunningGuard<'a>(&'a AtomicBool);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl TemporaryDirectorySymlinkingRunner {
    async fn point_at(&self, target: PathBuf) -> Result<(), RunnerError> {
        let _updating = self.updating.lock().await;
        let symlink_path = self.symlink_path.clone();
        blocking(move || replace_with_symlink(&symlink_path, &target)).await
    }
}

#[tonic::async_trait]
impl Runner for TemporaryDirectorySymlinkingRunner {
    async fn check_readiness(&self, request: CheckReadinessRequest) -> Result<(), RunnerError> {
        {
            let _updating = self.updating.lock().await;
            let terminating = !self.actions_running.is_idle();
            if !self.running.load(Ordering::SeqCst) && !terminating {
                let symlink_path = self.symlink_path.clone();
                blocking(move || replace_with_symlink(&symlink_path, Path::new(PROBE_TARGET)))
                    .await?;
            }
        }
        self.base.check_readiness(request).await
    }

    async fn run(
        &self,
        request: RunRequest,
        call: CallContext,
    ) -> Result<RunResponse, RunnerError> {
        if self
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            tracing::error!(path = %self.symlink_path.display(), "refused a concurrent Run");
            return Err(RunnerError::Internal(format!(
                "symlinkTemporaryDirectories {:?} allows one action at a time and another one is \
                 running; configure bb_worker to run one action at a time on this runner",
                self.symlink_path
            )));
        }
        let _running = RunningGuard(&self.running);
        // Holding the slot, any action still counted is one being
        // terminated after its call was dropped.
        self.actions_running.wait_idle().await;
        if request.temporary_directory.is_empty() {
            return Err(RunnerError::InvalidArgument(
                "temporary_directory is empty; symlinkTemporaryDirectories needs one".into(),
            ));
        }
        let build_directory = self.build_directory.clone();
        let relative = request.temporary_directory.clone();
        let target = blocking(move || {
            build_directory
                .open_directory(&relative, "temporary_directory")
                .map(|directory| directory.path)
                .map_err(RunnerError::from)
        })
        .await?;
        self.point_at(target).await?;
        self.base.run(request, call).await
    }
}

/// Atomically makes `path` a symlink to `target`. Whatever was at `path`
/// goes, except a non-empty directory, which is an error.
fn replace_with_symlink(path: &Path, target: &Path) -> Result<(), RunnerError> {
    let failed = |what: &str, err: std::io::Error| {
        RunnerError::Internal(format!(
            "symlinkTemporaryDirectories: cannot make {path:?} a symlink to {target:?}: {what}: {err}"
        ))
    };
    let name = path.file_name().ok_or_else(|| {
        failed(
            "the path has no file name",
            std::io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let mut staged_name = std::ffi::OsString::from(".");
    staged_name.push(name);
    staged_name.push(format!(".rbe-runner-{}", std::process::id()));
    let staged = path.with_file_name(staged_name);
    // Left over by a runner that died between the two steps below.
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(failed("removing a stale staged symlink", err)),
    }
    std::os::unix::fs::symlink(target, &staged)
        .map_err(|err| failed("creating the symlink", err))?;
    let renamed = match std::fs::rename(&staged, path) {
        // A symlink cannot replace a directory: remove it if it is empty
        // (the first run, typically) and try again.
        Err(err) if err.raw_os_error() == Some(libc::EISDIR) => std::fs::remove_dir(path)
            .map_err(|err| failed("removing the directory in the way", err))
            .and_then(|()| {
                std::fs::rename(&staged, path).map_err(|err| failed("renaming it into place", err))
            }),
        other => other.map_err(|err| failed("renaming it into place", err)),
    };
    if renamed.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    renamed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::{watch, Semaphore};

    /// Records where the symlink pointed when each Run reached it, and can
    /// hold Runs until released.
    struct FakeRunner {
        symlink_path: PathBuf,
        seen: Mutex<Vec<PathBuf>>,
        started: watch::Sender<usize>,
        release: Semaphore,
    }

    #[tonic::async_trait]
    impl Runner for FakeRunner {
        async fn check_readiness(&self, _: CheckReadinessRequest) -> Result<(), RunnerError> {
            Ok(())
        }

        async fn run(&self, _: RunRequest, _: CallContext) -> Result<RunResponse, RunnerError> {
            let target = std::fs::read_link(&self.symlink_path).unwrap();
            self.seen.lock().unwrap().push(target);
            self.started.send_modify(|n| *n += 1);
            self.release.acquire().await.unwrap().forget();
            Ok(RunResponse::default())
        }
    }

    struct Fixture {
        tmp: tempfile::TempDir,
        symlink_path: PathBuf,
        base: Arc<FakeRunner>,
        runner: SharedRunner,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let build = tmp.path().join("build");
        for action in ["a", "b"] {
            std::fs::create_dir_all(build.join(action).join("tmp")).unwrap();
        }
        let symlink_path = tmp.path().join("tmp");
        let base = Arc::new(FakeRunner {
            symlink_path: symlink_path.clone(),
            seen: Mutex::new(Vec::new()),
            started: watch::channel(0).0,
            release: Semaphore::new(0),
        });
        let build_directory = Arc::new(BuildDirectory::open(&build).unwrap());
        let runner = new(
            base.clone(),
            symlink_path.clone(),
            build_directory,
            ActionsRunning::default(),
        );
        Fixture {
            tmp,
            symlink_path,
            base,
            runner,
        }
    }

    fn request(action: &str) -> RunRequest {
        RunRequest {
            arguments: vec!["true".into()],
            temporary_directory: format!("{action}/tmp"),
            ..Default::default()
        }
    }

    /// Each action sees the path lead to its own temporary directory.
    #[tokio::test]
    async fn each_run_finds_the_path_pointing_at_its_own_temporary_directory() {
        let f = fixture();
        f.base.release.add_permits(2);
        f.runner
            .run(request("a"), CallContext::default())
            .await
            .unwrap();
        f.runner
            .run(request("b"), CallContext::default())
            .await
            .unwrap();
        let build = f.tmp.path().join("build");
        assert_eq!(
            *f.base.seen.lock().unwrap(),
            vec![build.join("a/tmp"), build.join("b/tmp")]
        );
    }

    /// The first run typically finds a real, empty directory at the path.
    #[tokio::test]
    async fn an_empty_directory_at_the_path_is_replaced() {
        let f = fixture();
        std::fs::create_dir(&f.symlink_path).unwrap();
        f.base.release.add_permits(1);
        f.runner
            .run(request("a"), CallContext::default())
            .await
            .unwrap();
        assert!(f.symlink_path.is_symlink());
    }

    /// A directory with contents is someone's data: never deleted.
    #[tokio::test]
    async fn a_non_empty_directory_at_the_path_is_an_error_and_kept() {
        let f = fixture();
        std::fs::create_dir(&f.symlink_path).unwrap();
        std::fs::write(f.symlink_path.join("data"), "x").unwrap();
        let err = f
            .runner
            .run(request("a"), CallContext::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RunnerError::Internal(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains(&f.symlink_path.display().to_string()),
            "{err}"
        );
        assert!(f.symlink_path.join("data").exists());
        let leftovers: Vec<_> = std::fs::read_dir(f.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("rbe-runner"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "staged symlink left behind: {leftovers:?}"
        );
    }

    /// While idle, readiness proves the symlink can be replaced.
    #[tokio::test]
    async fn readiness_while_idle_replaces_the_symlink_with_a_probe() {
        let f = fixture();
        f.runner
            .check_readiness(CheckReadinessRequest::default())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_link(&f.symlink_path).unwrap(),
            Path::new(PROBE_TARGET)
        );
    }

    /// A readiness check during a Run must not take the action's /tmp away.
    #[tokio::test]
    async fn readiness_during_a_run_leaves_the_symlink_alone() {
        let f = fixture();
        let run = tokio::spawn({
            let runner = f.runner.clone();
            async move { runner.run(request("a"), CallContext::default()).await }
        });
        f.base
            .started
            .subscribe()
            .wait_for(|n| *n == 1)
            .await
            .unwrap();
        f.runner
            .check_readiness(CheckReadinessRequest::default())
            .await
            .unwrap();
        let expected = f.tmp.path().join("build/a/tmp");
        assert_eq!(std::fs::read_link(&f.symlink_path).unwrap(), expected);
        f.base.release.add_permits(1);
        run.await.unwrap().unwrap();
    }

    /// One action at a time: a concurrent Run is refused with INTERNAL and
    /// the running action keeps its symlink.
    #[tokio::test]
    async fn a_concurrent_run_is_refused_and_the_first_keeps_its_symlink() {
        let f = fixture();
        let first = tokio::spawn({
            let runner = f.runner.clone();
            async move { runner.run(request("a"), CallContext::default()).await }
        });
        f.base
            .started
            .subscribe()
            .wait_for(|n| *n == 1)
            .await
            .unwrap();
        let err = f
            .runner
            .run(request("b"), CallContext::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RunnerError::Internal(_)), "{err:?}");
        assert!(err.to_string().contains("one action at a time"), "{err}");
        assert_eq!(
            std::fs::read_link(&f.symlink_path).unwrap(),
            f.tmp.path().join("build/a/tmp")
        );
        f.base.release.add_permits(2);
        first.await.unwrap().unwrap();
        // The refusal did not leave the runner marked busy.
        f.runner
            .run(request("b"), CallContext::default())
            .await
            .unwrap();
    }

    /// A cancelled Run must not leave the runner refusing all later ones.
    #[tokio::test]
    async fn a_cancelled_run_frees_the_slot() {
        let f = fixture();
        let first = tokio::spawn({
            let runner = f.runner.clone();
            async move { runner.run(request("a"), CallContext::default()).await }
        });
        f.base
            .started
            .subscribe()
            .wait_for(|n| *n == 1)
            .await
            .unwrap();
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        f.base.release.add_permits(1);
        f.runner
            .run(request("b"), CallContext::default())
            .await
            .unwrap();
    }

    /// The temporary directory is a request path like any other: it may
    /// not lead outside the build directory.
    #[tokio::test]
    async fn a_temporary_directory_outside_the_build_directory_is_invalid() {
        let f = fixture();
        let mut escaping = request("a");
        escaping.temporary_directory = "../..".into();
        let err = f
            .runner
            .run(escaping, CallContext::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RunnerError::InvalidArgument(_)), "{err:?}");
        assert!(!f.symlink_path.exists() && !f.symlink_path.is_symlink());
    }
}
