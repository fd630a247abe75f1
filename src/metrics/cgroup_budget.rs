//! The delegated cgroup's budget, read when scraped: how much memory the
//! runner's subtree (every action cgroup together) uses, its limit, and how
//! long its tasks stalled. Operators compare these with what the actions
//! ask for to size workers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, IntGauge, Opts};

use crate::cgroup::parse::{parse_limit, parse_pressure, parse_single_value, Limit};
use crate::sync::lock_unpoisoned;

const MEMORY_CURRENT_FILE: &str = "memory.current";
const MEMORY_MAX_FILE: &str = "memory.max";
const PRESSURE_FILES: [(&str, &str); 3] = [
    ("cpu", "cpu.pressure"),
    ("memory", "memory.pressure"),
    ("io", "io.pressure"),
];

/// A collector reading the cgroup `cgroup` (a directory under the cgroup2
/// mount) at every scrape. A file that cannot be read or parsed leaves its
/// series out of that scrape rather than failing it.
pub struct CgroupBudget {
    cgroup: PathBuf,
    memory_current: IntGauge,
    memory_max: IntGauge,
    pressure: CounterVec,
    /// Scrapes set the values, then collect them: one at a time.
    scraping: Mutex<()>,
}

impl CgroupBudget {
    pub fn new(cgroup: PathBuf) -> prometheus::Result<Self> {
        Ok(CgroupBudget {
            cgroup,
            memory_current: IntGauge::new(
                "rbe_runner_cgroup_memory_current_bytes",
                "memory.current of the delegated cgroup holding the action cgroups.",
            )?,
            memory_max: IntGauge::new(
                "rbe_runner_cgroup_memory_max_bytes",
                "memory.max of the delegated cgroup; absent when it is `max`.",
            )?,
            pressure: CounterVec::new(
                Opts::new(
                    "rbe_runner_cgroup_pressure_seconds_total",
                    "Stall time of the delegated cgroup's tasks (PSI totals), by resource and kind.",
                ),
                &["resource", "kind"],
            )?,
            scraping: Mutex::new(()),
        })
    }
}

/// The text of `file` in `cgroup`, or `None` (logged) when unreadable.
fn read(cgroup: &Path, file: &str) -> Option<String> {
    let path = cgroup.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(err) => {
            tracing::debug!(path = %path.display(), %err, "cgroup budget file not read");
            None
        }
    }
}

impl Collector for CgroupBudget {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.memory_current.desc();
        descs.extend(self.memory_max.desc());
        descs.extend(self.pressure.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_scrape = lock_unpoisoned(&self.scraping);
        let mut families = Vec::new();
        let current = read(&self.cgroup, MEMORY_CURRENT_FILE)
            .and_then(|text| parse_single_value(&text).ok())
            .and_then(|bytes| i64::try_from(bytes).ok());
        if let Some(bytes) = current {
            self.memory_current.set(bytes);
            families.extend(self.memory_current.collect());
        }
        let max = read(&self.cgroup, MEMORY_MAX_FILE).and_then(|text| parse_limit(&text).ok());
        if let Some(Limit::Value(bytes)) = max {
            self.memory_max
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            families.extend(self.memory_max.collect());
        }
        self.pressure.reset();
        let mut any_pressure = false;
        for (resource, file) in PRESSURE_FILES {
            let Some(totals) = read(&self.cgroup, file).and_then(|text| parse_pressure(&text).ok())
            else {
                continue;
            };
            any_pressure = true;
            for (kind, micros) in [("some", totals.some_micros), ("full", totals.full_micros)] {
                self.pressure
                    .with_label_values(&[resource, kind])
                    .inc_by(micros as f64 / 1e6);
            }
        }
        if any_pressure {
            families.extend(self.pressure.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family<'a>(families: &'a [MetricFamily], name: &str) -> Option<&'a MetricFamily> {
        families.iter().find(|family| family.name() == name)
    }

    #[test]
    fn the_budget_is_read_at_each_scrape_and_max_is_absent() {
        // Why it matters: `max` is no limit, and a gauge of u64::MAX would
        // wreck every dashboard that divides by it.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(
            dir.path().join("memory.pressure"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=250000\n",
        )
        .unwrap();
        let budget = CgroupBudget::new(dir.path().to_owned()).unwrap();
        let families = budget.collect();
        let current = family(&families, "rbe_runner_cgroup_memory_current_bytes").unwrap();
        assert_eq!(current.get_metric()[0].get_gauge().get_value(), 4096.0);
        assert!(family(&families, "rbe_runner_cgroup_memory_max_bytes").is_none());
        let pressure = family(&families, "rbe_runner_cgroup_pressure_seconds_total").unwrap();
        let mut values: Vec<(String, f64)> = pressure
            .get_metric()
            .iter()
            .map(|metric| {
                let labels: Vec<&str> = metric.get_label().iter().map(|l| l.value()).collect();
                (labels.join("/"), metric.get_counter().get_value())
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        // Labels in name order: kind, then resource.
        assert_eq!(
            values,
            [
                ("full/memory".to_string(), 0.25),
                ("some/memory".to_string(), 1.5)
            ]
        );

        std::fs::write(dir.path().join("memory.max"), "8192\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "5000\n").unwrap();
        let families = budget.collect();
        let max = family(&families, "rbe_runner_cgroup_memory_max_bytes").unwrap();
        assert_eq!(max.get_metric()[0].get_gauge().get_value(), 8192.0);
        let current = family(&families, "rbe_runner_cgroup_memory_current_bytes").unwrap();
        assert_eq!(current.get_metric()[0].get_gauge().get_value(), 5000.0);
    }
}
