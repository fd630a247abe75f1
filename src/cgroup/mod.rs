//! The cgroup v2 model that per-action accounting builds on.
//!
//! - [`locate`]: finding the runner's own cgroup directory from
//!   `/proc/self/cgroup` and `/proc/self/mountinfo`.
//! - [`parse`]: pure parsers of the kernel files we read (`memory.events`,
//!   the PSI files, single values).
//! - [`counters`]: a snapshot of a cgroup's cumulative counters and the
//!   per-action usage between two snapshots, as the protocol message.
//! - [`peak`]: the peak memory use during one action, through a
//!   `memory.peak` descriptor reset for that action.

pub mod counters;
pub mod locate;
pub mod parse;
pub mod peak;

#[cfg(test)]
mod test_support;

pub use counters::{CgroupCounters, CounterError};
pub use locate::{
    locate_cgroup, locate_own_cgroup, LocateError, DEFAULT_PROC_SELF_CGROUP,
    DEFAULT_PROC_SELF_MOUNTINFO,
};
pub use parse::{MemoryEvents, ParseError, PressureTotals};
pub use peak::{MemoryPeakTracker, PeakError, PeakUnavailable};

// Names of the cgroup v2 interface files we use, relative to a cgroup
// directory.
const MEMORY_EVENTS_FILE: &str = "memory.events";
const MEMORY_PEAK_FILE: &str = "memory.peak";
const CPU_PRESSURE_FILE: &str = "cpu.pressure";
const MEMORY_PRESSURE_FILE: &str = "memory.pressure";
const IO_PRESSURE_FILE: &str = "io.pressure";
