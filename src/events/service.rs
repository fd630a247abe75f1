//! The gRPC `rbe_runner.events.v1.Events` service: a subscription per
//! call, its deliveries streamed as they come.
//!
//! tonic polls the stream only as fast as HTTP/2 flow control lets it
//! send, so a client that does not read fills its own queue in the hub and
//! then misses events (told with `EventsLost`); it never holds up
//! publishing. Each stream also costs its HTTP/2 send buffer, so their
//! number is capped: one more answers RESOURCE_EXHAUSTED, which a client
//! may retry later.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::hub::{delivered_event, Capacity, EventHub, Lifetime, Start, SubscribeError};
use crate::proto::rbe_runner::events::v1::events_server::Events;
use crate::proto::rbe_runner::events::v1::{Event, SubscribeRequest};

/// Serves subscriptions to one hub.
pub struct EventsService {
    hub: Arc<EventHub>,
    queue_capacity: Capacity,
}

impl EventsService {
    /// Subscriptions to `hub`, each with a queue of `queue_capacity`.
    pub fn new(hub: Arc<EventHub>, queue_capacity: Capacity) -> Self {
        EventsService {
            hub,
            queue_capacity,
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let start = Start {
            after_sequence: request.after_sequence,
            live_only: request.live_only,
            runner_instance: request.runner_instance,
        };
        let lifetime = if request.replay_only {
            Lifetime::ReplayOnly
        } else {
            Lifetime::Stream
        };
        let subscription = self
            .hub
            .subscribe(&start, self.queue_capacity, lifetime)
            .map_err(|error| match error {
                SubscribeError::TooManySubscribers { .. } => {
                    Status::resource_exhausted(error.to_string())
                }
            })?;
        let instance = self.hub.instance().clone();
        let stream = futures_util::stream::unfold(
            (subscription, instance),
            |(mut subscription, instance)| async move {
                let delivery = subscription.next().await?;
                let event = delivered_event(&delivery, &instance).event.clone();
                Some((Ok(event), (subscription, instance)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
