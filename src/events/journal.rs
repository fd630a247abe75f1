//! The journal: every event appended to a file as one line of proto3 JSON
//! ([`super::json`]), for the analyst report and for grep.
//!
//! The writer is a subscriber like any other, with a queue bounded in
//! events and in bytes (`journalQueueBytes`): when the disk is slower than
//! the runner it misses events and writes the `EventsLost` line instead,
//! and a Run never waits for it. When the file would grow past
//! `journalMaxBytes` it is renamed to `<path>.1` (replacing the previous
//! one) and a new file is started.
//!
//! Three promises about the file:
//!
//! - **Only its owner reads it** (by default): argv may hold secrets, and
//!   actions may run as other users on the same host. The file is created
//!   with `journalMode` and set to it exactly after opening, whatever the
//!   umask; an existing file, or `.1`, that is readable more widely is
//!   narrowed when the writer opens it, and that is logged.
//! - **Whole lines or nothing.** A write that fails (disk full) may leave
//!   part of a line; the file is cut back to its last newline at once, and
//!   again when it is next opened (a runner killed mid-write leaves one
//!   too), so the next line never lands on a torn one.
//! - **A gap is written down.** Events that could not be written are
//!   counted, and when writing works again the first line is an
//!   `EventsLost` covering every one of them, so a reader knows the
//!   journal is incomplete and where. The error is logged once when
//!   writing starts failing and once when it works again.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::hub::{delivered_event, Capacity, Delivery, EventHub, Lifetime, Start, Subscription};
use super::json::event_line;
use crate::action::RunnerInstance;
use crate::shutdown::ShutdownBound;

/// Events taken from the queue at once at most, so that rotation and
/// failures are noticed between batches of a busy runner too.
const BATCH: usize = 1024;

/// Bytes of events taken from the queue at once: what leaves the queue's
/// budget before it is written is bounded too.
const BATCH_BYTES: u64 = 1 << 20;

/// How the journal is written, from the configuration.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// `journalPath`.
    pub path: PathBuf,
    /// `journalMode`: the permission bits of the file and its `.1`.
    pub mode: u32,
    /// `journalMaxBytes`: the size at which the file is rotated.
    pub max_bytes: u64,
    /// The writer's queue (`journalQueueBytes`).
    pub queue: Capacity,
}

/// The running journal writer.
pub struct Journal {
    task: tokio::task::JoinHandle<()>,
    write_failures: Arc<AtomicU64>,
    /// The last sequence the writer has dealt with (written, or counted as
    /// not written): what is after it is still queued or being written.
    settled_through: Arc<AtomicU64>,
    hub: Arc<EventHub>,
}

impl Journal {
    /// Subscribes to `hub` (replaying what it holds) and writes every
    /// event as `options` say.
    pub fn start(hub: &Arc<EventHub>, options: JournalOptions) -> Self {
        let subscription = hub
            .subscribe(&Start::default(), options.queue, Lifetime::UntilExit)
            .expect("the journal is not counted among the streams");
        let write_failures = Arc::new(AtomicU64::new(0));
        let mut writer =
            JournalWriter::new(&options, hub.instance().clone(), write_failures.clone());
        let settled_through = Arc::new(AtomicU64::new(0));
        let runtime = tokio::runtime::Handle::current();
        // File writes block; the writer lives on a blocking thread and
        // waits for events on the runtime.
        let task = tokio::task::spawn_blocking({
            let settled_through = settled_through.clone();
            move || {
                writer.narrow_previous();
                write_until_closed(&runtime, subscription, &mut writer, &settled_through);
            }
        });
        Journal {
            task,
            write_failures,
            settled_through,
            hub: hub.clone(),
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

    /// Waits until everything given to the writer is written, or until
    /// `bound` cuts the wait short (a write that blocks, as on a hung
    /// mount): then the events not written are counted and logged, and the
    /// writer is left to the runner's exit. The hub must have been closed.
    pub async fn finished(self, bound: &ShutdownBound) {
        match bound.bounded(self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the journal writer failed"),
            Err(cut) => {
                let unwritten = self
                    .hub
                    .last_sequence()
                    .saturating_sub(self.settled_through.load(Ordering::Relaxed));
                tracing::error!(%cut, unwritten,
                    "events not written to the journal: its final write did not finish");
            }
        }
    }
}

fn write_until_closed(
    runtime: &tokio::runtime::Handle,
    mut subscription: Subscription,
    writer: &mut JournalWriter,
    settled_through: &AtomicU64,
) {
    loop {
        let batch = runtime.block_on(subscription.next_batch(BATCH, BATCH_BYTES));
        let Some(last) = batch.iter().map(|delivery| covered(delivery).1).max() else {
            break;
        };
        writer.write(&batch);
        settled_through.fetch_max(last, Ordering::Relaxed);
    }
    if let Some((first, last)) = writer.unwritten {
        tracing::error!(path = %writer.path.display(), first, last,
            "events were never written to the journal: it could not be written until the runner exited");
    }
}

/// Appends events to the journal file, rotating it. See the module
/// documentation.
pub struct JournalWriter {
    path: PathBuf,
    mode: u32,
    max_bytes: u64,
    instance: RunnerInstance,
    file: Option<File>,
    /// Bytes in the current file, whole lines only.
    size: u64,
    failing: bool,
    /// The sequences not written since the last line that was, for the
    /// `EventsLost` line that goes first when writing works again.
    unwritten: Option<(u64, u64)>,
    write_failures: Arc<AtomicU64>,
}

impl JournalWriter {
    /// A writer as `options` say, of events of `instance` (which names
    /// the `EventsLost` lines it writes), counting the lines it loses in
    /// `write_failures`.
    pub fn new(
        options: &JournalOptions,
        instance: RunnerInstance,
        write_failures: Arc<AtomicU64>,
    ) -> Self {
        JournalWriter {
            path: options.path.clone(),
            mode: options.mode,
            max_bytes: options.max_bytes,
            instance,
            file: None,
            size: 0,
            failing: false,
            unwritten: None,
            write_failures,
        }
    }

    /// Narrows the previous file, `<path>.1`, if it is readable more
    /// widely than the journal's mode: it was written by an earlier
    /// runner, perhaps with the umask's mode.
    pub fn narrow_previous(&self) {
        let rotated = rotated_path(&self.path);
        let Ok(metadata) = std::fs::symlink_metadata(&rotated) else {
            return;
        };
        if !metadata.is_file() {
            return;
        }
        let old_mode = metadata.permissions().mode() & 0o7777;
        if old_mode & !self.mode == 0 {
            return;
        }
        match std::fs::set_permissions(&rotated, Permissions::from_mode(self.mode)) {
            Ok(()) => log_narrowed(&rotated, old_mode, self.mode),
            Err(error) => tracing::error!(path = %rotated.display(), %error,
                "the previous events journal is readable more widely than events.journalMode and cannot be narrowed"),
        }
    }

    /// Appends each delivery as a line, preceded by an `EventsLost` line
    /// for what could not be written before. What cannot be written is
    /// counted and remembered; the file is reopened for the next batch.
    pub fn write(&mut self, deliveries: &[Delivery]) {
        for (index, delivery) in deliveries.iter().enumerate() {
            if let Err(error) = self.write_one(delivery) {
                let not_written = &deliveries[index..];
                for delivery in not_written {
                    self.not_written(delivery);
                }
                self.write_failures
                    .fetch_add(not_written.len() as u64, Ordering::Relaxed);
                self.abandon_file();
                if !self.failing {
                    self.failing = true;
                    tracing::error!(path = %self.path.display(), %error,
                        "cannot write the events journal; events are lost until it can be written");
                }
                return;
            }
        }
        if self.failing && !deliveries.is_empty() {
            self.failing = false;
            tracing::info!(path = %self.path.display(), "the events journal is written again");
        }
    }

    /// Writes `delivery`, after the `EventsLost` line of what was not
    /// written before it (one line for both when `delivery` is a gap).
    fn write_one(&mut self, delivery: &Delivery) -> io::Result<()> {
        let Some(gap) = self.unwritten else {
            return self.append_delivery(delivery);
        };
        let (first, last) = match delivery {
            Delivery::Lost { .. } => union(gap, covered(delivery)),
            Delivery::Event(_) => gap,
        };
        self.append_delivery(&Delivery::Lost { first, last })?;
        self.unwritten = None;
        match delivery {
            Delivery::Lost { .. } => Ok(()),
            Delivery::Event(_) => self.append_delivery(delivery),
        }
    }

    fn append_delivery(&mut self, delivery: &Delivery) -> io::Result<()> {
        self.append(&event_line(&delivered_event(delivery, &self.instance)))
    }

    /// Remembers the sequences of `delivery` as not written.
    fn not_written(&mut self, delivery: &Delivery) {
        let sequences = covered(delivery);
        self.unwritten = Some(match self.unwritten {
            Some(gap) => union(gap, sequences),
            None => sequences,
        });
    }

    /// Closes the file after a failure, cut back to its last whole line.
    fn abandon_file(&mut self) {
        if let Some(file) = self.file.take() {
            // If this fails too, opening the file again cuts it.
            let _ = cut_to_last_line(&file);
        }
    }

    fn append(&mut self, line: &str) -> io::Result<()> {
        let length = line.len() as u64 + 1;
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && self.size + length > self.max_bytes {
            self.rotate()?;
        }
        let file = self.file.as_mut().expect("opened above");
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        file.write_all(&buffer)?;
        self.size += length;
        Ok(())
    }

    /// Opens (or creates) the file with the journal's mode, cut back to
    /// its last whole line.
    fn open(&mut self) -> io::Result<()> {
        let file = open_journal(&self.path, self.mode)?;
        let (size, cut) = cut_to_last_line(&file)?;
        if cut > 0 {
            tracing::warn!(path = %self.path.display(), bytes = cut,
                "the events journal ended in part of a line; cut back to its last whole line");
        }
        self.size = size;
        self.file = Some(file);
        Ok(())
    }

    /// Renames the file to `<path>.1` and starts a new one.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, rotated_path(&self.path))?;
        self.open()
    }
}

/// The sequences a delivery stands for.
fn covered(delivery: &Delivery) -> (u64, u64) {
    match delivery {
        Delivery::Event(published) => (published.event.sequence, published.event.sequence),
        Delivery::Lost { first, last } => (*first, *last),
    }
}

/// The smallest range holding both ranges of sequences.
fn union((first, last): (u64, u64), (other_first, other_last): (u64, u64)) -> (u64, u64) {
    (first.min(other_first), last.max(other_last))
}

/// Where the previous journal file is kept: `<path>.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Opens `path` for appending (and reading back its end), created with
/// `mode`, then set to exactly `mode`: the umask may have left fewer bits,
/// an existing file may have more.
fn open_journal(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(mode)
        .open(path)?;
    let old_mode = file.metadata()?.permissions().mode() & 0o7777;
    if old_mode != mode {
        file.set_permissions(Permissions::from_mode(mode))?;
        if old_mode & !mode != 0 {
            log_narrowed(path, old_mode, mode);
        }
    }
    Ok(file)
}

fn log_narrowed(path: &Path, old_mode: u32, mode: u32) {
    tracing::warn!(path = %path.display(), old_mode = format!("{old_mode:04o}"),
        mode = format!("{mode:04o}"),
        "the events journal was readable more widely than events.journalMode; narrowed");
}

/// Cuts `file` back to just after its last newline, if it ends in part
/// of a line. Returns its size after, and the bytes cut.
fn cut_to_last_line(file: &File) -> io::Result<(u64, u64)> {
    let size = file.metadata()?.len();
    let mut end = size;
    let mut chunk = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(newline) = part.iter().rposition(|&byte| byte == b'\n') {
            end = start + newline as u64 + 1;
            break;
        }
        end = start;
    }
    if end < size {
        file.set_len(end)?;
    }
    Ok((end, size - end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Published;
    use crate::proto::rbe_runner::events::v1::{event, Event, RunnerState};

    /// The events `sequences`, all of one line length while the sequences
    /// have one digit.
    fn deliveries(sequences: std::ops::RangeInclusive<u64>) -> Vec<Delivery> {
        sequences
            .map(|sequence| {
                Delivery::Event(Arc::new(Published {
                    event: Event {
                        sequence,
                        time: Some(prost_types::Timestamp::default()),
                        runner_instance: "0badcafe".into(),
                        kind: Some(event::Kind::RunnerState(RunnerState::default())),
                    },
                    usages: Vec::new(),
                }))
            })
            .collect()
    }

    /// The length of each line [`deliveries`] makes, newline included.
    fn line_length() -> u64 {
        event_line(&delivered_event(&deliveries(1..=1)[0], &instance())).len() as u64 + 1
    }

    fn instance() -> RunnerInstance {
        RunnerInstance::random()
    }

    fn new_writer(path: &Path, max_bytes: u64, mode: u32) -> (JournalWriter, Arc<AtomicU64>) {
        let failures = Arc::new(AtomicU64::new(0));
        let options = JournalOptions {
            path: path.to_path_buf(),
            mode,
            max_bytes,
            queue: Capacity {
                events: 16,
                bytes: 1 << 20,
            },
        };
        (
            JournalWriter::new(&options, instance(), failures.clone()),
            failures,
        )
    }

    /// Each line of `path`: its sequence, or `lost FIRST-LAST`.
    fn written(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).expect("a whole line");
                match value.get("eventsLost") {
                    Some(lost) => format!(
                        "lost {}-{}",
                        lost["firstSequence"].as_str().unwrap(),
                        lost["lastSequence"].as_str().unwrap()
                    ),
                    None => value["sequence"].as_str().unwrap().to_string(),
                }
            })
            .collect()
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_journal_rotates_at_its_size_keeping_one_previous_file() {
        // Why it matters: a journal must not fill the disk, and the
        // report reads the `.1` file too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut writer, failures) = new_writer(&path, 3 * line_length() + 5, 0o600);
        writer.write(&deliveries(1..=4));
        assert_eq!(written(&path), ["4"]);
        assert_eq!(written(&rotated_path(&path)), ["1", "2", "3"]);
        writer.write(&deliveries(5..=6));
        assert_eq!(written(&path), ["4", "5", "6"]);
        writer.write(&deliveries(7..=7));
        assert_eq!(written(&rotated_path(&path)), ["4", "5", "6"]);
        assert_eq!(mode_of(&rotated_path(&path)), 0o600);
        assert_eq!(failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_restarted_writer_appends_and_rotates_a_full_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "previous\n").unwrap();
        let (mut writer, _) = new_writer(&path, line_length() + 20, 0o600);
        writer.write(&deliveries(1..=1));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("previous\n{"), "{text}");
        writer.write(&deliveries(2..=2));
        assert_eq!(written(&path), ["2"]);
    }

    #[test]
    fn a_torn_last_line_is_cut_back_when_the_journal_is_opened() {
        // Why it matters: a line appended to half a line is lost with it,
        // and the report counts both as corrupt.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let whole = event_line(&delivered_event(&deliveries(1..=1)[0], &instance()));
        let torn = "x".repeat(10_000);
        std::fs::write(&path, format!("{whole}\n{{\"sequence\":\"2\",{torn}")).unwrap();
        let (mut writer, _) = new_writer(&path, 1 << 20, 0o600);
        writer.write(&deliveries(3..=3));
        assert_eq!(written(&path), ["1", "3"]);
        // A file that is nothing but part of a line is emptied.
        std::fs::write(&path, torn).unwrap();
        let (mut writer, _) = new_writer(&path, 1 << 20, 0o600);
        writer.write(&deliveries(4..=4));
        assert_eq!(written(&path), ["4"]);
    }

    #[test]
    fn an_unwritable_journal_counts_lost_lines_and_writes_the_gap_when_it_recovers() {
        // Why it matters: a full disk must never fail an action, metrics
        // count what was lost, and the journal itself says where it has a
        // hole, so that the report does not count too few actions silently.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-directory").join("events.jsonl");
        let (mut writer, failures) = new_writer(&path, 1 << 20, 0o600);
        writer.write(&deliveries(1..=3));
        assert_eq!(failures.load(Ordering::Relaxed), 3);
        assert!(writer.failing);
        writer.write(&[Delivery::Lost { first: 4, last: 6 }]);
        writer.write(&deliveries(7..=7));
        assert_eq!(failures.load(Ordering::Relaxed), 5);
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        writer.write(&deliveries(8..=9));
        assert!(!writer.failing);
        assert_eq!(written(&path), ["lost 1-7", "8", "9"]);
        assert_eq!(failures.load(Ordering::Relaxed), 5);
        // A gap the hub reports while one is pending is one line.
        let path = dir
            .path()
            .join("another-missing-directory")
            .join("events.jsonl");
        let (mut writer, _) = new_writer(&path, 1 << 20, 0o600);
        writer.write(&deliveries(1..=1));
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        writer.write(&[Delivery::Lost { first: 2, last: 3 }]);
        writer.write(&deliveries(4..=4));
        assert_eq!(written(&path), ["lost 1-3", "4"]);
    }

    #[test]
    fn the_journal_gets_its_mode_whatever_the_umask_and_a_wider_one_is_narrowed() {
        // Why it matters: argv may hold secrets, and actions may run as
        // other users: a journal with the umask's 0644 leaked them.
        let dir = tempfile::tempdir().unwrap();
        // Wider than the umask (022) allows: only setting the mode after
        // opening gives it.
        let path = dir.path().join("events.jsonl");
        let (mut writer, _) = new_writer(&path, 1 << 20, 0o666);
        writer.write(&deliveries(1..=1));
        assert_eq!(mode_of(&path), 0o666);

        let path = dir.path().join("existing.jsonl");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        std::fs::write(rotated_path(&path), "").unwrap();
        std::fs::set_permissions(rotated_path(&path), Permissions::from_mode(0o644)).unwrap();
        let (mut writer, _) = new_writer(&path, 1 << 20, 0o600);
        writer.narrow_previous();
        writer.write(&deliveries(1..=1));
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(&rotated_path(&path)), 0o600);
    }
}
