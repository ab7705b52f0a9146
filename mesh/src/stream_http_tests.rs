//! Every test runs real QUIC between two `QuicNode`s on 127.0.0.1 with mutual TLS: the client
//! node opens a stream and calls `send_request`, the server node's handler calls `serve_one`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::link::{LinkRecv as RecvStream, LinkSend as SendStream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use http::StatusCode;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Join};
use tokio::sync::mpsc;

use super::*;
use crate::pki::ClusterCa;
use crate::quic::{QuicConfig, QuicNode, StreamHandler};

const SECOND: Duration = Duration::from_secs(1);
const HTTP_KIND: u8 = 42;
const SERVER_ID: u64 = 2;
const CHUNK: usize = 64 * 1024;
const BIG: usize = 20 * 1024 * 1024;

type TestBody = UnsyncBoxBody<Bytes, std::io::Error>;
type HandlerFuture = Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>;
type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;

/// Serves every stream with `serve_one` and the test's handler; reports how each one ended.
struct HttpServer {
    handler: Handler,
    ended_tx: mpsc::UnboundedSender<Result<(), String>>,
}

#[async_trait]
impl StreamHandler for HttpServer {
    async fn handle(&self, _peer: u64, kind: u8, send: SendStream, recv: RecvStream) {
        if kind != HTTP_KIND {
            let _ = self.ended_tx.send(Err(format!("unexpected kind {kind}")));
            return;
        }
        let handler = self.handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let outcome = serve_one(tokio::io::join(recv, send), service).await;
        let _ = self.ended_tx.send(outcome.map_err(|err| err.to_string()));
    }
}

/// The client node dials; it serves nothing.
struct NoStreams;

#[async_trait]
impl StreamHandler for NoStreams {
    async fn handle(&self, _peer: u64, _kind: u8, _send: SendStream, _recv: RecvStream) {}
}

/// Two nodes: node 1 sends, node 2 serves HTTP with the test's handler.
struct Pair {
    client: Arc<QuicNode>,
    server: Arc<QuicNode>,
    ended_rx: mpsc::UnboundedReceiver<Result<(), String>>,
}

impl Pair {
    fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let ca = ClusterCa::generate("prod").unwrap();
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
        let server = node(&ca, SERVER_ID, Arc::new(HttpServer { handler, ended_tx }));
        let client = node(&ca, 1, Arc::new(NoStreams));
        Self {
            client,
            server,
            ended_rx,
        }
    }

    async fn open(&self) -> Join<RecvStream, SendStream> {
        let (send, recv) = self
            .client
            .open(SERVER_ID, self.server.local_addr(), HTTP_KIND)
            .await
            .unwrap();
        tokio::io::join(recv, send)
    }

    async fn request(&self, request: Request<TestBody>) -> Response<Incoming> {
        send_request(self.open().await, request).await.unwrap()
    }

    /// How the next served stream ended.
    async fn ended(&mut self) -> Result<(), String> {
        tokio::time::timeout(5 * SECOND, self.ended_rx.recv())
            .await
            .expect("the server side never ended")
            .unwrap()
    }
}

fn node(ca: &ClusterCa, node_id: u64, streams: Arc<dyn StreamHandler>) -> Arc<QuicNode> {
    let localhost = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let identity = ca
        .issue_node_certificate(&format!("node{node_id}"), node_id, &[])
        .unwrap();
    let config = QuicConfig::new(localhost, ca.cert_der(), identity, node_id);
    QuicNode::bind(config, streams, None).unwrap()
}

fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn get(uri: &str) -> Request<TestBody> {
    Request::get(uri).body(empty()).unwrap()
}

/// Chunk `index` of the generated 20 MiB body: a fixed pattern stamped with its index.
fn generated_chunk(index: usize) -> Bytes {
    let mut chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
    chunk[..8].copy_from_slice(&(index as u64).to_be_bytes());
    Bytes::from(chunk)
}

/// The generated body, made chunk by chunk as it is polled; `produced` counts its bytes.
fn generated_body(produced: Arc<AtomicUsize>) -> TestBody {
    let chunks = stream::iter(0..BIG / CHUNK).map(move |index| {
        produced.fetch_add(CHUNK, Ordering::SeqCst);
        Ok(Frame::data(generated_chunk(index)))
    });
    StreamBody::new(chunks).boxed_unsync()
}

fn generated_sha256() -> String {
    let mut hasher = Sha256::new();
    (0..BIG / CHUNK).for_each(|index| hasher.update(generated_chunk(index)));
    hex::encode(hasher.finalize())
}

/// What reading a body frame by frame saw.
struct Hashed {
    sha256: String,
    len: usize,
    /// The producer's count when the first frame arrived.
    produced_at_first_frame: usize,
}

async fn hash_body(mut body: Incoming, produced: &AtomicUsize) -> Result<Hashed, hyper::Error> {
    let (mut hasher, mut len, mut produced_at_first_frame) = (Sha256::new(), 0, None);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            produced_at_first_frame.get_or_insert_with(|| produced.load(Ordering::SeqCst));
            hasher.update(&data);
            len += data.len();
        }
    }
    Ok(Hashed {
        sha256: hex::encode(hasher.finalize()),
        len,
        produced_at_first_frame: produced_at_first_frame.unwrap_or(0),
    })
}

#[tokio::test]
async fn a_get_round_trips_with_status_headers_and_body() {
    let mut pair = Pair::start(|request: Request<Incoming>| async move {
        let host = request.headers()[HOST].to_str().unwrap().to_string();
        Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .header("x-seen-host", host)
            .header("x-seen-uri", request.uri().to_string())
            .body(full(format!("{} {}", request.method(), request.uri())))
            .unwrap()
    });
    // An absolute URI without a Host header: the client derives Host and sends origin form.
    let response = pair
        .request(get("http://user:secret@app.example:8080/hello?name=shoal"))
        .await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(response.headers()["x-seen-host"], "app.example:8080");
    assert_eq!(response.headers()["x-seen-uri"], "/hello?name=shoal");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"GET /hello?name=shoal");
    assert_eq!(pair.ended().await, Ok(()));

    // A request with neither Host nor authority is refused before anything is sent.
    let err = send_request(pair.open().await, get("/no-host"))
        .await
        .unwrap_err();
    assert!(matches!(err, StreamHttpError::NoHost(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_mib_stream_up_and_down_byte_exact_without_buffering() {
    let request_produced = Arc::new(AtomicUsize::new(0));
    let response_produced = Arc::new(AtomicUsize::new(0));
    let (seen_up, made_down) = (request_produced.clone(), response_produced.clone());
    let mut pair = Pair::start(move |request: Request<Incoming>| {
        let (seen_up, made_down) = (seen_up.clone(), made_down.clone());
        async move {
            let up = hash_body(request.into_body(), &seen_up).await.unwrap();
            Response::builder()
                .header("x-sha256", up.sha256)
                .header("x-len", up.len)
                .header("x-produced-at-first-frame", up.produced_at_first_frame)
                .body(generated_body(made_down))
                .unwrap()
        }
    });
    let request = Request::post("http://app/upload")
        .body(generated_body(request_produced.clone()))
        .unwrap();
    let response = pair.request(request).await;
    let expected = generated_sha256();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-sha256"], expected.as_str());
    assert_eq!(response.headers()["x-len"], BIG.to_string().as_str());
    let up_at_first: usize = response.headers()["x-produced-at-first-frame"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The server saw bytes while the client was still producing: nobody buffered 20 MiB.
    assert!(
        up_at_first < BIG / 4,
        "{up_at_first} bytes made before any arrived"
    );

    let down = hash_body(response.into_body(), &response_produced)
        .await
        .unwrap();
    assert_eq!((down.sha256, down.len), (expected, BIG));
    assert!(
        down.produced_at_first_frame < BIG / 4,
        "{} bytes made before any arrived",
        down.produced_at_first_frame
    );
    assert_eq!(pair.ended().await, Ok(()));
}

#[tokio::test]
async fn sse_chunks_arrive_one_by_one_before_the_response_ends() {
    const EVENTS: usize = 5;
    let sent = Arc::new(AtomicUsize::new(0));
    let sent_by_server = sent.clone();
    let mut pair = Pair::start(move |_request| {
        let sent = sent_by_server.clone();
        async move {
            let events = stream::unfold(0, move |index| {
                let sent = sent.clone();
                async move {
                    if index == EVENTS {
                        return None;
                    }
                    if index > 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    let event = Bytes::from(format!("data: {index}\n\n"));
                    Some((Ok(Frame::data(event)), index + 1))
                }
            });
            Response::builder()
                .header(CONTENT_TYPE, "text/event-stream")
                .body(StreamBody::new(events).boxed_unsync())
                .unwrap()
        }
    });
    let mut body = pair.request(get("http://app/events")).await.into_body();
    // Each event with how many the server had sent when it arrived.
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.push((data, sent.load(Ordering::SeqCst)));
        }
    }
    let events: Vec<_> = received.iter().map(|(data, _)| data.clone()).collect();
    let expected: Vec<_> = (0..EVENTS)
        .map(|index| Bytes::from(format!("data: {index}\n\n")))
        .collect();
    assert_eq!(events, expected);
    assert!(
        received[0].1 < EVENTS,
        "the first event arrived only after all {EVENTS} were sent"
    );
    assert!(received
        .iter()
        .enumerate()
        .all(|(index, &(_, sent))| sent <= index + 2));
    assert_eq!(pair.ended().await, Ok(()));
}

#[tokio::test]
async fn a_websocket_style_upgrade_echoes_bytes_both_ways() {
    let mut pair = Pair::start(|mut request: Request<Incoming>| async move {
        assert_eq!(request.headers()[UPGRADE], "websocket");
        let on_upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on_upgrade.await.unwrap());
            io.write_all(b"hello from the server\n").await.unwrap();
            let mut buffer = vec![0; 16 * 1024];
            loop {
                let read = io.read(&mut buffer).await.unwrap();
                if read == 0 {
                    break;
                }
                io.write_all(&buffer[..read]).await.unwrap();
            }
            io.shutdown().await.unwrap();
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "websocket")
            .body(empty())
            .unwrap()
    });
    let request = Request::get("http://app/socket")
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .body(empty())
        .unwrap();
    let mut response = pair.request(request).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = tokio::time::timeout(5 * SECOND, hyper::upgrade::on(&mut response))
        .await
        .unwrap()
        .unwrap();
    // serve_one returns once the stream is handed to the upgrade.
    assert_eq!(pair.ended().await, Ok(()));
    let mut io = TokioIo::new(upgraded);
    let mut greeting = [0; 22];
    io.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"hello from the server\n");

    let message: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    io.write_all(&message).await.unwrap();
    let mut echoed = vec![0; message.len()];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, message);
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(5 * SECOND, io.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_requests_share_one_pooled_connection() {
    let pair = Arc::new(Pair::start(|request: Request<Incoming>| async move {
        Response::new(full(request.uri().path().to_string()))
    }));
    let requests: Vec<_> = (0..100)
        .map(|index| {
            let pair = pair.clone();
            tokio::spawn(async move {
                let response = pair.request(get(&format!("http://app/{index}"))).await;
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (index, body)
            })
        })
        .collect();
    for request in requests {
        let (index, body) = request.await.unwrap();
        assert_eq!(body, format!("/{index}"));
    }
    assert_eq!(pair.client.dials(), 1);
}

/// Signals when the handler's future is dropped.
struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tokio::test]
async fn a_client_timeout_on_a_silent_handler_fails_cleanly_and_closes_the_stream() {
    let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel();
    let mut pair = Pair::start(move |_request| {
        let signal = DropSignal(dropped_tx.clone());
        async move {
            let _signal = signal;
            std::future::pending::<Response<TestBody>>().await
        }
    });
    let outcome = tokio::time::timeout(
        Duration::from_millis(300),
        pair.request(get("http://app/never")),
    )
    .await;
    assert!(outcome.is_err(), "the silent handler answered");
    // The client dropped its side: the server sees the stream end and drops the handler.
    tokio::time::timeout(5 * SECOND, dropped_rx.recv())
        .await
        .expect("the handler was never dropped")
        .unwrap();
    assert!(pair.ended().await.is_err());
    // Only the stream closed: the pooled QUIC connection is still the first one.
    let (_send, _recv) = pair
        .client
        .open(SERVER_ID, pair.server.local_addr(), HTTP_KIND)
        .await
        .unwrap();
    assert_eq!(pair.client.dials(), 1);
}
