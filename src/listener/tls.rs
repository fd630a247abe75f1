//! TLS on a listener, with Buildbarn's semantics (bb-storage
//! `pkg/util/tls.go`): TLS 1.2 and 1.3; the TLS 1.2 cipher suites the
//! configuration names; a key pair given inline or read from files that
//! are re-read every `refreshInterval`, so that a certificate replaced on
//! disk is served to new connections without a restart (a reload that
//! fails keeps the previous pair, and says so in the log).
//!
//! Client certificates are *requested*, not required, and every chain a
//! client presents is accepted here, as Go's `tls.RequestClientCert` does:
//! a client without one, with one from another CA or an expired one still
//! completes the handshake. Whether its calls are allowed is the
//! authentication policy's decision, made per call from the chain this
//! layer puts into the request's [`ConnectionPeer`]; a refusal there is an
//! UNAUTHENTICATED status the client can read, where a failed handshake
//! would only be a closed connection. The handshake itself still proves
//! that the client holds the key of the certificate it sent.
//!
//! [`ConnectionPeer`]: super::peer::ConnectionPeer

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::TlsAcceptor;

use crate::config::{KeyPairSource, TlsServerConfig};

/// Errors setting up a TLS listener: each names what it read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    KeyPair(String),
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// `certificate_usage` of the served certificates' metrics.
pub const SERVER_USAGE: &str = "server";

/// The validity of the certificates a runner serves, per DNS name, as of
/// their last successful load: what Buildbarn's certificate expiry metrics
/// report. Series are never removed, as in Buildbarn.
#[derive(Clone, Default)]
pub struct ServedCertificates {
    dates: Arc<Mutex<BTreeMap<(String, &'static str), CertificateDates>>>,
}

/// A certificate's `notBefore` and `notAfter`, in seconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertificateDates {
    pub not_before: i64,
    pub not_after: i64,
}

impl ServedCertificates {
    fn record(&self, leaf: &LeafFacts, usage: &'static str) {
        let mut dates = self.dates.lock().unwrap_or_else(|e| e.into_inner());
        for name in &leaf.dns_names {
            dates.insert((name.clone(), usage), leaf.dates);
        }
    }

    /// Every `(dns_name, certificate_usage)` with its dates.
    pub fn snapshot(&self) -> Vec<(String, &'static str, CertificateDates)> {
        let dates = self.dates.lock().unwrap_or_else(|e| e.into_inner());
        dates
            .iter()
            .map(|((name, usage), dates)| (name.clone(), *usage, *dates))
            .collect()
    }
}

/// What the metrics need from a leaf certificate.
struct LeafFacts {
    dns_names: Vec<String>,
    dates: CertificateDates,
}

fn leaf_facts(der: &[u8]) -> Result<LeafFacts, String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| format!("the certificate cannot be parsed: {err}"))?;
    let validity = certificate.validity();
    let mut dns_names = Vec::new();
    if let Ok(Some(names)) = certificate.subject_alternative_name() {
        for name in &names.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(name) = name {
                dns_names.push((*name).to_owned());
            }
        }
    }
    Ok(LeafFacts {
        dns_names,
        dates: CertificateDates {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        },
    })
}

/// Parses a PEM certificate chain and private key into a key pair
/// rustls serves; the key must match the leaf certificate.
fn parse_key_pair(
    certificate_pem: &[u8],
    private_key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, LeafFacts), String> {
    let chain = CertificateDer::pem_slice_iter(certificate_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("the certificate is not valid PEM: {err}"))?;
    let Some(leaf) = chain.first() else {
        return Err("the certificate PEM holds no CERTIFICATE block".to_owned());
    };
    let facts = leaf_facts(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(private_key_pem)
        .map_err(|err| format!("the private key is not valid PEM: {err}"))?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|err| format!("the private key cannot be used with the certificate: {err}"))?;
    Ok((key, facts))
}

/// The key pair a server presents, replaced in place when its files
/// change.
struct ServerKeyPair {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ServerKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKeyPair")
    }
}

impl ResolvesServerCert for ServerKeyPair {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The key pair files, and what was last loaded from them.
struct KeyPairFiles {
    certificate_path: PathBuf,
    private_key_path: PathBuf,
    loaded: Option<(Vec<u8>, Vec<u8>)>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

impl KeyPairFiles {
    /// The key pair in the files, or `None` when they have not changed
    /// since the last load.
    fn load(
        &mut self,
        provider: &CryptoProvider,
    ) -> Result<Option<(CertifiedKey, LeafFacts)>, TlsError> {
        let certificate = read("the certificate file", &self.certificate_path)?;
        let private_key = read("the private key file", &self.private_key_path)?;
        if self.loaded.as_ref() == Some(&(certificate.clone(), private_key.clone())) {
            return Ok(None);
        }
        let parsed = parse_key_pair(&certificate, &private_key, provider).map_err(|err| {
            TlsError::KeyPair(format!(
                "{} and {}: {err}",
                self.certificate_path.display(),
                self.private_key_path.display()
            ))
        })?;
        self.loaded = Some((certificate, private_key));
        Ok(Some(parsed))
    }
}

/// Re-reads `files` every `interval` for as long as `key_pair` is in use
/// (the task ends once every listener serving it is gone).
fn refresh_periodically(
    key_pair: Weak<ServerKeyPair>,
    mut files: KeyPairFiles,
    interval: Duration,
    provider: Arc<CryptoProvider>,
    served: ServedCertificates,
) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(key_pair) = key_pair.upgrade() else {
                return;
            };
            // Reading two small files: not worth a blocking thread.
            match files.load(&provider) {
                Ok(None) => {}
                Ok(Some((key, facts))) => {
                    *key_pair.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                    served.record(&facts, SERVER_USAGE);
                    tracing::info!(
                        certificate = %files.certificate_path.display(),
                        "TLS key pair reloaded; new connections are served with it"
                    );
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot reload the TLS key pair; keeping the one loaded before");
                }
            }
        }
    });
}

/// Accepts whatever certificate chain a client presents (see the module
/// comment), hinting at `hint_subjects` as the acceptable issuers.
#[derive(Debug)]
struct RequestClientCertificate {
    hint_subjects: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RequestClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hint_subjects
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The subjects of the CA certificates in `pem`, to hint at in the
/// certificate request; certificates that do not parse are skipped (the
/// authentication policy reports them).
pub fn hint_subjects_from_pem(pem: &[u8]) -> Vec<DistinguishedName> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .filter_map(|der| {
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .map(|(_, certificate)| {
                    DistinguishedName::from(certificate.subject().as_raw().to_vec())
                })
        })
        .collect()
}

/// The crypto provider, with the TLS 1.2 suites `allowed` (all when
/// `None`; all TLS 1.3 ones always): the listeners' and the trace
/// exporter's.
pub(crate) fn crypto_provider(allowed: Option<&[rustls::CipherSuite]>) -> CryptoProvider {
    // ring, for a build without cmake or Go; its only lack, post-quantum
    // key exchange, is what rustls deprecates it for.
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(allowed) = allowed {
        provider.cipher_suites.retain(|suite| match suite {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => allowed.contains(&suite.suite()),
        });
    }
    provider
}

/// Builds the TLS side of a listener from `config`: loads the key pair
/// (a failure stops startup), records its dates in `served`, and starts
/// reloading it when it comes from files. `alpn` is what the listener
/// speaks (`h2` for gRPC); `hint_subjects` the CA names offered in the
/// certificate request.
pub fn acceptor(
    config: &TlsServerConfig,
    alpn: &[&[u8]],
    hint_subjects: Vec<DistinguishedName>,
    served: &ServedCertificates,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(crypto_provider(config.tls12_cipher_suites.as_deref()));
    let (key, facts, files) = match &config.server_key_pair {
        KeyPairSource::Inline {
            certificate,
            private_key,
        } => {
            let (key, facts) =
                parse_key_pair(certificate.as_bytes(), private_key.as_bytes(), &provider)
                    .map_err(|err| TlsError::KeyPair(format!("serverKeyPair.inline: {err}")))?;
            (key, facts, None)
        }
        KeyPairSource::Files {
            certificate_path,
            private_key_path,
            refresh_interval,
        } => {
            let mut files = KeyPairFiles {
                certificate_path: certificate_path.clone(),
                private_key_path: private_key_path.clone(),
                loaded: None,
            };
            // Nothing was loaded before: a pair is always returned.
            let (key, facts) = files.load(&provider)?.ok_or_else(|| {
                TlsError::KeyPair("serverKeyPair.files: nothing loaded".to_owned())
            })?;
            (key, facts, Some((files, *refresh_interval)))
        }
    };
    served.record(&facts, SERVER_USAGE);
    let key_pair = Arc::new(ServerKeyPair {
        current: RwLock::new(Arc::new(key)),
    });
    if let Some((files, interval)) = files {
        refresh_periodically(
            Arc::downgrade(&key_pair),
            files,
            interval,
            provider.clone(),
            served.clone(),
        );
    }
    let verifier = Arc::new(RequestClientCertificate {
        hint_subjects,
        algorithms: provider.signature_verification_algorithms,
    });
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = if provider
        .cipher_suites
        .iter()
        .any(|suite| matches!(suite, rustls::SupportedCipherSuite::Tls12(_)))
    {
        vec![&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        // Only TLS 1.3 names were given: as in Go, no TLS 1.2 suite is
        // left.
        vec![&rustls::version::TLS13]
    };
    let mut server_config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(key_pair);
    server_config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(server_config)))
}

/// The chain the client presented in the completed handshake, leaf
/// first; empty when it sent none.
pub fn client_certificates<S>(stream: &tokio_rustls::server::TlsStream<S>) -> Arc<[Vec<u8>]> {
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|certificate| certificate.to_vec())
        .collect()
}
