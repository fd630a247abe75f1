//! An action's argv as the report keeps it: the JSON list the journal
//! wrote, one string, checked and read for its program when the line is
//! parsed, and read into separate arguments only when the action is
//! shown (one of the largest or longest).
//!
//! Nearly every argv is dropped when its action finishes; building a
//! `String` per argument for each of them was a good part of a report's
//! allocations.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::super::id::Id;
use super::super::stats::program_group;
use super::LineError;

/// An action's argv, as the JSON text of its list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Arguments(Box<str>);

impl Arguments {
    /// The arguments, one string each.
    pub fn to_vec(&self) -> Vec<String> {
        if self.0.is_empty() {
            return Vec::new();
        }
        // Checked to be a list of strings when the line was parsed.
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

/// `arguments` as serde finds it in the line: its text, unread. A
/// `null` is kept too, to be refused as before (it is not a list).
#[derive(Default)]
pub(super) struct RawArguments<'a>(Option<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for RawArguments<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(deserializer).map(|raw| RawArguments(Some(raw)))
    }
}

impl RawArguments<'_> {
    /// The argv and its program (see [`program_group`]); corrupt unless
    /// it is a list of strings. No `arguments` is no argv.
    pub(super) fn read(self) -> Result<(Arguments, Id), LineError> {
        let Some(raw) = self.0 else {
            return Ok((Arguments::default(), Id::from(program_group::<&str>(&[]))));
        };
        let head: Head = serde_json::from_str(raw.get())
            .map_err(|_| LineError::Corrupt("arguments is not a list of strings".into()))?;
        let program = Id::from(program_group(&head.arguments[..head.count]));
        Ok((Arguments(raw.get().into()), program))
    }
}

/// The arguments [`program_group`] reads.
const HEAD: usize = 3;

/// The first [`HEAD`] arguments of a list of strings, borrowed from the
/// line where they have no escapes.
#[derive(Default)]
struct Head<'a> {
    arguments: [Cow<'a, str>; HEAD],
    count: usize,
}

impl<'de> Deserialize<'de> for Head<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(HeadVisitor)
    }
}

struct HeadVisitor;

impl<'de> Visitor<'de> for HeadVisitor {
    type Value = Head<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a list of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        let mut head = Head::default();
        loop {
            let keep = head.count < HEAD;
            match items.next_element_seed(Argument {
                keep,
                at: PhantomData,
            })? {
                None => return Ok(head),
                Some(Some(argument)) => {
                    head.arguments[head.count] = argument;
                    head.count += 1;
                }
                Some(None) => {}
            }
        }
    }
}

/// One argument: a string, kept only when `keep` (no copy is made of
/// the others, even with escapes).
struct Argument<'a> {
    keep: bool,
    at: PhantomData<&'a ()>,
}

impl<'de> DeserializeSeed<'de> for Argument<'de> {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Argument<'de> {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(self.keep.then_some(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(self.keep.then(|| Cow::Owned(text.to_string())))
    }
}
