//! The highest memory use of a cgroup during one action, from `memory.peak`.
//!
//! `memory.peak` holds the high watermark of `memory.current` since the
//! cgroup was created, which says nothing about one action in a long-lived
//! cgroup. Since Linux 6.12 a write of any non-empty string to the file
//! resets the watermark *for the descriptor that wrote*: later reads through
//! that descriptor report the peak since the reset, while other readers keep
//! seeing the lifetime peak. So the tracker opens the file read-write,
//! writes once at the start of the action, keeps the descriptor open, and
//! reads the peak through it (seeking back to 0) when the action ends.
//!
//! Before 6.12 the file is read-only (opening it for writing fails with
//! EACCES even for root), and before 5.19 it does not exist; the tracker then
//! measures nothing and reports 0, the protocol's "not measured".

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::parse;
use super::{FileError, MEMORY_PEAK_FILE};

/// What is written to reset the watermark; the kernel accepts any
/// non-empty string.
const RESET_COMMAND: &[u8] = b"reset\n";

/// Why a [`MemoryPeakTracker`] measures nothing.
#[derive(Debug)]
pub enum PeakUnavailable {
    /// `memory.peak` does not exist: the memory controller is not enabled
    /// for the cgroup, it is the root cgroup, or the kernel predates 5.19.
    Missing,
    /// The file could not be opened for writing, or the reset write was
    /// refused: the kernel predates 6.12 (the file is read-only), or we lack
    /// permission.
    ResetRefused(io::Error),
}

impl fmt::Display for PeakUnavailable {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeakUnavailable::Missing => write!(
                formatter,
                "memory.peak does not exist (memory controller not enabled, root cgroup, or \
                 Linux older than 5.19)"
            ),
            PeakUnavailable::ResetRefused(error) => write!(
                formatter,
                "memory.peak cannot be reset ({error}); resetting per descriptor needs Linux 6.12 \
                 or newer and write permission"
            ),
        }
    }
}

/// Measures the peak memory use of a cgroup from the moment it is started,
/// through a `memory.peak` descriptor of its own (see the module docs).
///
/// Hold it for the whole action; the reset only lasts as long as the
/// descriptor.
#[derive(Debug)]
pub struct MemoryPeakTracker {
    /// `<cgroup>/memory.peak`, for error messages.
    path: PathBuf,
    /// The descriptor that was reset, or why there is none.
    descriptor: Result<File, PeakUnavailable>,
}

impl MemoryPeakTracker {
    /// Opens `<cgroup>/memory.peak` read-write and resets its watermark for
    /// this descriptor. Never fails: when the file is missing or the reset is
    /// refused, the tracker reports 0 and [`Self::unavailable_reason`] says
    /// why.
    pub fn start(cgroup: &Path) -> Self {
        let path = cgroup.join(MEMORY_PEAK_FILE);
        let descriptor = Self::open_and_reset(&path);
        MemoryPeakTracker { path, descriptor }
    }

    fn open_and_reset(path: &Path) -> Result<File, PeakUnavailable> {
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(PeakUnavailable::Missing)
            }
            Err(error) => return Err(PeakUnavailable::ResetRefused(error)),
        };
        file.write_all(RESET_COMMAND)
            .map_err(PeakUnavailable::ResetRefused)?;
        Ok(file)
    }

    /// Whether the peak is being measured.
    pub fn is_measuring(&self) -> bool {
        self.descriptor.is_ok()
    }

    /// Why the peak is not being measured, if it is not.
    pub fn unavailable_reason(&self) -> Option<&PeakUnavailable> {
        self.descriptor.as_ref().err()
    }

    /// Consumes the tracker, returning why it measured nothing, if it did not.
    pub fn into_unavailable_reason(self) -> Option<PeakUnavailable> {
        self.descriptor.err()
    }

    /// The highest memory use of the cgroup, in bytes, since [`Self::start`];
    /// 0 when not measuring.
    pub fn peak_bytes(&self) -> Result<u64, FileError> {
        let Ok(mut file) = self.descriptor.as_ref() else {
            return Ok(0);
        };
        file.seek(SeekFrom::Start(0))
            .map_err(FileError::io(&self.path))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(FileError::io(&self.path))?;
        parse::parse_single_value(&text).map_err(FileError::parse(&self.path))
    }
}

/// The lifetime `memory.peak` of `cgroup`, read through a fresh
/// descriptor: the peak of everything that ever ran in it. Right for a
/// cgroup created for one action, which needs no reset (and so works before
/// Linux 6.12 too).
pub fn read_lifetime_peak(cgroup: &Path) -> Result<u64, FileError> {
    super::read_parsed(&cgroup.join(MEMORY_PEAK_FILE), parse::parse_single_value)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::cgroup::test_support::{fake_cgroup, write_files};

    #[test]
    fn resets_through_its_descriptor_and_reads_the_new_peak_through_it() {
        let cgroup = fake_cgroup(&[(MEMORY_PEAK_FILE, "999999\n")]);
        let tracker = MemoryPeakTracker::start(cgroup.path());
        assert!(tracker.is_measuring());
        assert!(tracker.unavailable_reason().is_none());
        // The reset command reached the file through the tracker's
        // descriptor (a regular file simply stores it).
        let written = fs::read(cgroup.path().join(MEMORY_PEAK_FILE)).unwrap();
        assert!(written.starts_with(RESET_COMMAND), "{written:?}");

        // Stand in for the kernel: the file's contents change in place and
        // the tracker must re-read from the start, through its descriptor.
        write_files(cgroup.path(), &[(MEMORY_PEAK_FILE, "4096\n")]);
        assert_eq!(tracker.peak_bytes().unwrap(), 4096);
        write_files(cgroup.path(), &[(MEMORY_PEAK_FILE, "1073741824\n")]);
        assert_eq!(tracker.peak_bytes().unwrap(), 1 << 30);
    }

    #[test]
    fn missing_file_means_not_measured() {
        let cgroup = fake_cgroup(&[]);
        let tracker = MemoryPeakTracker::start(cgroup.path());
        assert!(!tracker.is_measuring());
        assert!(matches!(
            tracker.unavailable_reason(),
            Some(PeakUnavailable::Missing)
        ));
        assert_eq!(tracker.peak_bytes().unwrap(), 0);
    }

    #[test]
    fn read_only_file_means_not_measured() {
        // Before Linux 6.12 memory.peak is read-only and opening it for
        // writing fails with EACCES, for root too. A directory in its place
        // fails the read-write open for root too, which a 0444 regular
        // file would not.
        let cgroup = fake_cgroup(&[]);
        fs::create_dir(cgroup.path().join(MEMORY_PEAK_FILE)).unwrap();
        let tracker = MemoryPeakTracker::start(cgroup.path());
        assert!(!tracker.is_measuring());
        let reason = tracker.unavailable_reason().expect("a reason");
        assert!(
            matches!(reason, PeakUnavailable::ResetRefused(_)),
            "{reason:?}"
        );
        assert!(reason.to_string().contains("6.12"), "{reason}");
        assert_eq!(tracker.peak_bytes().unwrap(), 0);
    }

    #[test]
    fn garbage_in_the_file_is_an_error_naming_it() {
        let cgroup = fake_cgroup(&[(MEMORY_PEAK_FILE, "0\n")]);
        let tracker = MemoryPeakTracker::start(cgroup.path());
        write_files(cgroup.path(), &[(MEMORY_PEAK_FILE, "max\n")]);
        match tracker.peak_bytes() {
            Err(FileError::Parse { path, .. }) => {
                assert_eq!(path, cgroup.path().join(MEMORY_PEAK_FILE))
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }
}
