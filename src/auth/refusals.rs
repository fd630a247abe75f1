//! Logging refused calls without letting a client flood the log: at most
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`], then one line saying how
//! many were left out. Every refusal is still counted by the gRPC metrics.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use super::client_certificate::subject;
use crate::listener::peer::{ConnectionPeer, PeerTransport};

/// Refusals logged per window; the rest are counted and summed up.
pub const LINES_PER_WINDOW: u32 = 10;
/// The length of a logging window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The rate-limited log of one server's refusals.
#[derive(Debug, Default)]
pub struct RefusalLog {
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl RefusalLog {
    /// Logs that a call to `method` from `peer` was refused with `code`
    /// for `reason`, unless this window's lines are used up.
    pub fn refused(&self, method: &str, peer: Option<&ConnectionPeer>, code: Code, reason: &str) {
        let (log, left_out) = self.admit(Instant::now());
        if left_out > 0 {
            tracing::warn!(
                left_out,
                "refused calls not logged in the last minute (rate limit)"
            );
        }
        if log {
            tracing::warn!(
                method,
                peer = %describe_peer(peer),
                code = ?code,
                reason,
                "refused a call"
            );
        }
    }

    /// Whether a refusal at `now` is logged, and how many refusals of the
    /// previous window were left out (to report once).
    fn admit(&self, now: Instant) -> (bool, u64) {
        let mut window = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut left_out = 0;
        let expired = window
            .started
            .is_none_or(|started| now.duration_since(started) >= WINDOW);
        if expired {
            left_out = std::mem::take(&mut window.left_out);
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged < LINES_PER_WINDOW {
            window.logged += 1;
            (true, left_out)
        } else {
            window.left_out += 1;
            (false, left_out)
        }
    }
}

/// Who called, as a log shows it: the Unix peer's uid, gid and pid, or
/// the TCP address; and the subject of the client certificate, if any.
pub fn describe_peer(peer: Option<&ConnectionPeer>) -> String {
    let Some(peer) = peer else {
        return "in-process".to_owned();
    };
    let mut text = match &peer.transport {
        PeerTransport::Unix {
            credentials: Some(credentials),
        } => {
            let mut text = format!("uid {} gid {}", credentials.uid, credentials.gid);
            if let Some(pid) = credentials.pid {
                text.push_str(&format!(" pid {pid}"));
            }
            text
        }
        PeerTransport::Unix { credentials: None } => {
            "a Unix peer of unknown credentials".to_owned()
        }
        PeerTransport::Tcp {
            address: Some(address),
        } => format!("address {address}"),
        PeerTransport::Tcp { address: None } => "a TCP peer of unknown address".to_owned(),
    };
    if let Some(leaf) = peer.client_certificates.first() {
        match subject(leaf) {
            Some(subject) => text.push_str(&format!(", certificate subject {subject:?}")),
            None => text.push_str(", an unparsable certificate"),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::peer::PeerCredentials;
    use std::sync::Arc;

    /// Why: a client retrying a refused call in a loop must not fill the
    /// disk with log lines, yet the operator must learn it happened.
    #[test]
    fn at_most_the_window_s_lines_then_the_count_left_out() {
        let log = RefusalLog::default();
        let start = Instant::now();
        let admitted = (0..25).filter(|_| log.admit(start).0).count();
        assert_eq!(admitted, LINES_PER_WINDOW as usize);
        assert_eq!(log.admit(start + WINDOW), (true, 15));
        assert_eq!(log.admit(start + WINDOW), (true, 0));
    }

    #[test]
    fn peers_are_described_by_what_identifies_them() {
        let unix = ConnectionPeer {
            transport: PeerTransport::Unix {
                credentials: Some(PeerCredentials {
                    uid: 65534,
                    gid: 65533,
                    pid: Some(42),
                }),
            },
            client_certificates: Arc::from(Vec::new()),
        };
        assert_eq!(describe_peer(Some(&unix)), "uid 65534 gid 65533 pid 42");
        let tcp = ConnectionPeer {
            transport: PeerTransport::Tcp {
                address: Some(([10, 0, 0, 1], 4000).into()),
            },
            client_certificates: Arc::from(vec![b"not DER".to_vec()]),
        };
        assert_eq!(
            describe_peer(Some(&tcp)),
            "address 10.0.0.1:4000, an unparsable certificate"
        );
    }
}
