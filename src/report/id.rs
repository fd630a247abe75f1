//! The short strings records carry (runner instances, action ids,
//! program names), held inline when they fit.
//!
//! Every event names its runner instance and most an action: as `String`s
//! that is two allocations per line, freed on another thread, for strings
//! that are nearly always under 30 bytes (`0badcafe-123456`). An [`Id`]
//! keeps those inline and only longer ones on the heap.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// The longest string held inline: the enum stays 32 bytes.
const INLINE: usize = 30;

/// A string, inline when it is at most [`INLINE`] bytes long.
#[derive(Clone)]
pub struct Id(Repr);

#[derive(Clone)]
enum Repr {
    Inline { length: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Id {
    /// The string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { length, bytes } => {
                let bytes = &bytes[..usize::from(*length)];
                // SAFETY: `bytes` is a copy of a whole `&str` made by
                // `From<&str>`, the only way to build `Repr::Inline`, so it
                // is valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Repr::Heap(text) => text,
        }
    }
}

impl From<&str> for Id {
    fn from(text: &str) -> Self {
        if text.len() > INLINE {
            return Id(Repr::Heap(text.into()));
        }
        let mut bytes = [0; INLINE];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Id(Repr::Inline {
            length: text.len() as u8,
            bytes,
        })
    }
}

impl Default for Id {
    fn default() -> Self {
        Id::from("")
    }
}

impl Deref for Id {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Id {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Id {}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// As `str` hashes, so that a map keyed by `Id` is looked up by `&str`.
impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), formatter)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn short_and_long_strings_read_back_and_look_up_as_str() {
        // Why it matters: ids pair an action's start with its finish; the
        // inline and heap forms must be the same string to the maps.
        let short = "0badcafe-123456";
        let exactly = "x".repeat(INLINE);
        let long = "é".repeat(INLINE);
        for text in [short, "", exactly.as_str(), long.as_str()] {
            let id = Id::from(text);
            assert_eq!(id.as_str(), text);
            assert_eq!(id, text);
            assert_eq!(id.clone(), id);
            assert_eq!(format!("{id:?}"), format!("{text:?}"));
            let map = HashMap::from([(id, 1)]);
            assert_eq!(map.get(text), Some(&1));
        }
        assert_eq!(std::mem::size_of::<Id>(), 32);
    }
}
