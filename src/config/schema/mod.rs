//! bb_runner's `ApplicationConfiguration`, plus rbe-runner's extensions,
//! decoded from the evaluated document with the rules of
//! [`protojson`](super::protojson).
//!
//! The top-level fields are decoded in groups of related fields, each in
//! its own file together with its types, its part of `check-config`'s
//! output and its tests:
//! - [`serving`]: the build directory, gRPC servers and readiness paths;
//! - [`auth`]: the servers' authentication policies and the authorizers;
//! - [`environment`]: what actions run in and as (`global.setUmask`,
//!   TMPDIR, chroot, `runCommandsAs`, Xcode directories);
//! - [`cleaning`]: what is cleaned between actions;
//! - [`extensions`]: rbe-runner's own fields (grace period, cgroups,
//!   events);
//! - [`diagnostics`]: `global.diagnosticsHttpServer` and `logFormat`;
//! - [`isolation`]: rbe-runner's per-action namespaces.
//! - [`input_root_mounts`]: `inputRootMounts`, mounts inside a chrooted
//!   action's input root.
//! - [`tracing`]: `global.tracing`, OpenTelemetry spans.
//!
//! [`display`] prints the whole configuration in the schema's field order.

mod auth;
pub(super) mod cleaning;
pub(super) mod diagnostics;
mod display;
pub(super) mod environment;
pub(super) mod extensions;
pub(super) mod input_root_mounts;
pub(super) mod isolation;
pub(super) mod keepalive;
pub(super) mod serving;
pub(super) mod tls;
pub(super) mod tracing;

use super::jsonnet::Json;
use super::protojson::{Decoded, FieldError, Message};
use super::Config;

/// Decodes the whole document, one group of fields at a time. Decoding
/// stops at the first error, so a file with mistakes in two groups is
/// reported against the group decoded first here, which need not hold the
/// field that comes first in the schema.
pub(super) fn decode_config(json: Json) -> Decoded<Config> {
    if !matches!(json, Json::Object(_)) {
        return Err(FieldError::document(format!(
            "the file must evaluate to an object, not {}",
            json.describe()
        )));
    }
    let mut message = Message::new("", json)?;
    let serving = serving::decode(&mut message)?;
    let environment = environment::decode(&mut message)?;
    let cleaning = cleaning::decode(&mut message)?;
    let extensions = extensions::decode(&mut message)?;
    let log_format = diagnostics::decode_log_format(&mut message)?;
    let isolation = message
        .take("isolation")?
        .map(isolation::decode)
        .transpose()?
        .unwrap_or_default();
    let input_root_mounts = input_root_mounts::decode(message.take("input_root_mounts")?)?;

    // Unknown keys first: a misspelled required field should be reported
    // as the typo it is, not as missing.
    message.finish()?;
    serving.check_required()?;
    isolation::check_with_other_fields(
        &isolation,
        &cleaning.symlink_temporary_directories,
        environment.chroot_into_input_root,
    )?;
    input_root_mounts::check_with_other_fields(
        &input_root_mounts,
        &isolation,
        environment.chroot_into_input_root,
    )?;

    Ok(Config {
        build_directory_path: serving.build_directory_path,
        grpc_servers: serving.grpc_servers,
        clean_temporary_directories: cleaning.clean_temporary_directories,
        global: environment.global,
        set_tmpdir_environment_variable: environment.set_tmpdir_environment_variable,
        chroot_into_input_root: environment.chroot_into_input_root,
        clean_process_table: cleaning.clean_process_table,
        readiness_checking_pathnames: serving.readiness_checking_pathnames,
        run_commands_as: environment.run_commands_as,
        symlink_temporary_directories: cleaning.symlink_temporary_directories,
        run_command_cleaner: cleaning.run_command_cleaner,
        apple_xcode_developer_directories: environment.apple_xcode_developer_directories,
        termination_grace_period: extensions.termination_grace_period,
        stuck_spawn_timeout: extensions.stuck_spawn_timeout,
        sample_cgroup_resource_usage: extensions.sample_cgroup_resource_usage,
        action_cgroups: extensions.action_cgroups,
        listen_path_mode: serving.listen_path_mode,
        events: extensions.events,
        log_format,
        isolation,
        input_root_mounts,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::test_support::{
        assert_mentions, error_of, load_text, load_with, with_server, EVERY_FIELD_CAMEL,
        EVERY_FIELD_SNAKE, MINIMAL,
    };
    use crate::config::{
        ActionCgroupsConfig, CommandCleaner, ConfigError, GlobalConfig, GrpcServerConfig,
        RunCommandsAs, DEFAULT_TERMINATION_GRACE_PERIOD,
    };

    // Field spellings -----------------------------------------------------

    /// protobuf-JSON `null` means "not set" for every kind of field.
    #[test]
    fn null_means_not_set() {
        let config = load_with(
            "global: null, runCommandsAs: null, cleanTemporaryDirectories: null,
             terminationGracePeriod: null, temporaryDirectoryInstaller: null",
        )
        .expect("nulls decode");
        assert_eq!(config.global, GlobalConfig::default());
        assert_eq!(config.run_commands_as, None);
        assert_eq!(
            config.termination_grace_period,
            DEFAULT_TERMINATION_GRACE_PERIOD
        );
    }

    /// Upstream files use lowerCamelCase, but protobuf-JSON also accepts
    /// the proto names; both must decode to the same thing.
    #[test]
    fn camel_case_and_snake_case_decode_the_same() {
        let camel = load_text(EVERY_FIELD_CAMEL).expect("camelCase decodes");
        let snake = load_text(EVERY_FIELD_SNAKE).expect("snake_case decodes");
        assert_eq!(camel, snake);

        assert_eq!(
            camel.grpc_servers,
            vec![GrpcServerConfig {
                listen_paths: vec![PathBuf::from("/worker/runner")],
                listen_addresses: vec![
                    "127.0.0.1:8991".into(),
                    ":8992".into(),
                    "[::1]:8993".into()
                ],
                stop_gracefully: true,
                maximum_received_message_size_bytes: Some(16 << 20),
                ..GrpcServerConfig::default()
            }]
        );
        assert_eq!(
            camel.clean_temporary_directories,
            vec![PathBuf::from("/tmp"), PathBuf::from("/var/tmp")]
        );
        assert_eq!(camel.global.set_umask, Some(0o022));
        assert!(camel.set_tmpdir_environment_variable);
        assert!(camel.chroot_into_input_root);
        assert!(camel.clean_process_table);
        assert_eq!(
            camel.readiness_checking_pathnames,
            vec![PathBuf::from("/worker/build")]
        );
        assert_eq!(
            camel.run_commands_as,
            Some(RunCommandsAs {
                user_id: 1000,
                group_id: 1001,
                additional_group_ids: vec![10, 20],
            })
        );
        assert_eq!(
            camel.symlink_temporary_directories,
            vec![PathBuf::from("/tmp")]
        );
        assert_eq!(
            camel.run_command_cleaner,
            Some(CommandCleaner {
                arguments: vec!["/usr/bin/docker-cleanup".into(), "--all".into()],
            })
        );
        assert_eq!(
            camel
                .apple_xcode_developer_directories
                .get("14.2.0.14C18")
                .map(String::as_str),
            Some("/Applications/Xcode14.app/Contents/Developer")
        );
        assert_eq!(camel.termination_grace_period, Duration::from_millis(250));
        assert!(camel.sample_cgroup_resource_usage);
        assert_eq!(
            camel.action_cgroups,
            Some(ActionCgroupsConfig {
                parent_path: Some("/rbe-runner".into()),
                ..ActionCgroupsConfig::default()
            })
        );
    }

    /// Writing one field in both spellings is ambiguous, so it is refused.
    #[test]
    fn both_spellings_of_one_field_are_refused() {
        let message = error_of(&format!(
            "{{ {MINIMAL}, clean_process_table: true, cleanProcessTable: false }}"
        ));
        assert_mentions(
            &message,
            &[
                "runner.jsonnet",
                "cleanProcessTable",
                "clean_process_table",
                "set twice",
            ],
        );
    }

    #[test]
    fn top_level_must_be_an_object() {
        let error = load_text("[1, 2]").expect_err("a list is not a config");
        assert!(matches!(error, ConfigError::Invalid { .. }), "{error:?}");
        assert_mentions(
            &error.to_string(),
            &["runner.jsonnet", "must evaluate to an object"],
        );
    }

    // Strictness ----------------------------------------------------------

    /// A typo must never silently become a default, at any depth.
    #[test]
    fn unknown_keys_are_errors_at_every_depth() {
        let cases = [
            (
                format!("{{ {MINIMAL}, buildDirectoryPth: '/x' }}"),
                "buildDirectoryPth",
            ),
            (
                with_server("{ listenPath: ['/s'], authenticationPolicy: { allow: {} } }"),
                "grpcServers[0].listenPath",
            ),
            (
                with_server(
                    "{ listenPaths: ['/s'], authenticationPolicy: { allow: {}, allowed: {} } }",
                ),
                "grpcServers[0].authenticationPolicy.allowed",
            ),
            (
                format!("{{ {MINIMAL}, global: {{ diagnosticHttpServer: {{}} }} }}"),
                "global.diagnosticHttpServer",
            ),
            (
                format!("{{ {MINIMAL}, global: {{ setUmask: {{ mask: 18 }} }} }}"),
                "global.setUmask.mask",
            ),
            (
                format!("{{ {MINIMAL}, runCommandsAs: {{ uid: 1000 }} }}"),
                "runCommandsAs.uid",
            ),
            (
                format!("{{ {MINIMAL}, actionCgroups: {{ parent: '/x' }} }}"),
                "actionCgroups.parent",
            ),
            (
                format!("{{ {MINIMAL}, events: {{ replayBuffer: 8 }} }}"),
                "events.replayBuffer",
            ),
            (format!("{{ {MINIMAL}, 'odd key': true }}"), "[\"odd key\"]"),
        ];
        for (text, path) in cases {
            let error = load_text(&text).expect_err(path);
            assert!(
                matches!(error, ConfigError::UnknownField { .. }),
                "{path}: {error:?}"
            );
            assert_mentions(
                &error.to_string(),
                &["runner.jsonnet", path, "unknown field"],
            );
        }
    }

    /// The second server's typo is reported with its own index.
    #[test]
    fn unknown_key_paths_carry_list_indexes() {
        let text = "{ buildDirectoryPath: '/b', grpcServers: [
            { listenPaths: ['/a'], authenticationPolicy: { allow: {} } },
            { listenPaths: ['/b'], authenticationPolicy: { allow: {} }, stopGracefuly: true },
        ] }";
        assert_mentions(
            &error_of(text),
            &[
                "grpcServers[1].stopGracefuly",
                "did you mean `stopGracefully`?",
            ],
        );
    }

    #[test]
    fn typos_get_a_suggestion() {
        let message = error_of(&with_server(
            "{ listenPath: ['/s'], authenticationPolicy: { allow: {} } }",
        ));
        assert_mentions(&message, &["did you mean `listenPaths`?"]);
        let message = error_of(&format!("{{ {MINIMAL}, completelyDifferent: 1 }}"));
        assert!(!message.contains("did you mean"), "{message}");
    }

    /// A misspelled required field is reported as the typo, not as missing.
    #[test]
    fn typo_of_a_required_field_is_reported_as_unknown() {
        let message = error_of(
            "{ buildDirectoryPth: '/b', grpcServers: [{ listenPaths: ['/s'], authenticationPolicy: { allow: {} } }] }",
        );
        assert_mentions(
            &message,
            &["buildDirectoryPth", "did you mean `buildDirectoryPath`?"],
        );
    }
}
