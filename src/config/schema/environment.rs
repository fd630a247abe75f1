//! What actions run in and as: `global` (its `setUmask`),
//! `setTmpdirEnvironmentVariable`, `temporaryDirectoryInstaller` (refused),
//! `chrootIntoInputRoot`, `runCommandsAs` and
//! `appleXcodeDeveloperDirectories`.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::protojson::{optional, Decoded, Field, FieldError, Message};

use super::diagnostics::{self, DiagnosticsHttpServerConfig};

/// `global`: only `setUmask` has an effect; other keys are listed in
/// `ignored_keys` so that startup can log them once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GlobalConfig {
    /// umask applied to the runner, and so inherited by every action.
    pub set_umask: Option<u32>,
    /// `diagnosticsHttpServer`: metrics and health over HTTP.
    pub diagnostics_http_server: Option<DiagnosticsHttpServerConfig>,
    /// Paths (e.g. `global.tracing`) present but not acted on.
    pub ignored_keys: Vec<String>,
}

/// `runCommandsAs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCommandsAs {
    /// `userId`; protobuf's default is 0 (root) when the key is left out.
    pub user_id: u32,
    /// `groupId`, the primary group.
    pub group_id: u32,
    /// `additionalGroupIds`, the supplementary groups.
    pub additional_group_ids: Vec<u32>,
}

/// The environment fields of the top-level message.
/// Each field is the [`Config`](crate::config::Config) field of the same name.
pub(super) struct Environment {
    pub(super) global: GlobalConfig,
    pub(super) set_tmpdir_environment_variable: bool,
    pub(super) chroot_into_input_root: bool,
    pub(super) run_commands_as: Option<RunCommandsAs>,
    pub(super) apple_xcode_developer_directories: BTreeMap<String, String>,
}

/// Takes the environment fields from the top-level `message`.
pub(super) fn decode(message: &mut Message) -> Decoded<Environment> {
    let global = match message.take("global")? {
        Some(field) => decode_global(field.message()?)?,
        None => GlobalConfig::default(),
    };
    let set_tmpdir_environment_variable = optional(
        message.take("set_tmpdir_environment_variable")?,
        Field::bool,
    )?;
    refuse_temporary_directory_installer(message)?;
    let chroot_into_input_root = optional(message.take("chroot_into_input_root")?, Field::bool)?;
    let run_commands_as = message
        .take("run_commands_as")?
        .map(|field| decode_run_commands_as(field.message()?))
        .transpose()?;
    let apple_xcode_developer_directories = optional(
        message.take("apple_xcode_developer_directories")?,
        Field::string_map,
    )?;
    Ok(Environment {
        global,
        set_tmpdir_environment_variable,
        chroot_into_input_root,
        run_commands_as,
        apple_xcode_developer_directories,
    })
}

/// bb_runner can ask a gRPC service for each action's temporary directory;
/// rbe-runner cannot, and says so rather than ignore it.
fn refuse_temporary_directory_installer(message: &mut Message) -> Decoded<()> {
    let Some(field) = message.take("temporary_directory_installer")? else {
        return Ok(());
    };
    // A grpc.ClientConfiguration; checking it is an object is enough
    // to know what the user meant before refusing it.
    let path = field.path.clone();
    field.message()?;
    Err(FieldError::unsupported(
        &path,
        "rbe-runner has no client for a temporary directory installer; \
         use symlinkTemporaryDirectories or cleanTemporaryDirectories instead",
    ))
}

/// Keys of upstream's `global.Configuration` that are accepted and only
/// recorded; `set_umask` is the one rbe-runner acts on.
const IGNORED_GLOBAL_FIELDS: &[&str] = &[
    "tracing",
    "mutex_profile_fraction",
    "prometheus_pushgateway",
    "log_paths",
    "grpc_forward_and_reuse_metadata",
    "grpc_kubernetes_resolvers",
    "set_resource_limits",
];

fn decode_global(mut message: Message) -> Decoded<GlobalConfig> {
    let set_umask = match message.take("set_umask")? {
        Some(field) => {
            let mut set_umask = field.message()?;
            let umask = match set_umask.take("umask")? {
                Some(field) => {
                    let path = field.path.clone();
                    let umask = field.uint32()?;
                    if umask > 0o777 {
                        return Err(FieldError::invalid(
                            &path,
                            format!("{umask:#o} has bits outside 0o777; write it with std.parseOctal('022') or as decimal"),
                        ));
                    }
                    umask
                }
                None => 0,
            };
            set_umask.finish()?;
            Some(umask)
        }
        None => None,
    };
    let diagnostics_http_server = message
        .take("diagnostics_http_server")?
        .map(|field| diagnostics::decode_diagnostics_http_server(field.message()?))
        .transpose()?;
    let mut ignored_keys = Vec::new();
    for name in IGNORED_GLOBAL_FIELDS {
        if let Some(field) = message.take(name)? {
            ignored_keys.push(field.path);
        }
    }
    message.finish()?;
    Ok(GlobalConfig {
        set_umask,
        diagnostics_http_server,
        ignored_keys,
    })
}

fn decode_run_commands_as(mut message: Message) -> Decoded<RunCommandsAs> {
    let user_id = optional(message.take("user_id")?, Field::uint32)?;
    let group_id = optional(message.take("group_id")?, Field::uint32)?;
    let additional_group_ids = optional(message.take("additional_group_ids")?, Field::uint32s)?;
    message.finish()?;
    Ok(RunCommandsAs {
        user_id,
        group_id,
        additional_group_ids,
    })
}

/// `global` as `check-config` prints it.
pub(super) fn write_global(f: &mut fmt::Formatter<'_>, global: &GlobalConfig) -> fmt::Result {
    writeln!(f, "global:")?;
    match global.set_umask {
        Some(umask) => writeln!(f, "  setUmask: {{ umask: {umask:#05o} }}")?,
        None => writeln!(f, "  setUmask: not set (the inherited umask is kept)")?,
    }
    diagnostics::write_diagnostics_http_server(f, &global.diagnostics_http_server)?;
    if global.ignored_keys.is_empty() {
        writeln!(f, "  ignored: none")?;
    } else {
        writeln!(f, "  ignored: {}", global.ignored_keys.join(", "))?;
    }
    Ok(())
}

/// `runCommandsAs` as `check-config` prints it.
pub(super) fn write_run_commands_as(
    f: &mut fmt::Formatter<'_>,
    run_commands_as: &Option<RunCommandsAs>,
) -> fmt::Result {
    match run_commands_as {
        Some(identity) => {
            let groups: Vec<String> = identity
                .additional_group_ids
                .iter()
                .map(u32::to_string)
                .collect();
            writeln!(
                f,
                "runCommandsAs: {{ userId: {}, groupId: {}, additionalGroupIds: [{}] }}",
                identity.user_id,
                identity.group_id,
                groups.join(", ")
            )?;
        }
        None => writeln!(
            f,
            "runCommandsAs: not set (actions run as the runner's user)"
        )?,
    }
    Ok(())
}

/// `appleXcodeDeveloperDirectories` as `check-config` prints it.
pub(super) fn write_apple_xcode_developer_directories(
    f: &mut fmt::Formatter<'_>,
    xcode: &BTreeMap<String, String>,
) -> fmt::Result {
    if xcode.is_empty() {
        writeln!(f, "appleXcodeDeveloperDirectories: none")?;
    } else {
        let entries: Vec<String> = xcode
            .iter()
            .map(|(version, directory)| format!("{version:?}: {directory:?}"))
            .collect();
        writeln!(
            f,
            "appleXcodeDeveloperDirectories: {{ {} }} (ignored on Linux)",
            entries.join(", ")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{
        assert_invalid_fields, assert_mentions, error_of, load_with, MINIMAL,
    };
    use crate::config::{ConfigError, GlobalConfig};

    /// Leaving a field out must mean protobuf's default, as upstream does.
    #[test]
    fn missing_fields_take_protobuf_defaults() {
        let config = load_with("").expect("minimal config decodes");
        assert_eq!(config.global, GlobalConfig::default());
        assert!(!config.set_tmpdir_environment_variable);
        assert!(!config.chroot_into_input_root);
        assert_eq!(config.run_commands_as, None);
        assert!(config.apple_xcode_developer_directories.is_empty());
    }

    /// Wrong types and out-of-range numbers name the field they are in.
    #[test]
    fn bad_values_name_their_path() {
        assert_invalid_fields(&[
            (
                "runCommandsAs: { userId: -1 }",
                "runCommandsAs.userId",
                "out of range",
            ),
            (
                "runCommandsAs: { userId: '-1' }",
                "runCommandsAs.userId",
                "out of range",
            ),
            (
                "runCommandsAs: { userId: 1.5 }",
                "runCommandsAs.userId",
                "whole number",
            ),
            (
                "runCommandsAs: { groupId: 4294967296 }",
                "runCommandsAs.groupId",
                "out of range",
            ),
            (
                "runCommandsAs: { groupId: 'abc' }",
                "runCommandsAs.groupId",
                "uint32",
            ),
            (
                "runCommandsAs: { additionalGroupIds: [1, -2] }",
                "runCommandsAs.additionalGroupIds[1]",
                "out of range",
            ),
            ("runCommandsAs: 1000", "runCommandsAs", "expected an object"),
            (
                "appleXcodeDeveloperDirectories: { '14': 14 }",
                "appleXcodeDeveloperDirectories[\"14\"]",
                "expected a string",
            ),
            (
                "global: { setUmask: { umask: 4096 } }",
                "global.setUmask.umask",
                "0o777",
            ),
            (
                "global: { setUmask: 18 }",
                "global.setUmask",
                "expected an object",
            ),
            ("global: []", "global", "expected an object"),
        ]);
    }

    #[test]
    fn temporary_directory_installer_is_refused() {
        let error =
            load_with("temporaryDirectoryInstaller: { address: 'unix:///worker/installer' }")
                .expect_err("not supported");
        assert!(
            matches!(error, ConfigError::Unsupported { .. }),
            "{error:?}"
        );
        assert_mentions(
            &error.to_string(),
            &["temporaryDirectoryInstaller", "not supported"],
        );
        assert_mentions(
            &error_of(&format!(
                "{{ {MINIMAL}, temporaryDirectoryInstaller: 'x' }}"
            )),
            &["temporaryDirectoryInstaller", "expected an object"],
        );
    }

    /// Upstream's other global options are accepted but recorded, so that
    /// startup can say once that they have no effect.
    #[test]
    fn global_keys_other_than_set_umask_are_recorded() {
        let config = load_with(
            "global: {
                log_paths: ['/var/log/runner.log'],
                tracing: { backends: [] },
                mutexProfileFraction: 1,
                prometheusPushgateway: { url: 'http://pushgateway' },
                grpcForwardAndReuseMetadata: ['authorization'],
                grpcKubernetesResolvers: {},
                setResourceLimits: { NOFILE: { softLimit: 1024 } },
                setUmask: {},
            }",
        )
        .expect("decodes");
        assert_eq!(
            config.global.set_umask,
            Some(0),
            "an empty setUmask is umask 0, as in protobuf"
        );
        assert_eq!(
            config.global.ignored_keys,
            vec![
                "global.tracing",
                "global.mutexProfileFraction",
                "global.prometheusPushgateway",
                "global.log_paths",
                "global.grpcForwardAndReuseMetadata",
                "global.grpcKubernetesResolvers",
                "global.setResourceLimits",
            ]
        );
    }
}
