//! The cgroup v2 model that per-action accounting builds on.
//!
//! - [`parse`]: pure parsers of the kernel files we read (`memory.events`,
//!   the PSI files, single values).

pub mod parse;

pub use parse::{MemoryEvents, ParseError, PressureTotals};
