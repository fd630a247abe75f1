//! The `tlsClientCertificate` policy: the client's certificate must chain
//! to one of `clientCertificateAuthorities` at the current time, be usable
//! for client authentication, and pass `validationJmespathExpression`;
//! `metadataExtractionJmespathExpression` then gives the metadata. Both
//! expressions see `{dnsNames, emailAddresses, uris}` of the certificate.
//!
//! As in bb-storage, the TLS handshake only asks for a certificate and
//! verifies nothing: the verification happens here, per call, so that a
//! client with no certificate, an expired one or one of another CA is told
//! why with UNAUTHENTICATED instead of a failed handshake.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::{Map, Value};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::jmespath::{Expression, ExpressionConfig, ExpressionError};
use super::metadata::AuthenticationMetadata;

/// `tlsClientCertificate` as configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientCertificateConfig {
    /// `clientCertificateAuthorities`: PEM certificates.
    pub client_certificate_authorities: String,
    pub validation: ExpressionConfig,
    pub metadata_extraction: ExpressionConfig,
}

/// Why a `tlsClientCertificate` configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientCertificateConfigError {
    #[error("clientCertificateAuthorities: {0}")]
    Authorities(String),
    #[error("validationJmespathExpression: {0}")]
    Validation(ExpressionError),
    #[error("metadataExtractionJmespathExpression: {0}")]
    MetadataExtraction(ExpressionError),
}

/// The trust anchors of `clientCertificateAuthorities`: at least one
/// certificate, each usable as an anchor.
pub fn parse_authorities(pem: &str) -> Result<Vec<TrustAnchor<'static>>, String> {
    let mut anchors = Vec::new();
    for (index, certificate) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let certificate =
            certificate.map_err(|err| format!("certificate {index} is not valid PEM: {err}"))?;
        let anchor = webpki::anchor_from_trusted_cert(&certificate)
            .map_err(|err| format!("certificate {index} cannot be a trust anchor: {err:?}"))?;
        anchors.push(anchor.to_owned());
    }
    if anchors.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(anchors)
}

/// The policy, ready to verify clients.
#[derive(Debug)]
pub struct ClientCertificatePolicy {
    authorities: Vec<TrustAnchor<'static>>,
    validation: Expression,
    metadata_extraction: Expression,
}

impl ClientCertificatePolicy {
    pub fn start(config: &ClientCertificateConfig) -> Result<Self, ClientCertificateConfigError> {
        Ok(ClientCertificatePolicy {
            authorities: parse_authorities(&config.client_certificate_authorities)
                .map_err(ClientCertificateConfigError::Authorities)?,
            validation: Expression::start(&config.validation)
                .map_err(ClientCertificateConfigError::Validation)?,
            metadata_extraction: Expression::start(&config.metadata_extraction)
                .map_err(ClientCertificateConfigError::MetadataExtraction)?,
        })
    }

    /// Authenticates the client that presented `chain` (leaf first, DER,
    /// as the handshake received it) at time `now`; the error says why not.
    pub fn authenticate(
        &self,
        chain: &[Vec<u8>],
        now: UnixTime,
    ) -> Result<AuthenticationMetadata, String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(
                "the client presented no TLS client certificate (or the connection is not TLS)"
                    .to_owned(),
            );
        };
        let (_, parsed) = X509Certificate::from_der(leaf)
            .map_err(|err| format!("cannot parse the TLS client certificate: {err}"))?;
        self.verify(leaf, intermediates, now, &parsed)?;
        let claims = claims(&parsed);
        match self.validation.search(claims.clone()) {
            Ok(Value::Bool(true)) => {}
            Ok(_) => {
                return Err(format!(
                    "the TLS client certificate's claims {} fail validationJmespathExpression {:?}",
                    Value::Object(claims),
                    self.validation.text()
                ))
            }
            Err(err) => {
                return Err(format!(
                    "cannot validate the TLS client certificate's claims: {err}"
                ))
            }
        }
        let metadata = self.metadata_extraction.search(claims).map_err(|err| {
            format!("cannot extract metadata from the TLS client certificate: {err}")
        })?;
        AuthenticationMetadata::from_extracted(metadata)
    }

    fn verify(
        &self,
        leaf: &[u8],
        intermediates: &[Vec<u8>],
        now: UnixTime,
        parsed: &X509Certificate<'_>,
    ) -> Result<(), String> {
        let leaf_der = CertificateDer::from(leaf);
        let end_entity = webpki::EndEntityCert::try_from(&leaf_der)
            .map_err(|err| format!("cannot parse the TLS client certificate: {err:?}"))?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.authorities,
                &intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| ())
            .map_err(|err| {
                format!(
                    "cannot validate the TLS client certificate {:?}: {}",
                    parsed.subject().to_string(),
                    explain(&err, parsed)
                )
            })
    }
}

/// A verification failure in words an operator can act on.
fn explain(error: &webpki::Error, parsed: &X509Certificate<'_>) -> String {
    match error {
        webpki::Error::CertExpired { .. } => {
            format!("it expired on {}", parsed.validity().not_after)
        }
        webpki::Error::CertNotValidYet { .. } => {
            format!("it is not valid before {}", parsed.validity().not_before)
        }
        webpki::Error::UnknownIssuer => {
            "it is not issued by any of clientCertificateAuthorities".to_owned()
        }
        #[allow(deprecated)]
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            "its extended key usage does not allow client authentication".to_owned()
        }
        other => format!("{other:?}"),
    }
}

/// The certificate's claims as the expressions see them: the subject
/// alternative names by kind, empty lists (not null) when there are none.
pub fn claims(certificate: &X509Certificate<'_>) -> Map<String, Value> {
    let mut dns_names = Vec::new();
    let mut email_addresses = Vec::new();
    let mut uris = Vec::new();
    if let Ok(Some(names)) = certificate.subject_alternative_name() {
        for name in &names.value.general_names {
            match name {
                GeneralName::DNSName(name) => dns_names.push(Value::from(*name)),
                GeneralName::RFC822Name(address) => email_addresses.push(Value::from(*address)),
                GeneralName::URI(uri) => uris.push(Value::from(*uri)),
                _ => {}
            }
        }
    }
    let mut claims = Map::new();
    claims.insert("dnsNames".into(), Value::Array(dns_names));
    claims.insert("emailAddresses".into(), Value::Array(email_addresses));
    claims.insert("uris".into(), Value::Array(uris));
    claims
}

/// The subject of a DER certificate, for logs; `None` if it does not parse.
pub fn subject(der: &[u8]) -> Option<String> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, certificate)| certificate.subject().to_string())
}
