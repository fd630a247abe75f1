//! Skipping a test loudly and on the record.
//!
//! A test that lacks what it needs (root, a cgroup v2 mount, a VM,
//! chromium, promtool, the Python virtualenv, ...) returns early and
//! passes, and the test harness swallows what a passing test printed: run
//! without root, the suite would go green having done nothing. So every
//! skip goes through [`skip`], which
//! - under CI panics instead: CI must not go green by skipping;
//! - appends one line to the skip log, which `tests/run-all` lists at its
//!   end;
//! - says `SKIPPED` on stderr past the harness's capture, so that
//!   `cargo test` shows it too.
//!
//! The skip log is `$RBE_RUNNER_SKIP_LOG`, else `test-skips.txt` in the
//! target directory of the running test executable. Each line is
//! `binary<TAB>test<TAB>reason`.
//!
//! The crate's unit tests have this file as `crate::test_support`; the
//! integration tests include the same file from `tests/common/mod.rs` with
//! `#[path]`, so it uses nothing but std and nix, and its own tests live in
//! `src/test_support.rs`, where they run once.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Names the skip log, overriding the default in the target directory
/// (`tests/run-all` sets it, to list the skips of the whole run).
pub const SKIP_LOG_VARIABLE: &str = "RBE_RUNNER_SKIP_LOG";

/// The skip log's name in the target directory.
const SKIP_LOG_NAME: &str = "test-skips.txt";

/// Cargo marks the root of a target directory with this file (whatever
/// `CARGO_TARGET_DIR` or `--target` put the executable under).
const TARGET_DIR_MARKER: &str = "CACHEDIR.TAG";

/// `test` cannot run here for `reason`; the caller returns right after.
/// Under CI this panics instead. Otherwise the skip is recorded in the
/// skip log and said on stderr; if it cannot be recorded this panics too,
/// since an unrecorded skip is the silent pass this exists to prevent.
pub fn skip(test: &str, reason: &str) {
    if forbids_skipping(std::env::var_os("CI").as_deref()) {
        panic!("{test} cannot run here ({reason}), and CI must not skip it");
    }
    let log = skip_log();
    if let Err(err) = record(&log, &test_binary(), test, reason) {
        panic!(
            "{test} cannot run here ({reason}), and the skip cannot be recorded in {} \
             (set {SKIP_LOG_VARIABLE} to a writable file): {err}",
            log.display()
        );
    }
    // Straight to the descriptor: eprintln! would be captured by the test
    // harness and never shown for a test that returns normally. One write,
    // so that the harness's own lines do not land in the middle.
    let line = format!("SKIPPED ({reason}): {test}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Whether a test that needs root may go on; if not, it has been skipped
/// with [`skip`].
pub fn running_as_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root");
    false
}

/// Whether the environment's `CI` value means a skip must fail the test:
/// set and non-empty, as `tests/run-all` and `tests/deploy/validate` read it.
pub fn forbids_skipping(ci: Option<&OsStr>) -> bool {
    ci.is_some_and(|value| !value.is_empty())
}

/// Appends the line `binary<TAB>test<TAB>reason` to `log`, creating it.
/// Whitespace runs (tabs, newlines) in the fields become one space, so a
/// line is one skip. The line goes out in one write(2) on a descriptor
/// opened with O_APPEND: the kernel puts it at the end in one piece, so
/// tests in parallel threads and processes do not interleave their lines.
pub fn record(log: &Path, binary: &str, test: &str, reason: &str) -> std::io::Result<()> {
    let line = format!(
        "{}\t{}\t{}\n",
        one_line(binary),
        one_line(test),
        one_line(reason)
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(line.as_bytes())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where skips are recorded: `$RBE_RUNNER_SKIP_LOG`, else the target
/// directory of this executable, else the temporary directory (a test
/// executable moved out of its target directory).
fn skip_log() -> PathBuf {
    if let Some(path) = std::env::var_os(SKIP_LOG_VARIABLE).filter(|path| !path.is_empty()) {
        return PathBuf::from(path);
    }
    let executable = std::env::current_exe().unwrap_or_default();
    match target_dir_of(&executable) {
        Some(target) => target.join(SKIP_LOG_NAME),
        None => std::env::temp_dir().join(format!("rbe-runner-{SKIP_LOG_NAME}")),
    }
}

/// The target directory holding `executable`, which cargo puts at
/// `<target>/[<triple>/]<profile>/deps/<name>-<hash>`.
pub fn target_dir_of(executable: &Path) -> Option<&Path> {
    executable
        .ancestors()
        .skip(1)
        .find(|dir| dir.join(TARGET_DIR_MARKER).is_file())
}

/// The test executable's name without cargo's hash (`decorators`,
/// `rbe_runner`), which `cargo test --test` or `--lib` selects.
fn test_binary() -> String {
    let executable = std::env::current_exe().unwrap_or_default();
    let name = executable
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    without_hash(&name).to_string()
}

/// `decorators-0123456789abcdef` → `decorators`.
pub fn without_hash(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            stem
        }
        _ => name,
    }
}
