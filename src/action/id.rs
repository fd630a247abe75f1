//! Naming actions: `<runner_instance>-<n>`.
//!
//! The instance is 8 random lowercase hex digits chosen at each start, so
//! ids of two runs of the runner (also as PID 1 of a container, where the
//! pid is always the same) never collide, and an event or log line names
//! the one action it is about across a fleet's logs. `n` counts from 1.
//! The action's cgroup is named after its id.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// This start of the runner: 8 random lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunnerInstance(String);

impl RunnerInstance {
    /// A new random instance.
    pub fn random() -> Self {
        // The kernel's random source cannot fail once the system is up;
        // should it, a time-derived value still tells restarts apart.
        let value = getrandom::u32().unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.subsec_nanos() ^ std::process::id())
                .unwrap_or_default()
        });
        RunnerInstance(format!("{value:08x}"))
    }

    /// The 8 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunnerInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One action's id: `<runner_instance>-<n>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionId(String);

impl ActionId {
    /// The id as text, as logs, events and the cgroup name spell it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hands out the ids of one runner instance.
#[derive(Debug)]
pub struct ActionIds {
    instance: RunnerInstance,
    last: AtomicU64,
}

impl ActionIds {
    /// Ids `<instance>-1`, `<instance>-2`, ...
    pub fn new(instance: RunnerInstance) -> Self {
        ActionIds {
            instance,
            last: AtomicU64::new(0),
        }
    }

    /// The instance every id starts with.
    pub fn instance(&self) -> &RunnerInstance {
        &self.instance
    }

    /// The next id.
    pub fn next(&self) -> ActionId {
        let n = self.last.fetch_add(1, Ordering::Relaxed) + 1;
        ActionId(format!("{}-{n}", self.instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_from_one_within_an_instance() {
        let ids = ActionIds::new(RunnerInstance("0badcafe".into()));
        assert_eq!(ids.next().as_str(), "0badcafe-1");
        assert_eq!(ids.next().as_str(), "0badcafe-2");
        assert_eq!(ids.instance().as_str(), "0badcafe");
    }

    #[test]
    fn an_instance_is_eight_lowercase_hex_digits_and_differs_between_starts() {
        // Why it matters: the instance tells restarts apart in events and in
        // leftover cgroup names; two starts must not share it.
        let first = RunnerInstance::random();
        assert_eq!(first.as_str().len(), 8, "{first}");
        assert!(
            first
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{first}"
        );
        // 32 random bits: a collision among a few draws is (practically)
        // impossible, so equality would mean the source is not random.
        let draws: std::collections::HashSet<String> = (0..8)
            .map(|_| RunnerInstance::random().as_str().to_owned())
            .collect();
        assert_eq!(draws.len(), 8);
    }
}
