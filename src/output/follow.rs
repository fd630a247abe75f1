//! One follower: an action's output file read from an offset, chunk by
//! chunk, then, while the action runs, what it writes next.
//!
//! The promises, and how they are kept:
//!
//! - **Exact bytes, in order, no gaps or repeats.** The file is read with
//!   `pread` at the follower's own offset, which advances by exactly what
//!   was sent; nothing is decoded or split on lines, so binary output and
//!   NUL bytes arrive as written.
//! - **No polling.** Having read everything there is, a follower waits
//!   for the kernel to report a write ([`super::changes`]) or for the
//!   action's end, whichever comes first. Changes are marked seen before
//!   each read, so a write after the read wakes it and one before it does
//!   not get lost.
//! - **The end is complete.** Whether the action has ended is looked at
//!   before reading: once it has, a read that finds nothing more means
//!   everything was sent, and `end_of_output` follows.
//! - **Bounded memory.** One chunk of at most [`CHUNK_BYTES`] at a time:
//!   the next is read only when gRPC asks for it, so a client that stops
//!   reading stalls only its own stream and holds one chunk.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use tokio::sync::watch;

use super::changes::FileChanges;
use super::FollowError;
use crate::proto::rbe_runner::output::v1::OutputChunk;
use crate::streams::StreamSlot;

/// The most bytes one `OutputChunk` carries.
pub const CHUNK_BYTES: usize = 64 << 10;

/// One follower of one output file.
pub struct Follower {
    file: Arc<File>,
    /// What the file is, for messages.
    what: String,
    /// Where the next chunk starts.
    offset: u64,
    /// Keep waiting for more while the action runs.
    follow: bool,
    /// Whether the action has ended.
    ended: watch::Receiver<bool>,
    /// The kernel's word that the file changed; `None` without `follow`.
    changes: Option<FileChanges>,
    /// `end_of_output` (or an error) was sent.
    done: bool,
    /// Its place under the cap on streams, given back when it is dropped.
    _slot: StreamSlot,
}

impl Follower {
    /// A follower of `file` (described by `what`) from `offset`.
    pub fn new(
        file: File,
        what: String,
        offset: u64,
        ended: watch::Receiver<bool>,
        changes: Option<FileChanges>,
        slot: StreamSlot,
    ) -> Self {
        Follower {
            file: Arc::new(file),
            what,
            offset,
            follow: changes.is_some(),
            ended,
            changes,
            done: false,
            _slot: slot,
        }
    }

    /// The next chunk; `None` after the one with `end_of_output` (or
    /// after an error).
    pub async fn next_chunk(&mut self) -> Option<Result<OutputChunk, FollowError>> {
        loop {
            if self.done {
                return None;
            }
            let ended = *self.ended.borrow_and_update();
            if let Some(changes) = &mut self.changes {
                changes.mark_seen();
            }
            let data = match self.read().await {
                Ok(data) => data,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            };
            if !data.is_empty() {
                let chunk = OutputChunk {
                    offset: self.offset,
                    end_of_output: false,
                    data,
                };
                self.offset += chunk.data.len() as u64;
                return Some(Ok(chunk));
            }
            let Some(changes) = self.changes.as_mut().filter(|_| self.follow && !ended) else {
                self.done = true;
                return Some(Ok(OutputChunk {
                    offset: self.offset,
                    data: Vec::new(),
                    end_of_output: true,
                }));
            };
            tokio::select! {
                () = changes.changed() => {}
                changed = self.ended.changed() => {
                    // The registry forgets only actions that ended, so a
                    // closed channel is an end too.
                    if changed.is_err() {
                        self.follow = false;
                    }
                }
            }
        }
    }

    /// Up to [`CHUNK_BYTES`] from the offset; empty at the end of the
    /// file. Off the runtime's threads: the build directory may be on a
    /// slow disk.
    async fn read(&self) -> Result<Vec<u8>, FollowError> {
        let file = self.file.clone();
        let offset = self.offset;
        let read = tokio::task::spawn_blocking(move || read_chunk(&file, offset))
            .await
            .unwrap_or_else(|joined| Err(std::io::Error::other(joined)));
        read.map_err(|source| FollowError::Read {
            what: self.what.clone(),
            offset,
            source,
        })
    }
}

/// Reads what `file` holds from `offset`, [`CHUNK_BYTES`] at most;
/// allocates only what there is to read. Blocking.
fn read_chunk(file: &File, offset: u64) -> std::io::Result<Vec<u8>> {
    let available = file.metadata()?.size().saturating_sub(offset);
    let wanted = usize::try_from(available).map_or(CHUNK_BYTES, |bytes| bytes.min(CHUNK_BYTES));
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let mut data = vec![0; wanted];
    let read = loop {
        match file.read_at(&mut data, offset) {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            result => break result?,
        }
    };
    data.truncate(read);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::streams::StreamSlots;

    fn follower(file: &std::path::Path, offset: u64, ended: watch::Receiver<bool>) -> Follower {
        Follower::new(
            File::open(file).unwrap(),
            "test file".into(),
            offset,
            ended,
            None,
            StreamSlots::new(1).take().unwrap(),
        )
    }

    #[tokio::test]
    async fn without_follow_the_file_comes_in_chunks_then_the_end() {
        // Why it matters: chunks are bounded (64 KiB) and their offsets
        // add up to the file, with nothing left out or repeated.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let content: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let (_sender, ended) = watch::channel(false);
        let mut follower = follower(&path, 0, ended);
        let mut received = Vec::new();
        let mut offsets = Vec::new();
        loop {
            let chunk = follower.next_chunk().await.unwrap().unwrap();
            offsets.push(chunk.offset);
            assert!(chunk.data.len() <= CHUNK_BYTES);
            received.extend_from_slice(&chunk.data);
            if chunk.end_of_output {
                break;
            }
        }
        assert_eq!(received, content);
        assert_eq!(offsets, [0, 65_536, 131_072, 150_000]);
        assert!(follower.next_chunk().await.is_none());
    }

    #[tokio::test]
    async fn an_offset_past_the_end_ends_at_once_without_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"abc")
            .unwrap();
        let (_sender, ended) = watch::channel(false);
        let mut follower = follower(&path, 10, ended);
        let chunk = follower.next_chunk().await.unwrap().unwrap();
        assert_eq!(
            (chunk.offset, chunk.data.len(), chunk.end_of_output),
            (10, 0, true)
        );
    }
}
