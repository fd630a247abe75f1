//! `keepaliveParameters` of a `grpcServers` entry (bb-storage's
//! `ServerKeepaliveParameters`, grpc-go's `keepalive.ServerParameters`),
//! and the HTTP/2 window sizes: how long a connection lives, and how the
//! server checks that its client is still there.

use std::fmt;
use std::time::Duration;

use crate::config::duration::format_duration;
use crate::config::protojson::{Decoded, Field, FieldError};

/// grpc-go's `Time` when unset: a connection with no activity for this
/// long gets a PING from the server.
pub const DEFAULT_KEEPALIVE_TIME: Duration = Duration::from_secs(2 * 60 * 60);
/// grpc-go's `Timeout` when unset: how long the answer to that PING may
/// take before the connection is closed.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// grpc-go raises a shorter `Time` to this.
const MINIMUM_KEEPALIVE_TIME: Duration = Duration::from_secs(1);
/// grpc-go ignores window sizes below this (the protocol's initial
/// window, rounded up to 64 KiB).
pub const MINIMUM_WINDOW_SIZE_BYTES: u32 = 64 * 1024;

/// `keepaliveParameters`; a field left out (or zero) means grpc-go's
/// default: no limit for the idle time, the age and its grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepaliveParameters {
    /// `maxConnectionIdle`: a connection with no call open for this long
    /// gets a GOAWAY.
    pub max_connection_idle: Option<Duration>,
    /// `maxConnectionAge`: a connection this old (±10%) gets a GOAWAY.
    pub max_connection_age: Option<Duration>,
    /// `maxConnectionAgeGrace`: after the age's GOAWAY, calls still open
    /// get this long before the connection is closed.
    pub max_connection_age_grace: Option<Duration>,
    /// `time`: with no frame received for this long, the server PINGs.
    pub time: Option<Duration>,
    /// `timeout`: an unanswered PING closes the connection after this.
    pub timeout: Option<Duration>,
}

impl KeepaliveParameters {
    /// The PING interval in effect: `time`, grpc-go's 2 h when unset, at
    /// least 1 s.
    pub fn ping_interval(&self) -> Duration {
        self.time
            .unwrap_or(DEFAULT_KEEPALIVE_TIME)
            .max(MINIMUM_KEEPALIVE_TIME)
    }

    /// How long a PING's answer may take: `timeout`, 20 s when unset.
    pub fn ping_timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT)
    }
}

/// A duration field where zero, as unset, means "not set".
fn nonzero_duration(field: Option<Field>) -> Decoded<Option<Duration>> {
    match field {
        Some(field) => Ok(Some(field.duration()?).filter(|duration| !duration.is_zero())),
        None => Ok(None),
    }
}

pub(super) fn decode_keepalive_parameters(field: Field) -> Decoded<KeepaliveParameters> {
    let mut message = field.message()?;
    let parameters = KeepaliveParameters {
        max_connection_idle: nonzero_duration(message.take("max_connection_idle")?)?,
        max_connection_age: nonzero_duration(message.take("max_connection_age")?)?,
        max_connection_age_grace: nonzero_duration(message.take("max_connection_age_grace")?)?,
        time: nonzero_duration(message.take("time")?)?,
        timeout: nonzero_duration(message.take("timeout")?)?,
    };
    message.finish()?;
    Ok(parameters)
}

/// `initialWindowSizeBytes` / `initialConnWindowSizeBytes` (protobuf
/// `int32`); `None` when unset or zero.
pub(super) fn decode_window_size(field: Option<Field>) -> Decoded<Option<u32>> {
    let Some(field) = field else {
        return Ok(None);
    };
    let path = field.path.clone();
    let bytes = field.int64()?;
    if bytes < 0 || bytes > i64::from(i32::MAX) {
        return Err(FieldError::invalid(
            &path,
            format!("must be between 0 and {} bytes, got {bytes}", i32::MAX),
        ));
    }
    Ok(u32::try_from(bytes).ok().filter(|bytes| *bytes != 0))
}

fn write_optional(f: &mut fmt::Formatter<'_>, name: &str, value: Option<Duration>) -> fmt::Result {
    match value {
        Some(duration) => write!(f, "{name}: {}", format_duration(duration)),
        None => write!(f, "{name}: none"),
    }
}

impl fmt::Display for KeepaliveParameters {
    /// One line, as `check-config` prints it, with the values in effect.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{ ")?;
        write_optional(f, "maxConnectionIdle", self.max_connection_idle)?;
        write!(f, ", ")?;
        write_optional(f, "maxConnectionAge", self.max_connection_age)?;
        write!(f, ", ")?;
        write_optional(f, "maxConnectionAgeGrace", self.max_connection_age_grace)?;
        write!(
            f,
            ", time: {}, timeout: {} }}",
            format_duration(self.ping_interval()),
            format_duration(self.ping_timeout())
        )
    }
}

/// A window size as `check-config` prints it.
pub(super) fn describe_window_size(size: Option<u32>) -> String {
    match size {
        None => "default".to_owned(),
        Some(bytes) if bytes < MINIMUM_WINDOW_SIZE_BYTES => {
            format!("{bytes} (ignored: below 64 KiB, as in grpc-go)")
        }
        Some(bytes) => bytes.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{assert_mentions, error_of, load_text, with_server};

    fn server(fields: &str) -> String {
        with_server(&format!(
            "{{ listenPaths: ['/s'], authenticationPolicy: {{ allow: {{}} }}, {fields} }}"
        ))
    }

    #[test]
    fn unset_and_zero_take_grpc_go_defaults() {
        // Why: grpc-go reads a zero duration as "not set"; a bb_runner
        // configuration writing '0s' must mean what it meant there.
        let config = load_text(&server(
            "keepaliveParameters: { maxConnectionIdle: '0s', time: '0.5s', maxConnectionAge: '60s' }",
        ))
        .unwrap();
        let keepalive = config.grpc_servers[0].keepalive_parameters;
        assert_eq!(keepalive.max_connection_idle, None);
        assert_eq!(keepalive.max_connection_age, Some(Duration::from_secs(60)));
        assert_eq!(keepalive.ping_interval(), Duration::from_secs(1));
        assert_eq!(keepalive.ping_timeout(), DEFAULT_KEEPALIVE_TIMEOUT);
        let defaults = KeepaliveParameters::default();
        assert_eq!(defaults.ping_interval(), DEFAULT_KEEPALIVE_TIME);
    }

    #[test]
    fn bad_values_name_their_field() {
        for (fields, path, words) in [
            (
                "keepaliveParameters: { time: 'soon' }",
                "grpcServers[0].keepaliveParameters.time",
                "",
            ),
            (
                "keepaliveParameters: { maxConnectionIdel: '1s' }",
                "grpcServers[0].keepaliveParameters.maxConnectionIdel",
                "",
            ),
            (
                "initialWindowSizeBytes: -1",
                "grpcServers[0].initialWindowSizeBytes",
                "between 0",
            ),
            (
                "initialConnWindowSizeBytes: 4294967296",
                "grpcServers[0].initialConnWindowSizeBytes",
                "between 0",
            ),
        ] {
            assert_mentions(&error_of(&server(fields)), &[path, words]);
        }
        let config = load_text(&server(
            "initialWindowSizeBytes: 1048576, initialConnWindowSizeBytes: '0'",
        ))
        .unwrap();
        assert_eq!(
            config.grpc_servers[0].initial_window_size_bytes,
            Some(1 << 20)
        );
        assert_eq!(config.grpc_servers[0].initial_conn_window_size_bytes, None);
    }
}
