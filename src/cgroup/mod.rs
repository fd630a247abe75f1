//! The cgroup v2 model that per-action accounting builds on.
//!
//! - [`locate`]: finding the runner's own cgroup directory from
//!   `/proc/self/cgroup` and `/proc/self/mountinfo`.
//! - [`parse`]: pure parsers of the kernel files we read (`memory.events`,
//!   the PSI files, single values).

pub mod locate;
pub mod parse;

pub use locate::{
    locate_cgroup, locate_own_cgroup, LocateError, DEFAULT_PROC_SELF_CGROUP,
    DEFAULT_PROC_SELF_MOUNTINFO,
};
pub use parse::{MemoryEvents, ParseError, PressureTotals};
