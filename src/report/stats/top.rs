//! The largest and longest actions, listed with their argv.

/// How many of the largest and longest actions are listed.
pub const TOP: usize = 10;

/// One of the largest or longest actions.
#[derive(Debug, Clone, PartialEq)]
pub struct TopAction {
    /// Its id.
    pub action_id: String,
    /// Its group.
    pub program: String,
    /// Its argv (empty when it did not start).
    pub arguments: Vec<String>,
    /// See [`super::actions::Action`].
    pub memory_bytes: Option<i64>,
    /// See [`super::actions::Action`].
    pub memory_from_rss: bool,
    /// Wall time in seconds.
    pub wall_seconds: f64,
}

/// Whether an action whose `key` is `value` enters `top`, the `TOP`
/// largest by `key`.
pub(super) fn enters_top(top: &[TopAction], value: f64, key: impl Fn(&TopAction) -> f64) -> bool {
    !(top.len() == TOP && top.last().is_some_and(|last| key(last) >= value))
}

/// Keeps `top` the `TOP` largest by `key`, largest first.
pub(super) fn keep_top(
    top: &mut Vec<TopAction>,
    candidate: &TopAction,
    key: impl Fn(&TopAction) -> f64,
) {
    if !enters_top(top, key(candidate), &key) {
        return;
    }
    let position = top
        .iter()
        .position(|entry| key(entry) < key(candidate))
        .unwrap_or(top.len());
    top.insert(position, candidate.clone());
    top.truncate(TOP);
}

#[cfg(test)]
mod tests {
    use super::super::test_journal::*;
    use super::super::GroupBy;
    use super::*;

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
