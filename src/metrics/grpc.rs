//! go-grpc-prometheus's server metrics, from one tower layer around the
//! gRPC routes: `grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_msg_received_total`, `grpc_server_msg_sent_total` and
//! `grpc_server_handling_seconds`, with its label names and values.
//!
//! The layer sits outside [`DeadlineService`], so it counts the status the
//! client really receives (`DeadlineExceeded` when a deadline passes).
//! The status is read from the response headers (a trailers-only answer)
//! or from the trailers at the end of the body. A call whose future or
//! body is dropped before either (the client reset the stream) counts as
//! `Canceled`, or `DeadlineExceeded` when its `grpc-timeout` had passed.
//! Messages are counted from the gRPC length-prefixed framing of the
//! request and response bodies, so streaming methods count every message.
//! Paths that are not a served method are passed through uncounted: a
//! client must not be able to create series at will.
//!
//! With them, `rbe_runner_grpc_connections_rejected_total`: TCP
//! connections the gRPC listeners closed at once, being at their cap.
//!
//! [`DeadlineService`]: crate::listener::deadline::DeadlineService

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use tokio::time::Instant;
use tonic::Code;
use tower::Service;

use super::{go_code_name, ALL_CODES, DECIMAL_BUCKETS};
use crate::action::TerminationReason;
use crate::listener::deadline::parse_grpc_timeout;

/// go-grpc-prometheus's `grpc_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ServerStream,
    ClientStream,
    BidiStream,
}

impl GrpcType {
    fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ServerStream => "server_stream",
            GrpcType::ClientStream => "client_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// Every method the gRPC servers serve (see `server.rs`): the runner,
/// the event stream, live output, gRPC health and server reflection.
pub const SERVED_METHODS: &[(&str, &str, GrpcType)] = &[
    ("buildbarn.runner.Runner", "CheckReadiness", GrpcType::Unary),
    ("buildbarn.runner.Runner", "Run", GrpcType::Unary),
    (
        "rbe_runner.events.v1.Events",
        "Subscribe",
        GrpcType::ServerStream,
    ),
    (
        "rbe_runner.output.v1.Output",
        "Follow",
        GrpcType::ServerStream,
    ),
    ("grpc.health.v1.Health", "Check", GrpcType::Unary),
    ("grpc.health.v1.Health", "Watch", GrpcType::ServerStream),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        GrpcType::BidiStream,
    ),
];

/// The server metrics, pre-created at zero for [`SERVED_METHODS`].
pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    msg_received: IntCounterVec,
    msg_sent: IntCounterVec,
    handling_seconds: HistogramVec,
    connections_rejected: IntCounter,
}

const METHOD_LABELS: [&str; 3] = ["grpc_type", "grpc_service", "grpc_method"];

impl GrpcMetrics {
    /// Creates the metrics in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(counter.clone()))?;
            Ok::<_, prometheus::Error>(counter)
        };
        let handled_labels = ["grpc_type", "grpc_service", "grpc_method", "grpc_code"];
        let metrics = GrpcMetrics {
            started: counter(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &METHOD_LABELS,
            )?,
            handled: counter(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &handled_labels,
            )?,
            msg_received: counter(
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &METHOD_LABELS,
            )?,
            msg_sent: counter(
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &METHOD_LABELS,
            )?,
            handling_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                )
                .buckets(DECIMAL_BUCKETS.to_vec()),
                &METHOD_LABELS,
            )?,
            connections_rejected: IntCounter::new(
                "rbe_runner_grpc_connections_rejected_total",
                "TCP connections to the gRPC listeners closed as soon as accepted, because the listeners held as many as they may.",
            )?,
        };
        registry.register(Box::new(metrics.handling_seconds.clone()))?;
        registry.register(Box::new(metrics.connections_rejected.clone()))?;
        for index in 0..SERVED_METHODS.len() {
            let labels = method_labels(index);
            metrics.started.with_label_values(&labels);
            metrics.msg_received.with_label_values(&labels);
            metrics.msg_sent.with_label_values(&labels);
            metrics.handling_seconds.with_label_values(&labels);
            for code in ALL_CODES {
                metrics.handled.with_label_values(&[
                    labels[0],
                    labels[1],
                    labels[2],
                    go_code_name(code),
                ]);
            }
        }
        Ok(metrics)
    }

    /// The counter of TCP connections turned away at the cap.
    pub fn connections_rejected(&self) -> IntCounter {
        self.connections_rejected.clone()
    }
}

fn method_labels(index: usize) -> [&'static str; 3] {
    let (service, method, grpc_type) = SERVED_METHODS[index];
    [grpc_type.as_str(), service, method]
}

/// The index in [`SERVED_METHODS`] of the request path `/service/method`.
fn served_method(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    SERVED_METHODS
        .iter()
        .position(|(s, m, _)| *s == service && *m == method)
}

// ---------------------------------------------------------------------------
// One call
// ---------------------------------------------------------------------------

/// One counted call, from its start until its status is known. Dropped
/// unfinished, it records `Canceled` or `DeadlineExceeded`.
struct CallRecord {
    metrics: Arc<GrpcMetrics>,
    labels: [&'static str; 3],
    started: Instant,
    deadline: Option<Instant>,
    finished: bool,
}

impl CallRecord {
    fn start(metrics: Arc<GrpcMetrics>, index: usize, headers: &HeaderMap) -> Self {
        let started = Instant::now();
        let labels = method_labels(index);
        metrics.started.with_label_values(&labels).inc();
        let deadline = headers
            .get("grpc-timeout")
            .and_then(|value| parse_grpc_timeout(value.as_bytes()))
            .and_then(|timeout| started.checked_add(timeout));
        CallRecord {
            metrics,
            labels,
            started,
            deadline,
            finished: false,
        }
    }

    fn count_sent(&self, messages: u64) {
        if messages > 0 {
            self.metrics
                .msg_sent
                .with_label_values(&self.labels)
                .inc_by(messages);
        }
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let [grpc_type, service, method] = self.labels;
        self.metrics
            .handled
            .with_label_values(&[grpc_type, service, method, go_code_name(code)])
            .inc();
        self.metrics
            .handling_seconds
            .with_label_values(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.finished {
            let code = match TerminationReason::of_dropped_call(self.deadline, Instant::now()) {
                TerminationReason::Deadline => Code::DeadlineExceeded,
                _ => Code::Cancelled,
            };
            self.finish(code);
        }
    }
}

/// The code of a `grpc-status` header or trailer.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// Counts gRPC messages in a byte stream: each is a 1-byte flag, a 4-byte
/// big-endian length and that many bytes.
#[derive(Debug, Default)]
struct MessageCounter {
    /// Bytes of the current prefix seen so far.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to skip.
    remaining: u64,
}

impl MessageCounter {
    /// The number of messages that begin in `data`.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut begun = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skipped = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= skipped as u64;
                data = &data[skipped..];
                continue;
            }
            let taken = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + taken].copy_from_slice(&data[..taken]);
            self.prefix_len += taken;
            data = &data[taken..];
            if self.prefix_len == 5 {
                begun += 1;
                self.prefix_len = 0;
                let length = [
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ];
                self.remaining = u64::from(u32::from_be_bytes(length));
            }
        }
        begun
    }
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

/// A request body whose messages are counted as received.
pub struct CountedRequestBody<B> {
    inner: B,
    counted: Option<(MessageCounter, prometheus::IntCounter)>,
}

impl<B> Body for CountedRequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(data), Some((counter, received))) = (frame.data_ref(), &mut self.counted) {
                received.inc_by(counter.feed(data.chunk()));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose messages are counted as sent, and whose trailers
/// finish the call's record.
struct CountedResponseBody {
    inner: tonic::body::Body,
    counter: MessageCounter,
    record: CallRecord,
}

impl Body for CountedResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.count_sent(this.counter.feed(data.chunk()));
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.record
                        .finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            // A body that ends without trailers has no status: the
            // client sees a protocol error, which grpc-go reports as
            // Unknown... unless dropped first, which is a cancellation.
            Poll::Ready(None) => this.record.finish(Code::Unknown),
            Poll::Ready(Some(Err(status))) => this.record.finish(status.code()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// The layer
// ---------------------------------------------------------------------------

/// Wraps the gRPC routes (with their deadline handling) of one server;
/// counts every call of a served method in `metrics`.
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Option<Arc<GrpcMetrics>>,
}

impl<S> GrpcMetricsService<S> {
    /// Counts in `metrics`; passes every call through when `None`.
    pub fn new(inner: S, metrics: Option<Arc<GrpcMetrics>>) -> Self {
        GrpcMetricsService { inner, metrics }
    }
}

impl<S, B> Service<Request<B>> for GrpcMetricsService<S>
where
    S: Service<
        Request<CountedRequestBody<B>>,
        Response = Response<tonic::body::Body>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<tonic::body::Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = served_method(request.uri().path());
        let (Some(index), Some(metrics)) = (method, &self.metrics) else {
            let request = request.map(|inner| CountedRequestBody {
                inner,
                counted: None,
            });
            return Box::pin(self.inner.call(request));
        };
        let record = CallRecord::start(metrics.clone(), index, request.headers());
        let received = metrics
            .msg_received
            .with_label_values(&method_labels(index));
        let request = request.map(|inner| CountedRequestBody {
            inner,
            counted: Some((MessageCounter::default(), received)),
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            // Dropped while waiting: `record` is dropped with this future.
            let mut record = record;
            let response = response.await?;
            if let Some(code) = grpc_status(response.headers()) {
                // Trailers-only: the status is all there is.
                record.finish(code);
                return Ok(response);
            }
            Ok(response.map(|inner| {
                tonic::body::Body::new(CountedResponseBody {
                    inner,
                    counter: MessageCounter::default(),
                    record,
                })
            }))
        })
    }
}

#[cfg(test)]
mod tests;
