//! Durations as protobuf-JSON writes them (`"5s"`, `"0.5s"`): read from the
//! configuration and from `rbe-runner exec --timeout`, so both accept
//! exactly the same spellings.

use std::time::Duration;

/// The largest duration protobuf's `Duration` can hold: 10,000 years.
const MAXIMUM_DURATION_SECONDS: u64 = 315_576_000_000;

/// Parses a protobuf-JSON `Duration` such as `"5s"`, `"0.5s"` or
/// `"1.000000001s"`: decimal seconds with at most nine fractional digits
/// and an `s` suffix. Negative durations are refused, since every
/// duration rbe-runner reads is a time to wait.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let syntax_error = || {
        format!("{text:?} is not a duration; write seconds with an \"s\" suffix, like \"5s\" or \"0.5s\"")
    };
    let Some(number) = text.strip_suffix('s') else {
        return Err(syntax_error());
    };
    if number.starts_with('-') {
        return Err(format!(
            "{text:?} is negative; durations must be zero or more"
        ));
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|fraction| !all_digits(fraction)) {
        return Err(syntax_error());
    }
    let seconds = whole
        .parse::<u64>()
        .ok()
        .filter(|seconds| *seconds <= MAXIMUM_DURATION_SECONDS)
        .ok_or_else(|| {
            format!("{text:?} is longer than protobuf's Duration allows (10,000 years)")
        })?;
    let nanoseconds = match fraction {
        None => 0,
        Some(fraction) if fraction.len() > 9 => {
            return Err(format!(
                "{text:?} has more than nine fractional digits (nanoseconds)"
            ));
        }
        Some(fraction) => {
            let digits: u32 = fraction.parse().map_err(|_| syntax_error())?;
            digits * 10u32.pow(9 - fraction.len() as u32)
        }
    };
    Ok(Duration::new(seconds, nanoseconds))
}

/// Writes `duration` the way [`parse_duration`] reads it: `5s`, `0.5s`.
pub fn format_duration(duration: Duration) -> String {
    let nanoseconds = duration.subsec_nanos();
    if nanoseconds == 0 {
        return format!("{}s", duration.as_secs());
    }
    let fraction = format!("{nanoseconds:09}");
    format!("{}.{}s", duration.as_secs(), fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_accepts_protobuf_json_durations() {
        let cases = [
            ("0s", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("0.5s", Duration::from_millis(500)),
            ("1.000000001s", Duration::new(1, 1)),
            ("3.25s", Duration::from_millis(3250)),
            ("007s", Duration::from_secs(7)),
            ("315576000000s", Duration::from_secs(315_576_000_000)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn parse_duration_refuses_bad_syntax_and_negatives() {
        let cases = [
            ("", "not a duration"),
            ("5", "not a duration"),
            ("5m", "not a duration"),
            ("s", "not a duration"),
            (".5s", "not a duration"),
            ("5.s", "not a duration"),
            ("+5s", "not a duration"),
            (" 5s", "not a duration"),
            ("1.5.5s", "not a duration"),
            ("1e3s", "not a duration"),
            ("-1s", "negative"),
            ("-0.5s", "negative"),
            ("1.0000000001s", "nine fractional digits"),
            ("315576000001s", "10,000 years"),
            ("99999999999999999999999s", "10,000 years"),
        ];
        for (text, words) in cases {
            let message = parse_duration(text).expect_err(text);
            assert!(message.contains(words), "{text:?}: {message}");
        }
    }

    #[test]
    fn format_duration_round_trips() {
        for text in ["0s", "5s", "0.5s", "1.000000001s", "12.34s"] {
            let duration = parse_duration(text).expect(text);
            assert_eq!(format_duration(duration), text);
        }
    }
}
