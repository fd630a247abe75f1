//! Per-action cgroups: every action in its own cgroup, removed after it.
//!
//! The runner manages a delegated subtree:
//!
//! ```text
//! <parent>/                 cgroup.subtree_control: +memory +cpu +io +pids (those available)
//! <parent>/runner/          the runner itself (a leaf: no-internal-process rule)
//! <parent>/actions/         cgroup.subtree_control: the same controllers
//! <parent>/actions/<id>/    one action: its process tree, its counters
//! ```
//!
//! A cgroup is a precise handle on an action's process tree: no setsid or
//! double fork leaves it, `cgroup.kill` kills all of it at once, and
//! `cgroup.events` says when it is empty. Cleanup is therefore verified: an
//! action's cgroup is only removed once `populated 0` was seen. A cgroup
//! that cannot be emptied (a process stuck in uninterruptible sleep) makes
//! the manager *dirty*: the runner refuses work, naming the cgroup, until a
//! background retry removes it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procfs::process::Process;
use tokio::sync::watch;

use super::parse::parse_flat_keyed;
use super::{
    CGROUP_CONTROLLERS_FILE, CGROUP_EVENTS_FILE, CGROUP_KILL_FILE, CGROUP_PROCS_FILE,
    CGROUP_SUBTREE_CONTROL_FILE, CGROUP_TYPE_FILE,
};

/// The leaf of the managed parent that holds the runner (and every other
/// process that was in the parent), so that the parent may delegate
/// controllers (the no-internal-process rule).
pub const RUNNER_LEAF: &str = "runner";
/// The child of the managed parent that holds one cgroup per action.
pub const ACTIONS_DIRECTORY: &str = "actions";

/// Controllers enabled for actions when the parent offers them.
const WANTED_CONTROLLERS: [&str; 4] = ["memory", "cpu", "io", "pids"];
/// How long cleanup waits for `populated 0` after `cgroup.kill`.
pub const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a dirty cgroup's removal is retried.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Poll interval while waiting for a cgroup to empty. `cgroup.events`
/// supports poll(2) notification, but a short bounded poll loop keeps this
/// simple and works identically on every filesystem view.
const EMPTY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Errors of the per-action cgroup subtree. Each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ActionCgroupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is the root of the cgroup hierarchy; a runner must not manage a host's root cgroup. \
         Run rbe-runner in a cgroup of its own (a container with a cgroup namespace, or a systemd \
         unit with Delegate=yes), or set actionCgroups.parentPath to a delegated cgroup"
    )]
    RootCgroup { path: PathBuf },
    #[error(
        "{path} is not writable ({source}): the runner needs a delegated cgroup subtree. Use a \
         container with its own cgroup namespace and a writable cgroupfs, or a systemd unit with \
         Delegate=yes"
    )]
    NotDelegated { path: PathBuf, source: io::Error },
    #[error("{path} is not a cgroup v2 directory")]
    NotACgroup { path: PathBuf },
    #[error("{path} could not be emptied: {processes}")]
    NotEmptied { path: PathBuf, processes: String },
    #[error("{path} does not exist: actionCgroups needs cgroup.kill (Linux 5.14 or newer)")]
    NoCgroupKill { path: PathBuf },
    #[error("{path} already exists; refusing to reuse another action's cgroup")]
    AlreadyExists { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ActionCgroupError + '_ {
    move |source| ActionCgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One action's cgroup.
#[derive(Debug)]
pub struct ActionCgroup {
    /// Directory of the cgroup.
    pub path: PathBuf,
    /// The cgroup's directory, open for reading: the child is created in
    /// it (`CLONE_INTO_CGROUP`) or joins it through its `cgroup.procs`
    /// before exec, so the action never runs an instruction outside.
    /// Taken (`None`) once handed to the spawn.
    pub directory: Option<OwnedFd>,
}

/// How a cgroup is emptied and removed; replaceable so that tests can
/// drive the dirty-cgroup gate, which no real process can be made to
/// trigger on demand.
pub type CleanupStep = dyn Fn(&Path, Duration) -> Result<(), ActionCgroupError> + Send + Sync;

/// The delegated subtree and the state of its action cgroups.
pub struct ActionCgroupManager {
    parent: PathBuf,
    actions: PathBuf,
    /// Cgroups that could not be removed, with what was left in them.
    dirty: Mutex<BTreeMap<PathBuf, String>>,
    /// The number of dirty cgroups, for whoever reports the runner's state.
    dirty_count: watch::Sender<usize>,
    cleanup: Box<CleanupStep>,
    cleanup_timeout: Duration,
    retry_interval: Duration,
}

impl std::fmt::Debug for ActionCgroupManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionCgroupManager")
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

impl ActionCgroupManager {
    /// Takes over `parent`: moves this process into `<parent>/runner`,
    /// enables the available controllers for actions, and removes action
    /// cgroups a previous runner left behind (crash recovery). Blocking.
    pub fn setup(parent: &Path) -> Result<Arc<Self>, ActionCgroupError> {
        let manager = Arc::new(Self::new(parent, Box::new(kill_and_remove)));
        manager.take_over()?;
        manager.recover()?;
        Ok(manager)
    }

    /// A manager of `parent` with a custom cleanup step, without touching
    /// the filesystem.
    pub fn new(parent: &Path, cleanup: Box<CleanupStep>) -> Self {
        ActionCgroupManager {
            parent: parent.to_path_buf(),
            actions: parent.join(ACTIONS_DIRECTORY),
            dirty: Mutex::new(BTreeMap::new()),
            dirty_count: watch::channel(0).0,
            cleanup,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// Overrides the retry interval for dirty cgroups (tests).
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// The managed cgroup (the runner's and its actions' common parent).
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Directory holding the action cgroups.
    pub fn actions_directory(&self) -> &Path {
        &self.actions
    }

    fn take_over(&self) -> Result<(), ActionCgroupError> {
        if !self.parent.join(CGROUP_PROCS_FILE).exists() {
            return Err(ActionCgroupError::NotACgroup {
                path: self.parent.clone(),
            });
        }
        if !self.parent.join(CGROUP_TYPE_FILE).exists() {
            return Err(ActionCgroupError::RootCgroup {
                path: self.parent.clone(),
            });
        }
        // cgroup.kill (Linux 5.14) is what makes cleanup atomic against
        // forks; without it every cleanup would fail and the runner would
        // refuse all work, so refuse to start instead.
        if !self.parent.join(CGROUP_KILL_FILE).exists() {
            return Err(ActionCgroupError::NoCgroupKill {
                path: self.parent.join(CGROUP_KILL_FILE),
            });
        }
        let runner = self.parent.join(RUNNER_LEAF);
        create_directory(&runner)?;
        // Every process of the parent moves (an init such as tini, a shell
        // entrypoint), not only the runner: a cgroup that hands controllers
        // to its children may not hold processes itself.
        let procs = runner.join(CGROUP_PROCS_FILE);
        let parent_procs = self.parent.join(CGROUP_PROCS_FILE);
        let mut moved_own = false;
        for round in 0.. {
            if round == 100 {
                return Err(ActionCgroupError::NotEmptied {
                    path: self.parent.clone(),
                    processes: format!(
                        "processes keep appearing in it while moving them to {}: {}",
                        runner.display(),
                        describe_processes(&self.parent)
                    ),
                });
            }
            let text = std::fs::read_to_string(&parent_procs).map_err(io_error(&parent_procs))?;
            let pids: Vec<&str> = text.split_whitespace().collect();
            if pids.is_empty() && moved_own {
                break;
            }
            for pid in pids.iter().copied().chain(
                (!moved_own).then_some("0"), // "0": this process
            ) {
                if let Err(source) = write_file(&procs, pid) {
                    // A process that exited meanwhile is not an error.
                    if source.raw_os_error() == Some(libc::ESRCH) {
                        continue;
                    }
                    return Err(ActionCgroupError::NotDelegated {
                        path: procs.clone(),
                        source,
                    });
                }
            }
            moved_own = true;
        }
        let controllers = enable_controllers(&self.parent)?;
        create_directory(&self.actions)?;
        enable_controllers(&self.actions)?;
        tracing::info!(
            parent = %self.parent.display(),
            controllers = ?controllers,
            "runner moved into its own leaf cgroup; actions get a cgroup each"
        );
        Ok(())
    }

    /// Kills and removes action cgroups left by a runner that died; those
    /// that cannot be removed yet make the runner dirty and are retried.
    fn recover(self: &Arc<Self>) -> Result<(), ActionCgroupError> {
        let entries = std::fs::read_dir(&self.actions).map_err(io_error(&self.actions))?;
        for entry in entries {
            let entry = entry.map_err(io_error(&self.actions))?;
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let path = entry.path();
            let processes = describe_processes(&path);
            match (self.cleanup)(&path, self.cleanup_timeout) {
                Ok(()) => tracing::warn!(
                    cgroup = %path.display(),
                    processes,
                    "removed an action cgroup left behind by a previous runner"
                ),
                Err(err) => {
                    tracing::error!(%err, "cannot remove a leftover action cgroup");
                    self.mark_dirty(&path, err.to_string());
                    self.retry_in_background(path);
                }
            }
        }
        Ok(())
    }

    /// The reason to refuse work, if any action cgroup is dirty.
    pub fn dirty_reason(&self) -> Option<String> {
        let dirty = self.lock_dirty();
        if dirty.is_empty() {
            return None;
        }
        let list: Vec<String> = dirty
            .iter()
            .map(|(path, what)| format!("{} ({what})", path.display()))
            .collect();
        Some(format!(
            "the runner is not clean: action cgroups could not be emptied and removed: {}",
            list.join("; ")
        ))
    }

    fn lock_dirty(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, String>> {
        // Each operation on the map is a single insert or remove.
        crate::sync::lock_unpoisoned(&self.dirty)
    }

    fn mark_dirty(&self, path: &Path, what: String) {
        let mut dirty = self.lock_dirty();
        dirty.insert(path.to_path_buf(), what);
        self.dirty_count.send_replace(dirty.len());
    }

    fn mark_clean(&self, path: &Path) {
        let mut dirty = self.lock_dirty();
        dirty.remove(path);
        self.dirty_count.send_replace(dirty.len());
    }

    /// The number of cgroups that could not be cleaned, as it changes.
    pub fn dirty_count(&self) -> watch::Receiver<usize> {
        self.dirty_count.subscribe()
    }

    /// Creates the cgroup of a new action, named `name` (its action id,
    /// unique across restarts of the runner). Blocking.
    pub fn create(self: &Arc<Self>, name: &str) -> Result<ActionCgroup, ActionCgroupError> {
        let path = self.actions.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ActionCgroupError::AlreadyExists { path })
            }
            Err(source) => return Err(ActionCgroupError::Io { path, source }),
        }
        match File::open(&path) {
            Ok(directory) => Ok(ActionCgroup {
                path,
                directory: Some(directory.into()),
            }),
            Err(source) => {
                // Out of descriptors, typically: the cgroup was made but
                // nothing can join it. rmdir needs no descriptor.
                if let Err(err) = std::fs::remove_dir(&path) {
                    tracing::error!(cgroup = %path.display(), %err,
                        "cannot remove an action cgroup nothing ran in; refusing work until it is");
                    self.mark_dirty(&path, err.to_string());
                    self.retry_in_background(path.clone());
                }
                Err(ActionCgroupError::Io { path, source })
            }
        }
    }

    /// Removes the cgroup of an action that never started. An empty
    /// cgroup is removed with rmdir alone, which needs no descriptor (the
    /// runner may be out of them, which is often why the action did not
    /// start); otherwise, or if that fails, as [`Self::release`] does.
    /// Blocking.
    pub fn discard(self: &Arc<Self>, cgroup: ActionCgroup) -> Result<(), ActionCgroupError> {
        if self.remove_if_empty(&cgroup) {
            return Ok(());
        }
        self.release(cgroup)
    }

    /// Removes the cgroup of an ended action when it is already empty, with
    /// a single rmdir (the kernel refuses to remove a cgroup that has
    /// processes or sub-cgroups). False when it is not; [`Self::release`]
    /// is then needed. Does not block.
    pub fn remove_if_empty(&self, cgroup: &ActionCgroup) -> bool {
        std::fs::remove_dir(&cgroup.path).is_ok()
    }

    /// Kills whatever is left in the action's cgroup, verifies that it is
    /// empty and removes it. On failure the cgroup is marked dirty and a
    /// background task keeps retrying. Blocking.
    pub fn release(self: &Arc<Self>, cgroup: ActionCgroup) -> Result<(), ActionCgroupError> {
        drop(cgroup.directory);
        let path = cgroup.path;
        match (self.cleanup)(&path, self.cleanup_timeout) {
            Ok(()) => Ok(()),
            Err(err) => {
                tracing::error!(%err, "action cgroup could not be cleaned; refusing work until it is");
                self.mark_dirty(&path, err.to_string());
                self.retry_in_background(path);
                Err(err)
            }
        }
    }

    fn retry_in_background(self: &Arc<Self>, path: PathBuf) {
        let manager = self.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(manager.retry_interval);
            match (manager.cleanup)(&path, manager.cleanup_timeout) {
                Ok(()) => {
                    manager.mark_clean(&path);
                    tracing::info!(cgroup = %path.display(), "dirty action cgroup finally removed");
                    return;
                }
                Err(err) => {
                    tracing::warn!(%err, "action cgroup still cannot be cleaned");
                    manager.mark_dirty(&path, err.to_string());
                }
            }
        });
    }
}

/// Pids of every process in `cgroup` and its descendants.
pub fn processes_in(cgroup: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut pending = vec![cgroup.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join(CGROUP_PROCS_FILE)) {
            pids.extend(
                text.lines()
                    .filter_map(|line| line.trim().parse::<i32>().ok()),
            );
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            pending.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Sends `signal` to every process in the cgroup (and its descendants).
pub fn signal_all(cgroup: &Path, signal: nix::sys::signal::Signal) {
    for pid in processes_in(cgroup) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Whether `cgroup.events` reports processes in the cgroup or below.
pub fn is_populated(cgroup: &Path) -> Result<bool, ActionCgroupError> {
    let path = cgroup.join(CGROUP_EVENTS_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let pairs = parse_flat_keyed(&text).map_err(|err| ActionCgroupError::Io {
        path: path.clone(),
        source: io::Error::new(io::ErrorKind::InvalidData, err.to_string()),
    })?;
    Ok(pairs
        .iter()
        .any(|(key, value)| *key == "populated" && *value != 0))
}

/// Waits until the cgroup is empty or `timeout` passed; returns whether it
/// is empty.
pub fn wait_until_empty(cgroup: &Path, timeout: Duration) -> Result<bool, ActionCgroupError> {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_populated(cgroup)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(EMPTY_POLL_INTERVAL);
    }
}

/// The real cleanup step: `cgroup.kill`, wait (bounded) for `populated 0`,
/// remove the cgroup and any sub-cgroups the action created.
pub fn kill_and_remove(cgroup: &Path, timeout: Duration) -> Result<(), ActionCgroupError> {
    kill_cgroup(cgroup)?;
    if !wait_until_empty(cgroup, timeout)? {
        return Err(ActionCgroupError::NotEmptied {
            path: cgroup.to_path_buf(),
            processes: describe_processes(cgroup),
        });
    }
    remove_tree(cgroup)
}

/// SIGKILLs every process in the cgroup and its descendants, atomically
/// with respect to forks (`cgroup.kill`, Linux ≥ 5.14).
pub fn kill_cgroup(cgroup: &Path) -> Result<(), ActionCgroupError> {
    let kill = cgroup.join(CGROUP_KILL_FILE);
    write_file(&kill, "1").map_err(io_error(&kill))
}

/// Removes a cgroup directory and its descendants, deepest first. Cgroup
/// directories are removed with rmdir even though they contain interface
/// files.
fn remove_tree(cgroup: &Path) -> Result<(), ActionCgroupError> {
    if let Ok(entries) = std::fs::read_dir(cgroup) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(cgroup) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ActionCgroupError::Io {
            path: cgroup.to_path_buf(),
            source,
        }),
    }
}

/// `pid (command) state` of each process left in a cgroup, for logs.
pub fn describe_processes(cgroup: &Path) -> String {
    let pids = processes_in(cgroup);
    if pids.is_empty() {
        return "no processes".into();
    }
    pids.iter()
        .map(|&pid| {
            // A process gone meanwhile reads as unknown rather than failing
            // the list.
            let stat = Process::new(pid).and_then(|process| process.stat());
            match stat {
                Ok(stat) => format!("{pid} ({}) state {}", stat.comm, stat.state),
                Err(_) => format!("{pid} () state ?"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn create_directory(path: &Path) -> Result<(), ActionCgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) if source.kind() == io::ErrorKind::PermissionDenied => {
            Err(ActionCgroupError::NotDelegated {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ActionCgroupError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_file(path: &Path, content: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(content.as_bytes())
}

/// Enables the wanted controllers that `cgroup` offers for its children.
/// Returns the ones enabled.
fn enable_controllers(cgroup: &Path) -> Result<Vec<String>, ActionCgroupError> {
    let available_path = cgroup.join(CGROUP_CONTROLLERS_FILE);
    let available = std::fs::read_to_string(&available_path).map_err(io_error(&available_path))?;
    let enable: Vec<String> = WANTED_CONTROLLERS
        .iter()
        .filter(|wanted| available.split_whitespace().any(|c| c == **wanted))
        .map(|c| c.to_string())
        .collect();
    if enable.is_empty() {
        return Ok(enable);
    }
    let control = cgroup.join(CGROUP_SUBTREE_CONTROL_FILE);
    let request = enable
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    write_file(&control, &request).map_err(|source| ActionCgroupError::NotDelegated {
        path: control.clone(),
        source,
    })?;
    Ok(enable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Why it matters: a cgroup that cannot be emptied means processes of
    /// an old action may still write into the build directory; bb_worker
    /// must stop sending work here until it is clean, and start again by
    /// itself once it is.
    #[test]
    fn a_dirty_cgroup_refuses_work_until_the_background_retry_cleans_it() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("parent");
        std::fs::create_dir_all(parent.join("actions")).unwrap();
        std::fs::write(parent.join("actions/cgroup.procs"), "").unwrap();
        let stuck = Arc::new(AtomicBool::new(true));
        let stuck_in_step = stuck.clone();
        let manager = Arc::new(
            ActionCgroupManager::new(
                &parent,
                Box::new(move |path: &Path, _| {
                    if stuck_in_step.load(Ordering::SeqCst) {
                        Err(ActionCgroupError::NotEmptied {
                            path: path.to_path_buf(),
                            processes: "4242 (sleep) state D".into(),
                        })
                    } else {
                        std::fs::remove_dir_all(path).map_err(io_error(path))
                    }
                }),
            )
            .with_retry_interval(Duration::from_millis(20)),
        );
        // A fake cgroup directory with a writable cgroup.procs.
        let cgroup_path = parent.join("actions/a");
        std::fs::create_dir(&cgroup_path).unwrap();
        std::fs::write(cgroup_path.join("cgroup.procs"), "").unwrap();
        let directory = File::open(&cgroup_path).unwrap();
        assert!(manager.dirty_reason().is_none());

        let err = manager
            .release(ActionCgroup {
                path: cgroup_path.clone(),
                directory: Some(directory.into()),
            })
            .unwrap_err();
        assert!(matches!(err, ActionCgroupError::NotEmptied { .. }));
        let reason = manager
            .dirty_reason()
            .expect("dirty after a failed cleanup");
        assert!(
            reason.contains(&cgroup_path.display().to_string()),
            "{reason}"
        );
        assert!(reason.contains("state D"), "{reason}");

        stuck.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while manager.dirty_reason().is_some() {
            assert!(
                Instant::now() < deadline,
                "the retry never cleaned the cgroup"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!cgroup_path.exists());
    }

    #[test]
    fn setup_refuses_the_root_cgroup_and_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        // A root cgroup has cgroup.procs but no cgroup.type.
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let err = ActionCgroupManager::setup(dir.path()).unwrap_err();
        assert!(matches!(err, ActionCgroupError::RootCgroup { .. }), "{err}");
        assert!(err.to_string().contains("Delegate=yes"), "{err}");
    }

    #[test]
    fn events_parsing_detects_population() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert!(is_populated(dir.path()).unwrap());
        std::fs::write(dir.path().join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        assert!(!is_populated(dir.path()).unwrap());
        std::fs::write(dir.path().join("cgroup.events"), "populated").unwrap();
        assert!(is_populated(dir.path()).is_err());
    }
}
