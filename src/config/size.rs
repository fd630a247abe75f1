//! Sizes and counts as the configuration writes them: the one parser for
//! every byte size in the file, so that `'512M'` means the same everywhere.
//!
//! A size is a whole number of bytes, or a whole number with a
//! case-sensitive suffix `K`, `M`, `G` or `T` meaning powers of 1024, as in
//! cgroup files and systemd (`Ki`, `Mi`, `Gi`, `Ti` are the same), or
//! `max` for no limit. A lower-case `k` or `m`, a fraction or a decimal
//! unit would silently mean something else in some other tool, so they are
//! refused rather than guessed.

use crate::cgroup::Limit;

/// Suffixes and their multipliers; the longer spelling first so that `Mi`
/// is not read as `M` followed by garbage.
const SUFFIXES: [(&str, u64); 8] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
];

/// Parses a size written as text: `"4Gi"`, `"512M"`, `"1048576"`, `"max"`.
pub fn parse_size(text: &str) -> Result<Limit, String> {
    if text == "max" {
        return Ok(Limit::Unlimited);
    }
    let (digits, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, multiplier)| {
            text.strip_suffix(suffix)
                .map(|digits| (digits, *multiplier))
        })
        .unwrap_or((text, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a size; write a whole number of bytes, or one with a suffix \
             K, M, G or T (powers of 1024, upper case; Ki, Mi, Gi, Ti also accepted), \
             like \"512M\" or \"4Gi\", or \"max\""
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .map(Limit::Value)
        .ok_or_else(|| format!("{text:?} is too large a size"))
}

/// Parses a count such as `pids.max` takes: a whole number or `"max"`.
pub fn parse_count(text: &str) -> Result<Limit, String> {
    if text == "max" {
        return Ok(Limit::Unlimited);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a count; write a whole number or \"max\""
        ));
    }
    text.parse::<u64>()
        .map(Limit::Value)
        .map_err(|_| format!("{text:?} is too large"))
}

/// The length of `cpu.max`'s period that `cpuMax` quotas are written for,
/// in microseconds: the kernel's default, 100 ms.
pub const CPU_MAX_PERIOD_MICROSECONDS: u64 = 100_000;

/// The smallest quota the kernel accepts, in microseconds (1 ms).
const CPU_MAX_MINIMUM_QUOTA_MICROSECONDS: u64 = 1_000;

/// Parses a CPU limit in cores (`"2"`, `"0.5"`, or `"max"`) into the quota
/// of `cpu.max` per [`CPU_MAX_PERIOD_MICROSECONDS`].
pub fn parse_cores(text: &str) -> Result<Limit, String> {
    if text == "max" {
        return Ok(Limit::Unlimited);
    }
    let syntax_error = || {
        format!("{text:?} is not a number of cores; write a decimal such as \"2\" or \"0.5\", or \"max\"")
    };
    let (whole, fraction) = match text.split_once('.') {
        Some((_, "")) => return Err(syntax_error()),
        Some(parts) => parts,
        None => (text, ""),
    };
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(syntax_error());
    }
    // One microsecond of a 100 ms period is 1e-5 cores: more digits than
    // that cannot be written to cpu.max.
    if fraction.len() > 5 {
        return Err(format!(
            "{text:?} has more than five fractional digits (cpu.max counts microseconds of a 100 ms period)"
        ));
    }
    let scale = 10u64.pow(5 - fraction.len() as u32);
    let quota = whole
        .parse::<u64>()
        .ok()
        .and_then(|whole| whole.checked_mul(CPU_MAX_PERIOD_MICROSECONDS))
        .and_then(|whole| {
            let fraction: u64 = if fraction.is_empty() {
                0
            } else {
                fraction.parse().ok()?
            };
            whole.checked_add(fraction * scale)
        })
        .ok_or_else(|| format!("{text:?} is too many cores"))?;
    if quota < CPU_MAX_MINIMUM_QUOTA_MICROSECONDS {
        return Err(format!(
            "{text:?} is below the kernel's minimum of 0.01 cores (1 ms per 100 ms period)"
        ));
    }
    Ok(Limit::Value(quota))
}

/// Writes a size the way [`parse_size`] reads it, exactly, with the largest
/// suffix that divides it: `512M`, `4G`, `1536K`, `1000`.
pub fn format_size(limit: Limit) -> String {
    let Limit::Value(bytes) = limit else {
        return "max".to_owned();
    };
    for (suffix, multiplier) in [
        ("T", 1u64 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ] {
        if bytes != 0 && bytes % multiplier == 0 {
            return format!("{}{suffix}", bytes / multiplier);
        }
    }
    bytes.to_string()
}

/// Writes a `cpu.max` quota per 100 ms period in cores: `0.5`, `2`.
pub fn format_cores(quota: Limit) -> String {
    let Limit::Value(quota) = quota else {
        return "max".to_owned();
    };
    let whole = quota / CPU_MAX_PERIOD_MICROSECONDS;
    let fraction = quota % CPU_MAX_PERIOD_MICROSECONDS;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:05}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sizes_are_bytes_or_powers_of_1024() {
        for (text, expected) in [
            ("0", Limit::Value(0)),
            ("1048576", Limit::Value(1 << 20)),
            ("64K", Limit::Value(64 << 10)),
            ("512M", Limit::Value(512 << 20)),
            ("512Mi", Limit::Value(512 << 20)),
            ("4G", Limit::Value(4 << 30)),
            ("4Gi", Limit::Value(4 << 30)),
            ("2T", Limit::Value(2 << 40)),
            ("1Ti", Limit::Value(1 << 40)),
            ("max", Limit::Unlimited),
        ] {
            assert_eq!(parse_size(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn sizes_that_mean_something_else_elsewhere_are_refused() {
        // Why it matters: "512m" is 512 MB in Kubernetes and 512 bytes
        // times a milli in others; guessing would set a wrong limit.
        for text in [
            "", "512m", "4k", "4GB", "4 G", "1.5G", "-1", "M", "Max", "0x10", "4iB", "16E",
        ] {
            assert!(parse_size(text).is_err(), "{text:?} was accepted");
        }
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn cores_become_a_quota_per_100_ms() {
        for (text, quota) in [
            ("2", 200_000),
            ("0.5", 50_000),
            ("1.25", 125_000),
            ("0.01", 1_000),
            ("0.00001", 1),
        ] {
            if quota < 1_000 {
                assert!(parse_cores(text).is_err(), "{text}");
            } else {
                assert_eq!(parse_cores(text), Ok(Limit::Value(quota)), "{text}");
            }
        }
        assert_eq!(parse_cores("max"), Ok(Limit::Unlimited));
        for text in ["", ".5", "1.", "-1", "one", "0.000001", "1e3"] {
            assert!(parse_cores(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn counts_are_whole_numbers_or_max() {
        assert_eq!(parse_count("32"), Ok(Limit::Value(32)));
        assert_eq!(parse_count("max"), Ok(Limit::Unlimited));
        for text in ["", "32K", "-1", "3.5"] {
            assert!(parse_count(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn formatting_uses_the_largest_exact_suffix() {
        assert_eq!(format_size(Limit::Value(512 << 20)), "512M");
        assert_eq!(format_size(Limit::Value(1536 << 10)), "1536K");
        assert_eq!(format_size(Limit::Value(4 << 30)), "4G");
        assert_eq!(format_size(Limit::Value(1000)), "1000");
        assert_eq!(format_size(Limit::Value(0)), "0");
        assert_eq!(format_size(Limit::Unlimited), "max");
        assert_eq!(format_cores(Limit::Value(50_000)), "0.5");
        assert_eq!(format_cores(Limit::Value(200_000)), "2");
        assert_eq!(format_cores(Limit::Value(125_000)), "1.25");
    }

    proptest! {
        /// What check-config prints reads back as the same size.
        #[test]
        fn formatted_sizes_parse_back(bytes in any::<u64>()) {
            let limit = Limit::Value(bytes);
            prop_assert_eq!(parse_size(&format_size(limit)), Ok(limit));
        }

        #[test]
        fn formatted_cores_parse_back(quota in 1_000u64..10_000_000_000) {
            let limit = Limit::Value(quota);
            prop_assert_eq!(parse_cores(&format_cores(limit)), Ok(limit));
        }
    }
}
