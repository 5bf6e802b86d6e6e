//! `limits.max_message_bytes`: a message over the limit fails with `RESOURCE_EXHAUSTED`, the code
//! gRPC specifies for it (and that grpc-go, grpc-java and grpcio return).
//!
//! tonic enforces the limit (set per service with [`crate::with_message_limits!`]) but reports
//! `OUT_OF_RANGE`. This layer rewrites exactly those statuses — in the response headers
//! (trailers-only responses) and in the trailers of streamed responses — and names the setting.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::Service;

/// Layer for [`MessageLimitStatus`].
#[derive(Debug, Clone, Default)]
pub struct MessageLimitStatusLayer;

impl<S> tower::Layer<S> for MessageLimitStatusLayer {
    type Service = MessageLimitStatus<S>;
    fn layer(&self, inner: S) -> MessageLimitStatus<S> {
        MessageLimitStatus { inner }
    }
}

/// The service made by [`MessageLimitStatusLayer`].
#[derive(Debug, Clone)]
pub struct MessageLimitStatus<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for MessageLimitStatus<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        inner
            .call(req)
            .map(|response| {
                response.map(|resp| {
                    let (mut parts, body) = resp.into_parts();
                    if parts.headers.contains_key("grpc-status") {
                        // Trailers-only: the status is in the headers and the body is empty.
                        rewrite(&mut parts.headers);
                        http::Response::from_parts(parts, body)
                    } else {
                        http::Response::from_parts(
                            parts,
                            Body::new(RewriteTrailers { inner: body }),
                        )
                    }
                })
            })
            .boxed()
    }
}

/// Rewrites tonic's "message length too large" `OUT_OF_RANGE` into `RESOURCE_EXHAUSTED`.
fn rewrite(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() != Code::OutOfRange {
        return;
    }
    let message = status.message();
    let direction = if message.starts_with("Error, decoded message length too large") {
        "received"
    } else if message.starts_with("Error, encoded message length too large") {
        "to send"
    } else {
        return;
    };
    let detail = message
        .split_once("too large: ")
        .map(|(_, d)| d)
        .unwrap_or(message);
    let replacement = Status::resource_exhausted(format!(
        "message {direction} is larger than limits.max_message_bytes: {detail}"
    ));
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    // Adding can only fail on a message that cannot be percent-encoded; ours always can.
    let _ = replacement.add_header(headers);
}

struct RewriteTrailers {
    inner: Body,
}

impl http_body::Body for RewriteTrailers {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|f| {
            f.map(|frame| match frame.into_trailers() {
                Ok(mut trailers) => {
                    rewrite(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: Status) -> HeaderMap {
        let mut h = HeaderMap::new();
        status.add_header(&mut h).expect("encodes");
        h
    }

    #[test]
    fn too_large_messages_become_resource_exhausted() {
        let mut h = headers_of(Status::out_of_range(
            "Error, decoded message length too large: found 20 bytes, the limit is: 10 bytes",
        ));
        rewrite(&mut h);
        let s = Status::from_header_map(&h).expect("status");
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(
            s.message().contains("limits.max_message_bytes"),
            "{}",
            s.message()
        );
        assert!(s.message().contains("found 20 bytes"), "{}", s.message());
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for status in [
            Status::out_of_range("offset past the end of the file"),
            Status::not_found("no such PFS"),
        ] {
            let mut h = headers_of(status.clone());
            rewrite(&mut h);
            let s = Status::from_header_map(&h).expect("status");
            assert_eq!(s.code(), status.code());
            assert_eq!(s.message(), status.message());
        }
    }
}
