//! The listener against hostile bytes: raw requests over real sockets, asserting what the
//! client reads and that refused requests never reached the handler.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A listener on 127.0.0.1:0 whose handler counts its calls and answers
/// `<method> <target> body=<bytes read>`.
struct TestServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(ServerLimits::default()).await
    }

    async fn start_with(limits: ServerLimits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let counter = calls.clone();
        tokio::spawn(serve(
            listener,
            move |request: Request<Incoming>, _peer| {
                counter.fetch_add(1, Ordering::SeqCst);
                echo(request)
            },
            limits,
            shutdown.clone(),
        ));
        Self {
            addr,
            calls,
            shutdown,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Sends `raw` on a new connection and reads what comes back.
    async fn exchange(&self, raw: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        // The server may close before reading everything (a refused head): not an error here.
        let _ = stream.write_all(raw).await;
        read_answer(&mut stream, Duration::from_secs(2)).await
    }

    /// Asserts `raw` is refused with `status`, the connection closed, the handler not called.
    async fn assert_refused(&self, raw: &[u8], status: u16, reason: &str) {
        let calls_before = self.calls();
        let answer = self.exchange(raw).await;
        assert_eq!(
            answer.statuses(),
            vec![status],
            "{}: answer was {:?}",
            String::from_utf8_lossy(raw),
            answer.text
        );
        assert!(answer.text.contains(reason), "{:?}", answer.text);
        assert!(
            answer.closed,
            "the connection stays open after {:?}",
            answer.text
        );
        assert_eq!(self.calls(), calls_before, "the handler was called");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn echo(request: Request<Incoming>) -> Response<Body> {
    let summary = format!("{} {}", request.method(), request.uri());
    let body = match request.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(error) => format!("<error: {error}>"),
    };
    crate::ingress::text(StatusCode::OK, &format!("{summary} body={body}"))
}

/// What came back on a connection: the bytes, and whether the server closed it.
struct Answer {
    text: String,
    closed: bool,
}

impl Answer {
    /// The status of every response in the answer, in order.
    fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.")
            .filter_map(|(at, _)| self.text.get(at + 9..at + 12)?.parse().ok())
            .collect()
    }
}

/// Reads until the server closes the connection (or resets it), or `quiet` passes without a byte.
async fn read_answer(stream: &mut TcpStream, quiet: Duration) -> Answer {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(quiet, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(read)) => bytes.extend_from_slice(&buffer[..read]),
            Err(_) => break false,
        }
    };
    Answer {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        closed,
    }
}

const SMUGGLING: &str = "must not have both Content-Length and Transfer-Encoding";

#[tokio::test]
async fn both_content_length_and_transfer_encoding_are_refused_before_the_handler() {
    let server = TestServer::start().await;
    // hyper alone would serve these as chunked, with Content-Length silently dropped.
    server
        .assert_refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
            SMUGGLING,
        )
        .await;
    server
        .assert_refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
            SMUGGLING,
        )
        .await;
    // The classic: a front end that trusts Content-Length passes a second request along in
    // what a chunked reader takes as the end of the first one. Neither is served.
    server
        .assert_refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            SMUGGLING,
        )
        .await;
    // Zero-padded and oddly cased, still both.
    server
        .assert_refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nCONTENT-LENGTH:  0000000000000000000000005 \r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
            SMUGGLING,
        )
        .await;
}

#[tokio::test]
async fn a_smuggling_request_later_on_a_keep_alive_connection_is_refused() {
    let server = TestServer::start().await;
    // A clean chunked request (extension, trailer) and a clean sized one first: the scanner
    // must follow their bodies to find the third head.
    let answer = server
        .exchange(
            b"POST /one HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;note=x\r\nabc\r\n0\r\nX-Trailer: yes\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nwxyz\
              POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
    assert_eq!(answer.statuses(), vec![200, 200, 400], "{}", answer.text);
    assert!(answer.text.contains("POST /one body=abc"));
    assert!(answer.text.contains("POST /two body=wxyz"));
    assert!(answer.text.contains(SMUGGLING));
    assert!(answer.closed);
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn clean_pipelined_requests_are_all_served_however_the_bytes_are_split() {
    let server = TestServer::start().await;
    let raw: &[u8] = b"\r\nPOST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\nA\r\n0123456789\r\n0\r\n\r\n\
        GET /c?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    for piece in [raw.len(), 7, 1] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        for part in raw.chunks(piece) {
            stream.write_all(part).await.unwrap();
            stream.flush().await.unwrap();
            if piece < raw.len() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(answer.statuses(), vec![200, 200, 200], "{}", answer.text);
        assert!(answer.text.contains("POST /a body=hello"));
        assert!(answer.text.contains("POST /b body=hi0123456789"));
        assert!(answer.text.contains("GET /c?x=1 body="));
    }
    assert_eq!(server.calls(), 9);
}

#[tokio::test]
async fn hyper_refuses_differing_content_lengths() {
    let server = TestServer::start().await;
    server
        .assert_refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
            "",
        )
        .await;
    // The same length twice is one length (RFC 9110 §8.6): served.
    let answer = server
        .exchange(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await;
    assert_eq!(answer.statuses(), vec![200]);
}

#[tokio::test]
async fn transfer_codings_other_than_a_plain_chunked_are_refused() {
    let server = TestServer::start().await;
    let unsupported = "Transfer-Encoding other than chunked is not supported";
    // hyper serves these (chunked is last); the app would get a gzip body it did not expect.
    server
        .assert_refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            400,
            unsupported,
        )
        .await;
    server
        .assert_refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            unsupported,
        )
        .await;
    // hyper refuses these itself: chunked is not last, or HTTP/1.0.
    for raw in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        server.assert_refused(raw, 400, "").await;
    }
}

#[tokio::test]
async fn malformed_header_lines_are_refused() {
    let server = TestServer::start().await;
    // hyper refuses obs-fold and a space before the colon (a classic way to hide a header
    // from one parser and not another).
    server
        .assert_refused(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n",
            400,
            "",
        )
        .await;
    server
        .assert_refused(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
            400,
            "",
        )
        .await;
    // hyper accepts a bare LF as a line end (RFC 9112 §2.2 allows it); Shoal does not.
    server
        .assert_refused(
            b"GET / HTTP/1.1\nHost: a\nX-A: one\n\n",
            400,
            "lines must end with CRLF",
        )
        .await;
    server
        .assert_refused(
            b"GET / HTTP/1.1\r\nHost: a\nX-A: one\r\n\r\n",
            400,
            "lines must end with CRLF",
        )
        .await;
}

#[tokio::test]
async fn host_must_be_there_once_and_valid() {
    let server = TestServer::start().await;
    server
        .assert_refused(b"GET / HTTP/1.1\r\n\r\n", 400, "must have a Host header")
        .await;
    server
        .assert_refused(
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
            "one Host header, not several",
        )
        .await;
    for host in ["a b", "user@a", "a:port"] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        server
            .assert_refused(raw.as_bytes(), 400, "invalid Host header")
            .await;
    }
    // HTTP/1.0 may leave Host out.
    let answer = server.exchange(b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(answer.statuses(), vec![200], "{}", answer.text);
}

#[tokio::test]
async fn an_absolute_target_must_name_the_host_header_s_host() {
    let server = TestServer::start().await;
    // The ingress routes by Host; something behind it might route by the target.
    server
        .assert_refused(
            b"GET http://evil.example/x HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
            400,
            "name different hosts",
        )
        .await;
    server
        .assert_refused(
            b"GET http://app.localhost:8080/x HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
            400,
            "name different hosts",
        )
        .await;
    let answer = server
        .exchange(b"GET http://App.Localhost:80/x HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(answer.statuses(), vec![200], "{}", answer.text);
}

#[tokio::test]
async fn oversized_heads_get_431_from_hyper() {
    let server = TestServer::start().await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    server.assert_refused(big_header.as_bytes(), 431, "").await;
    let many_headers = |count: usize| {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
        for index in 0..count {
            raw.push_str(&format!("X-H{index}: v\r\n"));
        }
        raw + "\r\n"
    };
    server
        .assert_refused(many_headers(200).as_bytes(), 431, "")
        .await;
    // Exactly at the limits: served.
    let answer = server.exchange(many_headers(98).as_bytes()).await;
    assert_eq!(answer.statuses(), vec![200], "{}", answer.text);
    let limit = ServerLimits::default().max_header_bytes;
    let head = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: \r\n\r\n";
    let filled = head.replace(
        "X-Big: ",
        &format!("X-Big: {}", "b".repeat(limit - head.len())),
    );
    assert_eq!(filled.len(), limit);
    let answer = server.exchange(filled.as_bytes()).await;
    assert_eq!(answer.statuses(), vec![200], "{}", answer.text);
    assert_eq!(server.calls(), 2);
}

fn short_header_timeout() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    }
}

#[tokio::test]
async fn a_slowloris_head_is_cut_off_after_the_header_read_timeout() {
    let server = TestServer::start_with(short_header_timeout()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Wait: ")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(answer.closed, "the connection stays open");
    // hyper closes without an answer.
    assert_eq!(answer.text, "");
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn a_head_dripping_in_is_cut_off_after_the_header_read_timeout() {
    let server = TestServer::start_with(short_header_timeout()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // A byte every 50 ms: the timeout is for the whole head, not between bytes.
    let mut closed_after = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if stream.write_all(b"X").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the dripping client was never disconnected");
    assert!(
        closed_after < Duration::from_secs(2),
        "closed after {closed_after:?}"
    );
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let server = TestServer::start_with(short_header_timeout()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_millis(200)).await;
    assert_eq!(answer.statuses(), vec![200]);
    assert!(!answer.closed);
    // Nothing more: the wait for the next head is timed like a slow head.
    let idle_since = Instant::now();
    let rest = read_answer(&mut stream, Duration::from_secs(5)).await;
    assert!(rest.closed);
    assert_eq!(rest.text, "");
    assert!(idle_since.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_upgraded_connection_is_a_tunnel_and_no_longer_scanned() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handler = |mut request: Request<Incoming>, _peer| async move {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            // Echo whatever the tunnel carries.
            if let Ok(upgraded) = upgrade.await {
                let mut tunnel = TokioIo::new(upgraded);
                let mut buffer = [0u8; 1024];
                while let Ok(read @ 1..) = tunnel.read(&mut buffer).await {
                    if tunnel.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(crate::body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        response
            .headers_mut()
            .insert("upgrade", HeaderValue::from_static("echo"));
        response
    };
    tokio::spawn(serve(
        listener,
        handler,
        ServerLimits::default(),
        shutdown.clone(),
    ));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream, Duration::from_millis(300)).await;
    assert_eq!(answer.statuses(), vec![101], "{}", answer.text);
    // Tunnel bytes that look like HTTP are the tunnel's business.
    let tunnelled = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(tunnelled).await.unwrap();
    let echoed = read_answer(&mut stream, Duration::from_millis(300)).await;
    assert_eq!(echoed.text.as_bytes(), tunnelled);
    shutdown.cancel();
}

#[test]
fn the_scanner_follows_heads_and_bodies_at_any_split() {
    let stream: &[u8] = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
        POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
        POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;x\r\nz\r\n0\r\nT: 1\r\n\r\n\
        GET / HTTP/1.1\nContent-Length: 0\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
    let expected = vec![
        HeadFacts::default(),
        HeadFacts {
            content_length: true,
            ..HeadFacts::default()
        },
        HeadFacts {
            transfer_encoding: true,
            ..HeadFacts::default()
        },
        HeadFacts {
            content_length: true,
            transfer_encoding: true,
            bare_line_feed: true,
        },
    ];
    for split in 1..stream.len() {
        let mut scanner = HeadScanner::default();
        for part in stream.chunks(split) {
            scanner.feed(part);
        }
        let heads: Vec<_> = std::iter::from_fn(|| scanner.take_head()).collect();
        assert_eq!(heads, expected, "split every {split} bytes");
        assert!(
            matches!(scanner.phase, Phase::Head(_)),
            "split every {split}"
        );
    }
}

#[test]
fn the_scanner_gives_up_where_hyper_would_reject_the_body() {
    for stream in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n",
    ] {
        let mut scanner = HeadScanner::default();
        scanner.feed(stream);
        scanner.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(scanner.take_head().is_some());
        // The request after it is never seen: the service refuses it if hyper ever got there.
        assert_eq!(
            scanner.take_head(),
            None,
            "{}",
            String::from_utf8_lossy(stream)
        );
    }
}

#[test]
fn requests_without_scanned_facts_are_refused() {
    let request = Request::get("/").header(HOST, "a").body(()).unwrap();
    assert_eq!(check_request(&request, Some(HeadFacts::default())), Ok(()));
    assert!(check_request(&request, None).is_err());
    // Facts that do not match the parsed head: the scanner and hyper disagree.
    let out_of_step = HeadFacts {
        content_length: true,
        ..HeadFacts::default()
    };
    assert!(check_request(&request, Some(out_of_step)).is_err());
}

#[tokio::test]
async fn shutdown_stops_the_listener() {
    let server = TestServer::start().await;
    let answer = server
        .exchange(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(answer.statuses(), vec![200]);
    server.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(server.addr).await.is_err());
}
