//! Characters from the journal that would change how a report reads are
//! shown as escapes: control characters (NUL, a terminal's escape
//! sequences, a newline that would break a table) and Unicode's
//! bidirectional formatting characters (U+202E turns the rest of a line
//! around, so that an argv reads as something it is not). Argv comes from
//! whoever sent the action, so the report shows it as it is, not as it
//! would like to be seen.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` is shown escaped: a control character (Unicode's `Cc`),
/// one of Unicode's `Bidi_Control` characters, or the line and paragraph
/// separators.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `text` with each hidden character written as Rust writes it in a
/// string, `\u{202e}`; other text (a backslash too) as it is.
pub fn visible(text: &str) -> Cow<'_, str> {
    escape_where(text, is_hidden, |out, c| {
        let _ = write!(out, "{}", c.escape_unicode());
    })
}

/// JSON text (as serde_json writes it) with each hidden character that is
/// still raw written as a JSON escape, `\u202e`: serde_json escapes
/// U+0000–U+001F inside strings but leaves DEL, U+0080–U+009F and the
/// bidirectional characters raw. Outside strings it writes only ASCII, and
/// raw newlines and tabs there are layout, so they stay. The value a JSON
/// reader gets is unchanged.
pub fn json_escape_hidden(json: &str) -> Cow<'_, str> {
    escape_where(
        json,
        |c| is_hidden(c) && !matches!(c, '\n' | '\r' | '\t'),
        // All hidden characters are in the Basic Multilingual Plane.
        |out, c| {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        },
    )
}

/// `text` with each character for which `hidden` holds replaced by what
/// `escape` writes; borrowed when there is none.
fn escape_where(
    text: &str,
    hidden: impl Fn(char) -> bool,
    escape: impl Fn(&mut String, char),
) -> Cow<'_, str> {
    if !text.chars().any(&hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hidden(c) {
            escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidirectional_characters_are_shown_escaped() {
        // Why it matters: a NUL or an escape sequence in a terminal, or a
        // right-to-left override anywhere, makes argv read as something
        // else than what ran.
        assert_eq!(
            visible("rm -rf /\u{0}\u{1b}[2J\u{202e}txt.exe\u{9b}"),
            "rm -rf /\\u{0}\\u{1b}[2J\\u{202e}txt.exe\\u{9b}"
        );
        assert_eq!(visible("a\nb\tc\u{2066}"), "a\\u{a}b\\u{9}c\\u{2066}");
        assert!(matches!(visible("javac -d out\\x é"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_keeps_its_layout_and_its_values() {
        let value = serde_json::json!({"argv": ["a\u{0}\u{7f}\u{202e}b\u{85}"]});
        let text = format!("{value:#}");
        let escaped = json_escape_hidden(&text);
        assert!(
            escaped.contains("a\\u0000\\u007f\\u202eb\\u0085"),
            "{escaped}"
        );
        assert!(!escaped.chars().any(|c| is_hidden(c) && c != '\n'));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&escaped).unwrap(),
            value
        );
    }
}
