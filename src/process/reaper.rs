//! The one place that waits for child processes.
//!
//! Two requirements collide here. Each action's `POSIXResourceUsage` must be
//! *that child's own* rusage, which only a wait for its pid gives
//! (`RUSAGE_CHILDREN` would mix concurrent actions). And the runner is a
//! child subreaper (possibly PID 1 in a container), so orphans of actions are
//! re-parented to it and must be reaped, which means waiting for *any* child.
//! An any-child wait could take an action's exit status, which would then be
//! lost to the action.
//!
//! # Why no status is ever stolen
//!
//! Every child is either *registered* (its pid is known, and its exit goes
//! to whoever created it) or *unknown*. A child is unknown only between
//! its creation and its registration, or when it is an orphan. Two rules
//! keep the two apart:
//!
//! 1. Whoever creates a child takes a reservation first
//!    ([`Reaper::expecting`]) and holds it until the pid is registered (or
//!    it knows that no child was created). A reservation is not a lock: any
//!    number are held at once, and creating a child never waits for the
//!    reaper, nor the reaper for a creation that started after it looked.
//! 2. An unknown zombie is reaped as an orphan only once every reservation
//!    taken before it was seen is over. Every child that could be that
//!    zombie was created under one of those (a child created later cannot
//!    have its pid, which the zombie still holds), so by then the zombie is
//!    registered, and its exit goes to its creator, or it is an orphan.
//!
//! Reaping happens under the registry lock, held only for a map update and
//! a non-blocking wait. No one but the reaper reaps (a creator whose child
//! failed before exec registers it like any other), so a zombie the reaper
//! saw keeps its pid while the reaper waits for older reservations.

use std::collections::{BTreeSet, HashMap};
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
    /// Raw wait status, as `wait4` returns it.
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
    /// The child's pid, registered with the reaper.
    pub pid: i32,
    /// Receives the child's exit once it has been reaped.
    pub exit: oneshot::Receiver<ChildExit>,
}

/// A reservation for a child about to be created: see
/// [`Reaper::expecting`]. Over when the child is registered with
/// [`Expecting::register`], or when dropped (nothing was created, or what
/// was is no longer ours to wait for).
pub struct Expecting<'a> {
    reaper: &'a Reaper,
    ticket: u64,
}

impl Expecting<'_> {
    /// Registers the child `pid`, created under this reservation: its exit
    /// reaches the returned receiver.
    pub fn register(self, pid: i32) -> SpawnedChild {
        let (sender, exit) = oneshot::channel();
        {
            let mut registry = self.reaper.lock();
            registry.waiting.insert(pid, sender);
            registry.end(self.ticket);
        }
        self.reaper.changed.notify_all();
        // Over already; dropping would only end it again.
        std::mem::forget(self);
        SpawnedChild { pid, exit }
    }
}

impl Drop for Expecting<'_> {
    fn drop(&mut self) {
        self.reaper.lock().end(self.ticket);
        self.reaper.changed.notify_all();
    }
}

struct Registry {
    /// Registered children, each with whoever waits for its exit.
    waiting: HashMap<i32, oneshot::Sender<ChildExit>>,
    /// The next reservation's number: reservations are numbered in the
    /// order they are taken.
    next_ticket: u64,
    /// Reservations not yet over.
    outstanding: BTreeSet<u64>,
    /// Counts reservations taken and ended, so that the reaper can tell
    /// whether any was since it last looked.
    changes: u64,
}

impl Registry {
    fn take(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.outstanding.insert(ticket);
        self.changes += 1;
        ticket
    }

    fn end(&mut self, ticket: u64) {
        self.outstanding.remove(&ticket);
        self.changes += 1;
    }

    /// Whether every reservation taken before `horizon` is over.
    fn settled_before(&self, horizon: u64) -> bool {
        self.outstanding
            .first()
            .is_none_or(|&oldest| oldest >= horizon)
    }
}

/// The process-wide reaper. Obtain it with [`reaper`].
pub struct Reaper {
    registry: Mutex<Registry>,
    /// Signalled whenever a reservation is taken or ends, so that an idle
    /// reaper, or one waiting for older reservations, looks again.
    changed: Condvar,
}

/// The process-wide reaper, started on first use.
pub fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<&'static Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            registry: Mutex::new(Registry {
                waiting: HashMap::new(),
                next_ticket: 0,
                outstanding: BTreeSet::new(),
                changes: 0,
            }),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("rbe-runner-reaper".into())
            .spawn(move || reaper.reap_forever())
            .expect("cannot start the reaper thread");
        reaper
    })
}

impl Reaper {
    /// Reserves the registration of a child about to be created: until the
    /// reservation is over, no zombie that could be this child is reaped
    /// as an orphan. Take it before creating the child; never blocks on
    /// the reaper beyond a map update.
    pub fn expecting(&self) -> Expecting<'_> {
        let ticket = self.lock().take();
        // An idle reaper (no child at all) looks again.
        self.changed.notify_all();
        Expecting {
            reaper: self,
            ticket,
        }
    }

    /// Spawns `command` with std (the cleaner's commands) and registers
    /// the child. Blocking: call it from a blocking context.
    pub fn spawn(&self, command: &mut Command) -> io::Result<SpawnedChild> {
        let expecting = self.expecting();
        // std's `Child` is dropped at once: it must never be waited on, as
        // this reaper owns all waiting. Dropping it does not wait or kill.
        let pid = command.spawn()?.id() as i32;
        Ok(expecting.register(pid))
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Each operation on the registry is a single insert or remove.
        crate::sync::lock_unpoisoned(&self.registry)
    }

    fn reap_forever(&self) {
        loop {
            let seen = self.lock().changes;
            // Learn of an exited child without reaping it; `__WALL`: action
            // children have no exit signal.
            match waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::__WALL,
            ) {
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.settle(pid.as_raw());
                    }
                }
                Err(Errno::ECHILD) => {
                    // No child at all: sleep until one is about to be
                    // created or was. The timeout only guards against a
                    // missed notification.
                    let registry = self.lock();
                    if registry.changes != seen {
                        continue;
                    }
                    let _ = self
                        .changed
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

    /// Reaps the zombie `pid`: its creator's once registered; an orphan
    /// once no reservation taken before now could be it.
    fn settle(&self, pid: i32) {
        let mut registry = self.lock();
        if !registry.waiting.contains_key(&pid) {
            let horizon = registry.next_ticket;
            while !registry.settled_before(horizon) {
                registry = self
                    .changed
                    .wait(registry)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero bytes are a valid `rusage` (plain integers).
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `rusage` are valid, writable locals that
        // outlive the call; wait4 writes nothing else.
        let reaped =
            unsafe { libc::wait4(pid, &mut status, libc::WNOHANG | libc::__WALL, &mut rusage) };
        if reaped != pid {
            // Only this thread reaps, so the zombie it saw is still there;
            // never guess.
            tracing::error!(pid, "a zombie the reaper saw could not be reaped");
            return;
        }
        let exit = ChildExit { status, rusage };
        match registry.waiting.remove(&pid) {
            Some(sender) => {
                let _ = sender.send(exit);
            }
            None => {
                tracing::debug!(pid, code = ?exit.exit_code(), signal = ?exit.signal(), "reaped an orphan");
            }
        }
    }
}
