//! Evaluating the configuration file with jrsonnet and copying the result
//! into a plain JSON tree ([`Json`]) that the decoder can walk without
//! touching jrsonnet's lazy values.

use std::collections::BTreeMap;
use std::path::Path;

use jrsonnet_evaluator::trace::{CompactFormat, PathResolver, TraceFormat};
use jrsonnet_evaluator::{FileImportResolver, ResultExt, State, Val};

use super::ConfigError;

/// Stack for the evaluation thread. jrsonnet grows its own stack while
/// evaluating, but drops values recursively, so a value built by deep
/// recursion (`std.foldl(function(a, _) [a], ...)`) needs a deep stack to
/// be freed. Only the pages actually used are backed by memory.
const EVALUATION_STACK_BYTES: usize = 256 << 20;

/// Stack tried when the kernel refuses [`EVALUATION_STACK_BYTES`] (small
/// machines, `vm.overcommit_memory=2`): ordinary configurations need far
/// less, and a runner that starts beats one that refuses to.
const FALLBACK_EVALUATION_STACK_BYTES: usize = 16 << 20;

/// Runs jrsonnet on `file` and copies the result out of its lazy values.
///
/// This happens on a thread of its own: jrsonnet keeps its evaluation
/// state in thread-locals, which must not leak into the caller's thread,
/// the thread can be given the stack described above, and a panic inside
/// jrsonnet (not ours to audit) ends up as an error rather than bringing
/// the runner down over a configuration typo.
pub(super) fn evaluate_jsonnet(
    file: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Json, ConfigError> {
    let jsonnet_error = |message: String| ConfigError::Jsonnet {
        file: file.to_path_buf(),
        message,
    };
    let start = |stack_bytes: usize| {
        let thread_file = file.to_path_buf();
        let thread_env = env.clone();
        std::thread::Builder::new()
            .name("jsonnet-evaluation".to_owned())
            .stack_size(stack_bytes)
            .spawn(move || evaluate_on_this_thread(&thread_file, &thread_env))
    };
    let evaluation = start(EVALUATION_STACK_BYTES)
        .or_else(|_| start(FALLBACK_EVALUATION_STACK_BYTES))
        .map_err(|error| jsonnet_error(format!("cannot start the evaluation thread: {error}")))?;
    match evaluation.join() {
        Ok(Ok(json)) => Ok(json),
        Ok(Err(message)) => Err(jsonnet_error(message)),
        Err(_) => Err(jsonnet_error(
            "the Jsonnet evaluator failed internally (it panicked)".to_owned(),
        )),
    }
}

/// The body of [`evaluate_jsonnet`]'s thread; errors are jrsonnet's
/// formatted messages.
fn evaluate_on_this_thread(file: &Path, env: &BTreeMap<String, String>) -> Result<Json, String> {
    let stdlib = jrsonnet_stdlib::ContextInitializer::new(PathResolver::Absolute);
    for (name, value) in env {
        stdlib.add_ext_str(name.as_str().into(), value.as_str().into());
    }
    let mut builder = State::builder();
    builder
        .import_resolver(FileImportResolver::default())
        .context_initializer(stdlib);
    let state = builder.build();
    // Imports reached while forcing lazy fields find the state through a
    // thread-local, so it must stay entered until the copy is done.
    let Some(_entered) = state.try_enter() else {
        return Err("another Jsonnet evaluation is in progress on this thread".to_owned());
    };
    state
        .import(file)
        .and_then(|value| to_json(value, 0))
        .map_err(|error| {
            let format = CompactFormat {
                resolver: PathResolver::Absolute,
                max_trace: 20,
                padding: 4,
            };
            format.format(&error).unwrap_or_else(|_| error.to_string())
        })
}

// ---------------------------------------------------------------------------
// The evaluated document
// ---------------------------------------------------------------------------

/// the decoder (not a serializer) decides what is an integer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
    /// Jsonnet functions cannot be manifested; kept so the decoder can name
    /// the field that holds one.
    Function,
}

impl Json {
    /// How the value reads in an error message.
    pub(super) fn describe(&self) -> String {
        match self {
            Json::Null => "null".to_owned(),
            Json::Bool(value) => value.to_string(),
            Json::Number(value) => format!("the number {value}"),
            Json::String(value) if value.chars().count() > 60 => {
                let prefix: String = value.chars().take(57).collect();
                format!("the string {prefix:?}...")
            }
            Json::String(value) => format!("the string {value:?}"),
            Json::Array(_) => "a list".to_owned(),
            Json::Object(_) => "an object".to_owned(),
            Json::Function => "a function".to_owned(),
        }
    }
}

/// Objects nested deeper than this are refused rather than risk the stack.
const MAXIMUM_NESTING: usize = 100;

/// Forces `value` completely, as manifesting would, running object
/// assertions on the way.
fn to_json(value: Val, depth: usize) -> jrsonnet_evaluator::Result<Json> {
    if depth > MAXIMUM_NESTING {
        return Err(jrsonnet_evaluator::RuntimeError(
            format!("values nested more than {MAXIMUM_NESTING} levels deep are not accepted")
                .into(),
        )
        .into());
    }
    Ok(match value {
        Val::Null => Json::Null,
        Val::Bool(value) => Json::Bool(value),
        Val::Num(value) => Json::Number(value.get()),
        Val::Str(value) => Json::String(value.into_flat().to_string()),
        Val::Func(_) => Json::Function,
        Val::Arr(items) => {
            let mut elements = Vec::with_capacity(items.len() as usize);
            for (index, item) in items.iter().enumerate() {
                let item = item.with_description(|| format!("element [{index}]"))?;
                elements.push(to_json(item, depth + 1)?);
            }
            Json::Array(elements)
        }
        Val::Obj(object) => {
            object.run_assertions()?;
            let mut fields = BTreeMap::new();
            for (key, field) in object.iter() {
                let field = field.with_description(|| format!("field <{key}>"))?;
                fields.insert(key.to_string(), to_json(field, depth + 1)?);
            }
            Json::Object(fields)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::test_support::{assert_mentions, error_of, load_files, load_text, MINIMAL};
    use crate::config::ConfigError;

    /// Imports resolve against the importing file, not the working
    /// directory, so a config tree can be moved as a whole.
    #[test]
    fn relative_imports_resolve_against_the_importing_file() {
        let (_dir, result) = load_files(
            &[
                ("etc/runner.jsonnet", "local servers = import 'lib/servers.libsonnet';
                    { buildDirectoryPath: '/b', grpcServers: servers }"),
                ("etc/lib/servers.libsonnet", "[{ listenPaths: [import 'socket.json'], authenticationPolicy: { allow: {} } }]"),
                ("etc/lib/socket.json", "\"/run/from-nested-import.sock\""),
            ],
            &[],
        );
        let config = result.expect("imports resolve");
        assert_eq!(
            config.grpc_servers[0].listen_paths,
            vec![PathBuf::from("/run/from-nested-import.sock")]
        );
    }

    /// Every environment variable is an external variable, as in Buildbarn;
    /// the injected map is the only source.
    #[test]
    fn ext_vars_come_from_the_injected_environment() {
        let text = "{ buildDirectoryPath: std.extVar('BUILD_DIR'),
            grpcServers: [{ listenAddresses: ['127.0.0.1:' + std.extVar('PORT')], authenticationPolicy: { allow: {} } }],
            runCommandsAs: { userId: std.parseInt(std.extVar('RUNNER_UID')) } }";
        let (_dir, result) = load_files(
            &[("runner.jsonnet", text)],
            &[
                ("BUILD_DIR", "/from/env"),
                ("PORT", "8991"),
                ("RUNNER_UID", "1234"),
            ],
        );
        let config = result.expect("ext vars resolve");
        assert_eq!(config.build_directory_path, PathBuf::from("/from/env"));
        assert_eq!(
            config.grpc_servers[0].listen_addresses,
            vec!["127.0.0.1:8991".to_string()]
        );
        assert_eq!(
            config.run_commands_as.map(|identity| identity.user_id),
            Some(1234)
        );
    }

    /// A variable missing from the environment is jrsonnet's error, naming it.
    #[test]
    fn missing_ext_var_is_a_jsonnet_error() {
        let (_dir, result) = load_files(
            &[(
                "runner.jsonnet",
                "{ buildDirectoryPath: std.extVar('NOT_SET_ANYWHERE') }",
            )],
            &[],
        );
        let error = result.expect_err("undefined variable");
        assert!(matches!(error, ConfigError::Jsonnet { .. }), "{error:?}");
        assert_mentions(&error.to_string(), &["runner.jsonnet", "NOT_SET_ANYWHERE"]);
    }

    /// Syntax errors carry jrsonnet's message and the line they are on.
    #[test]
    fn syntax_errors_show_the_location() {
        let error = load_text("{\n  buildDirectoryPath: '/b',\n  grpcServers: [,\n}")
            .expect_err("syntax error");
        assert!(matches!(error, ConfigError::Jsonnet { .. }), "{error:?}");
        assert_mentions(&error.to_string(), &["runner.jsonnet", ":3:"]);
    }

    /// Errors raised while forcing a lazy field still name the file.
    #[test]
    fn runtime_errors_are_reported_with_their_message() {
        let message = error_of(&format!(
            "{{ {MINIMAL}, global: {{ logPaths: [error 'no log for you'] }} }}"
        ));
        assert_mentions(&message, &["runner.jsonnet", "no log for you"]);
    }

    /// Object assertions run, as they would when manifesting.
    #[test]
    fn object_assertions_are_checked() {
        let message = error_of(&format!("{{ {MINIMAL}, cleanProcessTable: false, assert self.cleanProcessTable : 'must clean' }}"));
        assert_mentions(&message, &["must clean"]);
    }

    #[test]
    fn functions_are_not_values() {
        let message = error_of(&format!(
            "{{ {MINIMAL}, cleanProcessTable: function(x) x }}"
        ));
        assert_mentions(&message, &["cleanProcessTable", "a function"]);
    }

    /// Absurdly deep values are refused instead of exhausting the stack.
    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!(
            "{{ {MINIMAL}, global: {{ tracing: std.foldl(function(acc, _) [acc], std.range(1, 5000), []) }} }}"
        );
        let error = load_text(&text).expect_err("too deep");
        assert!(matches!(error, ConfigError::Jsonnet { .. }), "{error:?}");
    }
}
