//! Worker sizing for capacity analysts, from event journals: what
//! `rbe-runner report` ([`crate::cli::report`]) computes and shows.
//!
//! - [`parse`]: journal lines → typed records, streaming; bad lines are
//!   counted, never fatal.
//! - [`read`]: several files parsed at once, their records handed on in
//!   order.
//! - [`id`]: the short strings records carry, held inline.
//! - [`stats`]: tallies, per-program distributions, concurrency sums and
//!   the CPU-pressure knee.
//! - [`text`], [`json`], [`html`]: the three ways of showing them, each
//!   through [`visible`]: control and bidirectional characters escaped.
//! - here: which files to read, and reading them into a [`Report`].

pub mod html;
pub mod id;
pub mod json;
pub mod parse;
pub mod read;
pub mod stats;
pub mod text;
pub mod visible;

use std::io;
use std::path::{Path, PathBuf};

use parse::Record;
use read::read_in_order;
use stats::{Analysis, GroupBy, Report};

/// What a report covers and how it is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOptions {
    /// Print JSON instead of tables.
    pub json: bool,
    /// Also write the HTML page here.
    pub html: Option<PathBuf>,
    /// How actions are grouped.
    pub group_by: GroupBy,
    /// Only actions that finished within this many seconds of the latest
    /// event.
    pub since_seconds: Option<f64>,
    /// Headroom for the pod memory (0.25: 25 %).
    pub headroom: f64,
    /// The journals, in the order given.
    pub journals: Vec<PathBuf>,
}

/// Errors of `report`.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A journal that cannot be read.
    #[error("report: cannot read {path}: {source}")]
    Read {
        /// The journal.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The HTML page cannot be written.
    #[error("report: cannot write {path}: {source}")]
    Write {
        /// The page.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The files to read for the journals named: each rotated `.1` file that
/// exists and was not named itself, before its journal (it is older).
pub fn journal_files(journals: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for journal in journals {
        let mut rotated = journal.clone().into_os_string();
        rotated.push(".1");
        let rotated = PathBuf::from(rotated);
        if rotated.is_file() && !journals.contains(&rotated) && !files.contains(&rotated) {
            files.push(rotated);
        }
        if !files.contains(journal) {
            files.push(journal.clone());
        }
    }
    files
}

/// The report of the journals, as `options` ask.
pub fn analyse(options: &ReportOptions) -> Result<Report, ReportError> {
    let files = journal_files(&options.journals);
    // `--since` counts back from the latest event, which is only known at
    // the end: a first pass finds it rather than keeping every action's
    // argv until then.
    let cutoff = match options.since_seconds {
        None => None,
        Some(since) => {
            let mut latest = f64::NEG_INFINITY;
            read_in_order(&files, |record| {
                if let Some(time) = record_time(&record) {
                    latest = latest.max(time);
                }
            })?;
            Some(latest - since)
        }
    };
    let mut analysis = Analysis::new(options.group_by, cutoff);
    let skipped = read_in_order(&files, |record| analysis.add(record))?;
    analysis.skipped = skipped;
    Ok(analysis.finish(options.headroom))
}

fn record_time(record: &Record) -> Option<f64> {
    match record {
        Record::Started(started) => Some(started.time),
        Record::Finished(finished) => Some(finished.time),
        Record::CleanupFailed { time } => Some(*time),
        Record::RunnerState(state) => Some(state.time),
        Record::Terminating => None,
    }
}

/// Writes the HTML page of `report` to `path`.
pub fn write_html(path: &Path, report: &Report) -> Result<(), ReportError> {
    std::fs::write(path, html::render(report)).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_journal_is_read_first_unless_named() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("events.jsonl");
        let rotated = dir.path().join("events.jsonl.1");
        std::fs::write(&journal, "").unwrap();
        let alone = journal_files(std::slice::from_ref(&journal));
        assert_eq!(alone, std::slice::from_ref(&journal));
        std::fs::write(&rotated, "").unwrap();
        assert_eq!(
            journal_files(std::slice::from_ref(&journal)),
            [rotated.clone(), journal.clone()]
        );
        assert_eq!(
            journal_files(&[journal.clone(), rotated.clone()]),
            [journal, rotated]
        );
    }
}
