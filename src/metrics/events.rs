//! What the event stream lost, read from its counters at scrape time.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntCounter;

use crate::events::EventCounters;

/// `rbe_runner_events_dropped_total` and
/// `rbe_runner_events_journal_write_failures_total`.
pub struct EventLosses {
    counters: EventCounters,
    dropped: IntCounter,
    journal_write_failures: IntCounter,
}

impl EventLosses {
    pub fn new(counters: EventCounters) -> prometheus::Result<Self> {
        Ok(EventLosses {
            counters,
            dropped: IntCounter::new(
                "rbe_runner_events_dropped_total",
                "Events that subscribers (the journal included) missed because they fell behind.",
            )?,
            journal_write_failures: IntCounter::new(
                "rbe_runner_events_journal_write_failures_total",
                "Journal lines that could not be written (disk full, permissions).",
            )?,
        })
    }
}

impl Collector for EventLosses {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.dropped.desc();
        descs.extend(self.journal_write_failures.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // The event stream counts; these counters only mirror its totals,
        // which never go down.
        set(&self.dropped, self.counters.dropped_total());
        set(
            &self.journal_write_failures,
            self.counters.journal_write_failures_total(),
        );
        let mut families = self.dropped.collect();
        families.extend(self.journal_write_failures.collect());
        families
    }
}

fn set(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}
