//! Request values quoted in error messages, bounded.
//!
//! An error names the offending field and value, but a value is the
//! client's and may be huge: a 100,000-character path used to yield an
//! 87 KB status message, which C-core clients refuse, reporting
//! RESOURCE_EXHAUSTED instead of the real code. So a quoted value keeps at
//! most [`MAX_QUOTED_BYTES`] (its start and end, which is what identifies a
//! path), and a whole status message at most [`MAX_MESSAGE_BYTES`].

use std::fmt;

/// Longest request value quoted in full.
pub const MAX_QUOTED_BYTES: usize = 200;
/// Bytes kept from each end of a longer value.
const KEPT_AT_EACH_END: usize = 100;
/// Longest status message sent.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `value` quoted (as `{:?}` does), with its middle cut when it is longer
/// than [`MAX_QUOTED_BYTES`]: `"first 100…[N bytes cut]…last 100"`.
pub fn quoted(value: &str) -> Quoted<'_> {
    Quoted(value)
}

/// Displays a request value quoted and bounded; see [`quoted`].
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        if value.len() <= MAX_QUOTED_BYTES {
            return write!(f, "{value:?}");
        }
        let head = &value[..floor_char_boundary(value, KEPT_AT_EACH_END)];
        let tail = &value[ceil_char_boundary(value, value.len() - KEPT_AT_EACH_END)..];
        let cut = value.len() - head.len() - tail.len();
        write!(f, "{:?}", format!("{head}…[{cut} bytes cut]…{tail}"))
    }
}

/// `message`, cut to at most [`MAX_MESSAGE_BYTES`] bytes, saying so.
pub fn bounded_message(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    // The marker is at most 30 bytes ("…[" + up to 20 digits + " bytes cut]").
    let keep = floor_char_boundary(&message, MAX_MESSAGE_BYTES - 40);
    format!("{}…[{} bytes cut]", &message[..keep], message.len() - keep)
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_values_are_quoted_in_full() {
        assert_eq!(quoted("a/b c").to_string(), "\"a/b c\"");
        let exactly = "x".repeat(MAX_QUOTED_BYTES);
        assert_eq!(quoted(&exactly).to_string(), format!("{exactly:?}"));
    }

    #[test]
    fn long_values_keep_both_ends_and_say_how_much_was_cut() {
        let value = format!(
            "{}{}{}",
            "a".repeat(100),
            "m".repeat(99_800),
            "z".repeat(100)
        );
        assert_eq!(
            quoted(&value).to_string(),
            format!(
                "\"{}…[99800 bytes cut]…{}\"",
                "a".repeat(100),
                "z".repeat(100)
            )
        );
    }

    #[test]
    fn long_messages_are_cut_to_the_limit() {
        let message = "e".repeat(100_000);
        let bounded = bounded_message(message);
        assert!(bounded.len() <= MAX_MESSAGE_BYTES, "{}", bounded.len());
        assert!(bounded.ends_with("bytes cut]"));
        assert_eq!(bounded_message("short".into()), "short");
    }

    proptest! {
        #[test]
        fn quoted_values_are_bounded_and_never_split_a_character(value in "[a-zé€/ ]{0,400}") {
            // Display would panic on a cut inside a character.
            let text = quoted(&value).to_string();
            // 200 bytes of value, the quotes, and "…[NNN bytes cut]…".
            prop_assert!(text.len() <= MAX_QUOTED_BYTES + 2 + 25, "{}", text.len());
            let message = bounded_message(value.repeat(5));
            prop_assert!(message.len() <= MAX_MESSAGE_BYTES);
        }
    }
}
