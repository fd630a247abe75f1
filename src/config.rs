//! The bb_runner configuration file: Jsonnet, evaluated and decoded into
//! typed values.
//!
//! Loading happens in two steps, kept apart so that each error can say
//! exactly what went wrong:
//!
//! 1. **Evaluation.** The file is evaluated with jrsonnet, with the
//!    standard library, imports resolved relative to the importing file,
//!    and every environment variable available through `std.extVar`, as
//!    Buildbarn's own programs do. The result is copied into a plain JSON
//!    tree ([`Json`]); any Jsonnet error is reported with jrsonnet's
//!    message and location.
//! 2. **Decoding.** The tree is decoded as bb_runner's
//!    `ApplicationConfiguration` under protobuf-JSON rules: a field may be
//!    spelled in lowerCamelCase or with its snake_case proto name, `null`
//!    means "not set", 64-bit integers may be strings. Decoding is strict:
//!    a key that upstream's schema does not have is an error naming its
//!    full path, because a misspelled key silently falling back to a
//!    default is how outages start. Keys that upstream has but rbe-runner
//!    cannot honour are rejected as "not supported", except in `global`,
//!    where they are recorded so that startup can log them once.
//!
//! The environment is a parameter ([`load_with_env`]) so tests never touch
//! the process environment; [`load`] passes the real one.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jrsonnet_evaluator::trace::{CompactFormat, PathResolver, TraceFormat};
use jrsonnet_evaluator::{FileImportResolver, ResultExt, State, Val};

// ---------------------------------------------------------------------------
// The decoded configuration
// ---------------------------------------------------------------------------

/// Time an action gets between SIGTERM and SIGKILL when
/// `terminationGracePeriod` is not set.
pub const DEFAULT_TERMINATION_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// bb_runner's `ApplicationConfiguration` plus rbe-runner's extensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directory bb_worker prepares actions in; request paths are relative to it.
    pub build_directory_path: PathBuf,
    /// One gRPC server per entry, each with its own listeners.
    pub grpc_servers: Vec<GrpcServerConfig>,
    /// Directories emptied whenever the runner goes idle or becomes busy.
    pub clean_temporary_directories: Vec<PathBuf>,
    /// The subset of Buildbarn's global configuration that applies.
    pub global: GlobalConfig,
    /// Add `TMPDIR=<temporary directory>` to each action's environment.
    pub set_tmpdir_environment_variable: bool,
    /// Run actions chrooted into their input root.
    pub chroot_into_input_root: bool,
    /// Kill leftover processes of the actions' user on idle transitions.
    pub clean_process_table: bool,
    /// Host paths that must exist for the runner to be ready.
    pub readiness_checking_pathnames: Vec<PathBuf>,
    /// Identity actions run as; `None` runs them as the runner's own.
    pub run_commands_as: Option<RunCommandsAs>,
    /// Paths replaced by a symlink to each action's temporary directory.
    pub symlink_temporary_directories: Vec<PathBuf>,
    /// A command run on idle transitions to clean up.
    pub run_command_cleaner: Option<CommandCleaner>,
    /// macOS only; decoded, logged once and ignored on Linux.
    pub apple_xcode_developer_directories: BTreeMap<String, String>,
    /// Extension: time between SIGTERM and SIGKILL when an action is stopped.
    pub termination_grace_period: Duration,
    /// Extension (proposed upstream as field 15): cgroup v2 counter deltas per action.
    pub sample_cgroup_resource_usage: bool,
    /// Extension: put every action in its own cgroup.
    pub action_cgroups: Option<ActionCgroupsConfig>,
    /// Extension `listenPathMode`: permission bits of every `listenPaths`
    /// socket; `None` leaves them to the umask, as bb_runner does.
    pub listen_path_mode: Option<u32>,
}

/// One entry of `grpcServers`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpcServerConfig {
    /// Unix socket paths; a stale socket file is removed before binding.
    pub listen_paths: Vec<PathBuf>,
    /// TCP addresses such as `127.0.0.1:8991`.
    pub listen_addresses: Vec<String>,
    /// On shutdown, let in-flight actions finish instead of terminating them.
    pub stop_gracefully: bool,
    /// Largest request accepted; `None` keeps tonic's default (4 MiB).
    pub maximum_received_message_size_bytes: Option<usize>,
}

/// `global`: only `setUmask` has an effect; other keys are listed in
/// `ignored_keys` so that startup can log them once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GlobalConfig {
    /// umask applied to the runner, and so inherited by every action.
    pub set_umask: Option<u32>,
    /// Paths (e.g. `global.diagnosticsHttpServer`) present but not acted on.
    pub ignored_keys: Vec<String>,
}

/// `runCommandsAs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCommandsAs {
    /// `userId`; protobuf's default is 0 (root) when the key is left out.
    pub user_id: u32,
    /// `groupId`, the primary group.
    pub group_id: u32,
    /// `additionalGroupIds`, the supplementary groups.
    pub additional_group_ids: Vec<u32>,
}

/// `runCommandCleaner`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCleaner {
    /// argv of the cleaner; the first element is the program.
    pub arguments: Vec<String>,
}

/// Extension `actionCgroups`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActionCgroupsConfig {
    /// Cgroup to manage, absolute within the cgroup2 mount; `None` means the
    /// cgroup the runner starts in.
    pub parent_path: Option<String>,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a configuration file was rejected. Every message starts with the
/// file; those about one field continue with the field's full path as
/// written in the file (e.g. `grpcServers[0].listenPath`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A problem with the file as a whole.
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },

    /// The file could not be opened.
    #[error("{file}: cannot read the configuration file: {source}")]
    Read { file: PathBuf, source: io::Error },

    /// Jsonnet evaluation failed; `message` is jrsonnet's, with locations.
    #[error("{file}: Jsonnet evaluation failed: {message}")]
    Jsonnet { file: PathBuf, message: String },

    /// A key that bb_runner's schema (plus our extensions) does not have.
    #[error("{file}: {path}: unknown field{}", suggestion_hint(.suggestion))]
    UnknownField {
        file: PathBuf,
        path: String,
        /// A known field whose name is close to the unknown one.
        suggestion: Option<String>,
    },

    /// A field upstream has that rbe-runner does not implement.
    #[error("{file}: {path}: not supported by rbe-runner: {reason}")]
    Unsupported {
        file: PathBuf,
        path: String,
        reason: String,
    },

    /// A field whose value has the wrong type or is out of range.
    #[error("{file}: {path}: {message}")]
    InvalidField {
        file: PathBuf,
        path: String,
        message: String,
    },

    /// A required field that was left out or empty.
    #[error("{file}: {path}: required field is missing: {message}")]
    MissingField {
        file: PathBuf,
        path: String,
        message: String,
    },
}

fn suggestion_hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!(" (did you mean `{name}`?)"),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Evaluates `file` as Jsonnet, with the process environment available
/// through `std.extVar`, and decodes it.
///
/// Environment variables whose name or value is not valid Unicode cannot
/// be Jsonnet strings and are left out.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    load_with_env(file, &env)
}

/// Like [`load`], with `env` as the only variables `std.extVar` can see.
pub fn load_with_env(file: &Path, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let metadata = std::fs::metadata(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    if metadata.is_dir() {
        return Err(ConfigError::Read {
            file: file.to_path_buf(),
            source: io::Error::from(io::ErrorKind::IsADirectory),
        });
    }
    let json = evaluate_jsonnet(file, env)?;
    decode_config(json).map_err(|error| error.into_config_error(file))
}

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
fn evaluate_jsonnet(file: &Path, env: &BTreeMap<String, String>) -> Result<Json, ConfigError> {
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

/// A manifested Jsonnet value. Numbers stay `f64`, as in Jsonnet, so that
/// the decoder (not a serializer) decides what is an integer.
#[derive(Debug, Clone, PartialEq)]
enum Json {
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
    fn describe(&self) -> String {
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

// ---------------------------------------------------------------------------
// Strict protobuf-JSON decoding
// ---------------------------------------------------------------------------

/// A decoding failure at one field; the file is added by
/// [`FieldError::into_config_error`].
#[derive(Debug)]
struct FieldError {
    path: String,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Unknown {
        suggestion: Option<String>,
    },
    Unsupported(String),
    Invalid(String),
    Missing(String),
    /// Not about one field: the document as a whole.
    Document(String),
}

impl FieldError {
    fn invalid(path: &str, message: impl Into<String>) -> Self {
        FieldError {
            path: path.to_owned(),
            problem: Problem::Invalid(message.into()),
        }
    }

    fn unsupported(path: &str, reason: impl Into<String>) -> Self {
        FieldError {
            path: path.to_owned(),
            problem: Problem::Unsupported(reason.into()),
        }
    }

    fn missing(path: &str, message: impl Into<String>) -> Self {
        FieldError {
            path: path.to_owned(),
            problem: Problem::Missing(message.into()),
        }
    }

    fn into_config_error(self, file: &Path) -> ConfigError {
        let file = file.to_path_buf();
        let path = self.path;
        match self.problem {
            Problem::Unknown { suggestion } => ConfigError::UnknownField {
                file,
                path,
                suggestion,
            },
            Problem::Unsupported(reason) => ConfigError::Unsupported { file, path, reason },
            Problem::Invalid(message) => ConfigError::InvalidField {
                file,
                path,
                message,
            },
            Problem::Missing(message) => ConfigError::MissingField {
                file,
                path,
                message,
            },
            Problem::Document(message) => ConfigError::Invalid { file, message },
        }
    }
}

type Decoded<T> = Result<T, FieldError>;

/// The path of key `key` inside the object at `parent`, written the way a
/// reader would look it up: `a.b` for plain names, `a["odd key"]` otherwise.
fn child_path(parent: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key:?}]"),
    }
}

/// protobuf's JSON name for a proto field name: `listen_paths` → `listenPaths`.
fn lower_camel_case(proto_name: &str) -> String {
    let mut out = String::with_capacity(proto_name.len());
    let mut upper_next = false;
    for c in proto_name.chars() {
        if c == '_' {
            upper_next = true;
        } else if upper_next {
            out.push(c.to_ascii_uppercase());
            upper_next = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// One field's value together with the path it was found at.
struct Field {
    path: String,
    value: Json,
}

/// The keys of one protobuf message object, consumed field by field; the
/// keys left over when [`Message::finish`] is called are unknown.
struct Message {
    path: String,
    entries: BTreeMap<String, Json>,
    /// JSON names of every field asked for, for "did you mean" hints.
    known: Vec<String>,
}

impl Message {
    fn new(path: &str, value: Json) -> Decoded<Self> {
        match value {
            Json::Object(entries) => Ok(Message {
                path: path.to_owned(),
                entries,
                known: Vec::new(),
            }),
            other => Err(FieldError::invalid(
                path,
                format!("expected an object, got {}", other.describe()),
            )),
        }
    }

    /// Takes the field with proto name `proto_name`, written either that
    /// way or in lowerCamelCase. `null` counts as not set.
    fn take(&mut self, proto_name: &str) -> Decoded<Option<Field>> {
        let json_name = lower_camel_case(proto_name);
        let camel = self.entries.remove_entry(&json_name);
        let snake = if json_name == proto_name {
            None
        } else {
            self.entries.remove_entry(proto_name)
        };
        self.known.push(json_name.clone());
        let (key, value) = match (camel, snake) {
            (Some(_), Some(_)) => {
                return Err(FieldError::invalid(
                    &child_path(&self.path, &json_name),
                    format!("set twice, as `{json_name}` and as `{proto_name}`; keep one"),
                ));
            }
            (Some(entry), None) | (None, Some(entry)) => entry,
            (None, None) => return Ok(None),
        };
        if value == Json::Null {
            return Ok(None);
        }
        Ok(Some(Field {
            path: child_path(&self.path, &key),
            value,
        }))
    }

    /// Takes a field that upstream has and rbe-runner rejects.
    fn reject(&mut self, proto_name: &str, reason: &str) -> Decoded<()> {
        match self.take(proto_name)? {
            Some(field) => Err(FieldError::unsupported(&field.path, reason)),
            None => Ok(()),
        }
    }

    /// Fails on the first key no `take` asked for.
    fn finish(self) -> Decoded<()> {
        match self.entries.into_keys().next() {
            None => Ok(()),
            Some(key) => {
                let suggestion = suggest(&key, &self.known);
                Err(FieldError {
                    path: child_path(&self.path, &key),
                    problem: Problem::Unknown { suggestion },
                })
            }
        }
    }
}

/// The known name closest to `unknown`, if it is close enough to be a typo.
fn suggest(unknown: &str, known: &[String]) -> Option<String> {
    let normalize = |name: &str| name.replace('_', "").to_ascii_lowercase();
    let unknown = normalize(unknown);
    let allowed = 1 + unknown.len() / 6;
    known
        .iter()
        .map(|name| (edit_distance(&unknown, &normalize(name)), name))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name.clone())
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

impl Field {
    fn type_error(&self, expected: &str) -> FieldError {
        FieldError::invalid(
            &self.path,
            format!("expected {expected}, got {}", self.value.describe()),
        )
    }

    fn string(self) -> Decoded<String> {
        match self.value {
            Json::String(value) => Ok(value),
            _ => Err(self.type_error("a string")),
        }
    }

    /// A string that must not be empty (paths, program names).
    fn non_empty_string(self) -> Decoded<String> {
        let path = self.path.clone();
        let value = self.string()?;
        if value.is_empty() {
            return Err(FieldError::invalid(&path, "must not be empty"));
        }
        Ok(value)
    }

    fn bool(self) -> Decoded<bool> {
        match self.value {
            Json::Bool(value) => Ok(value),
            _ => Err(self.type_error("true or false")),
        }
    }

    /// A protobuf integer of type `type_name` within `[minimum, maximum]`:
    /// a whole number, or (protobuf-JSON) a string of decimal digits.
    fn integer(self, type_name: &str, minimum: i128, maximum: i128) -> Decoded<i128> {
        let expected = format!("{type_name} (a whole number, or one written as a string)");
        let value = match &self.value {
            Json::Number(number) => {
                if number.fract() != 0.0 {
                    return Err(self.type_error(&expected));
                }
                // `as` saturates, and anything saturated is out of range.
                *number as i128
            }
            Json::String(text) => {
                let digits = text.strip_prefix('-').unwrap_or(text);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.type_error(&expected));
                }
                match text.parse::<i128>() {
                    Ok(value) => value,
                    Err(_) => {
                        return Err(FieldError::invalid(
                            &self.path,
                            format!("{text} is out of range for {type_name}"),
                        ));
                    }
                }
            }
            _ => return Err(self.type_error(&expected)),
        };
        if value < minimum || value > maximum {
            return Err(FieldError::invalid(
                &self.path,
                format!("{value} is out of range for {type_name} ({minimum} to {maximum})"),
            ));
        }
        Ok(value)
    }

    fn uint32(self) -> Decoded<u32> {
        let path = self.path.clone();
        let value = self.integer("a uint32", 0, i128::from(u32::MAX))?;
        u32::try_from(value).map_err(|_| FieldError::invalid(&path, "out of range for a uint32"))
    }

    fn int64(self) -> Decoded<i64> {
        let path = self.path.clone();
        let value = self.integer("an int64", i128::from(i64::MIN), i128::from(i64::MAX))?;
        i64::try_from(value).map_err(|_| FieldError::invalid(&path, "out of range for an int64"))
    }

    /// The elements of a repeated field, each with its own path.
    fn list(self) -> Decoded<Vec<Field>> {
        match self.value {
            Json::Array(elements) => elements
                .into_iter()
                .enumerate()
                .map(|(index, value)| {
                    let path = format!("{}[{index}]", self.path);
                    if value == Json::Null {
                        Err(FieldError::invalid(&path, "null is not allowed in a list"))
                    } else {
                        Ok(Field { path, value })
                    }
                })
                .collect(),
            _ => Err(FieldError::invalid(
                &self.path,
                format!("expected a list, got {}", self.value.describe()),
            )),
        }
    }

    fn paths(self) -> Decoded<Vec<PathBuf>> {
        self.list()?
            .into_iter()
            .map(|element| element.non_empty_string().map(PathBuf::from))
            .collect()
    }

    fn uint32s(self) -> Decoded<Vec<u32>> {
        self.list()?.into_iter().map(Field::uint32).collect()
    }

    /// A `map<string, string>`.
    fn string_map(self) -> Decoded<BTreeMap<String, String>> {
        match self.value {
            Json::Object(entries) => entries
                .into_iter()
                .map(|(key, value)| {
                    let field = Field {
                        path: child_path(&self.path, &key),
                        value,
                    };
                    Ok((key, field.string()?))
                })
                .collect(),
            _ => Err(FieldError::invalid(
                &self.path,
                format!(
                    "expected an object of strings, got {}",
                    self.value.describe()
                ),
            )),
        }
    }

    fn message(self) -> Decoded<Message> {
        Message::new(&self.path, self.value)
    }

    fn duration(self) -> Decoded<Duration> {
        let path = self.path.clone();
        let text = match self.value {
            Json::String(text) => text,
            _ => return Err(self.type_error("a duration string such as \"5s\" or \"0.5s\"")),
        };
        parse_duration(&text).map_err(|message| FieldError::invalid(&path, message))
    }
}

/// Decodes the whole document.
fn decode_config(json: Json) -> Decoded<Config> {
    if !matches!(json, Json::Object(_)) {
        return Err(FieldError {
            path: String::new(),
            problem: Problem::Document(format!(
                "the file must evaluate to an object, not {}",
                json.describe()
            )),
        });
    }
    let mut message = Message::new("", json)?;

    let build_directory_path = message
        .take("build_directory_path")?
        .map(Field::string)
        .transpose()?;
    let grpc_servers = match message.take("grpc_servers")? {
        Some(field) => field
            .list()?
            .into_iter()
            .map(decode_grpc_server)
            .collect::<Decoded<Vec<_>>>()?,
        None => Vec::new(),
    };
    let clean_temporary_directories =
        optional(message.take("clean_temporary_directories")?, Field::paths)?;
    let global = match message.take("global")? {
        Some(field) => decode_global(field.message()?)?,
        None => GlobalConfig::default(),
    };
    let set_tmpdir_environment_variable = optional(
        message.take("set_tmpdir_environment_variable")?,
        Field::bool,
    )?;
    if let Some(field) = message.take("temporary_directory_installer")? {
        // A grpc.ClientConfiguration; checking it is an object is enough
        // to know what the user meant before refusing it.
        let path = field.path.clone();
        field.message()?;
        return Err(FieldError::unsupported(
            &path,
            "rbe-runner has no client for a temporary directory installer; \
             use symlinkTemporaryDirectories or cleanTemporaryDirectories instead",
        ));
    }
    let chroot_into_input_root = optional(message.take("chroot_into_input_root")?, Field::bool)?;
    let clean_process_table = optional(message.take("clean_process_table")?, Field::bool)?;
    let readiness_checking_pathnames =
        optional(message.take("readiness_checking_pathnames")?, Field::paths)?;
    let run_commands_as = message
        .take("run_commands_as")?
        .map(|field| decode_run_commands_as(field.message()?))
        .transpose()?;
    let symlink_temporary_directories =
        optional(message.take("symlink_temporary_directories")?, Field::paths)?;
    let run_command_cleaner = match message.take("run_command_cleaner")? {
        Some(field) => {
            let elements = field.list()?;
            let mut arguments = Vec::with_capacity(elements.len());
            for (index, element) in elements.into_iter().enumerate() {
                // The program must be named; later arguments may be empty.
                arguments.push(if index == 0 {
                    element.non_empty_string()?
                } else {
                    element.string()?
                });
            }
            (!arguments.is_empty()).then_some(CommandCleaner { arguments })
        }
        None => None,
    };
    let apple_xcode_developer_directories = optional(
        message.take("apple_xcode_developer_directories")?,
        Field::string_map,
    )?;

    // rbe-runner's extensions.
    let termination_grace_period = match message.take("termination_grace_period")? {
        Some(field) => field.duration()?,
        None => DEFAULT_TERMINATION_GRACE_PERIOD,
    };
    let sample_cgroup_resource_usage =
        optional(message.take("sample_cgroup_resource_usage")?, Field::bool)?;
    let action_cgroups = message
        .take("action_cgroups")?
        .map(|field| decode_action_cgroups(field.message()?))
        .transpose()?;
    let listen_path_mode = message
        .take("listen_path_mode")?
        .map(decode_listen_path_mode)
        .transpose()?;

    // Unknown keys first: a misspelled required field should be reported
    // as the typo it is, not as missing.
    message.finish()?;

    let build_directory_path = match build_directory_path {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => {
            return Err(FieldError::missing(
                "buildDirectoryPath",
                "set it to the directory bb_worker prepares actions in",
            ));
        }
    };
    let has_listener = grpc_servers
        .iter()
        .any(|server| !server.listen_paths.is_empty() || !server.listen_addresses.is_empty());
    if !has_listener {
        return Err(FieldError::missing(
            "grpcServers",
            "no listener is configured; give at least one entry listenPaths (Unix sockets) \
             or listenAddresses (TCP)",
        ));
    }

    Ok(Config {
        build_directory_path,
        grpc_servers,
        clean_temporary_directories,
        global,
        set_tmpdir_environment_variable,
        chroot_into_input_root,
        clean_process_table,
        readiness_checking_pathnames,
        run_commands_as,
        symlink_temporary_directories,
        run_command_cleaner,
        apple_xcode_developer_directories,
        termination_grace_period,
        sample_cgroup_resource_usage,
        action_cgroups,
        listen_path_mode,
    })
}

/// Decodes `field` with `decode`, or gives the protobuf default when unset.
fn optional<T: Default>(
    field: Option<Field>,
    decode: impl FnOnce(Field) -> Decoded<T>,
) -> Decoded<T> {
    field.map_or_else(|| Ok(T::default()), decode)
}

/// Fields of upstream's `grpc.ServerConfiguration` that rbe-runner refuses,
/// with the reason given.
const UNSUPPORTED_SERVER_FIELDS: &[(&str, &str)] = &[
    (
        "tls",
        "TLS is not implemented; bb_worker talks to the runner over a local socket",
    ),
    (
        "keepalive_enforcement_policy",
        "keepalive settings are not implemented",
    ),
    (
        "health_check_service",
        "the grpc.health.v1 service is not served",
    ),
    (
        "initial_window_size_bytes",
        "HTTP/2 window sizes cannot be configured",
    ),
    (
        "initial_conn_window_size_bytes",
        "HTTP/2 window sizes cannot be configured",
    ),
    ("tracing", "OpenTelemetry tracing is not implemented"),
    (
        "keepalive_parameters",
        "keepalive settings are not implemented",
    ),
];

fn decode_grpc_server(field: Field) -> Decoded<GrpcServerConfig> {
    let mut message = field.message()?;
    let listen_addresses = match message.take("listen_addresses")? {
        Some(field) => field
            .list()?
            .into_iter()
            .map(decode_listen_address)
            .collect::<Decoded<Vec<_>>>()?,
        None => Vec::new(),
    };
    let listen_paths = optional(message.take("listen_paths")?, Field::paths)?;
    let has_authentication_policy = match message.take("authentication_policy")? {
        Some(field) => {
            check_authentication_policy(field.message()?)?;
            true
        }
        None => false,
    };
    let maximum_received_message_size_bytes =
        match message.take("maximum_received_message_size_bytes")? {
            Some(field) => {
                let path = field.path.clone();
                match field.int64()? {
                    0 => None,
                    bytes => Some(usize::try_from(bytes).map_err(|_| {
                        FieldError::invalid(&path, format!("must not be negative, got {bytes}"))
                    })?),
                }
            }
            None => None,
        };
    let stop_gracefully = optional(message.take("stop_gracefully")?, Field::bool)?;
    for (name, reason) in UNSUPPORTED_SERVER_FIELDS {
        message.reject(name, reason)?;
    }
    let server_path = message.path.clone();
    message.finish()?;
    if !has_authentication_policy {
        return Err(FieldError::missing(
            &child_path(&server_path, "authenticationPolicy"),
            "bb_runner requires one; rbe-runner accepts `authenticationPolicy: { allow: {} }`",
        ));
    }
    Ok(GrpcServerConfig {
        listen_paths,
        listen_addresses,
        stop_gracefully,
        maximum_received_message_size_bytes,
    })
}

/// A TCP listen address: `host:port`, where the host may be empty (all
/// interfaces, as in Go's `:8991`) or a bracketed IPv6 address.
fn decode_listen_address(field: Field) -> Decoded<String> {
    let path = field.path.clone();
    let address = field.non_empty_string()?;
    let valid_port = address
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.parse::<u16>().is_ok());
    if !valid_port {
        return Err(FieldError::invalid(
            &path,
            format!("{address:?} is not of the form host:port (e.g. \"127.0.0.1:8991\")"),
        ));
    }
    Ok(address)
}

/// Policies of upstream's `grpc.AuthenticationPolicy` oneof other than `allow`.
const OTHER_AUTHENTICATION_POLICIES: &[&str] = &[
    "any",
    "all",
    "deny",
    "tls_client_certificate",
    "jwt",
    "peer_credentials_jmespath_expression",
    "remote",
];

/// Only `{ allow: {} }` is accepted: the runner has no notion of identity,
/// and its socket is protected by file permissions.
fn check_authentication_policy(mut message: Message) -> Decoded<()> {
    let policy_path = message.path.clone();
    let allow = message.take("allow")?;
    let mut others = Vec::new();
    for name in OTHER_AUTHENTICATION_POLICIES {
        if let Some(field) = message.take(name)? {
            others.push(field);
        }
    }
    message.finish()?;
    match (allow, others.len()) {
        (None, 0) => Err(FieldError::missing(
            &policy_path,
            "no policy is set; use `{ allow: {} }`",
        )),
        (Some(_), 1..) | (None, 2..) => Err(FieldError::invalid(
            &policy_path,
            "more than one policy is set, but it is a oneof: set exactly one",
        )),
        (None, _) => Err(FieldError::unsupported(
            &others[0].path,
            "only `allow: {}` is accepted; protect the runner's socket with file permissions",
        )),
        (Some(allow), _) => {
            let allow = allow.message()?;
            match allow.entries.keys().next() {
                Some(key) => Err(FieldError::unsupported(
                    &child_path(&allow.path, key),
                    "authentication metadata is not used by rbe-runner; write `allow: {}`",
                )),
                None => Ok(()),
            }
        }
    }
}

/// Keys of upstream's `global.Configuration` that are accepted and only
/// recorded; `set_umask` is the one rbe-runner acts on.
const IGNORED_GLOBAL_FIELDS: &[&str] = &[
    "tracing",
    "mutex_profile_fraction",
    "prometheus_pushgateway",
    "log_paths",
    "diagnostics_http_server",
    "grpc_forward_and_reuse_metadata",
    "grpc_kubernetes_resolvers",
    "set_resource_limits",
];

fn decode_global(mut message: Message) -> Decoded<GlobalConfig> {
    let set_umask = match message.take("set_umask")? {
        Some(field) => {
            let mut set_umask = field.message()?;
            let umask = match set_umask.take("umask")? {
                Some(field) => {
                    let path = field.path.clone();
                    let umask = field.uint32()?;
                    if umask > 0o777 {
                        return Err(FieldError::invalid(
                            &path,
                            format!("{umask:#o} has bits outside 0o777; write it with std.parseOctal('022') or as decimal"),
                        ));
                    }
                    umask
                }
                None => 0,
            };
            set_umask.finish()?;
            Some(umask)
        }
        None => None,
    };
    let mut ignored_keys = Vec::new();
    for name in IGNORED_GLOBAL_FIELDS {
        if let Some(field) = message.take(name)? {
            ignored_keys.push(field.path);
        }
    }
    message.finish()?;
    Ok(GlobalConfig {
        set_umask,
        ignored_keys,
    })
}

fn decode_run_commands_as(mut message: Message) -> Decoded<RunCommandsAs> {
    let user_id = optional(message.take("user_id")?, Field::uint32)?;
    let group_id = optional(message.take("group_id")?, Field::uint32)?;
    let additional_group_ids = optional(message.take("additional_group_ids")?, Field::uint32s)?;
    message.finish()?;
    Ok(RunCommandsAs {
        user_id,
        group_id,
        additional_group_ids,
    })
}

fn decode_action_cgroups(mut message: Message) -> Decoded<ActionCgroupsConfig> {
    let parent_path = match message.take("parent_path")? {
        Some(field) => {
            let path = field.path.clone();
            let parent = field.string()?;
            if parent.is_empty() {
                None
            } else if !parent.starts_with('/') || parent.split('/').any(|part| part == "..") {
                return Err(FieldError::invalid(
                    &path,
                    format!("{parent:?} must be absolute within the cgroup2 mount (e.g. \"/rbe-runner\"), without `..`"),
                ));
            } else {
                Some(parent)
            }
        }
        None => None,
    };
    message.finish()?;
    Ok(ActionCgroupsConfig { parent_path })
}

/// `listenPathMode`: an octal string such as `'0660'`, or a number (e.g.
/// `std.parseOctal('660')`); permission bits only.
fn decode_listen_path_mode(field: Field) -> Decoded<u32> {
    let path = field.path.clone();
    let mode = match &field.value {
        Json::String(text) => {
            let digits = text.strip_prefix("0o").unwrap_or(text);
            if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return Err(FieldError::invalid(
                    &path,
                    format!("{text:?} is not an octal mode; write it like '0660'"),
                ));
            }
            u32::from_str_radix(digits, 8).unwrap_or(u32::MAX)
        }
        _ => field.uint32()?,
    };
    if mode > 0o777 {
        return Err(FieldError::invalid(
            &path,
            format!("{mode:#o} has bits outside 0o777; give permission bits such as '0660'"),
        ));
    }
    Ok(mode)
}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// The largest duration protobuf's `Duration` can hold: 10,000 years.
const MAXIMUM_DURATION_SECONDS: u64 = 315_576_000_000;

/// Parses a protobuf-JSON `Duration` such as `"5s"`, `"0.5s"` or
/// `"1.000000001s"`: decimal seconds with at most nine fractional digits
/// and an `s` suffix. Negative durations are refused, since every
/// duration rbe-runner reads is a time to wait.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let syntax_error = || {
        format!("{text:?} is not a duration; write seconds with an \"s\" suffix, like \"5s\" or \"0.5s\"")
    };
    let Some(number) = text.strip_suffix('s') else {
        return Err(syntax_error());
    };
    if number.starts_with('-') {
        return Err(format!(
            "{text:?} is negative; durations must be zero or more"
        ));
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|fraction| !all_digits(fraction)) {
        return Err(syntax_error());
    }
    let seconds = whole
        .parse::<u64>()
        .ok()
        .filter(|seconds| *seconds <= MAXIMUM_DURATION_SECONDS)
        .ok_or_else(|| {
            format!("{text:?} is longer than protobuf's Duration allows (10,000 years)")
        })?;
    let nanoseconds = match fraction {
        None => 0,
        Some(fraction) if fraction.len() > 9 => {
            return Err(format!(
                "{text:?} has more than nine fractional digits (nanoseconds)"
            ));
        }
        Some(fraction) => {
            let digits: u32 = fraction.parse().map_err(|_| syntax_error())?;
            digits * 10u32.pow(9 - fraction.len() as u32)
        }
    };
    Ok(Duration::new(seconds, nanoseconds))
}

/// Writes `duration` the way [`parse_duration`] reads it: `5s`, `0.5s`.
pub fn format_duration(duration: Duration) -> String {
    let nanoseconds = duration.subsec_nanos();
    if nanoseconds == 0 {
        return format!("{}s", duration.as_secs());
    }
    let fraction = format!("{nanoseconds:09}");
    format!("{}.{}s", duration.as_secs(), fraction.trim_end_matches('0'))
}

// ---------------------------------------------------------------------------
// What `check-config` prints
// ---------------------------------------------------------------------------

/// A list of displayable items as `["a", "b"]`.
fn quoted_list<T: AsRef<Path>>(items: &[T]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| format!("{:?}", item.as_ref().display().to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

impl fmt::Display for Config {
    /// Every field, defaults included, under the names used in the file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "buildDirectoryPath: {:?}",
            self.build_directory_path.display().to_string()
        )?;
        writeln!(f, "grpcServers:")?;
        for (index, server) in self.grpc_servers.iter().enumerate() {
            writeln!(f, "  [{index}]:")?;
            writeln!(f, "    listenPaths: {}", quoted_list(&server.listen_paths))?;
            let addresses: Vec<String> = server
                .listen_addresses
                .iter()
                .map(|address| format!("{address:?}"))
                .collect();
            writeln!(f, "    listenAddresses: [{}]", addresses.join(", "))?;
            writeln!(f, "    authenticationPolicy: allow")?;
            writeln!(f, "    stopGracefully: {}", server.stop_gracefully)?;
            match server.maximum_received_message_size_bytes {
                Some(bytes) => writeln!(f, "    maximumReceivedMessageSizeBytes: {bytes}")?,
                None => writeln!(f, "    maximumReceivedMessageSizeBytes: default (4 MiB)")?,
            }
        }
        writeln!(
            f,
            "cleanTemporaryDirectories: {}",
            quoted_list(&self.clean_temporary_directories)
        )?;
        writeln!(f, "global:")?;
        match self.global.set_umask {
            Some(umask) => writeln!(f, "  setUmask: {{ umask: {umask:#05o} }}")?,
            None => writeln!(f, "  setUmask: not set (the inherited umask is kept)")?,
        }
        if self.global.ignored_keys.is_empty() {
            writeln!(f, "  ignored: none")?;
        } else {
            writeln!(f, "  ignored: {}", self.global.ignored_keys.join(", "))?;
        }
        writeln!(
            f,
            "setTmpdirEnvironmentVariable: {}",
            self.set_tmpdir_environment_variable
        )?;
        writeln!(f, "chrootIntoInputRoot: {}", self.chroot_into_input_root)?;
        writeln!(f, "cleanProcessTable: {}", self.clean_process_table)?;
        writeln!(
            f,
            "readinessCheckingPathnames: {}",
            quoted_list(&self.readiness_checking_pathnames)
        )?;
        match &self.run_commands_as {
            Some(identity) => {
                let groups: Vec<String> = identity
                    .additional_group_ids
                    .iter()
                    .map(u32::to_string)
                    .collect();
                writeln!(
                    f,
                    "runCommandsAs: {{ userId: {}, groupId: {}, additionalGroupIds: [{}] }}",
                    identity.user_id,
                    identity.group_id,
                    groups.join(", ")
                )?;
            }
            None => writeln!(
                f,
                "runCommandsAs: not set (actions run as the runner's user)"
            )?,
        }
        writeln!(
            f,
            "symlinkTemporaryDirectories: {}",
            quoted_list(&self.symlink_temporary_directories)
        )?;
        match &self.run_command_cleaner {
            Some(cleaner) => {
                let arguments: Vec<String> = cleaner
                    .arguments
                    .iter()
                    .map(|argument| format!("{argument:?}"))
                    .collect();
                writeln!(f, "runCommandCleaner: [{}]", arguments.join(", "))?;
            }
            None => writeln!(f, "runCommandCleaner: not set")?,
        }
        let xcode = &self.apple_xcode_developer_directories;
        if xcode.is_empty() {
            writeln!(f, "appleXcodeDeveloperDirectories: none")?;
        } else {
            let entries: Vec<String> = xcode
                .iter()
                .map(|(version, directory)| format!("{version:?}: {directory:?}"))
                .collect();
            writeln!(
                f,
                "appleXcodeDeveloperDirectories: {{ {} }} (ignored on Linux)",
                entries.join(", ")
            )?;
        }
        writeln!(
            f,
            "terminationGracePeriod: {}",
            format_duration(self.termination_grace_period)
        )?;
        writeln!(
            f,
            "sampleCgroupResourceUsage: {}",
            self.sample_cgroup_resource_usage
        )?;
        match &self.action_cgroups {
            Some(ActionCgroupsConfig {
                parent_path: Some(parent),
            }) => writeln!(f, "actionCgroups: {{ parentPath: {parent:?} }}"),
            Some(ActionCgroupsConfig { parent_path: None }) => writeln!(
                f,
                "actionCgroups: {{ parentPath: not set (the runner's own cgroup) }}"
            ),
            None => writeln!(f, "actionCgroups: not set"),
        }?;
        match self.listen_path_mode {
            Some(mode) => writeln!(f, "listenPathMode: '{mode:04o}'"),
            None => writeln!(f, "listenPathMode: not set (what the umask leaves of 0777)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration that decodes; tests add or override one thing.
    const MINIMAL: &str = "buildDirectoryPath: '/worker/build',
        grpcServers: [{ listenPaths: ['/worker/runner'], authenticationPolicy: { allow: {} } }]";

    /// Writes `files` (name → contents) into a fresh directory and loads
    /// the first one with `env`.
    fn load_files(
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        for (name, contents) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create fixture directory");
            }
            std::fs::write(&path, contents).expect("write fixture");
        }
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let result = load_with_env(&dir.path().join(files[0].0), &env);
        (dir, result)
    }

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        load_files(&[("runner.jsonnet", text)], &[]).1
    }

    /// Loads `{ MINIMAL } + { extra }`, so `extra` may override MINIMAL.
    fn load_with(extra: &str) -> Result<Config, ConfigError> {
        load_text(&format!("{{ {MINIMAL} }} + {{ {extra} }}"))
    }

    /// The message of the error `text` must produce.
    fn error_of(text: &str) -> String {
        match load_text(text) {
            Ok(config) => panic!("expected an error, but it decoded:\n{config}"),
            Err(error) => error.to_string(),
        }
    }

    /// Asserts `message` contains every one of `parts`.
    #[track_caller]
    fn assert_mentions(message: &str, parts: &[&str]) {
        for part in parts {
            assert!(message.contains(part), "expected {part:?} in:\n{message}");
        }
    }

    /// A one-server configuration whose server entry is `server`.
    fn with_server(server: &str) -> String {
        format!("{{ buildDirectoryPath: '/b', grpcServers: [{server}] }}")
    }

    // Defaults and field spellings --------------------------------------

    /// Leaving a field out must mean protobuf's default, as upstream does.
    #[test]
    fn missing_optional_fields_take_protobuf_defaults() {
        let config = load_with("").expect("minimal config decodes");
        assert_eq!(config.build_directory_path, PathBuf::from("/worker/build"));
        assert_eq!(
            config.grpc_servers,
            vec![GrpcServerConfig {
                listen_paths: vec![PathBuf::from("/worker/runner")],
                ..GrpcServerConfig::default()
            }]
        );
        assert!(config.clean_temporary_directories.is_empty());
        assert_eq!(config.global, GlobalConfig::default());
        assert!(!config.set_tmpdir_environment_variable);
        assert!(!config.chroot_into_input_root);
        assert!(!config.clean_process_table);
        assert!(config.readiness_checking_pathnames.is_empty());
        assert_eq!(config.run_commands_as, None);
        assert!(config.symlink_temporary_directories.is_empty());
        assert_eq!(config.run_command_cleaner, None);
        assert!(config.apple_xcode_developer_directories.is_empty());
        assert_eq!(config.termination_grace_period, Duration::from_secs(5));
        assert!(!config.sample_cgroup_resource_usage);
        assert_eq!(config.action_cgroups, None);
        assert_eq!(config.listen_path_mode, None);
    }

    /// listenPathMode is what guards the socket, so a value that is not a
    /// mode must stop startup rather than be read as something else.
    #[test]
    fn listen_path_mode_is_an_octal_string_or_a_number() {
        for (text, mode) in [
            ("'0660'", 0o660),
            ("'600'", 0o600),
            ("'0o640'", 0o640),
            ("432", 0o660),
            ("std.parseOctal('0600')", 0o600),
        ] {
            let config = load_with(&format!("listenPathMode: {text}")).unwrap();
            assert_eq!(config.listen_path_mode, Some(mode), "{text}");
            assert!(config
                .to_string()
                .contains(&format!("listenPathMode: '{mode:04o}'")));
        }
        let snake = load_with("listen_path_mode: '0660'").unwrap();
        assert_eq!(snake.listen_path_mode, Some(0o660));
        for (text, expected) in [
            ("'0668'", "not an octal mode"),
            ("'rw-rw----'", "not an octal mode"),
            ("'4755'", "bits outside 0o777"),
            ("-1", "out of range"),
            ("true", "expected"),
        ] {
            let message = error_of(&format!("{{ {MINIMAL}, listenPathMode: {text} }}"));
            assert_mentions(&message, &["listenPathMode", expected]);
        }
    }

    /// protobuf-JSON `null` means "not set" for every kind of field.
    #[test]
    fn null_means_not_set() {
        let config = load_with(
            "global: null, runCommandsAs: null, cleanTemporaryDirectories: null,
             terminationGracePeriod: null, temporaryDirectoryInstaller: null",
        )
        .expect("nulls decode");
        assert_eq!(config.global, GlobalConfig::default());
        assert_eq!(config.run_commands_as, None);
        assert_eq!(
            config.termination_grace_period,
            DEFAULT_TERMINATION_GRACE_PERIOD
        );
    }

    const EVERY_FIELD_CAMEL: &str = "{
        buildDirectoryPath: '/worker/build',
        grpcServers: [{
            listenPaths: ['/worker/runner'],
            listenAddresses: ['127.0.0.1:8991', ':8992', '[::1]:8993'],
            authenticationPolicy: { allow: {} },
            stopGracefully: true,
            maximumReceivedMessageSizeBytes: '16777216',
        }],
        cleanTemporaryDirectories: ['/tmp', '/var/tmp'],
        global: { setUmask: { umask: 18 } },
        setTmpdirEnvironmentVariable: true,
        chrootIntoInputRoot: true,
        cleanProcessTable: true,
        readinessCheckingPathnames: ['/worker/build'],
        runCommandsAs: { userId: 1000, groupId: '1001', additionalGroupIds: [10, '20'] },
        symlinkTemporaryDirectories: ['/tmp'],
        runCommandCleaner: ['/usr/bin/docker-cleanup', '--all'],
        appleXcodeDeveloperDirectories: { '14.2.0.14C18': '/Applications/Xcode14.app/Contents/Developer' },
        terminationGracePeriod: '0.25s',
        sampleCgroupResourceUsage: true,
        actionCgroups: { parentPath: '/rbe-runner' },
    }";

    const EVERY_FIELD_SNAKE: &str = "{
        build_directory_path: '/worker/build',
        grpc_servers: [{
            listen_paths: ['/worker/runner'],
            listen_addresses: ['127.0.0.1:8991', ':8992', '[::1]:8993'],
            authentication_policy: { allow: {} },
            stop_gracefully: true,
            maximum_received_message_size_bytes: 16777216,
        }],
        clean_temporary_directories: ['/tmp', '/var/tmp'],
        global: { set_umask: { umask: '18' } },
        set_tmpdir_environment_variable: true,
        chroot_into_input_root: true,
        clean_process_table: true,
        readiness_checking_pathnames: ['/worker/build'],
        run_commands_as: { user_id: '1000', group_id: 1001, additional_group_ids: ['10', 20] },
        symlink_temporary_directories: ['/tmp'],
        run_command_cleaner: ['/usr/bin/docker-cleanup', '--all'],
        apple_xcode_developer_directories: { '14.2.0.14C18': '/Applications/Xcode14.app/Contents/Developer' },
        termination_grace_period: '0.25s',
        sample_cgroup_resource_usage: true,
        action_cgroups: { parent_path: '/rbe-runner' },
    }";

    /// Upstream files use lowerCamelCase, but protobuf-JSON also accepts
    /// the proto names; both must decode to the same thing.
    #[test]
    fn camel_case_and_snake_case_decode_the_same() {
        let camel = load_text(EVERY_FIELD_CAMEL).expect("camelCase decodes");
        let snake = load_text(EVERY_FIELD_SNAKE).expect("snake_case decodes");
        assert_eq!(camel, snake);

        assert_eq!(
            camel.grpc_servers,
            vec![GrpcServerConfig {
                listen_paths: vec![PathBuf::from("/worker/runner")],
                listen_addresses: vec![
                    "127.0.0.1:8991".into(),
                    ":8992".into(),
                    "[::1]:8993".into()
                ],
                stop_gracefully: true,
                maximum_received_message_size_bytes: Some(16 << 20),
            }]
        );
        assert_eq!(
            camel.clean_temporary_directories,
            vec![PathBuf::from("/tmp"), PathBuf::from("/var/tmp")]
        );
        assert_eq!(camel.global.set_umask, Some(0o022));
        assert!(camel.set_tmpdir_environment_variable);
        assert!(camel.chroot_into_input_root);
        assert!(camel.clean_process_table);
        assert_eq!(
            camel.readiness_checking_pathnames,
            vec![PathBuf::from("/worker/build")]
        );
        assert_eq!(
            camel.run_commands_as,
            Some(RunCommandsAs {
                user_id: 1000,
                group_id: 1001,
                additional_group_ids: vec![10, 20],
            })
        );
        assert_eq!(
            camel.symlink_temporary_directories,
            vec![PathBuf::from("/tmp")]
        );
        assert_eq!(
            camel.run_command_cleaner,
            Some(CommandCleaner {
                arguments: vec!["/usr/bin/docker-cleanup".into(), "--all".into()],
            })
        );
        assert_eq!(
            camel
                .apple_xcode_developer_directories
                .get("14.2.0.14C18")
                .map(String::as_str),
            Some("/Applications/Xcode14.app/Contents/Developer")
        );
        assert_eq!(camel.termination_grace_period, Duration::from_millis(250));
        assert!(camel.sample_cgroup_resource_usage);
        assert_eq!(
            camel.action_cgroups,
            Some(ActionCgroupsConfig {
                parent_path: Some("/rbe-runner".into()),
            })
        );
    }

    /// Writing one field in both spellings is ambiguous, so it is refused.
    #[test]
    fn both_spellings_of_one_field_are_refused() {
        let message = error_of(&format!(
            "{{ {MINIMAL}, clean_process_table: true, cleanProcessTable: false }}"
        ));
        assert_mentions(
            &message,
            &[
                "runner.jsonnet",
                "cleanProcessTable",
                "clean_process_table",
                "set twice",
            ],
        );
    }

    // Jsonnet -------------------------------------------------------------

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

    #[test]
    fn top_level_must_be_an_object() {
        let error = load_text("[1, 2]").expect_err("a list is not a config");
        assert!(matches!(error, ConfigError::Invalid { .. }), "{error:?}");
        assert_mentions(
            &error.to_string(),
            &["runner.jsonnet", "must evaluate to an object"],
        );
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let error =
            load(Path::new("/nonexistent/rbe-runner/config.jsonnet")).expect_err("no such file");
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        assert_mentions(
            &error.to_string(),
            &["/nonexistent/rbe-runner/config.jsonnet"],
        );
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

    // Strictness ----------------------------------------------------------

    /// A typo must never silently become a default, at any depth.
    #[test]
    fn unknown_keys_are_errors_at_every_depth() {
        let cases = [
            (
                format!("{{ {MINIMAL}, buildDirectoryPth: '/x' }}"),
                "buildDirectoryPth",
            ),
            (
                with_server("{ listenPath: ['/s'], authenticationPolicy: { allow: {} } }"),
                "grpcServers[0].listenPath",
            ),
            (
                with_server(
                    "{ listenPaths: ['/s'], authenticationPolicy: { allow: {}, allowed: {} } }",
                ),
                "grpcServers[0].authenticationPolicy.allowed",
            ),
            (
                format!("{{ {MINIMAL}, global: {{ diagnosticHttpServer: {{}} }} }}"),
                "global.diagnosticHttpServer",
            ),
            (
                format!("{{ {MINIMAL}, global: {{ setUmask: {{ mask: 18 }} }} }}"),
                "global.setUmask.mask",
            ),
            (
                format!("{{ {MINIMAL}, runCommandsAs: {{ uid: 1000 }} }}"),
                "runCommandsAs.uid",
            ),
            (
                format!("{{ {MINIMAL}, actionCgroups: {{ parent: '/x' }} }}"),
                "actionCgroups.parent",
            ),
            (format!("{{ {MINIMAL}, 'odd key': true }}"), "[\"odd key\"]"),
        ];
        for (text, path) in cases {
            let error = load_text(&text).expect_err(path);
            assert!(
                matches!(error, ConfigError::UnknownField { .. }),
                "{path}: {error:?}"
            );
            assert_mentions(
                &error.to_string(),
                &["runner.jsonnet", path, "unknown field"],
            );
        }
    }

    /// The second server's typo is reported with its own index.
    #[test]
    fn unknown_key_paths_carry_list_indexes() {
        let text = "{ buildDirectoryPath: '/b', grpcServers: [
            { listenPaths: ['/a'], authenticationPolicy: { allow: {} } },
            { listenPaths: ['/b'], authenticationPolicy: { allow: {} }, stopGracefuly: true },
        ] }";
        assert_mentions(
            &error_of(text),
            &[
                "grpcServers[1].stopGracefuly",
                "did you mean `stopGracefully`?",
            ],
        );
    }

    #[test]
    fn typos_get_a_suggestion() {
        let message = error_of(&with_server(
            "{ listenPath: ['/s'], authenticationPolicy: { allow: {} } }",
        ));
        assert_mentions(&message, &["did you mean `listenPaths`?"]);
        let message = error_of(&format!("{{ {MINIMAL}, completelyDifferent: 1 }}"));
        assert!(!message.contains("did you mean"), "{message}");
    }

    /// A misspelled required field is reported as the typo, not as missing.
    #[test]
    fn typo_of_a_required_field_is_reported_as_unknown() {
        let message = error_of(
            "{ buildDirectoryPth: '/b', grpcServers: [{ listenPaths: ['/s'], authenticationPolicy: { allow: {} } }] }",
        );
        assert_mentions(
            &message,
            &["buildDirectoryPth", "did you mean `buildDirectoryPath`?"],
        );
    }

    /// Upstream fields the runner cannot honour fail loudly, naming the key.
    #[test]
    fn unsupported_server_fields_are_refused() {
        let cases = [
            ("tls: { serverCertificate: 'x' }", "grpcServers[0].tls"),
            (
                "keepaliveEnforcementPolicy: { minTime: '10s' }",
                "grpcServers[0].keepaliveEnforcementPolicy",
            ),
            (
                "health_check_service: 'runner'",
                "grpcServers[0].health_check_service",
            ),
            (
                "initialWindowSizeBytes: 65536",
                "grpcServers[0].initialWindowSizeBytes",
            ),
            (
                "initialConnWindowSizeBytes: 65536",
                "grpcServers[0].initialConnWindowSizeBytes",
            ),
            ("tracing: {}", "grpcServers[0].tracing"),
            (
                "keepaliveParameters: { time: '1s' }",
                "grpcServers[0].keepaliveParameters",
            ),
        ];
        for (field, path) in cases {
            let text = with_server(&format!(
                "{{ listenPaths: ['/s'], authenticationPolicy: {{ allow: {{}} }}, {field} }}"
            ));
            let error = load_text(&text).expect_err(path);
            assert!(
                matches!(error, ConfigError::Unsupported { .. }),
                "{path}: {error:?}"
            );
            assert_mentions(
                &error.to_string(),
                &["runner.jsonnet", path, "not supported by rbe-runner"],
            );
        }
    }

    #[test]
    fn temporary_directory_installer_is_refused() {
        let error =
            load_with("temporaryDirectoryInstaller: { address: 'unix:///worker/installer' }")
                .expect_err("not supported");
        assert!(
            matches!(error, ConfigError::Unsupported { .. }),
            "{error:?}"
        );
        assert_mentions(
            &error.to_string(),
            &["temporaryDirectoryInstaller", "not supported"],
        );
        assert_mentions(
            &error_of(&format!(
                "{{ {MINIMAL}, temporaryDirectoryInstaller: 'x' }}"
            )),
            &["temporaryDirectoryInstaller", "expected an object"],
        );
    }

    /// Only `allow: {}` makes sense for a runner; other policies would give
    /// a false sense of protection.
    #[test]
    fn authentication_policies_other_than_allow_are_refused() {
        let cases = [
            (
                "{ deny: 'go away' }",
                "grpcServers[0].authenticationPolicy.deny",
                "not supported",
            ),
            (
                "{ any: { policies: [] } }",
                "grpcServers[0].authenticationPolicy.any",
                "not supported",
            ),
            (
                "{ jwt: {} }",
                "grpcServers[0].authenticationPolicy.jwt",
                "not supported",
            ),
            (
                "{ tls_client_certificate: {} }",
                "grpcServers[0].authenticationPolicy.tls_client_certificate",
                "not supported",
            ),
            (
                "{ allow: { public: { user: 'x' } } }",
                "grpcServers[0].authenticationPolicy.allow.public",
                "not supported",
            ),
            (
                "{ allow: {}, deny: 'x' }",
                "grpcServers[0].authenticationPolicy",
                "oneof",
            ),
            (
                "{}",
                "grpcServers[0].authenticationPolicy",
                "no policy is set",
            ),
            (
                "'allow'",
                "grpcServers[0].authenticationPolicy",
                "expected an object",
            ),
        ];
        for (policy, path, words) in cases {
            let text = with_server(&format!(
                "{{ listenPaths: ['/s'], authenticationPolicy: {policy} }}"
            ));
            assert_mentions(&error_of(&text), &["runner.jsonnet", path, words]);
        }
        let text = with_server("{ listenPaths: ['/s'] }");
        let error = load_text(&text).expect_err("policy is required");
        assert!(
            matches!(error, ConfigError::MissingField { .. }),
            "{error:?}"
        );
        assert_mentions(
            &error.to_string(),
            &["grpcServers[0].authenticationPolicy", "allow"],
        );
    }

    // Values --------------------------------------------------------------

    /// Wrong types and out-of-range numbers name the field they are in.
    #[test]
    fn bad_values_name_their_path() {
        let cases = [
            (
                "buildDirectoryPath: 5",
                "buildDirectoryPath",
                "expected a string",
            ),
            (
                "cleanProcessTable: 'yes'",
                "cleanProcessTable",
                "expected true or false",
            ),
            (
                "cleanTemporaryDirectories: '/tmp'",
                "cleanTemporaryDirectories",
                "expected a list",
            ),
            (
                "cleanTemporaryDirectories: ['/tmp', 3]",
                "cleanTemporaryDirectories[1]",
                "expected a string",
            ),
            (
                "cleanTemporaryDirectories: ['']",
                "cleanTemporaryDirectories[0]",
                "must not be empty",
            ),
            (
                "readinessCheckingPathnames: [null]",
                "readinessCheckingPathnames[0]",
                "null",
            ),
            (
                "runCommandsAs: { userId: -1 }",
                "runCommandsAs.userId",
                "out of range",
            ),
            (
                "runCommandsAs: { userId: '-1' }",
                "runCommandsAs.userId",
                "out of range",
            ),
            (
                "runCommandsAs: { userId: 1.5 }",
                "runCommandsAs.userId",
                "whole number",
            ),
            (
                "runCommandsAs: { groupId: 4294967296 }",
                "runCommandsAs.groupId",
                "out of range",
            ),
            (
                "runCommandsAs: { groupId: 'abc' }",
                "runCommandsAs.groupId",
                "uint32",
            ),
            (
                "runCommandsAs: { additionalGroupIds: [1, -2] }",
                "runCommandsAs.additionalGroupIds[1]",
                "out of range",
            ),
            ("runCommandsAs: 1000", "runCommandsAs", "expected an object"),
            (
                "runCommandCleaner: ['']",
                "runCommandCleaner[0]",
                "must not be empty",
            ),
            (
                "runCommandCleaner: 'cleanup'",
                "runCommandCleaner",
                "expected a list",
            ),
            (
                "appleXcodeDeveloperDirectories: { '14': 14 }",
                "appleXcodeDeveloperDirectories[\"14\"]",
                "expected a string",
            ),
            (
                "global: { setUmask: { umask: 4096 } }",
                "global.setUmask.umask",
                "0o777",
            ),
            (
                "global: { setUmask: 18 }",
                "global.setUmask",
                "expected an object",
            ),
            ("global: []", "global", "expected an object"),
            (
                "sampleCgroupResourceUsage: 1",
                "sampleCgroupResourceUsage",
                "true or false",
            ),
            (
                "actionCgroups: { parentPath: 'relative' }",
                "actionCgroups.parentPath",
                "absolute",
            ),
            (
                "actionCgroups: { parentPath: '/a/../b' }",
                "actionCgroups.parentPath",
                "absolute",
            ),
            (
                "terminationGracePeriod: 5",
                "terminationGracePeriod",
                "duration",
            ),
            (
                "terminationGracePeriod: '-1s'",
                "terminationGracePeriod",
                "negative",
            ),
            (
                "terminationGracePeriod: '5 seconds'",
                "terminationGracePeriod",
                "not a duration",
            ),
        ];
        for (field, path, words) in cases {
            let error = load_with(field).expect_err(field);
            assert!(
                matches!(error, ConfigError::InvalidField { .. }),
                "{field}: {error:?}"
            );
            assert_mentions(&error.to_string(), &["runner.jsonnet", path, words]);
        }
    }

    #[test]
    fn bad_server_values_name_their_path() {
        let cases = [
            (
                "listenAddresses: ['localhost']",
                "grpcServers[0].listenAddresses[0]",
                "host:port",
            ),
            (
                "listenAddresses: ['127.0.0.1:99999']",
                "grpcServers[0].listenAddresses[0]",
                "host:port",
            ),
            (
                "maximumReceivedMessageSizeBytes: -1",
                "grpcServers[0].maximumReceivedMessageSizeBytes",
                "negative",
            ),
            (
                "maximumReceivedMessageSizeBytes: '1e6'",
                "grpcServers[0].maximumReceivedMessageSizeBytes",
                "int64",
            ),
            (
                "maximumReceivedMessageSizeBytes: '99999999999999999999'",
                "grpcServers[0].maximumReceivedMessageSizeBytes",
                "out of range",
            ),
            (
                "stopGracefully: 'true'",
                "grpcServers[0].stopGracefully",
                "true or false",
            ),
        ];
        for (field, path, words) in cases {
            let text = with_server(&format!(
                "{{ listenPaths: ['/s'], authenticationPolicy: {{ allow: {{}} }}, {field} }}"
            ));
            assert_mentions(&error_of(&text), &["runner.jsonnet", path, words]);
        }
    }

    /// protobuf-JSON writes int64 as a string; both forms are accepted, and
    /// zero means the default.
    #[test]
    fn message_size_accepts_numbers_and_strings() {
        for (value, expected) in [
            ("1048576", Some(1 << 20)),
            ("'1048576'", Some(1 << 20)),
            ("0", None),
        ] {
            let text = with_server(&format!(
                "{{ listenPaths: ['/s'], authenticationPolicy: {{ allow: {{}} }}, maximumReceivedMessageSizeBytes: {value} }}"
            ));
            let config = load_text(&text).expect(value);
            assert_eq!(
                config.grpc_servers[0].maximum_received_message_size_bytes, expected,
                "{value}"
            );
        }
    }

    #[test]
    fn an_empty_cleaner_list_means_no_cleaner() {
        let config = load_with("runCommandCleaner: []").expect("decodes");
        assert_eq!(config.run_command_cleaner, None);
    }

    #[test]
    fn an_empty_action_cgroups_object_enables_them_in_place() {
        let config = load_with("actionCgroups: {}").expect("decodes");
        assert_eq!(
            config.action_cgroups,
            Some(ActionCgroupsConfig { parent_path: None })
        );
    }

    // Required fields -----------------------------------------------------

    #[test]
    fn build_directory_path_is_required() {
        for text in [
            "{ grpcServers: [{ listenPaths: ['/s'], authenticationPolicy: { allow: {} } }] }",
            "{ buildDirectoryPath: '', grpcServers: [{ listenPaths: ['/s'], authenticationPolicy: { allow: {} } }] }",
        ] {
            let error = load_text(text).expect_err(text);
            assert!(matches!(error, ConfigError::MissingField { .. }), "{error:?}");
            assert_mentions(&error.to_string(), &["runner.jsonnet", "buildDirectoryPath", "missing"]);
        }
    }

    /// A runner nobody can reach is a configuration mistake.
    #[test]
    fn at_least_one_listener_is_required() {
        for servers in [
            "[]",
            "[{ listenPaths: [], authenticationPolicy: { allow: {} } }]",
        ] {
            let error = load_text(&format!(
                "{{ buildDirectoryPath: '/b', grpcServers: {servers} }}"
            ))
            .expect_err(servers);
            assert!(
                matches!(error, ConfigError::MissingField { .. }),
                "{error:?}"
            );
            assert_mentions(
                &error.to_string(),
                &["grpcServers", "listenPaths", "listenAddresses"],
            );
        }
        let error = load_text("{ buildDirectoryPath: '/b' }").expect_err("no servers at all");
        assert_mentions(&error.to_string(), &["grpcServers", "no listener"]);
    }

    // global --------------------------------------------------------------

    /// Upstream's other global options are accepted but recorded, so that
    /// startup can say once that they have no effect.
    #[test]
    fn global_keys_other_than_set_umask_are_recorded() {
        let config = load_with(
            "global: {
                diagnosticsHttpServer: { httpServers: [{ listenAddresses: [':9987'] }], enablePrometheus: true },
                log_paths: ['/var/log/runner.log'],
                tracing: { backends: [] },
                mutexProfileFraction: 1,
                prometheusPushgateway: { url: 'http://pushgateway' },
                grpcForwardAndReuseMetadata: ['authorization'],
                grpcKubernetesResolvers: {},
                setResourceLimits: { NOFILE: { softLimit: 1024 } },
                setUmask: {},
            }",
        )
        .expect("decodes");
        assert_eq!(
            config.global.set_umask,
            Some(0),
            "an empty setUmask is umask 0, as in protobuf"
        );
        assert_eq!(
            config.global.ignored_keys,
            vec![
                "global.tracing",
                "global.mutexProfileFraction",
                "global.prometheusPushgateway",
                "global.log_paths",
                "global.diagnosticsHttpServer",
                "global.grpcForwardAndReuseMetadata",
                "global.grpcKubernetesResolvers",
                "global.setResourceLimits",
            ]
        );
    }

    // Durations -----------------------------------------------------------

    #[test]
    fn parse_duration_accepts_protobuf_json_durations() {
        let cases = [
            ("0s", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("0.5s", Duration::from_millis(500)),
            ("1.000000001s", Duration::new(1, 1)),
            ("3.25s", Duration::from_millis(3250)),
            ("007s", Duration::from_secs(7)),
            ("315576000000s", Duration::from_secs(315_576_000_000)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn parse_duration_refuses_bad_syntax_and_negatives() {
        let cases = [
            ("", "not a duration"),
            ("5", "not a duration"),
            ("5m", "not a duration"),
            ("s", "not a duration"),
            (".5s", "not a duration"),
            ("5.s", "not a duration"),
            ("+5s", "not a duration"),
            (" 5s", "not a duration"),
            ("1.5.5s", "not a duration"),
            ("1e3s", "not a duration"),
            ("-1s", "negative"),
            ("-0.5s", "negative"),
            ("1.0000000001s", "nine fractional digits"),
            ("315576000001s", "10,000 years"),
            ("99999999999999999999999s", "10,000 years"),
        ];
        for (text, words) in cases {
            let message = parse_duration(text).expect_err(text);
            assert!(message.contains(words), "{text:?}: {message}");
        }
    }

    #[test]
    fn format_duration_round_trips() {
        for text in ["0s", "5s", "0.5s", "1.000000001s", "12.34s"] {
            let duration = parse_duration(text).expect(text);
            assert_eq!(format_duration(duration), text);
        }
    }

    // Display -------------------------------------------------------------

    /// `check-config` prints every field, defaults included.
    #[test]
    fn display_lists_every_field() {
        let summary = load_with("").expect("decodes").to_string();
        assert_mentions(
            &summary,
            &[
                "buildDirectoryPath: \"/worker/build\"",
                "listenPaths: [\"/worker/runner\"]",
                "listenAddresses: []",
                "authenticationPolicy: allow",
                "stopGracefully: false",
                "maximumReceivedMessageSizeBytes: default",
                "cleanTemporaryDirectories: []",
                "setUmask: not set",
                "setTmpdirEnvironmentVariable: false",
                "chrootIntoInputRoot: false",
                "cleanProcessTable: false",
                "readinessCheckingPathnames: []",
                "runCommandsAs: not set",
                "symlinkTemporaryDirectories: []",
                "runCommandCleaner: not set",
                "appleXcodeDeveloperDirectories: none",
                "terminationGracePeriod: 5s",
                "sampleCgroupResourceUsage: false",
                "actionCgroups: not set",
            ],
        );
        let summary = load_text(EVERY_FIELD_CAMEL).expect("decodes").to_string();
        assert_mentions(
            &summary,
            &[
                "setUmask: { umask: 0o022 }",
                "runCommandsAs: { userId: 1000, groupId: 1001, additionalGroupIds: [10, 20] }",
                "runCommandCleaner: [\"/usr/bin/docker-cleanup\", \"--all\"]",
                "terminationGracePeriod: 0.25s",
                "actionCgroups: { parentPath: \"/rbe-runner\" }",
                "maximumReceivedMessageSizeBytes: 16777216",
            ],
        );
    }

    // The example configurations ------------------------------------------

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name)
    }

    /// Variables the examples read through `std.extVar`.
    fn example_env() -> BTreeMap<String, String> {
        BTreeMap::from([("POD_NAME".to_string(), "runner-0".to_string())])
    }

    /// Every file shipped in config/ must load, so examples cannot rot.
    #[test]
    fn every_example_config_loads() {
        let entries = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"))
            .expect("config/ exists");
        let mut loaded = 0;
        for entry in entries {
            let path = entry.expect("read config/").path();
            if path
                .extension()
                .is_some_and(|extension| extension == "jsonnet")
            {
                load_with_env(&path, &example_env()).unwrap_or_else(|error| panic!("{error}"));
                loaded += 1;
            }
        }
        assert!(
            loaded >= 2,
            "expected the example configs in config/, found {loaded}"
        );
    }

    #[test]
    fn local_example_serves_a_relative_unix_socket() {
        let config = load_with_env(&example("local.jsonnet"), &BTreeMap::new())
            .expect("local.jsonnet loads");
        assert_eq!(config.build_directory_path, PathBuf::from("run/build"));
        assert_eq!(
            config.grpc_servers,
            vec![GrpcServerConfig {
                listen_paths: vec![PathBuf::from("run/runner.sock")],
                ..GrpcServerConfig::default()
            }]
        );
        assert_eq!(config.run_commands_as, None);
        assert!(!config.clean_process_table);
        assert_eq!(config.action_cgroups, None);
    }

    #[test]
    fn upstream_style_example_decodes() {
        let config = load_with_env(&example("bb_runner.jsonnet"), &example_env())
            .expect("bb_runner.jsonnet loads");
        assert_eq!(config.build_directory_path, PathBuf::from("/worker/build"));
        assert_eq!(
            config.grpc_servers[0].listen_paths,
            vec![PathBuf::from("/worker/runner")]
        );
        assert!(config.grpc_servers[0].stop_gracefully);
        assert_eq!(
            config.clean_temporary_directories,
            vec![PathBuf::from("/tmp")]
        );
        assert!(config.set_tmpdir_environment_variable);
        assert_eq!(
            config.readiness_checking_pathnames,
            vec![PathBuf::from("/worker/build")]
        );
        assert_eq!(config.global.set_umask, Some(0o022));
        assert_eq!(
            config.global.ignored_keys,
            vec!["global.logPaths", "global.diagnosticsHttpServer"]
        );
    }
}
