//! `isolation`: rbe-runner's extension that gives each action namespaces
//! of its own (PID, mount, network, IPC, UTS) and a private `/tmp`
//! (docs/isolation.md). Everything is off by default, so a file without it
//! runs actions as before.
//!
//! Decoding checks each field on its own; [`check_with_other_fields`]
//! refuses the combinations with bb_runner's fields that this part cannot
//! honour, naming both fields.

use std::fmt;
use std::path::PathBuf;

use crate::config::protojson::{Decoded, Field, FieldError, Message};

/// The longest host name the kernel accepts (`HOST_NAME_MAX`).
pub const MAXIMUM_HOSTNAME_BYTES: usize = 64;

/// `isolation`, as decoded; [`IsolationConfig::default`] is no isolation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IsolationConfig {
    /// `pid`: a PID namespace per action, with a small init, and a fresh
    /// `/proc` showing only the action's processes.
    pub pid: bool,
    /// `network`: the host's network, or only a loopback of the action's own.
    pub network: NetworkIsolation,
    /// `tmp`: the host's `/tmp`, or the action's `temporary_directory` on
    /// `/tmp` and `/var/tmp`.
    pub tmp: TmpIsolation,
    /// `ipc`: System V IPC and POSIX message queues of the action's own,
    /// and a private tmpfs on `/dev/shm`.
    pub ipc: bool,
    /// `hostname`: a UTS namespace with this host name; `None`: the host's.
    pub hostname: Option<String>,
    /// `dev`: with `chrootIntoInputRoot`, what the input root's `dev` holds
    /// (see `input_root_mounts.rs`).
    pub dev: DevIsolation,
}

/// `isolation.dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevIsolation {
    /// Not set: whatever the input root has in `dev`.
    #[default]
    InputRoot,
    /// `'minimal'`: a tmpfs on the root's `dev` with the host's `null`,
    /// `zero`, `full`, `random`, `urandom` and `tty` bound in, a `devpts`
    /// of the action's own, a private `shm`, and the `/proc/self` links.
    Minimal,
}

/// `isolation.network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkIsolation {
    /// `'host'`: the runner's network.
    #[default]
    Host,
    /// `'off'`: a network namespace with only its own loopback, up.
    Off,
}

/// `isolation.tmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TmpIsolation {
    /// `'host'`: the runner's `/tmp`.
    #[default]
    Host,
    /// `'private'`: the action's `temporary_directory` on `/tmp` and `/var/tmp`.
    Private,
}

impl IsolationConfig {
    /// Whether any option is set.
    pub fn is_enabled(&self) -> bool {
        *self != IsolationConfig::default()
    }

    /// The first option set, as its path in the file, for messages.
    pub fn first_field(&self) -> Option<&'static str> {
        if self.pid {
            Some("isolation.pid")
        } else if self.network == NetworkIsolation::Off {
            Some("isolation.network")
        } else if self.tmp == TmpIsolation::Private {
            Some("isolation.tmp")
        } else if self.ipc {
            Some("isolation.ipc")
        } else if self.hostname.is_some() {
            Some("isolation.hostname")
        } else if self.dev == DevIsolation::Minimal {
            Some("isolation.dev")
        } else {
            None
        }
    }
}

/// Decodes the `isolation` message.
pub(super) fn decode(field: Field) -> Decoded<IsolationConfig> {
    let mut message: Message = field.message()?;
    let pid = message.take("pid")?.map(Field::bool).transpose()?;
    let network = match message.take("network")? {
        None => NetworkIsolation::Host,
        Some(field) => {
            let path = field.path.clone();
            match field.string()?.as_str() {
                "host" => NetworkIsolation::Host,
                "off" => NetworkIsolation::Off,
                other => {
                    return Err(FieldError::invalid(
                        &path,
                        format!("{:?} is neither \"host\" nor \"off\"", bounded(other)),
                    ))
                }
            }
        }
    };
    let tmp = match message.take("tmp")? {
        None => TmpIsolation::Host,
        Some(field) => {
            let path = field.path.clone();
            match field.string()?.as_str() {
                "host" => TmpIsolation::Host,
                "private" => TmpIsolation::Private,
                other => {
                    return Err(FieldError::invalid(
                        &path,
                        format!("{:?} is neither \"host\" nor \"private\"", bounded(other)),
                    ))
                }
            }
        }
    };
    let ipc = message.take("ipc")?.map(Field::bool).transpose()?;
    let hostname = message.take("hostname")?.map(decode_hostname).transpose()?;
    let dev = match message.take("dev")? {
        None => DevIsolation::InputRoot,
        Some(field) => {
            let path = field.path.clone();
            match field.string()?.as_str() {
                "minimal" => DevIsolation::Minimal,
                other => {
                    return Err(FieldError::invalid(
                        &path,
                        format!(
                            "{:?} is not \"minimal\" (leave the field out to keep the input \
                             root's dev)",
                            bounded(other)
                        ),
                    ))
                }
            }
        }
    };
    message.finish()?;
    Ok(IsolationConfig {
        pid: pid.unwrap_or(false),
        network,
        tmp,
        ipc: ipc.unwrap_or(false),
        hostname,
        dev,
    })
}

/// A host name the kernel accepts: 1 to 64 bytes, no NUL.
fn decode_hostname(field: Field) -> Decoded<String> {
    let path = field.path.clone();
    let hostname = field.string()?;
    if hostname.is_empty() || hostname.len() > MAXIMUM_HOSTNAME_BYTES || hostname.contains('\0') {
        return Err(FieldError::invalid(
            &path,
            format!(
                "{:?} is not a host name: 1 to {MAXIMUM_HOSTNAME_BYTES} bytes without NUL \
                 (leave the field out to keep the host's)",
                bounded(&hostname)
            ),
        ));
    }
    Ok(hostname)
}

/// At most 80 characters of `text`, for messages.
fn bounded(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Refuses the combinations of `isolation` with bb_runner's fields that
/// cannot be honoured, naming both fields.
pub(super) fn check_with_other_fields(
    isolation: &IsolationConfig,
    symlink_temporary_directories: &[PathBuf],
    chroot_into_input_root: bool,
) -> Decoded<()> {
    if isolation.tmp == TmpIsolation::Private && !symlink_temporary_directories.is_empty() {
        return Err(FieldError::invalid(
            "isolation.tmp",
            "'private' cannot be combined with symlinkTemporaryDirectories: each action \
             already has its temporary_directory on /tmp and /var/tmp; remove \
             symlinkTemporaryDirectories",
        ));
    }
    if chroot_into_input_root && isolation.tmp == TmpIsolation::Private {
        return Err(FieldError::invalid(
            "isolation.tmp",
            "'private' cannot be combined with chrootIntoInputRoot: it mounts the \
             temporary_directory on the host's /tmp, which a chrooted action does not see; \
             bind what the action needs through inputRootMounts",
        ));
    }
    Ok(())
}

/// `isolation` as `check-config` prints it.
pub(super) fn write(f: &mut fmt::Formatter<'_>, isolation: &IsolationConfig) -> fmt::Result {
    writeln!(f, "isolation:")?;
    writeln!(f, "  pid: {}", isolation.pid)?;
    writeln!(
        f,
        "  network: {}",
        match isolation.network {
            NetworkIsolation::Host => "'host'",
            NetworkIsolation::Off => "'off'",
        }
    )?;
    writeln!(
        f,
        "  tmp: {}",
        match isolation.tmp {
            TmpIsolation::Host => "'host'",
            TmpIsolation::Private => "'private'",
        }
    )?;
    writeln!(f, "  ipc: {}", isolation.ipc)?;
    match &isolation.hostname {
        Some(hostname) => writeln!(f, "  hostname: {hostname:?}")?,
        None => writeln!(f, "  hostname: not set (the host's)")?,
    }
    match isolation.dev {
        DevIsolation::InputRoot => writeln!(f, "  dev: not set (the input root's)")?,
        DevIsolation::Minimal => writeln!(f, "  dev: 'minimal'")?,
    }
    if isolation.is_enabled() {
        // Chosen at startup from the runner's capabilities, which the
        // configuration cannot say.
        writeln!(
            f,
            "  (made by a runner with CAP_SYS_ADMIN itself; by one without, inside a user \
             namespace per action, where runCommandsAs needs CAP_SETUID and CAP_SETGID and \
             additionalGroupIds is refused: docs/isolation.md)"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{assert_invalid_fields, assert_mentions, load_with};
    use crate::config::ConfigError;

    /// Why it matters: a file without `isolation` must run actions as
    /// before.
    #[test]
    fn isolation_is_off_unless_configured() {
        let config = load_with("").expect("minimal config decodes");
        assert_eq!(config.isolation, IsolationConfig::default());
        assert!(!config.isolation.is_enabled());
        let config = load_with("isolation: {}").expect("an empty isolation decodes");
        assert!(!config.isolation.is_enabled());
    }

    /// Why it matters: the example is the documented spelling.
    #[test]
    fn every_option_decodes() {
        let config = load_with(
            "isolation: { pid: true, network: 'off', tmp: 'private', ipc: true, \
             hostname: 'localhost' }",
        )
        .expect("decodes");
        assert_eq!(
            config.isolation,
            IsolationConfig {
                pid: true,
                network: NetworkIsolation::Off,
                tmp: TmpIsolation::Private,
                ipc: true,
                hostname: Some("localhost".into()),
                dev: DevIsolation::InputRoot,
            }
        );
        let config = load_with("isolation: { network: 'host', tmp: 'host' }").expect("decodes");
        assert!(!config.isolation.is_enabled());
    }

    /// Why it matters: a typo must never run actions with less isolation
    /// than meant.
    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let error = load_with("isolation: { pdi: true }").expect_err("typo");
        assert!(
            matches!(error, ConfigError::UnknownField { .. }),
            "{error:?}"
        );
        assert_mentions(&error.to_string(), &["isolation.pdi", "unknown field"]);
        assert_invalid_fields(&[
            (
                "isolation: { network: 'none' }",
                "isolation.network",
                "\"none\"",
            ),
            ("isolation: { tmp: 'tmpfs' }", "isolation.tmp", "\"tmpfs\""),
            ("isolation: { pid: 'yes' }", "isolation.pid", ""),
            ("isolation: { ipc: 1 }", "isolation.ipc", ""),
            (
                "isolation: { hostname: '' }",
                "isolation.hostname",
                "host name",
            ),
            (
                "isolation: { hostname: std.repeat('h', 65) }",
                "isolation.hostname",
                "64 bytes",
            ),
            ("isolation: true", "isolation", ""),
            (
                "isolation: { dev: 'host' }",
                "isolation.dev",
                "\"host\" is not \"minimal\"",
            ),
        ]);
    }

    /// Why it matters: how the namespaces are made depends on the
    /// runner's capabilities, which the operator checking a configuration
    /// must learn along with what a runner without root refuses.
    #[test]
    fn check_config_says_how_the_namespaces_are_made() {
        let printed = load_with("isolation: { pid: true }").unwrap().to_string();
        assert!(printed.contains("inside a user namespace"), "{printed}");
        assert!(
            printed.contains("additionalGroupIds is refused"),
            "{printed}"
        );
        let printed = load_with("").unwrap().to_string();
        assert!(!printed.contains("user namespace"), "{printed}");
    }

    /// Why it matters: symlinking `/tmp` and a private `/tmp` contradict
    /// each other; a private `/tmp` on the host's `/tmp` is not what a
    /// chrooted action sees, while every other option holds in a chroot.
    #[test]
    fn combinations_that_cannot_be_honoured_are_refused_naming_both_fields() {
        assert_invalid_fields(&[
            (
                "isolation: { tmp: 'private' }, symlinkTemporaryDirectories: ['/tmp']",
                "isolation.tmp",
                "symlinkTemporaryDirectories",
            ),
            (
                "isolation: { tmp: 'private' }, chrootIntoInputRoot: true",
                "isolation.tmp",
                "chrootIntoInputRoot",
            ),
        ]);
        load_with(
            "isolation: { pid: true, network: 'off', ipc: true, hostname: 'a' }, \
             chrootIntoInputRoot: true",
        )
        .expect("every other option holds in a chroot");
        load_with("isolation: { pid: true }, symlinkTemporaryDirectories: ['/tmp']")
            .expect("a host /tmp may still be symlinked");
    }
}
