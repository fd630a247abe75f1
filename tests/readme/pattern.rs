//! Output compared by pattern, not verbatim: what the README shows of a
//! command's output must be there, in order, while timestamps, pids, ids
//! and lines it leaves out may differ.
//!
//! Each non-empty line of the pattern must match a whole line of the
//! output, later than the line the previous pattern line matched. In a
//! pattern line `…` stands for any text (also none); a line that is only
//! `…` says that lines were left out and matches nothing itself. Other
//! output lines (cargo's build lines, say) are allowed between matches.

/// Whether `line` matches the single-line pattern `pattern`.
pub fn line_matches(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split('…');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Checks `output` against the multi-line `pattern`; the error names the
/// first pattern line not found, in order.
pub fn check(pattern: &[String], output: &str) -> Result<(), String> {
    let mut lines = output.lines();
    for wanted in pattern.iter().map(|line| line.trim_end()) {
        if wanted.is_empty() || wanted.trim() == "…" {
            continue;
        }
        if !lines.any(|line| line_matches(wanted, line.trim_end())) {
            return Err(format!("no line (in order) matches {wanted:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why it matters: `…` must absorb exactly the parts that vary.
    #[test]
    fn an_ellipsis_stands_for_any_text() {
        assert!(line_matches("a…c", "abc"));
        assert!(line_matches("a…c", "ac"));
        assert!(line_matches("…serving…", "2026 INFO serving listeners"));
        assert!(line_matches("x", "x"));
        assert!(!line_matches("x", "xy"));
        assert!(!line_matches("a…c", "abd"));
        assert!(!line_matches("ab…ba", "aba"));
        assert!(line_matches(
            "{\"exitCode\":3,…}",
            "{\"exitCode\":3,\"x\":1}"
        ));
    }

    /// Why it matters: a README line missing from the output must fail the
    /// check, and the order must hold.
    #[test]
    fn pattern_lines_must_appear_in_order() {
        let output = "Compiling\nfirst\nnoise\nsecond\n";
        let pattern = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        assert!(check(&pattern(&["first", "…", "second"]), output).is_ok());
        assert!(check(&pattern(&["second", "first"]), output).is_err());
        let error = check(&pattern(&["third"]), output).unwrap_err();
        assert!(error.contains("third"), "{error}");
    }
}
