//! Limits on a request body at the ingress: a size cap and an idle timeout.
//!
//! [`guard_body`] wraps the body a client is sending. Once more than `max_bytes` arrive, or
//! when no frame arrives for `idle_timeout` while the body is being read, the body fails with
//! a [`BodyLimitError`]; whoever reads it (the forwarder, the app behind it) sees a broken
//! body, never a silently truncated one. The [`BodyWatch`] it returns tells the ingress, once
//! the app has answered, whether the body was cut and why, so it can answer 413 or 408
//! instead of the app's (or the forwarder's) reaction to a broken body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};

/// Why a request body was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyCut {
    /// More bytes than the limit arrived, or were announced.
    TooLarge,
    /// No frame arrived for the idle timeout while the body was being read.
    TooSlow,
}

const NOT_CUT: u8 = 0;
const CUT_TOO_LARGE: u8 = 1;
const CUT_TOO_SLOW: u8 = 2;

/// Shared with the body: tells the ingress, after the app answered, whether the body was cut.
#[derive(Clone, Debug, Default)]
pub struct BodyWatch(Arc<AtomicU8>);

impl BodyWatch {
    /// Why the body was cut, if it was.
    pub fn cut(&self) -> Option<BodyCut> {
        match self.0.load(Ordering::Acquire) {
            CUT_TOO_LARGE => Some(BodyCut::TooLarge),
            CUT_TOO_SLOW => Some(BodyCut::TooSlow),
            _ => None,
        }
    }

    /// Records the first cut; a body is cut at most once.
    fn record(&self, cut: BodyCut) {
        let code = match cut {
            BodyCut::TooLarge => CUT_TOO_LARGE,
            BodyCut::TooSlow => CUT_TOO_SLOW,
        };
        let _ = self
            .0
            .compare_exchange(NOT_CUT, code, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The error a guarded body fails with when it is cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyLimitError {
    /// More than `max_bytes` arrived, or the body announced more.
    TooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// No frame arrived for `idle`.
    TooSlow {
        /// The idle timeout.
        idle: Duration,
    },
}

impl BodyLimitError {
    /// The kind of cut, as a [`BodyWatch`] reports it.
    pub fn cut(&self) -> BodyCut {
        match self {
            Self::TooLarge { .. } => BodyCut::TooLarge,
            Self::TooSlow { .. } => BodyCut::TooSlow,
        }
    }
}

impl fmt::Display for BodyLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { max_bytes } => {
                write!(f, "request body larger than {max_bytes} bytes")
            }
            Self::TooSlow { idle } if idle.as_secs() == 0 => {
                write!(f, "request body stalled for {} ms", idle.as_millis())
            }
            Self::TooSlow { idle } => write!(f, "request body stalled for {} s", idle.as_secs()),
        }
    }
}

impl std::error::Error for BodyLimitError {}

/// Wraps `body`: fails with a [`BodyLimitError`] once more than `max_bytes` arrive (`None`:
/// no limit) or when no frame arrives for `idle_timeout`; records the cut in the returned
/// watch.
///
/// A body whose size hint already says it is larger than `max_bytes` (a `Content-Length`
/// over the limit) fails on its first poll, before any byte is passed on. The idle timer
/// runs only while the body is polled and waiting for the client: it starts at the first
/// poll (a client that sent `Expect: 100-continue` starts sending only then) and again at
/// the first poll after each frame, so a reader that is slow to ask for more is not
/// mistaken for a slow client. `is_end_stream` and `size_hint` are the inner body's: a
/// bodiless request stays bodiless (the data plane retries only those).
pub fn guard_body<B>(body: B, max_bytes: Option<u64>, idle_timeout: Duration) -> (Body, BodyWatch)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let watch = BodyWatch::default();
    let guarded = LimitedBody {
        inner: Box::pin(body),
        max_bytes,
        received: 0,
        idle_timeout,
        idle_timer: Box::pin(tokio::time::sleep(idle_timeout)),
        idle_timer_armed: false,
        finished: false,
        watch: watch.clone(),
    };
    (guarded.boxed_unsync(), watch)
}

/// The request's `Content-Length`, if it has exactly one valid value (repeated lines that
/// agree count as one).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut declared = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().ok()?.trim();
        // `u64::from_str` accepts a leading `+`, which Content-Length does not.
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        let length: u64 = text.parse().ok()?;
        match declared {
            Some(previous) if previous != length => return None,
            _ => declared = Some(length),
        }
    }
    declared
}

struct LimitedBody<B> {
    inner: Pin<Box<B>>,
    max_bytes: Option<u64>,
    received: u64,
    idle_timeout: Duration,
    idle_timer: Pin<Box<Sleep>>,
    /// Whether the timer measures the current wait; cleared by every frame.
    idle_timer_armed: bool,
    /// Set once the body ended, failed or was cut: it yields nothing more.
    finished: bool,
    watch: BodyWatch,
}

impl<B> LimitedBody<B> {
    fn cut(&mut self, error: BodyLimitError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finished = true;
        self.watch.record(error.cut());
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn over_limit(&self, bytes: u64) -> bool {
        self.max_bytes.is_some_and(|max| bytes > max)
    }
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(max_bytes) = this.max_bytes {
            if this.over_limit(this.inner.size_hint().lower()) {
                return this.cut(BodyLimitError::TooLarge { max_bytes });
            }
        }
        if !this.idle_timer_armed {
            this.idle_timer_armed = true;
            let deadline = Instant::now() + this.idle_timeout;
            this.idle_timer.as_mut().reset(deadline);
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle_timer_armed = false;
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                    if let Some(max_bytes) = this.max_bytes {
                        if this.over_limit(this.received) {
                            return this.cut(BodyLimitError::TooLarge { max_bytes });
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finished = true;
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(this.idle_timer.as_mut().poll(cx));
                let idle = this.idle_timeout;
                this.cut(BodyLimitError::TooSlow { idle })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.finished {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
