//! The body type that flows through the ingress, whatever produced it.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can fail with on its way through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming response or request body: files, rewritten HTML, forwarded upstream bodies.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body with no bytes (HEAD, 304, redirects).
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Wraps `body` so `guard` is dropped when the body is finished or abandoned: the response's
/// whole life, streaming included, counts as the request's.
pub fn with_guard(body: Body, guard: Box<dyn Send>) -> Body {
    GuardedBody {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}

struct GuardedBody {
    inner: Body,
    _guard: Box<dyn Send>,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
