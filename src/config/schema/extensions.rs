//! rbe-runner's own fields, beyond bb_runner's schema:
//! `terminationGracePeriod`, `sampleCgroupResourceUsage` and
//! `actionCgroups`.

use std::fmt;
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

/// rbe-runner's extension fields of the top-level message.
/// Each field is the [`Config`](crate::config::Config) field of the same name.
pub(super) struct Extensions {
    pub(super) termination_grace_period: Duration,
    pub(super) sample_cgroup_resource_usage: bool,
    pub(super) action_cgroups: Option<ActionCgroupsConfig>,
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
    Ok(Extensions {
        termination_grace_period,
        sample_cgroup_resource_usage,
        action_cgroups,
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

    use super::ActionCgroupsConfig;
    use crate::config::test_support::{assert_invalid_fields, load_with};

    /// Leaving a field out must mean the documented default.
    #[test]
    fn missing_fields_take_their_defaults() {
        let config = load_with("").expect("minimal config decodes");
        assert_eq!(config.termination_grace_period, Duration::from_secs(5));
        assert!(!config.sample_cgroup_resource_usage);
        assert_eq!(config.action_cgroups, None);
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
