//! What actions run in and as: `global` (its `setUmask` and
//! `setResourceLimits`),
//! `setTmpdirEnvironmentVariable`, `temporaryDirectoryInstaller` (refused),
//! `chrootIntoInputRoot`, `runCommandsAs` and
//! `appleXcodeDeveloperDirectories`.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::protojson::{child_path, optional, Decoded, Field, FieldError, Message};
use crate::resource_limits::{resource_names, ResourceLimit};

use super::diagnostics::{self, DiagnosticsHttpServerConfig};
use super::tracing::{self, TracingConfig};

/// `global`: `setUmask`, `setResourceLimits`, `diagnosticsHttpServer` and `tracing`
/// have an effect; other keys are listed in `ignored_keys` so that startup
/// can log them once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GlobalConfig {
    /// umask applied to the runner, and so inherited by every action.
    pub set_umask: Option<u32>,
    /// `setResourceLimits`: limits set on the runner at startup, and so
    /// inherited by every action, in key order.
    pub set_resource_limits: Vec<ResourceLimit>,
    /// `diagnosticsHttpServer`: metrics and health over HTTP.
    pub diagnostics_http_server: Option<DiagnosticsHttpServerConfig>,
    /// `tracing`: OpenTelemetry spans of calls and actions.
    pub tracing: Option<TracingConfig>,
    /// Paths (e.g. `global.logPaths`) present but not acted on.
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
    "mutex_profile_fraction",
    "prometheus_pushgateway",
    "log_paths",
    "grpc_forward_and_reuse_metadata",
    "grpc_kubernetes_resolvers",
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
    let set_resource_limits = message
        .take("set_resource_limits")?
        .map(|field| decode_set_resource_limits(field.message()?))
        .transpose()?
        .unwrap_or_default();
    let tracing = message
        .take("tracing")?
        .map(|field| tracing::decode_tracing(field.message()?))
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
        set_resource_limits,
        diagnostics_http_server,
        tracing,
        ignored_keys,
    })
}

/// `setResourceLimits`: a `map<string, SetResourceLimitConfiguration>`
/// keyed by `RLIMIT_` suffix, each with `softLimit` and `hardLimit`
/// (`google.protobuf.UInt64Value`: a number or a string of digits; left
/// out, unlimited).
fn decode_set_resource_limits(mut map: Message) -> Decoded<Vec<ResourceLimit>> {
    let mut limits = Vec::new();
    while let Some(key) = map.first_key().map(str::to_owned) {
        let path = child_path(&map.path, &key);
        let Some(field) = map.take(&key)? else {
            continue;
        };
        let mut entry = field.message()?;
        let mut limit = |name: &str| -> Decoded<Option<u64>> {
            entry
                .take(name)?
                .map(|field| {
                    field.parsed(
                        "a uint64 (a whole number, or one written as a string)",
                        |text| {
                            text.parse::<u64>()
                                .map_err(|_| format!("{text} is not a uint64 (0 to {})", u64::MAX))
                        },
                    )
                })
                .transpose()
        };
        let (soft, hard) = (limit("soft_limit")?, limit("hard_limit")?);
        entry.finish()?;
        let Some(resource_limit) = ResourceLimit::new(&key, soft, hard) else {
            let known: Vec<&str> = resource_names().collect();
            return Err(FieldError::invalid(
                &path,
                format!(
                    "unknown resource; expected the suffix of an RLIMIT_ constant: {}",
                    known.join(", ")
                ),
            ));
        };
        limits.push(resource_limit);
    }
    Ok(limits)
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
    if global.set_resource_limits.is_empty() {
        writeln!(
            f,
            "  setResourceLimits: none (the inherited limits are kept)"
        )?;
    } else {
        let limits: Vec<String> = global
            .set_resource_limits
            .iter()
            .map(|limit| {
                let value = |limit: Option<u64>| {
                    limit.map_or_else(|| "unlimited".to_owned(), |limit| limit.to_string())
                };
                format!(
                    "{}: {{ softLimit: {}, hardLimit: {} }}",
                    limit.name(),
                    value(limit.soft),
                    value(limit.hard)
                )
            })
            .collect();
        writeln!(f, "  setResourceLimits: {{ {} }}", limits.join(", "))?;
    }
    diagnostics::write_diagnostics_http_server(f, &global.diagnostics_http_server)?;
    match &global.tracing {
        Some(tracing) => writeln!(f, "  tracing: {tracing}")?,
        None => writeln!(f, "  tracing: off")?,
    }
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
                "global.mutexProfileFraction",
                "global.prometheusPushgateway",
                "global.log_paths",
                "global.grpcForwardAndReuseMetadata",
                "global.grpcKubernetesResolvers",
            ]
        );
    }

    /// `setResourceLimits` as bb-storage reads it: keys are RLIMIT_
    /// suffixes, values UInt64Value (numbers or strings), and a limit left
    /// out is unlimited.
    #[test]
    fn set_resource_limits_are_decoded_in_key_order_unset_meaning_unlimited() {
        let config = load_with(
            "global: { setResourceLimits: {
                NOFILE: { softLimit: 1024, hardLimit: '65536' },
                CORE: { soft_limit: 0 },
                NPROC: {},
            } }",
        )
        .expect("decodes");
        let limits: Vec<(&str, Option<u64>, Option<u64>)> = config
            .global
            .set_resource_limits
            .iter()
            .map(|limit| (limit.name(), limit.soft, limit.hard))
            .collect();
        assert_eq!(
            limits,
            vec![
                ("CORE", Some(0), None),
                ("NOFILE", Some(1024), Some(65536)),
                ("NPROC", None, None),
            ]
        );
        assert!(config.global.ignored_keys.is_empty());
        let shown = config.to_string();
        assert!(
            shown.contains("NOFILE: { softLimit: 1024, hardLimit: 65536 }"),
            "{shown}"
        );
        assert!(shown.contains("NPROC: { softLimit: unlimited, hardLimit: unlimited }"));
    }

    /// An unknown resource or a bad value stops startup naming the key.
    #[test]
    fn bad_set_resource_limits_name_their_key() {
        assert_invalid_fields(&[
            (
                "global: { setResourceLimits: { FILES: { softLimit: 1 } } }",
                "global.setResourceLimits.FILES",
                "unknown resource",
            ),
            (
                "global: { setResourceLimits: { RLIMIT_NOFILE: {} } }",
                "global.setResourceLimits.RLIMIT_NOFILE",
                "NOFILE",
            ),
            (
                "global: { setResourceLimits: { NOFILE: { softLimit: -1 } } }",
                "global.setResourceLimits.NOFILE.softLimit",
                "not a uint64",
            ),
            (
                "global: { setResourceLimits: { NOFILE: { hardLimit: 'lots' } } }",
                "global.setResourceLimits.NOFILE.hardLimit",
                "not a uint64",
            ),
            (
                "global: { setResourceLimits: { NOFILE: 1024 } }",
                "global.setResourceLimits.NOFILE",
                "expected an object",
            ),
            (
                "global: { setResourceLimits: [] }",
                "global.setResourceLimits",
                "expected an object",
            ),
        ]);
    }
}
