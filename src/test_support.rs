//! Helpers for the crate's unit tests.
//!
//! [`skip`] is the one way a test says it cannot run here (see
//! `test_support/skip.rs`); the integration tests include the same file
//! from `tests/common/mod.rs`, so its tests are here, where they run once.
//! [`command_succeeds`] is the one way a unit test runs a command.

mod skip;

pub(crate) use skip::{running_as_root, skip};

/// Runs `command` to its end; whether it exited 0. Through the runner's
/// reaper: in the unit tests' process, a reaper that another test started
/// waits for every child and takes an unknown one for an orphan, so a
/// std `Command` waited on directly could lose its status (ECHILD; CI
/// failed once so). The wait is on a thread of its own, so that callers
/// on a runtime's thread may call this too.
pub(crate) fn command_succeeds(command: &mut std::process::Command) -> bool {
    let Ok(child) = crate::process::reaper::reaper().spawn(command) else {
        return false;
    };
    std::thread::scope(|scope| scope.spawn(move || child.exit.blocking_recv()).join())
        .ok()
        .and_then(Result::ok)
        .is_some_and(|exit| exit.exit_code() == Some(0))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::path::Path;

    use super::skip::{forbids_skipping, record, target_dir_of, without_hash};

    /// Why it matters: the log is the only trace a skipped test leaves
    /// once the harness has swallowed its output; a line per skip, even
    /// from a reason spanning lines, is what `tests/run-all` counts.
    #[test]
    fn each_skip_is_one_line_appended_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.txt");
        record(&log, "decorators", "a_chrooted_action", "needs root").unwrap();
        record(&log, "vm", "cgroup_oom", "missing:\n\tqemu-system-x86").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "decorators\ta_chrooted_action\tneeds root\nvm\tcgroup_oom\tmissing: qemu-system-x86\n"
        );
    }

    /// Why it matters: tests run in parallel threads and processes; lines
    /// torn into each other would miscount the skips.
    #[test]
    fn concurrent_skips_do_not_tear_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.txt");
        let reason = "r".repeat(1000);
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let (log, reason) = (&log, &reason);
                scope.spawn(move || {
                    for test in 0..50 {
                        record(log, "binary", &format!("t{thread}-{test}"), reason).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 400);
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "{line:.80}");
            assert_eq!(fields[2], reason, "{line:.80}");
        }
    }

    /// Why it matters: CI sets `CI=true` and must fail on a skip; an
    /// unset or empty `CI` is a developer's run, which may skip.
    #[test]
    fn ci_forbids_skipping_when_set_and_not_empty() {
        assert!(forbids_skipping(Some(OsStr::new("true"))));
        assert!(forbids_skipping(Some(OsStr::new("1"))));
        assert!(!forbids_skipping(Some(OsStr::new(""))));
        assert!(!forbids_skipping(None));
    }

    /// Why it matters: with `CARGO_TARGET_DIR` or `--target`, the log must
    /// still land in the target directory `tests/run-all` reads.
    #[test]
    fn the_log_lives_in_the_target_directory_of_the_test_executable() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let deps = target.join("x86_64-unknown-linux-gnu/debug/deps");
        std::fs::create_dir_all(&deps).unwrap();
        std::fs::write(target.join("CACHEDIR.TAG"), "").unwrap();
        let executable = deps.join("decorators-0123456789abcdef");
        assert_eq!(target_dir_of(&executable), Some(target.as_path()));
        assert_eq!(target_dir_of(Path::new("/nonexistent/deps/x")), None);
        assert_eq!(without_hash("decorators-0123456789abcdef"), "decorators");
        assert_eq!(without_hash("spawn_stress"), "spawn_stress");
    }
}
