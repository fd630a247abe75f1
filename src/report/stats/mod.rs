//! The statistics of a report: tallies, per-group distributions, and the
//! sizing answers that come from overlapping actions.
//!
//! Records stream in through [`Analysis::add`]; only what the figures
//! need is kept: a compact [`actions::Action`] per finished action (percentiles
//! need every value), the argv of actions still running, and the ten
//! largest and longest actions with their argv. Memory therefore grows
//! with the number of actions, not with the size of their argv or of the
//! journal.
//!
//! - [`analysis`]: the stream of records → what is kept, and at the end
//!   the [`Report`].
//! - [`actions`]: what is kept of each finished action and each runner.
//! - [`groups`]: grouping by program and each group's distributions.
//! - [`top`]: the largest and longest actions, with their argv.
//! - [`concurrency`]: overlapping actions per runner: concurrent sums,
//!   the timeline, and the CPU-pressure knee.
//! - here: what a report shows, and nearest-rank percentiles.

pub mod actions;
pub mod analysis;
pub mod concurrency;
pub mod groups;
#[cfg(test)]
mod test_journal;
pub mod top;

pub use analysis::{Analysis, Tallies};
pub use concurrency::{ConcurrencyStall, RunnerSizing, TIMELINE_POINTS};
pub use groups::{program_group, GroupBy, GroupStats, NOT_STARTED};
pub use top::{TopAction, TOP};

use super::parse::Skipped;

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

/// The values at `percentiles` of `values` by nearest rank, as
/// [`nearest_rank`] gives them from the values sorted, but found by
/// selection (linear, where sorting is not): `values` is left reordered.
/// `None` for no values.
pub fn nearest_ranks<const N: usize>(
    values: &mut [f64],
    percentiles: [f64; N],
) -> Option<[f64; N]> {
    if values.is_empty() {
        return None;
    }
    let length = values.len();
    Some(percentiles.map(|percentile| {
        let rank = (percentile / 100.0 * length as f64).ceil() as usize;
        *values
            .select_nth_unstable_by(rank.clamp(1, length) - 1, f64::total_cmp)
            .1
    }))
}

pub(super) fn with_headroom(bytes: i64, headroom: f64) -> i64 {
    (bytes as f64 * (1.0 + headroom)).ceil() as i64
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
    /// Every action's memory figure, in no order (for histograms).
    pub memory_bytes: Vec<f64>,
    /// Every action's wall time, in no order.
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut shuffled = [7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0];
        assert_eq!(
            nearest_ranks(&mut shuffled, [50.0, 95.0, 90.0, 100.0, 1.0]),
            Some([5.0, 10.0, 9.0, 10.0, 1.0])
        );
        assert_eq!(nearest_ranks(&mut [], [50.0]), None);
    }
}
