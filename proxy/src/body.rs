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
