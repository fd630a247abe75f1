//! What an action's cgroup says beyond its usage: how often it hit its own
//! limits (`pids.events`, `cpu.stat` throttling), and the memory budgets
//! above it that it shares with other actions.
//!
//! A budget is an ancestor with a `memory.max` of its own: the actions
//! directory, the runner's managed parent, and the container's cgroup
//! (the top of the cgroup2 mount inside a cgroup namespace) when it is
//! readable. Their `memory.events.local` `oom` counts only their own limit
//! being reached; the hierarchical `memory.events` would also count an
//! action's own-limit OOM, which is no budget running out.

use std::path::{Path, PathBuf};

use super::parse::{parse_flat_keyed, parse_limit, parse_memory_events, parse_single_value, Limit};
use super::{read_optional, read_parsed, FileError};

const MEMORY_EVENTS_LOCAL_FILE: &str = "memory.events.local";
const MEMORY_CURRENT_FILE: &str = "memory.current";
const MEMORY_MAX_FILE: &str = "memory.max";
const PIDS_EVENTS_FILE: &str = "pids.events";
const CPU_STAT_FILE: &str = "cpu.stat";

/// Counters of an action cgroup's own limits; each `None` when the
/// controller is not enabled for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounters {
    /// `pids.events` `max`: forks refused by `pids.max`.
    pub pids_events_max: Option<u64>,
    /// `cpu.stat` `nr_throttled`: periods in which `cpu.max` throttled it.
    pub cpu_nr_throttled: Option<u64>,
    /// `cpu.stat` `throttled_usec`.
    pub cpu_throttled_micros: Option<u64>,
}

impl LimitCounters {
    /// Reads the counters of `cgroup`. Blocking.
    pub fn read(cgroup: &Path) -> Result<Self, FileError> {
        let value_of = |file: &str, key: &str| -> Result<Option<u64>, FileError> {
            let path = cgroup.join(file);
            let Some(text) = read_optional(&path)? else {
                return Ok(None);
            };
            let entries = parse_flat_keyed(&text).map_err(FileError::parse(&path))?;
            Ok(entries
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, value)| *value))
        };
        Ok(LimitCounters {
            pids_events_max: value_of(PIDS_EVENTS_FILE, "max")?,
            cpu_nr_throttled: value_of(CPU_STAT_FILE, "nr_throttled")?,
            cpu_throttled_micros: value_of(CPU_STAT_FILE, "throttled_usec")?,
        })
    }

    /// The growth of each counter since `before`; 0 when unknown.
    pub fn since(&self, before: &LimitCounters) -> LimitCounters {
        let delta = |after: Option<u64>, before: Option<u64>| {
            Some(after.unwrap_or(0).saturating_sub(before.unwrap_or(0)))
        };
        LimitCounters {
            pids_events_max: delta(self.pids_events_max, before.pids_events_max),
            cpu_nr_throttled: delta(self.cpu_nr_throttled, before.cpu_nr_throttled),
            cpu_throttled_micros: delta(self.cpu_throttled_micros, before.cpu_throttled_micros),
        }
    }
}

/// The budgets an action below `actions` shares, lowest first: `actions`,
/// `parent`, and `container` when it is another cgroup whose own OOM count
/// is readable (not the host's root cgroup).
pub fn budgets_above(actions: &Path, parent: &Path, container: &Path) -> Vec<PathBuf> {
    let mut budgets = vec![actions.to_path_buf(), parent.to_path_buf()];
    if container != parent && container.join(MEMORY_EVENTS_LOCAL_FILE).exists() {
        budgets.push(container.to_path_buf());
    }
    budgets
}

/// The local `oom` count of each budget; `None` for one whose file cannot
/// be read (no memory controller there), which then never counts as grown.
pub fn local_ooms(budgets: &[PathBuf]) -> Vec<Option<u64>> {
    budgets
        .iter()
        .map(|budget| {
            read_parsed(&budget.join(MEMORY_EVENTS_LOCAL_FILE), parse_memory_events)
                .ok()
                .map(|events| events.oom)
        })
        .collect()
}

/// The lowest budget whose local `oom` grew between `before` and `after`.
pub fn lowest_grown<'a>(
    budgets: &'a [PathBuf],
    before: &[Option<u64>],
    after: &[Option<u64>],
) -> Option<&'a Path> {
    budgets
        .iter()
        .zip(before.iter().zip(after))
        .find(|(_, (before, after))| matches!((before, after), (Some(b), Some(a)) if a > b))
        .map(|(budget, _)| budget.as_path())
}

/// What a budget held when the kill was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetState {
    /// Its `memory.max` in bytes (`u64::MAX` for `max`).
    pub limit_bytes: u64,
    /// Its `memory.current` minus that of every action cgroup below it.
    pub charged_outside_actions: u64,
}

/// Reads `budget`'s limit and what is charged to it outside the action
/// cgroups in `actions`. Blocking.
pub fn budget_state(budget: &Path, actions: &Path) -> Result<BudgetState, FileError> {
    let limit_bytes = match read_parsed(&budget.join(MEMORY_MAX_FILE), parse_limit)? {
        Limit::Unlimited => u64::MAX,
        Limit::Value(bytes) => bytes,
    };
    let current = read_parsed(&budget.join(MEMORY_CURRENT_FILE), parse_single_value)?;
    let in_actions: u64 = action_cgroups(actions)
        .iter()
        .filter_map(|action| {
            read_parsed(&action.join(MEMORY_CURRENT_FILE), parse_single_value).ok()
        })
        .sum();
    Ok(BudgetState {
        limit_bytes,
        charged_outside_actions: current.saturating_sub(in_actions),
    })
}

/// The action cgroups present in `actions`.
pub fn action_cgroups(actions: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(actions)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
                .map(|entry| entry.path())
                .filter(|path| !path.ends_with(super::limits::PROBE_CGROUP))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::test_support::write_files;

    fn local_events(oom: u64) -> String {
        format!("low 0\nhigh 0\nmax 3\noom {oom}\noom_kill 0\noom_group_kill 0\n")
    }

    #[test]
    fn the_lowest_budget_whose_own_oom_grew_is_found() {
        // Why it matters: the hierarchical count of the parent also moves
        // for a sibling's own-limit OOM; only the local one says the parent
        // itself ran out.
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("pod");
        let actions = parent.join("actions");
        write_files(
            dir.path(),
            &[
                ("pod/memory.events.local", &local_events(1)),
                ("pod/actions/memory.events.local", &local_events(0)),
            ],
        );
        let budgets = budgets_above(&actions, &parent, dir.path());
        assert_eq!(budgets, [actions.clone(), parent.clone()]);
        let before = local_ooms(&budgets);
        assert_eq!(before, [Some(0), Some(1)]);
        write_files(dir.path(), &[("pod/memory.events.local", &local_events(2))]);
        let after = local_ooms(&budgets);
        assert_eq!(
            lowest_grown(&budgets, &before, &after),
            Some(parent.as_path())
        );
        assert_eq!(lowest_grown(&budgets, &before, &before), None);
    }

    #[test]
    fn a_container_cgroup_counts_when_readable() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), &[("memory.events.local", &local_events(0))]);
        let parent = dir.path().join("runner-parent");
        let budgets = budgets_above(&parent.join("actions"), &parent, dir.path());
        assert_eq!(budgets.len(), 3);
        assert_eq!(budgets[2], dir.path());
    }

    #[test]
    fn what_is_charged_outside_the_actions_is_the_rest_of_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        write_files(
            dir.path(),
            &[
                ("memory.max", "134217728\n"),
                ("memory.current", "100000000\n"),
                ("actions/a-1/memory.current", "60000000\n"),
                ("actions/a-2/memory.current", "30000000\n"),
                ("actions/limits-probe/memory.current", "5\n"),
            ],
        );
        let state = budget_state(dir.path(), &dir.path().join("actions")).unwrap();
        assert_eq!(
            state,
            BudgetState {
                limit_bytes: 128 << 20,
                charged_outside_actions: 10_000_000,
            }
        );
        assert_eq!(action_cgroups(&dir.path().join("actions")).len(), 2);
    }

    #[test]
    fn limit_counters_grow_or_are_zero() {
        let dir = tempfile::tempdir().unwrap();
        write_files(
            dir.path(),
            &[
                ("pids.events", "max 2\n"),
                (
                    "cpu.stat",
                    "usage_usec 10\nnr_periods 5\nnr_throttled 1\nthrottled_usec 700\n",
                ),
            ],
        );
        let before = LimitCounters::read(dir.path()).unwrap();
        write_files(
            dir.path(),
            &[
                ("pids.events", "max 9\n"),
                (
                    "cpu.stat",
                    "usage_usec 90\nnr_periods 50\nnr_throttled 11\nthrottled_usec 5700\n",
                ),
            ],
        );
        let delta = LimitCounters::read(dir.path()).unwrap().since(&before);
        assert_eq!(delta.pids_events_max, Some(7));
        assert_eq!(delta.cpu_nr_throttled, Some(10));
        assert_eq!(delta.cpu_throttled_micros, Some(5000));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            LimitCounters::read(empty.path()).unwrap(),
            LimitCounters::default()
        );
    }
}
