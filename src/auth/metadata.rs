//! Buildbarn's authentication metadata: what a policy learned about the
//! caller, as the JSON object `{public, private}` that authorizers'
//! expressions see as `authenticationMetadata`, and its
//! `tracingAttributes`, which the call's server span carries as `auth.*`.

use serde_json::{Map, Value};

use crate::config::AttributeValue;

/// The metadata one authentication produced: an object with at most the
/// keys `public` (may be logged) and `private` (may not), and the
/// attributes of the call's span.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthenticationMetadata {
    fields: Map<String, Value>,
    tracing_attributes: Vec<(String, AttributeValue)>,
}

/// `tracingAttributes`: OpenTelemetry `KeyValue`s in protobuf JSON,
/// `[{ key, value: { stringValue | boolValue | intValue | doubleValue } }]`.
pub fn tracing_attributes(value: &Value) -> Result<Vec<(String, AttributeValue)>, String> {
    let Value::Array(items) = value else {
        return Err(format!("tracingAttributes must be a list, not {value}"));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let key = item.get("key").and_then(Value::as_str).unwrap_or_default();
            if key.is_empty() {
                return Err(format!("tracingAttributes[{index}] has no key"));
            }
            let value = item.get("value").and_then(Value::as_object);
            let parsed = value.and_then(|value| {
                let (kind, value) = value.iter().next()?;
                match kind.as_str() {
                    "stringValue" | "string_value" => value
                        .as_str()
                        .map(|text| AttributeValue::String(text.to_owned())),
                    "boolValue" | "bool_value" => value.as_bool().map(AttributeValue::Bool),
                    "intValue" | "int_value" => value
                        .as_i64()
                        .or_else(|| value.as_str()?.parse().ok())
                        .map(AttributeValue::Int),
                    "doubleValue" | "double_value" => value.as_f64().map(AttributeValue::Double),
                    _ => None,
                }
            });
            match parsed {
                Some(value) => Ok((key.to_owned(), value)),
                None => Err(format!(
                    "tracingAttributes[{index}].value must be one of stringValue, boolValue, \
                     intValue, doubleValue"
                )),
            }
        })
        .collect()
}

/// The keys Buildbarn's `AuthenticationMetadata` message has that
/// rbe-runner keeps.
const KEPT_KEYS: &[&str] = &["public", "private"];

impl AuthenticationMetadata {
    /// The metadata a policy's expression produced: an object of `public`,
    /// `private` and `tracingAttributes` (attributes of the call's span),
    /// or null for none. Anything else is the
    /// expression's mistake, reported to the caller as the reason.
    pub fn from_extracted(value: Value) -> Result<Self, String> {
        let mut tracing = Vec::new();
        let object = match value {
            Value::Null => return Ok(Self::default()),
            Value::Object(object) => object,
            other => {
                return Err(format!(
                    "the metadata extraction expression gave {other}, not an object of public and private"
                ))
            }
        };
        let mut fields = Map::new();
        for (key, value) in object {
            match key.as_str() {
                "public" | "private" => {
                    if !value.is_null() {
                        fields.insert(key, value);
                    }
                }
                "tracingAttributes" | "tracing_attributes" => {
                    if !value.is_null() {
                        tracing = tracing_attributes(&value)?;
                    }
                }
                other => {
                    return Err(format!(
                        "the metadata extraction expression gave the key {other:?}; only public and private are metadata"
                    ))
                }
            }
        }
        Ok(AuthenticationMetadata {
            fields,
            tracing_attributes: tracing,
        })
    }

    /// Metadata from configuration (`allow`), whose keys and tracing
    /// attributes were checked.
    pub fn from_fields(
        fields: Map<String, Value>,
        tracing_attributes: Vec<(String, AttributeValue)>,
    ) -> Self {
        debug_assert!(fields.keys().all(|key| KEPT_KEYS.contains(&key.as_str())));
        AuthenticationMetadata {
            fields,
            tracing_attributes,
        }
    }

    /// `tracingAttributes`, which the call's server span carries with the
    /// prefix `auth.`, as Buildbarn's does.
    pub fn tracing_attributes(&self) -> &[(String, AttributeValue)] {
        &self.tracing_attributes
    }

    /// Merges `later` into this metadata: objects recursively, any other
    /// value replaced (the `all` policy, first to last).
    pub fn merge(&mut self, later: AuthenticationMetadata) {
        self.tracing_attributes.extend(later.tracing_attributes);
        for (key, value) in later.fields {
            match self.fields.get_mut(&key) {
                Some(existing) => merge_value(existing, value),
                None => {
                    self.fields.insert(key, value);
                }
            }
        }
    }

    /// The metadata as authorizers' expressions see it.
    pub fn to_value(&self) -> Value {
        Value::Object(self.fields.clone())
    }

    /// The `public` part, which may be logged.
    pub fn public(&self) -> Option<&Value> {
        self.fields.get("public")
    }
}

fn merge_value(existing: &mut Value, later: Value) {
    match (existing, later) {
        (Value::Object(existing), Value::Object(later)) => {
            for (key, value) in later {
                match existing.get_mut(&key) {
                    Some(slot) => merge_value(slot, value),
                    None => {
                        existing.insert(key, value);
                    }
                }
            }
        }
        (existing, later) => *existing = later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(value: Value) -> AuthenticationMetadata {
        AuthenticationMetadata::from_extracted(value).unwrap()
    }

    /// Why: `all` promises Buildbarn's merge (the kermit/robin example of
    /// bb-storage's all_authenticator), and nested objects merge too.
    #[test]
    fn merging_is_recursive_and_later_wins() {
        let mut merged = metadata(json!({
            "public": {"first_name": "kermit", "middle_name": "the", "nested": {"a": 1, "b": 2}},
            "private": {"uid": 0},
        }));
        merged.merge(metadata(json!({
            "public": {"first_name": "robin", "last_name": "frog", "nested": {"b": 3}},
        })));
        assert_eq!(
            merged.to_value(),
            json!({
                "public": {"first_name": "robin", "middle_name": "the", "last_name": "frog",
                           "nested": {"a": 1, "b": 3}},
                "private": {"uid": 0},
            })
        );
    }

    /// Why: an expression giving the wrong shape must be a clear refusal,
    /// not metadata an authorizer silently cannot match.
    #[test]
    fn extracted_metadata_must_be_public_and_private() {
        assert_eq!(metadata(Value::Null), AuthenticationMetadata::default());
        let error = AuthenticationMetadata::from_extracted(json!({"uid": 1})).unwrap_err();
        assert!(error.contains("\"uid\""), "{error}");
        let error = AuthenticationMetadata::from_extracted(json!(true)).unwrap_err();
        assert!(error.contains("gave true"), "{error}");
        assert_eq!(
            metadata(json!({"public": "x", "tracingAttributes": []})).to_value(),
            json!({"public": "x"})
        );
    }
}
