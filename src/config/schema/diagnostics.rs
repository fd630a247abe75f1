//! `global.diagnosticsHttpServer` (bb-storage's `HTTPServerConfiguration`)
//! and the extension `logFormat`: how the runner is observed from outside.

use std::fmt;

use crate::config::protojson::{
    child_path, optional, repeated, Decoded, Field, FieldError, Message,
};

use super::serving::{check_authentication_policy, decode_listen_address};
use super::tls::{decode_tls_server, TlsServerConfig};

/// `global.diagnosticsHttpServer`: the HTTP server of `/metrics`,
/// `/-/healthy` and `/-/ready`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiagnosticsHttpServerConfig {
    /// `httpServers`: each server's `listenAddresses`, all served alike.
    pub http_servers: Vec<HttpServerConfig>,
    /// `enablePrometheus`: whether `/metrics` is served.
    pub enable_prometheus: bool,
    /// `enablePprof`: accepted, has no effect in rbe-runner.
    pub enable_pprof: bool,
    /// `enableActiveSpans`: whether `/active_spans` (the running actions'
    /// spans) is served.
    pub enable_active_spans: bool,
}

/// One `httpServers` entry (bb-storage's `http.ServerConfiguration`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpServerConfig {
    /// `listenAddresses`, `host:port`; `:9980` means every interface.
    pub listen_addresses: Vec<String>,
    /// `tls`: HTTPS on every address of the entry when set.
    pub tls: Option<TlsServerConfig>,
}

/// Extension `logFormat`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

pub(super) fn decode_diagnostics_http_server(
    mut message: Message,
) -> Decoded<DiagnosticsHttpServerConfig> {
    let http_servers = repeated(message.take("http_servers")?, decode_http_server)?;
    let enable_prometheus = optional(message.take("enable_prometheus")?, Field::bool)?;
    let enable_pprof = optional(message.take("enable_pprof")?, Field::bool)?;
    let enable_active_spans = optional(message.take("enable_active_spans")?, Field::bool)?;
    message.finish()?;
    Ok(DiagnosticsHttpServerConfig {
        http_servers,
        enable_prometheus,
        enable_pprof,
        enable_active_spans,
    })
}

fn decode_http_server(field: Field) -> Decoded<HttpServerConfig> {
    let mut message = field.message()?;
    let listen_addresses = repeated(message.take("listen_addresses")?, decode_listen_address)?;
    let authentication_policy = message.take("authentication_policy")?;
    let tls = message.take("tls")?.map(decode_tls_server).transpose()?;
    let server_path = message.path.clone();
    message.finish()?;
    match authentication_policy {
        Some(field) => check_authentication_policy(field.message()?)?,
        None => {
            return Err(FieldError::missing(
                &child_path(&server_path, "authenticationPolicy"),
                "Buildbarn requires one; rbe-runner accepts `authenticationPolicy: { allow: {} }`",
            ))
        }
    }
    Ok(HttpServerConfig {
        listen_addresses,
        tls,
    })
}

/// Takes the extension `logFormat` from the top-level `message`.
pub(super) fn decode_log_format(message: &mut Message) -> Decoded<LogFormat> {
    let Some(field) = message.take("log_format")? else {
        return Ok(LogFormat::Text);
    };
    let path = field.path.clone();
    match field.string()?.as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(FieldError::invalid(
            &path,
            format!("{other:?} is not a log format; use 'text' or 'json'"),
        )),
    }
}

/// `global.diagnosticsHttpServer` as `check-config` prints it.
pub(super) fn write_diagnostics_http_server(
    f: &mut fmt::Formatter<'_>,
    diagnostics: &Option<DiagnosticsHttpServerConfig>,
) -> fmt::Result {
    let Some(diagnostics) = diagnostics else {
        return writeln!(f, "  diagnosticsHttpServer: not set");
    };
    let addresses: Vec<String> = diagnostics
        .http_servers
        .iter()
        .flat_map(|server| server.listen_addresses.iter())
        .map(|address| format!("{address:?}"))
        .collect();
    // The addresses served with HTTPS, when any are.
    let https: Vec<String> = diagnostics
        .http_servers
        .iter()
        .filter(|server| server.tls.is_some())
        .flat_map(|server| server.listen_addresses.iter())
        .map(|address| format!("{address:?}"))
        .collect();
    let tls = if https.is_empty() {
        String::new()
    } else {
        format!(", tls: [{}]", https.join(", "))
    };
    writeln!(
        f,
        "  diagnosticsHttpServer: {{ listenAddresses: [{}], enablePrometheus: {}{tls} }}",
        addresses.join(", "),
        diagnostics.enable_prometheus
    )
}

/// `logFormat` as `check-config` prints it.
pub(super) fn write_log_format(f: &mut fmt::Formatter<'_>, format: LogFormat) -> fmt::Result {
    match format {
        LogFormat::Text => writeln!(f, "logFormat: text"),
        LogFormat::Json => writeln!(f, "logFormat: json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{assert_invalid_fields, assert_mentions, load_with};

    fn global(diagnostics: &str) -> String {
        format!("global: {{ diagnosticsHttpServer: {diagnostics} }}")
    }

    #[test]
    fn the_bb_deployments_shape_decodes() {
        // Why it matters: a drop-in deployment must get its scrape target
        // from the configuration it already has.
        let config = load_with(&global(
            "{ httpServers: [{ listenAddresses: [':9980', '127.0.0.1:9981'], \
               authenticationPolicy: { allow: {} } }], \
               enablePrometheus: true, enablePprof: true, enableActiveSpans: true }",
        ))
        .expect("decodes");
        assert_eq!(
            config.global.diagnostics_http_server,
            Some(DiagnosticsHttpServerConfig {
                http_servers: vec![HttpServerConfig {
                    listen_addresses: vec![":9980".into(), "127.0.0.1:9981".into()],
                    tls: None,
                }],
                enable_prometheus: true,
                enable_pprof: true,
                enable_active_spans: true,
            })
        );
        assert!(config.global.ignored_keys.is_empty());
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn policies_other_than_allow_are_refused_naming_the_field() {
        // Why it matters: a diagnostics port open to anyone must be a
        // decision the configuration states, as for gRPC servers.
        let server = |fields: &str| {
            global(&format!(
                "{{ httpServers: [{{ listenAddresses: [':9980'], {fields} }}] }}"
            ))
        };
        let cases = [
            (
                server("authenticationPolicy: { allow: {} }, tls: {}"),
                "global.diagnosticsHttpServer.httpServers[0].tls.serverKeyPair",
                "key pair",
            ),
            (
                server("authenticationPolicy: { deny: {} }"),
                "global.diagnosticsHttpServer.httpServers[0].authenticationPolicy.deny",
                "allow",
            ),
            (
                server(""),
                "global.diagnosticsHttpServer.httpServers[0].authenticationPolicy",
                "allow",
            ),
        ];
        for (text, path, words) in cases {
            let error = load_with(&text).expect_err(&text).to_string();
            assert_mentions(&error, &["runner.jsonnet", path, words]);
        }
        assert_invalid_fields(&[
            (
                &global("{ httpServers: [{ listenAddresses: ['9980'], authenticationPolicy: { allow: {} } }] }"),
                "global.diagnosticsHttpServer.httpServers[0].listenAddresses[0]",
                "host:port",
            ),
            ("logFormat: 'xml'", "logFormat", "'text' or 'json'"),
        ]);
    }

    #[test]
    fn json_logs_are_chosen_by_log_format() {
        let config = load_with("logFormat: 'json'").expect("decodes");
        assert_eq!(config.log_format, LogFormat::Json);
    }
}
