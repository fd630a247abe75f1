//! Fake cgroup directories for unit tests: a temporary directory holding
//! whichever interface files a test needs, with the contents it chooses.

use std::fs;
use std::path::Path;

use tempfile::TempDir;

/// Writes each `(file name, contents)` pair into `directory`, replacing any
/// previous contents.
pub(crate) fn write_files(directory: &Path, files: &[(&str, &str)]) {
    for (name, contents) in files {
        let path = directory.join(name);
        if let Some(parent) = path.parent() {
            if let Err(error) = fs::create_dir_all(parent) {
                panic!("creating fixture directory {}: {error}", parent.display());
            }
        }
        if let Err(error) = fs::write(&path, contents) {
            panic!("writing fixture {}: {error}", path.display());
        }
    }
}

/// Creates a temporary directory standing in for a cgroup, holding `files`.
pub(crate) fn fake_cgroup(files: &[(&str, &str)]) -> TempDir {
    let directory = tempfile::tempdir().expect("creating a temporary directory");
    write_files(directory.path(), files);
    directory
}

/// memory.events as a current kernel writes it, with the given counters in
/// the order low, high, max, oom, oom_kill, oom_group_kill.
pub(crate) fn memory_events_text(counters: [u64; 6]) -> String {
    let [low, high, max, oom, oom_kill, oom_group_kill] = counters;
    format!(
        "low {low}\nhigh {high}\nmax {max}\noom {oom}\noom_kill {oom_kill}\n\
         oom_group_kill {oom_group_kill}\nsock_throttled 0\n"
    )
}

/// A PSI file with the given `some` and `full` totals in microseconds.
pub(crate) fn pressure_text(some_micros: u64, full_micros: u64) -> String {
    format!(
        "some avg10=0.12 avg60=0.05 avg300=0.01 total={some_micros}\n\
         full avg10=0.00 avg60=0.00 avg300=0.00 total={full_micros}\n"
    )
}
