//! The broadcaster: numbers events, keeps the last ones for replay, and
//! hands each to every subscriber's bounded queue.
//!
//! Two promises, and how they are kept:
//!
//! - **Publishing never waits for a subscriber.** Each subscriber has a
//!   queue of its own with a fixed [`Capacity`]; publishing offers the
//!   event to each queue under a short lock and moves on. A full queue
//!   drops the event for that subscriber and remembers the range it missed;
//!   the subscriber is told with one [`Delivery::Lost`] before the next
//!   event it does get, so it always knows what it missed and nothing else
//!   is lost.
//! - **Memory is bounded in bytes, not only in events.** One event may
//!   carry a megabyte of argv, so the replay buffer and every queue count
//!   the bytes of what they hold as well as the events: each event's size
//!   is estimated once, when it is published ([`estimated_bytes`]). An
//!   event larger than a whole budget is still kept when it is alone, so
//!   that nothing is stuck; the number of streams is capped too.
//! - **The subscribe race is closed.** Subscribing takes the replay from
//!   the buffer and registers the live queue under the same lock that
//!   publishing holds, so every event is either in the replay or in the
//!   queue, never both and never neither.
//!
//! Lock order: the hub's lock, then a queue's. A subscriber reading its
//! queue takes only the queue's lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prost::Message;
use tokio::sync::Notify;

use super::{Published, Usage};
use crate::action::RunnerInstance;
use crate::proto::rbe_runner::events::v1::{event, Event};
use crate::streams::{StreamSlot, StreamSlots};
use crate::sync::lock_unpoisoned;

/// What an event costs beyond its encoded fields: the structures that
/// hold it, its sequence, time and instance.
const EVENT_OVERHEAD_BYTES: u64 = std::mem::size_of::<Published>() as u64 + 64;

/// How much a queue or the replay buffer may hold: whichever bound is
/// reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Events, at least one.
    pub events: usize,
    /// Bytes of events, as [`estimated_bytes`] counts them.
    pub bytes: u64,
}

impl Capacity {
    /// Whether `held` events of `held_bytes` may take one more of `bytes`.
    /// An empty holder takes any event, however large.
    fn admits(&self, held: usize, held_bytes: u64, bytes: u64) -> bool {
        held == 0 || (held < self.events && held_bytes.saturating_add(bytes) <= self.bytes)
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// `events.maximumSubscribers` streams (event subscriptions and
    /// output followers together, see [`crate::streams`]) are open already.
    #[error(
        "the runner already serves {maximum} event and output streams, its maximum \
         (events.maximumSubscribers); try again when one has ended"
    )]
    TooManySubscribers {
        /// The cap.
        maximum: usize,
    },
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// An event, shared with every other subscriber.
    Event(Arc<Published>),
    /// The subscriber missed these sequences (inclusive); the next event
    /// it receives is `last + 1`.
    Lost {
        /// The first sequence missed.
        first: u64,
        /// The last sequence missed.
        last: u64,
    },
}

/// Where a subscription starts, from its request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Start {
    /// Replay events after this sequence; 0: everything still buffered.
    pub after_sequence: u64,
    /// Skip the replay: live events only.
    pub live_only: bool,
    /// The instance `after_sequence` belongs to; empty: the current one.
    pub runner_instance: String,
}

/// Whether a subscription ends when the event streams are closed at
/// shutdown ([`EventHub::close_streams`]), or only with the hub
/// ([`EventHub::close`]), as the journal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// A gRPC stream: ends when the runner stops serving.
    Stream,
    /// The journal: sees every event until the runner exits.
    UntilExit,
    /// The replay alone (`watch --no-follow`): ends after it.
    ReplayOnly,
}

/// The runner's event broadcaster and replay buffer. See the module
/// documentation.
pub struct EventHub {
    instance: RunnerInstance,
    replay_capacity: Capacity,
    /// The cap on streams, shared with output followers.
    stream_slots: Arc<StreamSlots>,
    state: Mutex<HubState>,
    dropped_total: AtomicU64,
}

#[derive(Default)]
struct HubState {
    last_sequence: u64,
    /// The newest events, each with its estimated bytes.
    buffer: VecDeque<(Arc<Published>, u64)>,
    buffer_bytes: u64,
    subscribers: BTreeMap<u64, (Lifetime, Arc<Queue>)>,
    next_subscriber: u64,
    streams_closed: bool,
}

impl EventHub {
    /// A hub for `instance` keeping the last events within
    /// `replay_capacity` (at least the newest), serving at most
    /// `maximum_streams` streams at once (the journal aside).
    pub fn new(
        instance: RunnerInstance,
        replay_capacity: Capacity,
        maximum_streams: usize,
    ) -> Self {
        EventHub {
            instance,
            replay_capacity,
            stream_slots: StreamSlots::new(maximum_streams),
            state: Mutex::new(HubState::default()),
            dropped_total: AtomicU64::new(0),
        }
    }

    /// The cap on streams, which output followers share
    /// ([`crate::streams`]).
    pub fn stream_slots(&self) -> Arc<StreamSlots> {
        self.stream_slots.clone()
    }

    /// The instance every event names.
    pub fn instance(&self) -> &RunnerInstance {
        &self.instance
    }

    /// Events not delivered to some subscriber because its queue was full,
    /// counted once per subscriber that missed them.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// The sequence of the last event published; 0 before the first.
    pub fn last_sequence(&self) -> u64 {
        lock_unpoisoned(&self.state).last_sequence
    }

    /// Numbers `kind` and hands it to every subscriber. Never waits.
    pub fn publish(&self, kind: event::Kind, usages: Vec<Usage>) {
        // Estimated before taking the lock: with a long argv it is the
        // costliest part of publishing.
        let bytes = estimated_bytes(&kind, &usages, &self.instance);
        let mut state = lock_unpoisoned(&self.state);
        state.last_sequence += 1;
        let published = Arc::new(Published {
            event: Event {
                sequence: state.last_sequence,
                time: Some(SystemTime::now().into()),
                runner_instance: self.instance.as_str().to_owned(),
                kind: Some(kind),
            },
            usages,
        });
        while !self
            .replay_capacity
            .admits(state.buffer.len(), state.buffer_bytes, bytes)
        {
            let Some((_, evicted)) = state.buffer.pop_front() else {
                break;
            };
            state.buffer_bytes -= evicted;
        }
        state.buffer.push_back((published.clone(), bytes));
        state.buffer_bytes += bytes;
        let mut dropped = 0;
        for (_, queue) in state.subscribers.values() {
            if !queue.offer(&published, bytes) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.dropped_total.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Subscribes from `start`, with a live queue of `queue_capacity`.
    /// Refused when it would be one stream more than the maximum; the
    /// journal ([`Lifetime::UntilExit`]) is not counted.
    pub fn subscribe(
        self: &Arc<Self>,
        start: &Start,
        queue_capacity: Capacity,
        lifetime: Lifetime,
    ) -> Result<Subscription, SubscribeError> {
        let slot = match lifetime {
            Lifetime::UntilExit => None,
            Lifetime::Stream | Lifetime::ReplayOnly => {
                Some(self.stream_slots.take().map_err(|refused| {
                    SubscribeError::TooManySubscribers {
                        maximum: refused.maximum,
                    }
                })?)
            }
        };
        let mut state = lock_unpoisoned(&self.state);
        let oldest = state
            .buffer
            .front()
            .map(|(published, _)| published.event.sequence);
        let plan = plan_replay(start, &self.instance, oldest, state.last_sequence);
        let mut replay = VecDeque::new();
        if let Some((first, last)) = plan.lost {
            replay.push_back((Delivery::Lost { first, last }, 0));
        }
        if let Some(from) = plan.from {
            replay.extend(
                state
                    .buffer
                    .iter()
                    .filter(|(published, _)| published.event.sequence >= from)
                    .map(|(published, bytes)| (Delivery::Event(published.clone()), *bytes)),
            );
        }
        let queue = Arc::new(Queue::new(queue_capacity));
        if lifetime == Lifetime::ReplayOnly
            || (lifetime == Lifetime::Stream && state.streams_closed)
        {
            queue.close();
        }
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        state.subscribers.insert(id, (lifetime, queue.clone()));
        Ok(Subscription {
            hub: self.clone(),
            id,
            replay,
            queue,
            _slot: slot,
        })
    }

    /// Ends every stream subscription once it has read what it was
    /// given, and every later one after its replay: the runner stops
    /// serving. Publishing goes on for the journal.
    pub fn close_streams(&self) {
        let mut state = lock_unpoisoned(&self.state);
        state.streams_closed = true;
        for (lifetime, queue) in state.subscribers.values() {
            if *lifetime != Lifetime::UntilExit {
                queue.close();
            }
        }
    }

    /// Ends every subscription once it has read what it was given.
    pub fn close(&self) {
        let mut state = lock_unpoisoned(&self.state);
        state.streams_closed = true;
        for (_, queue) in state.subscribers.values() {
            queue.close();
        }
    }

    fn unsubscribe(&self, id: u64) {
        lock_unpoisoned(&self.state).subscribers.remove(&id);
    }
}

/// What a new subscription replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplayPlan {
    /// Asked for but no longer buffered.
    lost: Option<(u64, u64)>,
    /// The first buffered sequence to replay; `None`: none.
    from: Option<u64>,
}

/// Where a subscription's replay starts, given the oldest buffered
/// sequence (`None`: nothing buffered) and the last one published.
///
/// `after_sequence` 0 asks for whatever is buffered, so nothing counts as
/// missed. A stale `runner_instance` (the subscriber's sequence belongs to
/// an earlier start) asks for everything of this instance, from 1, so
/// events already evicted are reported missed.
fn plan_replay(
    start: &Start,
    instance: &RunnerInstance,
    oldest: Option<u64>,
    last: u64,
) -> ReplayPlan {
    let nothing = ReplayPlan {
        lost: None,
        from: None,
    };
    if start.live_only {
        return nothing;
    }
    let Some(oldest) = oldest else {
        return nothing;
    };
    let stale = !start.runner_instance.is_empty() && start.runner_instance != instance.as_str();
    let wanted = match (stale, start.after_sequence) {
        (true, _) => 1,
        (false, 0) => oldest,
        (false, after) => after.saturating_add(1),
    };
    if wanted > last {
        return nothing;
    }
    ReplayPlan {
        lost: (wanted < oldest).then(|| (wanted, oldest - 1)),
        from: Some(wanted.max(oldest)),
    }
}

/// The bytes an event holds in memory, estimated from its encoded size:
/// the argv of an `ActionStarted`, the usages of an `ActionFinished` (typed
/// and encoded), and a fixed overhead.
pub fn estimated_bytes(kind: &event::Kind, usages: &[Usage], instance: &RunnerInstance) -> u64 {
    let usages: usize = usages
        .iter()
        .map(|usage| match usage {
            Usage::Posix(posix) => posix.encoded_len(),
            Usage::Cgroup(cgroup) => cgroup.encoded_len(),
        })
        .sum();
    (kind.encoded_len() + usages + instance.as_str().len()) as u64 + EVENT_OVERHEAD_BYTES
}

// ---------------------------------------------------------------------------
// One subscriber's queue
// ---------------------------------------------------------------------------

/// A bounded queue with one reader. See the module documentation.
struct Queue {
    capacity: Capacity,
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    /// Deliveries, each with the bytes it counts for.
    items: VecDeque<(Delivery, u64)>,
    bytes: u64,
    /// Sequences dropped since the last one queued, not yet reported.
    lost: Option<(u64, u64)>,
    closed: bool,
}

impl Queue {
    fn new(capacity: Capacity) -> Self {
        Queue {
            capacity,
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
        }
    }

    /// Queues `event` of `bytes`, or records it as lost when the queue is
    /// full. Returns whether it was queued.
    fn offer(&self, event: &Arc<Published>, bytes: u64) -> bool {
        let sequence = event.event.sequence;
        let mut state = lock_unpoisoned(&self.state);
        if state.closed {
            return true;
        }
        if !self.capacity.admits(state.items.len(), state.bytes, bytes) {
            state.lost = Some(match state.lost {
                Some((first, _)) => (first, sequence),
                None => (sequence, sequence),
            });
            return false;
        }
        // The report of what was missed goes before the next event, so
        // that event is always `last + 1`.
        if let Some((first, last)) = state.lost.take() {
            state.items.push_back((Delivery::Lost { first, last }, 0));
        }
        state
            .items
            .push_back((Delivery::Event(event.clone()), bytes));
        state.bytes += bytes;
        drop(state);
        self.ready.notify_one();
        true
    }

    fn close(&self) {
        lock_unpoisoned(&self.state).closed = true;
        self.ready.notify_one();
    }

    /// The next delivery and its bytes without waiting; `Err(())` once
    /// closed and empty.
    fn try_next(&self) -> Result<Option<(Delivery, u64)>, ()> {
        let mut state = lock_unpoisoned(&self.state);
        if let Some((item, bytes)) = state.items.pop_front() {
            state.bytes -= bytes;
            return Ok(Some((item, bytes)));
        }
        // A subscriber that caught up learns what it missed at once, not
        // only with the next event.
        if let Some((first, last)) = state.lost.take() {
            return Ok(Some((Delivery::Lost { first, last }, 0)));
        }
        if state.closed {
            return Err(());
        }
        Ok(None)
    }

    async fn next(&self) -> Option<(Delivery, u64)> {
        loop {
            match self.try_next() {
                Ok(Some(item)) => return Some(item),
                Err(()) => return None,
                // `notify_one` keeps a permit when nobody waits, so an
                // offer between `try_next` and here is not missed.
                Ok(None) => self.ready.notified().await,
            }
        }
    }
}

/// One subscriber: its replay, then its live queue. Dropping it
/// unsubscribes.
pub struct Subscription {
    hub: Arc<EventHub>,
    id: u64,
    /// Deliveries of the replay, each with its bytes.
    replay: VecDeque<(Delivery, u64)>,
    queue: Arc<Queue>,
    /// Its place under the cap on streams; `None` for the journal.
    _slot: Option<StreamSlot>,
}

impl Subscription {
    /// The next delivery; `None` once the subscription was closed and
    /// everything given to it was read.
    pub async fn next(&mut self) -> Option<Delivery> {
        Some(self.next_with_bytes().await?.0)
    }

    async fn next_with_bytes(&mut self) -> Option<(Delivery, u64)> {
        if let Some(item) = self.replay.pop_front() {
            return Some(item);
        }
        self.queue.next().await
    }

    /// The next delivery, then more that are ready while the batch holds
    /// fewer than `limit` deliveries and `limit_bytes` bytes. Empty once
    /// the subscription ended.
    pub async fn next_batch(&mut self, limit: usize, limit_bytes: u64) -> Vec<Delivery> {
        let Some((first, mut bytes)) = self.next_with_bytes().await else {
            return Vec::new();
        };
        let mut batch = vec![first];
        while batch.len() < limit && bytes < limit_bytes {
            let (item, item_bytes) = match self.replay.pop_front() {
                Some(item) => item,
                None => match self.queue.try_next() {
                    Ok(Some(item)) => item,
                    _ => break,
                },
            };
            batch.push(item);
            bytes += item_bytes;
        }
        batch
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

/// The event a [`Delivery`] stands for: the event itself, or an
/// `EventsLost` (sequence 0) stamped now.
pub fn delivered_event(delivery: &Delivery, instance: &RunnerInstance) -> Arc<Published> {
    match delivery {
        Delivery::Event(published) => published.clone(),
        Delivery::Lost { first, last } => Arc::new(Published {
            event: Event {
                sequence: 0,
                time: Some(SystemTime::now().into()),
                runner_instance: instance.as_str().to_owned(),
                kind: Some(event::Kind::EventsLost(
                    crate::proto::rbe_runner::events::v1::EventsLost {
                        first_sequence: *first,
                        last_sequence: *last,
                    },
                )),
            },
            usages: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rbe_runner::events::v1::RunnerState;

    fn hub(capacity: usize) -> Arc<EventHub> {
        Arc::new(EventHub::new(
            RunnerInstance::random(),
            events(capacity),
            64,
        ))
    }

    /// Subscribes with a queue of `queue_events` events, whatever their
    /// bytes.
    fn subscribe(
        hub: &Arc<EventHub>,
        start: &Start,
        queue_events: usize,
        lifetime: Lifetime,
    ) -> Subscription {
        hub.subscribe(start, events(queue_events), lifetime)
            .expect("within the maximum")
    }

    /// A capacity of `count` events, whatever their bytes.
    fn events(count: usize) -> Capacity {
        Capacity {
            events: count,
            bytes: u64::MAX,
        }
    }

    /// An instance other than `current`.
    fn other_than(current: &RunnerInstance) -> String {
        if current.as_str() == "ffffffff" {
            "00000000".into()
        } else {
            "ffffffff".into()
        }
    }

    fn publish(hub: &EventHub, count: usize) {
        for _ in 0..count {
            hub.publish(event::Kind::RunnerState(RunnerState::default()), Vec::new());
        }
    }

    /// What `subscription` has ready now, as text: `5` for event 5,
    /// `lost 2-4` for a gap.
    fn ready(subscription: &mut Subscription) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let (item, _) = match subscription.replay.pop_front() {
                Some(item) => item,
                None => match subscription.queue.try_next() {
                    Ok(Some(item)) => item,
                    _ => return seen,
                },
            };
            seen.push(match item {
                Delivery::Event(published) => published.event.sequence.to_string(),
                Delivery::Lost { first, last } => format!("lost {first}-{last}"),
            });
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    fn after(after_sequence: u64) -> Start {
        Start {
            after_sequence,
            ..Start::default()
        }
    }

    #[test]
    fn a_late_subscriber_gets_the_buffer_then_live_events_without_a_seam() {
        // Why it matters: the subscribe race: an event published while a
        // subscriber connects must be in its replay or its queue, once.
        let hub = hub(16);
        publish(&hub, 3);
        let mut subscription = subscribe(&hub, &after(0), 16, Lifetime::Stream);
        publish(&hub, 2);
        assert_eq!(
            ready(&mut subscription),
            strings(&["1", "2", "3", "4", "5"])
        );
    }

    #[test]
    fn after_sequence_resumes_exactly_and_live_only_skips_the_replay() {
        let hub = hub(16);
        publish(&hub, 5);
        let mut resumed = subscribe(&hub, &after(3), 16, Lifetime::Stream);
        let live_only = Start {
            live_only: true,
            ..Start::default()
        };
        let mut live = subscribe(&hub, &live_only, 16, Lifetime::Stream);
        let mut caught_up = subscribe(&hub, &after(5), 16, Lifetime::Stream);
        publish(&hub, 1);
        assert_eq!(ready(&mut resumed), strings(&["4", "5", "6"]));
        assert_eq!(ready(&mut live), strings(&["6"]));
        assert_eq!(ready(&mut caught_up), strings(&["6"]));
    }

    #[test]
    fn asking_for_an_evicted_sequence_reports_the_gap_first() {
        // Why it matters: a subscriber must know it missed events rather
        // than silently see a jump in sequences.
        let hub = hub(8);
        publish(&hub, 20);
        let mut subscription = subscribe(&hub, &after(1), 16, Lifetime::Stream);
        let mut expected = vec!["lost 2-12".to_string()];
        expected.extend((13..=20).map(|n| n.to_string()));
        assert_eq!(ready(&mut subscription), expected);
        // Whatever is buffered, when that is all one asks for, is no gap.
        let mut everything = subscribe(&hub, &after(0), 16, Lifetime::Stream);
        assert_eq!(ready(&mut everything).len(), 8);
    }

    #[test]
    fn a_stale_instance_replays_this_instance_from_its_start() {
        let hub = hub(8);
        publish(&hub, 3);
        let start = Start {
            after_sequence: 40,
            live_only: false,
            runner_instance: other_than(hub.instance()),
        };
        let mut subscription = subscribe(&hub, &start, 16, Lifetime::Stream);
        assert_eq!(ready(&mut subscription), strings(&["1", "2", "3"]));
        publish(&hub, 10);
        let mut late = subscribe(&hub, &start, 16, Lifetime::Stream);
        let mut expected = vec!["lost 1-5".to_string()];
        expected.extend((6..=13).map(|n| n.to_string()));
        assert_eq!(ready(&mut late), expected);
        // The current instance's own sequence resumes as usual.
        let current = Start {
            runner_instance: hub.instance().as_str().into(),
            ..after(12)
        };
        assert_eq!(
            ready(&mut subscribe(&hub, &current, 16, Lifetime::Stream)),
            strings(&["13"])
        );
    }

    #[test]
    fn a_full_queue_drops_for_that_subscriber_only_and_says_what_it_missed() {
        // Why it matters: publishing never waits; a slow subscriber loses
        // events, knows which, and the next one it gets is last + 1.
        let hub = hub(64);
        let mut slow = subscribe(&hub, &after(0), 3, Lifetime::Stream);
        let mut fast = subscribe(&hub, &after(0), 64, Lifetime::Stream);
        publish(&hub, 10);
        assert_eq!(hub.dropped_total(), 7);
        assert_eq!(fast.queue.state.lock().unwrap().items.len(), 10);
        // Reading one frees a slot; the next event is queued behind the
        // report of the gap.
        assert!(matches!(
            slow.queue.try_next(),
            Ok(Some((Delivery::Event(_), _)))
        ));
        publish(&hub, 1);
        assert_eq!(ready(&mut slow), strings(&["2", "3", "lost 4-10", "11"]));
        // Caught up with nothing new: the gap is reported at once.
        publish(&hub, 5);
        let seen = ready(&mut slow);
        assert_eq!(seen, strings(&["12", "13", "14", "lost 15-16"]));
        assert_eq!(ready(&mut fast).len(), 16);
    }

    #[test]
    fn a_subscriber_that_never_reads_costs_publishing_nothing_but_a_drop_count() {
        // Why it matters: a stuck client must not hold up actions; the
        // queue stays at its capacity however much is published.
        let hub = hub(4096);
        let stuck = subscribe(&hub, &after(0), 16, Lifetime::Stream);
        publish(&hub, 100_000);
        assert_eq!(stuck.queue.state.lock().unwrap().items.len(), 16);
        assert_eq!(hub.dropped_total(), 100_000 - 16);
        assert_eq!(stuck.queue.state.lock().unwrap().lost, Some((17, 100_000)));
        // And the replay buffer holds only its capacity.
        assert_eq!(hub.state.lock().unwrap().buffer.len(), 4096);
    }

    #[test]
    fn dropping_a_subscription_unsubscribes_it() {
        let hub = hub(4);
        let subscription = subscribe(&hub, &after(0), 4, Lifetime::Stream);
        assert_eq!(hub.state.lock().unwrap().subscribers.len(), 1);
        drop(subscription);
        assert!(hub.state.lock().unwrap().subscribers.is_empty());
        publish(&hub, 10);
        assert_eq!(hub.dropped_total(), 0);
    }

    #[tokio::test]
    async fn closing_the_streams_ends_them_after_what_they_were_given_but_not_the_journal() {
        // Why it matters: the server stops only when its streams end; the
        // journal must still see the events of actions finishing after.
        let hub = hub(16);
        let mut stream = subscribe(&hub, &after(0), 16, Lifetime::Stream);
        let mut journal = subscribe(&hub, &after(0), 16, Lifetime::UntilExit);
        publish(&hub, 2);
        hub.close_streams();
        publish(&hub, 1);
        let mut streamed = Vec::new();
        while let Some(item) = stream.next().await {
            streamed.push(item);
        }
        assert_eq!(streamed.len(), 2);
        // A stream opened after closing still gets its replay, then ends.
        let mut late = subscribe(&hub, &after(0), 16, Lifetime::Stream);
        assert_eq!(late.next_batch(100, u64::MAX).await.len(), 3);
        assert!(late.next().await.is_none());
        hub.close();
        assert_eq!(journal.next_batch(100, u64::MAX).await.len(), 3);
        assert!(journal.next_batch(100, u64::MAX).await.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_for_the_next_event() {
        let hub = hub(16);
        let mut subscription = subscribe(&hub, &after(0), 16, Lifetime::Stream);
        let reader = tokio::spawn(async move { subscription.next().await.is_some() });
        tokio::task::yield_now().await;
        publish(&hub, 1);
        assert!(reader.await.unwrap());
    }

    /// Publishes an `ActionStarted` with one argument of `argument_bytes`.
    fn publish_started(hub: &EventHub, argument_bytes: usize) {
        hub.publish(
            event::Kind::ActionStarted(crate::proto::rbe_runner::events::v1::ActionStarted {
                arguments: vec!["x".repeat(argument_bytes)],
                ..Default::default()
            }),
            Vec::new(),
        );
    }

    #[test]
    fn an_events_bytes_are_its_encoded_size_plus_a_fixed_overhead() {
        let instance = RunnerInstance::random();
        let started = |bytes: usize| {
            event::Kind::ActionStarted(crate::proto::rbe_runner::events::v1::ActionStarted {
                arguments: vec!["x".repeat(bytes)],
                ..Default::default()
            })
        };
        let small = estimated_bytes(&started(10), &[], &instance);
        let large = estimated_bytes(&started(1 << 20), &[], &instance);
        assert!(small >= EVENT_OVERHEAD_BYTES + 10, "{small}");
        assert!(large - small >= (1 << 20) - 10, "{large} - {small}");
        assert!(large - small < (1 << 20) + 16, "{large} - {small}");
    }

    #[test]
    fn the_replay_buffer_keeps_what_fits_its_bytes_and_always_the_newest() {
        // Why it matters: 4,096 events of 1 MB argv held 2.1 GB; the byte
        // budget, not the count, must bound the buffer.
        let hub = Arc::new(EventHub::new(
            RunnerInstance::random(),
            Capacity {
                events: 4096,
                bytes: 1 << 20,
            },
            64,
        ));
        for _ in 0..100 {
            publish_started(&hub, 100 << 10);
        }
        let state = hub.state.lock().unwrap();
        assert!(state.buffer_bytes <= 1 << 20, "{}", state.buffer_bytes);
        let each = state.buffer[0].1;
        assert!(each > 100 << 10, "{each}");
        assert_eq!(state.buffer.len() as u64, (1 << 20) / each);
        assert_eq!(
            state.buffer_bytes,
            state.buffer.iter().map(|(_, bytes)| bytes).sum::<u64>()
        );
        drop(state);
        // An event larger than the whole budget replaces everything.
        publish_started(&hub, 2 << 20);
        let state = hub.state.lock().unwrap();
        assert_eq!(state.buffer.len(), 1);
        assert_eq!(state.buffer[0].0.event.sequence, 101);
    }

    #[test]
    fn a_queue_full_in_bytes_drops_says_what_it_missed_and_frees_its_bytes_when_read() {
        // Why it matters: a subscriber that never reads must cost at most
        // its queue's bytes, and still learn what it missed.
        let hub = hub(4096);
        let capacity = Capacity {
            events: 1024,
            bytes: 300 << 10,
        };
        let mut slow = hub
            .subscribe(&after(0), capacity, Lifetime::Stream)
            .unwrap();
        for _ in 0..10 {
            publish_started(&hub, 100 << 10);
        }
        assert_eq!(hub.dropped_total(), 8);
        assert!(slow.queue.state.lock().unwrap().bytes <= 300 << 10);
        assert_eq!(ready(&mut slow), strings(&["1", "2", "lost 3-10"]));
        assert_eq!(slow.queue.state.lock().unwrap().bytes, 0);
        // Alone in an empty queue, an event larger than the budget is kept.
        publish_started(&hub, 1 << 20);
        assert_eq!(ready(&mut slow), strings(&["11"]));
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_bytes_but_holds_at_least_one_delivery() {
        let hub = hub(4096);
        let mut journal = subscribe(&hub, &after(0), 1024, Lifetime::UntilExit);
        for _ in 0..10 {
            publish_started(&hub, 100 << 10);
        }
        assert_eq!(journal.next_batch(1024, 250 << 10).await.len(), 3);
        assert_eq!(journal.next_batch(1024, 1).await.len(), 1);
        assert_eq!(journal.next_batch(2, u64::MAX).await.len(), 2);
    }

    #[test]
    fn one_stream_more_than_the_maximum_is_refused_naming_it_and_the_journal_is_not_counted() {
        // Why it matters: 1,000 subscribers that never read cost 270 MB;
        // the cap bounds what clients can make the runner hold.
        let hub = Arc::new(EventHub::new(RunnerInstance::random(), events(16), 2));
        let _journal = subscribe(&hub, &after(0), 16, Lifetime::UntilExit);
        let first = subscribe(&hub, &after(0), 16, Lifetime::Stream);
        let _second = subscribe(&hub, &after(0), 16, Lifetime::ReplayOnly);
        let refused = hub
            .subscribe(&after(0), events(16), Lifetime::Stream)
            .err()
            .expect("a third stream is refused");
        assert_eq!(refused, SubscribeError::TooManySubscribers { maximum: 2 });
        assert!(refused.to_string().contains("events.maximumSubscribers"));
        drop(first);
        assert!(hub
            .subscribe(&after(0), events(16), Lifetime::Stream)
            .is_ok());
    }

    #[test]
    fn the_replay_plan_for_each_kind_of_start() {
        let current = RunnerInstance::random();
        let (this, stale) = (current.as_str().to_owned(), other_than(&current));
        let plan = |after_sequence, runner_instance: &str, oldest, last| {
            plan_replay(
                &Start {
                    after_sequence,
                    live_only: false,
                    runner_instance: runner_instance.into(),
                },
                &current,
                oldest,
                last,
            )
        };
        let replay = |lost, from| ReplayPlan { lost, from };
        assert_eq!(plan(0, "", None, 0), replay(None, None));
        assert_eq!(plan(0, "", Some(1), 5), replay(None, Some(1)));
        assert_eq!(plan(0, "", Some(30), 40), replay(None, Some(30)));
        assert_eq!(plan(5, "", Some(1), 5), replay(None, None));
        assert_eq!(plan(9, "", Some(1), 5), replay(None, None));
        assert_eq!(plan(29, "", Some(30), 40), replay(None, Some(30)));
        assert_eq!(plan(3, "", Some(30), 40), replay(Some((4, 29)), Some(30)));
        assert_eq!(plan(3, &this, Some(1), 9), replay(None, Some(4)));
        assert_eq!(plan(3, &stale, Some(1), 9), replay(None, Some(1)));
        assert_eq!(
            plan(3, &stale, Some(30), 40),
            replay(Some((1, 29)), Some(30))
        );
        assert_eq!(plan(u64::MAX, "", Some(1), 9), replay(None, None));
    }
}
