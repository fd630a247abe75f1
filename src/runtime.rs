//! The runner's async runtime: how many threads, and which of them the
//! kernel interrupts when a child exits.
//!
//! - **One async worker thread**, whatever the cores: the thread that
//!   calls [`build`] and then `block_on`, with tokio's current-thread
//!   scheduler. The runner's async work per action is tens of
//!   microseconds (HTTP/2, gRPC, the outcome). With a second worker, tokio
//!   wakes the idle one for every task spawned or woken from another
//!   thread, and a call is handed back and forth between the two: 14.7
//!   context switches per action against 9.4 with one, for no throughput
//!   even at 8 calls at once (BENCHMARKS.md). The multi-thread scheduler
//!   with one worker still paid for what a second one would need (work
//!   stealing's atomics, the inject queue, waking through the worker's
//!   condition variable); the current-thread scheduler is the same single
//!   loop without them. One thread serves a few thousand actions a
//!   second; nothing may block it (preparation on a filesystem that may
//!   block, and spawns, which wait for the exec, go to the blocking pool).
//! - **A blocking pool of at most [`BLOCKING_THREADS`]**, tokio's default,
//!   stated.
//! - **`SIGCHLD` goes to no thread.** Every child that has called exec
//!   sends `SIGCHLD` when it exits (exec resets its exit signal), actions
//!   included. Delivered to a handler, it interrupted a thread (the worker,
//!   or a blocking-pool thread asleep, put back to sleep for nothing) and
//!   cost a write and two reads of tokio's signal pipe per action. It is
//!   blocked in every thread instead and read from a signalfd by the
//!   reaper (src/process/reaper.rs), in the same wake-up of the event loop
//!   as the action's pidfd.

use std::io;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use tokio::runtime::Runtime;

/// The blocking pool's size.
pub const BLOCKING_THREADS: usize = 512;

/// Builds the runtime, whose async worker is the calling thread while it
/// is in `block_on`. Call from the main thread before any other thread
/// starts: it blocks `SIGCHLD` in the calling thread, and so in every
/// thread started later (each of the runtime's blocks it again).
pub fn build() -> io::Result<Runtime> {
    child_signal(SigmaskHow::SIG_BLOCK)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .on_thread_start(|| {
            let _ = child_signal(SigmaskHow::SIG_BLOCK);
        })
        .enable_all()
        .build()?;
    Ok(runtime)
}

/// Blocks or unblocks `SIGCHLD` in the calling thread.
fn child_signal(how: SigmaskHow) -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    nix::sys::signal::pthread_sigmask(how, Some(&set), None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child_signal_blocked() -> bool {
        SigSet::thread_get_mask()
            .map(|mask| mask.contains(Signal::SIGCHLD))
            .unwrap_or(false)
    }

    /// Why it matters: a child's exit must interrupt no thread, and reach
    /// the reaper's signalfd, which only sees a signal blocked everywhere.
    #[test]
    fn no_thread_receives_the_child_signal() {
        let built = std::thread::spawn(|| {
            let runtime = build().unwrap();
            let main_blocked = child_signal_blocked();
            let worker_blocked = runtime
                .block_on(async { tokio::spawn(async { child_signal_blocked() }).await })
                .unwrap();
            let blocking_blocked = runtime
                .block_on(async {
                    tokio::spawn(async { tokio::task::spawn_blocking(child_signal_blocked).await })
                        .await
                })
                .unwrap()
                .unwrap();
            (main_blocked, worker_blocked, blocking_blocked)
        })
        .join()
        .unwrap();
        assert_eq!(built, (true, true, true), "(main, worker, blocking)");
    }
}
