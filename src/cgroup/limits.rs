//! Per-action limits: what `actionCgroups` asks of each action's cgroup,
//! written into it when it is created and read back, so that what is
//! reported is what the kernel holds (it rounds `memory.max` to pages).
//!
//! Every limit is one interface file of one controller. A limit whose
//! controller the managed parent does not hand to action cgroups, or a
//! value the kernel refuses, is found at startup by [`probe`] on a
//! throwaway cgroup, so the runner never runs an action with a limit it
//! claims but did not set.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::parse::{parse_limit, Limit};
use super::{read_parsed, FileError, CGROUP_SUBTREE_CONTROL_FILE};

/// `memory.oom.group`: an OOM kill of any process kills the whole cgroup.
pub const MEMORY_OOM_GROUP_FILE: &str = "memory.oom.group";
/// `memory.swap.max`: absent when the kernel accounts no swap.
pub const MEMORY_SWAP_MAX_FILE: &str = "memory.swap.max";
const MEMORY_MAX_FILE: &str = "memory.max";
const MEMORY_HIGH_FILE: &str = "memory.high";
const CPU_MAX_FILE: &str = "cpu.max";
const PIDS_MAX_FILE: &str = "pids.max";
/// The `cpu.max` period every quota is written for, in microseconds.
pub const CPU_MAX_PERIOD_MICROSECONDS: u64 = 100_000;
/// Name of the throwaway cgroup [`probe`] creates among the action
/// cgroups; a leftover is removed by crash recovery like any other.
pub const PROBE_CGROUP: &str = "limits-probe";

/// The limits of every action's cgroup, as configured. `None`: not
/// configured; [`ActionLimits::resolve`] turns the defaults that depend on
/// the kernel into values at startup, and only what is `Some` is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionLimits {
    /// `memoryMax` → `memory.max`, bytes.
    pub memory_max: Option<Limit>,
    /// `memoryHigh` → `memory.high`, bytes.
    pub memory_high: Option<Limit>,
    /// `memorySwapMax` → `memory.swap.max`, bytes; defaults to 0 when
    /// `memoryMax` is set, so that swap cannot stretch the limit.
    pub memory_swap_max: Option<Limit>,
    /// `memoryOomGroup` → `memory.oom.group`; defaults to true where the
    /// memory controller is available.
    pub memory_oom_group: Option<bool>,
    /// `cpuMax` → `cpu.max`: the quota in microseconds per
    /// [`CPU_MAX_PERIOD_MICROSECONDS`].
    pub cpu_max_quota: Option<Limit>,
    /// `pidsMax` → `pids.max`.
    pub pids_max: Option<Limit>,
}

/// One interface file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The configuration field, for errors.
    pub field: &'static str,
    /// The controller the file belongs to.
    pub controller: &'static str,
    /// The interface file.
    pub file: &'static str,
    /// What is written.
    pub value: String,
}

/// What the kernel offers action cgroups, for resolving defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOffers {
    /// The memory controller is enabled for action cgroups.
    pub memory_controller: bool,
    /// `memory.swap.max` exists (the kernel accounts swap).
    pub swap_accounting: bool,
}

impl ActionLimits {
    /// These limits with the defaults that depend on the kernel made
    /// explicit: `memory.swap.max` 0 with `memoryMax` (left alone, and
    /// said so, without swap accounting), `memory.oom.group` 1 where the
    /// memory controller is available. What was configured is kept, so an
    /// impossible explicit setting still fails.
    pub fn resolve(&self, offers: KernelOffers) -> ActionLimits {
        let mut resolved = self.clone();
        if self.memory_swap_max.is_none() && self.memory_max.is_some() {
            if offers.swap_accounting {
                resolved.memory_swap_max = Some(Limit::Value(0));
            } else {
                tracing::warn!(
                    "the kernel accounts no swap (no memory.swap.max): memoryMax is enforced \
                     without a swap limit, which only matters if the node has swap"
                );
            }
        }
        if self.memory_oom_group.is_none() {
            resolved.memory_oom_group = Some(offers.memory_controller);
            if !offers.memory_controller {
                tracing::info!(
                    "memoryOomGroup is not set and action cgroups have no memory controller: \
                     an OOM kill ends only the process the kernel chose"
                );
            }
        }
        resolved
    }

    /// The files to write, in the order they are written: swap and the
    /// throttle before the hard limit, so that no moment has the limit
    /// without them.
    pub fn settings(&self) -> Vec<Setting> {
        let limit = |limit: Limit| match limit {
            Limit::Unlimited => "max".to_owned(),
            Limit::Value(value) => value.to_string(),
        };
        let mut settings = Vec::new();
        let mut add = |field, controller, file, value: Option<String>| {
            if let Some(value) = value {
                settings.push(Setting {
                    field,
                    controller,
                    file,
                    value,
                });
            }
        };
        add(
            "actionCgroups.memorySwapMax",
            "memory",
            MEMORY_SWAP_MAX_FILE,
            self.memory_swap_max.map(limit),
        );
        add(
            "actionCgroups.memoryHigh",
            "memory",
            MEMORY_HIGH_FILE,
            self.memory_high.map(limit),
        );
        add(
            "actionCgroups.memoryMax",
            "memory",
            MEMORY_MAX_FILE,
            self.memory_max.map(limit),
        );
        add(
            "actionCgroups.memoryOomGroup",
            "memory",
            MEMORY_OOM_GROUP_FILE,
            // false is the kernel's default: nothing to write.
            (self.memory_oom_group == Some(true)).then(|| "1".to_owned()),
        );
        add(
            "actionCgroups.cpuMax",
            "cpu",
            CPU_MAX_FILE,
            self.cpu_max_quota
                .map(|quota| format!("{} {CPU_MAX_PERIOD_MICROSECONDS}", limit(quota))),
        );
        add(
            "actionCgroups.pidsMax",
            "pids",
            PIDS_MAX_FILE,
            self.pids_max.map(limit),
        );
        settings
    }
}

/// The limits an action's cgroup holds, as read back after writing them;
/// 0 where no limit is set, as `ActionAccounting` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AppliedLimits {
    /// `memory.max` in bytes.
    pub memory_max: u64,
    /// `memory.swap.max` in bytes.
    pub memory_swap_max: u64,
    /// `cpu.max` in cores.
    pub cpu_max_cores: f64,
    /// `pids.max`.
    pub pids_max: u64,
}

/// Why a limit could not be set. Each names the configuration field and
/// the cgroup file.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "{field} needs the {controller} controller, which is not enabled for action cgroups \
         ({subtree_control} lists {enabled:?}), so {file} does not exist; enable the controller \
         in the parent cgroups (cgroup.subtree_control of every ancestor) or remove {field}"
    )]
    NoController {
        field: &'static str,
        controller: &'static str,
        subtree_control: PathBuf,
        enabled: String,
        file: PathBuf,
    },
    #[error("{field}: the kernel refused {value:?} in {file}: {source}")]
    Refused {
        field: &'static str,
        value: String,
        file: PathBuf,
        source: io::Error,
    },
    #[error("{field}: cannot read back {file}: {source}")]
    ReadBack {
        field: &'static str,
        file: PathBuf,
        source: FileError,
    },
}

/// Writes every setting of `limits` into `cgroup` and reads the limits
/// back. Blocking.
pub fn apply(cgroup: &Path, limits: &ActionLimits) -> Result<AppliedLimits, LimitError> {
    for setting in limits.settings() {
        let file = cgroup.join(setting.file);
        write_value(&file, &setting.value).map_err(|source| LimitError::Refused {
            field: setting.field,
            value: setting.value.clone(),
            file,
            source,
        })?;
    }
    read_back(cgroup, limits)
}

fn write_value(file: &Path, value: &str) -> io::Result<()> {
    // No O_CREAT: a missing interface file is an error, not a new file.
    OpenOptions::new()
        .write(true)
        .open(file)?
        .write_all(value.as_bytes())
}

/// The limits `cgroup` holds for the settings of `limits`.
fn read_back(cgroup: &Path, limits: &ActionLimits) -> Result<AppliedLimits, LimitError> {
    let read = |field: &'static str, file: &str| -> Result<u64, LimitError> {
        let path = cgroup.join(file);
        let limit = read_parsed(&path, parse_limit).map_err(|source| LimitError::ReadBack {
            field,
            file: path.clone(),
            source,
        })?;
        Ok(match limit {
            Limit::Unlimited => 0,
            Limit::Value(value) => value,
        })
    };
    let mut applied = AppliedLimits::default();
    if limits.memory_max.is_some() {
        applied.memory_max = read("actionCgroups.memoryMax", MEMORY_MAX_FILE)?;
    }
    if limits.memory_swap_max.is_some() {
        applied.memory_swap_max = read("actionCgroups.memorySwapMax", MEMORY_SWAP_MAX_FILE)?;
    }
    if limits.pids_max.is_some() {
        applied.pids_max = read("actionCgroups.pidsMax", PIDS_MAX_FILE)?;
    }
    if limits.cpu_max_quota.is_some() {
        let path = cgroup.join(CPU_MAX_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| LimitError::ReadBack {
            field: "actionCgroups.cpuMax",
            file: path.clone(),
            source: FileError::io(&path)(source),
        })?;
        applied.cpu_max_cores = parse_cpu_max(&text).unwrap_or(0.0);
    }
    Ok(applied)
}

/// `cpu.max` (`"50000 100000\n"`, `"max 100000\n"`) in cores; `None` for
/// `max` or a malformed file.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota: u64 = words.next()?.parse().ok()?;
    let period: u64 = words.next()?.parse().ok()?;
    (period > 0).then(|| quota as f64 / period as f64)
}

/// Checks at startup that `limits` can be set on action cgroups below
/// `actions`: defaults resolved for this kernel, every controller they
/// need enabled there, and every value accepted by the kernel, on a
/// throwaway cgroup that is removed again. Returns the resolved limits and
/// what the kernel made of them. Blocking.
pub fn probe(
    actions: &Path,
    limits: &ActionLimits,
) -> Result<(ActionLimits, AppliedLimits), LimitError> {
    let subtree_control = actions.join(CGROUP_SUBTREE_CONTROL_FILE);
    let enabled = std::fs::read_to_string(&subtree_control).unwrap_or_default();
    let is_enabled = |controller: &str| enabled.split_whitespace().any(|c| c == controller);
    let probe = actions.join(PROBE_CGROUP);
    match std::fs::create_dir(&probe) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(LimitError::Refused {
                field: "actionCgroups",
                value: "a throwaway cgroup to probe the limits".into(),
                file: probe,
                source,
            })
        }
    }
    let limits = limits.resolve(KernelOffers {
        memory_controller: is_enabled("memory"),
        swap_accounting: probe.join(MEMORY_SWAP_MAX_FILE).exists(),
    });
    let applied = check_controllers(&limits, &enabled, &subtree_control, &probe)
        .and_then(|()| apply(&probe, &limits));
    let _ = std::fs::remove_dir(&probe);
    applied.map(|applied| (limits, applied))
}

fn check_controllers(
    limits: &ActionLimits,
    enabled: &str,
    subtree_control: &Path,
    probe: &Path,
) -> Result<(), LimitError> {
    for setting in limits.settings() {
        if !enabled.split_whitespace().any(|c| c == setting.controller) {
            return Err(LimitError::NoController {
                field: setting.field,
                controller: setting.controller,
                file: probe.join(setting.file),
                subtree_control: subtree_control.to_path_buf(),
                enabled: enabled.trim().to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::test_support::write_files;

    fn limits() -> ActionLimits {
        ActionLimits {
            memory_max: Some(Limit::Value(64 << 20)),
            memory_swap_max: None,
            cpu_max_quota: Some(Limit::Value(50_000)),
            pids_max: Some(Limit::Value(32)),
            ..ActionLimits::default()
        }
    }

    #[test]
    fn defaults_are_resolved_for_the_kernel() {
        // Why it matters: with swap, an action under memory.max could use
        // more memory than its limit says, only slower; and memoryOomGroup
        // must not stop a runner on a host without a memory controller
        // when nobody asked for it.
        let full = KernelOffers {
            memory_controller: true,
            swap_accounting: true,
        };
        let resolved = limits().resolve(full);
        assert_eq!(resolved.memory_swap_max, Some(Limit::Value(0)));
        assert_eq!(resolved.memory_oom_group, Some(true));
        let bare = ActionLimits::default().resolve(full);
        assert_eq!(bare.memory_swap_max, None);
        let explicit = ActionLimits {
            memory_swap_max: Some(Limit::Unlimited),
            ..limits()
        };
        assert_eq!(
            explicit.resolve(full).memory_swap_max,
            Some(Limit::Unlimited)
        );
        let no_swap = limits().resolve(KernelOffers {
            swap_accounting: false,
            ..full
        });
        assert_eq!(no_swap.memory_swap_max, None);
        let no_memory = ActionLimits::default().resolve(KernelOffers {
            memory_controller: false,
            swap_accounting: false,
        });
        assert!(no_memory.settings().is_empty(), "{no_memory:?}");
        // Asked for explicitly, it stays, and the probe refuses it.
        let asked = ActionLimits {
            memory_oom_group: Some(true),
            ..ActionLimits::default()
        };
        assert_eq!(
            asked.resolve(KernelOffers {
                memory_controller: false,
                swap_accounting: false
            }),
            asked
        );
    }

    #[test]
    fn settings_name_their_field_file_and_value() {
        let settings = limits()
            .resolve(KernelOffers {
                memory_controller: true,
                swap_accounting: true,
            })
            .settings();
        let files: Vec<(&str, &str)> = settings
            .iter()
            .map(|setting| (setting.file, setting.value.as_str()))
            .collect();
        assert_eq!(
            files,
            [
                ("memory.swap.max", "0"),
                ("memory.max", "67108864"),
                ("memory.oom.group", "1"),
                ("cpu.max", "50000 100000"),
                ("pids.max", "32"),
            ]
        );
        assert!(ActionLimits::default().settings().is_empty());
    }

    #[test]
    fn applying_writes_every_file_and_reports_what_the_kernel_holds() {
        let dir = tempfile::tempdir().unwrap();
        // A fake cgroup: writes overwrite the start of each file, whose
        // newline stays, as a kernel file reads back.
        write_files(
            dir.path(),
            &[
                ("memory.swap.max", "X\n"),
                ("memory.max", "XXXXXXXX\n"),
                ("memory.oom.group", "X\n"),
                ("cpu.max", "XXXXX XXXXXX\n"),
                ("pids.max", "XX\n"),
            ],
        );
        let limits = ActionLimits {
            memory_swap_max: Some(Limit::Value(0)),
            memory_oom_group: Some(true),
            ..limits()
        };
        let applied = apply(dir.path(), &limits).unwrap();
        assert_eq!(applied.memory_max, 64 << 20);
        assert_eq!(applied.pids_max, 32);
        assert!((applied.cpu_max_cores - 0.5).abs() < 1e-9);
        let written = std::fs::read_to_string(dir.path().join("memory.oom.group")).unwrap();
        assert_eq!(written, "1\n");
    }

    #[test]
    fn a_missing_file_is_refused_naming_the_field_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let error = apply(dir.path(), &limits()).unwrap_err().to_string();
        assert!(error.contains("actionCgroups.memoryMax"), "{error}");
        assert!(error.contains("memory.max"), "{error}");
    }

    #[test]
    fn the_probe_refuses_a_limit_whose_controller_is_not_enabled() {
        // Why it matters: a limit that cannot be set must stop the runner,
        // not be silently unenforced.
        let dir = tempfile::tempdir().unwrap();
        write_files(
            dir.path(),
            &[
                ("cgroup.subtree_control", "memory io\n"),
                ("limits-probe/memory.swap.max", ""),
            ],
        );
        let error = probe(dir.path(), &limits()).unwrap_err().to_string();
        for expected in [
            "actionCgroups.cpuMax",
            "cpu controller",
            "cpu.max",
            "cgroup.subtree_control",
        ] {
            assert!(error.contains(expected), "{expected:?} not in {error}");
        }
        // (A real cgroup directory is removed with its interface files.)
    }

    #[test]
    fn cpu_max_reads_as_cores() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max(""), None);
    }
}
