//! `tls` of a `grpcServers` or `httpServers` entry (bb-storage's
//! `tls.ServerConfiguration`): the server's key pair, inline or read from
//! files that are re-read every `refreshInterval`, and the TLS 1.2 cipher
//! suites by their Go names.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rustls::CipherSuite;

use crate::config::duration::format_duration;
use crate::config::protojson::{child_path, optional, repeated, Decoded, Field, FieldError};

/// A listener's TLS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsServerConfig {
    /// `serverKeyPair`: the certificate chain and private key served.
    pub server_key_pair: KeyPairSource,
    /// `cipherSuites` as written, for `check-config`.
    pub cipher_suite_names: Vec<String>,
    /// The TLS 1.2 suites `cipherSuites` allows; `None` when it is empty
    /// (every suite the TLS library offers). TLS 1.3 names are accepted
    /// and left out: as in Go, TLS 1.3 suites are not configurable.
    pub tls12_cipher_suites: Option<Vec<CipherSuite>>,
}

/// `tls` of a gRPC client (bb-storage's `tls.ClientConfiguration`), as
/// `global.tracing`'s exporter uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsClientConfig {
    /// `clientKeyPair`: presented to the server when set (mutual TLS);
    /// files are read once, at startup.
    pub client_key_pair: Option<KeyPairSource>,
    /// `serverCertificateAuthorities`: PEM CAs the server's certificate
    /// must chain to.
    pub server_certificate_authorities: String,
    /// `serverName`: the name checked in the server's certificate; the
    /// address's host when empty.
    pub server_name: String,
    /// The TLS 1.2 suites `cipherSuites` allows; `None`: all.
    pub tls12_cipher_suites: Option<Vec<CipherSuite>>,
}

/// Where the key pair comes from (`X509KeyPair`'s oneof).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyPairSource {
    /// `inline`: PEM text in the configuration.
    Inline {
        certificate: String,
        private_key: String,
    },
    /// `files`: PEM files, read at startup and every `refresh_interval`.
    Files {
        certificate_path: PathBuf,
        private_key_path: PathBuf,
        refresh_interval: Duration,
    },
}

/// Go's name of each cipher suite (`crypto/tls.CipherSuites()`, and the
/// legacy CHACHA20 names without `_SHA256`) with its IANA value, and
/// whether rbe-runner's TLS library implements it. Go's insecure suites
/// are not here: Buildbarn refuses them too.
const GO_CIPHER_SUITES: &[(&str, CipherSuite, Support)] = &[
    (
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        Support::Tls13,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        Support::Tls13,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        Support::Tls13,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        Support::Tls12,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        Support::Tls12,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        Support::Tls12,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        Support::Tls12,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        Support::Tls12,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        Support::Tls12,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        Support::Tls12,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        Support::Tls12,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
        Support::None,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
        Support::None,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
        Support::None,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
        Support::None,
    ),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Support {
    Tls13,
    Tls12,
    /// A Go suite (CBC mode) that rustls does not implement.
    None,
}

/// Decodes a `tls` message at `field`.
pub(super) fn decode_tls_server(field: Field) -> Decoded<TlsServerConfig> {
    let mut message = field.message()?;
    let tls_path = message.path.clone();
    let cipher_suite_names = repeated(message.take("cipher_suites")?, Field::string)?;
    let key_pair = message.take("server_key_pair")?;
    message.finish()?;
    let tls12_cipher_suites =
        resolve_cipher_suites(&child_path(&tls_path, "cipherSuites"), &cipher_suite_names)?;
    let Some(key_pair) = key_pair else {
        return Err(FieldError::missing(
            &child_path(&tls_path, "serverKeyPair"),
            "a TLS server needs a key pair: `{ inline: { certificate, privateKey } }` or \
             `{ files: { certificatePath, privateKeyPath, refreshInterval } }`",
        ));
    };
    Ok(TlsServerConfig {
        server_key_pair: decode_key_pair(key_pair)?,
        cipher_suite_names,
        tls12_cipher_suites,
    })
}

/// Decodes a client's `tls` message at `field`.
pub(super) fn decode_tls_client(field: Field) -> Decoded<TlsClientConfig> {
    let mut message = field.message()?;
    let tls_path = message.path.clone();
    let cipher_suite_names = repeated(message.take("cipher_suites")?, Field::string)?;
    let client_key_pair = message.take("client_key_pair")?;
    let server_certificate_authorities = optional(
        message.take("server_certificate_authorities")?,
        Field::string,
    )?;
    let server_name = optional(message.take("server_name")?, Field::string)?;
    message.finish()?;
    if server_certificate_authorities.trim().is_empty() {
        return Err(FieldError::missing(
            &child_path(&tls_path, "serverCertificateAuthorities"),
            "rbe-runner does not read the system's CAs: give the PEM of the CA that signed \
             the server's certificate (e.g. importstr 'ca.pem')",
        ));
    }
    Ok(TlsClientConfig {
        client_key_pair: client_key_pair.map(decode_key_pair).transpose()?,
        server_certificate_authorities,
        server_name,
        tls12_cipher_suites: resolve_cipher_suites(
            &child_path(&tls_path, "cipherSuites"),
            &cipher_suite_names,
        )?,
    })
}

/// The TLS 1.2 suites named in `names` (at `path`); an unknown name, or one
/// rustls does not implement, is refused naming it.
fn resolve_cipher_suites(path: &str, names: &[String]) -> Decoded<Option<Vec<CipherSuite>>> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut tls12 = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let entry_path = format!("{path}[{index}]");
        match GO_CIPHER_SUITES.iter().find(|(go, _, _)| go == name) {
            Some((_, _, Support::Tls13)) => {}
            Some((_, suite, Support::Tls12)) => {
                if !tls12.contains(suite) {
                    tls12.push(*suite);
                }
            }
            Some((_, _, Support::None)) => {
                return Err(FieldError::unsupported(
                    &entry_path,
                    format!(
                        "cipher suite {name:?} (CBC mode) is not implemented by rbe-runner's TLS \
                         library; use an AES-GCM or CHACHA20-POLY1305 suite"
                    ),
                ))
            }
            None => {
                return Err(FieldError::invalid(
                    &entry_path,
                    format!(
                        "{name:?} is not a cipher suite name of Go's crypto/tls (e.g. \
                         \"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\")"
                    ),
                ))
            }
        }
    }
    Ok(Some(tls12))
}

fn decode_key_pair(field: Field) -> Decoded<KeyPairSource> {
    let mut message = field.message()?;
    let path = message.path.clone();
    let inline = message.take("inline")?;
    let files = message.take("files")?;
    message.finish()?;
    match (inline, files) {
        (Some(_), Some(_)) => Err(FieldError::invalid(
            &path,
            "both `inline` and `files` are set, but it is a oneof: set exactly one",
        )),
        (None, None) => Err(FieldError::missing(
            &path,
            "set `inline: { certificate, privateKey }` or `files: { certificatePath, \
             privateKeyPath, refreshInterval }`",
        )),
        (Some(inline), None) => {
            let mut message = inline.message()?;
            let path = message.path.clone();
            let certificate = optional(message.take("certificate")?, Field::string)?;
            let private_key = optional(message.take("private_key")?, Field::string)?;
            message.finish()?;
            for (name, value) in [("certificate", &certificate), ("privateKey", &private_key)] {
                if value.trim().is_empty() {
                    return Err(FieldError::missing(
                        &child_path(&path, name),
                        "PEM text is required",
                    ));
                }
            }
            Ok(KeyPairSource::Inline {
                certificate,
                private_key,
            })
        }
        (None, Some(files)) => {
            let mut message = files.message()?;
            let path = message.path.clone();
            let certificate_path = optional(message.take("certificate_path")?, Field::string)?;
            let private_key_path = optional(message.take("private_key_path")?, Field::string)?;
            let refresh_interval = message.take("refresh_interval")?;
            message.finish()?;
            for (name, value) in [
                ("certificatePath", &certificate_path),
                ("privateKeyPath", &private_key_path),
            ] {
                if value.is_empty() {
                    return Err(FieldError::missing(
                        &child_path(&path, name),
                        "the path of a PEM file is required",
                    ));
                }
            }
            let interval_path = child_path(&path, "refreshInterval");
            let refresh_interval =
                match refresh_interval {
                    Some(field) => field.duration()?,
                    None => return Err(FieldError::missing(
                        &interval_path,
                        "required with `files`, as in Buildbarn: how often the files are re-read \
                         (e.g. '3600s')",
                    )),
                };
            if refresh_interval.is_zero() {
                return Err(FieldError::invalid(
                    &interval_path,
                    "must be more than zero",
                ));
            }
            Ok(KeyPairSource::Files {
                certificate_path: PathBuf::from(certificate_path),
                private_key_path: PathBuf::from(private_key_path),
                refresh_interval,
            })
        }
    }
}

impl fmt::Display for TlsServerConfig {
    /// One line, as `check-config` prints a listener's TLS settings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server_key_pair {
            KeyPairSource::Inline { .. } => write!(f, "{{ serverKeyPair: inline")?,
            KeyPairSource::Files {
                certificate_path,
                private_key_path,
                refresh_interval,
            } => write!(
                f,
                "{{ serverKeyPair: files {:?} {:?} every {}",
                certificate_path.display().to_string(),
                private_key_path.display().to_string(),
                format_duration(*refresh_interval)
            )?,
        }
        if self.cipher_suite_names.is_empty() {
            write!(f, ", cipherSuites: default }}")
        } else {
            write!(
                f,
                ", cipherSuites: [{}] }}",
                self.cipher_suite_names.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{assert_mentions, error_of, load_text, with_server};

    fn server_with_tls(tls: &str) -> String {
        with_server(&format!(
            "{{ listenAddresses: ['127.0.0.1:0'], authenticationPolicy: {{ allow: {{}} }}, tls: {tls} }}"
        ))
    }

    const INLINE: &str = "serverKeyPair: { inline: { certificate: 'C', privateKey: 'K' } }";

    #[test]
    fn cipher_suites_take_go_names() {
        // Why: Buildbarn configurations list suites by Go's names; TLS 1.3
        // names are accepted and ignored as Go ignores them, legacy
        // CHACHA20 names mean the same suite.
        let text = server_with_tls(&format!(
            "{{ {INLINE}, cipherSuites: ['TLS_AES_128_GCM_SHA256', \
             'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256', 'TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305', \
             'TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256'] }}"
        ));
        let config = load_text(&text).unwrap();
        let tls = config.grpc_servers[0].tls.clone().unwrap();
        assert_eq!(
            tls.tls12_cipher_suites,
            Some(vec![
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            ])
        );
    }

    #[test]
    fn cipher_suites_without_a_counterpart_are_refused_by_name() {
        for (name, words) in [
            ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "not implemented"),
            ("TLS_RSA_WITH_RC4_128_SHA", "not a cipher suite name"),
            ("AES128", "not a cipher suite name"),
        ] {
            let text = server_with_tls(&format!(
                "{{ {INLINE}, cipherSuites: ['TLS_AES_128_GCM_SHA256', '{name}'] }}"
            ));
            assert_mentions(
                &error_of(&text),
                &["grpcServers[0].tls.cipherSuites[1]", name, words],
            );
        }
    }

    #[test]
    fn key_pair_shapes_are_checked() {
        for (tls, path, words) in [
            ("{}", "grpcServers[0].tls.serverKeyPair", "key pair"),
            (
                "{ serverKeyPair: { files: { certificatePath: '/c', privateKeyPath: '/k' } } }",
                "grpcServers[0].tls.serverKeyPair.files.refreshInterval",
                "required",
            ),
            (
                "{ serverKeyPair: { files: { certificatePath: '/c', privateKeyPath: '/k', refreshInterval: '0s' } } }",
                "grpcServers[0].tls.serverKeyPair.files.refreshInterval",
                "more than zero",
            ),
            (
                "{ serverKeyPair: { inline: { certificate: 'C' } } }",
                "grpcServers[0].tls.serverKeyPair.inline.privateKey",
                "PEM",
            ),
            (
                "{ serverKeyPair: {} }",
                "grpcServers[0].tls.serverKeyPair",
                "inline",
            ),
        ] {
            assert_mentions(&error_of(&server_with_tls(tls)), &[path, words]);
        }
        let text = server_with_tls(
            "{ serverKeyPair: { files: { certificatePath: '/c', privateKeyPath: '/k', refreshInterval: '60s' } } }",
        );
        let tls = load_text(&text).unwrap().grpc_servers[0]
            .tls
            .clone()
            .unwrap();
        assert_eq!(
            tls.server_key_pair,
            KeyPairSource::Files {
                certificate_path: "/c".into(),
                private_key_path: "/k".into(),
                refresh_interval: Duration::from_secs(60),
            }
        );
    }
}
