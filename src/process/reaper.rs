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
//! A creator learns its child's pid from the child's status channel,
//! which normally wakes it only at the exec ([`super::status`]), so its
//! reservation lasts until then. An orphan that must wait for
//! reservations says so ([`Reaper::hurried`]), and creators then read
//! their child's pid as soon as it is said: no orphan waits for another
//! child's exec, however slow.
//!
//! Reaping happens under the registry lock, held only for a map update and
//! a non-blocking wait, and only by the waiters below (a creator whose
//! child failed before exec registers it like any other). So the zombie
//! the reaper saw is still the same process after it waited for older
//! reservations: with one waiter, nothing else reaped it; with pidfds, the
//! reaper holds it by a pidfd opened under the lock when it saw it.
//!
//! # Two ways of waiting ([`Waiting`]), chosen once at startup
//!
//! The runner's own children (actions, the spawn server, the children it
//! creates for the runner) are created with no exit signal, but `execve`
//! resets a process's exit signal to `SIGCHLD` (the kernel's `de_thread`),
//! so once one has exec'd it sends `SIGCHLD` and an any-child wait without
//! `__WALL` sees it too, like the orphans re-parented to the runner and
//! the children started with std (the cleaner's commands). That costs a
//! signal and a few waits per action, never a status: such a zombie is
//! registered, and the orphan task hands it to its creator's waiter.
//! - [`Waiting::Pidfd`]: each registered child is waited for on its pidfd
//!   in the event loop, where its exit status and rusage are read with the
//!   raw `waitid` system call (glibc's wrapper has no rusage argument).
//!   Orphans are reaped in the event loop too, on `SIGCHLD`, by an
//!   any-child wait without `__WALL`, which never sees a clone child.
//! - [`Waiting::Thread`], where the kernel or a seccomp profile refuses
//!   pidfds (before Linux 5.4): one thread waits for every child
//!   (`__WALL`) and hands each registered child's exit to its creator.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};

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
    /// The child's own mount namespace, held open while this value lives
    /// (see `spawn::holding_mount_namespace`).
    pub mount_namespace: Option<OwnedFd>,
}

/// How children's exits are learned; see the module's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Each child on its pidfd, orphans on `SIGCHLD`, all in the event loop.
    Pidfd,
    /// One thread waits for every child.
    Thread,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Waiting::Pidfd => "pidfd",
            Waiting::Thread => "thread",
        })
    }
}

/// A reservation for a child about to be created: see
/// [`Reaper::expecting`]. Over when the child is registered with
/// [`Expecting::register`], or when dropped (nothing was created, or what
/// was is no longer ours to wait for).
pub struct Expecting {
    reaper: &'static Reaper,
    ticket: u64,
}

impl Expecting {
    /// Registers the child `pid`, created under this reservation: its exit
    /// reaches the returned receiver. With pidfds, the pidfd is opened
    /// while the reservation still holds the pid.
    pub fn register(self, pid: i32) -> SpawnedChild {
        let reaper = self.reaper;
        let pidfd = match &reaper.mode {
            Mode::Pidfd(_) => Some(pidfd_open(pid)),
            Mode::Thread => None,
        };
        let (sender, exit) = oneshot::channel();
        {
            let mut registry = reaper.lock();
            registry.waiting.insert(pid, sender);
            registry.end(self.ticket);
        }
        reaper.changed();
        // Over already; dropping would only end it again.
        std::mem::forget(self);
        if let (Mode::Pidfd(runtime), Some(pidfd)) = (&reaper.mode, pidfd) {
            runtime.spawn(reaper.wait_on_pidfd(pid, pidfd));
        }
        SpawnedChild {
            pid,
            exit,
            mount_namespace: None,
        }
    }
}

impl Drop for Expecting {
    fn drop(&mut self) {
        self.reaper.lock().end(self.ticket);
        self.reaper.changed();
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

    /// Reaps `child` if it has exited, handing its exit to its creator, or
    /// saying it was an orphan. Whether it was reaped (or is gone).
    fn reap(&mut self, pid: i32, child: Which) -> bool {
        match wait_now(child) {
            Ok(Some(exit)) => {
                match self.waiting.remove(&pid) {
                    Some(sender) => {
                        let _ = sender.send(exit);
                    }
                    None => {
                        tracing::debug!(pid, code = ?exit.exit_code(), signal = ?exit.signal(), "reaped an orphan");
                    }
                }
                true
            }
            Ok(None) => false,
            // ECHILD: reaped by its other waiter (see `settle`).
            Err(_) => true,
        }
    }
}

/// What the reaper waits with.
enum Mode {
    /// Pidfd tasks and the orphan task run on this runtime.
    Pidfd(Handle),
    Thread,
}

/// The process-wide reaper. Obtain it with [`reaper`].
pub struct Reaper {
    registry: Mutex<Registry>,
    mode: Mode,
    /// Told whenever a reservation is taken or ends, so that an idle
    /// reaper thread, or a reaper waiting for older reservations, looks
    /// again.
    thread_changed: Condvar,
    task_changed: Notify,
    /// How many orphans wait for reservations to end: while there are
    /// any, creators read their child's pid as soon as it is said.
    hurrying: AtomicUsize,
    /// Told when an orphan starts waiting for reservations to end.
    hurry: Notify,
}

static REAPER: OnceLock<&'static Reaper> = OnceLock::new();

/// Starts the process-wide reaper waiting with `waiting` (tasks on
/// `runtime`). Call it before anything uses [`reaper`]; once started, the
/// reaper keeps its way of waiting, which is returned.
pub fn start(waiting: Waiting, runtime: &Handle) -> Waiting {
    let reaper = REAPER.get_or_init(|| {
        let mode = match waiting {
            Waiting::Pidfd => Mode::Pidfd(runtime.clone()),
            Waiting::Thread => Mode::Thread,
        };
        Reaper::started(mode)
    });
    match reaper.mode {
        Mode::Pidfd(_) => Waiting::Pidfd,
        Mode::Thread => Waiting::Thread,
    }
}

/// The process-wide reaper; one thread, unless [`start`] chose otherwise.
pub fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| Reaper::started(Mode::Thread))
}

impl Reaper {
    fn started(mode: Mode) -> &'static Reaper {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            registry: Mutex::new(Registry {
                waiting: HashMap::new(),
                next_ticket: 0,
                outstanding: BTreeSet::new(),
                changes: 0,
            }),
            mode,
            thread_changed: Condvar::new(),
            task_changed: Notify::new(),
            hurrying: AtomicUsize::new(0),
            hurry: Notify::new(),
        }));
        match &reaper.mode {
            Mode::Pidfd(runtime) => {
                runtime.spawn(reaper.reap_orphans());
            }
            Mode::Thread => {
                std::thread::Builder::new()
                    .name("rbe-runner-reaper".into())
                    .spawn(move || reaper.reap_forever())
                    .expect("cannot start the reaper thread");
            }
        }
        reaper
    }

    /// Reserves the registration of a child about to be created: until the
    /// reservation is over, no zombie that could be this child is reaped
    /// as an orphan. Take it before creating the child; never blocks on
    /// the reaper beyond a map update.
    pub fn expecting(&'static self) -> Expecting {
        let ticket = self.lock().take();
        // An idle reaper thread (no child at all) looks again.
        self.changed();
        Expecting {
            reaper: self,
            ticket,
        }
    }

    /// Spawns `command` with std (the cleaner's commands) and registers
    /// the child. Blocking: call it from a blocking context.
    pub fn spawn(&'static self, command: &mut Command) -> io::Result<SpawnedChild> {
        let expecting = self.expecting();
        // std's `Child` is dropped at once: it must never be waited on, as
        // this reaper owns all waiting. Dropping it does not wait or kill.
        let pid = command.spawn()?.id() as i32;
        Ok(expecting.register(pid))
    }

    /// Resolves when an orphan starts waiting for reservations to end.
    /// Enable it, then ask [`Self::is_hurrying`]: a creator holding a
    /// reservation then reads its child's pid without waiting for the exec
    /// (see [`super::status`]), so that no orphan waits for an exec.
    pub(crate) fn hurried(&self) -> tokio::sync::futures::Notified<'_> {
        self.hurry.notified()
    }

    /// Whether an orphan waits for reservations to end.
    pub(crate) fn is_hurrying(&self) -> bool {
        self.hurrying.load(Ordering::SeqCst) > 0
    }

    /// Counts an orphan waiting for reservations until dropped.
    fn hurrying(&self) -> Hurrying<'_> {
        self.hurrying.fetch_add(1, Ordering::SeqCst);
        self.hurry.notify_waiters();
        Hurrying(self)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Each operation on the registry is a single insert or remove.
        crate::sync::lock_unpoisoned(&self.registry)
    }

    fn changed(&self) {
        match self.mode {
            Mode::Pidfd(_) => self.task_changed.notify_waiters(),
            Mode::Thread => self.thread_changed.notify_all(),
        }
    }

    // ---- one thread ----

    fn reap_forever(&self) {
        loop {
            let seen = self.lock().changes;
            // Learn of an exited child without reaping it.
            match next_zombie(libc::__WALL, false) {
                Ok(Some(pid)) => self.settle_here(pid),
                Ok(None) => {}
                Err(error) if error.raw_os_error() == Some(libc::ECHILD) => {
                    // No child at all: sleep until one is about to be
                    // created or was. The timeout only guards against a
                    // missed notification.
                    let registry = self.lock();
                    if registry.changes != seen {
                        continue;
                    }
                    let _ = self
                        .thread_changed
                        .wait_timeout(registry, Duration::from_millis(500));
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::error!(%error, "waitid failed in the reaper; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Reaps the zombie `pid`: its creator's once registered; an orphan
    /// once no reservation taken before now could be it. Only this thread
    /// reaps, so the zombie stays the same process while it waits.
    fn settle_here(&self, pid: i32) {
        let mut registry = self.lock();
        if !registry.waiting.contains_key(&pid) {
            let horizon = registry.next_ticket;
            let _hurrying = (!registry.settled_before(horizon)).then(|| self.hurrying());
            while !registry.settled_before(horizon) {
                registry = self
                    .thread_changed
                    .wait(registry)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        registry.reap(pid, Which::Pid(pid));
    }

    // ---- pidfds, in the event loop ----

    /// Waits for the registered child `pid` on its pidfd and reaps it.
    /// Where the pidfd could not be had (out of descriptors), waits on a
    /// blocking thread instead: slower, never lost.
    async fn wait_on_pidfd(&'static self, pid: i32, pidfd: io::Result<OwnedFd>) {
        let watched = pidfd.and_then(|pidfd| {
            // SAFETY: the AsyncFd owns the pidfd, which stays open and the
            // same until it is dropped.
            unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
                .map_err(io::Error::from)
        });
        let pidfd = match watched {
            Ok(pidfd) => pidfd,
            Err(error) => {
                tracing::warn!(pid, %error, "cannot watch a child's pidfd; waiting for it on a thread");
                let _ = tokio::task::spawn_blocking(move || self.wait_on_thread(pid)).await;
                return;
            }
        };
        loop {
            let Ok(mut ready) = pidfd.readable().await else {
                let _ = tokio::task::spawn_blocking(move || self.wait_on_thread(pid)).await;
                return;
            };
            let which = Which::Pidfd(pidfd.get_ref().as_raw_fd());
            if self.reap_registered(pid, which) {
                return;
            }
            ready.clear_ready();
        }
    }

    /// Blocks until the registered child `pid` has exited, and reaps it.
    fn wait_on_thread(&self, pid: i32) {
        loop {
            let mut info = SigInfo::default();
            // WNOWAIT: learn of its exit; reap it under the lock below.
            match waitid(Which::Pid(pid), libc::WNOWAIT, &mut info, None) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        self.reap_registered(pid, Which::Pid(pid));
    }

    /// Reaps the registered child `pid` if it has exited; whether it is
    /// done with (reaped now, or by the orphan task before).
    fn reap_registered(&self, pid: i32, which: Which) -> bool {
        let mut registry = self.lock();
        if !registry.waiting.contains_key(&pid) {
            return true;
        }
        registry.reap(pid, which)
    }

    /// Reaps orphans (and std's children) whenever `SIGCHLD` says one
    /// exited. An action that has exec'd sends it too and is seen by this
    /// wait; being registered, it is reaped for its creator, not as an
    /// orphan ([`Self::settle_in_task`]).
    ///
    /// The signal is read from a signalfd ([`ChildSignals`]), never
    /// delivered to a handler: no thread is interrupted, and the exit that
    /// makes an action's pidfd readable makes the signalfd readable in the
    /// same wake-up of the event loop. Each sweep waits until the tasks
    /// woken with it have run, so that the pidfd tasks reap their actions
    /// first and the sweep's one `waitid` finds only orphans.
    async fn reap_orphans(&'static self) {
        let exits = match ChildSignals::open() {
            Ok(exits) => exits,
            Err(error) => {
                tracing::error!(%error, "cannot learn of orphans' exits (SIGCHLD); they are reaped by a thread instead");
                let _ = tokio::task::spawn_blocking(move || self.reap_forever()).await;
                return;
            }
        };
        loop {
            tokio::task::yield_now().await;
            loop {
                match next_zombie(0, true) {
                    Ok(Some(pid)) => self.settle_in_task(pid).await,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    // None exited (or no such child at all).
                    _ => break,
                }
            }
            if let Err(error) = exits.next().await {
                tracing::error!(%error, "cannot read SIGCHLD from its signalfd; orphans are reaped by a thread instead");
                let _ = tokio::task::spawn_blocking(move || self.reap_forever()).await;
                return;
            }
        }
    }

    /// As [`Self::settle_here`], in the event loop: the zombie is held by
    /// a pidfd opened under the lock, since a pidfd task may reap it while
    /// this waits (a registered child whose exit signal became `SIGCHLD`:
    /// a thread other than its leader called exec).
    async fn settle_in_task(&self, pid: i32) {
        let (horizon, pinned) = {
            let mut registry = self.lock();
            if registry.waiting.contains_key(&pid) {
                registry.reap(pid, Which::Pid(pid));
                return;
            }
            (registry.next_ticket, pidfd_open(pid))
        };
        let mut hurrying = None;
        loop {
            let changed = self.task_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.lock().settled_before(horizon) {
                break;
            }
            hurrying.get_or_insert_with(|| self.hurrying());
            changed.await;
        }
        drop(hurrying);
        let mut registry = self.lock();
        match &pinned {
            Ok(pidfd) => registry.reap(pid, Which::Pidfd(pidfd.as_raw_fd())),
            // Out of descriptors: only a child registered and reaped
            // meanwhile could have freed the pid; never take a registered
            // pid for an orphan.
            Err(_) => registry.reap(pid, Which::Pid(pid)),
        };
    }
}

/// `SIGCHLD`, read from a signalfd in the event loop. It must be blocked
/// in every thread of the process ([`crate::runtime::build`] does so): a
/// thread that left it unblocked would take it, and with no handler the
/// kernel would discard it there.
struct ChildSignals {
    fd: AsyncFd<OwnedFd>,
}

impl ChildSignals {
    /// The signalfd, once `SIGCHLD` is known to be blocked here.
    fn open() -> io::Result<ChildSignals> {
        let mut mask = nix::sys::signal::SigSet::empty();
        mask.add(nix::sys::signal::Signal::SIGCHLD);
        if !nix::sys::signal::SigSet::thread_get_mask()?.contains(nix::sys::signal::Signal::SIGCHLD)
        {
            return Err(io::Error::other(
                "SIGCHLD is not blocked in the event loop's thread, so a signalfd would miss it",
            ));
        }
        // SAFETY: `mask` is a valid sigset_t that outlives the call; -1
        // asks for a new descriptor, whose result is checked.
        let fd = unsafe {
            libc::signalfd(
                -1,
                mask.as_ref() as *const libc::sigset_t,
                libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just created this descriptor; nothing else
        // owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the signalfd, which stays open and the
        // same until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(ChildSignals { fd })
    }

    /// Waits until `SIGCHLD` was sent since the last call, and takes it.
    /// A standard signal is pending at most once (once for the process,
    /// once more if it was sent to this thread), so one read with room
    /// for both takes every exit since: the sweep that follows finds them
    /// all.
    ///
    /// A read that took what was pending leaves the signalfd empty, so its
    /// readiness is cleared then, rather than found out by one more read
    /// that fails with `EAGAIN` on every action. Tokio keeps the readiness
    /// if an exit was reported since this read began (its tick moved on).
    async fn next(&self) -> io::Result<()> {
        const ROOM: usize = 2;
        loop {
            let mut ready = self.fd.readable().await?;
            let mut info = std::mem::MaybeUninit::<[libc::signalfd_siginfo; ROOM]>::uninit();
            let size = std::mem::size_of::<[libc::signalfd_siginfo; ROOM]>();
            // SAFETY: the kernel writes at most `size` bytes into `info`,
            // which is that large and outlives the call.
            let read = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    info.as_mut_ptr().cast(),
                    size,
                )
            };
            if read >= 0 {
                // Fewer than `ROOM` entries: nothing is left pending.
                if (read as usize) < size {
                    ready.clear_ready();
                }
                return Ok(());
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => ready.clear_ready(),
                io::ErrorKind::Interrupted => {}
                _ => return Err(error),
            }
        }
    }
}

/// An orphan waiting for reservations to end; see [`Reaper::hurried`].
struct Hurrying<'a>(&'a Reaper);

impl Drop for Hurrying<'_> {
    fn drop(&mut self) {
        self.0.hurrying.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A child to wait for: by pid, or by pidfd (which cannot be reused).
#[derive(Debug, Clone, Copy)]
enum Which {
    Pid(i32),
    Pidfd(RawFd),
}

/// `siginfo_t`, zeroed: `si_pid` stays 0 when no child has exited.
struct SigInfo(libc::siginfo_t);

impl Default for SigInfo {
    fn default() -> Self {
        // SAFETY: all-zero bytes are a valid `siginfo_t` (plain integers).
        SigInfo(unsafe { std::mem::zeroed() })
    }
}

impl SigInfo {
    fn pid(&self) -> i32 {
        // SAFETY: `waitid` filled in a SIGCHLD siginfo, or left it zeroed;
        // either way `si_pid` is initialized.
        unsafe { self.0.si_pid() }
    }

    /// The wait status `wait4` would have given.
    fn wait_status(&self) -> i32 {
        // SAFETY: as above, for `si_status`.
        let status = unsafe { self.0.si_status() };
        match self.0.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            // CLD_KILLED: the signal.
            _ => status,
        }
    }
}

/// The raw `waitid` system call (WEXITED, with `__WALL` and `options`),
/// which also gives the child's rusage when asked for it.
fn waitid(
    which: Which,
    options: libc::c_int,
    info: &mut SigInfo,
    rusage: Option<&mut libc::rusage>,
) -> io::Result<()> {
    let (idtype, id) = match which {
        Which::Pid(pid) => (libc::P_PID, pid as libc::id_t),
        Which::Pidfd(fd) => (libc::P_PIDFD, fd as libc::id_t),
    };
    let rusage = rusage.map_or(std::ptr::null_mut(), |rusage| rusage as *mut libc::rusage);
    // SAFETY: `info` and `rusage` (when not null) are valid, writable and
    // outlive the call; the kernel writes nothing else.
    let result = unsafe {
        libc::syscall(
            libc::SYS_waitid,
            idtype,
            id,
            &mut info.0 as *mut libc::siginfo_t,
            libc::WEXITED | libc::__WALL | options,
            rusage,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reaps `which` if it has exited: its exit, `None` if it has not.
fn wait_now(which: Which) -> io::Result<Option<ChildExit>> {
    let mut info = SigInfo::default();
    // SAFETY: all-zero bytes are a valid `rusage` (plain integers).
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        match waitid(which, libc::WNOHANG, &mut info, Some(&mut rusage)) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            waited => waited?,
        }
        break;
    }
    Ok((info.pid() != 0).then(|| ChildExit {
        status: info.wait_status(),
        rusage,
    }))
}

/// An exited child, not reaped (`WNOWAIT`), of the kind `flags` selects
/// (`__WALL`: every child; 0: those with `SIGCHLD`), waiting for one
/// unless `nohang`. `Ok(None)` when none has exited (with `nohang`).
fn next_zombie(flags: libc::c_int, nohang: bool) -> io::Result<Option<i32>> {
    let mut info = SigInfo::default();
    let options = flags | libc::WEXITED | libc::WNOWAIT | if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: `info` is valid and writable and outlives the call; with a
    // null rusage the kernel writes nothing else.
    let result = unsafe {
        libc::syscall(
            libc::SYS_waitid,
            libc::P_ALL,
            0 as libc::id_t,
            &mut info.0 as *mut libc::siginfo_t,
            options,
            std::ptr::null_mut::<libc::rusage>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info.pid() != 0).then(|| info.pid()))
}

/// A pidfd for `pid` (Linux 5.3), close-on-exec.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes only numbers; its result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether children can be waited for on pidfds here: opening one
/// (Linux 5.3, and not refused by a seccomp profile) and waiting on it
/// (`P_PIDFD`, Linux 5.4). Tried on this process, which is nobody's child
/// of ours: a kernel that knows `P_PIDFD` answers ECHILD.
pub fn pidfds_work() -> io::Result<()> {
    let own = pidfd_open(std::process::id() as i32)?;
    let mut info = SigInfo::default();
    match waitid(
        Which::Pidfd(own.as_raw_fd()),
        libc::WNOHANG,
        &mut info,
        None,
    ) {
        Err(error) if error.raw_os_error() == Some(libc::ECHILD) => Ok(()),
        Err(error) => Err(error),
        Ok(()) => Err(io::Error::other("waitid on our own pidfd did not refuse")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: the runner chooses pidfds only where they work;
    /// this machine (Linux 5.4 or later) has them.
    #[test]
    fn pidfds_work_here() {
        pidfds_work().unwrap();
    }

    /// Why it matters: an action's exit code, signal and rusage are read
    /// from `waitid`'s answer, which must read as `wait4`'s did.
    #[test]
    fn an_exit_reads_as_wait4_s() {
        for (script, code, signal) in [("exit 3", Some(3), None), ("kill -9 $$", None, Some(9))] {
            let child = reaper()
                .spawn(std::process::Command::new("/bin/sh").args(["-c", script]))
                .unwrap();
            let exit = child.exit.blocking_recv().unwrap();
            assert_eq!(
                (exit.exit_code(), exit.signal()),
                (code, signal),
                "{script}"
            );
            assert!(exit.rusage.ru_maxrss > 0, "{script}");
        }
    }
}
