//! Call deadlines (`grpc-timeout`), answered with `DEADLINE_EXCEEDED`.
//!
//! tonic's own server answers an expired `grpc-timeout` with `CANCELLED:
//! Timeout expired`, which tells a worker the caller gave up, not that the
//! action ran out of time; bb_worker and Bazel act on `DEADLINE_EXCEEDED`.
//! [`DeadlineService`] enforces the deadline itself and answers that code.
//! Dropping the call's future on expiry is what cancels the action (the
//! runner's contract for a dropped `run`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tonic::Status;
use tower::Service;

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit, `H`,
/// `M`, `S`, `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds).
/// `None` for anything else: such a call runs without a deadline, as the
/// caller's own deadline still ends it on its side.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Wraps the gRPC routes; answers `DEADLINE_EXCEEDED` when a call's
/// `grpc-timeout` passes before its response.
#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S> DeadlineService<S> {
    pub fn new(inner: S) -> Self {
        DeadlineService { inner }
    }
}

impl<S, B> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| parse_grpc_timeout(value.as_bytes()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let Some(timeout) = timeout else {
                return response.await;
            };
            match tokio::time::timeout(timeout, response).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call's deadline (grpc-timeout {timeout:?}) passed before it completed"
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_in_every_unit() {
        let cases: [(&[u8], Option<Duration>); 12] = [
            (b"500m", Some(Duration::from_millis(500))),
            (b"1H", Some(Duration::from_secs(3600))),
            (b"2M", Some(Duration::from_secs(120))),
            (b"30S", Some(Duration::from_secs(30))),
            (b"7u", Some(Duration::from_micros(7))),
            (b"99999999n", Some(Duration::from_nanos(99_999_999))),
            (b"0S", Some(Duration::ZERO)),
            (b"123456789S", None), // more than 8 digits
            (b"S", None),
            (b"5s", None), // units are case-sensitive
            (b"-5S", None),
            (b"", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_grpc_timeout(value),
                expected,
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    /// A service that answers after `delay`.
    #[derive(Clone)]
    struct Slow {
        delay: Duration,
    }

    impl Service<Request<()>> for Slow {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<()>) -> Self::Future {
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Response::new(Body::empty()))
            })
        }
    }

    fn grpc_status(response: &Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_deadline_answers_deadline_exceeded() {
        // Why: workers retry or report a timeout on DEADLINE_EXCEEDED; tonic
        // itself would answer CANCELLED.
        let mut service = DeadlineService::new(Slow {
            delay: Duration::from_secs(60),
        });
        let request = Request::builder()
            .header("grpc-timeout", "500m")
            .body(())
            .unwrap();
        let response = service.call(request).await.unwrap();
        assert_eq!(grpc_status(&response), Some("4"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_within_its_deadline_or_without_one_is_answered_by_the_service() {
        let mut service = DeadlineService::new(Slow {
            delay: Duration::from_secs(1),
        });
        let within = Request::builder()
            .header("grpc-timeout", "2S")
            .body(())
            .unwrap();
        assert_eq!(grpc_status(&service.call(within).await.unwrap()), None);
        let without = Request::new(());
        assert_eq!(grpc_status(&service.call(without).await.unwrap()), None);
    }
}
