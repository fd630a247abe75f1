//! Buildbarn's `AuthenticationPolicy`: a tree of policies that, for the
//! connection a call arrived on, yields authentication metadata or
//! refuses with a reason (answered as UNAUTHENTICATED).

use std::fmt;

use rustls_pki_types::UnixTime;
use serde_json::{Map, Value};

use super::client_certificate::{
    ClientCertificateConfig, ClientCertificateConfigError, ClientCertificatePolicy,
};
use super::jmespath::{Expression, ExpressionConfig, ExpressionError};
use super::metadata::{tracing_attributes, AuthenticationMetadata};
use crate::listener::peer::{ConnectionPeer, PeerTransport};

/// The key of `allow`'s tracing attributes in its metadata map.
pub const TRACING_ATTRIBUTES: &str = "tracingAttributes";

/// `authenticationPolicy` as configured.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyConfig {
    /// `allow`: every call, with this metadata (`public`, `private`, and
    /// `tracingAttributes` for the call's span).
    Allow(Map<String, Value>),
    /// `deny`: no call; the string is the message.
    Deny(String),
    /// `any`: the first policy that accepts.
    Any(Vec<PolicyConfig>),
    /// `all`: every policy must accept; metadata merged first to last.
    All(Vec<PolicyConfig>),
    /// `peerCredentialsJmespathExpression`: over `{uid, groups}`.
    PeerCredentials(ExpressionConfig),
    /// `tlsClientCertificate`.
    TlsClientCertificate(Box<ClientCertificateConfig>),
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig::Allow(Map::new())
    }
}

impl PolicyConfig {
    /// Whether some branch reads the peer's Unix credentials, which
    /// Buildbarn refuses together with TLS on one server.
    pub fn uses_peer_credentials(&self) -> bool {
        match self {
            PolicyConfig::PeerCredentials(_) => true,
            PolicyConfig::Any(policies) | PolicyConfig::All(policies) => {
                policies.iter().any(PolicyConfig::uses_peer_credentials)
            }
            _ => false,
        }
    }

    /// Whether some branch asks for a TLS client certificate.
    pub fn uses_client_certificates(&self) -> bool {
        match self {
            PolicyConfig::TlsClientCertificate(_) => true,
            PolicyConfig::Any(policies) | PolicyConfig::All(policies) => {
                policies.iter().any(PolicyConfig::uses_client_certificates)
            }
            _ => false,
        }
    }

    /// The PEM of every `clientCertificateAuthorities` in the tree, whose
    /// subjects the TLS handshake names in its certificate request.
    pub fn client_certificate_authorities(&self) -> Vec<&str> {
        match self {
            PolicyConfig::TlsClientCertificate(config) => {
                vec![config.client_certificate_authorities.as_str()]
            }
            PolicyConfig::Any(policies) | PolicyConfig::All(policies) => policies
                .iter()
                .flat_map(PolicyConfig::client_certificate_authorities)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The tree, one policy a line, indented by `indent` spaces (for
    /// `check-config`).
    pub fn write_tree(&self, f: &mut fmt::Formatter<'_>, indent: usize) -> fmt::Result {
        let pad = " ".repeat(indent);
        match self {
            PolicyConfig::Allow(metadata) if metadata.is_empty() => writeln!(f, "{pad}allow: {{}}"),
            PolicyConfig::Allow(metadata) => {
                // Private metadata is not printed, as Buildbarn never logs it.
                let keys: Vec<&str> = metadata.keys().map(String::as_str).collect();
                match metadata.get("public") {
                    Some(public) => {
                        writeln!(f, "{pad}allow: {{ public: {public}, keys: {keys:?} }}")
                    }
                    None => writeln!(f, "{pad}allow: {{ keys: {keys:?} }}"),
                }
            }
            PolicyConfig::Deny(message) => writeln!(f, "{pad}deny: {message:?}"),
            PolicyConfig::Any(policies) | PolicyConfig::All(policies) => {
                let name = if matches!(self, PolicyConfig::Any(_)) {
                    "any"
                } else {
                    "all"
                };
                writeln!(f, "{pad}{name}:")?;
                for policy in policies {
                    policy.write_tree(f, indent + 2)?;
                }
                Ok(())
            }
            PolicyConfig::PeerCredentials(expression) => {
                writeln!(
                    f,
                    "{pad}peerCredentialsJmespathExpression: {}",
                    describe(expression)
                )
            }
            PolicyConfig::TlsClientCertificate(config) => {
                let authorities = super::client_certificate::parse_authorities(
                    &config.client_certificate_authorities,
                )
                .map_or(0, |anchors| anchors.len());
                writeln!(f, "{pad}tlsClientCertificate:")?;
                let noun = if authorities == 1 {
                    "certificate"
                } else {
                    "certificates"
                };
                writeln!(
                    f,
                    "{pad}  clientCertificateAuthorities: {authorities} {noun}"
                )?;
                writeln!(
                    f,
                    "{pad}  validationJmespathExpression: {}",
                    describe(&config.validation)
                )?;
                writeln!(
                    f,
                    "{pad}  metadataExtractionJmespathExpression: {}",
                    describe(&config.metadata_extraction)
                )
            }
        }
    }
}

/// An expression as `check-config` shows it: its text, files and vectors.
pub fn describe(expression: &ExpressionConfig) -> String {
    let mut text = format!("{:?}", expression.expression);
    if !expression.files.is_empty() {
        let keys: Vec<&str> = expression
            .files
            .iter()
            .map(|file| file.key.as_str())
            .collect();
        text.push_str(&format!(" (files {keys:?})"));
    }
    if !expression.test_vectors.is_empty() {
        text.push_str(&format!(
            " ({} test vectors pass)",
            expression.test_vectors.len()
        ));
    }
    text
}

/// Why a policy cannot be started; the path names the branch.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Expression {
        path: String,
        source: ExpressionError,
    },
    #[error("{path}: {source}")]
    ClientCertificate {
        path: String,
        source: ClientCertificateConfigError,
    },
}

/// A started policy.
#[derive(Debug)]
pub enum Policy {
    Allow(AuthenticationMetadata),
    Deny(String),
    Any(Vec<Policy>),
    All(Vec<Policy>),
    PeerCredentials(Expression),
    TlsClientCertificate(Box<ClientCertificatePolicy>),
}

impl Policy {
    /// Starts `config` (reading expressions' files); `path` is where the
    /// policy is in the configuration, for errors.
    pub fn start(config: &PolicyConfig, path: &str) -> Result<Policy, PolicyError> {
        Ok(match config {
            PolicyConfig::Allow(metadata) => {
                // `tracingAttributes` were checked when decoded.
                let mut fields = metadata.clone();
                let tracing = fields
                    .remove(TRACING_ATTRIBUTES)
                    .and_then(|value| tracing_attributes(&value).ok())
                    .unwrap_or_default();
                Policy::Allow(AuthenticationMetadata::from_fields(fields, tracing))
            }
            PolicyConfig::Deny(message) => Policy::Deny(message.clone()),
            PolicyConfig::Any(policies) => {
                Policy::Any(start_all(policies, &format!("{path}.any"))?)
            }
            PolicyConfig::All(policies) => {
                Policy::All(start_all(policies, &format!("{path}.all"))?)
            }
            PolicyConfig::PeerCredentials(expression) => {
                Policy::PeerCredentials(Expression::start(expression).map_err(|source| {
                    PolicyError::Expression {
                        path: format!("{path}.peerCredentialsJmespathExpression"),
                        source,
                    }
                })?)
            }
            PolicyConfig::TlsClientCertificate(config) => Policy::TlsClientCertificate(Box::new(
                ClientCertificatePolicy::start(config).map_err(|source| {
                    PolicyError::ClientCertificate {
                        path: format!("{path}.tlsClientCertificate"),
                        source,
                    }
                })?,
            )),
        })
    }

    /// Authenticates a call from `peer` (`None`: a request made in-process,
    /// which carries no connection) at time `now`.
    pub fn authenticate(
        &self,
        peer: Option<&ConnectionPeer>,
        now: UnixTime,
    ) -> Result<AuthenticationMetadata, String> {
        match self {
            Policy::Allow(metadata) => Ok(metadata.clone()),
            Policy::Deny(message) => Err(message.clone()),
            Policy::Any(policies) => {
                let mut reasons = Vec::new();
                for policy in policies {
                    match policy.authenticate(peer, now) {
                        Ok(metadata) => return Ok(metadata),
                        Err(reason) => reasons.push(reason),
                    }
                }
                if reasons.is_empty() {
                    return Err("no policy in `any` accepts calls".to_owned());
                }
                Err(reasons.join("; "))
            }
            Policy::All(policies) => {
                let mut merged = AuthenticationMetadata::default();
                for policy in policies {
                    merged.merge(policy.authenticate(peer, now)?);
                }
                Ok(merged)
            }
            Policy::PeerCredentials(expression) => peer_credentials(expression, peer),
            Policy::TlsClientCertificate(policy) => {
                let Some(peer) = peer else {
                    return Err("the call carries no connection".to_owned());
                };
                policy.authenticate(&peer.client_certificates, now)
            }
        }
    }
}

fn start_all(policies: &[PolicyConfig], path: &str) -> Result<Vec<Policy>, PolicyError> {
    policies
        .iter()
        .enumerate()
        .map(|(index, policy)| Policy::start(policy, &format!("{path}.policies[{index}]")))
        .collect()
}

/// `{uid, groups}` of a Unix peer through the expression; `groups` holds
/// the peer's primary group, the one group SO_PEERCRED reports.
fn peer_credentials(
    expression: &Expression,
    peer: Option<&ConnectionPeer>,
) -> Result<AuthenticationMetadata, String> {
    let credentials = match peer.map(|peer| &peer.transport) {
        Some(PeerTransport::Unix {
            credentials: Some(credentials),
        }) => credentials,
        Some(PeerTransport::Unix { credentials: None }) => {
            return Err("the peer credentials of the UNIX socket connection are unknown".to_owned())
        }
        _ => return Err("connection was not established over a UNIX socket".to_owned()),
    };
    let mut input = Map::new();
    input.insert("uid".into(), Value::from(credentials.uid));
    input.insert(
        "groups".into(),
        Value::Array(vec![Value::from(credentials.gid)]),
    );
    let metadata = expression
        .search(input)
        .map_err(|err| format!("cannot extract metadata from peer credentials: {err}"))?;
    AuthenticationMetadata::from_extracted(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::peer::PeerCredentials;
    use serde_json::json;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn unix(uid: u32, gid: u32) -> ConnectionPeer {
        ConnectionPeer {
            transport: PeerTransport::Unix {
                credentials: Some(PeerCredentials {
                    uid,
                    gid,
                    pid: Some(1),
                }),
            },
            client_certificates: Arc::from(Vec::new()),
        }
    }

    fn tcp() -> ConnectionPeer {
        ConnectionPeer {
            transport: PeerTransport::Tcp {
                address: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
            },
            client_certificates: Arc::from(Vec::new()),
        }
    }

    fn expression(text: &str) -> ExpressionConfig {
        ExpressionConfig {
            expression: text.into(),
            ..ExpressionConfig::default()
        }
    }

    fn started(config: PolicyConfig) -> Policy {
        Policy::start(&config, "authenticationPolicy").unwrap()
    }

    fn allow(metadata: Value) -> PolicyConfig {
        match metadata {
            Value::Object(fields) => PolicyConfig::Allow(fields),
            _ => unreachable!(),
        }
    }

    /// Why: the README's example depends on `{uid, groups}` reaching the
    /// expression exactly so.
    #[test]
    fn peer_credentials_become_metadata_through_the_expression() {
        let policy = started(PolicyConfig::PeerCredentials(expression(
            "{private: {uid: uid, groups: groups}}",
        )));
        let metadata = policy
            .authenticate(Some(&unix(65534, 65533)), UnixTime::now())
            .unwrap();
        assert_eq!(
            metadata.to_value(),
            json!({"private": {"uid": 65534, "groups": [65533]}})
        );
    }

    /// Why: a TCP client has no credentials to trust; Buildbarn refuses it
    /// with this reason.
    #[test]
    fn peer_credentials_refuse_tcp_connections() {
        let policy = started(PolicyConfig::PeerCredentials(expression("`{}`")));
        let reason = policy
            .authenticate(Some(&tcp()), UnixTime::now())
            .unwrap_err();
        assert!(
            reason.contains("not established over a UNIX socket"),
            "{reason}"
        );
        assert!(policy.authenticate(None, UnixTime::now()).is_err());
    }

    #[test]
    fn any_takes_the_first_that_accepts_and_joins_the_reasons_otherwise() {
        let policy = started(PolicyConfig::Any(vec![
            PolicyConfig::Deny("first says no".into()),
            PolicyConfig::PeerCredentials(expression("{public: {uid: uid}}")),
            allow(json!({"public": "second"})),
        ]));
        let metadata = policy
            .authenticate(Some(&unix(7, 7)), UnixTime::now())
            .unwrap();
        assert_eq!(metadata.to_value(), json!({"public": {"uid": 7}}));
        let reason = policy
            .authenticate(Some(&tcp()), UnixTime::now())
            .map(|metadata| metadata.to_value());
        assert_eq!(reason, Ok(json!({"public": "second"})));

        let refusing = started(PolicyConfig::Any(vec![
            PolicyConfig::Deny("first says no".into()),
            PolicyConfig::PeerCredentials(expression("`{}`")),
        ]));
        let reason = refusing
            .authenticate(Some(&tcp()), UnixTime::now())
            .unwrap_err();
        assert!(
            reason.contains("first says no") && reason.contains("UNIX socket"),
            "{reason}"
        );
    }

    #[test]
    fn all_needs_every_policy_and_merges_their_metadata() {
        let policy = started(PolicyConfig::All(vec![
            allow(json!({"public": {"team": "build", "site": "a"}})),
            PolicyConfig::PeerCredentials(expression("{public: {site: 'b'}, private: {uid: uid}}")),
        ]));
        let metadata = policy
            .authenticate(Some(&unix(5, 5)), UnixTime::now())
            .unwrap();
        assert_eq!(
            metadata.to_value(),
            json!({"public": {"team": "build", "site": "b"}, "private": {"uid": 5}})
        );
        let reason = policy
            .authenticate(Some(&tcp()), UnixTime::now())
            .unwrap_err();
        assert!(reason.contains("UNIX socket"), "{reason}");
    }

    #[test]
    fn deny_answers_its_message() {
        let policy = started(PolicyConfig::Deny("ask the build team".into()));
        assert_eq!(
            policy.authenticate(Some(&unix(0, 0)), UnixTime::now()),
            Err("ask the build team".to_owned())
        );
    }

    /// Why: the runner cannot use TLS with peer credentials on one server,
    /// so configuration checks must find the policy however deep it is.
    #[test]
    fn nested_policies_are_found() {
        let nested = PolicyConfig::Any(vec![PolicyConfig::All(vec![
            PolicyConfig::PeerCredentials(expression("`{}`")),
        ])]);
        assert!(nested.uses_peer_credentials());
        assert!(!nested.uses_client_certificates());
        assert!(!PolicyConfig::default().uses_peer_credentials());
    }
}
