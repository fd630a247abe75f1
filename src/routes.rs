//! Which service a gRPC call goes to: Runner calls straight to the Runner
//! service, every other call through tonic's router.
//!
//! tonic's [`tonic::service::Routes`] is an axum router: each call is
//! looked up in its path table, its request body boxed into axum's body
//! and again into tonic's, the service behind the route cloned and its
//! future boxed, and the response body mapped back. That is per call,
//! and `Run` is the call bb_worker makes for every action; one comparison
//! of the path's prefix does the same for the Runner service, whose
//! generated server already answers an unknown method of its own with
//! `UNIMPLEMENTED`, as the router would.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response};
use tonic::body::Body;
use tower::Service;

/// The path prefix of every `buildbarn.runner.Runner` method.
const RUNNER_PATH_PREFIX: &str = "/buildbarn.runner.Runner/";

/// Sends Runner calls to `runner` and the rest to `others`.
#[derive(Clone)]
pub struct RunnerFirst<R, S> {
    runner: R,
    others: S,
}

impl<R, S> RunnerFirst<R, S> {
    /// `runner` serves `buildbarn.runner.Runner`; `others` every other
    /// service (and answers unknown ones).
    pub fn new(runner: R, others: S) -> Self {
        RunnerFirst { runner, others }
    }
}

impl<R, S, B> Service<Request<B>> for RunnerFirst<R, S>
where
    R: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<R::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (tonic's servers and router are); asked
        // anyway, as the contract says, before either is called.
        match (self.runner.poll_ready(cx), self.others.poll_ready(cx)) {
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path().starts_with(RUNNER_PATH_PREFIX) {
            Either::Left(self.runner.call(request))
        } else {
            Either::Right(self.others.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// A service that answers with its `name` in a header.
    #[derive(Clone)]
    struct Named(&'static str);

    impl Service<Request<()>> for Named {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: Request<()>) -> Self::Future {
            let mut response = Response::new(Body::empty());
            let name = http::HeaderValue::from_static(self.0);
            response.headers_mut().insert("served-by", name);
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn runner_calls_go_to_the_runner_and_the_rest_to_the_router() {
        // Why it matters: a call sent to the wrong service is answered
        // UNIMPLEMENTED; a service merely named like the Runner (a prefix
        // of its name) is not the Runner.
        let mut routes = RunnerFirst::new(Named("runner"), Named("others"));
        for (path, expected) in [
            ("/buildbarn.runner.Runner/Run", "runner"),
            ("/buildbarn.runner.Runner/CheckReadiness", "runner"),
            ("/buildbarn.runner.Runner/NoSuchMethod", "runner"),
            ("/buildbarn.runner.RunnerX/Run", "others"),
            ("/grpc.health.v1.Health/Check", "others"),
            ("/rbe_runner.events.v1.Events/Watch", "others"),
            ("/", "others"),
        ] {
            let request = Request::post(path).body(()).unwrap();
            let response = routes.ready().await.unwrap().call(request).await.unwrap();
            assert_eq!(response.headers()["served-by"], expected, "{path}");
        }
    }
}
