//! Pure parsers for the cgroup v2 interface files we read.
//!
//! Each parser takes the whole text of one file and returns either every
//! number it promises or an error naming the offending line. The kernel ends
//! every line of these files with a newline, so a text whose last line lacks
//! one was cut short (a short read, a file copied mid-write) and is rejected:
//! a cut in the middle of `total=1527` would otherwise read as `total=15`.
//! Callers attach the file's path (see [`super::counters`]).

use std::collections::HashSet;

/// Why a kernel file's text could not be read as the format we expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is empty; the kernel never produces an empty file of this kind.
    #[error("the file is empty")]
    Empty,
    /// The last line has no terminating newline, so it may have been cut short.
    #[error("line {line_number} is truncated (no trailing newline): {line:?}")]
    Truncated { line_number: usize, line: String },
    /// A line does not have the shape of the format.
    #[error("line {line_number} is malformed ({reason}): {line:?}")]
    MalformedLine {
        line_number: usize,
        line: String,
        reason: &'static str,
    },
    /// A value is not a non-negative decimal integer that fits in 64 bits.
    #[error("line {line_number}: the value {value:?} of {key:?} is not an unsigned 64-bit decimal integer")]
    InvalidValue {
        line_number: usize,
        key: String,
        value: String,
    },
    /// A key that may appear only once appears again.
    #[error("line {line_number}: {key:?} appears more than once")]
    DuplicateKey { line_number: usize, key: String },
    /// A line that must be present is absent.
    #[error("the {kind:?} line is missing")]
    MissingLine { kind: &'static str },
}

/// Splits a kernel file into its lines, numbered from 1, after checking that
/// the text is non-empty and newline-terminated.
fn complete_lines(text: &str) -> Result<impl Iterator<Item = (usize, &str)>, ParseError> {
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    let Some(body) = text.strip_suffix('\n') else {
        let line_number = text.matches('\n').count() + 1;
        let line = text.rsplit('\n').next().unwrap_or_default();
        return Err(ParseError::Truncated {
            line_number,
            line: line.to_owned(),
        });
    };
    Ok(body
        .split('\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line)))
}

/// Parses a decimal counter strictly: ASCII digits only (no sign, no
/// whitespace), and no overflow.
fn parse_counter(line_number: usize, key: &str, value: &str) -> Result<u64, ParseError> {
    let invalid = || ParseError::InvalidValue {
        line_number,
        key: key.to_owned(),
        value: value.to_owned(),
    };
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    value.parse::<u64>().map_err(|_| invalid())
}

/// Parses a flat-keyed file (`KEY VALUE` per line, as in `memory.events` or
/// `cpu.stat`) into its entries, in file order. Every value must be a
/// counter; duplicate keys are rejected because we could not tell which one
/// is true.
pub fn parse_flat_keyed(text: &str) -> Result<Vec<(&str, u64)>, ParseError> {
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    for (line_number, line) in complete_lines(text)? {
        let mut fields = line.split_ascii_whitespace();
        let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(ParseError::MalformedLine {
                line_number,
                line: line.to_owned(),
                reason: "expected `KEY VALUE`",
            });
        };
        if !seen.insert(key) {
            return Err(ParseError::DuplicateKey {
                line_number,
                key: key.to_owned(),
            });
        }
        entries.push((key, parse_counter(line_number, key, value)?));
    }
    Ok(entries)
}

/// Parses a single-value file such as `memory.peak` or `memory.current`.
pub fn parse_single_value(text: &str) -> Result<u64, ParseError> {
    let mut lines = complete_lines(text)?;
    let (line_number, line) = lines.next().ok_or(ParseError::Empty)?;
    if let Some((extra_number, extra)) = lines.next() {
        return Err(ParseError::MalformedLine {
            line_number: extra_number,
            line: extra.to_owned(),
            reason: "expected a single line",
        });
    }
    parse_counter(line_number, "value", line)
}

/// The value of a limit file such as `memory.max`, `memory.swap.max` or
/// `pids.max`: a number, or `max` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The file holds `max`.
    Unlimited,
    /// The file holds this number.
    Value(u64),
}

/// Parses a single-value limit file, which may hold `max`. Kept apart from
/// [`parse_single_value`], which stays strict: a counter reading `max` is a
/// wrong file, not an unlimited counter.
pub fn parse_limit(text: &str) -> Result<Limit, ParseError> {
    if text == "max\n" {
        return Ok(Limit::Unlimited);
    }
    parse_single_value(text).map(Limit::Value)
}

/// The counters of `memory.events`: how often the cgroup (and, unless the
/// hierarchy is mounted with `memory_localevents`, its descendants) hit each
/// memory boundary. All are monotonic since the cgroup was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Reclaims while below `memory.low` (the protection was overcommitted).
    pub low: u64,
    /// Times usage went over `memory.high` and the cgroup was throttled.
    pub high: u64,
    /// Times usage was about to go over `memory.max`.
    pub max: u64,
    /// Times the OOM killer was invoked because of `memory.max`.
    pub oom: u64,
    /// Processes in the cgroup killed by any OOM killer.
    pub oom_kill: u64,
    /// Times the whole cgroup was killed because of `memory.oom.group`
    /// (reported since Linux 5.17).
    pub oom_group_kill: u64,
}

/// Parses `memory.events`. A key the running kernel does not report counts
/// as 0 (older kernels lack `oom_group_kill`); keys we do not know are
/// ignored, but must still be well-formed.
pub fn parse_memory_events(text: &str) -> Result<MemoryEvents, ParseError> {
    let mut events = MemoryEvents::default();
    for (key, value) in parse_flat_keyed(text)? {
        let field = match key {
            "low" => &mut events.low,
            "high" => &mut events.high,
            "max" => &mut events.max,
            "oom" => &mut events.oom,
            "oom_kill" => &mut events.oom_kill,
            "oom_group_kill" => &mut events.oom_group_kill,
            _ => continue,
        };
        *field = value;
    }
    Ok(events)
}

/// The cumulative stall times of one PSI file (`cpu.pressure`,
/// `memory.pressure`, `io.pressure`), in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PressureTotals {
    /// Time during which at least one task was stalled on the resource.
    pub some_micros: u64,
    /// Time during which all non-idle tasks were stalled at once. 0 when the
    /// file has no `full` line (`cpu.pressure` before Linux 5.13).
    pub full_micros: u64,
}

/// Parses a PSI file:
///
/// ```text
/// some avg10=0.00 avg60=0.00 avg300=0.00 total=1527
/// full avg10=0.00 avg60=0.00 avg300=0.00 total=0
/// ```
///
/// Only `total=` is kept. The `some` line is required, `full` is optional;
/// every line must consist of `KEY=VALUE` fields with exactly one `total`.
/// Lines of an unknown kind are ignored if well-formed.
pub fn parse_pressure(text: &str) -> Result<PressureTotals, ParseError> {
    let mut some = None;
    let mut full = None;
    for (line_number, line) in complete_lines(text)? {
        let malformed = |reason| ParseError::MalformedLine {
            line_number,
            line: line.to_owned(),
            reason,
        };
        let mut fields = line.split_ascii_whitespace();
        let kind = fields.next().ok_or_else(|| malformed("empty line"))?;
        let mut total = None;
        for field in fields {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| malformed("expected `KEY=VALUE` fields"))?;
            if key.is_empty() || value.is_empty() {
                return Err(malformed("expected `KEY=VALUE` fields"));
            }
            if key == "total" {
                if total.is_some() {
                    return Err(ParseError::DuplicateKey {
                        line_number,
                        key: key.to_owned(),
                    });
                }
                total = Some(parse_counter(line_number, key, value)?);
            }
        }
        let total = total.ok_or_else(|| malformed("no `total=` field"))?;
        let slot = match kind {
            "some" => &mut some,
            "full" => &mut full,
            _ => continue,
        };
        if slot.replace(total).is_some() {
            return Err(ParseError::DuplicateKey {
                line_number,
                key: kind.to_owned(),
            });
        }
    }
    Ok(PressureTotals {
        some_micros: some.ok_or(ParseError::MissingLine { kind: "some" })?,
        full_micros: full.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- examples -------------------------------------------------------

    #[test]
    fn memory_events_from_a_current_kernel() {
        let text =
            "low 1\nhigh 22\nmax 333\noom 4\noom_kill 5\noom_group_kill 6\nsock_throttled 7\n";
        assert_eq!(
            parse_memory_events(text),
            Ok(MemoryEvents {
                low: 1,
                high: 22,
                max: 333,
                oom: 4,
                oom_kill: 5,
                oom_group_kill: 6,
            })
        );
    }

    #[test]
    fn memory_events_without_oom_group_kill_count_it_as_zero() {
        // Kernels before 5.17 do not report oom_group_kill.
        let text = "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n";
        let events = parse_memory_events(text).unwrap();
        assert_eq!(events.max, 9);
        assert_eq!(events.oom_kill, 1);
        assert_eq!(events.oom_group_kill, 0);
    }

    #[test]
    fn memory_events_reject_a_non_numeric_value_naming_the_line() {
        let error = parse_memory_events("low 0\nhigh x1\n").unwrap_err();
        assert_eq!(
            error,
            ParseError::InvalidValue {
                line_number: 2,
                key: "high".into(),
                value: "x1".into()
            }
        );
        assert!(error.to_string().contains("line 2"), "{error}");
    }

    #[test]
    fn memory_events_reject_negative_signed_and_overflowing_values() {
        for bad in [
            "oom -1\n",
            "oom +1\n",
            "oom 18446744073709551616\n",
            "oom 1.5\n",
        ] {
            assert!(
                matches!(
                    parse_memory_events(bad),
                    Err(ParseError::InvalidValue { .. })
                ),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(
            parse_memory_events("oom 18446744073709551615\n")
                .unwrap()
                .oom,
            u64::MAX
        );
    }

    #[test]
    fn memory_events_reject_malformed_lines() {
        for bad in ["low\n", "low 1 2\n", "low 1\n\nhigh 2\n", " \n"] {
            assert!(
                matches!(
                    parse_memory_events(bad),
                    Err(ParseError::MalformedLine { .. })
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn memory_events_reject_duplicate_keys() {
        assert_eq!(
            parse_memory_events("oom 1\noom 2\n"),
            Err(ParseError::DuplicateKey {
                line_number: 2,
                key: "oom".into()
            })
        );
    }

    #[test]
    fn memory_events_reject_a_cut_last_line() {
        assert_eq!(
            parse_memory_events("low 0\nhigh 12"),
            Err(ParseError::Truncated {
                line_number: 2,
                line: "high 12".into()
            })
        );
        assert_eq!(parse_memory_events(""), Err(ParseError::Empty));
    }

    #[test]
    fn pressure_with_some_and_full() {
        let text = "some avg10=3.45 avg60=3.16 avg300=2.95 total=15845821\n\
                    full avg10=0.00 avg60=0.18 avg300=0.38 total=3220258\n";
        assert_eq!(
            parse_pressure(text),
            Ok(PressureTotals {
                some_micros: 15_845_821,
                full_micros: 3_220_258
            })
        );
    }

    #[test]
    fn pressure_without_full_line_counts_full_as_zero() {
        // cpu.pressure before Linux 5.13 has only the `some` line.
        let text = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1527\n";
        assert_eq!(
            parse_pressure(text),
            Ok(PressureTotals {
                some_micros: 1527,
                full_micros: 0
            })
        );
    }

    #[test]
    fn pressure_without_some_line_is_an_error() {
        let text = "full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(
            parse_pressure(text),
            Err(ParseError::MissingLine { kind: "some" })
        );
    }

    #[test]
    fn pressure_rejects_truncated_and_malformed_lines() {
        let cases = [
            // Cut mid-number: would read as 15 without the newline check.
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=15",
            // Cut before the total.
            "some avg10=0.00 avg60=0.00\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=\n",
            "some avg10=0.00 avg60 avg300=0.00 total=1\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=1x\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=1 total=2\n",
            "some total=1\nsome total=2\n",
            "some total=1\n\n",
        ];
        for text in cases {
            assert!(parse_pressure(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn single_value_files() {
        assert_eq!(parse_single_value("123456789\n"), Ok(123_456_789));
        assert!(parse_single_value("123\n456\n").is_err());
        assert!(parse_single_value("max\n").is_err());
        assert_eq!(
            parse_single_value("12"),
            Err(ParseError::Truncated {
                line_number: 1,
                line: "12".into()
            })
        );
    }

    #[test]
    fn limit_files() {
        // Why it matters: `max` is how the kernel writes "no limit"; reading
        // it as an error (or as 0) would misreport every unlimited cgroup.
        assert_eq!(parse_limit("max\n"), Ok(Limit::Unlimited));
        assert_eq!(parse_limit("67108864\n"), Ok(Limit::Value(64 << 20)));
        assert_eq!(parse_limit("0\n"), Ok(Limit::Value(0)));
        assert!(matches!(
            parse_limit("max"),
            Err(ParseError::Truncated { .. })
        ));
        for bad in ["", "MAX\n", "max 100000\n", "-1\n", "max\nmax\n"] {
            assert!(parse_limit(bad).is_err(), "{bad:?} was accepted");
        }
    }

    // ---- properties -----------------------------------------------------

    const KNOWN_EVENT_KEYS: [&str; 6] = ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"];

    fn events_as_array(events: &MemoryEvents) -> [u64; 6] {
        [
            events.low,
            events.high,
            events.max,
            events.oom,
            events.oom_kill,
            events.oom_group_kill,
        ]
    }

    /// A memory.events text with each known key present or absent, a few
    /// unknown keys mixed in, in rotated order; and what it must parse to.
    fn memory_events_file() -> impl Strategy<Value = (String, [u64; 6])> {
        (
            proptest::array::uniform6(proptest::option::of(any::<u64>())),
            proptest::collection::vec(("[a-z_]{1,12}", any::<u64>()), 0..4),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(known, unknown, rotation)| {
                let mut lines: Vec<String> = Vec::new();
                let mut expected = [0u64; 6];
                for (index, value) in known.iter().enumerate() {
                    if let Some(value) = value {
                        lines.push(format!("{} {value}", KNOWN_EVENT_KEYS[index]));
                        expected[index] = *value;
                    }
                }
                let mut unknown_seen = HashSet::new();
                for (key, value) in unknown {
                    let key = format!("x_{key}");
                    if unknown_seen.insert(key.clone()) {
                        lines.push(format!("{key} {value}"));
                    }
                }
                if lines.is_empty() {
                    lines.push("low 0".to_owned());
                }
                let rotate_by = rotation.index(lines.len());
                lines.rotate_left(rotate_by);
                let text = lines.iter().map(|line| format!("{line}\n")).collect();
                (text, expected)
            })
    }

    /// A PSI text with or without a `full` line, and its expected totals.
    fn pressure_file() -> impl Strategy<Value = (String, PressureTotals)> {
        let line_values = (0u32..10_000, 0u32..10_000, 0u32..10_000, any::<u64>());
        (line_values.clone(), proptest::option::of(line_values)).prop_map(|(some, full)| {
            let render = |kind: &str, (a, b, c, total): (u32, u32, u32, u64)| {
                format!(
                    "{kind} avg10={}.{:02} avg60={}.{:02} avg300={}.{:02} total={total}\n",
                    a / 100,
                    a % 100,
                    b / 100,
                    b % 100,
                    c / 100,
                    c % 100
                )
            };
            let mut text = render("some", some);
            let mut expected = PressureTotals {
                some_micros: some.3,
                full_micros: 0,
            };
            if let Some(full) = full {
                text.push_str(&render("full", full));
                expected.full_micros = full.3;
            }
            (text, expected)
        })
    }

    proptest! {
        #[test]
        fn memory_events_round_trip((text, expected) in memory_events_file()) {
            let events = parse_memory_events(&text).unwrap();
            prop_assert_eq!(events_as_array(&events), expected);
        }

        #[test]
        fn pressure_round_trip((text, expected) in pressure_file()) {
            prop_assert_eq!(parse_pressure(&text), Ok(expected));
        }

        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse_memory_events(&text);
            let _ = parse_pressure(&text);
            let _ = parse_single_value(&text);
            let _ = parse_limit(&text);
        }

        #[test]
        fn kernel_like_text_never_panics(text in "[a-z_ =.0-9\n-]{0,200}") {
            let _ = parse_memory_events(&text);
            let _ = parse_pressure(&text);
            let _ = parse_single_value(&text);
            let _ = parse_limit(&text);
        }

        #[test]
        fn limit_round_trip(value in any::<u64>()) {
            prop_assert_eq!(parse_limit(&format!("{value}\n")), Ok(Limit::Value(value)));
        }

        /// A memory.events cut anywhere is either rejected or, if the cut
        /// fell on a line boundary, reads each counter as its true value or
        /// as 0 (its line was lost) — never as some other number.
        #[test]
        fn truncated_memory_events_never_give_wrong_numbers(
            (text, expected) in memory_events_file(),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(text.len());
            let prefix = &text[..cut];
            match parse_memory_events(prefix) {
                Err(_) => prop_assert!(!prefix.ends_with('\n')),
                Ok(events) => {
                    prop_assert!(prefix.ends_with('\n'));
                    for (got, want) in events_as_array(&events).iter().zip(expected) {
                        prop_assert!(*got == want || *got == 0, "got {} want {}", got, want);
                    }
                }
            }
        }

        /// The same for PSI files: a cut is rejected unless it dropped the
        /// whole `full` line, which reads as "no full line".
        #[test]
        fn truncated_pressure_never_gives_wrong_numbers(
            (text, expected) in pressure_file(),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(text.len());
            let prefix = &text[..cut];
            match parse_pressure(prefix) {
                Err(_) => {}
                Ok(totals) => {
                    prop_assert!(prefix.ends_with('\n'));
                    prop_assert_eq!(totals.some_micros, expected.some_micros);
                    prop_assert_eq!(totals.full_micros, 0);
                }
            }
        }

        /// Replacing any counter with a non-numeric token is an error that
        /// names that line.
        #[test]
        fn corrupted_value_is_reported_with_its_line(
            (text, _) in memory_events_file(),
            line_choice in any::<prop::sample::Index>(),
            garbage in "[a-z.+-][a-z0-9.+-]{0,5}",
        ) {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let index = line_choice.index(lines.len());
            let key = lines[index].split(' ').next().unwrap().to_owned();
            lines[index] = format!("{key} {garbage}");
            let corrupted: String = lines.iter().map(|line| format!("{line}\n")).collect();
            prop_assert_eq!(
                parse_memory_events(&corrupted),
                Err(ParseError::InvalidValue { line_number: index + 1, key, value: garbage })
            );
        }
    }
}
