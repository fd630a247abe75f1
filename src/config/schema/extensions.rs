//! rbe-runner's own fields, beyond bb_runner's schema:
//! `terminationGracePeriod`, `stuckSpawnTimeout`,
//! `sampleCgroupResourceUsage`, `actionCgroups` and `events`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::serving::decode_permission_bits;
use crate::cgroup::attribution::SharedLimitCulprit;
use crate::cgroup::limits::ActionLimits;
use crate::cgroup::Limit;
use crate::config::protojson::{optional, Decoded, Field, FieldError, Message};
use crate::config::size::{format_cores, format_size, parse_cores, parse_count, parse_size};

/// Time an action gets between SIGTERM and SIGKILL when
/// `terminationGracePeriod` is not set.
pub const DEFAULT_TERMINATION_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// How long a spawn may wait for its exec before the runner refuses work
/// (`stuckSpawnTimeout`), when not set.
pub const DEFAULT_STUCK_SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Extension `actionCgroups`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActionCgroupsConfig {
    /// Cgroup to manage, absolute within the cgroup2 mount; `None` means the
    /// cgroup the runner starts in.
    pub parent_path: Option<String>,
    /// `memoryMax`, `memoryHigh`, `memorySwapMax`, `memoryOomGroup`,
    /// `cpuMax`, `pidsMax`: written into every action's cgroup.
    pub limits: ActionLimits,
    /// `sharedLimitCulprit`: what the culprit of a shared-limit OOM kill
    /// gets (`'fail'`, the default, or `'retry'`).
    pub shared_limit_culprit: SharedLimitCulprit,
}

/// Events kept for subscribers that connect late, when
/// `events.replayBufferSize` is not set.
pub const DEFAULT_REPLAY_BUFFER_SIZE: usize = 4096;

/// Bytes of events kept for subscribers that connect late, when
/// `events.replayBufferBytes` is not set: 64 MiB.
pub const DEFAULT_REPLAY_BUFFER_BYTES: u64 = 64 << 20;

/// Bytes of events queued for each gRPC subscriber, when
/// `events.subscriberQueueBytes` is not set: 16 MiB.
pub const DEFAULT_SUBSCRIBER_QUEUE_BYTES: u64 = 16 << 20;

/// Bytes of events queued for the journal writer, when
/// `events.journalQueueBytes` is not set: 64 MiB.
pub const DEFAULT_JOURNAL_QUEUE_BYTES: u64 = 64 << 20;

/// Event streams open at once, when `events.maximumSubscribers` is not
/// set.
pub const DEFAULT_MAXIMUM_SUBSCRIBERS: u32 = 64;

/// Bytes of argv an `ActionStarted` carries, when
/// `events.maximumArgumentBytes` is not set: 64 KiB, more than most real
/// Bazel command lines (10 to 64 KB), far less than a 1 MB one.
pub const DEFAULT_MAXIMUM_ARGUMENT_BYTES: u64 = 64 << 10;

/// Mode of the journal and its `.1`, when `events.journalMode` is not
/// set: the runner's user alone, because argv may hold secrets.
pub const DEFAULT_JOURNAL_MODE: u32 = 0o600;

/// Size at which the journal is rotated, when `events.journalMaxBytes` is
/// not set: 64 MiB.
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 64 << 20;

/// The replay buffer's largest size: a million events, a few hundred MB.
const MAXIMUM_REPLAY_BUFFER_SIZE: u64 = 1 << 20;

/// The smallest byte budget of a queue or of the replay buffer, and the
/// smallest `journalMaxBytes`: below one line's size every event would
/// overflow (or rotate the file).
const MINIMUM_BUDGET_BYTES: u64 = 4096;

/// The smallest `maximumArgumentBytes`: enough for the program's name.
const MINIMUM_ARGUMENT_BYTES: u64 = 1024;

/// The largest `maximumSubscribers`.
const MAXIMUM_SUBSCRIBERS: u32 = 65_536;

/// Extension `events`: the event stream and its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    /// `replayBufferSize`: the last events kept for late subscribers, at
    /// most.
    pub replay_buffer_size: usize,
    /// `replayBufferBytes`: the bytes of the events kept for late
    /// subscribers, at most (the newest event is always kept).
    pub replay_buffer_bytes: u64,
    /// `subscriberQueueBytes`: the bytes of events queued for one gRPC
    /// subscriber that falls behind before it misses events.
    pub subscriber_queue_bytes: u64,
    /// `maximumSubscribers`: event streams and output followers open at
    /// once, together ([`crate::streams`]); one more is refused with
    /// RESOURCE_EXHAUSTED.
    pub maximum_subscribers: u32,
    /// `maximumArgumentBytes`: the bytes of argv an `ActionStarted`
    /// carries; longer argv is cut.
    pub maximum_argument_bytes: u64,
    /// `journalPath`: the file every event is appended to, if any.
    pub journal_path: Option<PathBuf>,
    /// `journalMode`: the permission bits of the journal and its `.1`,
    /// whatever the umask.
    pub journal_mode: u32,
    /// `journalMaxBytes`: the size at which the journal is rotated to
    /// `<journalPath>.1`.
    pub journal_max_bytes: u64,
    /// `journalQueueBytes`: the bytes of events queued for the journal
    /// writer before it misses events.
    pub journal_queue_bytes: u64,
    /// `runnerName`: the name in `RunnerState` events; `None`: the host
    /// name.
    pub runner_name: Option<String>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            replay_buffer_size: DEFAULT_REPLAY_BUFFER_SIZE,
            replay_buffer_bytes: DEFAULT_REPLAY_BUFFER_BYTES,
            subscriber_queue_bytes: DEFAULT_SUBSCRIBER_QUEUE_BYTES,
            maximum_subscribers: DEFAULT_MAXIMUM_SUBSCRIBERS,
            maximum_argument_bytes: DEFAULT_MAXIMUM_ARGUMENT_BYTES,
            journal_path: None,
            journal_mode: DEFAULT_JOURNAL_MODE,
            journal_max_bytes: DEFAULT_JOURNAL_MAX_BYTES,
            journal_queue_bytes: DEFAULT_JOURNAL_QUEUE_BYTES,
            runner_name: None,
        }
    }
}

/// rbe-runner's extension fields of the top-level message.
/// Each field is the [`Config`](crate::config::Config) field of the same name.
pub(super) struct Extensions {
    pub(super) termination_grace_period: Duration,
    pub(super) stuck_spawn_timeout: Option<Duration>,
    pub(super) sample_cgroup_resource_usage: bool,
    pub(super) action_cgroups: Option<ActionCgroupsConfig>,
    pub(super) events: EventsConfig,
}

/// Takes rbe-runner's extension fields from the top-level `message`.
pub(super) fn decode(message: &mut Message) -> Decoded<Extensions> {
    let termination_grace_period = match message.take("termination_grace_period")? {
        Some(field) => field.duration()?,
        None => DEFAULT_TERMINATION_GRACE_PERIOD,
    };
    // '0s' disables the check.
    let stuck_spawn_timeout = match message.take("stuck_spawn_timeout")? {
        Some(field) => Some(field.duration()?).filter(|timeout| !timeout.is_zero()),
        None => Some(DEFAULT_STUCK_SPAWN_TIMEOUT),
    };
    let sample_cgroup_resource_usage =
        optional(message.take("sample_cgroup_resource_usage")?, Field::bool)?;
    let action_cgroups = message
        .take("action_cgroups")?
        .map(|field| decode_action_cgroups(field.message()?))
        .transpose()?;
    let events = match message.take("events")? {
        Some(field) => decode_events(field.message()?)?,
        None => EventsConfig::default(),
    };
    Ok(Extensions {
        termination_grace_period,
        stuck_spawn_timeout,
        sample_cgroup_resource_usage,
        action_cgroups,
        events,
    })
}

fn decode_events(mut message: Message) -> Decoded<EventsConfig> {
    let mut events = EventsConfig::default();
    if let Some(field) = message.take("replay_buffer_size")? {
        let path = field.path.clone();
        let size = field.uint32()?;
        if size == 0 || u64::from(size) > MAXIMUM_REPLAY_BUFFER_SIZE {
            return Err(FieldError::invalid(
                &path,
                format!("must be between 1 and {MAXIMUM_REPLAY_BUFFER_SIZE} events, got {size}"),
            ));
        }
        events.replay_buffer_size = size as usize;
    }
    if let Some(field) = message.take("replay_buffer_bytes")? {
        events.replay_buffer_bytes = size_at_least(field, MINIMUM_BUDGET_BYTES)?;
    }
    if let Some(field) = message.take("subscriber_queue_bytes")? {
        events.subscriber_queue_bytes = size_at_least(field, MINIMUM_BUDGET_BYTES)?;
    }
    if let Some(field) = message.take("maximum_subscribers")? {
        let path = field.path.clone();
        let maximum = field.uint32()?;
        if maximum == 0 || maximum > MAXIMUM_SUBSCRIBERS {
            return Err(FieldError::invalid(
                &path,
                format!("must be between 1 and {MAXIMUM_SUBSCRIBERS} streams, got {maximum}"),
            ));
        }
        events.maximum_subscribers = maximum;
    }
    if let Some(field) = message.take("maximum_argument_bytes")? {
        events.maximum_argument_bytes = size_at_least(field, MINIMUM_ARGUMENT_BYTES)?;
    }
    if let Some(field) = message.take("journal_path")? {
        events.journal_path = Some(PathBuf::from(field.non_empty_string()?));
    }
    if let Some(field) = message.take("journal_mode")? {
        events.journal_mode = decode_permission_bits(field)?;
    }
    if let Some(field) = message.take("journal_max_bytes")? {
        events.journal_max_bytes = size_at_least(field, MINIMUM_BUDGET_BYTES)?;
    }
    if let Some(field) = message.take("journal_queue_bytes")? {
        events.journal_queue_bytes = size_at_least(field, MINIMUM_BUDGET_BYTES)?;
    }
    if let Some(field) = message.take("runner_name")? {
        events.runner_name = Some(field.non_empty_string()?);
    }
    message.finish()?;
    Ok(events)
}

/// A size in bytes of at least `minimum`.
fn size_at_least(field: Field, minimum: u64) -> Decoded<u64> {
    let path = field.path.clone();
    let bytes = field.size()?;
    if bytes < minimum {
        return Err(FieldError::invalid(
            &path,
            format!(
                "must be at least {minimum} bytes ({:?}), got {bytes}",
                format_size(Limit::Value(minimum))
            ),
        ));
    }
    Ok(bytes)
}

/// `events` as `check-config` prints it: the fields it always had on one
/// line, the byte budgets and the journal's mode below.
pub(super) fn write_events(f: &mut fmt::Formatter<'_>, events: &EventsConfig) -> fmt::Result {
    let journal = match &events.journal_path {
        Some(path) => format!("{:?}", path.display().to_string()),
        None => "not set".into(),
    };
    let runner_name = match &events.runner_name {
        Some(name) => format!("{name:?}"),
        None => "not set (the host name)".into(),
    };
    writeln!(
        f,
        "events: {{ replayBufferSize: {}, journalPath: {journal}, journalMaxBytes: {}, runnerName: {runner_name} }}",
        events.replay_buffer_size, events.journal_max_bytes
    )?;
    let size = |bytes: u64| format_size(Limit::Value(bytes));
    writeln!(
        f,
        "  replayBufferBytes: {}",
        size(events.replay_buffer_bytes)
    )?;
    writeln!(
        f,
        "  subscriberQueueBytes: {}",
        size(events.subscriber_queue_bytes)
    )?;
    writeln!(f, "  maximumSubscribers: {}", events.maximum_subscribers)?;
    writeln!(
        f,
        "  maximumArgumentBytes: {}",
        size(events.maximum_argument_bytes)
    )?;
    writeln!(f, "  journalMode: '{:04o}'", events.journal_mode)?;
    writeln!(
        f,
        "  journalQueueBytes: {}",
        size(events.journal_queue_bytes)
    )
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
    let size = |field: Field| field.parsed("a size such as \"512M\" or \"4Gi\"", parse_size);
    let limits = ActionLimits {
        memory_max: message.take("memory_max")?.map(size).transpose()?,
        memory_high: message.take("memory_high")?.map(size).transpose()?,
        memory_swap_max: message.take("memory_swap_max")?.map(size).transpose()?,
        memory_oom_group: message
            .take("memory_oom_group")?
            .map(Field::bool)
            .transpose()?,
        cpu_max_quota: message
            .take("cpu_max")?
            .map(|field| field.parsed("a number of cores such as \"2\" or \"0.5\"", parse_cores))
            .transpose()?,
        pids_max: message
            .take("pids_max")?
            .map(|field| field.parsed("a whole number or \"max\"", parse_count))
            .transpose()?,
    };
    let shared_limit_culprit = match message.take("shared_limit_culprit")? {
        None => SharedLimitCulprit::default(),
        Some(field) => {
            let path = field.path.clone();
            match field.string()?.as_str() {
                "fail" => SharedLimitCulprit::Fail,
                "retry" => SharedLimitCulprit::Retry,
                other => {
                    return Err(FieldError::invalid(
                        &path,
                        format!("{other:?} is neither \"fail\" nor \"retry\""),
                    ))
                }
            }
        }
    };
    message.finish()?;
    Ok(ActionCgroupsConfig {
        parent_path,
        limits,
        shared_limit_culprit,
    })
}

/// `actionCgroups` as `check-config` prints it.
pub(super) fn write_action_cgroups(
    f: &mut fmt::Formatter<'_>,
    action_cgroups: &Option<ActionCgroupsConfig>,
) -> fmt::Result {
    let Some(action_cgroups) = action_cgroups else {
        return writeln!(f, "actionCgroups: not set");
    };
    match &action_cgroups.parent_path {
        Some(parent) => writeln!(f, "actionCgroups: {{ parentPath: {parent:?} }}")?,
        None => writeln!(
            f,
            "actionCgroups: {{ parentPath: not set (the runner's own cgroup) }}"
        )?,
    }
    let limits = &action_cgroups.limits;
    let size = |limit: Option<Limit>| match limit {
        Some(limit) => format_size(limit),
        None => "not set".to_owned(),
    };
    writeln!(f, "  memoryMax: {}", size(limits.memory_max))?;
    writeln!(f, "  memoryHigh: {}", size(limits.memory_high))?;
    match (limits.memory_swap_max, limits.memory_max) {
        (None, Some(_)) => writeln!(f, "  memorySwapMax: 0 (the default with memoryMax)")?,
        (swap, _) => writeln!(f, "  memorySwapMax: {}", size(swap))?,
    }
    match limits.memory_oom_group {
        Some(group) => writeln!(f, "  memoryOomGroup: {group}")?,
        None => writeln!(
            f,
            "  memoryOomGroup: true (the default, where the memory controller is available)"
        )?,
    }
    match limits.cpu_max_quota {
        Some(quota) => writeln!(
            f,
            "  cpuMax: {} cores per 100 ms period",
            format_cores(quota)
        )?,
        None => writeln!(f, "  cpuMax: not set")?,
    }
    match limits.pids_max {
        Some(Limit::Value(pids)) => writeln!(f, "  pidsMax: {pids}")?,
        Some(Limit::Unlimited) => writeln!(f, "  pidsMax: max")?,
        None => writeln!(f, "  pidsMax: not set")?,
    }
    writeln!(
        f,
        "  sharedLimitCulprit: {}",
        action_cgroups.shared_limit_culprit.as_str()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::test_support::{assert_invalid_fields, load_with};

    /// Leaving a field out must mean the documented default.
    #[test]
    fn missing_fields_take_their_defaults() {
        let config = load_with("").expect("minimal config decodes");
        assert_eq!(config.termination_grace_period, Duration::from_secs(5));
        assert_eq!(config.stuck_spawn_timeout, Some(Duration::from_secs(30)));
        assert!(!config.sample_cgroup_resource_usage);
        assert_eq!(config.action_cgroups, None);
        assert_eq!(config.events, EventsConfig::default());
        assert_eq!(config.events.replay_buffer_size, 4096);
        assert_eq!(config.events.journal_max_bytes, 64 << 20);
    }

    /// Why it matters: '0s' is how an operator turns the stuck-spawn
    /// refusal off; any other duration is the timeout.
    #[test]
    fn stuck_spawn_timeout_is_a_duration_and_zero_disables_it() {
        let config = load_with("stuckSpawnTimeout: '2.5s'").unwrap();
        assert_eq!(
            config.stuck_spawn_timeout,
            Some(Duration::from_millis(2500))
        );
        let config = load_with("stuck_spawn_timeout: '0s'").unwrap();
        assert_eq!(config.stuck_spawn_timeout, None);
    }

    #[test]
    fn events_fields_decode_with_sizes_in_either_form() {
        let config = load_with(
            "events: { replayBufferSize: 8, replayBufferBytes: '1Mi', subscriberQueueBytes: 65536, \
             maximumSubscribers: 3, maximumArgumentBytes: '4K', \
             journalPath: '/var/log/rbe/events.jsonl', journalMode: '0640', \
             journalMaxBytes: '16Mi', journalQueueBytes: '2M', runnerName: 'runner-0' }",
        )
        .expect("decodes");
        assert_eq!(
            config.events,
            EventsConfig {
                replay_buffer_size: 8,
                replay_buffer_bytes: 1 << 20,
                subscriber_queue_bytes: 64 << 10,
                maximum_subscribers: 3,
                maximum_argument_bytes: 4 << 10,
                journal_path: Some("/var/log/rbe/events.jsonl".into()),
                journal_mode: 0o640,
                journal_max_bytes: 16 << 20,
                journal_queue_bytes: 2 << 20,
                runner_name: Some("runner-0".into()),
            }
        );
        let config = load_with("events: { journal_max_bytes: 1048576, journal_mode: 384 }")
            .expect("decodes");
        assert_eq!(config.events.journal_max_bytes, 1 << 20);
        assert_eq!(config.events.journal_mode, 0o600);
    }

    /// Why it matters: the defaults are what bounds a runner nobody tuned;
    /// the operator reads them in check-config's output.
    #[test]
    fn event_budgets_default_to_the_documented_bounds_and_are_printed() {
        let events = load_with("").expect("decodes").events;
        assert_eq!(events.replay_buffer_bytes, 64 << 20);
        assert_eq!(events.subscriber_queue_bytes, 16 << 20);
        assert_eq!(events.journal_queue_bytes, 64 << 20);
        assert_eq!(events.maximum_subscribers, 64);
        assert_eq!(events.maximum_argument_bytes, 64 << 10);
        assert_eq!(events.journal_mode, 0o600);
        let text = load_with("").expect("decodes").to_string();
        for expected in [
            "  replayBufferBytes: 64M",
            "  subscriberQueueBytes: 16M",
            "  maximumSubscribers: 64",
            "  maximumArgumentBytes: 64K",
            "  journalMode: '0600'",
            "  journalQueueBytes: 64M",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
    }

    /// Wrong types and malformed values name the field they are in.
    #[test]
    fn bad_values_name_their_path() {
        assert_invalid_fields(&[
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
            ("stuckSpawnTimeout: '30'", "stuckSpawnTimeout", "duration"),
            ("stuckSpawnTimeout: 30", "stuckSpawnTimeout", "duration"),
            (
                "events: { replayBufferSize: 0 }",
                "events.replayBufferSize",
                "between 1 and",
            ),
            (
                "events: { journalMaxBytes: '64MB' }",
                "events.journalMaxBytes",
                "not a size",
            ),
            (
                "events: { journalMaxBytes: 100 }",
                "events.journalMaxBytes",
                "at least 4096",
            ),
            ("events: { journalPath: '' }", "events.journalPath", "empty"),
            (
                "events: { replayBufferBytes: '1K' }",
                "events.replayBufferBytes",
                "at least 4096",
            ),
            (
                "events: { subscriberQueueBytes: 'max' }",
                "events.subscriberQueueBytes",
                "not allowed",
            ),
            (
                "events: { journalQueueBytes: '64MB' }",
                "events.journalQueueBytes",
                "not a size",
            ),
            (
                "events: { maximumArgumentBytes: 100 }",
                "events.maximumArgumentBytes",
                "at least 1024",
            ),
            (
                "events: { maximumSubscribers: 0 }",
                "events.maximumSubscribers",
                "between 1 and",
            ),
            (
                "events: { journalMode: '0644x' }",
                "events.journalMode",
                "octal",
            ),
            (
                "events: { journalMode: '01600' }",
                "events.journalMode",
                "outside 0o777",
            ),
            ("events: { runnerName: 7 }", "events.runnerName", "a string"),
        ]);
    }

    #[test]
    fn an_empty_action_cgroups_object_enables_them_in_place() {
        let config = load_with("actionCgroups: {}").expect("decodes");
        assert_eq!(config.action_cgroups, Some(ActionCgroupsConfig::default()));
    }

    #[test]
    fn limits_are_decoded_with_one_size_parser() {
        let config = load_with(
            "actionCgroups: { memoryMax: '4Gi', memoryHigh: 3221225472, memorySwapMax: 'max', \
             memoryOomGroup: false, cpuMax: 0.5, pidsMax: '32', sharedLimitCulprit: 'retry' }",
        )
        .expect("decodes");
        let action_cgroups = config.action_cgroups.expect("set");
        assert_eq!(
            action_cgroups.limits,
            ActionLimits {
                memory_max: Some(Limit::Value(4 << 30)),
                memory_high: Some(Limit::Value(3 << 30)),
                memory_swap_max: Some(Limit::Unlimited),
                memory_oom_group: Some(false),
                cpu_max_quota: Some(Limit::Value(50_000)),
                pids_max: Some(Limit::Value(32)),
            }
        );
        assert_eq!(
            action_cgroups.shared_limit_culprit,
            SharedLimitCulprit::Retry
        );
    }

    #[test]
    fn malformed_limits_name_their_field() {
        assert_invalid_fields(&[
            (
                "actionCgroups: { memoryMax: '512m' }",
                "actionCgroups.memoryMax",
                "not a size",
            ),
            (
                "actionCgroups: { memoryHigh: '1.5G' }",
                "actionCgroups.memoryHigh",
                "not a size",
            ),
            (
                "actionCgroups: { memorySwapMax: -1 }",
                "actionCgroups.memorySwapMax",
                "not a size",
            ),
            (
                "actionCgroups: { memoryMax: true }",
                "actionCgroups.memoryMax",
                "a size",
            ),
            (
                "actionCgroups: { cpuMax: 'two' }",
                "actionCgroups.cpuMax",
                "cores",
            ),
            (
                "actionCgroups: { cpuMax: 0.001 }",
                "actionCgroups.cpuMax",
                "minimum",
            ),
            (
                "actionCgroups: { pidsMax: '32K' }",
                "actionCgroups.pidsMax",
                "not a count",
            ),
            (
                "actionCgroups: { memoryOomGroup: 1 }",
                "actionCgroups.memoryOomGroup",
                "true or false",
            ),
            (
                "actionCgroups: { sharedLimitCulprit: 'blame' }",
                "actionCgroups.sharedLimitCulprit",
                "neither",
            ),
        ]);
    }

    #[test]
    fn check_config_prints_the_limits_as_understood() {
        let config =
            load_with("actionCgroups: { memoryMax: '536870912', cpuMax: '1.5', pidsMax: 100 }")
                .expect("decodes");
        let text = config.to_string();
        for expected in [
            "memoryMax: 512M",
            "memoryHigh: not set",
            "memorySwapMax: 0 (the default with memoryMax)",
            "memoryOomGroup: true (the default",
            "cpuMax: 1.5 cores per 100 ms period",
            "pidsMax: 100",
            "sharedLimitCulprit: fail",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
    }
}
