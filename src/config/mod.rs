//! The bb_runner configuration file: Jsonnet, evaluated and decoded into
//! typed values.
//!
//! Loading happens in two steps, kept apart so that each error can say
//! exactly what went wrong:
//!
//! 1. **Evaluation.** The file is evaluated with jrsonnet, with the
//!    standard library, imports resolved relative to the importing file,
//!    and every environment variable available through `std.extVar`, as
//!    Buildbarn's own programs do. The result is copied into a plain JSON
//!    tree; any Jsonnet error is reported with jrsonnet's
//!    message and location.
//! 2. **Decoding.** The tree is decoded as bb_runner's
//!    `ApplicationConfiguration` under protobuf-JSON rules: a field may be
//!    spelled in lowerCamelCase or with its snake_case proto name, `null`
//!    means "not set", 64-bit integers may be strings. Decoding is strict:
//!    a key that upstream's schema does not have is an error naming its
//!    full path, because a misspelled key silently falling back to a
//!    default is how outages start. Keys that upstream has but rbe-runner
//!    cannot honour are rejected as "not supported", except in `global`,
//!    where they are recorded so that startup can log them once.
//!
//! The environment is a parameter ([`load_with_env`]) so tests never touch
//! the process environment; [`load`] passes the real one.
//!
//! Module map:
//! - `jsonnet`: evaluation, on a thread of its own, into a plain JSON tree.
//! - `protojson`: strict protobuf-JSON decoding of any message: fields by
//!   either name, full paths in errors, "did you mean" suggestions.
//! - `schema`: bb_runner's schema on top of it, one file per group of
//!   related fields (its types, decoding, `check-config` output and tests),
//!   and the `Display` that `check-config` prints.
//! - `duration`: protobuf-JSON durations, shared with `exec --timeout`.
//! - `size`: the one parser of sizes (`'512M'`, `'4Gi'`, `'max'`), counts
//!   and cores in the file.

mod duration;
mod jsonnet;
mod protojson;
mod schema;
pub mod size;
#[cfg(test)]
mod test_support;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonnet::evaluate_jsonnet;
use schema::decode_config;

pub use duration::{format_duration, parse_duration};
pub use schema::cleaning::CommandCleaner;
pub use schema::diagnostics::{DiagnosticsHttpServerConfig, HttpServerConfig, LogFormat};
pub use schema::environment::{GlobalConfig, RunCommandsAs};
pub use schema::extensions::{
    ActionCgroupsConfig, EventsConfig, DEFAULT_JOURNAL_MAX_BYTES, DEFAULT_REPLAY_BUFFER_SIZE,
    DEFAULT_STUCK_SPAWN_TIMEOUT, DEFAULT_TERMINATION_GRACE_PERIOD,
};
pub use schema::input_root_mounts::InputRootMount;
pub use schema::isolation::{DevIsolation, IsolationConfig, NetworkIsolation, TmpIsolation};
pub use schema::keepalive::{KeepaliveParameters, MINIMUM_WINDOW_SIZE_BYTES};
pub use schema::serving::GrpcServerConfig;
pub use schema::tls::{KeyPairSource, TlsClientConfig, TlsServerConfig};
pub use schema::tracing::{
    AttributeValue, BatchSettings, ClientKeepalive, OtlpExporterConfig, ParentBasedConfig,
    SamplerConfig, ServerTracingConfig, SpanProcessorConfig, TracingBackend, TracingConfig,
};
pub use size::parse_size;

// ---------------------------------------------------------------------------
// The decoded configuration
// ---------------------------------------------------------------------------

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
    /// Extension `stuckSpawnTimeout`: a spawn whose exec has not returned
    /// by then makes the runner refuse work until it does; `None`
    /// (`'0s'`): never.
    pub stuck_spawn_timeout: Option<Duration>,
    /// Extension (proposed upstream as field 15): cgroup v2 counter deltas per action.
    pub sample_cgroup_resource_usage: bool,
    /// Extension: put every action in its own cgroup.
    pub action_cgroups: Option<ActionCgroupsConfig>,
    /// Extension `listenPathMode`: permission bits of every `listenPaths`
    /// socket; `None` leaves them to the umask, as bb_runner does.
    pub listen_path_mode: Option<u32>,
    /// Extension: the event stream and its journal.
    pub events: EventsConfig,
    /// Extension `logFormat`: text (default) or one JSON object per line.
    pub log_format: LogFormat,
    /// Extension `isolation`: namespaces of each action's own
    /// (docs/isolation.md); all off by default.
    pub isolation: IsolationConfig,
    /// Extension `inputRootMounts`: mounts inside a chrooted action's
    /// input root (docs/isolation.md); none by default.
    pub input_root_mounts: Vec<InputRootMount>,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a configuration file was rejected. Every message starts with the
/// file; those about one field continue with the field's full path as
/// written in the file (e.g. `grpcServers[0].listenPath`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A problem with the file as a whole.
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },

    /// The file could not be opened.
    #[error("{file}: cannot read the configuration file: {source}")]
    Read { file: PathBuf, source: io::Error },

    /// Jsonnet evaluation failed; `message` is jrsonnet's, with locations.
    #[error("{file}: Jsonnet evaluation failed: {message}")]
    Jsonnet { file: PathBuf, message: String },

    /// A key that bb_runner's schema (plus our extensions) does not have.
    #[error("{file}: {path}: unknown field{}", suggestion_hint(.suggestion))]
    UnknownField {
        file: PathBuf,
        path: String,
        /// A known field whose name is close to the unknown one.
        suggestion: Option<String>,
    },

    /// A field upstream has that rbe-runner does not implement.
    #[error("{file}: {path}: not supported by rbe-runner: {reason}")]
    Unsupported {
        file: PathBuf,
        path: String,
        reason: String,
    },

    /// A field whose value has the wrong type or is out of range.
    #[error("{file}: {path}: {message}")]
    InvalidField {
        file: PathBuf,
        path: String,
        message: String,
    },

    /// A required field that was left out or empty.
    #[error("{file}: {path}: required field is missing: {message}")]
    MissingField {
        file: PathBuf,
        path: String,
        message: String,
    },
}

fn suggestion_hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!(" (did you mean `{name}`?)"),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Evaluates `file` as Jsonnet, with the process environment available
/// through `std.extVar`, and decodes it.
///
/// Environment variables whose name or value is not valid Unicode cannot
/// be Jsonnet strings and are left out.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    load_with_env(file, &env)
}

/// Like [`load`], with `env` as the only variables `std.extVar` can see.
pub fn load_with_env(file: &Path, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let metadata = std::fs::metadata(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    if metadata.is_dir() {
        return Err(ConfigError::Read {
            file: file.to_path_buf(),
            source: io::Error::from(io::ErrorKind::IsADirectory),
        });
    }
    let json = evaluate_jsonnet(file, env)?;
    decode_config(json).map_err(|error| error.into_config_error(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::assert_mentions;

    #[test]
    fn a_missing_file_is_a_read_error() {
        let error =
            load(Path::new("/nonexistent/rbe-runner/config.jsonnet")).expect_err("no such file");
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        assert_mentions(
            &error.to_string(),
            &["/nonexistent/rbe-runner/config.jsonnet"],
        );
    }

    /// A directory is not a configuration file, and says so before Jsonnet
    /// gets to produce a less clear error.
    #[test]
    fn a_directory_is_a_read_error() {
        let directory = tempfile::tempdir().expect("create a temporary directory");
        let error = load(directory.path()).expect_err("a directory");
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        assert_mentions(
            &error.to_string(),
            &[&directory.path().display().to_string(), "directory"],
        );
    }

    // The example configurations ------------------------------------------

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name)
    }

    /// Variables the examples read through `std.extVar`.
    fn example_env() -> BTreeMap<String, String> {
        BTreeMap::from([("POD_NAME".to_string(), "runner-0".to_string())])
    }

    /// Every file shipped in config/ must load, so examples cannot rot.
    #[test]
    fn every_example_config_loads() {
        let entries = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
            .expect("config/ exists");
        let mut loaded = 0;
        for entry in entries {
            let path = entry.expect("read config/").path();
            if path
                .extension()
                .is_some_and(|extension| extension == "jsonnet")
            {
                load_with_env(&path, &example_env()).unwrap_or_else(|error| panic!("{error}"));
                loaded += 1;
            }
        }
        assert!(
            loaded >= 2,
            "expected the example configs in config/, found {loaded}"
        );
    }

    #[test]
    fn local_example_serves_a_relative_unix_socket() {
        let config = load_with_env(&example("local.jsonnet"), &BTreeMap::new())
            .expect("local.jsonnet loads");
        assert_eq!(config.build_directory_path, PathBuf::from("run/build"));
        assert_eq!(
            config.grpc_servers,
            vec![GrpcServerConfig {
                listen_paths: vec![PathBuf::from("run/runner.sock")],
                ..GrpcServerConfig::default()
            }]
        );
        assert_eq!(config.run_commands_as, None);
        assert!(!config.clean_process_table);
        assert_eq!(config.action_cgroups, None);
    }

    #[test]
    fn upstream_style_example_decodes() {
        let config = load_with_env(&example("bb_runner.jsonnet"), &example_env())
            .expect("bb_runner.jsonnet loads");
        assert_eq!(config.build_directory_path, PathBuf::from("/worker/build"));
        assert_eq!(
            config.grpc_servers[0].listen_paths,
            vec![PathBuf::from("/worker/runner")]
        );
        assert!(config.grpc_servers[0].stop_gracefully);
        assert_eq!(
            config.clean_temporary_directories,
            vec![PathBuf::from("/tmp")]
        );
        assert!(config.set_tmpdir_environment_variable);
        assert_eq!(
            config.readiness_checking_pathnames,
            vec![PathBuf::from("/worker/build")]
        );
        assert_eq!(config.global.set_umask, Some(0o022));
        assert_eq!(config.global.ignored_keys, vec!["global.logPaths"]);
        let diagnostics = config.global.diagnostics_http_server.expect("diagnostics");
        assert_eq!(
            diagnostics.http_servers[0].listen_addresses,
            vec!["127.0.0.1:9987"]
        );
        assert!(diagnostics.enable_prometheus);
    }
}
