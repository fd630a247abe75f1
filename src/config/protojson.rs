//! Strict protobuf-JSON decoding, independent of any one schema: a
//! [`Message`] hands out its fields by proto name (accepting the
//! lowerCamelCase JSON name too), each [`Field`] converts itself to a Rust
//! value, and every failure is a [`FieldError`] carrying the full path of
//! the field as written in the file. Keys nobody asked for are unknown,
//! with a "did you mean" suggestion when one is close.
//!
//! The schema being decoded lives elsewhere (`schema`); nothing here knows
//! bb_runner's field names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::duration::parse_duration;
use super::jsonnet::Json;
use super::ConfigError;

/// A decoding failure at one field; the file is added by
/// [`FieldError::into_config_error`].
#[derive(Debug)]
pub(super) struct FieldError {
    path: String,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Unknown {
        suggestion: Option<String>,
    },
    Unsupported(String),
    Invalid(String),
    Missing(String),
    /// Not about one field: the document as a whole.
    Document(String),
}

impl FieldError {
    pub(super) fn invalid(path: &str, message: impl Into<String>) -> Self {
        FieldError {
            path: path.to_owned(),
            problem: Problem::Invalid(message.into()),
        }
    }

    pub(super) fn unsupported(path: &str, reason: impl Into<String>) -> Self {
        FieldError {
            path: path.to_owned(),
            problem: Problem::Unsupported(reason.into()),
        }
    }

    pub(super) fn missing(path: &str, message: impl Into<String>) -> Self {
        FieldError {
            path: path.to_owned(),
            problem: Problem::Missing(message.into()),
        }
    }

    /// A problem with the document as a whole rather than one field.
    pub(super) fn document(message: impl Into<String>) -> Self {
        FieldError {
            path: String::new(),
            problem: Problem::Document(message.into()),
        }
    }

    pub(super) fn into_config_error(self, file: &Path) -> ConfigError {
        let file = file.to_path_buf();
        let path = self.path;
        match self.problem {
            Problem::Unknown { suggestion } => ConfigError::UnknownField {
                file,
                path,
                suggestion,
            },
            Problem::Unsupported(reason) => ConfigError::Unsupported { file, path, reason },
            Problem::Invalid(message) => ConfigError::InvalidField {
                file,
                path,
                message,
            },
            Problem::Missing(message) => ConfigError::MissingField {
                file,
                path,
                message,
            },
            Problem::Document(message) => ConfigError::Invalid { file, message },
        }
    }
}

pub(super) type Decoded<T> = Result<T, FieldError>;

/// The path of key `key` inside the object at `parent`, written the way a
/// reader would look it up: `a.b` for plain names, `a["odd key"]` otherwise.
pub(super) fn child_path(parent: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// protobuf's JSON name for a proto field name: `listen_paths` → `listenPaths`.
pub(super) fn lower_camel_case(proto_name: &str) -> String {
    let mut out = String::with_capacity(proto_name.len());
    let mut upper_next = false;
    for c in proto_name.chars() {
        if c == '_' {
            upper_next = true;
        } else if upper_next {
            out.push(c.to_ascii_uppercase());
            upper_next = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// One field's value together with the path it was found at.
pub(super) struct Field {
    /// Where the field is, as written in the file (`grpcServers[0].tls`).
    pub(super) path: String,
    value: Json,
}

/// The keys of one protobuf message object, consumed field by field; the
/// keys left over when [`Message::finish`] is called are unknown.
pub(super) struct Message {
    /// Where the object is, as written in the file; empty for the document.
    pub(super) path: String,
    entries: BTreeMap<String, Json>,
    /// JSON names of every field asked for, for "did you mean" hints.
    known: Vec<String>,
}

impl Message {
    pub(super) fn new(path: &str, value: Json) -> Decoded<Self> {
        match value {
            Json::Object(entries) => Ok(Message {
                path: path.to_owned(),
                entries,
                known: Vec::new(),
            }),
            other => Err(FieldError::invalid(
                path,
                format!("expected an object, got {}", other.describe()),
            )),
        }
    }

    /// Takes the field with proto name `proto_name`, written either that
    /// way or in lowerCamelCase. `null` counts as not set.
    pub(super) fn take(&mut self, proto_name: &str) -> Decoded<Option<Field>> {
        let json_name = lower_camel_case(proto_name);
        let camel = self.entries.remove_entry(&json_name);
        let snake = if json_name == proto_name {
            None
        } else {
            self.entries.remove_entry(proto_name)
        };
        self.known.push(json_name.clone());
        let (key, value) = match (camel, snake) {
            (Some(_), Some(_)) => {
                return Err(FieldError::invalid(
                    &child_path(&self.path, &json_name),
                    format!("set twice, as `{json_name}` and as `{proto_name}`; keep one"),
                ));
            }
            (Some(entry), None) | (None, Some(entry)) => entry,
            (None, None) => return Ok(None),
        };
        if value == Json::Null {
            return Ok(None);
        }
        Ok(Some(Field {
            path: child_path(&self.path, &key),
            value,
        }))
    }

    /// Takes a field that upstream has and rbe-runner rejects.
    pub(super) fn reject(&mut self, proto_name: &str, reason: &str) -> Decoded<()> {
        match self.take(proto_name)? {
            Some(field) => Err(FieldError::unsupported(&field.path, reason)),
            None => Ok(()),
        }
    }

    /// Whether the field with proto name `proto_name` is set (not null),
    /// without taking it: for checks across fields.
    pub(super) fn has(&self, proto_name: &str) -> bool {
        [lower_camel_case(proto_name), proto_name.to_owned()]
            .iter()
            .any(|key| {
                self.entries
                    .get(key)
                    .is_some_and(|value| *value != Json::Null)
            })
    }

    /// The first key, in sorted order, that no `take` has asked for yet.
    pub(super) fn first_key(&self) -> Option<&str> {
        self.entries.keys().next().map(String::as_str)
    }

    /// Fails on the first key no `take` asked for.
    pub(super) fn finish(self) -> Decoded<()> {
        match self.entries.into_keys().next() {
            None => Ok(()),
            Some(key) => {
                let suggestion = suggest(&key, &self.known);
                Err(FieldError {
                    path: child_path(&self.path, &key),
                    problem: Problem::Unknown { suggestion },
                })
            }
        }
    }
}

/// The known name closest to `unknown`, if it is close enough to be a typo.
fn suggest(unknown: &str, known: &[String]) -> Option<String> {
    let normalize = |name: &str| name.replace('_', "").to_ascii_lowercase();
    let unknown = normalize(unknown);
    let allowed = 1 + unknown.len() / 6;
    known
        .iter()
        .map(|name| (edit_distance(&unknown, &normalize(name)), name))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name.clone())
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

impl Field {
    fn type_error(&self, expected: &str) -> FieldError {
        FieldError::invalid(
            &self.path,
            format!("expected {expected}, got {}", self.value.describe()),
        )
    }

    /// Whether the value is a JSON string (for fields that accept either
    /// a string or a number).
    pub(super) fn is_string(&self) -> bool {
        matches!(self.value, Json::String(_))
    }

    pub(super) fn string(self) -> Decoded<String> {
        match self.value {
            Json::String(value) => Ok(value),
            _ => Err(self.type_error("a string")),
        }
    }

    /// A string that must not be empty (paths, program names).
    pub(super) fn non_empty_string(self) -> Decoded<String> {
        let path = self.path.clone();
        let value = self.string()?;
        if value.is_empty() {
            return Err(FieldError::invalid(&path, "must not be empty"));
        }
        Ok(value)
    }

    pub(super) fn bool(self) -> Decoded<bool> {
        match self.value {
            Json::Bool(value) => Ok(value),
            _ => Err(self.type_error("true or false")),
        }
    }

    /// A protobuf integer of type `type_name` within `[minimum, maximum]`:
    /// a whole number, or (protobuf-JSON) a string of decimal digits.
    fn integer(self, type_name: &str, minimum: i128, maximum: i128) -> Decoded<i128> {
        let expected = format!("{type_name} (a whole number, or one written as a string)");
        let value = match &self.value {
            Json::Number(number) => {
                if number.fract() != 0.0 {
                    return Err(self.type_error(&expected));
                }
                // `as` saturates, and anything saturated is out of range.
                *number as i128
            }
            Json::String(text) => {
                let digits = text.strip_prefix('-').unwrap_or(text);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.type_error(&expected));
                }
                match text.parse::<i128>() {
                    Ok(value) => value,
                    Err(_) => {
                        return Err(FieldError::invalid(
                            &self.path,
                            format!("{text} is out of range for {type_name}"),
                        ));
                    }
                }
            }
            _ => return Err(self.type_error(&expected)),
        };
        if value < minimum || value > maximum {
            return Err(FieldError::invalid(
                &self.path,
                format!("{value} is out of range for {type_name} ({minimum} to {maximum})"),
            ));
        }
        Ok(value)
    }

    pub(super) fn uint32(self) -> Decoded<u32> {
        let path = self.path.clone();
        let value = self.integer("a uint32", 0, i128::from(u32::MAX))?;
        u32::try_from(value).map_err(|_| FieldError::invalid(&path, "out of range for a uint32"))
    }

    pub(super) fn int64(self) -> Decoded<i64> {
        let path = self.path.clone();
        let value = self.integer("an int64", i128::from(i64::MIN), i128::from(i64::MAX))?;
        i64::try_from(value).map_err(|_| FieldError::invalid(&path, "out of range for an int64"))
    }

    /// The elements of a repeated field, each with its own path.
    pub(super) fn list(self) -> Decoded<Vec<Field>> {
        match self.value {
            Json::Array(elements) => elements
                .into_iter()
                .enumerate()
                .map(|(index, value)| {
                    let path = format!("{}[{index}]", self.path);
                    if value == Json::Null {
                        Err(FieldError::invalid(&path, "null is not allowed in a list"))
                    } else {
                        Ok(Field { path, value })
                    }
                })
                .collect(),
            _ => Err(FieldError::invalid(
                &self.path,
                format!("expected a list, got {}", self.value.describe()),
            )),
        }
    }

    pub(super) fn paths(self) -> Decoded<Vec<PathBuf>> {
        self.list()?
            .into_iter()
            .map(|element| element.non_empty_string().map(PathBuf::from))
            .collect()
    }

    pub(super) fn uint32s(self) -> Decoded<Vec<u32>> {
        self.list()?.into_iter().map(Field::uint32).collect()
    }

    /// A `map<string, string>`.
    pub(super) fn string_map(self) -> Decoded<BTreeMap<String, String>> {
        match self.value {
            Json::Object(entries) => entries
                .into_iter()
                .map(|(key, value)| {
                    let field = Field {
                        path: child_path(&self.path, &key),
                        value,
                    };
                    Ok((key, field.string()?))
                })
                .collect(),
            _ => Err(FieldError::invalid(
                &self.path,
                format!(
                    "expected an object of strings, got {}",
                    self.value.describe()
                ),
            )),
        }
    }

    /// The value as written, for fields of type `google.protobuf.Value`
    /// or `Struct`, whose contents are not a schema's.
    pub(super) fn value(self) -> Json {
        self.value
    }

    pub(super) fn message(self) -> Decoded<Message> {
        Message::new(&self.path, self.value)
    }

    /// A size in bytes: a whole number, or a string such as `"64M"`
    /// ([`parse_size`](super::size::parse_size)).
    pub(super) fn size(self) -> Decoded<u64> {
        let path = self.path.clone();
        match &self.value {
            Json::String(text) => match super::size::parse_size(text) {
                Ok(crate::cgroup::Limit::Value(bytes)) => Ok(bytes),
                Ok(crate::cgroup::Limit::Unlimited) => Err(FieldError::invalid(
                    &path,
                    "must be a size in bytes; \"max\" (no limit) is not allowed here",
                )),
                Err(message) => Err(FieldError::invalid(&path, message)),
            },
            Json::Number(_) => {
                let value = self.integer("a size in bytes", 0, i128::from(u64::MAX))?;
                u64::try_from(value).map_err(|_| FieldError::invalid(&path, "out of range"))
            }
            _ => Err(self.type_error("a size such as \"64M\" or a number of bytes")),
        }
    }

    pub(super) fn duration(self) -> Decoded<Duration> {
        let path = self.path.clone();
        let text = match self.value {
            Json::String(text) => text,
            _ => return Err(self.type_error("a duration string such as \"5s\" or \"0.5s\"")),
        };
        parse_duration(&text).map_err(|message| FieldError::invalid(&path, message))
    }
}

impl Field {
    /// A value written as text (or as a plain number, read as its decimal
    /// text) and parsed by `parse`, whose error is reported at the field:
    /// sizes such as `'512M'`, counts, cores.
    pub(super) fn parsed<T>(
        self,
        expected: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Decoded<T> {
        let text = match &self.value {
            Json::String(text) => text.clone(),
            Json::Number(number) if number.is_finite() => format!("{number}"),
            _ => return Err(self.type_error(expected)),
        };
        parse(&text).map_err(|message| FieldError::invalid(&self.path, message))
    }
}

/// Decodes `field` with `decode`, or gives the protobuf default when unset.
pub(super) fn optional<T: Default>(
    field: Option<Field>,
    decode: impl FnOnce(Field) -> Decoded<T>,
) -> Decoded<T> {
    field.map_or_else(|| Ok(T::default()), decode)
}

/// Decodes a repeated field element by element with `decode`; empty when
/// unset.
pub(super) fn repeated<T>(
    field: Option<Field>,
    decode: impl FnMut(Field) -> Decoded<T>,
) -> Decoded<Vec<T>> {
    match field {
        Some(field) => field.list()?.into_iter().map(decode).collect(),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    //! These use made-up field names on purpose: the decoder must work for
    //! any schema, not only bb_runner's.

    use super::*;

    fn object(entries: &[(&str, Json)]) -> Json {
        Json::Object(
            entries
                .iter()
                .map(|(key, value)| (key.to_string(), value.clone()))
                .collect(),
        )
    }

    fn field(value: Json) -> Field {
        Field {
            path: "outer.value".to_owned(),
            value,
        }
    }

    /// Paths in errors must be something a reader can find in the file.
    #[test]
    fn child_paths_quote_keys_that_are_not_plain_names() {
        assert_eq!(child_path("", "top"), "top");
        assert_eq!(child_path("a[0]", "snake_name"), "a[0].snake_name");
        assert_eq!(child_path("a", "odd key"), "a[\"odd key\"]");
        assert_eq!(child_path("", "1st"), "[\"1st\"]");
    }

    #[test]
    fn json_names_are_lower_camel_case() {
        assert_eq!(lower_camel_case("plain"), "plain");
        assert_eq!(lower_camel_case("two_words"), "twoWords");
        assert_eq!(lower_camel_case("a_b_c_d"), "aBCD");
    }

    /// protobuf-JSON accepts both names, and `null` means "not set".
    #[test]
    fn take_accepts_either_name_and_null_is_unset() {
        let mut message = Message::new(
            "outer",
            object(&[
                ("twoWords", Json::Bool(true)),
                ("other_field", Json::String("x".into())),
                ("unset", Json::Null),
            ]),
        )
        .expect("an object");
        let camel = message.take("two_words").expect("decodes").expect("set");
        assert_eq!(camel.path, "outer.twoWords");
        assert!(camel.bool().expect("a bool"));
        let snake = message.take("other_field").expect("decodes").expect("set");
        assert_eq!(snake.path, "outer.other_field");
        assert!(message.take("unset").expect("decodes").is_none());
        message.finish().expect("every key was taken");
    }

    #[test]
    fn one_field_in_both_spellings_is_refused() {
        let mut message = Message::new(
            "",
            object(&[
                ("twoWords", Json::Bool(true)),
                ("two_words", Json::Bool(false)),
            ]),
        )
        .expect("an object");
        let error = message.take("two_words").err().expect("ambiguous");
        assert_eq!(error.path, "twoWords");
        assert!(
            matches!(&error.problem, Problem::Invalid(text) if text.contains("set twice")),
            "{error:?}"
        );
    }

    /// A key nobody asked for is unknown, with the closest known name.
    #[test]
    fn keys_left_over_are_unknown_with_a_suggestion() {
        let mut message =
            Message::new("outer", object(&[("twoWord", Json::Bool(true))])).expect("an object");
        assert!(message.take("two_words").expect("decodes").is_none());
        let error = message.finish().expect_err("twoWord is unknown");
        assert_eq!(error.path, "outer.twoWord");
        assert!(
            matches!(&error.problem, Problem::Unknown { suggestion: Some(name) } if name == "twoWords"),
            "{error:?}"
        );
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let known = ["listenPaths".to_owned(), "listenAddresses".to_owned()];
        assert_eq!(
            suggest("listen_path", &known),
            Some("listenPaths".to_owned())
        );
        assert_eq!(
            suggest("ListenAdresses", &known),
            Some("listenAddresses".to_owned())
        );
        assert_eq!(suggest("somethingElse", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    /// protobuf-JSON writes 64-bit integers as strings; both are accepted,
    /// and range checks name the field.
    #[test]
    fn integers_may_be_numbers_or_strings() {
        assert_eq!(field(Json::Number(7.0)).uint32().expect("a uint32"), 7);
        assert_eq!(
            field(Json::String("7".into())).uint32().expect("a uint32"),
            7
        );
        assert_eq!(
            field(Json::String("-9000000000".into()))
                .int64()
                .expect("an int64"),
            -9_000_000_000
        );
        for bad in [
            Json::Number(1.5),
            Json::Number(-1.0),
            Json::String("1e3".into()),
            Json::String("4294967296".into()),
            Json::Bool(true),
        ] {
            let error = field(bad.clone()).uint32().expect_err("not a uint32");
            assert_eq!(error.path, "outer.value", "{bad:?}");
        }
    }

    #[test]
    fn list_elements_carry_their_index() {
        let elements = field(Json::Array(vec![Json::String("a".into()), Json::Null]));
        let error = elements.paths().expect_err("null in a list");
        assert_eq!(error.path, "outer.value[1]");
    }
}
