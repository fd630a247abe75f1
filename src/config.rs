//! The bb_runner configuration file: Jsonnet, evaluated and decoded into
//! typed values.
//!
//! PLACEHOLDER: the types below are the interface the rest of the crate
//! uses; evaluation and strict decoding are being written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// bb_runner's `ApplicationConfiguration` plus rbe-runner's extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directory bb_worker prepares actions in; request paths are relative to it.
    pub build_directory_path: PathBuf,
    /// One gRPC server per entry, each with its own listeners.
    pub grpc_servers: Vec<GrpcServerConfig>,
    /// Directories emptied whenever the runner goes idle or becomes busy.
    pub clean_temporary_directories: Vec<PathBuf>,
    /// The subset of Buildbarn's global configuration that applies.
    pub global: GlobalConfig,
    /// Add `TMPDIR=<temporary directory>` to each action's environment.
    pub set_tmpdir_environment_variable: bool,
    /// Run actions chrooted into their input root.
    pub chroot_into_input_root: bool,
    /// Kill leftover processes of the actions' user on idle transitions.
    pub clean_process_table: bool,
    /// Host paths that must exist for the runner to be ready.
    pub readiness_checking_pathnames: Vec<PathBuf>,
    /// Identity actions run as; `None` runs them as the runner's own.
    pub run_commands_as: Option<RunCommandsAs>,
    /// Paths replaced by a symlink to each action's temporary directory.
    pub symlink_temporary_directories: Vec<PathBuf>,
    /// A command run on idle transitions to clean up.
    pub run_command_cleaner: Option<CommandCleaner>,
    /// macOS only; decoded, logged once and ignored on Linux.
    pub apple_xcode_developer_directories: BTreeMap<String, String>,
    /// Extension: time between SIGTERM and SIGKILL when an action is stopped.
    pub termination_grace_period: Duration,
    /// Extension (proposed upstream as field 15): cgroup v2 counter deltas per action.
    pub sample_cgroup_resource_usage: bool,
    /// Extension: put every action in its own cgroup.
    pub action_cgroups: Option<ActionCgroupsConfig>,
}

/// One entry of `grpcServers`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpcServerConfig {
    /// Unix socket paths; a stale socket file is removed before binding.
    pub listen_paths: Vec<PathBuf>,
    /// TCP addresses such as `127.0.0.1:8991`.
    pub listen_addresses: Vec<String>,
    /// On shutdown, let in-flight actions finish instead of terminating them.
    pub stop_gracefully: bool,
    /// Largest request accepted; `None` keeps tonic's default (4 MiB).
    pub maximum_received_message_size_bytes: Option<usize>,
}

/// `global`: only `setUmask` has an effect; other keys are listed in
/// `ignored_keys` so that startup can log them once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GlobalConfig {
    /// umask applied to the runner, and so inherited by every action.
    pub set_umask: Option<u32>,
    /// Paths (e.g. `global.diagnosticsHttpServer`) present but not acted on.
    pub ignored_keys: Vec<String>,
}

/// `runCommandsAs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCommandsAs {
    pub user_id: u32,
    pub group_id: u32,
    pub additional_group_ids: Vec<u32>,
}

/// `runCommandCleaner`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCleaner {
    /// argv of the cleaner; the first element is the program.
    pub arguments: Vec<String>,
}

/// Extension `actionCgroups`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActionCgroupsConfig {
    /// Cgroup to manage, absolute within the cgroup2 mount; `None` means the
    /// cgroup the runner starts in.
    pub parent_path: Option<String>,
}

/// Why a configuration file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
}

/// Evaluates `file` as Jsonnet and decodes it.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    Err(ConfigError::Invalid {
        file: file.to_path_buf(),
        message: "configuration loading is not written yet".into(),
    })
}

/// Parses a protobuf-JSON Duration such as `5s` or `0.5s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let seconds = text
        .strip_suffix('s')
        .ok_or_else(|| format!("{text:?} is not a duration such as \"5s\""))?;
    let value: f64 = seconds
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"5s\""))?;
    Duration::try_from_secs_f64(value).map_err(|err| format!("{text:?}: {err}"))
}

impl std::fmt::Display for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:#?}")
    }
}
