//! The journal: every event appended to a file as one line of proto3 JSON
//! ([`super::json`]), for the analyst report and for grep.
//!
//! The writer is a subscriber like any other, with a queue of
//! [`JOURNAL_QUEUE_CAPACITY`](super::JOURNAL_QUEUE_CAPACITY) events: when
//! the disk is slower than the runner it misses events and writes the
//! `EventsLost` line instead, and a Run never waits for it. When the file
//! would grow past `journalMaxBytes` it is renamed to `<path>.1` (replacing
//! the previous one) and a new file is started. A file that cannot be
//! written (disk full, permission) loses the lines, which are counted; the
//! error is logged once when writing starts failing and once when it works
//! again, and the next batch tries again.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::hub::{delivered_event, EventHub, Lifetime, Start, Subscription};
use super::json::event_line;
use crate::action::RunnerInstance;

/// Events written per batch at most, so that rotation and failures are
/// noticed between batches of a busy runner too.
const BATCH: usize = 1024;

/// The running journal writer.
pub struct Journal {
    task: tokio::task::JoinHandle<()>,
    write_failures: Arc<AtomicU64>,
}

impl Journal {
    /// Subscribes to `hub` (replaying what it holds) and writes every
    /// event to `path`, rotating at `max_bytes`.
    pub fn start(hub: &Arc<EventHub>, path: PathBuf, max_bytes: u64) -> Self {
        let subscription = hub.subscribe(
            &Start::default(),
            super::JOURNAL_QUEUE_CAPACITY,
            Lifetime::UntilExit,
        );
        let write_failures = Arc::new(AtomicU64::new(0));
        let mut writer = JournalWriter::new(path, max_bytes, write_failures.clone());
        let instance = hub.instance().clone();
        let runtime = tokio::runtime::Handle::current();
        // File writes block; the writer lives on a blocking thread and
        // waits for events on the runtime.
        let task = tokio::task::spawn_blocking(move || {
            write_until_closed(&runtime, subscription, &instance, &mut writer)
        });
        Journal {
            task,
            write_failures,
        }
    }

    /// Lines that could not be written.
    pub fn write_failures_total(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    /// The counter of lines that could not be written, shared.
    pub fn write_failures(&self) -> Arc<AtomicU64> {
        self.write_failures.clone()
    }

    /// Waits until everything given to the writer is written; the hub
    /// must have been closed.
    pub async fn finished(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the journal writer failed");
        }
    }
}

fn write_until_closed(
    runtime: &tokio::runtime::Handle,
    mut subscription: Subscription,
    instance: &RunnerInstance,
    writer: &mut JournalWriter,
) {
    loop {
        let batch = runtime.block_on(subscription.next_batch(BATCH));
        if batch.is_empty() {
            return;
        }
        let lines: Vec<String> = batch
            .iter()
            .map(|delivery| event_line(&delivered_event(delivery, instance)))
            .collect();
        writer.write(&lines);
    }
}

/// Appends lines to the journal file, rotating it. See the module
/// documentation.
pub struct JournalWriter {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    failing: bool,
    write_failures: Arc<AtomicU64>,
}

impl JournalWriter {
    /// A writer of `path`, counting lost lines in `write_failures`.
    pub fn new(path: PathBuf, max_bytes: u64, write_failures: Arc<AtomicU64>) -> Self {
        JournalWriter {
            path,
            max_bytes,
            file: None,
            size: 0,
            failing: false,
            write_failures,
        }
    }

    /// Appends each line with a newline. A line that cannot be written is
    /// counted and lost; the file is reopened for the next batch.
    pub fn write(&mut self, lines: &[String]) {
        for (index, line) in lines.iter().enumerate() {
            if let Err(error) = self.append(line) {
                let lost = (lines.len() - index) as u64;
                self.write_failures.fetch_add(lost, Ordering::Relaxed);
                self.file = None;
                if !self.failing {
                    self.failing = true;
                    tracing::error!(path = %self.path.display(), %error,
                        "cannot write the events journal; events are lost until it can be written");
                }
                return;
            }
        }
        if self.failing && !lines.is_empty() {
            self.failing = false;
            tracing::info!(path = %self.path.display(), "the events journal is written again");
        }
    }

    fn append(&mut self, line: &str) -> io::Result<()> {
        let length = line.len() as u64 + 1;
        if self.file.is_some() && self.size > 0 && self.size + length > self.max_bytes {
            self.rotate()?;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = open_append(&self.path)?;
                self.size = file.metadata()?.len();
                if self.size > 0 && self.size + length > self.max_bytes {
                    drop(file);
                    self.rotate()?;
                    self.file.insert(open_append(&self.path)?)
                } else {
                    self.file.insert(file)
                }
            }
        };
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        file.write_all(&buffer)?;
        self.size += length;
        Ok(())
    }

    /// Renames the file to `<path>.1` and starts a new one.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        self.file = Some(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

/// Where the previous journal file is kept: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(count: usize, width: usize) -> Vec<String> {
        (0..count)
            .map(|n| format!("{n:0width$}", width = width))
            .collect()
    }

    #[test]
    fn the_journal_rotates_at_its_size_keeping_one_previous_file() {
        // Why it matters: a journal must not fill the disk, and the
        // report reads the `.1` file too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let failures = Arc::new(AtomicU64::new(0));
        // Lines of 10 bytes with the newline: 3 fit in 35 bytes.
        let mut writer = JournalWriter::new(path.clone(), 35, failures.clone());
        writer.write(&lines(4, 9));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "000000003\n");
        assert_eq!(
            std::fs::read_to_string(rotated_path(&path)).unwrap(),
            "000000000\n000000001\n000000002\n"
        );
        writer.write(&lines(6, 9)[4..]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "000000003\n000000004\n000000005\n"
        );
        writer.write(&lines(7, 9)[6..]);
        assert_eq!(
            std::fs::read_to_string(rotated_path(&path)).unwrap(),
            "000000003\n000000004\n000000005\n"
        );
        assert_eq!(failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_restarted_writer_appends_and_rotates_a_full_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "previous\n").unwrap();
        let failures = Arc::new(AtomicU64::new(0));
        let mut writer = JournalWriter::new(path.clone(), 20, failures);
        writer.write(&lines(1, 4));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "previous\n0000\n");
        writer.write(&lines(2, 9)[1..]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "000000001\n");
    }

    #[test]
    fn an_unwritable_journal_counts_lost_lines_and_recovers() {
        // Why it matters: a full disk must never fail an action, and
        // metrics count what was lost.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-directory").join("events.jsonl");
        let failures = Arc::new(AtomicU64::new(0));
        let mut writer = JournalWriter::new(path.clone(), 1 << 20, failures.clone());
        writer.write(&lines(3, 4));
        assert_eq!(failures.load(Ordering::Relaxed), 3);
        assert!(writer.failing);
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        writer.write(&lines(2, 4));
        assert!(!writer.failing);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0000\n0001\n");
        assert_eq!(failures.load(Ordering::Relaxed), 3);
    }
}
