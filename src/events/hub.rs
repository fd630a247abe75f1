//! The broadcaster: numbers events, keeps the last ones for replay, and
//! hands each to every subscriber's bounded queue.
//!
//! Two promises, and how they are kept:
//!
//! - **Publishing never waits for a subscriber.** Each subscriber has a
//!   queue of its own with a fixed capacity; publishing offers the event
//!   to each queue under a short lock and moves on. A full queue drops the
//!   event for that subscriber and remembers the range it missed; the
//!   subscriber is told with one [`Delivery::Lost`] before the next event it
//!   does get, so it always knows what it missed and nothing else is lost.
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

use tokio::sync::Notify;

use super::Published;
use crate::action::RunnerInstance;
use crate::proto::rbe_runner::events::v1::{event, Event};
use crate::sync::lock_unpoisoned;

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
    replay_capacity: usize,
    state: Mutex<HubState>,
    dropped_total: AtomicU64,
}

#[derive(Default)]
struct HubState {
    last_sequence: u64,
    buffer: VecDeque<Arc<Published>>,
    subscribers: BTreeMap<u64, (Lifetime, Arc<Queue>)>,
    next_subscriber: u64,
    streams_closed: bool,
}

impl EventHub {
    /// A hub for `instance` keeping the last `replay_capacity` events (at
    /// least one).
    pub fn new(instance: RunnerInstance, replay_capacity: usize) -> Self {
        EventHub {
            instance,
            replay_capacity: replay_capacity.max(1),
            state: Mutex::new(HubState::default()),
            dropped_total: AtomicU64::new(0),
        }
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

    /// Numbers `kind` and hands it to every subscriber. Never waits.
    pub fn publish(&self, kind: event::Kind, usages: Vec<super::Usage>) {
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
        if state.buffer.len() == self.replay_capacity {
            state.buffer.pop_front();
        }
        state.buffer.push_back(published.clone());
        let mut dropped = 0;
        for (_, queue) in state.subscribers.values() {
            if !queue.offer(&published) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.dropped_total.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Subscribes from `start`, with a live queue of `queue_capacity`
    /// events (at least one).
    pub fn subscribe(
        self: &Arc<Self>,
        start: &Start,
        queue_capacity: usize,
        lifetime: Lifetime,
    ) -> Subscription {
        let mut state = lock_unpoisoned(&self.state);
        let oldest = state.buffer.front().map(|event| event.event.sequence);
        let plan = plan_replay(start, &self.instance, oldest, state.last_sequence);
        let mut replay = VecDeque::new();
        if let Some((first, last)) = plan.lost {
            replay.push_back(Delivery::Lost { first, last });
        }
        if let Some(from) = plan.from {
            replay.extend(
                state
                    .buffer
                    .iter()
                    .filter(|event| event.event.sequence >= from)
                    .cloned()
                    .map(Delivery::Event),
            );
        }
        let queue = Arc::new(Queue::new(queue_capacity.max(1)));
        if lifetime == Lifetime::ReplayOnly
            || (lifetime == Lifetime::Stream && state.streams_closed)
        {
            queue.close();
        }
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        state.subscribers.insert(id, (lifetime, queue.clone()));
        Subscription {
            hub: self.clone(),
            id,
            replay,
            queue,
        }
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

// ---------------------------------------------------------------------------
// One subscriber's queue
// ---------------------------------------------------------------------------

/// A bounded queue with one reader. See the module documentation.
struct Queue {
    capacity: usize,
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Delivery>,
    /// Sequences dropped since the last one queued, not yet reported.
    lost: Option<(u64, u64)>,
    closed: bool,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Queue {
            capacity,
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
        }
    }

    /// Queues `event`, or records it as lost when the queue is full.
    /// Returns whether it was queued.
    fn offer(&self, event: &Arc<Published>) -> bool {
        let sequence = event.event.sequence;
        let mut state = lock_unpoisoned(&self.state);
        if state.closed {
            return true;
        }
        if state.items.len() >= self.capacity {
            state.lost = Some(match state.lost {
                Some((first, _)) => (first, sequence),
                None => (sequence, sequence),
            });
            return false;
        }
        // The report of what was missed goes before the next event, so
        // that event is always `last + 1`.
        if let Some((first, last)) = state.lost.take() {
            state.items.push_back(Delivery::Lost { first, last });
        }
        state.items.push_back(Delivery::Event(event.clone()));
        drop(state);
        self.ready.notify_one();
        true
    }

    fn close(&self) {
        lock_unpoisoned(&self.state).closed = true;
        self.ready.notify_one();
    }

    /// The next delivery without waiting; `Err(())` once closed and empty.
    fn try_next(&self) -> Result<Option<Delivery>, ()> {
        let mut state = lock_unpoisoned(&self.state);
        if let Some(item) = state.items.pop_front() {
            return Ok(Some(item));
        }
        // A subscriber that caught up learns what it missed at once, not
        // only with the next event.
        if let Some((first, last)) = state.lost.take() {
            return Ok(Some(Delivery::Lost { first, last }));
        }
        if state.closed {
            return Err(());
        }
        Ok(None)
    }

    async fn next(&self) -> Option<Delivery> {
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
    replay: VecDeque<Delivery>,
    queue: Arc<Queue>,
}

impl Subscription {
    /// The next delivery; `None` once the subscription was closed and
    /// everything given to it was read.
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some(item) = self.replay.pop_front() {
            return Some(item);
        }
        self.queue.next().await
    }

    /// The next delivery and up to `limit - 1` more that are ready.
    /// Empty once the subscription ended.
    pub async fn next_batch(&mut self, limit: usize) -> Vec<Delivery> {
        let Some(first) = self.next().await else {
            return Vec::new();
        };
        let mut batch = vec![first];
        while batch.len() < limit {
            let item = match self.replay.pop_front() {
                Some(item) => item,
                None => match self.queue.try_next() {
                    Ok(Some(item)) => item,
                    _ => break,
                },
            };
            batch.push(item);
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
        Arc::new(EventHub::new(RunnerInstance::random(), capacity))
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
            let item = match subscription.replay.pop_front() {
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
        let mut subscription = hub.subscribe(&after(0), 16, Lifetime::Stream);
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
        let mut resumed = hub.subscribe(&after(3), 16, Lifetime::Stream);
        let mut live = hub.subscribe(
            &Start {
                live_only: true,
                ..Start::default()
            },
            16,
            Lifetime::Stream,
        );
        let mut caught_up = hub.subscribe(&after(5), 16, Lifetime::Stream);
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
        let mut subscription = hub.subscribe(&after(1), 16, Lifetime::Stream);
        let mut expected = vec!["lost 2-12".to_string()];
        expected.extend((13..=20).map(|n| n.to_string()));
        assert_eq!(ready(&mut subscription), expected);
        // Whatever is buffered, when that is all one asks for, is no gap.
        let mut everything = hub.subscribe(&after(0), 16, Lifetime::Stream);
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
        let mut subscription = hub.subscribe(&start, 16, Lifetime::Stream);
        assert_eq!(ready(&mut subscription), strings(&["1", "2", "3"]));
        publish(&hub, 10);
        let mut late = hub.subscribe(&start, 16, Lifetime::Stream);
        let mut expected = vec!["lost 1-5".to_string()];
        expected.extend((6..=13).map(|n| n.to_string()));
        assert_eq!(ready(&mut late), expected);
        // The current instance's own sequence resumes as usual.
        let current = Start {
            runner_instance: hub.instance().as_str().into(),
            ..after(12)
        };
        assert_eq!(
            ready(&mut hub.subscribe(&current, 16, Lifetime::Stream)),
            strings(&["13"])
        );
    }

    #[test]
    fn a_full_queue_drops_for_that_subscriber_only_and_says_what_it_missed() {
        // Why it matters: publishing never waits; a slow subscriber loses
        // events, knows which, and the next one it gets is last + 1.
        let hub = hub(64);
        let mut slow = hub.subscribe(&after(0), 3, Lifetime::Stream);
        let mut fast = hub.subscribe(&after(0), 64, Lifetime::Stream);
        publish(&hub, 10);
        assert_eq!(hub.dropped_total(), 7);
        assert_eq!(fast.queue.state.lock().unwrap().items.len(), 10);
        // Reading one frees a slot; the next event is queued behind the
        // report of the gap.
        assert!(matches!(
            slow.queue.try_next(),
            Ok(Some(Delivery::Event(_)))
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
        let stuck = hub.subscribe(&after(0), 16, Lifetime::Stream);
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
        let subscription = hub.subscribe(&after(0), 4, Lifetime::Stream);
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
        let mut stream = hub.subscribe(&after(0), 16, Lifetime::Stream);
        let mut journal = hub.subscribe(&after(0), 16, Lifetime::UntilExit);
        publish(&hub, 2);
        hub.close_streams();
        publish(&hub, 1);
        let mut streamed = Vec::new();
        while let Some(item) = stream.next().await {
            streamed.push(item);
        }
        assert_eq!(streamed.len(), 2);
        // A stream opened after closing still gets its replay, then ends.
        let mut late = hub.subscribe(&after(0), 16, Lifetime::Stream);
        assert_eq!(late.next_batch(100).await.len(), 3);
        assert!(late.next().await.is_none());
        hub.close();
        assert_eq!(journal.next_batch(100).await.len(), 3);
        assert!(journal.next_batch(100).await.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_for_the_next_event() {
        let hub = hub(16);
        let mut subscription = hub.subscribe(&after(0), 16, Lifetime::Stream);
        let reader = tokio::spawn(async move { subscription.next().await.is_some() });
        tokio::task::yield_now().await;
        publish(&hub, 1);
        assert!(reader.await.unwrap());
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
