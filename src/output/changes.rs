//! Learning that an output file grew, from the kernel, without polling:
//! one inotify instance for the whole runner, one watch per followed file.
//!
//! A follower that has read everything there is waits on a
//! [`FileChanges`] until the kernel reports `IN_MODIFY` (a write) or
//! `IN_CLOSE_WRITE` on the file; a file nobody writes costs no CPU at all.
//! One instance serves every follower because inotify instances are
//! scarce (`fs.inotify.max_user_instances`, 128 by default, shared by
//! every process of the user) while watches are not
//! (`max_user_watches`); followers of the same file share its watch,
//! which is removed when the last of them is gone.
//!
//! The watch is placed through `/proc/self/fd/N` of the descriptor the
//! follower already opened, so it is on exactly the file being read, not
//! on whatever a path names by then.
//!
//! Lock order: the watcher's lock only; the dispatch task takes it once
//! per batch of kernel events.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::watch;

use crate::sync::lock_unpoisoned;

/// What a followed file is watched for: writes, and the last writer
/// closing it.
const WATCHED: WatchMask = WatchMask::MODIFY.union(WatchMask::CLOSE_WRITE);

/// Bytes read from the inotify descriptor at once: room for a few hundred
/// events (each 16 bytes, no name for a watched file).
const EVENT_BUFFER_BYTES: usize = 4096;

/// The runner's one inotify instance and the files watched with it.
pub struct ChangeWatcher {
    state: Arc<Mutex<WatcherState>>,
    /// `/proc/self/fd` (under the proc root given), where a descriptor's
    /// file is named for `inotify_add_watch`.
    proc_self_fd: PathBuf,
    dispatch: tokio::task::JoinHandle<()>,
}

struct WatcherState {
    watches: Watches,
    /// By watch descriptor: the change counter of the file and how many
    /// followers watch it.
    files: HashMap<i32, WatchedFile>,
    /// The dispatch task ended (a read error): no more changes are told.
    broken: Option<String>,
}

struct WatchedFile {
    descriptor: WatchDescriptor,
    changes: watch::Sender<u64>,
    followers: usize,
}

impl ChangeWatcher {
    /// Creates the inotify instance and the task that hands its events to
    /// followers; `proc_root` is normally `/proc`. Needs the tokio runtime.
    pub fn start(proc_root: &std::path::Path) -> io::Result<Arc<Self>> {
        let events = Inotify::init()?.into_event_stream([0u8; EVENT_BUFFER_BYTES])?;
        let state = Arc::new(Mutex::new(WatcherState {
            watches: events.watches(),
            files: HashMap::new(),
            broken: None,
        }));
        let dispatch = tokio::spawn(dispatch(events, Arc::downgrade(&state)));
        Ok(Arc::new(ChangeWatcher {
            state,
            proc_self_fd: proc_root.join("self/fd"),
            dispatch,
        }))
    }

    /// Watches `file` (open, of the runner) for changes until the returned
    /// value is dropped.
    pub fn watch(self: &Arc<Self>, file: &File) -> io::Result<FileChanges> {
        let path = self.proc_self_fd.join(file.as_raw_fd().to_string());
        let mut state = lock_unpoisoned(&self.state);
        if let Some(broken) = &state.broken {
            return Err(io::Error::other(broken.clone()));
        }
        let descriptor = state.watches.add(&path, WATCHED)?;
        let id = descriptor.get_watch_descriptor_id();
        let watched = state.files.entry(id).or_insert_with(|| WatchedFile {
            descriptor,
            changes: watch::Sender::new(0),
            followers: 0,
        });
        watched.followers += 1;
        Ok(FileChanges {
            changes: watched.changes.subscribe(),
            watcher: self.clone(),
            id,
        })
    }

    /// Files watched now (for tests).
    pub fn watched_files(&self) -> usize {
        lock_unpoisoned(&self.state).files.len()
    }

    fn unwatch(&self, id: i32) {
        let mut state = lock_unpoisoned(&self.state);
        let Some(watched) = state.files.get_mut(&id) else {
            return;
        };
        watched.followers -= 1;
        if watched.followers == 0 {
            let watched = state.files.remove(&id).expect("present above");
            // Fails only when the kernel removed the watch already (the
            // file is gone), which is what was wanted.
            let _ = state.watches.remove(watched.descriptor);
        }
    }
}

impl Drop for ChangeWatcher {
    fn drop(&mut self) {
        self.dispatch.abort();
    }
}

/// Hands each kernel event to the followers of its file. Ends when the
/// watcher is gone, or when reading events fails, after which followers
/// learn of new output only when the action ends.
async fn dispatch(
    mut events: inotify::EventStream<[u8; EVENT_BUFFER_BYTES]>,
    state: Weak<Mutex<WatcherState>>,
) {
    let failure = loop {
        let Some(event) = events.next().await else {
            break "the inotify descriptor reached its end".to_string();
        };
        let Some(state) = state.upgrade() else {
            return;
        };
        let state = lock_unpoisoned(&state);
        match event {
            // Events were lost: any file may have changed.
            Ok(event) if event.mask.contains(EventMask::Q_OVERFLOW) => {
                for watched in state.files.values() {
                    watched.changes.send_modify(|count| *count += 1);
                }
            }
            Ok(event) => {
                if let Some(watched) = state.files.get(&event.wd.get_watch_descriptor_id()) {
                    watched.changes.send_modify(|count| *count += 1);
                }
            }
            Err(error) => break format!("cannot read inotify events: {error}"),
        }
    };
    tracing::error!(
        error = failure,
        "output followers no longer learn of new output before their action ends"
    );
    if let Some(state) = state.upgrade() {
        let mut state = lock_unpoisoned(&state);
        state.broken = Some(failure);
        // Dropping the senders tells every follower to stop waiting on them.
        state.files.clear();
    }
}

/// One follower's view of a watched file: resolves when it changed.
pub struct FileChanges {
    changes: watch::Receiver<u64>,
    watcher: Arc<ChangeWatcher>,
    id: i32,
}

impl FileChanges {
    /// Forgets the changes seen so far: call before reading the file, so
    /// that a write after the read is waited for and one before is not.
    pub fn mark_seen(&mut self) {
        self.changes.borrow_and_update();
    }

    /// Waits until the file changed after the last [`Self::mark_seen`].
    /// Never resolves once changes can no longer be told (the caller also
    /// waits for the action's end).
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for FileChanges {
    fn drop(&mut self) {
        self.watcher.unwatch(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_write_wakes_every_follower_of_the_file_and_the_last_one_removes_the_watch() {
        // Why it matters: waiting is on the kernel's word, shared by the
        // followers of one file; a watch left behind would be a leak per
        // followed file for the runner's lifetime.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut writer = File::create(&path).unwrap();
        let watcher = ChangeWatcher::start(std::path::Path::new("/proc")).unwrap();
        let mut first = watcher.watch(&File::open(&path).unwrap()).unwrap();
        let mut second = watcher.watch(&File::open(&path).unwrap()).unwrap();
        assert_eq!(watcher.watched_files(), 1);
        first.mark_seen();
        second.mark_seen();
        writer.write_all(b"more").unwrap();
        for changes in [&mut first, &mut second] {
            tokio::time::timeout(Duration::from_secs(30), changes.changed())
                .await
                .expect("the write is told");
        }
        drop(first);
        assert_eq!(watcher.watched_files(), 1);
        drop(second);
        assert_eq!(watcher.watched_files(), 0);
    }
}
