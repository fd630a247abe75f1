//! Who may call: `grpcServers[].authenticationPolicy` (Buildbarn's
//! `AuthenticationPolicy`) and rbe-runner's top-level `runAuthorizer` and
//! `eventsAuthorizer` (Buildbarn's `AuthorizerConfiguration` shape), with
//! Buildbarn's `jmespath.Expression` in either of its forms.
//!
//! Everything that can be checked without touching files is checked here,
//! so `check-config` refuses what startup would: expressions compile,
//! test vectors hold, certificate authorities parse. The types are those
//! of [`crate::auth`], which starts them.

use std::fmt;

use serde_json::{Map, Number, Value};

use crate::auth::authorizer::AuthorizerConfig;
use crate::auth::client_certificate::{parse_authorities, ClientCertificateConfig};
use crate::auth::gate::AuthorizersConfig;
use crate::auth::jmespath::{self, ExpressionConfig, ExpressionError, ExpressionFile, TestVector};
use crate::auth::policy::PolicyConfig;
use crate::config::jsonnet::Json;
use crate::config::protojson::{
    child_path, lower_camel_case, repeated, Decoded, Field, FieldError, Message,
};
use crate::config::GrpcServerConfig;

/// The policies of Buildbarn's `AuthenticationPolicy` oneof, by proto name.
const POLICIES: &[&str] = &[
    "allow",
    "any",
    "all",
    "deny",
    "tls_client_certificate",
    "jwt",
    "peer_credentials_jmespath_expression",
    "remote",
];

/// `authenticationPolicy`: exactly one policy of the oneof.
pub(super) fn decode_policy(field: Field) -> Decoded<PolicyConfig> {
    let mut message = field.message()?;
    let path = message.path.clone();
    let mut set = Vec::new();
    for name in POLICIES {
        if let Some(field) = message.take(name)? {
            set.push((*name, field));
        }
    }
    message.finish()?;
    if set.len() > 1 {
        return Err(FieldError::invalid(
            &path,
            "more than one policy is set, but it is a oneof: set exactly one",
        ));
    }
    let Some((name, field)) = set.pop() else {
        return Err(FieldError::missing(
            &path,
            "no policy is set; use e.g. `{ allow: {} }` or `{ peerCredentialsJmespathExpression: ... }`",
        ));
    };
    match name {
        "allow" => decode_allow(field),
        "deny" => Ok(PolicyConfig::Deny(field.string()?)),
        "any" => Ok(PolicyConfig::Any(decode_policies(field)?)),
        "all" => Ok(PolicyConfig::All(decode_policies(field)?)),
        "peer_credentials_jmespath_expression" => {
            Ok(PolicyConfig::PeerCredentials(decode_expression(field)?))
        }
        "tls_client_certificate" => decode_client_certificate(field),
        "jwt" => Err(FieldError::unsupported(
            &field.path,
            "JWT authentication is not implemented; authenticate bb_worker by its peer credentials or a TLS client certificate",
        )),
        _ => Err(FieldError::unsupported(
            &field.path,
            "remote authentication services are not implemented",
        )),
    }
}

/// `allow`: Buildbarn's `AuthenticationMetadata` (`public`, `private`) as
/// the metadata of every call; `{}` for none.
fn decode_allow(field: Field) -> Decoded<PolicyConfig> {
    let mut message = field.message()?;
    let mut metadata = Map::new();
    for name in ["public", "private"] {
        if let Some(field) = message.take(name)? {
            metadata.insert(name.to_owned(), json_value(field)?);
        }
    }
    if let Some(field) = message.take("tracing_attributes")? {
        let path = field.path.clone();
        let value = json_value(field)?;
        crate::auth::metadata::tracing_attributes(&value)
            .map_err(|message| FieldError::invalid(&path, message))?;
        metadata.insert(crate::auth::policy::TRACING_ATTRIBUTES.to_owned(), value);
    }
    message.finish()?;
    Ok(PolicyConfig::Allow(metadata))
}

/// `any` and `all`: `{ policies: [...] }`.
fn decode_policies(field: Field) -> Decoded<Vec<PolicyConfig>> {
    let mut message = field.message()?;
    let policies = repeated(message.take("policies")?, decode_policy)?;
    message.finish()?;
    Ok(policies)
}

fn decode_client_certificate(field: Field) -> Decoded<PolicyConfig> {
    let mut message = field.message()?;
    let authorities = required(&mut message, "client_certificate_authorities")?;
    let validation = required(&mut message, "validation_jmespath_expression")?;
    let metadata_extraction = required(&mut message, "metadata_extraction_jmespath_expression")?;
    message.finish()?;
    let authorities_path = authorities.path.clone();
    let client_certificate_authorities = authorities.non_empty_string()?;
    parse_authorities(&client_certificate_authorities)
        .map_err(|problem| FieldError::invalid(&authorities_path, problem))?;
    let validation = decode_expression(validation)?;
    let metadata_extraction = decode_expression(metadata_extraction)?;
    Ok(PolicyConfig::TlsClientCertificate(Box::new(
        ClientCertificateConfig {
            client_certificate_authorities,
            validation,
            metadata_extraction,
        },
    )))
}

/// A field bb-storage requires (it refuses to start without it).
fn required(message: &mut Message, proto_name: &str) -> Decoded<Field> {
    let path = message.path.clone();
    message.take(proto_name)?.ok_or_else(|| {
        FieldError::missing(
            &child_path(&path, &lower_camel_case(proto_name)),
            "bb-storage requires it",
        )
    })
}

/// A `jmespath.Expression`: the message `{ expression, files, testVectors }`
/// or, as bb-storage had it before, the expression as a bare string. The
/// expression must compile and its test vectors hold.
pub(super) fn decode_expression(field: Field) -> Decoded<ExpressionConfig> {
    let path = field.path.clone();
    let config = if field.is_string() {
        ExpressionConfig {
            expression: field.non_empty_string()?,
            ..ExpressionConfig::default()
        }
    } else {
        let mut message = field.message()?;
        let expression = required(&mut message, "expression")?.non_empty_string()?;
        let files = repeated(message.take("files")?, decode_file)?;
        let test_vectors = repeated(message.take("test_vectors")?, decode_test_vector)?;
        message.finish()?;
        ExpressionConfig {
            expression,
            files,
            test_vectors,
        }
    };
    jmespath::check(&config).map_err(|error| match error {
        ExpressionError::TestVector { index, problem } => FieldError::invalid(
            &format!("{}[{index}]", child_path(&path, "testVectors")),
            format!("test vector fails: {problem}"),
        ),
        other => FieldError::invalid(&path, other.to_string()),
    })?;
    Ok(config)
}

fn decode_file(field: Field) -> Decoded<ExpressionFile> {
    let mut message = field.message()?;
    let key = required(&mut message, "key")?.non_empty_string()?;
    let path = required(&mut message, "path")?.non_empty_string()?;
    message.finish()?;
    Ok(ExpressionFile {
        key,
        path: path.into(),
    })
}

fn decode_test_vector(field: Field) -> Decoded<TestVector> {
    let mut message = field.message()?;
    let input = match message.take("input")? {
        Some(field) => {
            let path = field.path.clone();
            match json_value(field)? {
                object @ Value::Object(_) => object,
                other => {
                    return Err(FieldError::invalid(
                        &path,
                        format!("must be an object (a google.protobuf.Struct), got {other}"),
                    ))
                }
            }
        }
        None => Value::Object(Map::new()),
    };
    let expected_output = match message.take("expected_output")? {
        Some(field) => json_value(field)?,
        None => Value::Null,
    };
    message.finish()?;
    Ok(TestVector {
        input,
        expected_output,
    })
}

/// A `google.protobuf.Value` field as JSON. Integral numbers become
/// integers, so that expressions compare them as the runner's uids.
fn json_value(field: Field) -> Decoded<Value> {
    let path = field.path.clone();
    to_json(field.value())
        .ok_or_else(|| FieldError::invalid(&path, "a Jsonnet function is not a value; call it"))
}

fn to_json(value: Json) -> Option<Value> {
    Some(match value {
        Json::Null => Value::Null,
        Json::Bool(value) => Value::Bool(value),
        Json::Number(number) => {
            if number.fract() == 0.0 && number.abs() < 9.0e15 {
                Value::Number(Number::from(number as i64))
            } else {
                Value::Number(Number::from_f64(number)?)
            }
        }
        Json::String(text) => Value::String(text),
        Json::Array(values) => {
            Value::Array(values.into_iter().map(to_json).collect::<Option<_>>()?)
        }
        Json::Object(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(key, value)| Some((key, to_json(value)?)))
                .collect::<Option<_>>()?,
        ),
        Json::Function => return None,
    })
}

/// rbe-runner's `runAuthorizer` and `eventsAuthorizer`, top-level; each
/// `allow` when left out.
pub(super) fn decode_authorizers(message: &mut Message) -> Decoded<AuthorizersConfig> {
    let mut authorizer = |name: &str| match message.take(name)? {
        Some(field) => decode_authorizer(field),
        None => Ok(AuthorizerConfig::Allow),
    };
    Ok(AuthorizersConfig {
        run: authorizer("run_authorizer")?,
        events: authorizer("events_authorizer")?,
    })
}

fn decode_authorizer(field: Field) -> Decoded<AuthorizerConfig> {
    let mut message = field.message()?;
    let path = message.path.clone();
    let mut set = Vec::new();
    for name in [
        "allow",
        "deny",
        "jmespath_expression",
        "instance_name_prefix",
        "remote",
    ] {
        if let Some(field) = message.take(name)? {
            set.push((name, field));
        }
    }
    message.finish()?;
    if set.len() > 1 {
        return Err(FieldError::invalid(
            &path,
            "more than one authorizer is set, but it is a oneof: set exactly one",
        ));
    }
    let Some((name, field)) = set.pop() else {
        return Err(FieldError::missing(
            &path,
            "no authorizer is set; use `{ allow: {} }`, `{ deny: {} }` or `{ jmespathExpression: ... }`",
        ));
    };
    match name {
        "allow" | "deny" => {
            let empty = field.message()?;
            if let Some(key) = empty.first_key() {
                return Err(FieldError::invalid(
                    &child_path(&empty.path, key),
                    "takes no fields; write `{}`",
                ));
            }
            Ok(if name == "allow" {
                AuthorizerConfig::Allow
            } else {
                AuthorizerConfig::Deny
            })
        }
        "jmespath_expression" => Ok(AuthorizerConfig::JmespathExpression(decode_expression(
            field,
        )?)),
        "instance_name_prefix" => Err(FieldError::unsupported(
            &field.path,
            "the runner has no instance names; use jmespathExpression",
        )),
        _ => Err(FieldError::unsupported(
            &field.path,
            "remote authorizers are not implemented",
        )),
    }
}

/// Buildbarn refuses a server that reads peer credentials and serves TLS:
/// a TLS connection has no Unix peer to trust.
pub(super) fn refuse_peer_credentials_with_tls(
    policy: &PolicyConfig,
    server: &Message,
) -> Decoded<()> {
    if policy.uses_peer_credentials() && server.has("tls") {
        return Err(FieldError::invalid(
            &child_path(&server.path, "tls"),
            "cannot be combined with peerCredentialsJmespathExpression in authenticationPolicy: \
             peer credentials are those of a Unix socket's client, and a TLS connection has none; \
             serve them on separate grpcServers entries",
        ));
    }
    Ok(())
}

/// A server's policy tree and its authorizers, as `check-config` prints
/// them (its listeners and their transport are printed with `tls`).
pub(super) fn write_server(f: &mut fmt::Formatter<'_>, server: &GrpcServerConfig) -> fmt::Result {
    writeln!(f, "    authenticationPolicy:")?;
    server.authentication_policy.write_tree(f, 6)?;
    writeln!(f, "    runAuthorizer: {}", server.authorizers.run)?;
    writeln!(f, "    eventsAuthorizer: {}", server.authorizers.events)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::auth::authorizer::AuthorizerConfig;
    use crate::auth::policy::PolicyConfig;
    use crate::config::test_support::{assert_mentions, error_of, load_text, with_server, MINIMAL};
    use crate::config::ConfigError;

    fn policy(text: &str) -> PolicyConfig {
        let config = load_text(&with_server(&format!(
            "{{ listenPaths: ['/s'], authenticationPolicy: {text} }}"
        )))
        .unwrap_or_else(|err| panic!("{text}: {err}"));
        config.grpc_servers[0].authentication_policy.clone()
    }

    fn policy_error(text: &str) -> ConfigError {
        load_text(&with_server(&format!(
            "{{ listenPaths: ['/s'], authenticationPolicy: {text} }}"
        )))
        .expect_err(text)
    }

    /// Why: Buildbarn configurations use both the 2025 message form and
    /// the older bare string; either must load unchanged.
    #[test]
    fn expressions_in_both_forms() {
        let bare = policy("{ peerCredentialsJmespathExpression: '{private: {uid: uid}}' }");
        let message = policy(
            "{ peer_credentials_jmespath_expression: { expression: '{private: {uid: uid}}',
               testVectors: [{ input: { uid: 1, groups: [1] }, expectedOutput: { private: { uid: 1 } } }] } }",
        );
        let (PolicyConfig::PeerCredentials(bare), PolicyConfig::PeerCredentials(message)) =
            (bare, message)
        else {
            panic!("not peer credentials");
        };
        assert_eq!(bare.expression, message.expression);
        assert_eq!(message.test_vectors.len(), 1);
    }

    #[test]
    fn allow_keeps_its_metadata_and_nesting_decodes() {
        assert_eq!(
            policy("{ allow: { public: { team: 'build' }, private: { n: 3 } } }"),
            PolicyConfig::Allow(
                json!({"public": {"team": "build"}, "private": {"n": 3}})
                    .as_object()
                    .unwrap()
                    .clone()
            )
        );
        assert_eq!(
            policy(
                "{ any: { policies: [{ deny: 'no' }, { all: { policies: [{ allow: {} }] } }] } }"
            ),
            PolicyConfig::Any(vec![
                PolicyConfig::Deny("no".into()),
                PolicyConfig::All(vec![PolicyConfig::default()]),
            ])
        );
    }

    /// Why: a vector that fails is the operator's own test failing; it
    /// must stop startup naming which one.
    #[test]
    fn a_failing_test_vector_names_its_path() {
        let error = policy_error(
            "{ any: { policies: [{ peerCredentialsJmespathExpression: { expression: 'uid',
               testVectors: [{ input: { uid: 1 }, expectedOutput: 1 }, { input: { uid: 2 }, expectedOutput: 3 }] } }] } }",
        );
        assert_mentions(
            &error.to_string(),
            &[
                "grpcServers[0].authenticationPolicy.any.policies[0].peerCredentialsJmespathExpression.testVectors[1]",
                "expected 3, got 2",
            ],
        );
    }

    #[test]
    fn jwt_and_remote_are_refused_by_name() {
        for (text, path) in [
            ("{ jwt: {} }", "authenticationPolicy.jwt"),
            ("{ remote: {} }", "authenticationPolicy.remote"),
        ] {
            let error = policy_error(text);
            assert!(
                matches!(error, ConfigError::Unsupported { .. }),
                "{error:?}"
            );
            assert_mentions(&error.to_string(), &[path]);
        }
    }

    #[test]
    fn bad_policies_name_their_path() {
        for (text, words) in [
            ("{ allow: {}, deny: 'x' }", "oneof"),
            ("{}", "no policy is set"),
            ("{ peerCredentialsJmespathExpression: 'uid ==' }", "cannot compile"),
            ("{ peerCredentialsJmespathExpression: { files: [] } }", "expression"),
            ("{ tlsClientCertificate: { clientCertificateAuthorities: 'x',
                 validationJmespathExpression: '`true`', metadataExtractionJmespathExpression: '`{}`' } }",
             "clientCertificateAuthorities"),
            ("{ tlsClientCertificate: { clientCertificateAuthorities: 'x' } }", "validationJmespathExpression"),
        ] {
            assert_mentions(&policy_error(text).to_string(), &["grpcServers[0].authenticationPolicy", words]);
        }
    }

    /// Why: Buildbarn refuses this combination at startup; accepting it
    /// would authenticate TLS clients by credentials they do not have.
    #[test]
    fn peer_credentials_with_tls_are_refused() {
        let error = error_of(&with_server(
            "{ listenAddresses: [':0'], tls: { serverKeyPair: {} },
               authenticationPolicy: { any: { policies: [{ peerCredentialsJmespathExpression: '`{}`' }] } } }",
        ));
        assert_mentions(
            &error,
            &["grpcServers[0].tls", "peerCredentialsJmespathExpression"],
        );
    }

    #[test]
    fn authorizers_are_top_level_and_apply_to_every_server() {
        let config = load_text(&format!(
            "{{ {MINIMAL}, runAuthorizer: {{ jmespathExpression: 'authenticationMetadata.private.uid == `65534`' }},
               eventsAuthorizer: {{ deny: {{}} }} }}"
        ))
        .unwrap();
        let authorizers = &config.grpc_servers[0].authorizers;
        assert!(matches!(
            authorizers.run,
            AuthorizerConfig::JmespathExpression(_)
        ));
        assert_eq!(authorizers.events, AuthorizerConfig::Deny);
        let text = config.to_string();
        assert!(text.contains("runAuthorizer: jmespathExpression"), "{text}");
        assert!(text.contains("eventsAuthorizer: deny"), "{text}");

        for (text, path, words) in [
            (
                "runAuthorizer: { instanceNamePrefix: {} }",
                "runAuthorizer.instanceNamePrefix",
                "instance names",
            ),
            (
                "eventsAuthorizer: { remote: {} }",
                "eventsAuthorizer.remote",
                "not supported",
            ),
            (
                "runAuthorizer: { allow: { x: 1 } }",
                "runAuthorizer.allow.x",
                "no fields",
            ),
            ("runAuthorizer: {}", "runAuthorizer", "no authorizer"),
        ] {
            assert_mentions(
                &error_of(&format!("{{ {MINIMAL}, {text} }}")),
                &[path, words],
            );
        }
    }
}
