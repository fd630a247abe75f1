//! Admitting accepted connections, for the gRPC listeners and the
//! diagnostics server alike.
//!
//! Two ways a listener can hurt the process it serves, and what is done:
//! - Out of descriptors, `accept` fails at once, over and over, for as
//!   long as a connection is queued: the loop pauses instead
//!   ([`AcceptBackoff`]), logging once per episode.
//! - Every connection held costs a descriptor. A group of listeners shares
//!   a [`ConnectionCap`]; a connection beyond it is closed as soon as it is
//!   accepted and counted, so that clients of one port cannot use up the
//!   descriptors that actions and the other listeners need.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::stopped;

/// First pause after `accept` fails for lack of descriptors.
const EXHAUSTION_FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause: descriptors freed are noticed within this.
const EXHAUSTION_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// At most `maximum` connections at once over a group of listeners; those
/// beyond are counted in `rejected`. Clones share the count.
#[derive(Clone)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    maximum: usize,
    rejected: Option<IntCounter>,
}

impl ConnectionCap {
    /// A cap of `maximum` connections. `rejected`, when metrics are
    /// served, counts the connections closed for being beyond it.
    pub fn new(maximum: usize, rejected: Option<IntCounter>) -> Self {
        ConnectionCap {
            permits: Arc::new(Semaphore::new(maximum)),
            maximum,
            rejected,
        }
    }
}

/// A connection's place under its [`ConnectionCap`], given back when
/// dropped: keep it for as long as the connection is open.
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// A slot under no cap.
    #[cfg(test)]
    pub(crate) fn uncapped() -> Slot {
        Slot { _permit: None }
    }
}

/// What to do with the outcome of one `accept`.
pub enum Admitted<T> {
    /// Serve this connection, holding its slot.
    Serve(T, Slot),
    /// Out of descriptors: pause this long before accepting again.
    Pause(Duration),
    /// Nothing to serve (a connection failed or was turned away): accept
    /// the next.
    Next,
}

/// The admission state of one listener: its backoff, its cap, and what it
/// has logged.
pub struct Admission {
    listener: String,
    backoff: AcceptBackoff,
    cap: Option<ConnectionCap>,
    /// Connections turned away since the last one admitted.
    rejected: u64,
}

impl Admission {
    /// Admission for the listener named `listener` (for the log), under
    /// `cap` if given.
    pub fn new(listener: impl Into<String>, cap: Option<ConnectionCap>) -> Self {
        Admission {
            listener: listener.into(),
            backoff: AcceptBackoff::default(),
            cap,
            rejected: 0,
        }
    }

    /// Decides about the outcome of one `accept`; a connection turned away
    /// is closed here.
    pub fn admit<T>(&mut self, accepted: io::Result<T>) -> Admitted<T> {
        let connection = match accepted {
            Ok(connection) => connection,
            Err(err) if is_resource_exhaustion(&err) => {
                let (delay, first) = self.backoff.failed();
                if first {
                    tracing::warn!(
                        listener = self.listener,
                        %err,
                        "cannot accept connections: out of descriptors; retrying with backoff (up to 1 s) until some are freed"
                    );
                }
                return Admitted::Pause(delay);
            }
            // Per-connection failures (ECONNABORTED, ...): the next accept
            // is unaffected.
            Err(err) => {
                tracing::debug!(listener = self.listener, %err, "accept failed");
                return Admitted::Next;
            }
        };
        let failures = self.backoff.succeeded();
        if failures > 0 {
            tracing::info!(
                listener = self.listener,
                failures,
                "accepting connections again"
            );
        }
        let Some(cap) = &self.cap else {
            return Admitted::Serve(connection, Slot { _permit: None });
        };
        match cap.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let rejected = std::mem::take(&mut self.rejected);
                if rejected > 0 {
                    tracing::info!(
                        listener = self.listener,
                        rejected,
                        "admitting connections again"
                    );
                }
                Admitted::Serve(
                    connection,
                    Slot {
                        _permit: Some(permit),
                    },
                )
            }
            Err(_) => {
                drop(connection);
                if let Some(counter) = &cap.rejected {
                    counter.inc();
                }
                self.rejected += 1;
                if self.rejected == 1 {
                    tracing::warn!(
                        listener = self.listener,
                        maximum = cap.maximum,
                        "connection limit reached: closing new connections at once until some close"
                    );
                }
                Admitted::Next
            }
        }
    }
}

/// A listening socket.
pub(crate) trait Accept {
    type Connection;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Connection = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<tokio::net::TcpStream> {
        tokio::net::TcpListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// Accepts on `listener` until `stop` becomes true, running `serve` on a
/// task of its own for each connection `admission` admits. Then closes the
/// listening socket and waits for those tasks: each decides how it ends
/// once it sees `stop`.
pub(crate) async fn serve_connections<L, S, F>(
    listener: L,
    mut admission: Admission,
    mut stop: watch::Receiver<bool>,
    mut serve: S,
) where
    L: Accept,
    S: FnMut(L::Connection, Slot) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        match admission.admit(accepted) {
            Admitted::Serve(connection, slot) => {
                connections.spawn(serve(connection, slot));
            }
            Admitted::Pause(delay) => tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep(delay) => {}
            },
            Admitted::Next => {}
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Whether an `accept` error means the process or system is out of
/// descriptors (or memory), which retrying at once cannot fix.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Backoff of one listener's accept loop: 10 ms doubling to 1 s while
/// `accept` keeps failing for lack of resources, one log line per episode.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failures in the current episode; 0 when accepting normally.
    failures: u64,
    delay: Duration,
}

impl AcceptBackoff {
    /// Records a failure; returns how long to pause and whether this
    /// failure starts an episode (and so is to be logged).
    fn failed(&mut self) -> (Duration, bool) {
        self.failures += 1;
        self.delay = if self.failures == 1 {
            EXHAUSTION_FIRST_BACKOFF
        } else {
            (self.delay * 2).min(EXHAUSTION_MAX_BACKOFF)
        };
        (self.delay, self.failures == 1)
    }

    /// Records a success; returns the failures of the episode it ends.
    fn succeeded(&mut self) -> u64 {
        std::mem::take(&mut self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_10ms_to_1s_and_logs_once_per_episode() {
        // Why: a full descriptor table must neither spin the accept loop
        // nor flood the log.
        let mut backoff = AcceptBackoff::default();
        let delays: Vec<(u128, bool)> = (0..10)
            .map(|_| {
                let (delay, log) = backoff.failed();
                (delay.as_millis(), log)
            })
            .collect();
        assert_eq!(
            delays,
            [
                (10, true),
                (20, false),
                (40, false),
                (80, false),
                (160, false),
                (320, false),
                (640, false),
                (1000, false),
                (1000, false),
                (1000, false)
            ]
        );
        assert_eq!(backoff.succeeded(), 10);
        assert_eq!(backoff.succeeded(), 0);
        assert_eq!(backoff.failed(), (EXHAUSTION_FIRST_BACKOFF, true));
    }

    #[test]
    fn only_resource_exhaustion_backs_off() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EINTR, libc::EPROTO] {
            assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
                errno
            )));
        }
    }

    #[test]
    fn connections_beyond_the_cap_are_turned_away_and_counted_until_one_closes() {
        // Why: the cap is what keeps one port's clients from using up the
        // descriptors the rest of the runner needs; the counter is how an
        // operator learns that clients were turned away.
        let rejected = IntCounter::new("rejected", "test").unwrap();
        let cap = ConnectionCap::new(2, Some(rejected.clone()));
        let mut first = Admission::new("first", Some(cap.clone()));
        let mut second = Admission::new("second", Some(cap));
        let Admitted::Serve((), one) = first.admit(Ok(())) else {
            panic!("the first connection is served");
        };
        let Admitted::Serve((), _two) = second.admit(Ok(())) else {
            panic!("the second connection is served");
        };
        assert!(matches!(first.admit(Ok(())), Admitted::Next));
        assert!(matches!(second.admit(Ok(())), Admitted::Next));
        assert_eq!(rejected.get(), 2, "the listeners share one cap");
        drop(one);
        assert!(matches!(first.admit(Ok(())), Admitted::Serve((), _)));
        assert_eq!(first.rejected, 0, "the episode ended");
    }

    #[test]
    fn without_a_cap_every_connection_is_served() {
        let mut admission = Admission::new("unix", None);
        for _ in 0..1000 {
            assert!(matches!(admission.admit(Ok(())), Admitted::Serve((), _)));
        }
    }
}
