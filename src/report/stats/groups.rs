//! Grouping actions (by program, or all in one) and each group's
//! distributions.

use super::super::parse::Stall;
use super::actions::Action;
use super::{nearest_rank, sorted};

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

pub(super) fn group_stats(names: &[String], actions: &[Action]) -> Vec<GroupStats> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
