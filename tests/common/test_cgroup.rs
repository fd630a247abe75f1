//! A test-owned parent cgroup on the unified hierarchy, for tests that run
//! the runner with `actionCgroups`; removed on drop with everything in it.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rbe_runner::cgroup::action::kill_and_remove;
use rbe_runner::cgroup::host::mount_point_of;
use rbe_runner::cgroup::{
    locate_own_cgroup, DEFAULT_PROC_SELF_CGROUP, DEFAULT_PROC_SELF_MOUNTINFO,
};
use serde_json::Value;

use super::{skip, TestRunner};

pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// Creates the cgroup, or returns None with `test` skipped (loudly;
    /// failing under CI), saying why this machine cannot run it.
    pub fn create(test: &str) -> Option<TestCgroup> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let problem = if !nix::unistd::Uid::effective().is_root() {
            "needs root".to_string()
        } else {
            match locate_own_cgroup(
                Path::new(DEFAULT_PROC_SELF_CGROUP),
                Path::new(DEFAULT_PROC_SELF_MOUNTINFO),
            ) {
                Ok(own) => {
                    let path = mount_point_of(&own).join(format!(
                        "rbe-runner-test-{}-{}",
                        std::process::id(),
                        COUNTER.fetch_add(1, Ordering::SeqCst)
                    ));
                    match std::fs::create_dir(&path) {
                        Ok(()) => return Some(TestCgroup { path }),
                        Err(err) => format!("cannot create {}: {err}", path.display()),
                    }
                }
                Err(err) => format!("no cgroup v2 here: {err}"),
            }
        };
        skip(test, &problem);
        None
    }

    /// Starts a runner with `config` inside this cgroup (it joins before
    /// exec, so the runner's own cgroup is this one from its first
    /// instruction).
    pub fn start_runner_with(&self, config: Value) -> TestRunner {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .unwrap();
        TestRunner::start_with(config, move |command| {
            let fd = procs.as_raw_fd();
            let join = move || {
                // SAFETY: `fd` stays open until the spawn (forgotten below)
                // and the kernel reads one byte of a static string.
                if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: between fork and exec the hook makes only write(2) on
            // a descriptor opened before the fork: async-signal-safe, no
            // allocation, no lock.
            unsafe { command.pre_exec(join) };
            // Keep the descriptor open until spawn (the closure owns a copy
            // of the number only).
            std::mem::forget(procs);
        })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The runner's own cleanup step: cgroup.kill, wait until empty,
        // remove the tree.
        if let Err(err) = kill_and_remove(&self.path, Duration::from_secs(10)) {
            eprintln!("cannot remove test cgroup: {err}");
        }
    }
}
