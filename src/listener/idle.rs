//! Knowing when an HTTP/2 connection has had no call for a while, so that
//! a TCP connection nobody uses can be closed (grpc-go's
//! `MaxConnectionIdle`): otherwise a client could hold descriptors forever
//! by opening connections, finishing the handshake and sending nothing, or
//! by sending a frame one byte at a time.
//!
//! A call is open from the moment its request head has arrived until its
//! response body has been sent or dropped (the client reset the stream).
//! PINGs and partial frames are not calls: they do not keep a connection
//! busy.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::watch;
use tower::Service;

/// The calls open on one connection.
#[derive(Clone)]
pub struct OpenCalls {
    count: Arc<watch::Sender<usize>>,
}

impl Default for OpenCalls {
    fn default() -> Self {
        OpenCalls {
            count: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl OpenCalls {
    /// Counts a call as open until the returned guard is dropped.
    fn open(&self) -> CallGuard {
        self.count.send_modify(|count| *count += 1);
        CallGuard {
            calls: self.clone(),
        }
    }

    /// Completes once no call has been open for `period` without a break;
    /// never when `period` is `None`.
    pub async fn idle_for(&self, period: Option<Duration>) {
        let Some(period) = period else {
            return std::future::pending().await;
        };
        let mut count = self.count.subscribe();
        loop {
            // The sender lives in `self`: neither wait can fail. The guard
            // `wait_for` returns is not Send; it is not kept.
            let _ = count.wait_for(|open| *open == 0).await.map(|_| ());
            // Any call opened since, even one closed again before this
            // task looks, restarts the period.
            if tokio::time::timeout(period, count.changed()).await.is_err() {
                return;
            }
        }
    }
}

/// One open call; dropping it closes the call.
pub struct CallGuard {
    calls: OpenCalls,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.calls.count.send_modify(|count| *count -= 1);
    }
}

/// A response body that keeps `held` until it is dropped: when the
/// connection has sent all of it, or given up on it.
pub struct Holding<B, T> {
    body: B,
    _held: T,
}

impl<B, T> Holding<B, T> {
    pub fn new(body: B, held: T) -> Self {
        Holding { body, _held: held }
    }
}

impl<B: Body + Unpin, T: Unpin> Body for Holding<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `inner`, with every call counted in `calls` while it is open.
#[derive(Clone)]
pub struct CountingCalls<S> {
    inner: S,
    calls: OpenCalls,
}

impl<S> CountingCalls<S> {
    pub fn new(inner: S, calls: OpenCalls) -> Self {
        CountingCalls { inner, calls }
    }
}

type Response = http::Response<tonic::body::Body>;

impl<S> Service<http::Request<Incoming>> for CountingCalls<S>
where
    S: Service<http::Request<Incoming>, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        let call = self.calls.open();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| tonic::body::Body::new(Holding::new(body, call))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_open_call_for_the_whole_period() {
        // Why: a connection with a long call in flight (a Run of an hour,
        // an event stream) must never count as idle, however long.
        let calls = OpenCalls::default();
        let call = calls.open();
        let idle = calls.idle_for(Some(Duration::from_secs(60)));
        tokio::pin!(idle);
        let within = tokio::time::timeout(Duration::from_secs(3600), idle.as_mut()).await;
        assert!(within.is_err(), "idle while a call was open");
        drop(call);
        idle.await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_restarts_the_period() {
        let calls = OpenCalls::default();
        let idle = calls.idle_for(Some(Duration::from_secs(60)));
        tokio::pin!(idle);
        let start = tokio::time::Instant::now();
        assert!(tokio::time::timeout(Duration::from_secs(50), idle.as_mut())
            .await
            .is_err());
        drop(calls.open());
        idle.await;
        assert_eq!(start.elapsed(), Duration::from_secs(110));
    }
}
