//! Reading several journal files at once while handing their records on
//! in the order of the files and of their lines, exactly as reading them
//! one after the other would: parsing is most of a report's work, and a
//! fleet's journals are many files.
//!
//! Up to one worker per core takes the next file nobody has taken and
//! parses it into batches, sent over that file's own bounded channel; the
//! caller's thread takes the batches file by file, in order. An action
//! started in `events.jsonl.1` and finished in `events.jsonl` is therefore
//! paired as before, and memory stays bounded: at most [`BATCHES_AHEAD`]
//! batches wait per file being read.
//!
//! This cannot deadlock: files are taken in order, so the file the caller
//! waits for is being read, or is the next one a free worker takes (every
//! file before it has been read to its end). When the caller stops early
//! (a file cannot be read), its receivers go, and each worker stops at its
//! next send.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SendError, SyncSender};
use std::sync::{Mutex, PoisonError};
use std::thread;

use super::parse::{JournalReader, Record, Skipped};
use super::ReportError;

/// Records sent at once.
const BATCH: usize = 1024;
/// Batches a worker may read ahead of the caller, per file.
const BATCHES_AHEAD: usize = 8;

/// What a worker says about its file.
enum Message {
    /// The next records, in the file's order.
    Records(Vec<Record>),
    /// The file is read to its end; the lines it skipped.
    End(Skipped),
}

type Sender = SyncSender<Result<Message, ReportError>>;

/// Reads `files`, handing each record to `record` in the order of the
/// files and of their lines, and returns the lines skipped.
pub fn read_in_order(
    files: &[PathBuf],
    mut record: impl FnMut(Record),
) -> Result<Skipped, ReportError> {
    let workers = thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .min(files.len());
    let (senders, receivers): (Vec<Sender>, Vec<_>) =
        files.iter().map(|_| sync_channel(BATCHES_AHEAD)).unzip();
    // A worker owns a file's sender while it reads it: when it is done
    // (or panics), the channel closes.
    let queue = Mutex::new(files.iter().zip(senders));
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| work(&queue));
        }
        let mut skipped = Skipped::default();
        for receiver in receivers {
            skipped += receive(&receiver, &mut record)?;
        }
        Ok(skipped)
    })
}

/// Hands on one file's records; the lines it skipped.
fn receive(
    receiver: &Receiver<Result<Message, ReportError>>,
    record: &mut impl FnMut(Record),
) -> Result<Skipped, ReportError> {
    loop {
        match receiver.recv() {
            Ok(Ok(Message::Records(records))) => records.into_iter().for_each(&mut *record),
            Ok(Ok(Message::End(skipped))) => return Ok(skipped),
            Ok(Err(err)) => return Err(err),
            // Only a panicking worker drops a sender before `End`; the
            // scope passes its panic on.
            Err(_) => panic!("a journal reader stopped"),
        }
    }
}

/// Reads files from `queue` until none is left or the caller is gone.
fn work<'a>(queue: &Mutex<impl Iterator<Item = (&'a PathBuf, Sender)>>) {
    loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
        let Some((path, sender)) = next else {
            return;
        };
        if read_file(path, &sender).is_err() {
            return;
        }
    }
}

/// Sends the records of `path` in batches, then its skipped lines (or
/// why it could not be read). Fails only when the caller is gone.
fn read_file(path: &Path, sender: &Sender) -> Result<(), SendError<Result<Message, ReportError>>> {
    let read_error = |source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(source) => return sender.send(Err(read_error(source))),
    };
    let mut journal = JournalReader::new(BufReader::with_capacity(1 << 16, file));
    let mut skipped = Skipped::default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        match journal.next_record(&mut skipped) {
            Ok(Some(record)) => {
                batch.push(record);
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    sender.send(Ok(Message::Records(full)))?;
                }
            }
            Ok(None) => {
                sender.send(Ok(Message::Records(batch)))?;
                return sender.send(Ok(Message::End(skipped)));
            }
            Err(source) => return sender.send(Err(read_error(source))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED: &str = r#"{"time":"2026-01-01T00:00:01Z","runnerInstance":"0badcafe","actionStarted":{"actionId":"ID"}}"#;

    fn ids(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|record| match record {
                Record::Started(started) => started.action_id.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn records_come_in_the_order_of_the_files_and_their_lines() {
        // Why it matters: an action started in one file and finished in
        // the next is paired only if the records arrive as they were
        // written, whichever worker read which file first.
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut expected = Vec::new();
        for file in 0..7 {
            let lines = (0..2500 * file)
                .map(|line| {
                    let id = format!("{file}-{line}");
                    expected.push(id.clone());
                    STARTED.replace("ID", &id)
                })
                .collect::<Vec<_>>();
            let path = dir.path().join(format!("{file}.jsonl"));
            std::fs::write(&path, lines.join("\n") + "\nnot json\n").unwrap();
            files.push(path);
        }
        let mut records = Vec::new();
        let skipped = read_in_order(&files, |record| records.push(record)).unwrap();
        assert_eq!(ids(&records), expected);
        assert_eq!(skipped.corrupt, 7);
    }

    #[test]
    fn the_first_file_that_cannot_be_read_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.jsonl");
        std::fs::write(&good, STARTED).unwrap();
        let missing = [dir.path().join("a-missing"), dir.path().join("b-missing")];
        let files = [good.clone(), missing[0].clone(), good, missing[1].clone()];
        match read_in_order(&files, |_| {}) {
            Err(ReportError::Read { path, .. }) => assert_eq!(path, missing[0]),
            other => panic!("{other:?}"),
        }
    }
}
