//! Buildbarn's `jmespath.Expression`: a JMESPath expression, the files it
//! may read under the key `files`, and test vectors that must hold for the
//! configuration to be accepted.
//!
//! Checking ([`check`]) needs no file: it compiles the expression and
//! evaluates every test vector on the input the vector gives (which holds
//! the files' contents itself), so `check-config` reports a wrong vector as
//! startup would. Serving ([`Expression::start`]) reads the files, and
//! re-reads them every [`FILES_REFRESH_INTERVAL`] as bb-storage does; a
//! file that cannot be re-read keeps its previous contents.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde_json::{Map, Value};

/// How often the files of an expression are read again (bb-storage's).
pub const FILES_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// The key under which an expression sees its files.
pub const FILES_KEY: &str = "files";

/// One `jmespath.Expression` as configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpressionConfig {
    /// The expression's text.
    pub expression: String,
    /// `files`: each file's contents, as a string, under `files.<key>`.
    pub files: Vec<ExpressionFile>,
    /// `testVectors`, evaluated by [`check`].
    pub test_vectors: Vec<TestVector>,
}

/// One entry of `files`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpressionFile {
    pub key: String,
    pub path: PathBuf,
}

/// One entry of `testVectors`.
#[derive(Debug, Clone, PartialEq)]
pub struct TestVector {
    /// The expression's input; holds `files` when the expression has files.
    pub input: Value,
    /// What the expression must give for `input`.
    pub expected_output: Value,
}

/// Why an expression is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ExpressionError {
    #[error("cannot compile the JMESPath expression: {0}")]
    Compile(String),
    /// `index` is the test vector's position in `testVectors`.
    #[error("testVectors[{index}]: {problem}")]
    TestVector { index: usize, problem: String },
    #[error("files: cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Compiles `config`'s expression and evaluates its test vectors.
pub fn check(config: &ExpressionConfig) -> Result<(), ExpressionError> {
    let compiled = compile(&config.expression)?;
    for (index, vector) in config.test_vectors.iter().enumerate() {
        check_test_vector(&compiled, config, vector)
            .map_err(|problem| ExpressionError::TestVector { index, problem })?;
    }
    Ok(())
}

fn compile(expression: &str) -> Result<jmespath::Expression<'static>, ExpressionError> {
    jmespath::compile(expression).map_err(|err| ExpressionError::Compile(err.to_string()))
}

/// bb-storage's rules: an expression with files needs a vector whose
/// input has exactly those keys under `files`; one without, no `files`.
fn check_test_vector(
    compiled: &jmespath::Expression<'static>,
    config: &ExpressionConfig,
    vector: &TestVector,
) -> Result<(), String> {
    let Value::Object(input) = &vector.input else {
        return Err("input must be an object".to_owned());
    };
    match (input.get(FILES_KEY), config.files.is_empty()) {
        (Some(_), true) => {
            return Err(
                "input holds `files`, but the expression has no files configured".to_owned(),
            )
        }
        (None, false) => return Err("input lacks `files`, which the expression reads".to_owned()),
        (Some(Value::Object(files)), false) => {
            for file in &config.files {
                if !files.contains_key(&file.key) {
                    return Err(format!("input lacks file {:?} under `files`", file.key));
                }
            }
            if files.len() != config.files.len() {
                return Err(format!(
                    "input has {} files, but the expression has {}",
                    files.len(),
                    config.files.len()
                ));
            }
        }
        (Some(_), false) => return Err("input's `files` must be an object".to_owned()),
        (None, true) => {}
    }
    let actual = search(compiled, &vector.input)?;
    if !same_value(&actual, &vector.expected_output) {
        return Err(format!(
            "expected {}, got {}",
            vector.expected_output, actual
        ));
    }
    Ok(())
}

fn search(compiled: &jmespath::Expression<'static>, input: &Value) -> Result<Value, String> {
    let result = compiled
        .search(input)
        .map_err(|err| format!("evaluation failed: {err}"))?;
    serde_json::to_value(&*result).map_err(|err| format!("cannot represent the result: {err}"))
}

/// Equality as protobuf's `Value` has it: numbers are doubles, so `1` and
/// `1.0` are the same.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, a)| b.get(key).is_some_and(|b| same_value(a, b)))
        }
        (a, b) => a == b,
    }
}

/// A checked expression, ready to evaluate; its files (if any) were read
/// when it was started and are refreshed in the background.
pub struct Expression {
    text: String,
    compiled: jmespath::Expression<'static>,
    /// The files' contents by key; `None` when the expression has none.
    files: Option<Arc<RwLock<Map<String, Value>>>>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expression({:?})", self.text)
    }
}

impl Expression {
    /// Checks `config` ([`check`]), reads its files and, when it has any
    /// and a Tokio runtime is running, refreshes them every
    /// [`FILES_REFRESH_INTERVAL`] for as long as the expression lives.
    pub fn start(config: &ExpressionConfig) -> Result<Self, ExpressionError> {
        check(config)?;
        let compiled = compile(&config.expression)?;
        let files = if config.files.is_empty() {
            None
        } else {
            let contents = read_files(&config.files, None)?;
            let files = Arc::new(RwLock::new(contents));
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(refresh_files(Arc::downgrade(&files), config.files.clone()));
            }
            Some(files)
        };
        Ok(Expression {
            text: config.expression.clone(),
            compiled,
            files,
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the expression on `input`, with the files under `files`.
    pub fn search(&self, mut input: Map<String, Value>) -> Result<Value, String> {
        if let Some(files) = &self.files {
            let files = files
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            input.insert(FILES_KEY.to_owned(), Value::Object(files.clone()));
        }
        search(&self.compiled, &Value::Object(input))
    }
}

/// Reads every file; with `previous`, a file that cannot be read keeps its
/// previous contents (logged), else the failure is returned.
fn read_files(
    files: &[ExpressionFile],
    previous: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, ExpressionError> {
    let mut contents = Map::new();
    for file in files {
        match std::fs::read(&file.path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                contents.insert(file.key.clone(), Value::String(text));
            }
            Err(source) => match previous.and_then(|previous| previous.get(&file.key)) {
                Some(kept) => {
                    tracing::warn!(path = %file.path.display(), error = %source,
                        "cannot re-read a file of a JMESPath expression; keeping its previous contents");
                    contents.insert(file.key.clone(), kept.clone());
                }
                None => {
                    return Err(ExpressionError::ReadFile {
                        path: file.path.clone(),
                        source,
                    })
                }
            },
        }
    }
    Ok(contents)
}

/// Re-reads `files` every interval until the expression is dropped.
async fn refresh_files(target: Weak<RwLock<Map<String, Value>>>, files: Vec<ExpressionFile>) {
    let mut ticks = tokio::time::interval(FILES_REFRESH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(target) = target.upgrade() else {
            return;
        };
        let previous = target
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let files = files.clone();
        let read = tokio::task::spawn_blocking(move || read_files(&files, Some(&previous))).await;
        if let Ok(Ok(contents)) = read {
            *target
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = contents;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(expression: &str, vectors: &[(Value, Value)]) -> ExpressionConfig {
        ExpressionConfig {
            expression: expression.to_owned(),
            files: Vec::new(),
            test_vectors: vectors
                .iter()
                .map(|(input, expected_output)| TestVector {
                    input: input.clone(),
                    expected_output: expected_output.clone(),
                })
                .collect(),
        }
    }

    /// Why: a vector that does not hold is how an operator learns, before
    /// serving, that the expression does not mean what they thought.
    #[test]
    fn a_failing_test_vector_is_named_with_both_values() {
        let config = config(
            "uid == `65534`",
            &[
                (json!({"uid": 65534}), json!(true)),
                (json!({"uid": 0}), json!(true)),
            ],
        );
        let error = check(&config).unwrap_err().to_string();
        assert!(error.contains("testVectors[1]"), "{error}");
        assert!(error.contains("expected true, got false"), "{error}");
    }

    #[test]
    fn a_syntax_error_is_refused() {
        let error = check(&config("uid ==", &[])).unwrap_err();
        assert!(matches!(error, ExpressionError::Compile(_)), "{error}");
    }

    /// Why: protobuf's Value has only doubles, so bb-storage treats 1 and
    /// 1.0 as equal; a vector written either way must pass.
    #[test]
    fn numbers_compare_as_doubles() {
        let config = config("a", &[(json!({"a": 1}), json!(1.0))]);
        check(&config).unwrap();
    }

    /// Why: bb-storage refuses vectors whose `files` do not match the
    /// configured files, so the vectors really test what will run.
    #[test]
    fn vectors_must_carry_exactly_the_configured_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        std::fs::write(&path, "alice").unwrap();
        let mut with_file = config(
            "files.allowed == user",
            &[(
                json!({"user": "alice", "files": {"allowed": "alice"}}),
                json!(true),
            )],
        );
        with_file.files.push(ExpressionFile {
            key: "allowed".into(),
            path: path.clone(),
        });
        check(&with_file).unwrap();
        let started = Expression::start(&with_file).unwrap();
        let mut input = Map::new();
        input.insert("user".into(), json!("alice"));
        assert_eq!(started.search(input).unwrap(), json!(true));

        with_file.test_vectors[0].input = json!({"user": "alice"});
        assert!(check(&with_file)
            .unwrap_err()
            .to_string()
            .contains("lacks `files`"));
        let without = config("a", &[(json!({"files": {}}), json!(null))]);
        assert!(check(&without)
            .unwrap_err()
            .to_string()
            .contains("no files"));
    }

    #[test]
    fn a_missing_file_stops_startup_naming_it() {
        let mut config = config("files.x", &[]);
        config.files.push(ExpressionFile {
            key: "x".into(),
            path: "/nonexistent/rbe-runner-test".into(),
        });
        let error = Expression::start(&config).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/rbe-runner-test"), "{error}");
    }

    /// Why: a file replaced on disk (a rotated allow-list) must be seen
    /// without a restart, and one that vanished must not empty the list.
    #[tokio::test(start_paused = true)]
    async fn files_are_read_again_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        std::fs::write(&path, "alice").unwrap();
        let mut config = config("files.allowed", &[]);
        config.files.push(ExpressionFile {
            key: "allowed".into(),
            path: path.clone(),
        });
        let expression = Expression::start(&config).unwrap();
        assert_eq!(expression.search(Map::new()).unwrap(), json!("alice"));
        std::fs::write(&path, "bob").unwrap();
        // The refresh reads on a blocking thread: advance, then let it run.
        let refreshed = async {
            loop {
                tokio::time::sleep(FILES_REFRESH_INTERVAL).await;
                if expression.search(Map::new()).unwrap() == json!("bob") {
                    break;
                }
            }
        };
        tokio::time::timeout(FILES_REFRESH_INTERVAL * 10, refreshed)
            .await
            .expect("the file was read again");
        std::fs::remove_file(&path).unwrap();
        for _ in 0..3 {
            tokio::time::sleep(FILES_REFRESH_INTERVAL).await;
        }
        assert_eq!(expression.search(Map::new()).unwrap(), json!("bob"));
    }
}
