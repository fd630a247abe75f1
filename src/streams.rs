//! The long-lived streams the runner serves, counted together: event
//! subscriptions (`Events.Subscribe`) and output followers
//! (`Output.Follow`).
//!
//! Each such stream costs its HTTP/2 send buffer and a task for as long as
//! the client keeps it open, so their number is capped: at most
//! `events.maximumSubscribers` of both kinds together. One more is refused
//! (RESOURCE_EXHAUSTED, naming the setting), which a client may retry once
//! another has ended. A stream holds its [`StreamSlot`] until it is
//! dropped, however it ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The configuration key of the cap, for messages.
pub const MAXIMUM_STREAMS_SETTING: &str = "events.maximumSubscribers";

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the runner already serves {maximum} event and output streams, its maximum \
     (events.maximumSubscribers); try again when one has ended"
)]
pub struct TooManyStreams {
    /// The cap.
    pub maximum: usize,
}

/// The streams open now, and how many may be.
#[derive(Debug)]
pub struct StreamSlots {
    maximum: usize,
    open: AtomicUsize,
}

impl StreamSlots {
    /// At most `maximum` streams at once.
    pub fn new(maximum: usize) -> Arc<Self> {
        Arc::new(StreamSlots {
            maximum,
            open: AtomicUsize::new(0),
        })
    }

    /// A slot for one more stream, held until dropped; refused at the cap.
    pub fn take(self: &Arc<Self>) -> Result<StreamSlot, TooManyStreams> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.maximum).then_some(open + 1)
            })
            .map_err(|_| TooManyStreams {
                maximum: self.maximum,
            })?;
        Ok(StreamSlot {
            slots: self.clone(),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn maximum(&self) -> usize {
        self.maximum
    }
}

/// One stream's place under the cap; given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refused_at_the_cap_and_given_back_when_dropped() {
        // Why it matters: event subscribers and output followers share
        // one cap; a stream that ended must free its place, or the cap
        // would slowly close the runner to every client.
        let slots = StreamSlots::new(2);
        let first = slots.take().unwrap();
        let _second = slots.take().unwrap();
        let refused = slots.take().unwrap_err();
        assert_eq!(refused, TooManyStreams { maximum: 2 });
        assert!(refused.to_string().contains(MAXIMUM_STREAMS_SETTING));
        drop(first);
        assert_eq!(slots.open(), 1);
        let _third = slots.take().unwrap();
        assert_eq!(slots.open(), 2);
    }
}
