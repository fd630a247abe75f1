//! `cleanProcessTable`: killing processes that actions left behind.
//!
//! The local runner kills an action's process group when the action ends,
//! but a daemon that called `setsid` (or double-forked into a new group)
//! escapes that. This cleaner finds such leftovers in the process table:
//! processes owned by the actions' user that started after the runner did.
//! Processes that predate the runner, the runner itself, its ancestors and
//! kernel threads are never selected.
//!
//! Selection is a pure function of a snapshot of the table
//! ([`select_leftovers`]). Killing goes through a pidfd opened *before* the
//! process is confirmed to still be the one that was selected, so a pid
//! reused in between can never be hit.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use procfs::process::Process;

use super::{CleanError, Cleaner};

/// `PF_KTHREAD` in `/proc/<pid>/stat`'s flags: kernel threads ignore
/// signals, so selecting them would only make the cleaner wait forever.
const PF_KTHREAD: u32 = 0x0020_0000;

/// How long killed processes get to exit before cleaning fails.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Rounds of scan-and-kill before giving up on processes that keep forking.
const MAX_PASSES: usize = 10;

/// One row of the process table, as far as selection cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEntry {
    pub pid: i32,
    pub parent_pid: i32,
    /// Owner of `/proc/<pid>` (the effective user id, for dumpable processes).
    pub user_id: u32,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
    /// The state letter: `R`, `S`, `D`, `Z`, ...
    pub state: char,
    pub kernel_thread: bool,
}

/// Which processes count as leftovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The user actions run as.
    pub user_id: u32,
    /// The runner's own pid.
    pub runner_pid: i32,
    /// The runner's start time in clock ticks since boot.
    pub runner_start_ticks: u64,
}

/// The pids of leftover processes in `table`: owned by the actions' user,
/// started strictly after the runner (a process started in the same clock
/// tick might predate it), alive, and neither the runner, one of its
/// ancestors nor a kernel thread.
pub fn select_leftovers(table: &[ProcessEntry], selection: &Selection) -> Vec<i32> {
    let parents: HashMap<i32, i32> = table.iter().map(|p| (p.pid, p.parent_pid)).collect();
    let mut protected = HashSet::from([selection.runner_pid]);
    let mut pid = selection.runner_pid;
    while let Some(&parent) = parents.get(&pid) {
        if parent <= 0 || !protected.insert(parent) {
            break;
        }
        pid = parent;
    }
    table
        .iter()
        .filter(|p| p.user_id == selection.user_id)
        .filter(|p| p.start_ticks > selection.runner_start_ticks)
        .filter(|p| !matches!(p.state, 'Z' | 'X' | 'x'))
        .filter(|p| !p.kernel_thread)
        .filter(|p| !protected.contains(&p.pid))
        .map(|p| p.pid)
        .collect()
}

/// Kills leftover processes of the actions' user.
pub struct ProcessTableCleaner {
    proc_root: PathBuf,
    selection: Selection,
}

impl ProcessTableCleaner {
    /// A cleaner for processes of `user_id`, reading the process table
    /// from `proc_root` (normally [`crate::process::DEFAULT_PROC_ROOT`]).
    /// Records the runner's own start time, so call it at startup.
    pub fn new(proc_root: &Path, user_id: u32) -> Result<Self, CleanError> {
        let runner_pid = std::process::id() as i32;
        let table_error = |message: String| CleanError::ProcessTable {
            root: proc_root.to_path_buf(),
            message,
        };
        let runner_start_ticks = Process::new_with_root(proc_root.join(runner_pid.to_string()))
            .and_then(|process| process.stat())
            .map_err(|err| table_error(format!("cannot read the runner's own start time: {err}")))?
            .starttime;
        Ok(ProcessTableCleaner {
            proc_root: proc_root.to_path_buf(),
            selection: Selection {
                user_id,
                runner_pid,
                runner_start_ticks,
            },
        })
    }
}

#[tonic::async_trait]
impl Cleaner for ProcessTableCleaner {
    fn name(&self) -> &str {
        "cleanProcessTable"
    }

    async fn clean(&self) -> Result<(), CleanError> {
        let proc_root = self.proc_root.clone();
        let selection = self.selection.clone();
        tokio::task::spawn_blocking(move || kill_leftovers(&proc_root, &selection))
            .await
            .map_err(|err| CleanError::Task(err.to_string()))?
    }
}

/// Scans, kills, waits for the killed to exit, and scans again until a
/// scan finds nothing: a leftover may fork between a scan and its kill.
fn kill_leftovers(proc_root: &Path, selection: &Selection) -> Result<(), CleanError> {
    let mut unkillable = HashSet::new();
    let mut last_seen = Vec::new();
    for _ in 0..MAX_PASSES {
        let table = read_process_table(proc_root)?;
        let leftovers: Vec<i32> = select_leftovers(&table, selection)
            .into_iter()
            .filter(|pid| !unkillable.contains(pid))
            .collect();
        if leftovers.is_empty() {
            return Ok(());
        }
        let start_ticks: HashMap<i32, u64> = table.iter().map(|p| (p.pid, p.start_ticks)).collect();
        let mut dying = Vec::new();
        for pid in &leftovers {
            match kill(proc_root, *pid, start_ticks[pid])? {
                Killed::Dying(pidfd) => dying.push((*pid, pidfd)),
                Killed::AlreadyGone => {}
                Killed::NotPermitted => {
                    // A setuid program the action started, say: not ours to
                    // kill, as bb_runner also decides.
                    tracing::warn!(pid, "not permitted to kill a leftover process; leaving it");
                    unkillable.insert(*pid);
                }
            }
        }
        tracing::info!(pids = ?leftovers, "killed processes left behind by actions");
        wait_for_exit(dying, EXIT_TIMEOUT)?;
        last_seen = leftovers;
    }
    Err(CleanError::StillForking {
        passes: MAX_PASSES,
        pids: last_seen,
    })
}

/// A snapshot of the process table. Processes that exit while it is read
/// are left out.
fn read_process_table(proc_root: &Path) -> Result<Vec<ProcessEntry>, CleanError> {
    let processes = procfs::process::all_processes_with_root(proc_root).map_err(|err| {
        CleanError::ProcessTable {
            root: proc_root.to_path_buf(),
            message: err.to_string(),
        }
    })?;
    let mut table = Vec::new();
    for process in processes {
        // Errors here are processes that exited while being read.
        let Ok(process) = process else { continue };
        let (Ok(stat), Ok(user_id)) = (process.stat(), process.uid()) else {
            continue;
        };
        table.push(ProcessEntry {
            pid: stat.pid,
            parent_pid: stat.ppid,
            user_id,
            start_ticks: stat.starttime,
            state: stat.state,
            kernel_thread: stat.flags & PF_KTHREAD != 0,
        });
    }
    Ok(table)
}

enum Killed {
    /// SIGKILL was sent; the pidfd becomes readable when the process exits.
    Dying(OwnedFd),
    AlreadyGone,
    NotPermitted,
}

/// Sends SIGKILL to `pid` through a pidfd, after confirming that the pidfd
/// names the process that was selected. A process keeps its pid until it
/// is reaped and its `/proc` descriptor stops working then, so: open the
/// `/proc` entry, open the pidfd, then read the entry again and compare the
/// start time with the selected one. If it still matches, the pidfd was
/// opened while the selected process held the pid.
fn kill(proc_root: &Path, pid: i32, selected_start_ticks: u64) -> Result<Killed, CleanError> {
    let Ok(process) = Process::new_with_root(proc_root.join(pid.to_string())) else {
        return Ok(Killed::AlreadyGone);
    };
    let pidfd = match pidfd_open(pid) {
        Ok(pidfd) => pidfd,
        Err(Errno::ESRCH) => return Ok(Killed::AlreadyGone),
        Err(errno) => return Err(CleanError::Kill { pid, errno }),
    };
    match process.stat() {
        Ok(stat) if stat.starttime == selected_start_ticks => {}
        _ => return Ok(Killed::AlreadyGone),
    }
    match pidfd_send_sigkill(&pidfd) {
        Ok(()) => Ok(Killed::Dying(pidfd)),
        Err(Errno::ESRCH) => Ok(Killed::AlreadyGone),
        Err(Errno::EPERM) => Ok(Killed::NotPermitted),
        Err(errno) => Err(CleanError::Kill { pid, errno }),
    }
}

/// Waits until every pidfd reports its process exited, or `timeout`.
fn wait_for_exit(mut dying: Vec<(i32, OwnedFd)>, timeout: Duration) -> Result<(), CleanError> {
    let deadline = Instant::now() + timeout;
    while !dying.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(CleanError::Survivors {
                pids: dying.iter().map(|(pid, _)| *pid).collect(),
                waited: timeout,
            });
        }
        let mut polled: Vec<libc::pollfd> = dying
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let millis = remaining.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: `polled` is a valid, writable array of `polled.len()`
        // pollfd structures that outlives the call.
        let ready =
            unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, millis) };
        if ready == -1 {
            match Errno::last() {
                Errno::EINTR => continue,
                errno => {
                    let pid = dying[0].0;
                    return Err(CleanError::Kill { pid, errno });
                }
            }
        }
        let mut index = 0;
        dying.retain(|_| {
            let exited = polled[index].revents != 0;
            index += 1;
            !exited
        });
    }
    Ok(())
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn pidfd_send_sigkill(pidfd: &OwnedFd) -> Result<(), Errno> {
    let no_info: *const libc::siginfo_t = std::ptr::null();
    // SAFETY: a valid pidfd, a signal number, a null siginfo (allowed: the
    // kernel then fills it as for kill(2)) and no flags.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            no_info,
            0,
        )
    };
    if result < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::reaper::reaper;
    use std::os::unix::process::CommandExt;

    fn entry(pid: i32, parent_pid: i32, user_id: u32, start_ticks: u64) -> ProcessEntry {
        ProcessEntry {
            pid,
            parent_pid,
            user_id,
            start_ticks,
            state: 'S',
            kernel_thread: false,
        }
    }

    const SELECTION: Selection = Selection {
        user_id: 1000,
        runner_pid: 50,
        runner_start_ticks: 500,
    };

    /// A daemon of the actions' user started after the runner is exactly
    /// what this cleaner exists for.
    #[test]
    fn selects_later_processes_of_the_actions_user() {
        let table = [
            entry(1, 0, 0, 1),
            entry(50, 1, 1000, 500),
            entry(77, 1, 1000, 900),
        ];
        assert_eq!(select_leftovers(&table, &SELECTION), vec![77]);
    }

    /// Other users' processes are never touched.
    #[test]
    fn ignores_other_users() {
        let table = [
            entry(50, 1, 1000, 500),
            entry(78, 1, 0, 900),
            entry(79, 1, 1001, 900),
        ];
        assert!(select_leftovers(&table, &SELECTION).is_empty());
    }

    /// The user's login shell, editor, ... predate the runner and stay.
    #[test]
    fn ignores_processes_started_before_or_with_the_runner() {
        let table = [
            entry(50, 1, 1000, 500),
            entry(40, 1, 1000, 499),
            entry(41, 1, 1000, 500),
        ];
        assert!(select_leftovers(&table, &SELECTION).is_empty());
    }

    /// The runner and whatever started it must survive, even if a clock
    /// (or a test) makes them look newer than the runner.
    #[test]
    fn never_selects_the_runner_or_its_ancestors() {
        let table = [
            entry(1, 0, 1000, 900),
            entry(30, 1, 1000, 900),
            entry(40, 30, 1000, 900),
            entry(50, 40, 1000, 900),
            entry(60, 50, 1000, 900),
        ];
        assert_eq!(select_leftovers(&table, &SELECTION), vec![60]);
    }

    /// Zombies are already dead and kernel threads ignore signals: waiting
    /// for either to exit would never end.
    #[test]
    fn ignores_zombies_and_kernel_threads() {
        let mut zombie = entry(81, 1, 1000, 900);
        zombie.state = 'Z';
        let mut kthread = entry(82, 2, 1000, 900);
        kthread.kernel_thread = true;
        assert!(
            select_leftovers(&[entry(50, 1, 1000, 500), zombie, kthread], &SELECTION).is_empty()
        );
    }

    /// The real thing: a process of the actions' user that escaped its
    /// process group is killed, and the cleaner returns once it exited.
    /// Needs root to start a process as another user.
    #[tokio::test]
    async fn kills_a_real_leftover_of_the_actions_user_and_waits_for_it() {
        if !crate::test_support::running_as_root(
            "kills_a_real_leftover_of_the_actions_user_and_waits_for_it",
        ) {
            return;
        }
        // A uid no other test uses, so that nothing else can be selected.
        const USER_ID: u32 = 48_213;
        let cleaner =
            ProcessTableCleaner::new(Path::new(crate::process::DEFAULT_PROC_ROOT), USER_ID)
                .unwrap();
        // Start times count clock ticks (10 ms): a process started in the
        // tick the test process (the "runner") started in is not told
        // apart from processes older than it, which a test run early in
        // its binary does (it failed so, leaving its `sleep` behind).
        std::thread::sleep(Duration::from_millis(20));
        let mut command = std::process::Command::new("sleep");
        command
            .arg("1000")
            .uid(USER_ID)
            .gid(USER_ID)
            .process_group(0);
        let child = tokio::task::spawn_blocking(move || reaper().spawn(&mut command))
            .await
            .unwrap()
            .unwrap();
        cleaner.clean().await.unwrap();
        let Ok(exit) = tokio::time::timeout(Duration::from_secs(10), child.exit).await else {
            // Not left behind by a failure.
            // SAFETY: kill takes only numbers: the leftover's process group.
            unsafe { libc::kill(-child.pid, libc::SIGKILL) };
            panic!("the cleaner did not kill the leftover {}", child.pid);
        };
        let exit = exit.unwrap();
        assert_eq!(exit.signal(), Some(libc::SIGKILL));
    }
}
