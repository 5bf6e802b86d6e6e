//! `limits.request_timeout`: a call that has not produced its response in time fails with
//! `DEADLINE_EXCEEDED`, except calls under the path prefixes that services declared long-running
//! (replication streams, imports), which may take as long as they need.
//!
//! As with tonic's own timeout, the clock stops when the handler returns its response: a server
//! stream that has started answering is not cut. A client's own `grpc-timeout` still applies.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tonic::Status;
use tonic::body::Body;
use tower::Service;

use crate::config::HumanDuration;

/// Layer for [`Deadline`].
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
    exempt: Arc<Vec<String>>,
}

impl DeadlineLayer {
    /// Calls fail after `timeout`, except those whose path starts with one of `exempt`.
    pub fn new(timeout: Duration, exempt: Vec<String>) -> Self {
        Self {
            timeout,
            exempt: Arc::new(exempt),
        }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
            exempt: self.exempt.clone(),
        }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
    exempt: Arc<Vec<String>>,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let exempt = self.exempt.iter().any(|p| path.starts_with(p.as_str()));
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        if exempt {
            return fut.boxed();
        }
        let timeout = self.timeout;
        async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call took longer than limits.request_timeout ({})",
                    HumanDuration(timeout)
                ))
                .into_http()),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    fn slow() -> impl Service<
        http::Request<()>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>,
    > + Clone {
        tower::service_fn(|_req: http::Request<()>| {
            async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            }
            .boxed()
        })
    }

    fn grpc_code(resp: &http::Response<Body>) -> Option<&str> {
        resp.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_fails_with_deadline_exceeded() {
        let svc = DeadlineLayer::new(Duration::from_secs(60), vec![]).layer(slow());
        let req = http::Request::builder()
            .uri("/repld.v1.Admin/Status")
            .body(())
            .expect("request");
        let resp = svc.oneshot(req).await.expect("infallible");
        assert_eq!(grpc_code(&resp), Some("4"), "DEADLINE_EXCEEDED");
    }

    #[tokio::test(start_paused = true)]
    async fn long_running_calls_are_exempt() {
        let svc = DeadlineLayer::new(
            Duration::from_secs(60),
            vec!["/repld.v1.Replication/".to_owned()],
        )
        .layer(slow());
        let req = http::Request::builder()
            .uri("/repld.v1.Replication/Stream")
            .body(())
            .expect("request");
        let outcome = tokio::time::timeout(Duration::from_secs(600), svc.oneshot(req)).await;
        assert!(outcome.is_err(), "still running after 10 minutes");
    }
}
