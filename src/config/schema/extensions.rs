//! rbe-runner's own fields, beyond bb_runner's schema:
//! `terminationGracePeriod`, `sampleCgroupResourceUsage`, `actionCgroups`
//! and `events`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::protojson::{optional, Decoded, Field, FieldError, Message};

/// Time an action gets between SIGTERM and SIGKILL when
/// `terminationGracePeriod` is not set.
pub const DEFAULT_TERMINATION_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// Extension `actionCgroups`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ActionCgroupsConfig {
    /// Cgroup to manage, absolute within the cgroup2 mount; `None` means the
    /// cgroup the runner starts in.
    pub parent_path: Option<String>,
}

/// Events kept for subscribers that connect late, when
/// `events.replayBufferSize` is not set.
pub const DEFAULT_REPLAY_BUFFER_SIZE: usize = 4096;

/// Size at which the journal is rotated, when `events.journalMaxBytes` is
/// not set: 64 MiB.
pub const DEFAULT_JOURNAL_MAX_BYTES: u64 = 64 << 20;

/// The replay buffer's largest size: a million events, a few hundred MB.
const MAXIMUM_REPLAY_BUFFER_SIZE: u64 = 1 << 20;

/// Extension `events`: the event stream and its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    /// `replayBufferSize`: the last events kept for late subscribers.
    pub replay_buffer_size: usize,
    /// `journalPath`: the file every event is appended to, if any.
    pub journal_path: Option<PathBuf>,
    /// `journalMaxBytes`: the size at which the journal is rotated to
    /// `<journalPath>.1`.
    pub journal_max_bytes: u64,
    /// `runnerName`: the name in `RunnerState` events; `None`: the host
    /// name.
    pub runner_name: Option<String>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            replay_buffer_size: DEFAULT_REPLAY_BUFFER_SIZE,
            journal_path: None,
            journal_max_bytes: DEFAULT_JOURNAL_MAX_BYTES,
            runner_name: None,
        }
    }
}

/// rbe-runner's extension fields of the top-level message.
/// Each field is the [`Config`](crate::config::Config) field of the same name.
pub(super) struct Extensions {
    pub(super) termination_grace_period: Duration,
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
    if let Some(field) = message.take("journal_path")? {
        events.journal_path = Some(PathBuf::from(field.non_empty_string()?));
    }
    if let Some(field) = message.take("journal_max_bytes")? {
        let path = field.path.clone();
        let bytes = field.size()?;
        // Below one line's size every event would rotate the file.
        if bytes < 4096 {
            return Err(FieldError::invalid(
                &path,
                format!("must be at least 4096 bytes (\"4K\"), got {bytes}"),
            ));
        }
        events.journal_max_bytes = bytes;
    }
    if let Some(field) = message.take("runner_name")? {
        events.runner_name = Some(field.non_empty_string()?);
    }
    message.finish()?;
    Ok(events)
}

/// `events` as `check-config` prints it.
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
    message.finish()?;
    Ok(ActionCgroupsConfig { parent_path })
}

/// `actionCgroups` as `check-config` prints it.
pub(super) fn write_action_cgroups(
    f: &mut fmt::Formatter<'_>,
    action_cgroups: &Option<ActionCgroupsConfig>,
) -> fmt::Result {
    match action_cgroups {
        Some(ActionCgroupsConfig {
            parent_path: Some(parent),
        }) => writeln!(f, "actionCgroups: {{ parentPath: {parent:?} }}"),
        Some(ActionCgroupsConfig { parent_path: None }) => writeln!(
            f,
            "actionCgroups: {{ parentPath: not set (the runner's own cgroup) }}"
        ),
        None => writeln!(f, "actionCgroups: not set"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ActionCgroupsConfig, EventsConfig};
    use crate::config::test_support::{assert_invalid_fields, load_with};

    /// Leaving a field out must mean the documented default.
    #[test]
    fn missing_fields_take_their_defaults() {
        let config = load_with("").expect("minimal config decodes");
        assert_eq!(config.termination_grace_period, Duration::from_secs(5));
        assert!(!config.sample_cgroup_resource_usage);
        assert_eq!(config.action_cgroups, None);
        assert_eq!(config.events, EventsConfig::default());
        assert_eq!(config.events.replay_buffer_size, 4096);
        assert_eq!(config.events.journal_max_bytes, 64 << 20);
    }

    #[test]
    fn events_fields_decode_with_sizes_in_either_form() {
        let config = load_with(
            "events: { replayBufferSize: 8, journalPath: '/var/log/rbe/events.jsonl', \
             journalMaxBytes: '16Mi', runnerName: 'runner-0' }",
        )
        .expect("decodes");
        assert_eq!(
            config.events,
            EventsConfig {
                replay_buffer_size: 8,
                journal_path: Some("/var/log/rbe/events.jsonl".into()),
                journal_max_bytes: 16 << 20,
                runner_name: Some("runner-0".into()),
            }
        );
        let config = load_with("events: { journal_max_bytes: 1048576 }").expect("decodes");
        assert_eq!(config.events.journal_max_bytes, 1 << 20);
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
            ("events: { runnerName: 7 }", "events.runnerName", "a string"),
        ]);
    }

    #[test]
    fn an_empty_action_cgroups_object_enables_them_in_place() {
        let config = load_with("actionCgroups: {}").expect("decodes");
        assert_eq!(
            config.action_cgroups,
            Some(ActionCgroupsConfig { parent_path: None })
        );
    }
}
