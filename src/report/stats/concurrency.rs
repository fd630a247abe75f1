//! Overlapping actions, per runner instance: the concurrent sums of
//! memory and CPU, the memory timeline, and the CPU-pressure knee.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;

use super::actions::{Action, Runner};
use super::{nearest_ranks, with_headroom};
use crate::cgroup::attribution::OomVerdict;

/// One runner instance's concurrency figures.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerSizing {
    /// The instance, its name and budget.
    pub instance: String,
    /// See [`Runner`].
    pub name: String,
    /// See [`Runner`].
    pub memory_budget_bytes: i64,
    /// The most actions running at once.
    pub peak_concurrency: u32,
    /// Peak of the summed memory figures of running actions.
    pub peak_concurrent_memory_bytes: i64,
    /// That with the headroom.
    pub pod_memory_bytes: i64,
    /// Peak of the summed CPU rates (CPU seconds ÷ wall) of running
    /// actions.
    pub peak_concurrent_cpu_cores: f64,
    /// Summed memory after each change: (time, bytes), at most
    /// [`TIMELINE_POINTS`] points (each the largest sum in its slice of
    /// time when there were more changes).
    pub timeline: Vec<(f64, i64)>,
    /// OOM kills: (end time, summed memory then, verdict).
    pub oom_kills: Vec<(f64, i64, OomVerdict)>,
}

/// The most points a timeline keeps.
pub const TIMELINE_POINTS: usize = 1500;

/// Each runner's concurrency figures, and for each action the most
/// actions that ran at once during its life. Runners are swept on up
/// to one thread per core, each taking the next runner: one runner's
/// sweep needs memory in proportion to its actions, so no more are
/// swept at once.
pub(super) fn sweeps(
    actions: &[Action],
    runners: &[Runner],
    headroom: f64,
) -> (Vec<RunnerSizing>, Vec<u32>) {
    let mut per_runner: Vec<Vec<usize>> = vec![Vec::new(); runners.len()];
    for (index, action) in actions.iter().enumerate() {
        per_runner[action.runner as usize].push(index);
    }
    let swept: Vec<_> = per_runner
        .iter()
        .zip(runners)
        .filter(|(indices, _)| !indices.is_empty())
        .map(|(indices, runner)| (indices, runner, Mutex::new(None)))
        .collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let Some((indices, runner, result)) = swept.get(next.fetch_add(1, Ordering::Relaxed))
        else {
            return;
        };
        let mut concurrency = vec![1u32; indices.len()];
        let sizing = sweep(actions, indices, &mut concurrency, runner, headroom);
        *result.lock().unwrap_or_else(PoisonError::into_inner) = Some((sizing, concurrency));
    };
    let threads = thread::available_parallelism().map_or(1, |cores| cores.get());
    thread::scope(|scope| {
        for _ in 1..threads.min(swept.len()) {
            scope.spawn(work);
        }
        work();
    });
    let mut concurrency = vec![1u32; actions.len()];
    let mut sizings = Vec::with_capacity(swept.len());
    for (indices, _, result) in swept {
        let (sizing, levels) = result
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .expect("every runner is swept");
        for (&index, level) in indices.iter().zip(levels) {
            concurrency[index] = level;
        }
        sizings.push(sizing);
    }
    (sizings, concurrency)
}

/// Walks one runner's actions (`indices`, in journal order) in time
/// order (an end before a start at the same instant: intervals are
/// half-open), summing the memory and CPU rate of those running, and
/// records for each action the most actions that ran at once during its
/// life in `concurrency` (one entry per index, all 1 at first).
fn sweep(
    actions: &[Action],
    indices: &[usize],
    concurrency: &mut [u32],
    runner: &Runner,
    headroom: f64,
) -> RunnerSizing {
    // Starts, then ends, each in journal order, which is nearly time
    // order: the stable sort finds these runs and merges them in close to
    // linear time. Changes at one instant stay in journal order.
    let mut changes: Vec<(f64, bool, usize)> = Vec::with_capacity(indices.len() * 2);
    changes.extend(
        indices
            .iter()
            .enumerate()
            .map(|(position, &index)| (actions[index].start(), true, position)),
    );
    changes.extend(
        indices
            .iter()
            .enumerate()
            .map(|(position, &index)| (actions[index].end, false, position)),
    );
    changes.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let rate = |action: &Action| match action.cpu_seconds {
        Some(cpu) if action.wall_seconds > 0.0 => cpu / action.wall_seconds,
        _ => 0.0,
    };
    let mut running: Vec<usize> = Vec::new();
    let (mut memory, mut cpu) = (0i64, 0.0f64);
    let mut sizing = RunnerSizing {
        instance: runner.instance.clone(),
        name: runner.name.clone(),
        memory_budget_bytes: runner.memory_budget_bytes,
        peak_concurrency: 0,
        peak_concurrent_memory_bytes: 0,
        pod_memory_bytes: 0,
        peak_concurrent_cpu_cores: 0.0,
        timeline: Vec::new(),
        oom_kills: Vec::new(),
    };
    let mut timeline = Vec::with_capacity(changes.len());
    for (time, starts, position) in changes {
        let action = &actions[indices[position]];
        let action_memory = action.memory_bytes.unwrap_or(0);
        if starts {
            running.push(position);
            memory += action_memory;
            cpu += rate(action);
            let now = running.len() as u32;
            for &other in &running {
                concurrency[other] = concurrency[other].max(now);
            }
            sizing.peak_concurrency = sizing.peak_concurrency.max(now);
            sizing.peak_concurrent_memory_bytes = sizing.peak_concurrent_memory_bytes.max(memory);
            sizing.peak_concurrent_cpu_cores = sizing.peak_concurrent_cpu_cores.max(cpu);
        } else {
            if action.oom_verdict != OomVerdict::None {
                sizing.oom_kills.push((time, memory, action.oom_verdict));
            }
            if let Some(at) = running.iter().position(|&r| r == position) {
                running.swap_remove(at);
            }
            memory -= action_memory;
            cpu = (cpu - rate(action)).max(0.0);
        }
        timeline.push((time, memory));
    }
    sizing.pod_memory_bytes = with_headroom(sizing.peak_concurrent_memory_bytes, headroom);
    sizing.timeline = thin(timeline);
    sizing
}

/// At most [`TIMELINE_POINTS`] points: the largest value in each slice
/// of time, so peaks survive.
fn thin(points: Vec<(f64, i64)>) -> Vec<(f64, i64)> {
    if points.len() <= TIMELINE_POINTS {
        return points;
    }
    let (first, last) = (points[0].0, points[points.len() - 1].0);
    let slice = (last - first) / (TIMELINE_POINTS - 1) as f64;
    let mut thinned: Vec<(f64, i64)> = Vec::with_capacity(TIMELINE_POINTS);
    for (time, value) in points {
        let bucket_start = first + ((time - first) / slice).floor() * slice;
        match thinned.last_mut() {
            Some(last) if last.0 == bucket_start => last.1 = last.1.max(value),
            _ => thinned.push((bucket_start, value)),
        }
    }
    thinned
}

/// The median CPU-stall share of the actions that ran at one concurrency.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyStall {
    /// The most actions running at once during these actions' lives.
    pub concurrency: u32,
    /// How many actions.
    pub actions: u64,
    /// Their median PSI `cpu some` ÷ wall (nearest rank).
    pub median_cpu_stall_share: f64,
}

pub(super) fn stall_by_concurrency(
    actions: &[Action],
    concurrency: &[u32],
) -> Vec<ConcurrencyStall> {
    let mut shares: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for (action, &level) in actions.iter().zip(concurrency) {
        if let Some(stall) = action.stall.filter(|_| action.wall_seconds > 0.0) {
            shares
                .entry(level)
                .or_default()
                .push(stall.cpu / action.wall_seconds);
        }
    }
    shares
        .into_iter()
        .map(|(level, mut shares)| ConcurrencyStall {
            concurrency: level,
            actions: shares.len() as u64,
            median_cpu_stall_share: nearest_ranks(&mut shares, [50.0])
                .map_or(0.0, |[median]| median),
        })
        .collect()
}

/// The smallest concurrency above 1 whose median CPU-stall share is at
/// least twice that at concurrency 1 and above zero; `None` without
/// actions that ran alone, or when no concurrency reaches it.
pub fn knee(table: &[ConcurrencyStall]) -> Option<u32> {
    let alone = table.iter().find(|row| row.concurrency == 1)?;
    table
        .iter()
        .filter(|row| row.concurrency > 1)
        .find(|row| {
            row.median_cpu_stall_share > 0.0
                && row.median_cpu_stall_share >= 2.0 * alone.median_cpu_stall_share
        })
        .map(|row| row.concurrency)
}

#[cfg(test)]
mod tests {
    use super::super::test_journal::*;
    use super::super::GroupBy;
    use super::*;

    #[test]
    fn the_concurrent_sums_come_from_overlapping_intervals_per_runner() {
        // Why it matters: the pod size follows from this sum. An action
        // that starts when another ends does not overlap it (half-open
        // intervals), and two runners never add up.
        let journal = [
            action("aaaaaaaa", "a1", 0.0, 10.0, "cc", 100, 5.0),
            action("aaaaaaaa", "a2", 5.0, 15.0, "cc", 200, 10.0),
            action("aaaaaaaa", "a3", 10.0, 20.0, "ld", 400, 20.0),
            action("bbbbbbbb", "b1", 0.0, 20.0, "ld", 1000, 2.0),
        ]
        .concat();
        let report = analyse(&journal, GroupBy::Program, None);
        let runner_a = &report.runners[0];
        assert_eq!(runner_a.instance, "aaaaaaaa");
        // At 10 s, a1 ends as a3 starts: a2 + a3 = 600, not 700.
        assert_eq!(runner_a.peak_concurrent_memory_bytes, 600);
        assert_eq!(runner_a.peak_concurrency, 2);
        // CPU rates 0.5, 1.0, 2.0 cores: a2 + a3 = 3.0 at 10 s.
        assert_eq!(runner_a.peak_concurrent_cpu_cores, 3.0);
        assert_eq!(report.runners[1].peak_concurrent_memory_bytes, 1000);
        assert_eq!(report.sizing.peak_concurrent_memory_bytes, Some(1000));
        assert_eq!(report.sizing.pod_memory_bytes, Some(1250));
        assert_eq!(report.sizing.peak_concurrent_cpu_cores, Some(3.0));
        // Peaks 100, 200, 400, 1000: p99 is the 4th of 4.
        assert_eq!(report.sizing.memory_max_p99_bytes, Some(1000));
        assert_eq!(report.sizing.memory_max_p100_bytes, Some(1000));
        let ld = report.groups.iter().find(|g| g.program == "ld").unwrap();
        assert_eq!(ld.count, 2);
        assert_eq!(ld.memory_bytes, Some([400, 1000, 1000, 1000]));
        assert_eq!(ld.wall_seconds, [10.0, 20.0, 20.0]);
        assert_eq!(ld.cpu_seconds, 22.0);
        assert!(!ld.memory_from_rss);
    }

    #[test]
    fn the_knee_is_the_first_concurrency_doubling_the_stall_of_actions_alone() {
        let row = |concurrency, share| ConcurrencyStall {
            concurrency,
            actions: 1,
            median_cpu_stall_share: share,
        };
        assert_eq!(
            knee(&[row(1, 0.1), row(2, 0.15), row(3, 0.2), row(4, 0.5)]),
            Some(3)
        );
        assert_eq!(knee(&[row(1, 0.1), row(2, 0.15)]), None);
        assert_eq!(knee(&[row(2, 0.5)]), None, "no action ran alone");
        assert_eq!(knee(&[row(1, 0.0), row(2, 0.0), row(3, 0.01)]), Some(3));
    }

    #[test]
    fn the_knee_is_found_from_a_journal() {
        // Alone: stalls of 1 s, 1 s, 3 s in 10 s (median 10 %). Then two
        // overlapping actions stalled 2 s and 4 s in 10 s (median 20 %).
        let stalled = |id: &str, start: f64, stall: f64| {
            let measured = Measured {
                memory_peak: Some(1),
                cpu_stall: Some(stall),
                ..Measured::default()
            };
            format!(
                "{}\n{}\n",
                started("aaaaaaaa", id, start, &["cc"]),
                finished("aaaaaaaa", id, start + 10.0, 10.0, measured)
            )
        };
        let journal = [
            stalled("a1", 0.0, 1.0),
            stalled("a2", 10.0, 1.0),
            stalled("a3", 20.0, 3.0),
            stalled("a4", 30.0, 2.0),
            stalled("a5", 35.0, 4.0),
        ]
        .concat();
        let report = analyse(&journal, GroupBy::None, None);
        let table: Vec<(u32, u64, f64)> = report
            .knee_table
            .iter()
            .map(|row| (row.concurrency, row.actions, row.median_cpu_stall_share))
            .collect();
        assert_eq!(table, [(1, 3, 0.1), (2, 2, 0.2)]);
        assert_eq!(report.sizing.cpu_pressure_knee, Some(2));
        assert_eq!(report.groups[0].program, "(all)");
        // 11 s stalled in 50 s of wall.
        assert_eq!(report.groups[0].stall_share.unwrap().cpu, 11.0 / 50.0);
    }
}
