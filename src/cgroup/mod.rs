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
//! - [`action`]: per-action cgroups in a delegated subtree: creation,
//!   verified cleanup, crash recovery, and the dirty-cgroup gate.
//! - [`budgets`]: the memory budgets above an action (ancestors'
//!   `memory.events.local`) and the counters of its own limits.
//! - [`limits`]: per-action limits (`memory.max`, `cpu.max`, ...): written
//!   into each action's cgroup, read back, and probed at startup.
//! - [`capabilities`]: the startup check (accounting cannot work without
//!   it) and the probe of optional measurements (for the startup log).
//! - [`host`]: startup: from the configuration's cgroup options to the
//!   cgroups the runner samples or manages, every refusal decided there.
//!
//! Every function takes the cgroup directory (or the `/proc` files) as a
//! parameter; the real locations appear only as `DEFAULT_` constants
//! ([`locate`]'s `/proc/self` files, [`host`]'s file system root).
//! Interface files are read through [`FileError`], so
//! every error names its file. The file I/O here is blocking; async
//! callers use `spawn_blocking`.

pub mod action;
pub mod attribution;
pub mod budgets;
pub mod capabilities;
pub mod counters;
pub mod host;
pub mod limits;
pub mod locate;
pub mod parse;
pub mod peak;

#[cfg(test)]
pub(crate) mod test_support;

pub use capabilities::{
    check_required_files, probe_capabilities, CapabilityError, CgroupCapabilities,
    MemoryPeakCapability,
};
pub use counters::CgroupCounters;
pub use locate::{
    locate_cgroup, locate_own_cgroup, LocateError, DEFAULT_PROC_SELF_CGROUP,
    DEFAULT_PROC_SELF_MOUNTINFO,
};
pub use parse::{Limit, MemoryEvents, ParseError, PressureTotals};
pub use peak::{MemoryPeakTracker, PeakUnavailable};

// Names of the cgroup v2 interface files we use, relative to a cgroup
// directory.
const CGROUP_PROCS_FILE: &str = "cgroup.procs";
const CGROUP_TYPE_FILE: &str = "cgroup.type";
const CGROUP_KILL_FILE: &str = "cgroup.kill";
const CGROUP_EVENTS_FILE: &str = "cgroup.events";
const CGROUP_CONTROLLERS_FILE: &str = "cgroup.controllers";
const CGROUP_SUBTREE_CONTROL_FILE: &str = "cgroup.subtree_control";
const MEMORY_EVENTS_FILE: &str = "memory.events";
const MEMORY_PEAK_FILE: &str = "memory.peak";
const MEMORY_MAX_FILE: &str = "memory.max";
const CPU_PRESSURE_FILE: &str = "cpu.pressure";
const MEMORY_PRESSURE_FILE: &str = "memory.pressure";
const IO_PRESSURE_FILE: &str = "io.pressure";

/// Why an interface file of a cgroup could not be used. Every cgroup reader
/// reports through this one type, so each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: std::path::PathBuf,
        source: ParseError,
    },
}

impl FileError {
    /// An I/O error at `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
        move |source| FileError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// A parse error of the text read from `path`.
    pub fn parse(path: &std::path::Path) -> impl FnOnce(ParseError) -> FileError + '_ {
        move |source| FileError::Parse {
            path: path.to_owned(),
            source,
        }
    }
}

/// Reads an interface file and parses it with `parse`.
fn read_parsed<T>(
    path: &std::path::Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(FileError::io(path))?;
    parse(&text).map_err(FileError::parse(path))
}

/// Reads an optional interface file: `None` when it does not exist or the
/// kernel refuses it as unsupported (PSI files on kernels booted with
/// `psi=0`, before such files were hidden outright).
fn read_optional(path: &std::path::Path) -> Result<Option<String>, FileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error)
            if error.kind() == std::io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::EOPNOTSUPP) =>
        {
            Ok(None)
        }
        Err(source) => Err(FileError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod host_tests {
    //! Read-only checks against the kernel the tests run on. They never
    //! write to any cgroup.

    use std::path::Path;

    use super::*;

    /// The PSI files of this process's cgroup v2 as the running kernel writes
    /// them. On a hybrid host the process sits in the unified hierarchy's
    /// root (/sys/fs/cgroup/unified), whose PSI files are system-wide. Fails
    /// loudly on a host without cgroup v2 or PSI, which the runner needs.
    #[test]
    fn the_running_kernel_psi_files_parse() {
        let cgroup = locate_own_cgroup(
            Path::new(DEFAULT_PROC_SELF_CGROUP),
            Path::new(DEFAULT_PROC_SELF_MOUNTINFO),
        )
        .expect("locating this process's cgroup v2");
        for file in [CPU_PRESSURE_FILE, MEMORY_PRESSURE_FILE, IO_PRESSURE_FILE] {
            let path = cgroup.join(file);
            let read = || {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
                parse::parse_pressure(&text)
                    .unwrap_or_else(|error| panic!("parsing {}: {error}\n{text}", path.display()))
            };
            let first = read();
            let second = read();
            // Full stalls are a subset of partial ones.
            assert!(
                first.some_micros >= first.full_micros,
                "{}: {first:?}",
                path.display()
            );
            // Totals only grow.
            assert!(
                second.some_micros >= first.some_micros && second.full_micros >= first.full_micros,
                "{}: {first:?} then {second:?}",
                path.display()
            );
        }
    }
}
