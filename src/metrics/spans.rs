//! Spans the runner gave up on, read from the tracing's counters at
//! scrape time. Registered whether or not `global.tracing` is set, so
//! that an alert on it has a series (at zero) from startup.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};

use crate::telemetry::SpanDrops;

/// `rbe_runner_spans_dropped_total{reason}`.
pub struct SpansDropped {
    drops: Arc<SpanDrops>,
    dropped: IntCounterVec,
}

impl SpansDropped {
    pub fn new(drops: Arc<SpanDrops>) -> prometheus::Result<Self> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "rbe_runner_spans_dropped_total",
                "Trace spans the runner gave up on: reason=\"queue_full\" when a span processor's queue had no room, reason=\"export_failed\" when the collector did not take a batch (down, refusing, too slow).",
            ),
            &["reason"],
        )?;
        for reason in ["queue_full", "export_failed"] {
            dropped.with_label_values(&[reason]);
        }
        Ok(SpansDropped { drops, dropped })
    }
}

impl Collector for SpansDropped {
    fn desc(&self) -> Vec<&Desc> {
        self.dropped.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // The exporters count; these counters mirror their totals, which
        // never go down.
        for (reason, total) in [
            ("queue_full", self.drops.queue_full_total()),
            ("export_failed", self.drops.export_failed_total()),
        ] {
            let counter = self.dropped.with_label_values(&[reason]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.dropped.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_reasons_are_there_at_zero_from_the_start() {
        // Why it matters: an alert on a rate of a series that does not
        // exist yet never fires.
        let collector = SpansDropped::new(Arc::new(SpanDrops::default())).unwrap();
        let families = collector.collect();
        assert_eq!(families[0].name(), "rbe_runner_spans_dropped_total");
        let mut reasons: Vec<(String, f64)> = families[0]
            .get_metric()
            .iter()
            .map(|metric| {
                (
                    metric.get_label()[0].value().to_owned(),
                    metric.get_counter().get_value(),
                )
            })
            .collect();
        reasons.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            reasons,
            vec![
                ("export_failed".to_owned(), 0.0),
                ("queue_full".to_owned(), 0.0)
            ]
        );
    }
}
