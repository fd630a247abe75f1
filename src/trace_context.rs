//! The trace a call belongs to, as the runner's layers pass it along: the
//! span that the action's spans are children of, and the trace id that
//! the action's log line and journal entry name.
//!
//! It lives below both [`crate::runner`] (whose `CallContext` carries it)
//! and [`crate::action`] (whose outcome records it), and knows nothing of
//! OpenTelemetry: [`crate::telemetry`] produces and consumes it.

use std::fmt::Write;

/// A W3C trace context: the ids of one span of one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallTrace {
    /// The trace's id (never all zeros).
    pub trace_id: [u8; 16],
    /// The span the action's spans are children of: the runner's server
    /// span when tracing is on, else the caller's.
    pub span_id: [u8; 8],
    /// Whether the trace is sampled (recorded and exported).
    pub sampled: bool,
}

impl CallTrace {
    /// The trace id in lower-case hex, as `traceparent` and trace viewers
    /// write it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id in lower-case hex.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_written_as_traceparent_writes_them() {
        // Operators paste this into a trace viewer's search box.
        let trace = CallTrace {
            trace_id: [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36,
            ],
            span_id: [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            sampled: true,
        };
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.span_id_hex(), "00f067aa0ba902b7");
    }
}
