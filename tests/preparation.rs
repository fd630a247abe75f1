//! Where actions are prepared, decided once at startup from the build
//! directory's filesystem and named in the startup line (issue 23): on the
//! async workers for a local filesystem, on the blocking pool for FUSE
//! (bb_worker's virtual build directory), whose every operation may wait.

mod common;

use common::slow_fuse::SlowFuse;
use common::*;
use rbe_runner::cli::exec::ActionDirectory;
use serde_json::json;

/// The startup line about preparation.
fn preparation_line(runner: &TestRunner) -> String {
    runner
        .log()
        .into_iter()
        .find(|line| line.contains("preparing actions on"))
        .unwrap_or_else(|| panic!("no preparation line in {:#?}", runner.log()))
}

/// Why it matters: on tmpfs preparing takes microseconds, less than a
/// hand-off to the blocking pool; and actions still run there.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_directory_on_tmpfs_is_prepared_on_the_async_workers() {
    if !running_as_root("a_build_directory_on_tmpfs_is_prepared_on_the_async_workers") {
        return;
    }
    let tmpfs = Tmpfs::mount("size=16m");
    let runner = TestRunner::start(json!({ "buildDirectoryPath": tmpfs.dir.path() }));
    let line = preparation_line(&runner);
    assert!(
        line.contains("preparing actions on the async workers"),
        "{line}"
    );
    assert!(line.contains("filesystem=tmpfs"), "{line}");

    let action = ActionDirectory::create(tmpfs.dir.path()).unwrap();
    let request = shell_request(&action, "echo prepared here");
    let response = runner
        .client()
        .await
        .run(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.exit_code, 0);
    assert_eq!(read(&action.path.join("stdout")), "prepared here\n");
}

/// Why it matters: on FUSE a lookup or a create may wait for the server as
/// long as it likes; on an async worker that would stall every call.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_directory_on_fuse_is_prepared_on_the_blocking_pool() {
    let test = "a_build_directory_on_fuse_is_prepared_on_the_blocking_pool";
    if !fuse_available(test) {
        return;
    }
    let mounted = tempfile::tempdir().unwrap();
    let _fuse = SlowFuse::mount(mounted.path(), std::time::Duration::from_millis(10));
    let runner = TestRunner::start(json!({ "buildDirectoryPath": mounted.path() }));
    let line = preparation_line(&runner);
    assert!(
        line.contains("preparing actions on the blocking pool"),
        "{line}"
    );
    assert!(line.contains("filesystem=fuse"), "{line}");
    assert!(line.contains("blocking_threads=512"), "{line}");
}
