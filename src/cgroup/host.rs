//! The runner's cgroups as startup finds them on the host: which cgroup the
//! runner is in, which one `actionCgroups` manages, and whether the files
//! accounting needs are there.
//!
//! This is the one place that turns the configuration's cgroup options
//! into a [`CgroupSetup`], so every startup refusal about cgroups is
//! decided (and worded) here. Where the host's files are is a
//! [`CgroupHost`]: the real `/proc/self` files and `/` by default, recorded
//! texts and a temporary directory in tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::action::{ActionCgroupError, ActionCgroupManager, ACTIONS_DIRECTORY, RUNNER_LEAF};
use super::budgets::budgets_above;
use super::capabilities::{check_required_files, probe_capabilities, CapabilityError};
use super::counters::read_memory_max;
use super::limits::{probe, ActionLimits, AppliedLimits, LimitError};
use super::locate::{
    locate_own_cgroup, LocateError, DEFAULT_PROC_SELF_CGROUP, DEFAULT_PROC_SELF_MOUNTINFO,
};
use super::parse::Limit;
use super::CGROUP_PROCS_FILE;

/// The file system root that paths from `/proc/self/mountinfo` are relative
/// to on a real host.
pub const DEFAULT_FILESYSTEM_ROOT: &str = "/";

/// Where the runner looks for its own cgroup.
#[derive(Debug, Clone)]
pub struct CgroupHost {
    /// `/proc/self/cgroup`, or a file with the same contents.
    pub proc_self_cgroup: PathBuf,
    /// `/proc/self/mountinfo`, or a file with the same contents.
    pub proc_self_mountinfo: PathBuf,
    /// The directory the mount points in `proc_self_mountinfo` are relative
    /// to: `/` on a real host, a temporary directory holding a fake tree in
    /// tests.
    pub filesystem_root: PathBuf,
}

impl Default for CgroupHost {
    fn default() -> Self {
        CgroupHost {
            proc_self_cgroup: PathBuf::from(DEFAULT_PROC_SELF_CGROUP),
            proc_self_mountinfo: PathBuf::from(DEFAULT_PROC_SELF_MOUNTINFO),
            filesystem_root: PathBuf::from(DEFAULT_FILESYSTEM_ROOT),
        }
    }
}

impl CgroupHost {
    /// The directory of the runner's own cgroup v2, beneath the file system
    /// root.
    pub fn own_cgroup(&self) -> Result<PathBuf, LocateError> {
        let located = locate_own_cgroup(&self.proc_self_cgroup, &self.proc_self_mountinfo)?;
        // The located path is absolute; re-rooting it under the file system
        // root leaves it unchanged when that is "/".
        Ok(match located.strip_prefix("/") {
            Ok(relative) if !relative.as_os_str().is_empty() => self.filesystem_root.join(relative),
            _ => self.filesystem_root.clone(),
        })
    }

    /// The cgroup `actionCgroups` manages: `parent_path` within the cgroup2
    /// mount when set, else the cgroup the runner is in, or, for a runner
    /// restarted inside the leaf a previous runner moved itself into, that
    /// runner's parent again.
    pub fn action_cgroups_parent(&self, parent_path: Option<&str>) -> Result<PathBuf, LocateError> {
        let own = self.own_cgroup()?;
        Ok(match parent_path {
            Some(path) => mount_point_of(&own).join(path.trim_start_matches('/')),
            None => match own.parent() {
                Some(parent)
                    if own.ends_with(RUNNER_LEAF) && parent.join(ACTIONS_DIRECTORY).is_dir() =>
                {
                    parent.to_path_buf()
                }
                _ => own,
            },
        })
    }
}

/// The directory of the cgroup2 mount containing `cgroup`: the topmost
/// ancestor that is still a cgroup directory. `parentPath` is resolved
/// against it.
pub fn mount_point_of(cgroup: &Path) -> PathBuf {
    let mut top = cgroup.to_path_buf();
    while let Some(parent) = top.parent() {
        if !parent.join(CGROUP_PROCS_FILE).exists() {
            break;
        }
        top = parent.to_path_buf();
    }
    top
}

/// What the configuration asks of cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupOptions {
    /// `sampleCgroupResourceUsage`.
    pub sample_resource_usage: bool,
    /// `actionCgroups`, when set.
    pub action_cgroups: Option<ActionCgroupOptions>,
}

/// What `actionCgroups` asks of the cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionCgroupOptions {
    /// `parentPath` (`None`: the runner's own cgroup).
    pub parent_path: Option<String>,
    /// The limits of every action's cgroup.
    pub limits: ActionLimits,
}

/// What startup established, for building the runner chain.
#[derive(Debug)]
pub enum CgroupSetup {
    /// Neither sampling nor per-action cgroups.
    Unused,
    /// Sampling of the runner's own cgroup, which all actions share.
    SharedCgroup {
        /// The runner's cgroup directory.
        cgroup: PathBuf,
    },
    /// Every action in a cgroup of its own below a managed parent.
    ActionCgroups {
        /// The managed subtree, taken over and recovered.
        manager: Arc<ActionCgroupManager>,
        /// Whether each action's cgroup is sampled.
        sampled: bool,
        /// The limits to write into every action's cgroup, with the
        /// defaults resolved for this kernel, and what the kernel made of
        /// them on a throwaway cgroup.
        limits: (ActionLimits, AppliedLimits),
        /// The memory budgets above every action's cgroup, lowest first.
        budgets: Vec<PathBuf>,
    },
}

/// Why the runner cannot start with the configured cgroup options. Each
/// message names the option, what is wrong and how to fix it, since it is
/// what an operator sees when the runner refuses to start. Causes are part
/// of the message rather than a `source`, so that error chains do not print
/// them twice.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "sampleCgroupResourceUsage is enabled, but the runner's cgroup v2 cannot be found: {0}"
    )]
    SamplingLocate(LocateError),
    #[error(
        "sampleCgroupResourceUsage is enabled, but the runner's cgroup cannot be sampled: {0}"
    )]
    SamplingCapability(CapabilityError),
    #[error("actionCgroups: cannot find the runner's cgroup v2: {0}")]
    ActionCgroupsLocate(LocateError),
    #[error("actionCgroups: {0}")]
    ActionCgroups(ActionCgroupError),
    #[error("sampleCgroupResourceUsage with actionCgroups: action cgroups cannot be sampled: {0}")]
    ActionCgroupsCapability(CapabilityError),
    #[error("{0}")]
    ActionLimits(LimitError),
}

/// Finds the cgroups the options need, takes over the `actionCgroups`
/// subtree (moving the runner into its leaf and removing leftovers of a
/// previous runner), checks the files sampling cannot do without, and logs
/// one line saying which optional measurements this kernel provides.
/// Blocking; meant for startup: an error here should stop the runner.
pub fn start(host: &CgroupHost, options: &CgroupOptions) -> Result<CgroupSetup, StartupError> {
    let sampled = options.sample_resource_usage;
    let Some(action_cgroups) = &options.action_cgroups else {
        if !sampled {
            return Ok(CgroupSetup::Unused);
        }
        let cgroup = host.own_cgroup().map_err(StartupError::SamplingLocate)?;
        check_and_log(&cgroup).map_err(StartupError::SamplingCapability)?;
        return Ok(CgroupSetup::SharedCgroup { cgroup });
    };
    let parent = host
        .action_cgroups_parent(action_cgroups.parent_path.as_deref())
        .map_err(StartupError::ActionCgroupsLocate)?;
    let manager = ActionCgroupManager::setup(&parent).map_err(StartupError::ActionCgroups)?;
    if sampled {
        // The parent's counters tell a kill by the runner's own limit from
        // one from above; the actions directory's are what every action's
        // cgroup inherits.
        check_required_files(manager.parent())
            .and_then(|()| check_and_log(manager.actions_directory()))
            .map_err(StartupError::ActionCgroupsCapability)?;
    }
    // A limit the runner claims must be one it can set: probed now, on a
    // throwaway cgroup, rather than failing every action.
    let limits = probe(manager.actions_directory(), &action_cgroups.limits)
        .map_err(StartupError::ActionLimits)?;
    if !limits.0.settings().is_empty() {
        tracing::info!(limits = ?limits.1, settings = ?limits.0.settings(),
            "every action's cgroup gets these limits (as the kernel reads them back)");
    }
    let budgets = budgets_above(
        manager.actions_directory(),
        manager.parent(),
        &mount_point_of(manager.parent()),
    );
    Ok(CgroupSetup::ActionCgroups {
        manager,
        sampled,
        limits,
        budgets,
    })
}

/// The memory all actions share: `memory.max` of the managed parent with
/// action cgroups, or of the runner's own cgroup when that is sampled.
/// `None` when cgroups are unused, the limit is `max`, or it cannot be read
/// (no memory controller), which is logged.
pub fn memory_budget(setup: &CgroupSetup) -> Option<u64> {
    let cgroup = match setup {
        CgroupSetup::Unused => return None,
        CgroupSetup::SharedCgroup { cgroup } => cgroup.as_path(),
        CgroupSetup::ActionCgroups { manager, .. } => manager.parent(),
    };
    match read_memory_max(cgroup) {
        Ok(Limit::Value(bytes)) => Some(bytes),
        Ok(Limit::Unlimited) => None,
        Err(error) => {
            tracing::info!(%error, "the actions' memory budget is unknown");
            None
        }
    }
}

/// [`check_required_files`], then the capabilities of `cgroup` logged.
fn check_and_log(cgroup: &Path) -> Result<(), CapabilityError> {
    check_required_files(cgroup)?;
    let capabilities = probe_capabilities(cgroup)?;
    tracing::info!(cgroup = %cgroup.display(), "sampling cgroup resource usage: {capabilities}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use tempfile::TempDir;

    use super::*;
    use crate::cgroup::test_support::{memory_events_text, write_files};

    const HYBRID_HOST_CGROUP: &str = include_str!("testdata/hybrid_host.cgroup");
    const HYBRID_HOST_MOUNTINFO: &str = include_str!("testdata/hybrid_host.mountinfo");
    const SERVICE_CGROUP: &str = "0::/system.slice/rbe-runner.service\n";
    const SERVICE: &str = "sys/fs/cgroup/system.slice/rbe-runner.service";
    const SYSTEMD_V2_MOUNTINFO: &str = "\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw
26 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    /// Recorded `/proc/self` texts and a fake file system root in which the
    /// cgroup they name holds `files`.
    fn fake_host(
        proc_self_cgroup: &str,
        mountinfo: &str,
        cgroup: &str,
        files: &[(&str, &str)],
    ) -> (TempDir, CgroupHost) {
        let root = tempfile::tempdir().unwrap();
        let proc_self = root.path().join("proc/self");
        fs::create_dir_all(&proc_self).unwrap();
        write_files(
            &proc_self,
            &[("cgroup", proc_self_cgroup), ("mountinfo", mountinfo)],
        );
        let cgroup = root.path().join(cgroup);
        fs::create_dir_all(&cgroup).unwrap();
        write_files(&cgroup, files);
        let host = CgroupHost {
            proc_self_cgroup: proc_self.join("cgroup"),
            proc_self_mountinfo: proc_self.join("mountinfo"),
            filesystem_root: root.path().to_owned(),
        };
        (root, host)
    }

    /// A delegated cgroup as a fake tree: what taking it over reads and
    /// writes, including the interface files the kernel would create in the
    /// runner's leaf and the actions directory.
    fn delegated_cgroup_files() -> Vec<(&'static str, &'static str)> {
        vec![
            ("cgroup.procs", ""),
            ("cgroup.type", "domain\n"),
            ("cgroup.kill", ""),
            ("cgroup.controllers", ""),
            ("runner/cgroup.procs", ""),
            ("actions/cgroup.controllers", ""),
        ]
    }

    fn sampling() -> CgroupOptions {
        CgroupOptions {
            sample_resource_usage: true,
            action_cgroups: None,
        }
    }

    fn action_cgroups(parent_path: Option<&str>) -> CgroupOptions {
        CgroupOptions {
            sample_resource_usage: false,
            action_cgroups: Some(ActionCgroupOptions {
                parent_path: parent_path.map(str::to_owned),
                limits: ActionLimits::default(),
            }),
        }
    }

    #[test]
    fn nothing_is_touched_without_cgroup_options() {
        // Why it matters: a runner configured like bb_runner must start on
        // hosts without any usable cgroup v2.
        let host = CgroupHost {
            proc_self_cgroup: PathBuf::from("/nonexistent/cgroup"),
            proc_self_mountinfo: PathBuf::from("/nonexistent/mountinfo"),
            filesystem_root: PathBuf::from("/nonexistent"),
        };
        assert!(matches!(
            start(&host, &CgroupOptions::default()),
            Ok(CgroupSetup::Unused)
        ));
    }

    #[test]
    fn sampling_finds_the_cgroup_beneath_the_filesystem_root() {
        let events = memory_events_text([0; 6]);
        let (root, host) = fake_host(
            SERVICE_CGROUP,
            SYSTEMD_V2_MOUNTINFO,
            SERVICE,
            &[
                ("cgroup.procs", ""),
                ("cgroup.type", "domain\n"),
                ("memory.events", &events),
            ],
        );
        let Ok(CgroupSetup::SharedCgroup { cgroup }) = start(&host, &sampling()) else {
            panic!("expected the shared cgroup");
        };
        assert_eq!(cgroup, root.path().join(SERVICE));
    }

    #[test]
    fn sampling_is_refused_without_the_memory_controller_naming_the_fix() {
        // Why it matters: without memory.events there is no OOM attribution
        // at all; the operator must learn it at startup, with the remedy.
        let (root, host) = fake_host(
            SERVICE_CGROUP,
            SYSTEMD_V2_MOUNTINFO,
            SERVICE,
            &[("cgroup.procs", ""), ("cgroup.type", "domain\n")],
        );
        let message = start(&host, &sampling()).unwrap_err().to_string();
        for expected in [
            "sampleCgroupResourceUsage is enabled",
            "memory.events is missing",
            &root.path().join(SERVICE).display().to_string(),
            "cgroup.subtree_control",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} not in {message:?}"
            );
        }
    }

    #[test]
    fn sampling_is_refused_in_the_root_cgroup_of_a_hybrid_host() {
        // Recorded on the development machine: the process sits in the
        // unified hierarchy's root, which has no memory.events.
        let (_root, host) = fake_host(
            HYBRID_HOST_CGROUP,
            HYBRID_HOST_MOUNTINFO,
            "sys/fs/cgroup/unified",
            &[("cgroup.procs", "1\n")],
        );
        let message = start(&host, &sampling()).unwrap_err().to_string();
        assert!(
            message.contains("sampleCgroupResourceUsage is enabled"),
            "{message}"
        );
        assert!(message.contains("is the root cgroup"), "{message}");
        assert!(message.contains("cgroup of its own"), "{message}");
    }

    #[test]
    fn sampling_is_refused_on_a_cgroup_v1_only_host() {
        let (_root, host) = fake_host(
            "4:memory:/foo\n1:name=systemd:/system.slice/x.service\n",
            SYSTEMD_V2_MOUNTINFO,
            "sys/fs/cgroup",
            &[],
        );
        let message = start(&host, &sampling()).unwrap_err().to_string();
        assert!(
            message.contains("sampleCgroupResourceUsage is enabled"),
            "{message}"
        );
        assert!(
            message.contains("cgroup v1 hosts are not supported"),
            "{message}"
        );
    }

    #[test]
    fn action_cgroups_manage_the_cgroup_the_runner_starts_in() {
        let (root, host) = fake_host(
            SERVICE_CGROUP,
            SYSTEMD_V2_MOUNTINFO,
            SERVICE,
            &delegated_cgroup_files(),
        );
        let Ok(CgroupSetup::ActionCgroups {
            manager, sampled, ..
        }) = start(&host, &action_cgroups(None))
        else {
            panic!("expected action cgroups");
        };
        let service = root.path().join(SERVICE);
        assert_eq!(manager.parent(), service);
        assert!(!sampled);
        // The runner moved itself ("0") into its leaf; the actions directory
        // exists for the action cgroups.
        assert_eq!(
            fs::read_to_string(service.join(RUNNER_LEAF).join("cgroup.procs")).unwrap(),
            "0"
        );
        assert!(service.join(ACTIONS_DIRECTORY).is_dir());
    }

    #[test]
    fn a_limit_without_its_controller_refuses_startup_naming_the_field() {
        // Why it matters: a runner must never run actions under a limit it
        // claims but could not set.
        let (_root, host) = fake_host(
            SERVICE_CGROUP,
            SYSTEMD_V2_MOUNTINFO,
            SERVICE,
            &delegated_cgroup_files(),
        );
        let mut options = action_cgroups(None);
        if let Some(action_cgroups) = &mut options.action_cgroups {
            action_cgroups.limits.memory_max = Some(crate::cgroup::Limit::Value(64 << 20));
        }
        let message = start(&host, &options).unwrap_err().to_string();
        for expected in ["actionCgroups.memoryMax", "memory controller", "memory.max"] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
    }

    #[test]
    fn a_restarted_runner_manages_its_previous_parent_again() {
        // Why it matters: after a restart the runner finds itself in the
        // leaf its predecessor created; managing that leaf would nest a new
        // subtree inside it and leave the old actions' cgroups unrecovered.
        let parent = "sys/fs/cgroup/kubepods/pod1";
        let (root, host) = fake_host(
            "0::/kubepods/pod1/runner\n",
            SYSTEMD_V2_MOUNTINFO,
            &format!("{parent}/runner"),
            &[("cgroup.procs", "")],
        );
        let parent = root.path().join(parent);
        fs::create_dir_all(parent.join(ACTIONS_DIRECTORY)).unwrap();
        assert_eq!(host.action_cgroups_parent(None).unwrap(), parent);
    }

    #[test]
    fn a_leaf_named_runner_without_actions_beside_it_is_managed_itself() {
        let (root, host) = fake_host(
            "0::/services/runner\n",
            SYSTEMD_V2_MOUNTINFO,
            "sys/fs/cgroup/services/runner",
            &[("cgroup.procs", "")],
        );
        assert_eq!(
            host.action_cgroups_parent(None).unwrap(),
            root.path().join("sys/fs/cgroup/services/runner")
        );
    }

    #[test]
    fn parent_path_is_resolved_within_the_cgroup2_mount() {
        let (root, host) = fake_host(
            SERVICE_CGROUP,
            SYSTEMD_V2_MOUNTINFO,
            SERVICE,
            &[("cgroup.procs", "")],
        );
        for cgroup in ["sys/fs/cgroup", "sys/fs/cgroup/system.slice"] {
            fs::write(root.path().join(cgroup).join("cgroup.procs"), "").unwrap();
        }
        assert_eq!(
            host.action_cgroups_parent(Some("/workers/runner-1"))
                .unwrap(),
            root.path().join("sys/fs/cgroup/workers/runner-1")
        );
    }

    #[test]
    fn sampled_action_cgroups_need_the_memory_controller() {
        let (root, host) = fake_host(
            SERVICE_CGROUP,
            SYSTEMD_V2_MOUNTINFO,
            SERVICE,
            &delegated_cgroup_files(),
        );
        let options = CgroupOptions {
            sample_resource_usage: true,
            ..action_cgroups(None)
        };
        let message = start(&host, &options).unwrap_err().to_string();
        assert!(
            message.contains("sampleCgroupResourceUsage with actionCgroups"),
            "{message}"
        );
        assert!(
            message.contains(&root.path().join(SERVICE).display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn the_mount_point_is_the_topmost_cgroup_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("cgroup");
        let own = mount.join("a/b");
        fs::create_dir_all(&own).unwrap();
        for cgroup in [&mount, &mount.join("a"), &own] {
            fs::write(cgroup.join("cgroup.procs"), "").unwrap();
        }
        assert_eq!(mount_point_of(&own), mount);
    }

    #[test]
    fn the_memory_budget_is_memory_max_of_the_shared_cgroup() {
        // Why it matters: the report sizes pods against this budget; `max`
        // and a missing memory controller must read as "no budget", not 0
        // bytes or a failed start.
        let dir = tempfile::tempdir().unwrap();
        let budget = |text: Option<&str>| {
            let _ = fs::remove_file(dir.path().join("memory.max"));
            if let Some(text) = text {
                write_files(dir.path(), &[("memory.max", text)]);
            }
            memory_budget(&CgroupSetup::SharedCgroup {
                cgroup: dir.path().to_owned(),
            })
        };
        assert_eq!(budget(Some("4294967296\n")), Some(4 << 30));
        assert_eq!(budget(Some("max\n")), None);
        assert_eq!(budget(None), None);
        assert_eq!(budget(Some("lots\n")), None);
        assert_eq!(memory_budget(&CgroupSetup::Unused), None);
    }
}
