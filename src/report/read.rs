//! Reading several journal files at once while handing their records on
//! in the order of the files and of their lines, exactly as reading them
//! one after the other would: parsing is most of a report's work, and a
//! fleet's journals are many files.
//!
//! Each file is cut into pieces of [`PIECE`] bytes (the lines that start
//! in a piece belong to it), so that every core parses even when the
//! caller is still taking the records of an earlier file: reading whole
//! files in parallel left one core idle, its worker waiting for the
//! caller to reach its file. Up to one worker per core takes the next
//! piece nobody has taken, in order, and parses it into batches, sent
//! over that piece's own bounded channel; the caller's thread takes the
//! batches piece by piece, in order. An action started in
//! `events.jsonl.1` and finished in `events.jsonl` is therefore paired as
//! before. Memory stays bounded: at most [`PIECES_AHEAD`] pieces wait for
//! the caller beyond those being read, each with at most
//! [`BATCHES_AHEAD`] batches.
//!
//! A file is opened once, by the worker that takes its first piece, and
//! its size then decides its pieces: the last one reads on to the end,
//! wherever that is by then (a journal being written grows), and pieces
//! of a file that shrank find no lines. Every piece reads through the
//! descriptor opened first, so a journal rotated meanwhile is still read
//! as one file.
//!
//! The batches' vectors go back to a shared pool once handed on and are
//! filled again: allocating a fresh one per batch, freed on another
//! thread, had the allocator give memory back to the system and fault it
//! in again.
//!
//! This cannot deadlock: pieces are taken in order, so the piece the
//! caller waits for is being read or has been read (a worker waiting to
//! take a piece holds none). When the caller stops early (a file cannot
//! be read), its receivers go, and each worker stops at its next send.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SendError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use super::parse::{JournalReader, Record, Skipped};
use super::ReportError;

/// Bytes read from a file at once: each `read` copies out of the page
/// cache, and large reads make fewer system calls (lines that straddle a
/// refill are copied once more, which is rarer in a larger buffer).
const READ_BUFFER: usize = 1 << 20;
/// The bytes of a file one worker parses at a time.
const PIECE: u64 = 16 << 20;
/// Records sent at once.
const BATCH: usize = 1024;
/// Batches a worker may read ahead of the caller, per piece: more than
/// a piece of the runner's lines makes, so that a worker rarely waits.
const BATCHES_AHEAD: usize = 64;
/// Pieces taken but not yet reached by the caller, beyond those it is
/// reading.
const PIECES_AHEAD: usize = 2;

/// What a worker says about its piece.
enum Message {
    /// The next records, in the file's order.
    Records(Vec<Record>),
    /// The piece is read to its end; the lines it skipped.
    End(Skipped),
}

type Sender = SyncSender<Result<Message, ReportError>>;
type PieceReceiver = Receiver<Result<Message, ReportError>>;

/// Emptied batch vectors, ready to be filled again.
type Spare = Mutex<Vec<Vec<Record>>>;

/// Reads `files`, handing each record to `record` in the order of the
/// files and of their lines, and returns the lines skipped.
pub fn read_in_order(
    files: &[PathBuf],
    record: impl FnMut(Record),
) -> Result<Skipped, ReportError> {
    read_in_pieces(files, PIECE, record)
}

/// [`read_in_order`] with pieces of `piece_bytes`.
fn read_in_pieces(
    files: &[PathBuf],
    piece_bytes: u64,
    mut record: impl FnMut(Record),
) -> Result<Skipped, ReportError> {
    let workers = thread::available_parallelism().map_or(1, |cores| cores.get());
    let (order, pieces) = sync_channel(PIECES_AHEAD);
    let planner = Mutex::new(Planner {
        files: files.iter(),
        piece_bytes,
        file: None,
        order: Some(order),
    });
    let spare = Spare::default();
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| work(&planner, &spare));
        }
        let mut skipped = Skipped::default();
        for receiver in pieces {
            skipped += receive(&receiver, &spare, &mut record)?;
        }
        Ok(skipped)
    })
}

/// Hands on one piece's records; the lines it skipped.
fn receive(
    receiver: &PieceReceiver,
    spare: &Spare,
    record: &mut impl FnMut(Record),
) -> Result<Skipped, ReportError> {
    loop {
        match receiver.recv() {
            Ok(Ok(Message::Records(mut records))) => {
                records.drain(..).for_each(&mut *record);
                // Kept up to a few pieces' worth of batches in flight.
                let mut spare = spare.lock().unwrap_or_else(PoisonError::into_inner);
                if spare.len() < BATCHES_AHEAD * 4 {
                    spare.push(records);
                }
            }
            Ok(Ok(Message::End(skipped))) => return Ok(skipped),
            Ok(Err(err)) => return Err(err),
            // Only a panicking worker drops a sender before `End`; the
            // scope passes its panic on.
            Err(_) => panic!("a journal reader stopped"),
        }
    }
}

/// The lines of a file that start in `start..end` (`end` `None`: to the
/// end of the file).
struct Piece<'a> {
    path: &'a Path,
    file: Arc<File>,
    start: u64,
    end: Option<u64>,
}

/// Hands out the pieces of the files in order, each with the channel its
/// records go over; the caller gets the channels' ends in the same order.
struct Planner<'a, I> {
    files: I,
    /// [`PIECE`], but for tests.
    piece_bytes: u64,
    /// The file being cut.
    file: Option<Cutting<'a>>,
    /// Dropped after the last piece, which ends the caller's loop.
    order: Option<SyncSender<PieceReceiver>>,
}

/// A file being cut into pieces.
struct Cutting<'a> {
    path: &'a Path,
    file: Arc<File>,
    /// Where its next piece starts.
    next: u64,
    /// Its size when it was opened.
    size: u64,
}

impl<'a, I: Iterator<Item = &'a PathBuf>> Planner<'a, I> {
    /// The next piece (or the error opening its file) and where its
    /// records go; `None` when there is none or the caller is gone.
    fn next(&mut self) -> Option<(Result<Piece<'a>, ReportError>, Sender)> {
        loop {
            if let Some(cutting) = &mut self.file {
                let end = cutting.next.saturating_add(self.piece_bytes);
                let piece = Piece {
                    path: cutting.path,
                    file: Arc::clone(&cutting.file),
                    start: cutting.next,
                    end: (end < cutting.size).then_some(end),
                };
                cutting.next = end;
                if piece.end.is_none() {
                    self.file = None;
                }
                return self.issue(Ok(piece));
            }
            let Some(path) = self.files.next() else {
                self.order = None;
                return None;
            };
            let opened = File::open(path).and_then(|file| {
                let size = file.metadata()?.len();
                Ok((file, size))
            });
            match opened {
                Ok((file, size)) => {
                    self.file = Some(Cutting {
                        path,
                        file: Arc::new(file),
                        next: 0,
                        size,
                    })
                }
                Err(source) => {
                    let path = path.to_path_buf();
                    return self.issue(Err(ReportError::Read { path, source }));
                }
            }
        }
    }

    /// Hands the receiving end of a new channel to the caller (waiting
    /// while [`PIECES_AHEAD`] are already waiting for it).
    fn issue<T>(&mut self, work: T) -> Option<(T, Sender)> {
        let (sender, receiver) = sync_channel(BATCHES_AHEAD);
        self.order.as_ref()?.send(receiver).ok()?;
        Some((work, sender))
    }
}

/// Reads pieces from `planner` until none is left or the caller is gone.
fn work<'a, I: Iterator<Item = &'a PathBuf>>(planner: &Mutex<Planner<'a, I>>, spare: &Spare) {
    loop {
        let next = planner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next();
        let Some((piece, sender)) = next else {
            return;
        };
        let sent = match piece {
            Ok(piece) => read_piece(&piece, &sender, spare),
            Err(err) => sender.send(Err(err)),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Reads a file from a position of its own, through a descriptor shared
/// with the workers reading its other pieces; or, when `stream`, as the
/// descriptor's own reads give it.
struct FileAt {
    file: Arc<File>,
    position: u64,
    /// The piece is the whole file: it is read as a stream, which a pipe
    /// (`report <(zcat events.jsonl.gz)`) needs, having no positions.
    stream: bool,
}

impl Read for FileAt {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = if self.stream {
            (&*self.file).read(buffer)?
        } else {
            self.file.read_at(buffer, self.position)?
        };
        self.position += read as u64;
        Ok(read)
    }
}

/// Consumes `reader` through its next newline, looking no further than
/// `limit` bytes (or to its end); the bytes consumed, and whether the
/// newline was found. Nothing is kept, however long the line.
fn skip_line(reader: &mut impl BufRead, limit: Option<u64>) -> io::Result<(u64, bool)> {
    let mut skipped = 0;
    loop {
        if limit.is_some_and(|limit| skipped >= limit) {
            return Ok((skipped, false));
        }
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buffer.is_empty() {
            return Ok((skipped, false));
        }
        let window = limit.map_or(buffer.len(), |limit| {
            buffer
                .len()
                .min(usize::try_from(limit - skipped).unwrap_or(usize::MAX))
        });
        let (length, found) = match memchr::memchr(b'\n', &buffer[..window]) {
            Some(newline) => (newline + 1, true),
            None => (window, false),
        };
        reader.consume(length);
        skipped += length as u64;
        if found {
            return Ok((skipped, true));
        }
    }
}

/// Sends the records of the lines that start in `piece` in batches, then
/// its skipped lines (or why it could not be read). Fails only when the
/// caller is gone.
fn read_piece(
    piece: &Piece,
    sender: &Sender,
    spare: &Spare,
) -> Result<(), SendError<Result<Message, ReportError>>> {
    let read_error = |source| ReportError::Read {
        path: piece.path.to_path_buf(),
        source,
    };
    // A line starts where the byte before it is a newline: from the byte
    // before the piece, the first line of the piece starts after the next
    // newline, if that is before the piece's end (a piece inside a long
    // line has none: it is not read on to the line's end, which the piece
    // where the line starts reads).
    let before = piece.start.saturating_sub(1);
    let mut reader = BufReader::with_capacity(
        READ_BUFFER,
        FileAt {
            file: Arc::clone(&piece.file),
            position: before,
            stream: piece.start == 0 && piece.end.is_none(),
        },
    );
    let position = if piece.start == 0 {
        0
    } else {
        match skip_line(&mut reader, piece.end.map(|end| end - before)) {
            Ok((skipped, true)) => before + skipped,
            Ok((_, false)) if piece.end.is_some() => {
                return sender.send(Ok(Message::End(Skipped::default())));
            }
            // The end of a file that is the piece's end.
            Ok((skipped, false)) => before + skipped,
            Err(source) => return sender.send(Err(read_error(source))),
        }
    };
    let mut journal = JournalReader::lines_between(reader, position, piece.end);
    let mut skipped = Skipped::default();
    let empty = || {
        let reused = spare.lock().unwrap_or_else(PoisonError::into_inner).pop();
        reused.unwrap_or_else(|| Vec::with_capacity(BATCH))
    };
    let mut batch = empty();
    loop {
        match journal.next_record(&mut skipped) {
            Ok(Some(record)) => {
                batch.push(record);
                if batch.len() == BATCH {
                    let full = std::mem::replace(&mut batch, empty());
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
                Record::Started(started) => started.action_id.to_string(),
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
    fn a_file_read_in_pieces_gives_what_it_gives_read_whole() {
        // Why it matters: a piece's first and last lines are cut by its
        // bounds; each line must still be read once, whole, and a cut-off
        // last line still counted as truncated.
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for line in 0..40 {
            text += &STARTED.replace("ID", &"x".repeat(line % 7 * 13));
            text += ["\n", "\n\n", "\nnot json\n", "\n  \n"][line % 4];
        }
        text += &STARTED[..50];
        let files: Vec<PathBuf> = ["a", "b"]
            .iter()
            .map(|name| {
                let path = dir.path().join(name);
                std::fs::write(&path, &text).unwrap();
                path
            })
            .collect();
        let read = |piece_bytes| {
            let mut records = Vec::new();
            let skipped =
                read_in_pieces(&files, piece_bytes, |record| records.push(record)).unwrap();
            (ids(&records), skipped)
        };
        let whole = read(u64::MAX);
        assert_eq!(whole.0.len(), 80);
        assert_eq!((whole.1.corrupt, whole.1.truncated), (20, 2));
        for piece_bytes in (1..40).chain([97, 128, 1000, 4096]) {
            assert_eq!(read(piece_bytes), whole, "pieces of {piece_bytes} bytes");
        }
    }

    #[test]
    fn a_pipe_is_read_as_a_stream() {
        // Why it matters: analysts read compressed journals through a
        // pipe (`report <(zcat events.jsonl.gz)`), which has no positions
        // to read pieces at.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let writer = {
            let fifo = fifo.clone();
            thread::spawn(move || {
                let lines: String = (0..3000)
                    .map(|line| STARTED.replace("ID", &line.to_string()) + "\n")
                    .collect();
                std::fs::write(fifo, lines).unwrap();
            })
        };
        let mut records = Vec::new();
        read_in_order(&[fifo], |record| records.push(record)).unwrap();
        writer.join().unwrap();
        let expected: Vec<String> = (0..3000).map(|line| line.to_string()).collect();
        assert_eq!(ids(&records), expected);
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
