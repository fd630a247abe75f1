//! The statistics of a report: tallies, per-group distributions, and the
//! sizing answers that come from overlapping actions.
//!
//! Records stream in through [`Analysis::add`]; only what the figures
//! need is kept: a compact [`Action`] per finished action (percentiles
//! need every value), the argv of actions still running, and the ten
//! largest and longest actions with their argv. Memory therefore grows
//! with the number of actions, not with the size of their argv or of the
//! journal.

use std::collections::{BTreeMap, HashMap};

use super::parse::{Finished, Record, RunnerState, Skipped, Stall, Started};
use crate::action::ActionResult;
use crate::cgroup::attribution::OomVerdict;
use crate::metrics::go_code_name;

/// How many of the largest and longest actions are listed.
pub const TOP: usize = 10;

/// The group of actions that did not start (failed before spawn).
pub const NOT_STARTED: &str = "(not started)";

/// How actions are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// By program: `basename(argv[0])`, or the first word of a shell
    /// script.
    Program,
    /// All in one group.
    None,
}

/// The group of an action with this argv, by program: `basename(argv[0])`
/// (`javac`, `clang`), or for `sh|bash|dash -c SCRIPT` the first word of
/// the script after variable assignments and `exec`.
pub fn program_group(arguments: &[String]) -> String {
    let Some(program) = arguments.first() else {
        return "(no argv)".into();
    };
    let program = basename(program);
    let shell = matches!(program, "sh" | "bash" | "dash");
    let script_option = arguments.get(1).is_some_and(|option| {
        option.len() > 1
            && option.starts_with('-')
            && option[1..].bytes().all(|b| b.is_ascii_alphabetic())
            && option.contains('c')
    });
    if shell && script_option {
        let first_word = arguments.get(2).and_then(|script| {
            script
                .split_whitespace()
                .find(|word| *word != "exec" && !word.contains('='))
        });
        if let Some(word) = first_word {
            return basename(word).to_string();
        }
    }
    program.to_string()
}

fn basename(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((_, name)) if !name.is_empty() => name,
        _ if trimmed.is_empty() => path,
        _ => trimmed,
    }
}

/// The value at percentile `percentile` (0–100] of `sorted` (ascending),
/// by nearest rank: the smallest value with at least that share of the
/// values at or below it. `None` for no values.
pub fn nearest_rank(sorted: &[f64], percentile: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percentile / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One finished action, as kept for the figures.
#[derive(Debug, Clone)]
pub struct Action {
    /// Index into the report's runner instances.
    pub runner: usize,
    /// Index into the groups.
    pub group: usize,
    /// Start and end, seconds since the epoch.
    pub start: f64,
    /// See `start`.
    pub end: f64,
    /// Wall time in seconds.
    pub wall_seconds: f64,
    /// The cgroup's memory peak, else the POSIX maximum RSS.
    pub memory_bytes: Option<i64>,
    /// Whether `memory_bytes` is the POSIX maximum RSS.
    pub memory_from_rss: bool,
    /// User plus system CPU seconds.
    pub cpu_seconds: Option<f64>,
    /// PSI `some` totals.
    pub stall: Option<Stall>,
    /// Whose limit an OOM kill hit.
    pub oom_verdict: OomVerdict,
}

/// One of the largest or longest actions.
#[derive(Debug, Clone, PartialEq)]
pub struct TopAction {
    /// Its id.
    pub action_id: String,
    /// Its group.
    pub program: String,
    /// Its argv (empty when it did not start).
    pub arguments: Vec<String>,
    /// See [`Action`].
    pub memory_bytes: Option<i64>,
    /// See [`Action`].
    pub memory_from_rss: bool,
    /// Wall time in seconds.
    pub wall_seconds: f64,
}

/// A runner instance seen in the journals.
#[derive(Debug, Clone, Default)]
pub struct Runner {
    /// 8 hex digits.
    pub instance: String,
    /// `events.runnerName` from its last `RunnerState`.
    pub name: String,
    /// The budget from its last `RunnerState`; 0: none or unknown.
    pub memory_budget_bytes: i64,
}

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
    running: HashMap<(String, String), (usize, Vec<String>)>,
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
            Record::Finished(finished) => self.finished(*finished),
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
            GroupBy::Program => program_group(&started.arguments),
            GroupBy::None => "(all)".into(),
        };
        let group = self.group(group);
        self.running.insert(
            (started.instance, started.action_id),
            (group, started.arguments),
        );
    }

    fn group(&mut self, name: String) -> usize {
        if let Some(&index) = self.group_index.get(&name) {
            return index;
        }
        self.groups.push(name.clone());
        self.group_index.insert(name, self.groups.len() - 1);
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
                    GroupBy::Program => NOT_STARTED.to_string(),
                    GroupBy::None => "(all)".to_string(),
                };
                (self.group(name), Vec::new())
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
            runner: self.runner(&finished.instance),
            group,
            start: finished.time - finished.wall_seconds,
            end: finished.time,
            wall_seconds: finished.wall_seconds,
            memory_bytes,
            memory_from_rss: memory_from_rss && memory_bytes.is_some(),
            cpu_seconds: finished.usage.cpu_seconds,
            stall: finished.usage.stall,
            oom_verdict: finished.oom_verdict,
        };
        let top = TopAction {
            action_id: finished.action_id,
            program: self.groups[group].clone(),
            arguments,
            memory_bytes: action.memory_bytes,
            memory_from_rss: action.memory_from_rss,
            wall_seconds: action.wall_seconds,
        };
        keep_top(&mut self.top_wall, &top, |top| top.wall_seconds);
        if top.memory_bytes.is_some() {
            keep_top(&mut self.top_memory, &top, |top| {
                top.memory_bytes.unwrap_or(0) as f64
            });
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

    /// The figures.
    pub fn finish(self, headroom: f64) -> Report {
        let mut per_runner: Vec<Vec<usize>> = vec![Vec::new(); self.runners.len()];
        for (index, action) in self.actions.iter().enumerate() {
            per_runner[action.runner].push(index);
        }
        let mut concurrency = vec![1u32; self.actions.len()];
        let runners: Vec<RunnerSizing> = per_runner
            .iter()
            .zip(&self.runners)
            .filter(|(indices, _)| !indices.is_empty())
            .map(|(indices, runner)| {
                sweep(&self.actions, indices, &mut concurrency, runner, headroom)
            })
            .collect();
        let memory = sorted(
            self.actions
                .iter()
                .filter_map(|a| a.memory_bytes.map(|m| m as f64)),
        );
        let knee_table = stall_by_concurrency(&self.actions, &concurrency);
        let peak_memory = runners.iter().map(|r| r.peak_concurrent_memory_bytes).max();
        let sizing = Sizing {
            memory_max_p99_bytes: nearest_rank(&memory, 99.0).map(|v| v as i64),
            memory_max_p100_bytes: nearest_rank(&memory, 100.0).map(|v| v as i64),
            peak_concurrent_memory_bytes: peak_memory,
            pod_memory_bytes: peak_memory.map(|peak| with_headroom(peak, headroom)),
            peak_concurrent_cpu_cores: runners
                .iter()
                .map(|r| r.peak_concurrent_cpu_cores)
                .reduce(f64::max),
            cpu_pressure_knee: knee(&knee_table),
            headroom,
        };
        let first_time = self.actions.iter().map(|a| a.start).reduce(f64::min);
        let last_time = self.actions.iter().map(|a| a.end).reduce(f64::max);
        Report {
            groups: group_stats(&self.groups, &self.actions),
            memory_bytes: memory,
            wall_seconds: sorted(self.actions.iter().map(|a| a.wall_seconds)),
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

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values
}

fn with_headroom(bytes: i64, headroom: f64) -> i64 {
    (bytes as f64 * (1.0 + headroom)).ceil() as i64
}

/// Keeps `top` the `TOP` largest by `key`, largest first.
fn keep_top(top: &mut Vec<TopAction>, candidate: &TopAction, key: impl Fn(&TopAction) -> f64) {
    if top.len() == TOP && top.last().is_some_and(|last| key(last) >= key(candidate)) {
        return;
    }
    let position = top
        .iter()
        .position(|entry| key(entry) < key(candidate))
        .unwrap_or(top.len());
    top.insert(position, candidate.clone());
    top.truncate(TOP);
}

/// Everything a report shows.
#[derive(Debug)]
pub struct Report {
    /// The summary's counts.
    pub tallies: Tallies,
    /// First start and last end of the actions, seconds since the epoch.
    pub span: Option<(f64, f64)>,
    /// Per group, largest count first.
    pub groups: Vec<GroupStats>,
    /// Every action's memory figure, ascending (for histograms).
    pub memory_bytes: Vec<f64>,
    /// Every action's wall time, ascending.
    pub wall_seconds: Vec<f64>,
    /// The sizing answers.
    pub sizing: Sizing,
    /// Per runner instance that ran actions.
    pub runners: Vec<RunnerSizing>,
    /// Median CPU-stall share by concurrency.
    pub knee_table: Vec<ConcurrencyStall>,
    /// The largest actions by memory, largest first.
    pub top_memory: Vec<TopAction>,
    /// The longest actions, longest first.
    pub top_wall: Vec<TopAction>,
    /// Lines not used.
    pub skipped: Skipped,
}

/// One group's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStats {
    /// The program (or `(all)`).
    pub program: String,
    /// Finished actions.
    pub count: u64,
    /// Wall time p50, p95, max.
    pub wall_seconds: [f64; 3],
    /// Memory peak p50, p95, p99, max; `None` when nothing was measured.
    pub memory_bytes: Option<[i64; 4]>,
    /// Whether any memory figure is the POSIX maximum RSS.
    pub memory_from_rss: bool,
    /// Total user plus system CPU seconds.
    pub cpu_seconds: f64,
    /// PSI `some` ÷ wall over the actions with cgroup usage; `None`
    /// without any.
    pub stall_share: Option<Stall>,
}

fn group_stats(names: &[String], actions: &[Action]) -> Vec<GroupStats> {
    let mut members: Vec<Vec<&Action>> = vec![Vec::new(); names.len()];
    for action in actions {
        members[action.group].push(action);
    }
    let mut groups: Vec<GroupStats> = names
        .iter()
        .zip(members)
        .filter(|(_, members)| !members.is_empty())
        .map(|(name, members)| one_group(name, &members))
        .collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.program.cmp(&b.program)));
    groups
}

fn one_group(name: &str, members: &[&Action]) -> GroupStats {
    let walls = sorted(members.iter().map(|a| a.wall_seconds));
    let percentiles = |sorted: &[f64], list: &[f64]| -> Vec<f64> {
        list.iter()
            .filter_map(|&p| nearest_rank(sorted, p))
            .collect()
    };
    let wall = percentiles(&walls, &[50.0, 95.0, 100.0]);
    let memory = sorted(
        members
            .iter()
            .filter_map(|a| a.memory_bytes.map(|m| m as f64)),
    );
    let memory = percentiles(&memory, &[50.0, 95.0, 99.0, 100.0]);
    let mut stall = Stall::default();
    let mut stalled_wall = 0.0;
    for action in members {
        if let Some(action_stall) = action.stall {
            stall.cpu += action_stall.cpu;
            stall.memory += action_stall.memory;
            stall.io += action_stall.io;
            stalled_wall += action.wall_seconds;
        }
    }
    let measured = members.iter().any(|a| a.stall.is_some()) && stalled_wall > 0.0;
    GroupStats {
        program: name.to_string(),
        count: members.len() as u64,
        wall_seconds: [wall[0], wall[1], wall[2]],
        memory_bytes: (memory.len() == 4).then(|| {
            [
                memory[0] as i64,
                memory[1] as i64,
                memory[2] as i64,
                memory[3] as i64,
            ]
        }),
        memory_from_rss: members.iter().any(|a| a.memory_from_rss),
        // Folded from +0.0: an empty f64 sum is -0.0, printed "-0".
        cpu_seconds: members
            .iter()
            .filter_map(|a| a.cpu_seconds)
            .fold(0.0, |sum, cpu| sum + cpu),
        stall_share: measured.then(|| Stall {
            cpu: stall.cpu / stalled_wall,
            memory: stall.memory / stalled_wall,
            io: stall.io / stalled_wall,
        }),
    }
}

/// The sizing answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    /// The per-action `memoryMax` that would have held 99 % of actions.
    pub memory_max_p99_bytes: Option<i64>,
    /// … and all of them.
    pub memory_max_p100_bytes: Option<i64>,
    /// The largest, over runner instances, peak of summed memory peaks
    /// of concurrent actions (an upper bound: peaks need not coincide).
    pub peak_concurrent_memory_bytes: Option<i64>,
    /// That with the headroom.
    pub pod_memory_bytes: Option<i64>,
    /// The largest peak summed CPU rate of concurrent actions, in cores.
    pub peak_concurrent_cpu_cores: Option<f64>,
    /// The smallest concurrency whose median CPU-stall share is at least
    /// twice that at concurrency 1 (and above zero).
    pub cpu_pressure_knee: Option<u32>,
    /// The headroom used for `pod_memory_bytes` (0.25: 25 %).
    pub headroom: f64,
}

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

/// Walks one runner's actions in time order (an end before a start at
/// the same instant: intervals are half-open), summing the memory and
/// CPU rate of those running, and records for each action the most
/// actions that ran at once during its life.
fn sweep(
    actions: &[Action],
    indices: &[usize],
    concurrency: &mut [u32],
    runner: &Runner,
    headroom: f64,
) -> RunnerSizing {
    let mut changes: Vec<(f64, bool, usize)> = Vec::with_capacity(indices.len() * 2);
    for &index in indices {
        changes.push((actions[index].start, true, index));
        changes.push((actions[index].end, false, index));
    }
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
    for (time, starts, index) in changes {
        let action = &actions[index];
        let action_memory = action.memory_bytes.unwrap_or(0);
        if starts {
            running.push(index);
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
            if let Some(position) = running.iter().position(|&r| r == index) {
                running.swap_remove(position);
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

fn stall_by_concurrency(actions: &[Action], concurrency: &[u32]) -> Vec<ConcurrencyStall> {
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
        .map(|(level, mut shares)| {
            shares.sort_by(f64::total_cmp);
            ConcurrencyStall {
                concurrency: level,
                actions: shares.len() as u64,
                median_cpu_stall_share: nearest_rank(&shares, 50.0).unwrap_or(0.0),
            }
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
    use super::super::parse::read_journal;
    use super::*;
    use serde_json::json;

    /// Seconds since the epoch of the synthetic journals' start.
    const T0: i64 = 1_767_225_600;

    fn time(offset: f64) -> String {
        super::super::json::rfc3339(T0 as f64 + offset)
    }

    fn started(instance: &str, id: &str, at: f64, argv: &[&str]) -> String {
        json!({"sequence": "1", "time": time(at), "runnerInstance": instance,
               "actionStarted": {"actionId": id, "arguments": argv, "inputRootDirectory": "",
                                 "pid": "1", "cgroup": ""}})
        .to_string()
    }

    /// What a synthetic action measured.
    #[derive(Default)]
    struct Measured {
        memory_peak: Option<i64>,
        max_rss: i64,
        cpu_seconds: f64,
        cpu_stall: Option<f64>,
        verdict: &'static str,
        code: i32,
        exit_code: i64,
    }

    fn finished(instance: &str, id: &str, end: f64, wall: f64, measured: Measured) -> String {
        let mut usage = vec![json!({
            "@type": "type.googleapis.com/buildbarn.resourceusage.POSIXResourceUsage",
            "userTime": format!("{}s", measured.cpu_seconds), "systemTime": "0s",
            "maximumResidentSetSize": measured.max_rss.to_string(),
        })];
        if let Some(peak) = measured.memory_peak {
            usage.push(json!({
                "@type": "type.googleapis.com/buildbarn.resourceusage.CgroupResourceUsage",
                "memoryPeak": peak.to_string(),
                "cpuPressureSomeTotal": format!("{}s", measured.cpu_stall.unwrap_or(0.0)),
                "memoryPressureSomeTotal": "0s", "ioPressureSomeTotal": "0s",
            }));
        }
        let verdict = if measured.verdict.is_empty() {
            "OOM_VERDICT_NONE"
        } else {
            measured.verdict
        };
        json!({"sequence": "2", "time": time(end), "runnerInstance": instance,
               "actionFinished": {"actionId": id, "exitCode": measured.exit_code.to_string(),
                   "status": {"code": measured.code, "message": "", "details": []},
                   "resourceUsage": usage, "wallTime": format!("{wall}s"),
                   "oomVerdict": verdict, "terminationReason": "TERMINATION_REASON_NONE"}})
        .to_string()
    }

    /// One action from `start` to `end` with a cgroup memory peak and
    /// CPU seconds.
    fn action(
        instance: &str,
        id: &str,
        start: f64,
        end: f64,
        program: &str,
        memory: i64,
        cpu: f64,
    ) -> String {
        let measured = Measured {
            memory_peak: Some(memory),
            max_rss: memory / 2,
            cpu_seconds: cpu,
            ..Measured::default()
        };
        format!(
            "{}\n{}\n",
            started(instance, id, start, &[program]),
            finished(instance, id, end, end - start, measured)
        )
    }

    fn analyse(journal: &str, group_by: GroupBy, cutoff: Option<f64>) -> Report {
        let mut analysis = Analysis::new(group_by, cutoff);
        let mut skipped = Skipped::default();
        read_journal(journal.as_bytes(), &mut skipped, |record| {
            analysis.add(record)
        })
        .unwrap();
        analysis.skipped = skipped;
        analysis.finish(0.25)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        // Why it matters: analysts compare these with other tools; nearest
        // rank always names a value that was measured.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&ten, 50.0), Some(5.0));
        assert_eq!(nearest_rank(&ten, 95.0), Some(10.0));
        assert_eq!(nearest_rank(&ten, 90.0), Some(9.0));
        assert_eq!(nearest_rank(&ten, 100.0), Some(10.0));
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0], 25.0), Some(1.0));
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(nearest_rank(&[7.0], 99.0), Some(7.0));
        assert_eq!(nearest_rank(&[], 50.0), None);
    }

    #[test]
    fn actions_are_grouped_by_program_or_the_first_word_of_a_shell_script() {
        let group =
            |argv: &[&str]| program_group(&argv.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert_eq!(group(&["/usr/bin/javac", "-d", "out"]), "javac");
        assert_eq!(group(&["clang"]), "clang");
        assert_eq!(
            group(&["sh", "-c", "FOO=1 exec /usr/bin/clang -c x.c"]),
            "clang"
        );
        assert_eq!(
            group(&["/bin/bash", "-ec", "python3 gen.py > out"]),
            "python3"
        );
        assert_eq!(group(&["dash", "script.sh"]), "dash");
        assert_eq!(group(&["sh", "-c", "  "]), "sh");
        assert_eq!(group(&[]), "(no argv)");
    }

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

    #[test]
    fn the_top_lists_keep_the_ten_largest_largest_first() {
        let journal: String = (0..25)
            .map(|i| {
                action(
                    "aaaaaaaa",
                    &format!("a{i}"),
                    f64::from(i),
                    f64::from(i) + f64::from(i % 7) + 1.0,
                    "cc",
                    i64::from(i * 100),
                    0.0,
                )
            })
            .collect();
        let report = analyse(&journal, GroupBy::Program, None);
        let memory: Vec<i64> = report
            .top_memory
            .iter()
            .filter_map(|t| t.memory_bytes)
            .collect();
        assert_eq!(
            memory,
            [2400, 2300, 2200, 2100, 2000, 1900, 1800, 1700, 1600, 1500]
        );
        assert_eq!(report.top_wall.len(), TOP);
        assert_eq!(report.top_wall[0].wall_seconds, 7.0);
        assert_eq!(report.top_memory[0].arguments, ["cc"]);
    }
}
