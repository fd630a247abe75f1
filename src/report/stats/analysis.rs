//! The stream of records → what the figures need, then the [`Report`].

use std::collections::{BTreeMap, HashMap};
use std::thread;

use super::super::id::Id;
use super::super::parse::{Arguments, Finished, Record, RunnerState, Skipped, Started};
use super::actions::{Action, Runner};
use super::concurrency::{knee, stall_by_concurrency, sweeps};
use super::groups::{group_stats, GroupBy, NOT_STARTED};
use super::top::{enters_top, keep_top, TopAction};
use super::{nearest_ranks, with_headroom, Report, Sizing};
use crate::action::ActionResult;
use crate::cgroup::attribution::OomVerdict;
use crate::metrics::go_code_name;

/// The tallies of the summary, keyed by the label values the metrics use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tallies {
    /// Finished actions.
    pub actions: u64,
    /// By result class (`Success`, `NonZeroExitCode`, `Signal`, `Failure`).
    pub results: BTreeMap<&'static str, u64>,
    /// Failures by gRPC code, as Go spells it (`DeadlineExceeded`).
    pub failures: BTreeMap<&'static str, u64>,
    /// OOM kills by verdict (`OwnLimit`, `SharedLimit`, `NotOwnLimit`).
    pub oom_kills: BTreeMap<&'static str, u64>,
    /// Terminations by reason (`Deadline`, `Cancelled`, `Shutdown`).
    pub terminations: BTreeMap<&'static str, u64>,
    /// `CleanupFailed` events.
    pub cleanup_failures: u64,
}

/// What a stream of records leaves behind, ready for [`Analysis::finish`].
#[derive(Debug)]
pub struct Analysis {
    group_by: GroupBy,
    /// Finished actions before this time (seconds since the epoch) are
    /// left out (`--since`).
    cutoff: Option<f64>,
    /// Started, not yet finished: group and argv by (instance, id).
    running: HashMap<(Id, Id), (usize, Arguments)>,
    runner_index: HashMap<String, usize>,
    runners: Vec<Runner>,
    group_index: HashMap<String, usize>,
    groups: Vec<String>,
    actions: Vec<Action>,
    tallies: Tallies,
    top_memory: Vec<TopAction>,
    top_wall: Vec<TopAction>,
    /// Lines not used.
    pub skipped: Skipped,
}

impl Analysis {
    /// An empty analysis; `cutoff` leaves out actions that finished
    /// earlier.
    pub fn new(group_by: GroupBy, cutoff: Option<f64>) -> Self {
        Analysis {
            group_by,
            cutoff,
            running: HashMap::new(),
            runner_index: HashMap::new(),
            runners: Vec::new(),
            group_index: HashMap::new(),
            groups: Vec::new(),
            actions: Vec::new(),
            tallies: Tallies::default(),
            top_memory: Vec::new(),
            top_wall: Vec::new(),
            skipped: Skipped::default(),
        }
    }

    /// Takes in one record.
    pub fn add(&mut self, record: Record) {
        match record {
            Record::Started(started) => self.started(started),
            Record::Finished(finished) => self.finished(finished),
            Record::RunnerState(state) => self.runner_state(state),
            Record::CleanupFailed { time } => {
                if self.in_window(time) {
                    self.tallies.cleanup_failures += 1;
                }
            }
            Record::Terminating => {}
        }
    }

    fn in_window(&self, time: f64) -> bool {
        self.cutoff.is_none_or(|cutoff| time >= cutoff)
    }

    fn started(&mut self, started: Started) {
        let group = match self.group_by {
            GroupBy::Program => self.group(&started.program),
            GroupBy::None => self.group("(all)"),
        };
        self.running.insert(
            (started.instance, started.action_id),
            (group, started.arguments),
        );
    }

    fn group(&mut self, name: &str) -> usize {
        if let Some(&index) = self.group_index.get(name) {
            return index;
        }
        self.groups.push(name.to_string());
        self.group_index
            .insert(name.to_string(), self.groups.len() - 1);
        self.groups.len() - 1
    }

    fn runner(&mut self, instance: &str) -> usize {
        if let Some(&index) = self.runner_index.get(instance) {
            return index;
        }
        self.runners.push(Runner {
            instance: instance.to_string(),
            ..Runner::default()
        });
        self.runner_index
            .insert(instance.to_string(), self.runners.len() - 1);
        self.runners.len() - 1
    }

    fn runner_state(&mut self, state: RunnerState) {
        let index = self.runner(&state.instance);
        let runner = &mut self.runners[index];
        runner.name = state.runner_name;
        runner.memory_budget_bytes = state.memory_budget_bytes;
    }

    fn finished(&mut self, finished: Finished) {
        let key = (finished.instance.clone(), finished.action_id.clone());
        let (group, arguments) = match self.running.remove(&key) {
            Some(started) => started,
            None => {
                let name = match self.group_by {
                    GroupBy::Program => NOT_STARTED,
                    GroupBy::None => "(all)",
                };
                (self.group(name), Arguments::default())
            }
        };
        if !self.in_window(finished.time) {
            return;
        }
        self.count(&finished);
        let (memory_bytes, memory_from_rss) = match finished.usage.memory_peak_bytes {
            Some(peak) => (Some(peak), false),
            None => (finished.usage.max_rss_bytes, true),
        };
        let action = Action {
            runner: self.runner(&finished.instance) as u32,
            group: group as u32,
            end: finished.time,
            wall_seconds: finished.wall_seconds,
            memory_bytes,
            memory_from_rss: memory_from_rss && memory_bytes.is_some(),
            cpu_seconds: finished.usage.cpu_seconds,
            stall: finished.usage.stall,
            oom_verdict: finished.oom_verdict,
        };
        // Few actions make a top list: only those are written out whole.
        let wall_key = |top: &TopAction| top.wall_seconds;
        let memory_key = |top: &TopAction| top.memory_bytes.unwrap_or(0) as f64;
        let longest = enters_top(&self.top_wall, action.wall_seconds, wall_key);
        let largest = action
            .memory_bytes
            .is_some_and(|memory| enters_top(&self.top_memory, memory as f64, memory_key));
        if longest || largest {
            let top = TopAction {
                action_id: finished.action_id.to_string(),
                program: self.groups[group].clone(),
                arguments: arguments.to_vec(),
                memory_bytes: action.memory_bytes,
                memory_from_rss: action.memory_from_rss,
                wall_seconds: action.wall_seconds,
            };
            if longest {
                keep_top(&mut self.top_wall, &top, wall_key);
            }
            if largest {
                keep_top(&mut self.top_memory, &top, memory_key);
            }
        }
        self.actions.push(action);
    }

    fn count(&mut self, finished: &Finished) {
        let tallies = &mut self.tallies;
        tallies.actions += 1;
        let result = ActionResult::classify(finished.code, finished.exit_code);
        *tallies.results.entry(result.as_str()).or_default() += 1;
        if result == ActionResult::Failure {
            *tallies
                .failures
                .entry(go_code_name(finished.code))
                .or_default() += 1;
        }
        if finished.oom_verdict != OomVerdict::None {
            *tallies
                .oom_kills
                .entry(finished.oom_verdict.as_str())
                .or_default() += 1;
        }
        if let Some(reason) = finished.termination_reason {
            *tallies.terminations.entry(reason.as_str()).or_default() += 1;
        }
    }

    /// The figures. The sweep over each runner's actions in time order
    /// takes longest; the figures that need no order are computed
    /// meanwhile on a second thread.
    pub fn finish(self, headroom: f64) -> Report {
        let actions = &self.actions;
        let ((runners, concurrency), (groups, mut memory, walls)) = thread::scope(|scope| {
            let unordered = scope.spawn(|| {
                let memory: Vec<f64> = actions
                    .iter()
                    .filter_map(|a| a.memory_bytes.map(|m| m as f64))
                    .collect();
                let walls: Vec<f64> = actions.iter().map(|a| a.wall_seconds).collect();
                (group_stats(&self.groups, actions), memory, walls)
            });
            let sweeps = sweeps(actions, &self.runners, headroom);
            let unordered = unordered
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (sweeps, unordered)
        });
        let knee_table = stall_by_concurrency(actions, &concurrency);
        let peak_memory = runners.iter().map(|r| r.peak_concurrent_memory_bytes).max();
        let memory_max = nearest_ranks(&mut memory, [99.0, 100.0]);
        let sizing = Sizing {
            memory_max_p99_bytes: memory_max.map(|[p99, _]| p99 as i64),
            memory_max_p100_bytes: memory_max.map(|[_, p100]| p100 as i64),
            peak_concurrent_memory_bytes: peak_memory,
            pod_memory_bytes: peak_memory.map(|peak| with_headroom(peak, headroom)),
            peak_concurrent_cpu_cores: runners
                .iter()
                .map(|r| r.peak_concurrent_cpu_cores)
                .reduce(f64::max),
            cpu_pressure_knee: knee(&knee_table),
            headroom,
        };
        let first_time = actions.iter().map(Action::start).reduce(f64::min);
        let last_time = actions.iter().map(|a| a.end).reduce(f64::max);
        Report {
            groups,
            memory_bytes: memory,
            wall_seconds: walls,
            tallies: self.tallies,
            span: first_time.zip(last_time),
            sizing,
            runners,
            knee_table,
            top_memory: self.top_memory,
            top_wall: self.top_wall,
            skipped: self.skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::parse::Stall;
    use super::super::test_journal::*;
    use super::*;

    #[test]
    fn without_a_cgroup_measurement_memory_falls_back_to_max_rss_marked_so() {
        // Why it matters: runners without action cgroups still measure
        // the largest process, which is a lower bound; it must say so.
        let measured = Measured {
            max_rss: 5000,
            cpu_seconds: 1.0,
            ..Measured::default()
        };
        let journal = format!(
            "{}\n{}\n{}",
            started("aaaaaaaa", "a1", 0.0, &["python3"]),
            finished("aaaaaaaa", "a1", 2.0, 2.0, measured),
            action("aaaaaaaa", "a2", 3.0, 4.0, "python3", 3000, 0.5)
        );
        let report = analyse(&journal, GroupBy::Program, None);
        let group = &report.groups[0];
        assert_eq!(group.memory_bytes, Some([3000, 5000, 5000, 5000]));
        assert!(group.memory_from_rss);
        assert_eq!(report.top_memory[0].memory_bytes, Some(5000));
        assert!(report.top_memory[0].memory_from_rss);
        assert!(!report.top_memory[1].memory_from_rss);
        // Only a2 had PSI figures: its stall share alone counts.
        assert_eq!(group.stall_share, Some(Stall::default()));
    }

    #[test]
    fn tallies_use_the_metrics_label_names_and_since_drops_older_actions() {
        let failed = Measured {
            code: 4,
            ..Measured::default()
        };
        let signal = Measured {
            exit_code: -1,
            verdict: "OOM_VERDICT_SHARED_LIMIT",
            ..Measured::default()
        };
        let cancelled = Measured {
            code: 1,
            ..Measured::default()
        };
        let journal = format!(
            "{}\n{}\n{}\n{}\n{}",
            finished("aaaaaaaa", "old", 1.0, 1.0, Measured::default()),
            finished("aaaaaaaa", "f1", 100.0, 1.0, failed),
            finished("aaaaaaaa", "s1", 101.0, 1.0, signal),
            finished("aaaaaaaa", "c1", 102.0, 1.0, cancelled),
            action("aaaaaaaa", "ok", 100.0, 103.0, "cc", 10, 1.0),
        );
        let report = analyse(&journal, GroupBy::Program, Some(T0 as f64 + 50.0));
        let tallies = &report.tallies;
        assert_eq!(tallies.actions, 4);
        assert_eq!(
            tallies.results,
            BTreeMap::from([("Failure", 2), ("Signal", 1), ("Success", 1)])
        );
        assert_eq!(
            tallies.failures,
            BTreeMap::from([("Canceled", 1), ("DeadlineExceeded", 1)])
        );
        assert_eq!(tallies.oom_kills, BTreeMap::from([("SharedLimit", 1)]));
        assert_eq!(report.runners[0].oom_kills.len(), 1);
        let not_started = report
            .groups
            .iter()
            .find(|g| g.program == NOT_STARTED)
            .unwrap();
        assert_eq!(not_started.count, 3);
    }
}
