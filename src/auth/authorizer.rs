//! Buildbarn's `AuthorizerConfiguration`, as rbe-runner's `runAuthorizer`
//! and `eventsAuthorizer`: given the authentication metadata of a call,
//! allow it or not (answered as PERMISSION_DENIED). The runner has no
//! instance names, so a JMESPath expression sees `instanceName` as `""`.

use std::fmt;

use serde_json::{Map, Value};

use super::jmespath::{Expression, ExpressionConfig, ExpressionError};
use super::metadata::AuthenticationMetadata;
use super::policy::describe;

/// An authorizer as configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum AuthorizerConfig {
    /// Every authenticated call.
    #[default]
    Allow,
    /// No call.
    Deny,
    /// Calls for which the expression gives `true` (and nothing else).
    JmespathExpression(ExpressionConfig),
}

impl fmt::Display for AuthorizerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorizerConfig::Allow => write!(f, "allow"),
            AuthorizerConfig::Deny => write!(f, "deny"),
            AuthorizerConfig::JmespathExpression(expression) => {
                write!(f, "jmespathExpression {}", describe(expression))
            }
        }
    }
}

/// A started authorizer.
#[derive(Debug)]
pub enum Authorizer {
    Allow,
    Deny,
    JmespathExpression(Expression),
}

impl Authorizer {
    pub fn start(config: &AuthorizerConfig) -> Result<Self, ExpressionError> {
        Ok(match config {
            AuthorizerConfig::Allow => Authorizer::Allow,
            AuthorizerConfig::Deny => Authorizer::Deny,
            AuthorizerConfig::JmespathExpression(expression) => {
                Authorizer::JmespathExpression(Expression::start(expression)?)
            }
        })
    }

    /// Whether a call with `metadata` is allowed. As in bb-storage, an
    /// expression that fails to evaluate denies.
    pub fn allows(&self, metadata: &AuthenticationMetadata) -> bool {
        match self {
            Authorizer::Allow => true,
            Authorizer::Deny => false,
            Authorizer::JmespathExpression(expression) => {
                let mut input = Map::new();
                input.insert("authenticationMetadata".into(), metadata.to_value());
                input.insert("instanceName".into(), Value::String(String::new()));
                matches!(expression.search(input), Ok(Value::Bool(true)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(value: Value) -> AuthenticationMetadata {
        AuthenticationMetadata::from_extracted(value).unwrap()
    }

    fn expression(text: &str) -> Authorizer {
        Authorizer::start(&AuthorizerConfig::JmespathExpression(ExpressionConfig {
            expression: text.into(),
            ..ExpressionConfig::default()
        }))
        .unwrap()
    }

    /// Why: the README's "only uid 65534 may run actions" example.
    #[test]
    fn the_expression_sees_metadata_and_an_empty_instance_name() {
        let authorizer =
            expression("authenticationMetadata.private.uid == `65534` && instanceName == ''");
        assert!(authorizer.allows(&metadata(json!({"private": {"uid": 65534}}))));
        assert!(!authorizer.allows(&metadata(json!({"private": {"uid": 0}}))));
        assert!(!authorizer.allows(&AuthenticationMetadata::default()));
    }

    /// Why: bb-storage allows only on exactly `true`; a truthy string
    /// or a non-empty list must not open the door.
    #[test]
    fn only_true_allows() {
        let anything = metadata(json!({"public": "x"}));
        assert!(!expression("authenticationMetadata.public").allows(&anything));
        assert!(!expression("[`1`]").allows(&anything));
        assert!(Authorizer::Allow.allows(&anything));
        assert!(!Authorizer::Deny.allows(&anything));
    }
}
