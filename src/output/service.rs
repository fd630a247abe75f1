//! The gRPC `rbe_runner.output.v1.Output` service: a follower per call,
//! its chunks streamed as gRPC asks for them.
//!
//! tonic polls the stream only as fast as HTTP/2 flow control lets it
//! send, and the follower reads the next chunk only when polled: a client
//! that stops reading holds one chunk and its own stream, nothing else.
//! Followers and event subscribers together are capped at
//! `events.maximumSubscribers`; one more answers RESOURCE_EXHAUSTED.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::follow::Follower;
use super::registry::{Followable, FINISHED_ACTIONS_KEPT};
use super::{FollowError, Opener};
use crate::bounded::bounded_message;
use crate::proto::rbe_runner::output::v1::output_server::Output;
use crate::proto::rbe_runner::output::v1::{FollowRequest, OutputChunk};

/// Serves followers of the actions in one registry.
pub struct OutputService {
    registry: Arc<Followable>,
    opener: Arc<Opener>,
}

impl OutputService {
    /// Followers of `registry`'s actions, opened by `opener`.
    pub fn new(registry: Arc<Followable>, opener: Arc<Opener>) -> Self {
        OutputService { registry, opener }
    }

    /// The one place a Follow call is let in, and with what: the request
    /// checked, its action found, its file opened, its place under the cap
    /// taken. What an action prints may hold secrets (a token echoed by a
    /// test), so whatever policy decides who may subscribe to the events
    /// (`Events.Subscribe`) decides here too, before anything is opened.
    async fn admit(&self, request: Request<FollowRequest>) -> Result<Follower, FollowError> {
        let request = request.into_inner();
        if request.action_id.is_empty() {
            return Err(FollowError::EmptyActionId);
        }
        let action =
            self.registry
                .find(&request.action_id)
                .ok_or_else(|| FollowError::UnknownAction {
                    id: request.action_id.clone(),
                    instance: self.registry.instance().to_string(),
                    kept: FINISHED_ACTIONS_KEPT,
                })?;
        let opener = self.opener.clone();
        tokio::task::spawn_blocking(move || opener.follower(&request, &action))
            .await
            .unwrap_or_else(|joined| {
                Err(FollowError::Watch {
                    what: "the output".into(),
                    reason: joined.to_string(),
                })
            })
    }
}

/// The gRPC status of a refused or failed Follow: the request's fault, an
/// action that cannot be followed, a full runner, or the node's trouble.
fn status_from_follow_error(error: FollowError) -> Status {
    let message = bounded_message(error.to_string());
    match error {
        FollowError::EmptyActionId | FollowError::UnknownStream(_) => {
            Status::invalid_argument(message)
        }
        FollowError::UnknownAction { .. }
        | FollowError::Removed { .. }
        | FollowError::Replaced { .. } => Status::not_found(message),
        FollowError::TooManyStreams(_) => Status::resource_exhausted(message),
        FollowError::Watch { .. } | FollowError::Read { .. } => Status::unavailable(message),
        FollowError::Open { .. } => Status::internal(message),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<OutputChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Output for OutputService {
    type FollowStream = ChunkStream;

    async fn follow(
        &self,
        request: Request<FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let follower = self
            .admit(request)
            .await
            .map_err(status_from_follow_error)?;
        let stream = futures_util::stream::unfold(follower, |mut follower| async move {
            let chunk = follower.next_chunk().await?;
            Some((chunk.map_err(status_from_follow_error), follower))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::StreamSlots;

    #[test]
    fn each_refusal_has_its_code() {
        // Why it matters: clients act on the code: NOT_FOUND is final,
        // RESOURCE_EXHAUSTED and UNAVAILABLE may be retried.
        let cases = [
            (FollowError::EmptyActionId, tonic::Code::InvalidArgument),
            (FollowError::UnknownStream(7), tonic::Code::InvalidArgument),
            (
                FollowError::UnknownAction {
                    id: "x-1".into(),
                    instance: "x".into(),
                    kept: 1,
                },
                tonic::Code::NotFound,
            ),
            (
                FollowError::Removed {
                    id: "x-1".into(),
                    stream: "stdout",
                    path: "/b/1/stdout".into(),
                },
                tonic::Code::NotFound,
            ),
            (
                FollowError::TooManyStreams(StreamSlots::new(0).take().unwrap_err()),
                tonic::Code::ResourceExhausted,
            ),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = status_from_follow_error(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }
}
