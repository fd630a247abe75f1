//! What a cgroup lets us measure, for the startup log and the startup check.
//!
//! [`check_required_files`] fails when accounting cannot work at all and
//! says how to fix it; [`probe_capabilities`] reports the optional pieces
//! (a resettable `memory.peak`, the `oom_group_kill` event, PSI) whose
//! absence only makes some fields read 0 or stay unset.

use std::fmt;
use std::path::{Path, PathBuf};

use super::parse;
use super::peak::{MemoryPeakTracker, PeakUnavailable};
use super::{
    FileError, CGROUP_PROCS_FILE, CGROUP_TYPE_FILE, CPU_PRESSURE_FILE, IO_PRESSURE_FILE,
    MEMORY_EVENTS_FILE, MEMORY_PRESSURE_FILE,
};

/// Why a cgroup cannot be used for accounting, or could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{cgroup} is not a cgroup v2 directory: it has no {CGROUP_PROCS_FILE}")]
    NotACgroup { cgroup: PathBuf },
    #[error(
        "{cgroup} is the root cgroup, which has no {MEMORY_EVENTS_FILE}: run rbe-runner in a \
         cgroup of its own (a systemd service, a container) with the memory controller enabled"
    )]
    RootCgroup { cgroup: PathBuf },
    #[error(
        "{MEMORY_EVENTS_FILE} is missing: the memory controller is not enabled for cgroup \
         {cgroup}: enable it in the parent's cgroup.subtree_control (cgroup v1 hosts are not \
         supported)"
    )]
    MemoryControllerDisabled { cgroup: PathBuf },
}

/// Whether `memory.peak` can measure one action.
#[derive(Debug)]
pub enum MemoryPeakCapability {
    /// The watermark can be reset per descriptor (Linux 6.12 and newer).
    ResettablePerDescriptor,
    /// It cannot; `memory_peak` will be reported as 0.
    Unavailable(PeakUnavailable),
}

/// The optional measurements a cgroup supports.
#[derive(Debug)]
pub struct CgroupCapabilities {
    /// Whether per-action peaks can be measured.
    pub memory_peak: MemoryPeakCapability,
    /// Whether `memory.events` reports `oom_group_kill` (Linux 5.17 and
    /// newer); without it that count always reads 0.
    pub oom_group_kill_event: bool,
    /// Whether `cpu.pressure` is present.
    pub cpu_pressure: bool,
    /// Whether `memory.pressure` is present.
    pub memory_pressure: bool,
    /// Whether `io.pressure` is present.
    pub io_pressure: bool,
}

impl fmt::Display for CgroupCapabilities {
    /// One line for the startup log.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.memory_peak {
            MemoryPeakCapability::ResettablePerDescriptor => {
                write!(formatter, "memory.peak: resettable per descriptor")?
            }
            MemoryPeakCapability::Unavailable(reason) => {
                write!(formatter, "memory.peak: not measured, {reason}")?
            }
        }
        let present = |yes| {
            if yes {
                "reported"
            } else {
                "not reported (reads 0)"
            }
        };
        write!(
            formatter,
            "; memory.events oom_group_kill: {}",
            present(self.oom_group_kill_event)
        )?;
        let pressure: Vec<&str> = [
            (self.cpu_pressure, "cpu"),
            (self.memory_pressure, "memory"),
            (self.io_pressure, "io"),
        ]
        .into_iter()
        .filter_map(|(available, name)| available.then_some(name))
        .collect();
        if pressure.is_empty() {
            write!(formatter, "; PSI: not available")
        } else {
            write!(formatter, "; PSI: {}", pressure.join(", "))
        }
    }
}

/// Checks that `cgroup` is a cgroup v2 directory with the files accounting
/// cannot do without, and explains how to fix it when it is not.
pub fn check_required_files(cgroup: &Path) -> Result<(), CapabilityError> {
    if !exists(&cgroup.join(CGROUP_PROCS_FILE))? {
        return Err(CapabilityError::NotACgroup {
            cgroup: cgroup.to_owned(),
        });
    }
    if !exists(&cgroup.join(MEMORY_EVENTS_FILE))? {
        // cgroup.type exists in every cgroup but the root.
        return Err(if exists(&cgroup.join(CGROUP_TYPE_FILE))? {
            CapabilityError::MemoryControllerDisabled {
                cgroup: cgroup.to_owned(),
            }
        } else {
            CapabilityError::RootCgroup {
                cgroup: cgroup.to_owned(),
            }
        });
    }
    Ok(())
}

/// Reports which optional measurements `cgroup` supports.
///
/// To find out whether `memory.peak` can be reset, this resets it through a
/// descriptor of its own, as a [`MemoryPeakTracker`] would; since the reset
/// only affects reads through that descriptor, nobody else notices.
pub fn probe_capabilities(cgroup: &Path) -> Result<CgroupCapabilities, CapabilityError> {
    let memory_peak = match MemoryPeakTracker::start(cgroup).into_unavailable_reason() {
        None => MemoryPeakCapability::ResettablePerDescriptor,
        Some(reason) => MemoryPeakCapability::Unavailable(reason),
    };

    let memory_events_path = cgroup.join(MEMORY_EVENTS_FILE);
    let oom_group_kill_event = match super::read_optional(&memory_events_path)? {
        None => false,
        Some(text) => parse::parse_flat_keyed(&text)
            .map_err(FileError::parse(&memory_events_path))?
            .iter()
            .any(|(key, _)| *key == "oom_group_kill"),
    };

    Ok(CgroupCapabilities {
        memory_peak,
        oom_group_kill_event,
        cpu_pressure: pressure_present(&cgroup.join(CPU_PRESSURE_FILE))?,
        memory_pressure: pressure_present(&cgroup.join(MEMORY_PRESSURE_FILE))?,
        io_pressure: pressure_present(&cgroup.join(IO_PRESSURE_FILE))?,
    })
}

fn exists(path: &Path) -> Result<bool, FileError> {
    path.try_exists().map_err(FileError::io(path))
}

/// Whether a PSI file is present; a present but malformed one is an error,
/// since counters would then fail on every action.
fn pressure_present(path: &Path) -> Result<bool, FileError> {
    let Some(text) = super::read_optional(path)? else {
        return Ok(false);
    };
    parse::parse_pressure(&text).map_err(FileError::parse(path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::test_support::{fake_cgroup, memory_events_text, pressure_text};
    use crate::cgroup::MEMORY_PEAK_FILE;

    #[test]
    fn a_cgroup_with_the_memory_controller_passes_the_check() {
        let cgroup = fake_cgroup(&[
            (CGROUP_PROCS_FILE, ""),
            (CGROUP_TYPE_FILE, "domain\n"),
            (MEMORY_EVENTS_FILE, &memory_events_text([0; 6])),
        ]);
        check_required_files(cgroup.path()).unwrap();
    }

    #[test]
    fn missing_memory_events_names_the_fix() {
        // Why it matters: this is the first thing operators of a fresh host
        // hit, and "No such file" alone does not tell them what to do.
        let cgroup = fake_cgroup(&[(CGROUP_PROCS_FILE, ""), (CGROUP_TYPE_FILE, "domain\n")]);
        let error = check_required_files(cgroup.path()).unwrap_err();
        assert!(
            matches!(error, CapabilityError::MemoryControllerDisabled { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        for expected in [
            "memory.events is missing",
            "the memory controller is not enabled for cgroup",
            &cgroup.path().display().to_string(),
            "cgroup.subtree_control",
            "cgroup v1 hosts are not supported",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
    }

    #[test]
    fn the_root_cgroup_is_told_apart() {
        // The root cgroup has cgroup.procs but neither cgroup.type nor
        // memory.events, as /sys/fs/cgroup/unified on a hybrid host.
        let cgroup = fake_cgroup(&[(CGROUP_PROCS_FILE, "1\n")]);
        let error = check_required_files(cgroup.path()).unwrap_err();
        assert!(
            matches!(error, CapabilityError::RootCgroup { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("cgroup of its own"), "{error}");
    }

    #[test]
    fn a_directory_that_is_no_cgroup_is_told_apart() {
        let cgroup = fake_cgroup(&[(MEMORY_EVENTS_FILE, &memory_events_text([0; 6]))]);
        let error = check_required_files(cgroup.path()).unwrap_err();
        assert!(
            matches!(error, CapabilityError::NotACgroup { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("cgroup.procs"), "{error}");
    }

    #[test]
    fn probing_a_fully_capable_cgroup() {
        let cgroup = fake_cgroup(&[
            (MEMORY_EVENTS_FILE, &memory_events_text([0; 6])),
            (MEMORY_PEAK_FILE, "0\n"),
            (CPU_PRESSURE_FILE, &pressure_text(0, 0)),
            (MEMORY_PRESSURE_FILE, &pressure_text(0, 0)),
            (IO_PRESSURE_FILE, &pressure_text(0, 0)),
        ]);
        let capabilities = probe_capabilities(cgroup.path()).unwrap();
        assert!(matches!(
            capabilities.memory_peak,
            MemoryPeakCapability::ResettablePerDescriptor
        ));
        assert!(capabilities.oom_group_kill_event);
        assert!(
            capabilities.cpu_pressure && capabilities.memory_pressure && capabilities.io_pressure
        );
        assert_eq!(
            capabilities.to_string(),
            "memory.peak: resettable per descriptor; memory.events oom_group_kill: reported; \
             PSI: cpu, memory, io"
        );
    }

    #[test]
    fn probing_an_older_kernel() {
        // Linux 5.15-like: no memory.peak, no oom_group_kill, cpu.pressure
        // without a full line, PSI otherwise present.
        let cgroup = fake_cgroup(&[
            (
                MEMORY_EVENTS_FILE,
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            ),
            (
                CPU_PRESSURE_FILE,
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
            ),
            (MEMORY_PRESSURE_FILE, &pressure_text(0, 0)),
        ]);
        let capabilities = probe_capabilities(cgroup.path()).unwrap();
        assert!(matches!(
            capabilities.memory_peak,
            MemoryPeakCapability::Unavailable(PeakUnavailable::Missing)
        ));
        assert!(!capabilities.oom_group_kill_event);
        assert!(capabilities.cpu_pressure && capabilities.memory_pressure);
        assert!(!capabilities.io_pressure);
        let line = capabilities.to_string();
        assert!(
            line.starts_with("memory.peak: not measured, memory.peak does not exist"),
            "{line}"
        );
        assert!(
            line.contains("oom_group_kill: not reported (reads 0)"),
            "{line}"
        );
        assert!(line.ends_with("; PSI: cpu, memory"), "{line}");
    }

    #[test]
    fn probing_without_psi_or_memory_controller() {
        let cgroup = fake_cgroup(&[(CGROUP_PROCS_FILE, "")]);
        let capabilities = probe_capabilities(cgroup.path()).unwrap();
        assert!(!capabilities.oom_group_kill_event);
        assert!(capabilities.to_string().ends_with("; PSI: not available"));
    }

    #[test]
    fn a_malformed_pressure_file_fails_the_probe_naming_it() {
        let cgroup = fake_cgroup(&[(IO_PRESSURE_FILE, "some avg10=0.00\n")]);
        match probe_capabilities(cgroup.path()) {
            Err(CapabilityError::File(FileError::Parse { path, .. })) => {
                assert_eq!(path, cgroup.path().join(IO_PRESSURE_FILE))
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }
}
