//! Cleaners: each restores one part of the host to the state actions
//! expect to find it in, and is run by [`crate::runner::clean`] whenever the
//! runner goes from idle to busy or back.
//!
//! - [`process_table`]: `cleanProcessTable`, SIGKILL for processes that
//!   actions left behind (daemons that escaped their process group).
//! - [`directory`]: `cleanTemporaryDirectories`, emptying a directory
//!   without ever following a symlink out of it.
//! - [`command`]: `runCommandCleaner`, an operator-provided command.

pub mod command;
pub mod directory;
pub mod process_table;

use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;

/// One cleaning step. Cleaners run one at a time, never while an action
/// runs, so they may assume nothing else is changing what they clean.
#[tonic::async_trait]
pub trait Cleaner: Send + Sync + 'static {
    /// The configuration field this cleaner comes from, with its value when
    /// there can be several (`cleanTemporaryDirectories "/tmp"`). Error
    /// messages start with it, so an operator knows which one failed.
    fn name(&self) -> &str;

    /// Cleans, or says why it could not.
    async fn clean(&self) -> Result<(), CleanError>;
}

/// Why a cleaner failed. Every variant names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    /// A file-system operation failed.
    #[error("cannot {operation} {path:?}: {errno}")]
    FileSystem {
        operation: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    /// A directory inside a cleaned directory is another file system's
    /// mount point; emptying it would delete data that is not ours.
    #[error("{path:?} is on another file system (a mount point?); refusing to empty it")]
    OtherFileSystem { path: PathBuf },
    /// The process table could not be read.
    #[error("cannot read the process table in {root:?}: {message}")]
    ProcessTable { root: PathBuf, message: String },
    /// A leftover process could not be signalled.
    #[error("cannot kill leftover process {pid}: {errno}")]
    Kill { pid: i32, errno: Errno },
    /// Leftover processes did not exit after SIGKILL (typically stuck in
    /// uninterruptible sleep on a hung file system).
    #[error("leftover processes {pids:?} were still running {waited:?} after SIGKILL")]
    Survivors { pids: Vec<i32>, waited: Duration },
    /// New leftover processes kept appearing while the old ones were killed.
    #[error("leftover processes were still appearing after {passes} rounds of SIGKILL (last seen: {pids:?})")]
    StillForking { passes: usize, pids: Vec<i32> },
    /// The blocking task doing the work panicked or was cancelled.
    #[error("the cleaning task failed: {0}")]
    Task(String),
    /// The cleaning command could not be started.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The cleaning command failed.
    #[error("{program:?} {outcome}; its stderr: {stderr:?}")]
    CommandFailed {
        program: String,
        /// "exited with code 3", "was killed by signal KILL".
        outcome: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
}
