//! The one place that waits for child processes.
//!
//! Two requirements collide here. Each action's `POSIXResourceUsage` must be
//! *that child's own* rusage, which only `wait4` on its pid gives
//! (`RUSAGE_CHILDREN` would mix concurrent actions). And the runner is a
//! child subreaper (possibly PID 1 in a container), so orphans of actions are
//! re-parented to it and must be reaped, which means waiting for *any* child.
//! If two places waited, an any-child wait could steal an action's exit
//! status. So a single thread waits for everything and hands each registered
//! child's status and rusage to whoever spawned it.
//!
//! The race between fork and registration is closed by a lock: spawning
//! holds it from fork until the pid is registered, and the reaper only reaps
//! (after learning of a zombie with `WNOWAIT`, which does not reap) while
//! holding it. An exited child is therefore never reaped before its
//! registration, and a pid is never reused while its entry is live.

use std::collections::HashMap;
use std::io;
use std::process::Command;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use tokio::sync::oneshot;

/// How a reaped child ended, with its own resource usage.
#[derive(Debug, Clone, Copy)]
pub struct ChildExit {
    /// Raw wait status as returned by `wait4`.
    pub status: i32,
    /// The child's own rusage.
    pub rusage: libc::rusage,
}

impl ChildExit {
    /// `Some(code)` when the child exited normally.
    pub fn exit_code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    /// `Some(signal number)` when the child was killed by a signal.
    pub fn signal(&self) -> Option<i32> {
        libc::WIFSIGNALED(self.status).then(|| libc::WTERMSIG(self.status))
    }
}

/// A spawned child: its pid and a receiver for its exit.
#[derive(Debug)]
pub struct SpawnedChild {
    /// The child's pid, registered with the reaper before it could exit.
    pub pid: i32,
    /// Receives the child's exit once the reaper has waited for it.
    pub exit: oneshot::Receiver<ChildExit>,
}

/// The reaper held off: see [`Reaper::holding_children`].
pub struct Holding<'a> {
    reaper: &'a Reaper,
    registry: MutexGuard<'a, Registry>,
}

impl Holding<'_> {
    /// Registers the child `pid`, created under this hold, and lets the
    /// reaper go on: its exit reaches the returned receiver.
    pub fn register(mut self, pid: i32) -> SpawnedChild {
        let (sender, exit) = oneshot::channel();
        self.registry.waiting.insert(pid, sender);
        let reaper = self.reaper;
        drop(self);
        reaper.children_spawned.notify_all();
        SpawnedChild { pid, exit }
    }
}

struct Registry {
    waiting: HashMap<i32, oneshot::Sender<ChildExit>>,
}

/// The process-wide reaper. Obtain it with [`reaper`].
pub struct Reaper {
    registry: Mutex<Registry>,
    /// Signalled when a child is spawned, so an idle reaper wakes up.
    children_spawned: Condvar,
}

/// The process-wide reaper, started on first use.
pub fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            registry: Mutex::new(Registry {
                waiting: HashMap::new(),
            }),
            children_spawned: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("rbe-runner-reaper".into())
            .spawn(move || reaper.reap_forever())
            .expect("cannot start the reaper thread");
        reaper
    })
}

impl Reaper {
    /// Holds off reaping while children are created: a child created under
    /// the returned hold is not reaped (by anyone but its creator) until it
    /// is registered with [`Holding::register`] or the hold is dropped.
    /// Creation that fails after the child existed (its exec failed) must
    /// reap the child itself while holding.
    pub fn holding_children(&self) -> Holding<'_> {
        Holding {
            reaper: self,
            registry: self.lock(),
        }
    }

    /// Spawns `command` with std (the cleaner's commands) and registers
    /// the child. Blocking: call it from a blocking context.
    pub fn spawn(&self, command: &mut Command) -> io::Result<SpawnedChild> {
        let holding = self.holding_children();
        // std's `Child` is dropped at once: it must never be waited on, as
        // this reaper owns all waiting. Dropping it does not wait or kill.
        let pid = command.spawn()?.id() as i32;
        Ok(holding.register(pid))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Each operation on the map is a single insert or remove.
        crate::sync::lock_unpoisoned(&self.registry)
    }

    fn reap_forever(&self) {
        loop {
            // Learn of an exited child without reaping it.
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.reap(pid.as_raw());
                    }
                }
                Err(Errno::ECHILD) => {
                    // No children at all: sleep until one is spawned. The
                    // timeout only guards against a missed notification.
                    let registry = self.lock();
                    if !registry.waiting.is_empty() {
                        // Spawned between waitid and taking the lock.
                        continue;
                    }
                    let _ = self
                        .children_spawned
                        .wait_timeout(registry, Duration::from_millis(500));
                }
                Err(Errno::EINTR) => {}
                Err(errno) => {
                    tracing::error!(%errno, "waitid failed in the reaper; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn reap(&self, pid: i32) {
        let mut registry = self.lock();
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero bytes are a valid `rusage` (plain integers).
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `rusage` are valid, writable locals that
        // outlive the call; wait4 writes nothing else.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
        if reaped != pid {
            // Already reaped by its creator: a child whose exec failed is
            // reaped under the hold it was created in (std's spawn does the
            // same inside `Command::spawn`).
            return;
        }
        match registry.waiting.remove(&pid) {
            Some(sender) => {
                let _ = sender.send(ChildExit { status, rusage });
            }
            None => {
                let exit = ChildExit { status, rusage };
                tracing::debug!(pid, code = ?exit.exit_code(), signal = ?exit.signal(), "reaped an orphan");
            }
        }
    }
}
