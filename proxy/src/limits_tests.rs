use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;

use super::*;

const IDLE: Duration = Duration::from_secs(30);

/// A body the test feeds frame by frame; it stalls while the sender is kept and nothing is sent.
fn channel_body() -> (
    mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    impl http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
) {
    let (frames_tx, frames_rx) = mpsc::channel(8);
    (frames_tx, StreamBody::new(ReceiverStream(frames_rx)))
}

/// Reads `body` to its end: the bytes, or the error it failed with.
async fn read_all(body: Body) -> Result<Vec<u8>, BoxError> {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

fn limit_error(error: &BoxError) -> &BodyLimitError {
    error
        .downcast_ref::<BodyLimitError>()
        .expect("the body fails with a BodyLimitError")
}

#[tokio::test]
async fn a_body_under_the_limit_passes_every_byte() {
    let (frames_tx, body) = channel_body();
    let (guarded, watch) = guard_body(body, Some(10), IDLE);
    for chunk in ["hello", " ", "you!"] {
        frames_tx
            .send(Ok(Frame::data(Bytes::from(chunk))))
            .await
            .unwrap();
    }
    drop(frames_tx);
    assert_eq!(read_all(guarded).await.unwrap(), b"hello you!");
    assert_eq!(watch.cut(), None);
}

#[tokio::test]
async fn a_body_exactly_at_the_limit_passes() {
    let (guarded, watch) = guard_body(Full::new(Bytes::from("0123456789")), Some(10), IDLE);
    assert_eq!(read_all(guarded).await.unwrap(), b"0123456789");
    assert_eq!(watch.cut(), None);
}

#[tokio::test]
async fn no_limit_passes_everything() {
    let big = Bytes::from(vec![7u8; 1 << 20]);
    let (guarded, watch) = guard_body(Full::new(big.clone()), None, IDLE);
    assert_eq!(read_all(guarded).await.unwrap(), big);
    assert_eq!(watch.cut(), None);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_fails_and_the_watch_says_too_large() {
    let (frames_tx, body) = channel_body();
    // Unknown length: the cut happens when the bytes arrive.
    let (guarded, watch) = guard_body(body, Some(8), IDLE);
    frames_tx
        .send(Ok(Frame::data(Bytes::from("12345"))))
        .await
        .unwrap();
    frames_tx
        .send(Ok(Frame::data(Bytes::from("67890"))))
        .await
        .unwrap();
    let mut guarded = guarded;
    let first = guarded.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "12345");
    let error = guarded.frame().await.unwrap().unwrap_err();
    assert_eq!(
        limit_error(&error),
        &BodyLimitError::TooLarge { max_bytes: 8 }
    );
    assert_eq!(error.to_string(), "request body larger than 8 bytes");
    assert_eq!(watch.cut(), Some(BodyCut::TooLarge));
    // A cut body yields nothing more, even though the client has more to say.
    assert!(guarded.frame().await.is_none());
    assert!(guarded.is_end_stream());
}

#[tokio::test]
async fn a_body_announcing_more_than_the_limit_fails_before_passing_any_byte() {
    let (guarded, watch) = guard_body(Full::new(Bytes::from(vec![0u8; 5000])), Some(1024), IDLE);
    let mut guarded = guarded;
    let error = guarded.frame().await.unwrap().unwrap_err();
    assert_eq!(
        limit_error(&error),
        &BodyLimitError::TooLarge { max_bytes: 1024 }
    );
    assert_eq!(watch.cut(), Some(BodyCut::TooLarge));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_fails_after_the_idle_timeout_and_the_watch_says_too_slow() {
    let (frames_tx, body) = channel_body();
    let (guarded, watch) = guard_body(body, Some(100), Duration::from_secs(30));
    frames_tx
        .send(Ok(Frame::data(Bytes::from("first ten!"))))
        .await
        .unwrap();
    let mut guarded = guarded;
    let started = tokio::time::Instant::now();
    let first = guarded.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap().len(), 10);
    // The sender stays alive and silent: a client that stopped mid-body.
    let error = guarded.frame().await.unwrap().unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(
        limit_error(&error),
        &BodyLimitError::TooSlow {
            idle: Duration::from_secs(30)
        }
    );
    assert_eq!(error.to_string(), "request body stalled for 30 s");
    assert_eq!(watch.cut(), Some(BodyCut::TooSlow));
    drop(frames_tx);
}

#[tokio::test(start_paused = true)]
async fn every_frame_restarts_the_idle_timer() {
    let (frames_tx, body) = channel_body();
    let (guarded, watch) = guard_body(body, None, Duration::from_secs(10));
    tokio::spawn(async move {
        // Each frame comes 8 s after the previous one: slow, but never idle for 10 s.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            if frames_tx
                .send(Ok(Frame::data(Bytes::from("x"))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    assert_eq!(read_all(guarded).await.unwrap(), b"xxxx");
    assert_eq!(watch.cut(), None);
}

#[tokio::test(start_paused = true)]
async fn the_idle_timer_does_not_run_before_the_body_is_read() {
    let (frames_tx, body) = channel_body();
    let (guarded, watch) = guard_body(body, None, Duration::from_secs(10));
    // The reader (an app busy with something else) waits longer than the idle timeout
    // before it asks for the body; the client only starts sending then (100-continue).
    tokio::time::sleep(Duration::from_secs(60)).await;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = frames_tx.send(Ok(Frame::data(Bytes::from("late")))).await;
    });
    assert_eq!(read_all(guarded).await.unwrap(), b"late");
    assert_eq!(watch.cut(), None);
}

#[tokio::test]
async fn an_empty_body_stays_end_of_stream() {
    let (guarded, watch) = guard_body(Empty::<Bytes>::new(), Some(10), IDLE);
    assert!(guarded.is_end_stream());
    assert_eq!(guarded.size_hint().exact(), Some(0));
    assert_eq!(read_all(guarded).await.unwrap(), b"");
    assert_eq!(watch.cut(), None);
}

#[tokio::test]
async fn the_size_hint_is_the_inner_bodys() {
    let (guarded, _watch) = guard_body(Full::new(Bytes::from("12345")), Some(10), IDLE);
    assert!(!guarded.is_end_stream());
    assert_eq!(guarded.size_hint().exact(), Some(5));
}

#[tokio::test]
async fn an_inner_error_passes_through_and_is_not_a_cut() {
    let (frames_tx, body) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(ReceiverStream(body));
    let (guarded, watch) = guard_body(body, Some(10), IDLE);
    frames_tx
        .send(Err(std::io::Error::other("connection reset")))
        .await
        .unwrap();
    let error = read_all(guarded).await.unwrap_err();
    assert_eq!(error.to_string(), "connection reset");
    assert_eq!(watch.cut(), None);
    drop(frames_tx);
}

#[test]
fn the_declared_length_is_the_content_length() {
    let headers = |values: &[&str]| {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CONTENT_LENGTH, HeaderValue::from_str(value).unwrap());
        }
        headers
    };
    assert_eq!(declared_length(&headers(&[])), None);
    assert_eq!(declared_length(&headers(&["5000"])), Some(5000));
    assert_eq!(declared_length(&headers(&["0"])), Some(0));
    assert_eq!(declared_length(&headers(&["12", "12"])), Some(12));
    assert_eq!(declared_length(&headers(&["12", "13"])), None);
    assert_eq!(declared_length(&headers(&["+12"])), None);
    assert_eq!(declared_length(&headers(&["-1"])), None);
    assert_eq!(declared_length(&headers(&["1, 1"])), None);
    assert_eq!(
        declared_length(&headers(&["99999999999999999999999"])),
        None
    );
}

/// A `Stream` over an mpsc receiver (tokio-stream is not a dependency).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc;

    pub struct ReceiverStream<T>(pub mpsc::Receiver<T>);

    impl<T> futures_util::Stream for ReceiverStream<T> {
        type Item = T;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

/// Through a real listener: hyper's body for a GET without one, and a POST with one.
#[tokio::test]
async fn a_bodiless_request_from_hyper_stays_end_of_stream_when_guarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handler = |request: http::Request<hyper::body::Incoming>, _peer| async move {
        let (guarded, _watch) = guard_body(request.into_body(), Some(1024), IDLE);
        let answer = format!(
            "end={} exact={:?}",
            guarded.is_end_stream(),
            guarded.size_hint().exact()
        );
        crate::ingress::text(http::StatusCode::OK, &answer)
    };
    tokio::spawn(crate::server::serve(
        listener,
        handler,
        crate::server::ServerLimits::default(),
        shutdown.clone(),
    ));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
              POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let get = answer.find("end=true exact=Some(0)");
    let post = answer.find("end=false exact=Some(3)");
    assert!(get.is_some() && post.is_some() && get < post, "{answer}");
    shutdown.cancel();
}
