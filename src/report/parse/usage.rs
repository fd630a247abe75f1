//! `resourceUsage`: the `Any`s of an `actionFinished`, read one message
//! at a time into the report's [`Usage`] as serde meets them, with no
//! list of the messages built.

use std::fmt;
use std::sync::LazyLock;

use prost::Name;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::{int64, optional_duration, LineError, Scalar, Stall, Usage};
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};

/// The list read: what it says, or why a value in it is not what its
/// field should be (reported only if the line's finish is used, as when
/// the messages were read first and judged afterwards).
pub(super) struct UsageList(pub(super) Result<Usage, LineError>);

impl Default for UsageList {
    fn default() -> Self {
        UsageList(Ok(Usage::default()))
    }
}

impl<'de> Deserialize<'de> for UsageList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(UsageListVisitor)
    }
}

struct UsageListVisitor;

impl<'de> Visitor<'de> for UsageListVisitor {
    type Value = UsageList;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a list of usage messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut messages: A) -> Result<Self::Value, A::Error> {
        let mut usage = Ok(Usage::default());
        while let Some(message) = messages.next_element::<UsageLine>()? {
            if let Ok(sum) = &mut usage {
                if let Err(err) = add(sum, &message) {
                    usage = Err(err);
                }
            }
        }
        Ok(UsageList(usage))
    }
}

/// One `Any` of `resourceUsage`: the fields of the two messages the
/// report reads, used according to `@type`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageLine<'a> {
    #[serde(rename = "@type", borrow)]
    type_url: Option<Scalar<'a>>,
    #[serde(borrow)]
    maximum_resident_set_size: Option<Scalar<'a>>,
    #[serde(borrow)]
    user_time: Option<Scalar<'a>>,
    #[serde(borrow)]
    system_time: Option<Scalar<'a>>,
    #[serde(borrow)]
    memory_peak: Option<Scalar<'a>>,
    #[serde(borrow)]
    cpu_pressure_some_total: Option<Scalar<'a>>,
    #[serde(borrow)]
    memory_pressure_some_total: Option<Scalar<'a>>,
    #[serde(borrow)]
    io_pressure_some_total: Option<Scalar<'a>>,
}

/// The `@type`s of the usage messages, as the journal writes them.
static POSIX_TYPE: LazyLock<String> = LazyLock::new(PosixResourceUsage::type_url);
static CGROUP_TYPE: LazyLock<String> = LazyLock::new(CgroupResourceUsage::type_url);

/// Adds what one message says to `usage`, as the messages come.
fn add(usage: &mut Usage, message: &UsageLine) -> Result<(), LineError> {
    let kind = message.type_url.as_ref().and_then(Scalar::text);
    if kind == Some(POSIX_TYPE.as_str()) {
        usage.max_rss_bytes = int64(&message.maximum_resident_set_size, "maximumResidentSetSize")?;
        let user = optional_duration(&message.user_time, "userTime")?;
        let system = optional_duration(&message.system_time, "systemTime")?;
        if user.is_some() || system.is_some() {
            usage.cpu_seconds = Some(user.unwrap_or(0.0) + system.unwrap_or(0.0));
        }
    } else if kind == Some(CGROUP_TYPE.as_str()) {
        usage.memory_peak_bytes =
            int64(&message.memory_peak, "memoryPeak")?.filter(|&peak| peak > 0);
        let pressure = |field, key| optional_duration(field, key).map(|d| d.unwrap_or(0.0));
        usage.stall = Some(Stall {
            cpu: pressure(&message.cpu_pressure_some_total, "cpuPressureSomeTotal")?,
            memory: pressure(
                &message.memory_pressure_some_total,
                "memoryPressureSomeTotal",
            )?,
            io: pressure(&message.io_pressure_some_total, "ioPressureSomeTotal")?,
        });
    }
    Ok(())
}
