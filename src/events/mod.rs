//! Action events: what the runner did, pushed to whoever subscribes, kept
//! for late subscribers, and written to a journal file.
//!
//! Events come only from the typed facts of [`crate::action::observer`]:
//! [`observer::EventObserver`] is one more observer next to the log, wired
//! in `main`. Nothing is read back from logs or decoded from our own `Any`
//! messages.
//!
//! - [`hub`]: numbering, the replay buffer, and one bounded queue per
//!   subscriber; publishing never waits, and the subscribe race is closed.
//! - [`observer`]: the observer turning facts into `rbe_runner.events.v1`
//!   events.
//! - [`json`]: an event as one line of proto3 JSON, defaults included, the
//!   format of the journal and of `watch --json`.
//! - [`journal`]: the journal writer, a subscriber like any other, with
//!   rotation.
//! - [`service`]: the gRPC `Events` service.
//!
//! Its client, `rbe-runner watch`, is [`crate::cli::watch`].

pub mod hub;
pub mod journal;
pub mod json;
pub mod observer;
pub mod service;

use std::sync::Arc;

use crate::action::{Observer, RunnerInstance};
use crate::config::EventsConfig;
use crate::proto::rbe_runner::events::v1::events_server::EventsServer;
use crate::proto::rbe_runner::events::v1::Event;
use crate::proto::resourceusage::{CgroupResourceUsage, PosixResourceUsage};
use crate::shutdown::ShutdownBound;

use hub::{Capacity, EventHub};
use journal::{Journal, JournalOptions};

/// Events queued for each gRPC subscriber at most (its bytes are bounded
/// by `subscriberQueueBytes`): enough for a burst of a few hundred actions
/// between two reads of a slow client.
pub const STREAM_QUEUE_CAPACITY: usize = 1024;

/// Events queued for the journal writer at most (its bytes are bounded by
/// `journalQueueBytes`).
pub const JOURNAL_QUEUE_CAPACITY: usize = 65_536;

/// An event as published: the wire message, and the usages its
/// `ActionFinished.resource_usage` carries encoded, typed, so that the
/// journal writes them without decoding our own `Any`s.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The event as subscribers receive it.
    pub event: Event,
    /// The usages of an `ActionFinished`, in `resource_usage` order.
    pub usages: Vec<Usage>,
}

/// A resource usage message of `ActionFinished.resource_usage`, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Usage {
    /// `buildbarn.resourceusage.POSIXResourceUsage`.
    Posix(PosixResourceUsage),
    /// `buildbarn.resourceusage.CgroupResourceUsage`.
    Cgroup(CgroupResourceUsage),
}

/// What the event stream lost, readable while it runs: events dropped for
/// subscribers that fell behind, and journal lines that could not be
/// written.
#[derive(Clone)]
pub struct EventCounters {
    hub: Arc<EventHub>,
    journal_write_failures: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl EventCounters {
    /// Events a subscriber (the journal included) missed, in total.
    pub fn dropped_total(&self) -> u64 {
        self.hub.dropped_total()
    }

    /// Journal lines that could not be written; 0 without a journal.
    pub fn journal_write_failures_total(&self) -> u64 {
        self.journal_write_failures.as_ref().map_or(0, |failures| {
            failures.load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}

/// The runner's events: the hub, the observer feeding it, the service
/// serving it and the journal writing it.
pub struct Events {
    hub: Arc<EventHub>,
    runner_name: String,
    maximum_argument_bytes: u64,
    stream_queue: Capacity,
    journal: Option<Journal>,
}

impl Events {
    /// Events of `instance`, configured by `config`; starts the journal
    /// writer when `journalPath` is set. Needs the tokio runtime.
    pub fn start(config: &EventsConfig, instance: RunnerInstance) -> Self {
        let replay = Capacity {
            events: config.replay_buffer_size,
            bytes: config.replay_buffer_bytes,
        };
        let maximum_streams = usize::try_from(config.maximum_subscribers).unwrap_or(usize::MAX);
        let hub = Arc::new(EventHub::new(instance, replay, maximum_streams));
        let journal = config.journal_path.as_ref().map(|path| {
            Journal::start(
                &hub,
                JournalOptions {
                    path: path.clone(),
                    mode: config.journal_mode,
                    max_bytes: config.journal_max_bytes,
                    queue: Capacity {
                        events: JOURNAL_QUEUE_CAPACITY,
                        bytes: config.journal_queue_bytes,
                    },
                },
            )
        });
        Events {
            hub,
            runner_name: config
                .runner_name
                .clone()
                .unwrap_or_else(default_runner_name),
            maximum_argument_bytes: config.maximum_argument_bytes,
            stream_queue: Capacity {
                events: STREAM_QUEUE_CAPACITY,
                bytes: config.subscriber_queue_bytes,
            },
            journal,
        }
    }

    /// The observer that publishes the runner's facts as events.
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(observer::EventObserver::new(
            self.hub.clone(),
            self.runner_name.clone(),
            self.maximum_argument_bytes,
        ))
    }

    /// The gRPC service, for every listener.
    pub fn service(&self) -> EventsServer<service::EventsService> {
        EventsServer::new(service::EventsService::new(
            self.hub.clone(),
            self.stream_queue,
        ))
    }

    /// The hub, to end the event streams at shutdown
    /// ([`EventHub::close_streams`]); the journal goes on until
    /// [`Self::finish`].
    pub fn hub(&self) -> Arc<EventHub> {
        self.hub.clone()
    }

    /// Events some subscriber did not get because it fell behind (the
    /// journal included), one count per subscriber and event.
    pub fn dropped_total(&self) -> u64 {
        self.hub.dropped_total()
    }

    /// A handle on the loss counters, for metrics read at scrape time.
    pub fn counters(&self) -> EventCounters {
        EventCounters {
            hub: self.hub.clone(),
            journal_write_failures: self.journal.as_ref().map(Journal::write_failures),
        }
    }

    /// Journal lines that could not be written.
    pub fn journal_write_failures_total(&self) -> u64 {
        self.journal
            .as_ref()
            .map_or(0, |journal| journal.write_failures_total())
    }

    /// Ends every subscription and waits until the journal has written
    /// everything published, or until `bound` cuts the wait short.
    pub async fn finish(self, bound: &ShutdownBound) {
        self.hub.close();
        if let Some(journal) = self.journal {
            journal.finished(bound).await;
        }
    }
}

/// The host name, for `runnerName` when the configuration sets none.
fn default_runner_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_default()
}
