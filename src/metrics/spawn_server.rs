//! Whether the spawn server creates actions' processes, read at scrape
//! time.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGauge;

use crate::process::spawn_server::SpawnServer;

/// `rbe_runner_spawn_server_up`.
pub struct SpawnServerUp {
    server: Option<Arc<SpawnServer>>,
    up: IntGauge,
}

impl SpawnServerUp {
    pub fn new(server: Option<Arc<SpawnServer>>) -> prometheus::Result<Self> {
        Ok(SpawnServerUp {
            server,
            up: IntGauge::new(
                "rbe_runner_spawn_server_up",
                "1 while the spawn server creates actions' processes; 0 when the runner creates them itself (the server could not start, or is gone), which costs it more CPU per action.",
            )?,
        })
    }
}

impl Collector for SpawnServerUp {
    fn desc(&self) -> Vec<&Desc> {
        self.up.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let up = self.server.as_ref().is_some_and(|server| server.is_up());
        self.up.set(i64::from(up));
        self.up.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_server_it_is_down() {
        let collector = SpawnServerUp::new(None).unwrap();
        let families = collector.collect();
        assert_eq!(families[0].name(), "rbe_runner_spawn_server_up");
        assert_eq!(families[0].get_metric()[0].get_gauge().get_value(), 0.0);
    }
}
