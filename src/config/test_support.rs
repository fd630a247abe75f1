//! Helpers shared by the configuration's unit tests: loading Jsonnet text
//! from a temporary directory and checking the errors it produces.

use std::collections::BTreeMap;

use super::{load_with_env, Config, ConfigError};

/// A configuration that decodes; tests add or override one thing.
pub(super) const MINIMAL: &str = "buildDirectoryPath: '/worker/build',
        grpcServers: [{ listenPaths: ['/worker/runner'], authenticationPolicy: { allow: {} } }]";

/// Writes `files` (name → contents) into a fresh directory and loads
/// the first one with `env`.
pub(super) fn load_files(
    files: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    for (name, contents) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create fixture directory");
        }
        std::fs::write(&path, contents).expect("write fixture");
    }
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let result = load_with_env(&dir.path().join(files[0].0), &env);
    (dir, result)
}

pub(super) fn load_text(text: &str) -> Result<Config, ConfigError> {
    load_files(&[("runner.jsonnet", text)], &[]).1
}

/// Loads `{ MINIMAL } + { extra }`, so `extra` may override MINIMAL.
pub(super) fn load_with(extra: &str) -> Result<Config, ConfigError> {
    load_text(&format!("{{ {MINIMAL} }} + {{ {extra} }}"))
}

/// The message of the error `text` must produce.
pub(super) fn error_of(text: &str) -> String {
    match load_text(text) {
        Ok(config) => panic!("expected an error, but it decoded:\n{config}"),
        Err(error) => error.to_string(),
    }
}

/// Asserts `message` contains every one of `parts`.
#[track_caller]
pub(super) fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "expected {part:?} in:\n{message}");
    }
}

/// For each `(field, path, words)`: `{ MINIMAL } + { field }` must be
/// refused as an invalid value, with an error naming the file, `path` and
/// `words`.
#[track_caller]
pub(super) fn assert_invalid_fields(cases: &[(&str, &str, &str)]) {
    for &(field, path, words) in cases {
        let error = load_with(field).expect_err(field);
        assert!(
            matches!(error, ConfigError::InvalidField { .. }),
            "{field}: {error:?}"
        );
        assert_mentions(&error.to_string(), &["runner.jsonnet", path, words]);
    }
}

/// A one-server configuration whose server entry is `server`.
pub(super) fn with_server(server: &str) -> String {
    format!("{{ buildDirectoryPath: '/b', grpcServers: [{server}] }}")
}

/// Every field set to something other than its default, in lowerCamelCase.
pub(super) const EVERY_FIELD_CAMEL: &str = "{
        buildDirectoryPath: '/worker/build',
        grpcServers: [{
            listenPaths: ['/worker/runner'],
            listenAddresses: ['127.0.0.1:8991', ':8992', '[::1]:8993'],
            authenticationPolicy: { allow: {} },
            stopGracefully: true,
            maximumReceivedMessageSizeBytes: '16777216',
        }],
        cleanTemporaryDirectories: ['/tmp', '/var/tmp'],
        global: { setUmask: { umask: 18 } },
        setTmpdirEnvironmentVariable: true,
        chrootIntoInputRoot: true,
        cleanProcessTable: true,
        readinessCheckingPathnames: ['/worker/build'],
        runCommandsAs: { userId: 1000, groupId: '1001', additionalGroupIds: [10, '20'] },
        symlinkTemporaryDirectories: ['/tmp'],
        runCommandCleaner: ['/usr/bin/docker-cleanup', '--all'],
        appleXcodeDeveloperDirectories: { '14.2.0.14C18': '/Applications/Xcode14.app/Contents/Developer' },
        terminationGracePeriod: '0.25s',
        stuckSpawnTimeout: '45s',
        sampleCgroupResourceUsage: true,
        actionCgroups: { parentPath: '/rbe-runner' },
        events: { replayBufferSize: 16, journalPath: '/worker/events.jsonl', journalMaxBytes: '1M', runnerName: 'runner-0' },
    }";

/// [`EVERY_FIELD_CAMEL`] with proto (snake_case) names, and some integers
/// written the other way (number or string).
pub(super) const EVERY_FIELD_SNAKE: &str = "{
        build_directory_path: '/worker/build',
        grpc_servers: [{
            listen_paths: ['/worker/runner'],
            listen_addresses: ['127.0.0.1:8991', ':8992', '[::1]:8993'],
            authentication_policy: { allow: {} },
            stop_gracefully: true,
            maximum_received_message_size_bytes: 16777216,
        }],
        clean_temporary_directories: ['/tmp', '/var/tmp'],
        global: { set_umask: { umask: '18' } },
        set_tmpdir_environment_variable: true,
        chroot_into_input_root: true,
        clean_process_table: true,
        readiness_checking_pathnames: ['/worker/build'],
        run_commands_as: { user_id: '1000', group_id: 1001, additional_group_ids: ['10', 20] },
        symlink_temporary_directories: ['/tmp'],
        run_command_cleaner: ['/usr/bin/docker-cleanup', '--all'],
        apple_xcode_developer_directories: { '14.2.0.14C18': '/Applications/Xcode14.app/Contents/Developer' },
        termination_grace_period: '0.25s',
        stuck_spawn_timeout: '45s',
        sample_cgroup_resource_usage: true,
        action_cgroups: { parent_path: '/rbe-runner' },
        events: { replay_buffer_size: '16', journal_path: '/worker/events.jsonl', journal_max_bytes: 1048576, runner_name: 'runner-0' },
    }";
