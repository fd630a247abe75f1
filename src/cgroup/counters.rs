//! Snapshots of a cgroup's cumulative counters, and the per-action usage
//! computed from two of them.
//!
//! Every counter read here only grows while the cgroup exists, so the usage
//! of an action is `after - before`. A counter that went down means the
//! cgroup was removed and created again between the snapshots; its delta is
//! then unknown, and we report 0 and log the fact rather than a wrapped
//! number.

use std::path::Path;

use super::parse::{self, Limit, MemoryEvents, PressureTotals};
use super::{
    FileError, CPU_PRESSURE_FILE, IO_PRESSURE_FILE, MEMORY_EVENTS_FILE, MEMORY_MAX_FILE,
    MEMORY_PRESSURE_FILE,
};
use crate::proto::resourceusage::CgroupResourceUsage;

/// The cumulative counters of one cgroup at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    /// The counters of `memory.events`.
    pub memory_events: MemoryEvents,
    /// Stall totals of `cpu.pressure`; `None` when the kernel provides no
    /// PSI for this cgroup (built without it, booted with `psi=0`, or
    /// disabled through `cgroup.pressure`).
    pub cpu_pressure: Option<PressureTotals>,
    /// Stall totals of `memory.pressure`; `None` as for `cpu_pressure`.
    pub memory_pressure: Option<PressureTotals>,
    /// Stall totals of `io.pressure`; `None` as for `cpu_pressure`.
    pub io_pressure: Option<PressureTotals>,
}

impl CgroupCounters {
    /// Reads the counters of the cgroup whose directory is `cgroup`.
    ///
    /// `memory.events` must exist (see
    /// [`super::capabilities::check_required_files`] for a startup check
    /// that explains its absence); missing PSI files are recorded as `None`.
    pub fn read(cgroup: &Path) -> Result<Self, FileError> {
        Ok(CgroupCounters {
            memory_events: read_memory_events(cgroup)?,
            cpu_pressure: read_pressure(&cgroup.join(CPU_PRESSURE_FILE))?,
            memory_pressure: read_pressure(&cgroup.join(MEMORY_PRESSURE_FILE))?,
            io_pressure: read_pressure(&cgroup.join(IO_PRESSURE_FILE))?,
        })
    }

    /// The usage between `before` and `self`, as reported to bb_worker.
    ///
    /// `memory_peak` is left at 0 ("not measured"): it is not a difference of
    /// counters, and comes from a [`super::peak::MemoryPeakTracker`]. PSI
    /// durations are absent when either snapshot lacks the file.
    pub fn usage_since(&self, before: &CgroupCounters) -> CgroupResourceUsage {
        let events_after = &self.memory_events;
        let events_before = &before.memory_events;
        let event = |name, before, after| saturating_i64(name, counter_delta(name, before, after));
        let (memory_some, memory_full) = pressure_delta(
            "memory.pressure",
            before.memory_pressure,
            self.memory_pressure,
        );
        let (cpu_some, cpu_full) =
            pressure_delta("cpu.pressure", before.cpu_pressure, self.cpu_pressure);
        let (io_some, io_full) =
            pressure_delta("io.pressure", before.io_pressure, self.io_pressure);
        CgroupResourceUsage {
            memory_events_low: event("memory.events low", events_before.low, events_after.low),
            memory_events_high: event("memory.events high", events_before.high, events_after.high),
            memory_events_max: event("memory.events max", events_before.max, events_after.max),
            memory_events_oom: event("memory.events oom", events_before.oom, events_after.oom),
            memory_events_oom_kill: event(
                "memory.events oom_kill",
                events_before.oom_kill,
                events_after.oom_kill,
            ),
            memory_events_oom_group_kill: event(
                "memory.events oom_group_kill",
                events_before.oom_group_kill,
                events_after.oom_group_kill,
            ),
            memory_peak: 0,
            memory_pressure_some_total: memory_some,
            memory_pressure_full_total: memory_full,
            cpu_pressure_some_total: cpu_some,
            cpu_pressure_full_total: cpu_full,
            io_pressure_some_total: io_some,
            io_pressure_full_total: io_full,
        }
    }
}

/// The `memory.events` counters of the cgroup whose directory is `cgroup`.
pub fn read_memory_events(cgroup: &Path) -> Result<MemoryEvents, FileError> {
    super::read_parsed(&cgroup.join(MEMORY_EVENTS_FILE), parse::parse_memory_events)
}

/// The `memory.max` limit of the cgroup whose directory is `cgroup`.
pub fn read_memory_max(cgroup: &Path) -> Result<Limit, FileError> {
    super::read_parsed(&cgroup.join(MEMORY_MAX_FILE), parse::parse_limit)
}

fn read_pressure(path: &Path) -> Result<Option<PressureTotals>, FileError> {
    let Some(text) = super::read_optional(path)? else {
        return Ok(None);
    };
    parse::parse_pressure(&text)
        .map(Some)
        .map_err(FileError::parse(path))
}

fn counter_delta(counter: &str, before: u64, after: u64) -> u64 {
    after.checked_sub(before).unwrap_or_else(|| {
        tracing::error!(
            counter,
            before,
            after,
            "cgroup counter went down (the cgroup was probably re-created); reporting a zero delta"
        );
        0
    })
}

/// Converts a delta to the protocol's signed type. A delta above `i64::MAX`
/// cannot come from a real kernel; it is clamped and logged.
fn saturating_i64(counter: &str, delta: u64) -> i64 {
    i64::try_from(delta).unwrap_or_else(|_| {
        tracing::error!(
            counter,
            delta,
            "cgroup counter delta exceeds i64::MAX; clamping"
        );
        i64::MAX
    })
}

/// The `some` and `full` deltas of one PSI file as durations, or `None` for
/// both when either snapshot lacks the file.
fn pressure_delta(
    file: &str,
    before: Option<PressureTotals>,
    after: Option<PressureTotals>,
) -> (Option<prost_types::Duration>, Option<prost_types::Duration>) {
    let (Some(before), Some(after)) = (before, after) else {
        return (None, None);
    };
    let some = counter_delta(
        &format!("{file} some"),
        before.some_micros,
        after.some_micros,
    );
    let full = counter_delta(
        &format!("{file} full"),
        before.full_micros,
        after.full_micros,
    );
    (
        Some(micros_to_duration(some)),
        Some(micros_to_duration(full)),
    )
}

const MICROS_PER_SECOND: u64 = 1_000_000;

fn micros_to_duration(micros: u64) -> prost_types::Duration {
    // Both casts are lossless: u64::MAX / 10^6 is far below i64::MAX, and the
    // remainder times 1000 is below 10^9.
    prost_types::Duration {
        seconds: (micros / MICROS_PER_SECOND) as i64,
        nanos: ((micros % MICROS_PER_SECOND) * 1000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::cgroup::test_support::{
        fake_cgroup, memory_events_text, pressure_text, write_files,
    };

    fn duration(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos })
    }

    #[test]
    fn reads_memory_events_and_pressure_from_a_cgroup_directory() {
        let cgroup = fake_cgroup(&[
            (MEMORY_EVENTS_FILE, &memory_events_text([1, 2, 3, 4, 5, 6])),
            (CPU_PRESSURE_FILE, &pressure_text(10, 0)),
            (MEMORY_PRESSURE_FILE, &pressure_text(20, 15)),
            (IO_PRESSURE_FILE, &pressure_text(30, 25)),
        ]);
        let counters = CgroupCounters::read(cgroup.path()).unwrap();
        assert_eq!(
            counters.memory_events,
            MemoryEvents {
                low: 1,
                high: 2,
                max: 3,
                oom: 4,
                oom_kill: 5,
                oom_group_kill: 6
            }
        );
        assert_eq!(
            counters.memory_pressure,
            Some(PressureTotals {
                some_micros: 20,
                full_micros: 15
            })
        );
        assert_eq!(counters.cpu_pressure.unwrap().some_micros, 10);
        assert_eq!(counters.io_pressure.unwrap().full_micros, 25);
    }

    #[test]
    fn missing_pressure_files_are_recorded_as_absent() {
        // Kernels without PSI have no *.pressure files; that is "not
        // measured", not an error.
        let cgroup = fake_cgroup(&[(MEMORY_EVENTS_FILE, &memory_events_text([0; 6]))]);
        let counters = CgroupCounters::read(cgroup.path()).unwrap();
        assert_eq!(counters.cpu_pressure, None);
        assert_eq!(counters.memory_pressure, None);
        assert_eq!(counters.io_pressure, None);
    }

    #[test]
    fn missing_memory_events_is_an_error_naming_the_file() {
        let cgroup = fake_cgroup(&[(CPU_PRESSURE_FILE, &pressure_text(1, 1))]);
        match CgroupCounters::read(cgroup.path()) {
            Err(FileError::Io { path, source }) => {
                assert_eq!(path, cgroup.path().join(MEMORY_EVENTS_FILE));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_file_is_an_error_naming_the_file_and_line() {
        let cgroup = fake_cgroup(&[
            (MEMORY_EVENTS_FILE, &memory_events_text([0; 6])),
            (
                IO_PRESSURE_FILE,
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=12",
            ),
        ]);
        let error = CgroupCounters::read(cgroup.path()).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, FileError::Parse { path, .. } if path.ends_with(IO_PRESSURE_FILE)),
            "{error:?}"
        );
        assert!(
            message.contains("io.pressure") && message.contains("line 1"),
            "{message}"
        );
    }

    #[test]
    fn usage_is_the_difference_of_two_snapshots() {
        let cgroup = fake_cgroup(&[
            (MEMORY_EVENTS_FILE, &memory_events_text([1, 2, 3, 4, 5, 6])),
            (CPU_PRESSURE_FILE, &pressure_text(1_000, 0)),
            (MEMORY_PRESSURE_FILE, &pressure_text(5, 5)),
            (IO_PRESSURE_FILE, &pressure_text(0, 0)),
        ]);
        let before = CgroupCounters::read(cgroup.path()).unwrap();
        write_files(
            cgroup.path(),
            &[
                (
                    MEMORY_EVENTS_FILE,
                    &memory_events_text([1, 12, 23, 5, 7, 7]),
                ),
                (CPU_PRESSURE_FILE, &pressure_text(2_501_000, 0)),
                (MEMORY_PRESSURE_FILE, &pressure_text(5, 5)),
                (IO_PRESSURE_FILE, &pressure_text(3_000_000_007, 1)),
            ],
        );
        let after = CgroupCounters::read(cgroup.path()).unwrap();
        let usage = after.usage_since(&before);
        assert_eq!(usage.memory_events_low, 0);
        assert_eq!(usage.memory_events_high, 10);
        assert_eq!(usage.memory_events_max, 20);
        assert_eq!(usage.memory_events_oom, 1);
        assert_eq!(usage.memory_events_oom_kill, 2);
        assert_eq!(usage.memory_events_oom_group_kill, 1);
        assert_eq!(
            usage.memory_peak, 0,
            "the peak comes from MemoryPeakTracker"
        );
        assert_eq!(usage.cpu_pressure_some_total, duration(2, 500_000_000));
        assert_eq!(usage.cpu_pressure_full_total, duration(0, 0));
        assert_eq!(usage.memory_pressure_some_total, duration(0, 0));
        assert_eq!(usage.io_pressure_some_total, duration(3_000, 7_000));
        assert_eq!(usage.io_pressure_full_total, duration(0, 1_000));
    }

    #[test]
    fn pressure_missing_in_either_snapshot_is_not_reported() {
        let with_psi = CgroupCounters {
            cpu_pressure: Some(PressureTotals {
                some_micros: 1,
                full_micros: 1,
            }),
            ..CgroupCounters::default()
        };
        let without_psi = CgroupCounters::default();
        let usage = with_psi.usage_since(&without_psi);
        assert_eq!(usage.cpu_pressure_some_total, None);
        assert_eq!(usage.cpu_pressure_full_total, None);
        let usage = without_psi.usage_since(&with_psi);
        assert_eq!(usage.cpu_pressure_some_total, None);
    }

    #[test]
    fn a_counter_that_went_down_gives_zero_and_an_error_log() {
        // Why it matters: a re-created cgroup restarts its counters, and a
        // wrapped-around delta would report billions of OOM kills.
        let before = CgroupCounters {
            memory_events: MemoryEvents {
                oom_kill: 9,
                high: 1,
                ..MemoryEvents::default()
            },
            io_pressure: Some(PressureTotals {
                some_micros: 500,
                full_micros: 100,
            }),
            ..CgroupCounters::default()
        };
        let after = CgroupCounters {
            memory_events: MemoryEvents {
                oom_kill: 2,
                high: 4,
                ..MemoryEvents::default()
            },
            io_pressure: Some(PressureTotals {
                some_micros: 700,
                full_micros: 50,
            }),
            ..CgroupCounters::default()
        };
        let (usage, logs) = capture_logs(|| after.usage_since(&before));
        assert_eq!(usage.memory_events_oom_kill, 0);
        assert_eq!(usage.memory_events_high, 3);
        assert_eq!(usage.io_pressure_some_total, duration(0, 200_000));
        assert_eq!(usage.io_pressure_full_total, duration(0, 0));
        assert!(logs.contains("ERROR"), "{logs}");
        assert!(logs.contains("memory.events oom_kill"), "{logs}");
        assert!(logs.contains("io.pressure full"), "{logs}");
        assert!(!logs.contains("memory.events high"), "{logs}");
    }

    #[test]
    fn microseconds_convert_to_durations_exactly() {
        assert_eq!(
            micros_to_duration(1_527),
            prost_types::Duration {
                seconds: 0,
                nanos: 1_527_000
            }
        );
        assert_eq!(
            micros_to_duration(u64::MAX),
            prost_types::Duration {
                seconds: 18_446_744_073_709,
                nanos: 551_615_000
            }
        );
    }

    /// Runs `f` with a subscriber that records formatted events, and returns
    /// its result with what was logged.
    fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let logs = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        (result, logs)
    }
}
