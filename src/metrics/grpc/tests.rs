use super::*;

use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use tonic::Status;

fn metrics() -> Arc<GrpcMetrics> {
    Arc::new(GrpcMetrics::register(&Registry::new()).unwrap())
}

const RUN: [&str; 3] = ["unary", "buildbarn.runner.Runner", "Run"];

fn handled(metrics: &GrpcMetrics, labels: [&str; 3], code: &str) -> u64 {
    metrics
        .handled
        .with_label_values(&[labels[0], labels[1], labels[2], code])
        .get()
}

fn request(path: &str, timeout: Option<&str>, body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().uri(path).method("POST");
    if let Some(timeout) = timeout {
        builder = builder.header("grpc-timeout", timeout);
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

/// A gRPC message with `length` payload bytes.
fn message(length: u8) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 0, length];
    bytes.extend(std::iter::repeat_n(7, usize::from(length)));
    bytes
}

/// A layer around a service that reads the request body, then answers
/// with `answer`.
fn layer_answering(
    metrics: &Arc<GrpcMetrics>,
    answer: impl Fn() -> Response<tonic::body::Body> + Clone + Send + 'static,
) -> GrpcMetricsService<
    impl Service<
            Request<CountedRequestBody<Full<Bytes>>>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
            Future = impl Send + 'static,
        > + Clone,
> {
    let inner = tower::service_fn(move |request: Request<CountedRequestBody<Full<Bytes>>>| {
        let answer = answer.clone();
        async move {
            let _ = request.into_body().collect().await;
            Ok::<_, Infallible>(answer())
        }
    });
    GrpcMetricsService::new(inner, Some(metrics.clone()))
}

#[tokio::test]
async fn every_code_of_a_trailers_only_answer_is_counted_as_go_spells_it() {
    // Why it matters: Buildbarn's dashboards and alerts select on
    // grpc_code values such as `Canceled` and `DeadlineExceeded`.
    let expected = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    let metrics = metrics();
    for (code, name) in ALL_CODES.into_iter().zip(expected) {
        let mut service = layer_answering(&metrics, move || Status::new(code, "x").into_http());
        let response = service
            .call(request("/buildbarn.runner.Runner/Run", None, message(3)))
            .await
            .unwrap();
        let _ = response.into_body().collect().await;
        assert_eq!(handled(&metrics, RUN, name), 1, "{name}");
    }
    assert_eq!(metrics.started.with_label_values(&RUN).get(), 17);
    assert_eq!(metrics.msg_received.with_label_values(&RUN).get(), 17);
    assert_eq!(metrics.msg_sent.with_label_values(&RUN).get(), 0);
    assert_eq!(
        metrics
            .handling_seconds
            .with_label_values(&RUN)
            .get_sample_count(),
        17
    );
}

/// A response of `messages` split into uneven chunks, then trailers.
fn streamed_response(messages: usize, code: Code) -> Response<tonic::body::Body> {
    let bytes: Vec<u8> = (0..messages).flat_map(|_| message(10)).collect();
    let mut frames: Vec<Result<Frame<Bytes>, Status>> = bytes
        .chunks(4)
        .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
        .collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", (code as i32).to_string().parse().unwrap());
    frames.push(Ok(Frame::trailers(trailers)));
    Response::new(tonic::body::Body::new(StreamBody::new(tokio_stream::iter(
        frames,
    ))))
}

#[tokio::test]
async fn streamed_messages_and_the_trailers_status_are_counted() {
    let metrics = metrics();
    let watch = ["server_stream", "grpc.health.v1.Health", "Watch"];
    let mut service = layer_answering(&metrics, || streamed_response(3, Code::Unavailable));
    let response = service
        .call(request("/grpc.health.v1.Health/Watch", None, message(0)))
        .await
        .unwrap();
    let _ = response.into_body().collect().await.unwrap();
    assert_eq!(metrics.msg_sent.with_label_values(&watch).get(), 3);
    assert_eq!(metrics.msg_received.with_label_values(&watch).get(), 1);
    assert_eq!(handled(&metrics, watch, "Unavailable"), 1);
    assert_eq!(handled(&metrics, watch, "OK"), 0);
}

#[tokio::test]
async fn a_body_dropped_before_its_trailers_is_canceled() {
    // Why it matters: a client that resets a stream mid-response
    // cancelled it; the call must still be counted once.
    let metrics = metrics();
    let watch = ["server_stream", "grpc.health.v1.Health", "Watch"];
    let mut service = layer_answering(&metrics, || streamed_response(2, Code::Ok));
    let response = service
        .call(request("/grpc.health.v1.Health/Watch", None, message(0)))
        .await
        .unwrap();
    drop(response);
    assert_eq!(handled(&metrics, watch, "Canceled"), 1);
    assert_eq!(handled(&metrics, watch, "OK"), 0);
}

fn never_answering(
    metrics: &Arc<GrpcMetrics>,
) -> GrpcMetricsService<
    impl Service<
        Request<CountedRequestBody<Full<Bytes>>>,
        Response = Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    >,
> {
    let inner = tower::service_fn(|_: Request<CountedRequestBody<Full<Bytes>>>| {
        std::future::pending::<Result<Response<tonic::body::Body>, Infallible>>()
    });
    GrpcMetricsService::new(inner, Some(metrics.clone()))
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_its_deadline_is_canceled_and_after_it_deadline_exceeded() {
    // Why it matters: the client decides when a call ends; the code must
    // say whether it gave up or ran out of time, as the client sees it.
    let metrics = metrics();
    let mut service = never_answering(&metrics);
    let early = service.call(request("/buildbarn.runner.Runner/Run", Some("10S"), vec![]));
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(early);
    assert_eq!(handled(&metrics, RUN, "Canceled"), 1);

    let late = service.call(request("/buildbarn.runner.Runner/Run", Some("10S"), vec![]));
    tokio::time::advance(Duration::from_secs(10)).await;
    drop(late);
    assert_eq!(handled(&metrics, RUN, "DeadlineExceeded"), 1);

    let no_deadline = service.call(request("/buildbarn.runner.Runner/Run", None, vec![]));
    tokio::time::advance(Duration::from_secs(3600)).await;
    drop(no_deadline);
    assert_eq!(handled(&metrics, RUN, "Canceled"), 2);
    assert_eq!(metrics.started.with_label_values(&RUN).get(), 3);
}

#[tokio::test]
async fn paths_that_are_not_served_methods_create_no_series() {
    // Why it matters: a client must not be able to grow the exposition
    // by calling made-up methods.
    let registry = Registry::new();
    let metrics = Arc::new(GrpcMetrics::register(&registry).unwrap());
    let series = |registry: &Registry| -> usize {
        registry
            .gather()
            .iter()
            .map(|family| family.get_metric().len())
            .sum()
    };
    let before = series(&registry);
    let mut service = layer_answering(&metrics, || {
        Status::unimplemented("no such method").into_http()
    });
    let response = service
        .call(request("/made.Up/Method", None, message(1)))
        .await
        .unwrap();
    let _ = response.into_body().collect().await;
    assert_eq!(series(&registry), before);
}

#[test]
fn messages_are_counted_across_chunk_boundaries() {
    let bytes: Vec<u8> = [message(0), message(200), message(1)].concat();
    for chunk_size in [1, 2, 5, 6, 100, bytes.len()] {
        let mut counter = MessageCounter::default();
        let counted: u64 = bytes.chunks(chunk_size).map(|c| counter.feed(c)).sum();
        assert_eq!(counted, 3, "chunks of {chunk_size}");
    }
}
