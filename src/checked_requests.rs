//! Undecodable requests to the services whose codec is not ours.
//!
//! gRPC health and server reflection come with their own generated servers
//! and tonic's prost codec, which answers INTERNAL for a request it cannot
//! decode (a broken encoding, a string that is not UTF-8): the runner's
//! fault, by the rule of [`crate::server::status_from_error`], when it is
//! the client's. Reflection is worse: its stream ends with OK, and the
//! client is told nothing. So each of them is wrapped in
//! [`CheckedRequests`], which decodes every request message before the
//! service does, with the same rule as our own codec
//! ([`crate::request_decoding::undecodable`]): the first one that cannot be
//! decoded ends the request body with INVALID_ARGUMENT, and the response
//! carries that status, whatever the service made of its broken stream.
//!
//! Only whole, uncompressed messages within tonic's default size limit are
//! held back and checked; anything else (a compressed or oversized message,
//! a truncated body) is passed on for tonic to refuse as it does for every
//! service.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tower::Service;

use crate::fault::RunnerError;
use crate::request_decoding::undecodable;
use crate::server::status_from_error;

/// The gRPC message header: a compression flag and a 4-byte length.
const HEADER_BYTES: usize = 5;

/// tonic's default limit on a received message, which the wrapped services
/// keep; a longer message is passed on unchecked for tonic to refuse.
const MAXIMUM_CHECKED_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why a call was refused, once known: set by the request body, read by
/// the response.
type Refusal = Arc<OnceLock<RunnerError>>;

/// Wraps `inner`, a generated tonic server whose requests are all `M`s, so
/// that a request message that cannot be decoded as `M` is answered with
/// INVALID_ARGUMENT. See the module documentation.
pub struct CheckedRequests<S, M> {
    inner: S,
    _message: PhantomData<fn() -> M>,
}

impl<S, M> CheckedRequests<S, M> {
    pub fn new(inner: S) -> Self {
        CheckedRequests {
            inner,
            _message: PhantomData,
        }
    }
}

impl<S: Clone, M> Clone for CheckedRequests<S, M> {
    fn clone(&self) -> Self {
        CheckedRequests::new(self.inner.clone())
    }
}

impl<S: NamedService, M> NamedService for CheckedRequests<S, M> {
    const NAME: &'static str = S::NAME;
}

impl<S, M> Service<Request<Body>> for CheckedRequests<S, M>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
    M: prost::Message + Default + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let refusal = Refusal::default();
        let request = request.map(|body| Body::new(CheckedBody::<M>::new(body, refusal.clone())));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // Refused before the service answered (a unary request): the
            // refusal is the answer.
            if let Some(error) = refusal.get() {
                return Ok(status_from_error(error.clone()).into_http());
            }
            if http_body::Body::is_end_stream(response.body()) {
                return Ok(response);
            }
            Ok(response.map(|body| Body::new(RefusalTrailers::new(body, refusal))))
        })
    }
}

// ---------------------------------------------------------------------------
// The request: whole messages, each checked
// ---------------------------------------------------------------------------

/// How far a request body has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checking {
    /// Every message is held back until it is whole, and checked.
    Messages,
    /// A message is not ours to check: the rest is passed on as it comes.
    PassingThrough,
    /// Refused or ended: nothing more is read.
    Finished,
}

/// A request body that yields only messages that decode as `M`, and ends
/// with INVALID_ARGUMENT at the first that does not.
struct CheckedBody<M> {
    inner: Body,
    /// Bytes received and not yet passed on: the start of a message.
    pending: BytesMut,
    checking: Checking,
    /// What ended the inner body (its trailers, an error or its end),
    /// passed on after the pending bytes.
    ended: Option<Option<Result<Frame<Bytes>, Status>>>,
    refusal: Refusal,
    _message: PhantomData<fn() -> M>,
}

impl<M: prost::Message + Default> CheckedBody<M> {
    fn new(inner: Body, refusal: Refusal) -> Self {
        CheckedBody {
            inner,
            pending: BytesMut::new(),
            checking: Checking::Messages,
            ended: None,
            refusal,
            _message: PhantomData,
        }
    }

    /// The next bytes to pass on: a whole checked message, or, when
    /// passing through or once the inner body has ended, whatever is
    /// pending.
    fn next_bytes(&mut self) -> Option<Result<Bytes, Status>> {
        if self.checking == Checking::Messages {
            match split_message(&mut self.pending) {
                Split::Whole(message) => return Some(self.check(message)),
                Split::Incomplete => {}
                Split::Unchecked => self.checking = Checking::PassingThrough,
            }
        }
        let flush = self.checking == Checking::PassingThrough || self.ended.is_some();
        if flush && !self.pending.is_empty() {
            return Some(Ok(self.pending.split().freeze()));
        }
        None
    }

    /// `message` (header included), if it decodes as `M`.
    fn check(&mut self, message: Bytes) -> Result<Bytes, Status> {
        match M::decode(&message[HEADER_BYTES..]) {
            Ok(_) => Ok(message),
            Err(error) => {
                let error = undecodable(error);
                self.checking = Checking::Finished;
                let _ = self.refusal.set(error.clone());
                Err(status_from_error(error))
            }
        }
    }
}

impl<M: prost::Message + Default> http_body::Body for CheckedBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.next_bytes() {
                return Poll::Ready(Some(bytes.map(Frame::data)));
            }
            if this.checking == Checking::Finished {
                return Poll::Ready(None);
            }
            if let Some(end) = this.ended.take() {
                if !matches!(end, Some(Ok(_))) {
                    this.checking = Checking::Finished;
                }
                return Poll::Ready(end);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending.extend_from_slice(&data),
                    Err(frame) => this.ended = Some(Some(Ok(frame))),
                },
                end => this.ended = Some(end),
            }
        }
    }
}

/// What the pending bytes of a request hold.
#[derive(Debug, PartialEq, Eq)]
enum Split {
    /// A whole message, header included, taken from the pending bytes.
    Whole(Bytes),
    /// Not yet a whole message.
    Incomplete,
    /// A message not to check: compressed, or longer than
    /// [`MAXIMUM_CHECKED_MESSAGE_BYTES`].
    Unchecked,
}

/// Takes the first message from `pending` when it is whole.
fn split_message(pending: &mut BytesMut) -> Split {
    let Some(header) = pending.first_chunk::<HEADER_BYTES>() else {
        return Split::Incomplete;
    };
    let [compressed, length @ ..] = *header;
    let length = u32::from_be_bytes(length) as usize;
    if compressed != 0 || length > MAXIMUM_CHECKED_MESSAGE_BYTES {
        return Split::Unchecked;
    }
    if pending.len() < HEADER_BYTES + length {
        return Split::Incomplete;
    }
    Split::Whole(pending.split_to(HEADER_BYTES + length).freeze())
}

// ---------------------------------------------------------------------------
// The response: the refusal in its trailers
// ---------------------------------------------------------------------------

/// A response body whose trailers say INVALID_ARGUMENT when its request
/// was refused after the service had answered (a streaming call).
struct RefusalTrailers {
    inner: Body,
    refusal: Refusal,
    finished: bool,
}

impl RefusalTrailers {
    fn new(inner: Body, refusal: Refusal) -> Self {
        RefusalTrailers {
            inner,
            refusal,
            finished: false,
        }
    }

    /// The refusal's trailers, ending the response, if the request was
    /// refused.
    fn refused(&mut self) -> Option<Frame<Bytes>> {
        let error = self.refusal.get()?;
        self.finished = true;
        Some(Frame::trailers(trailers_of(status_from_error(
            error.clone(),
        ))))
    }
}

impl http_body::Body for RefusalTrailers {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let ends = match &frame {
            None => true,
            Some(Ok(frame)) => frame.is_trailers(),
            Some(Err(_)) => false,
        };
        if ends {
            if let Some(refused) = this.refused() {
                return Poll::Ready(Some(Ok(refused)));
            }
        }
        Poll::Ready(frame)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `status` as trailers.
fn trailers_of(status: Status) -> HeaderMap {
    // Only an invalid header value could fail, and tonic percent-encodes
    // the message; the code alone is still the answer.
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from(status.code() as i32));
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prost::Message;
    use tonic_health::pb::HealthCheckRequest;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        framed
    }

    /// A body delivering `chunks` one by one.
    fn body_of(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|chunk| Ok::<_, Status>(Frame::data(Bytes::from(chunk))));
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    /// Reads `body` to its end: the bytes passed on, and the error if any.
    async fn drain(mut body: CheckedBody<HealthCheckRequest>) -> (Vec<u8>, Option<Status>) {
        let mut passed = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => passed.extend_from_slice(&frame.into_data().unwrap()),
                Err(status) => return (passed, Some(status)),
            }
        }
        (passed, None)
    }

    fn valid() -> Vec<u8> {
        framed(
            &HealthCheckRequest {
                service: "buildbarn.runner.Runner".into(),
            }
            .encode_to_vec(),
        )
    }

    /// Messages split across chunks, or several in one, reach the service
    /// as sent.
    #[tokio::test]
    async fn valid_messages_pass_whatever_their_chunks() {
        let two = [valid(), valid()].concat();
        let chunks = vec![two[..3].to_vec(), two[3..20].to_vec(), two[20..].to_vec()];
        let refusal = Refusal::default();
        let (passed, error) = drain(CheckedBody::new(body_of(chunks), refusal.clone())).await;
        assert_eq!(passed, two);
        assert!(error.is_none());
        assert!(refusal.get().is_none());
    }

    /// The point: the service never sees the message, and the refusal
    /// names the field.
    #[tokio::test]
    async fn a_string_that_is_not_utf8_is_refused_naming_the_field() {
        let chunks = vec![valid(), framed(&[0x0a, 2, b'a', 0xff])];
        let refusal = Refusal::default();
        let (passed, error) = drain(CheckedBody::new(body_of(chunks), refusal.clone())).await;
        assert_eq!(passed, valid(), "only the valid message is passed on");
        let status = error.unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("HealthCheckRequest.service"),
            "{}",
            status.message()
        );
        assert_eq!(refusal.get().unwrap().to_string(), status.message());
    }

    /// tonic refuses these as it does for every service; holding back a
    /// message of any length would cost unbounded memory.
    #[tokio::test]
    async fn compressed_oversized_and_truncated_messages_pass_unchecked() {
        let mut compressed = framed(&[0xff, 0xff]);
        compressed[0] = 1;
        let mut oversized = vec![0];
        oversized.extend_from_slice(&(MAXIMUM_CHECKED_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        oversized.push(0xff);
        let truncated = framed(&[0x0a, 5, b'a'])[..6].to_vec();
        for bytes in [compressed, oversized, truncated] {
            let refusal = Refusal::default();
            let body = CheckedBody::new(body_of(vec![bytes.clone()]), refusal.clone());
            let (passed, error) = drain(body).await;
            assert_eq!(passed, bytes);
            assert!(error.is_none());
            assert!(refusal.get().is_none());
        }
    }

    #[test]
    fn messages_are_split_at_their_length() {
        let mut pending = BytesMut::from(&[valid(), vec![0, 0]][..].concat()[..]);
        assert_eq!(split_message(&mut pending), Split::Whole(valid().into()));
        assert_eq!(split_message(&mut pending), Split::Incomplete);
        assert_eq!(&pending[..], [0, 0]);
    }

    /// A stream the service ended with OK after the refusal (reflection
    /// does) ends with the refusal instead.
    #[tokio::test]
    async fn a_refused_stream_ends_with_the_refusal_in_its_trailers() {
        let refusal = Refusal::default();
        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", HeaderValue::from(0));
        let inner = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            [
                Ok::<_, Status>(Frame::data(Bytes::from_static(b"answer"))),
                Ok(Frame::trailers(ok)),
            ],
        )));
        let mut body = RefusalTrailers::new(inner, refusal.clone());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "answer");
        refusal
            .set(RunnerError::InvalidArgument("broken".into()))
            .unwrap();
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "3");
        assert_eq!(trailers["grpc-message"], "broken");
        assert!(body.frame().await.is_none());
    }
}
