//! The two timeouts of an HTTP/1 connection, as Go's `http.Server` names
//! them (`ReadHeaderTimeout`, `IdleTimeout`): a request head must arrive
//! whole within the header-read timeout, and a kept-alive connection may
//! wait the idle timeout for the first byte of its next request. Without
//! them a client holds a descriptor for as long as it likes, by sending
//! nothing or by sending a head one byte at a time. The idle timeout also
//! bounds each answer (like Go's `WriteTimeout`), so that one stuck (a
//! readiness path on a hung mount) does not hold the connection, or a
//! shutdown, for good.
//!
//! hyper's own `header_read_timeout` starts whenever it waits for a head,
//! between kept-alive requests too, so it cannot tell idle from slow; the
//! connection's [`Phase`] is kept here instead, from what is read and when
//! each request is answered, and the connection is dropped when the
//! deadline of its phase passes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long an HTTP/1 connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAliveTimeouts {
    /// From accepting the connection, or from the first byte of a later
    /// request, until the request head is complete.
    pub header_read: Duration,
    /// From the end of a response until the first byte of the next
    /// request; and from a complete request head until its response is
    /// written.
    pub idle: Duration,
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    HeaderRead,
    Idle,
    Answer,
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request head.
    Idle { deadline: Instant },
    /// A request head is arriving; it must be complete by `deadline`.
    ReadingHead { deadline: Instant },
    /// A request is being answered, until `deadline`. `read_ahead`: bytes
    /// arrived meanwhile (a pipelined request, most likely), so the next
    /// head has begun.
    Answering { deadline: Instant, read_ahead: bool },
}

/// The phase of one connection, moved on by what happens to it. Pure:
/// every method takes the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeepAlive {
    phase: Phase,
    timeouts: KeepAliveTimeouts,
}

impl KeepAlive {
    /// A connection accepted at `now`: its first head is due within the
    /// header-read timeout, as in Go, whether or not a byte has come.
    fn accepted(timeouts: KeepAliveTimeouts, now: Instant) -> Self {
        KeepAlive {
            phase: Phase::ReadingHead {
                deadline: now + timeouts.header_read,
            },
            timeouts,
        }
    }

    /// Bytes were read at `now`; returns whether the phase changed.
    fn bytes_read(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Idle { .. } => {
                self.phase = Phase::ReadingHead {
                    deadline: now + self.timeouts.header_read,
                };
                true
            }
            Phase::Answering {
                deadline,
                read_ahead: false,
            } => {
                self.phase = Phase::Answering {
                    deadline,
                    read_ahead: true,
                };
                true
            }
            Phase::ReadingHead { .. }
            | Phase::Answering {
                read_ahead: true, ..
            } => false,
        }
    }

    /// A request head was complete at `now`; it is being answered.
    fn request_started(&mut self, now: Instant) {
        self.phase = Phase::Answering {
            deadline: now + self.timeouts.idle,
            read_ahead: false,
        };
    }

    /// The response was written (or given up) at `now`.
    fn response_finished(&mut self, now: Instant) {
        self.phase = match self.phase {
            Phase::Answering {
                read_ahead: true, ..
            } => Phase::ReadingHead {
                deadline: now + self.timeouts.header_read,
            },
            _ => Phase::Idle {
                deadline: now + self.timeouts.idle,
            },
        };
    }

    /// When the connection is to be closed, and why.
    fn deadline(&self) -> (Instant, Expired) {
        match self.phase {
            Phase::Idle { deadline } => (deadline, Expired::Idle),
            Phase::ReadingHead { deadline } => (deadline, Expired::HeaderRead),
            Phase::Answering { deadline, .. } => (deadline, Expired::Answer),
        }
    }
}

/// The clock of one connection, shared by its stream (which reports what
/// is read), its service (which reports each request) and its task (which
/// closes it when [`ConnectionClock::expired`] completes).
#[derive(Clone)]
pub struct ConnectionClock {
    state: Arc<watch::Sender<KeepAlive>>,
}

impl ConnectionClock {
    /// The clock of a connection accepted now.
    pub fn accepted(timeouts: KeepAliveTimeouts) -> Self {
        ConnectionClock {
            state: Arc::new(watch::Sender::new(KeepAlive::accepted(
                timeouts,
                Instant::now(),
            ))),
        }
    }

    /// `stream`, reporting to this clock whenever bytes are read from it.
    pub fn reads<S>(&self, stream: S) -> ClockedReads<S> {
        ClockedReads {
            inner: stream,
            clock: self.clone(),
        }
    }

    /// Marks a request as being answered until the returned guard is
    /// dropped (keep it in the response body).
    pub fn answering(&self) -> Answering {
        let now = Instant::now();
        self.state.send_modify(|state| state.request_started(now));
        Answering {
            clock: self.clone(),
        }
    }

    /// Completes when the deadline of the connection's phase has passed.
    pub async fn expired(&self) -> Expired {
        let mut state = self.state.subscribe();
        loop {
            let (deadline, expired) = state.borrow_and_update().deadline();
            // The sender lives in `self`: `changed` cannot fail.
            tokio::select! {
                // A change at the deadline itself wins: bytes that arrived
                // in time count.
                biased;
                _ = state.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return expired,
            }
        }
    }
}

/// A request being answered; dropping it ends the answer.
pub struct Answering {
    clock: ConnectionClock,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let now = Instant::now();
        self.clock
            .state
            .send_modify(|state| state.response_finished(now));
    }
}

/// A stream whose reads move its connection's clock on.
pub struct ClockedReads<S> {
    inner: S,
    clock: ConnectionClock,
}

impl<S: AsyncRead + Unpin> AsyncRead for ClockedReads<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = Instant::now();
            self.clock
                .state
                .send_if_modified(|state| state.bytes_read(now));
        }
        polled
    }
}

write_through_to_inner!(ClockedReads);

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: KeepAliveTimeouts = KeepAliveTimeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    #[test]
    fn a_new_connection_has_the_header_read_timeout_from_accept() {
        // Why: a client that connects and sends nothing, or one byte now
        // and then, must lose its descriptor within the header-read
        // timeout, not the idle one.
        let start = Instant::now();
        let mut keep_alive = KeepAlive::accepted(TIMEOUTS, start);
        assert_eq!(keep_alive.deadline(), (at(start, 10), Expired::HeaderRead));
        assert!(!keep_alive.bytes_read(at(start, 9)));
        assert_eq!(
            keep_alive.deadline(),
            (at(start, 10), Expired::HeaderRead),
            "trickled bytes do not extend it"
        );
    }

    #[test]
    fn between_requests_the_idle_timeout_runs_until_the_next_byte() {
        // Why: Prometheus scrapes every 15 to 60 s over one kept-alive
        // connection; that must not be cut at the header-read timeout.
        let start = Instant::now();
        let mut keep_alive = KeepAlive::accepted(TIMEOUTS, start);
        keep_alive.request_started(at(start, 1));
        keep_alive.response_finished(at(start, 2));
        assert_eq!(keep_alive.deadline(), (at(start, 62), Expired::Idle));
        assert!(keep_alive.bytes_read(at(start, 30)));
        assert_eq!(keep_alive.deadline(), (at(start, 40), Expired::HeaderRead));
    }

    #[test]
    fn an_answer_is_bounded_by_the_idle_timeout() {
        // Why: a readiness path on a hung mount must not hold the
        // connection, or the runner's shutdown, for good.
        let start = Instant::now();
        let mut keep_alive = KeepAlive::accepted(TIMEOUTS, start);
        keep_alive.request_started(at(start, 1));
        assert_eq!(keep_alive.deadline(), (at(start, 61), Expired::Answer));
        assert!(keep_alive.bytes_read(at(start, 2)));
        assert_eq!(
            keep_alive.deadline(),
            (at(start, 61), Expired::Answer),
            "a pipelined request does not extend it"
        );
    }

    #[test]
    fn a_pipelined_head_begun_while_answering_gets_the_header_read_timeout() {
        let start = Instant::now();
        let mut keep_alive = KeepAlive::accepted(TIMEOUTS, start);
        keep_alive.request_started(start);
        assert!(keep_alive.bytes_read(at(start, 1)));
        assert!(!keep_alive.bytes_read(at(start, 1)), "reported once");
        keep_alive.response_finished(at(start, 2));
        assert_eq!(keep_alive.deadline(), (at(start, 12), Expired::HeaderRead));
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_expires_at_the_deadline_of_the_current_phase() {
        let clock = ConnectionClock::accepted(TIMEOUTS);
        let start = Instant::now();
        let answering = clock.answering();
        let expired = clock.expired();
        tokio::pin!(expired);
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(answering);
        assert_eq!(expired.await, Expired::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(90));
    }
}
