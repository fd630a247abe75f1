//! Where the runner works and how it is reached: `buildDirectoryPath`,
//! `grpcServers` (listeners, authentication policy, message size) and
//! `readinessCheckingPathnames`.

use std::fmt;
use std::path::PathBuf;

use super::auth;
use super::display::quoted_list;
use super::keepalive::{
    decode_keepalive_parameters, decode_window_size, describe_window_size, KeepaliveParameters,
};
use super::tls::{decode_tls_server, TlsServerConfig};
use super::tracing::{decode_server_tracing, ServerTracingConfig};
use crate::auth::gate::AuthorizersConfig;
use crate::auth::policy::PolicyConfig;
use crate::config::protojson::{
    child_path, optional, repeated, Decoded, Field, FieldError, Message,
};

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
    /// Who may call: every call is authenticated by this policy.
    pub authentication_policy: PolicyConfig,
    /// The top-level `runAuthorizer` and `eventsAuthorizer`, which every
    /// server applies to the metadata its policy gave.
    pub authorizers: AuthorizersConfig,
    /// `tls`: every listener of the entry speaks TLS when set.
    pub tls: Option<TlsServerConfig>,
    /// `keepaliveParameters`: connection lifetime and server PINGs.
    pub keepalive_parameters: KeepaliveParameters,
    /// `initialWindowSizeBytes`: each stream's HTTP/2 flow-control window.
    pub initial_window_size_bytes: Option<u32>,
    /// `initialConnWindowSizeBytes`: the connection's HTTP/2 window.
    pub initial_conn_window_size_bytes: Option<u32>,
    /// `healthCheckService`: a service name the grpc.health.v1 service
    /// reports SERVING for; empty when unset.
    pub health_check_service: String,
    /// `tracing`: attributes of the server spans taken from the first
    /// request and response messages.
    pub tracing: ServerTracingConfig,
}

/// The serving fields of the top-level message.
/// Each field is the [`Config`](crate::config::Config) field of the same name.
pub(super) struct Serving {
    /// Empty when left out, protobuf's default; [`Serving::check_required`]
    /// refuses that.
    pub(super) build_directory_path: PathBuf,
    pub(super) grpc_servers: Vec<GrpcServerConfig>,
    pub(super) readiness_checking_pathnames: Vec<PathBuf>,
    pub(super) listen_path_mode: Option<u32>,
}

/// Takes the serving fields from the top-level `message`.
pub(super) fn decode(message: &mut Message) -> Decoded<Serving> {
    let build_directory_path = optional(message.take("build_directory_path")?, Field::string)?;
    let mut grpc_servers = repeated(message.take("grpc_servers")?, decode_grpc_server)?;
    // rbe-runner's extension: the authorizers every server applies.
    let authorizers = auth::decode_authorizers(message)?;
    for server in &mut grpc_servers {
        server.authorizers = authorizers.clone();
    }
    let readiness_checking_pathnames =
        optional(message.take("readiness_checking_pathnames")?, Field::paths)?;
    // rbe-runner's extension.
    let listen_path_mode = message
        .take("listen_path_mode")?
        .map(decode_permission_bits)
        .transpose()?;
    Ok(Serving {
        build_directory_path: PathBuf::from(build_directory_path),
        grpc_servers,
        readiness_checking_pathnames,
        listen_path_mode,
    })
}

/// A file mode (`listenPathMode`, `events.journalMode`): an octal string
/// such as `'0660'`, or a number (e.g. `std.parseOctal('660')`);
/// permission bits only.
pub(super) fn decode_permission_bits(field: Field) -> Decoded<u32> {
    let path = field.path.clone();
    let mode = if field.is_string() {
        let text = field.string()?;
        let digits = text.strip_prefix("0o").unwrap_or(&text);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(FieldError::invalid(
                &path,
                format!("{text:?} is not an octal mode; write it like '0660'"),
            ));
        }
        u32::from_str_radix(digits, 8).unwrap_or(u32::MAX)
    } else {
        field.uint32()?
    };
    if mode > 0o777 {
        return Err(FieldError::invalid(
            &path,
            format!("{mode:#o} has bits outside 0o777; give permission bits such as '0660'"),
        ));
    }
    Ok(mode)
}

/// `listenPathMode` as `check-config` prints it.
pub(super) fn write_listen_path_mode(f: &mut fmt::Formatter<'_>, mode: Option<u32>) -> fmt::Result {
    match mode {
        Some(mode) => writeln!(f, "listenPathMode: '{mode:04o}'"),
        None => writeln!(f, "listenPathMode: not set (what the umask leaves of 0777)"),
    }
}

impl Serving {
    /// A runner needs a build directory and a way to be reached. Called
    /// once every key of the document has been read, so that a misspelled
    /// required field is reported as the typo it is, not as missing.
    pub(super) fn check_required(&self) -> Decoded<()> {
        if self.build_directory_path.as_os_str().is_empty() {
            return Err(FieldError::missing(
                "buildDirectoryPath",
                "set it to the directory bb_worker prepares actions in",
            ));
        }
        let has_listener = self
            .grpc_servers
            .iter()
            .any(|server| !server.listen_paths.is_empty() || !server.listen_addresses.is_empty());
        if !has_listener {
            return Err(FieldError::missing(
                "grpcServers",
                "no listener is configured; give at least one entry listenPaths (Unix sockets) \
                 or listenAddresses (TCP)",
            ));
        }
        Ok(())
    }
}

/// Fields of upstream's `grpc.ServerConfiguration` that rbe-runner refuses,
/// with the reason given.
const UNSUPPORTED_SERVER_FIELDS: &[(&str, &str)] = &[
    (
        "keepalive_enforcement_policy",
        "the runner does not police its clients' PINGs; leave it out (grpc-go's default \
         policy is not enforced either)",
    ),
    (
        "alts",
        "ALTS (Google's transport security) is not implemented; use `tls`",
    ),
    ("relays", "relaying connections is not implemented"),
];

fn decode_grpc_server(field: Field) -> Decoded<GrpcServerConfig> {
    let mut message = field.message()?;
    let listen_addresses = repeated(message.take("listen_addresses")?, decode_listen_address)?;
    let listen_paths = optional(message.take("listen_paths")?, Field::paths)?;
    let authentication_policy = message
        .take("authentication_policy")?
        .map(auth::decode_policy)
        .transpose()?;
    if let Some(policy) = &authentication_policy {
        auth::refuse_peer_credentials_with_tls(policy, &message)?;
    }
    let maximum_received_message_size_bytes =
        match message.take("maximum_received_message_size_bytes")? {
            Some(field) => {
                let path = field.path.clone();
                match field.int64()? {
                    0 => None,
                    bytes => Some(usize::try_from(bytes).map_err(|_| {
                        FieldError::invalid(&path, format!("must not be negative, got {bytes}"))
                    })?),
                }
            }
            None => None,
        };
    let stop_gracefully = optional(message.take("stop_gracefully")?, Field::bool)?;
    let tls = message.take("tls")?.map(decode_tls_server).transpose()?;
    let keepalive_parameters = optional(
        message.take("keepalive_parameters")?,
        decode_keepalive_parameters,
    )?;
    let initial_window_size_bytes = decode_window_size(message.take("initial_window_size_bytes")?)?;
    let initial_conn_window_size_bytes =
        decode_window_size(message.take("initial_conn_window_size_bytes")?)?;
    let health_check_service = optional(message.take("health_check_service")?, Field::string)?;
    let tracing = optional(message.take("tracing")?, decode_server_tracing)?;
    for (name, reason) in UNSUPPORTED_SERVER_FIELDS {
        message.reject(name, reason)?;
    }
    let server_path = message.path.clone();
    message.finish()?;
    let Some(authentication_policy) = authentication_policy else {
        return Err(FieldError::missing(
            &child_path(&server_path, "authenticationPolicy"),
            "bb_runner requires one; `authenticationPolicy: { allow: {} }` accepts every caller",
        ));
    };
    Ok(GrpcServerConfig {
        listen_paths,
        listen_addresses,
        stop_gracefully,
        maximum_received_message_size_bytes,
        authentication_policy,
        authorizers: AuthorizersConfig::default(),
        tls,
        keepalive_parameters,
        initial_window_size_bytes,
        initial_conn_window_size_bytes,
        health_check_service,
        tracing,
    })
}

/// The transport of each listener of `server` and its connection
/// settings, as `check-config` prints them.
fn write_transport(f: &mut fmt::Formatter<'_>, server: &GrpcServerConfig) -> fmt::Result {
    let security = match &server.tls {
        Some(_) => "tls",
        None => "plaintext",
    };
    writeln!(f, "    listeners:")?;
    for path in &server.listen_paths {
        writeln!(
            f,
            "      - unix {:?} {security}",
            path.display().to_string()
        )?;
    }
    for address in &server.listen_addresses {
        writeln!(f, "      - tcp {address:?} {security}")?;
    }
    match &server.tls {
        Some(tls) => writeln!(f, "    tls: {tls}")?,
        None => writeln!(f, "    tls: not set")?,
    }
    writeln!(
        f,
        "    keepaliveParameters: {}",
        server.keepalive_parameters
    )?;
    writeln!(
        f,
        "    initialWindowSizeBytes: {}",
        describe_window_size(server.initial_window_size_bytes)
    )?;
    writeln!(
        f,
        "    initialConnWindowSizeBytes: {}",
        describe_window_size(server.initial_conn_window_size_bytes)
    )?;
    if server.health_check_service.is_empty() {
        writeln!(f, "    healthCheckService: not set")
    } else {
        writeln!(
            f,
            "    healthCheckService: {:?}",
            server.health_check_service
        )
    }
}

/// A TCP listen address: `host:port`, where the host may be empty (all
/// interfaces, as in Go's `:8991`) or a bracketed IPv6 address.
pub(super) fn decode_listen_address(field: Field) -> Decoded<String> {
    let path = field.path.clone();
    let address = field.non_empty_string()?;
    let valid_port = address
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.parse::<u16>().is_ok());
    if !valid_port {
        return Err(FieldError::invalid(
            &path,
            format!("{address:?} is not of the form host:port (e.g. \"127.0.0.1:8991\")"),
        ));
    }
    Ok(address)
}

/// Policies of upstream's `grpc.AuthenticationPolicy` oneof other than `allow`.
const OTHER_AUTHENTICATION_POLICIES: &[&str] = &[
    "any",
    "all",
    "deny",
    "tls_client_certificate",
    "jwt",
    "peer_credentials_jmespath_expression",
    "remote",
];

/// For the diagnostics HTTP servers, only `{ allow: {} }` is accepted.
pub(super) fn check_authentication_policy(mut message: Message) -> Decoded<()> {
    let policy_path = message.path.clone();
    let allow = message.take("allow")?;
    let mut others = Vec::new();
    for name in OTHER_AUTHENTICATION_POLICIES {
        if let Some(field) = message.take(name)? {
            others.push(field);
        }
    }
    message.finish()?;
    match (allow, others.len()) {
        (None, 0) => Err(FieldError::missing(
            &policy_path,
            "no policy is set; use `{ allow: {} }`",
        )),
        (Some(_), 1..) | (None, 2..) => Err(FieldError::invalid(
            &policy_path,
            "more than one policy is set, but it is a oneof: set exactly one",
        )),
        (None, _) => Err(FieldError::unsupported(
            &others[0].path,
            "only `allow: {}` is accepted; protect the runner's socket with file permissions",
        )),
        (Some(allow), _) => {
            let allow = allow.message()?;
            match allow.first_key() {
                Some(key) => Err(FieldError::unsupported(
                    &child_path(&allow.path, key),
                    "authentication metadata is not used by rbe-runner; write `allow: {}`",
                )),
                None => Ok(()),
            }
        }
    }
}

/// `grpcServers` as `check-config` prints it: one block per server.
pub(super) fn write_grpc_servers(
    f: &mut fmt::Formatter<'_>,
    servers: &[GrpcServerConfig],
) -> fmt::Result {
    writeln!(f, "grpcServers:")?;
    for (index, server) in servers.iter().enumerate() {
        writeln!(f, "  [{index}]:")?;
        writeln!(f, "    listenPaths: {}", quoted_list(&server.listen_paths))?;
        let addresses: Vec<String> = server
            .listen_addresses
            .iter()
            .map(|address| format!("{address:?}"))
            .collect();
        writeln!(f, "    listenAddresses: [{}]", addresses.join(", "))?;
        auth::write_server(f, server)?;
        writeln!(f, "    stopGracefully: {}", server.stop_gracefully)?;
        match server.maximum_received_message_size_bytes {
            Some(bytes) => writeln!(f, "    maximumReceivedMessageSizeBytes: {bytes}")?,
            None => writeln!(f, "    maximumReceivedMessageSizeBytes: default (4 MiB)")?,
        }
        write_transport(f, server)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::GrpcServerConfig;
    use crate::config::test_support::{
        assert_invalid_fields, assert_mentions, error_of, load_text, load_with, with_server,
        MINIMAL,
    };
    use crate::config::ConfigError;

    /// Leaving a field out must mean protobuf's default, as upstream does.
    #[test]
    fn missing_fields_take_protobuf_defaults() {
        let config = load_with("").expect("minimal config decodes");
        assert_eq!(config.build_directory_path, PathBuf::from("/worker/build"));
        assert_eq!(
            config.grpc_servers,
            vec![GrpcServerConfig {
                listen_paths: vec![PathBuf::from("/worker/runner")],
                ..GrpcServerConfig::default()
            }]
        );
        assert!(config.readiness_checking_pathnames.is_empty());
        assert_eq!(config.listen_path_mode, None);
    }

    /// listenPathMode is what guards the socket, so a value that is not a
    /// mode must stop startup rather than be read as something else.
    #[test]
    fn listen_path_mode_is_an_octal_string_or_a_number() {
        for (text, mode) in [
            ("'0660'", 0o660),
            ("'600'", 0o600),
            ("'0o640'", 0o640),
            ("432", 0o660),
            ("std.parseOctal('0600')", 0o600),
        ] {
            let config = load_with(&format!("listenPathMode: {text}")).unwrap();
            assert_eq!(config.listen_path_mode, Some(mode), "{text}");
            assert!(config
                .to_string()
                .contains(&format!("listenPathMode: '{mode:04o}'")));
        }
        let snake = load_with("listen_path_mode: '0660'").unwrap();
        assert_eq!(snake.listen_path_mode, Some(0o660));
        for (text, expected) in [
            ("'0668'", "not an octal mode"),
            ("'rw-rw----'", "not an octal mode"),
            ("'4755'", "bits outside 0o777"),
            ("-1", "out of range"),
            ("true", "expected"),
        ] {
            let message = error_of(&format!("{{ {MINIMAL}, listenPathMode: {text} }}"));
            assert_mentions(&message, &["listenPathMode", expected]);
        }
    }

    /// Wrong types name the field they are in.
    #[test]
    fn bad_values_name_their_path() {
        assert_invalid_fields(&[
            (
                "buildDirectoryPath: 5",
                "buildDirectoryPath",
                "expected a string",
            ),
            (
                "readinessCheckingPathnames: [null]",
                "readinessCheckingPathnames[0]",
                "null",
            ),
        ]);
    }

    /// Upstream fields the runner cannot honour fail loudly, naming the key.
    #[test]
    fn unsupported_server_fields_are_refused() {
        let cases = [
            (
                "keepaliveEnforcementPolicy: { minTime: '10s' }",
                "grpcServers[0].keepaliveEnforcementPolicy",
            ),
            ("alts: {}", "grpcServers[0].alts"),
            ("relays: []", "grpcServers[0].relays"),
        ];
        for (field, path) in cases {
            let text = with_server(&format!(
                "{{ listenPaths: ['/s'], authenticationPolicy: {{ allow: {{}} }}, {field} }}"
            ));
            let error = load_text(&text).expect_err(path);
            assert!(
                matches!(error, ConfigError::Unsupported { .. }),
                "{path}: {error:?}"
            );
            assert_mentions(
                &error.to_string(),
                &["runner.jsonnet", path, "not supported by rbe-runner"],
            );
        }
    }

    /// The policy is a oneof and required, as in bb_runner; the policies
    /// themselves are tested with their decoding (schema/auth.rs).
    #[test]
    fn the_authentication_policy_is_one_required_policy() {
        let cases = [
            (
                "{ jwt: {} }",
                "grpcServers[0].authenticationPolicy.jwt",
                "not supported",
            ),
            (
                "{ allow: {}, deny: 'x' }",
                "grpcServers[0].authenticationPolicy",
                "oneof",
            ),
            (
                "{}",
                "grpcServers[0].authenticationPolicy",
                "no policy is set",
            ),
            (
                "'allow'",
                "grpcServers[0].authenticationPolicy",
                "expected an object",
            ),
        ];
        for (policy, path, words) in cases {
            let text = with_server(&format!(
                "{{ listenPaths: ['/s'], authenticationPolicy: {policy} }}"
            ));
            assert_mentions(&error_of(&text), &["runner.jsonnet", path, words]);
        }
        let text = with_server("{ listenPaths: ['/s'] }");
        let error = load_text(&text).expect_err("policy is required");
        assert!(
            matches!(error, ConfigError::MissingField { .. }),
            "{error:?}"
        );
        assert_mentions(
            &error.to_string(),
            &["grpcServers[0].authenticationPolicy", "allow"],
        );
    }

    #[test]
    fn bad_server_values_name_their_path() {
        let cases = [
            (
                "listenAddresses: ['localhost']",
                "grpcServers[0].listenAddresses[0]",
                "host:port",
            ),
            (
                "listenAddresses: ['127.0.0.1:99999']",
                "grpcServers[0].listenAddresses[0]",
                "host:port",
            ),
            (
                "maximumReceivedMessageSizeBytes: -1",
                "grpcServers[0].maximumReceivedMessageSizeBytes",
                "negative",
            ),
            (
                "maximumReceivedMessageSizeBytes: '1e6'",
                "grpcServers[0].maximumReceivedMessageSizeBytes",
                "int64",
            ),
            (
                "maximumReceivedMessageSizeBytes: '99999999999999999999'",
                "grpcServers[0].maximumReceivedMessageSizeBytes",
                "out of range",
            ),
            (
                "stopGracefully: 'true'",
                "grpcServers[0].stopGracefully",
                "true or false",
            ),
        ];
        for (field, path, words) in cases {
            let text = with_server(&format!(
                "{{ listenPaths: ['/s'], authenticationPolicy: {{ allow: {{}} }}, {field} }}"
            ));
            assert_mentions(&error_of(&text), &["runner.jsonnet", path, words]);
        }
    }

    /// protobuf-JSON writes int64 as a string; both forms are accepted, and
    /// zero means the default.
    #[test]
    fn message_size_accepts_numbers_and_strings() {
        for (value, expected) in [
            ("1048576", Some(1 << 20)),
            ("'1048576'", Some(1 << 20)),
            ("0", None),
        ] {
            let text = with_server(&format!(
                "{{ listenPaths: ['/s'], authenticationPolicy: {{ allow: {{}} }}, maximumReceivedMessageSizeBytes: {value} }}"
            ));
            let config = load_text(&text).expect(value);
            assert_eq!(
                config.grpc_servers[0].maximum_received_message_size_bytes, expected,
                "{value}"
            );
        }
    }

    // Required fields -----------------------------------------------------

    #[test]
    fn build_directory_path_is_required() {
        for text in [
            "{ grpcServers: [{ listenPaths: ['/s'], authenticationPolicy: { allow: {} } }] }",
            "{ buildDirectoryPath: '', grpcServers: [{ listenPaths: ['/s'], authenticationPolicy: { allow: {} } }] }",
        ] {
            let error = load_text(text).expect_err(text);
            assert!(matches!(error, ConfigError::MissingField { .. }), "{error:?}");
            assert_mentions(&error.to_string(), &["runner.jsonnet", "buildDirectoryPath", "missing"]);
        }
    }

    /// A runner nobody can reach is a configuration mistake.
    #[test]
    fn at_least_one_listener_is_required() {
        for servers in [
            "[]",
            "[{ listenPaths: [], authenticationPolicy: { allow: {} } }]",
        ] {
            let error = load_text(&format!(
                "{{ buildDirectoryPath: '/b', grpcServers: {servers} }}"
            ))
            .expect_err(servers);
            assert!(
                matches!(error, ConfigError::MissingField { .. }),
                "{error:?}"
            );
            assert_mentions(
                &error.to_string(),
                &["grpcServers", "listenPaths", "listenAddresses"],
            );
        }
        let error = load_text("{ buildDirectoryPath: '/b' }").expect_err("no servers at all");
        assert_mentions(&error.to_string(), &["grpcServers", "no listener"]);
    }
}
