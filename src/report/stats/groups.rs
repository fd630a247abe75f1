//! Grouping actions (by program, or all in one) and each group's
//! distributions.

use super::super::parse::Stall;
use super::actions::Action;
use super::nearest_ranks;

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
pub fn program_group<S: AsRef<str>>(arguments: &[S]) -> &str {
    let Some(program) = arguments.first() else {
        return "(no argv)";
    };
    let program = basename(program.as_ref());
    let shell = matches!(program, "sh" | "bash" | "dash");
    let script_option = arguments.get(1).map(AsRef::as_ref).is_some_and(|option| {
        option.len() > 1
            && option.starts_with('-')
            && option[1..].bytes().all(|b| b.is_ascii_alphabetic())
            && option.contains('c')
    });
    if shell && script_option {
        let first_word = arguments.get(2).and_then(|script| {
            script
                .as_ref()
                .split_whitespace()
                .find(|word| *word != "exec" && !word.contains('='))
        });
        if let Some(word) = first_word {
            return basename(word);
        }
    }
    program
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

/// Each group's figures, largest count first, from one pass over the
/// actions.
pub(super) fn group_stats(names: &[String], actions: &[Action]) -> Vec<GroupStats> {
    let mut sums: Vec<GroupSums> = names.iter().map(|_| GroupSums::default()).collect();
    for action in actions {
        sums[action.group as usize].add(action);
    }
    let mut groups: Vec<GroupStats> = names
        .iter()
        .zip(sums)
        .filter(|(_, sums)| !sums.walls.is_empty())
        .map(|(name, sums)| sums.finish(name))
        .collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.program.cmp(&b.program)));
    groups
}

/// What one group's figures are computed from.
#[derive(Default)]
struct GroupSums {
    walls: Vec<f64>,
    memory: Vec<f64>,
    memory_from_rss: bool,
    cpu_seconds: f64,
    /// PSI totals of the actions with cgroup measurements, and their wall
    /// time.
    stall: Option<(Stall, f64)>,
}

impl GroupSums {
    fn add(&mut self, action: &Action) {
        self.walls.push(action.wall_seconds);
        if let Some(memory) = action.memory_bytes {
            self.memory.push(memory as f64);
        }
        self.memory_from_rss |= action.memory_from_rss;
        if let Some(cpu) = action.cpu_seconds {
            self.cpu_seconds += cpu;
        }
        if let Some(action_stall) = action.stall {
            let (stall, wall) = self.stall.get_or_insert_default();
            stall.cpu += action_stall.cpu;
            stall.memory += action_stall.memory;
            stall.io += action_stall.io;
            *wall += action.wall_seconds;
        }
    }

    fn finish(mut self, name: &str) -> GroupStats {
        GroupStats {
            program: name.to_string(),
            count: self.walls.len() as u64,
            wall_seconds: nearest_ranks(&mut self.walls, [50.0, 95.0, 100.0]).unwrap_or_default(),
            memory_bytes: nearest_ranks(&mut self.memory, [50.0, 95.0, 99.0, 100.0])
                .map(|memory| memory.map(|bytes| bytes as i64)),
            memory_from_rss: self.memory_from_rss,
            cpu_seconds: self.cpu_seconds,
            stall_share: self
                .stall
                .filter(|&(_, wall)| wall > 0.0)
                .map(|(stall, wall)| Stall {
                    cpu: stall.cpu / wall,
                    memory: stall.memory / wall,
                    io: stall.io / wall,
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_grouped_by_program_or_the_first_word_of_a_shell_script() {
        let group = |argv: &[&str]| program_group(argv).to_string();
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
