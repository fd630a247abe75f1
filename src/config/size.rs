//! Sizes in bytes as the configuration writes them: `'64M'`, `'4Gi'`,
//! `'1048576'` or a plain number. The suffixes `K`, `M`, `G` and `T`
//! (case-sensitive) mean powers of 1024, as in cgroup files and systemd;
//! `Ki`, `Mi`, `Gi` and `Ti` are accepted as the same.

/// Parses a size such as `"64M"` or `"512Ki"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let syntax_error = || {
        format!(
            "{text:?} is not a size; write a number of bytes, or one with a suffix K, M, G or T \
             (powers of 1024), like \"64M\""
        )
    };
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(syntax_error());
    }
    let shift = match suffix {
        "" => 0,
        "K" | "Ki" => 10,
        "M" | "Mi" => 20,
        "G" | "Gi" => 30,
        "T" | "Ti" => 40,
        _ => return Err(syntax_error()),
    };
    let too_large = || format!("{text:?} is too large");
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    number.checked_mul(1 << shift).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_in_every_spelling() {
        for (text, bytes) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("64K", 64 << 10),
            ("64Ki", 64 << 10),
            ("64M", 64 << 20),
            ("2Gi", 2 << 30),
            ("1T", 1 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn malformed_sizes_say_how_to_write_one() {
        for text in ["", "M", "64m", "64 M", "64MB", "1.5G", "-1", "max", "0x10"] {
            let error = parse_size(text).expect_err(text);
            assert!(error.contains("not a size"), "{text}: {error}");
        }
        assert!(parse_size("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("16777216T").unwrap_err().contains("too large"));
    }

    proptest! {
        #[test]
        fn any_number_of_bytes_reads_back(bytes: u64) {
            prop_assert_eq!(parse_size(&bytes.to_string()), Ok(bytes));
        }
    }
}
