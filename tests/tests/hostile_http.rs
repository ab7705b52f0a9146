//! A real node's ingress against hostile HTTP: request smuggling, oversized and slow heads,
//! slow bodies, a foreign Host, an oversized body and spoofed `X-Forwarded-*`. Each case
//! asserts what the client reads, and then, from the app's own record of every request it
//! received, that nothing hostile got through. The node must still be healthy afterwards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use shoal_tests::{http_client, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: &str = "rec";
const HOST: &str = "rec.localhost";
/// The node's `ServerLimits::header_read_timeout`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A Node.js app that records every request it receives (head first, then whether its body
/// completed) and shows the record at `GET /__seen`.
const RECORDER_JS: &str = r#"
const http = require("http");
const port = Number(process.env.PORT || 3000);
const seen = [];
const server = http.createServer((request, response) => {
  if (request.url === "/__seen") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify(seen));
    return;
  }
  const entry = { method: request.method, url: request.url, headers: request.headers, complete: false, bodyBytes: 0 };
  seen.push(entry);
  request.on("data", (chunk) => { entry.bodyBytes += chunk.length; });
  request.on("error", () => {});
  request.on("end", () => {
    entry.complete = true;
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ ok: true, url: request.url }));
  });
});
server.listen(port, () => console.log(`recorder listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
"#;

fn recorder_app(dir: &Path) -> PathBuf {
    let app = dir.join(APP);
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("server.js"), RECORDER_JS).unwrap();
    std::fs::write(
        app.join("shoal.toml"),
        format!(
            "name = \"{APP}\"\nkind = \"service\"\ncommand = [\"node\", \"server.js\"]\nport = 3000\n\
             [scale]\npause_after = \"10m\"\nidle_timeout = \"10m\"\n\
             [policy]\nmax_body = \"1KiB\"\n"
        ),
    )
    .unwrap();
    app
}

/// What the client should read for a hostile request.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Refused by the listener before the ingress ran: this status, no `x-shoal-ingress`
    /// header, and the connection closed.
    RefusedAtListener(u16),
    /// Answered by the ingress with this status, without asking the app.
    Answered(u16),
}

/// One hostile request: its name, the bytes, what the client must read, and the path marker
/// that must never show up in the app's record.
struct Case {
    name: &'static str,
    raw: Vec<u8>,
    expect: Expect,
    marker: &'static str,
}

fn corpus() -> Vec<Case> {
    let smuggled = format!("GET /hostile/smuggled-cl-te HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let cl_te_body = format!("0\r\n\r\n{smuggled}");
    let te_cl_inner = format!("GET /hostile/smuggled-te-cl HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let te_cl_body = format!("{:x}\r\n{te_cl_inner}\r\n0\r\n\r\n", te_cl_inner.len());
    let mut many_headers = format!("GET /hostile/many-headers HTTP/1.1\r\nHost: {HOST}\r\n");
    for index in 0..200 {
        many_headers.push_str(&format!("X-Header-{index}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    vec![
        Case {
            name: "Content-Length then Transfer-Encoding",
            raw: format!(
                "POST /hostile/cl-te HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .into_bytes(),
            expect: Expect::RefusedAtListener(400),
            marker: "/hostile/cl-te",
        },
        Case {
            name: "Transfer-Encoding then Content-Length",
            raw: format!(
                "POST /hostile/te-cl HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .into_bytes(),
            expect: Expect::RefusedAtListener(400),
            marker: "/hostile/te-cl",
        },
        Case {
            name: "CL.TE smuggling: a second request after the chunked end",
            raw: format!(
                "POST /hostile/cl-te-carrier HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{cl_te_body}",
                cl_te_body.len()
            )
            .into_bytes(),
            expect: Expect::RefusedAtListener(400),
            marker: "smuggled-cl-te",
        },
        Case {
            name: "TE.CL smuggling: a second request inside a chunk, a short Content-Length",
            raw: format!(
                "POST /hostile/te-cl-carrier HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{te_cl_body}"
            )
            .into_bytes(),
            expect: Expect::RefusedAtListener(400),
            marker: "smuggled-te-cl",
        },
        Case {
            name: "Transfer-Encoding: gzip, chunked",
            raw: format!(
                "POST /hostile/gzip-chunked HTTP/1.1\r\nHost: {HOST}\r\n\
                 Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
            expect: Expect::RefusedAtListener(400),
            marker: "/hostile/gzip-chunked",
        },
        Case {
            name: "bare LF line endings",
            raw: format!("GET /hostile/bare-lf HTTP/1.1\nHost: {HOST}\n\n").into_bytes(),
            expect: Expect::RefusedAtListener(400),
            marker: "/hostile/bare-lf",
        },
        Case {
            name: "two Host headers",
            raw: format!(
                "GET /hostile/two-hosts HTTP/1.1\r\nHost: {HOST}\r\nHost: evil.example\r\n\r\n"
            )
            .into_bytes(),
            expect: Expect::RefusedAtListener(400),
            marker: "/hostile/two-hosts",
        },
        Case {
            name: "absolute-form target naming another host",
            raw: format!(
                "GET http://evil.example/hostile/absolute HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
            )
            .into_bytes(),
            expect: Expect::RefusedAtListener(400),
            marker: "/hostile/absolute",
        },
        Case {
            name: "a 100 KB header",
            raw: format!(
                "GET /hostile/big-header HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
                "a".repeat(100 * 1024)
            )
            .into_bytes(),
            expect: Expect::RefusedAtListener(431),
            marker: "/hostile/big-header",
        },
        Case {
            name: "200 headers",
            raw: many_headers.into_bytes(),
            expect: Expect::RefusedAtListener(431),
            marker: "/hostile/many-headers",
        },
        Case {
            name: "unknown Host with an app path",
            raw: format!(
                "GET /apps/{APP}/hostile/unknown-host HTTP/1.1\r\nHost: evil.example\r\n\
                 Connection: close\r\n\r\n"
            )
            .into_bytes(),
            expect: Expect::Answered(404),
            marker: "/hostile/unknown-host",
        },
        Case {
            name: "a body over the app's max_body",
            raw: [
                format!(
                    "POST /hostile/too-large HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5000\r\n\
                     Connection: close\r\n\r\n"
                )
                .into_bytes(),
                vec![b'x'; 5000],
            ]
            .concat(),
            expect: Expect::Answered(413),
            marker: "/hostile/too-large",
        },
    ]
}

/// What came back on a raw connection.
struct Answer {
    text: String,
    closed: bool,
}

impl Answer {
    fn status(&self) -> Option<u16> {
        self.text.get(9..12)?.parse().ok()
    }

    fn has_header(&self, name: &str) -> bool {
        let head = self.text.split("\r\n\r\n").next().unwrap_or_default();
        head.lines()
            .any(|line| line.to_ascii_lowercase().starts_with(&format!("{name}:")))
    }
}

/// Reads until the server closes (or resets) the connection, or `quiet` passes without a byte.
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

async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A server that refuses a head may close before reading the rest: not an error here.
    let _ = stream.write_all(raw).await;
    read_answer(&mut stream, Duration::from_secs(5)).await
}

/// Why the answer is not what `expect` says, if it is not.
fn check_answer(answer: &Answer, expect: Expect) -> Option<String> {
    let (status, at_listener) = match expect {
        Expect::RefusedAtListener(status) => (status, true),
        Expect::Answered(status) => (status, false),
    };
    let head = answer.text.lines().next().unwrap_or("<nothing>").to_owned();
    if answer.status() != Some(status) {
        return Some(format!("expected {status}, got `{head}`"));
    }
    if at_listener && answer.has_header("x-shoal-ingress") {
        return Some(format!(
            "{status} came from the ingress handler, not the listener"
        ));
    }
    if at_listener && !answer.closed {
        return Some("the connection stayed open".to_owned());
    }
    None
}

/// Connects and sends a partial head, then nothing; returns how long until the node hung
/// up, and what it sent.
async fn slowloris(addr: SocketAddr) -> (Duration, Answer) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let _ = stream
        .write_all(
            format!("GET /hostile/slowloris HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ").as_bytes(),
        )
        .await;
    let answer = read_answer(&mut stream, HEADER_READ_TIMEOUT + Duration::from_secs(5)).await;
    (started.elapsed(), answer)
}

/// A complete head announcing 100 bytes, 10 of them, then silence (the stream is kept open).
async fn slow_body(addr: SocketAddr, index: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /hostile/slow-body-{index} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn seen_by_app(node: &TestNode) -> Vec<serde_json::Value> {
    let response = http_client()
        .get(node.url("/__seen"))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", node.log());
    response.json().await.unwrap()
}

async fn healthz(node: &TestNode) -> StatusCode {
    match http_client()
        .get(node.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(response) => response.status(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Whether process `pid` exists and has not exited (a zombie has).
fn process_is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_are_refused_and_never_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(&dir.path().join("data"), &["--runtime", "process"]);
    node.cli_ok(&["deploy", recorder_app(dir.path()).to_str().unwrap()]);
    let client = http_client();

    // The app answers (and is warm) before the corpus.
    let warm = client
        .get(node.url(&format!("/apps/{APP}/warm")))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK, "{}", node.log());

    // A slowloris client hangs on while everything else runs.
    let slowloris = tokio::spawn(slowloris(node.http));

    let mut failures = Vec::new();
    for case in corpus() {
        let answer = send_raw(node.http, &case.raw).await;
        if let Some(problem) = check_answer(&answer, case.expect) {
            failures.push(format!("{}: {problem}", case.name));
        }
    }

    // Twenty clients stop mid-body; the node keeps answering meanwhile.
    let mut slow_bodies = Vec::new();
    for index in 0..20 {
        slow_bodies.push(slow_body(node.http, index).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = healthz(&node).await;
    if health != StatusCode::OK {
        failures.push(format!(
            "with 20 slow bodies hanging: /healthz answered {health}"
        ));
    }

    // Spoofed forwarding headers are replaced, not passed on.
    let spoofed = client
        .get(node.url("/hostile-free/xff"))
        .header("host", HOST)
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::OK);

    let (waited, answer) = slowloris.await.unwrap();
    if !answer.closed || waited > HEADER_READ_TIMEOUT + Duration::from_secs(3) {
        failures.push(format!(
            "slowloris: still connected after {waited:?} (closed: {})",
            answer.closed
        ));
    } else if !answer.text.is_empty() {
        failures.push(format!("slowloris: answered `{}`", answer.text));
    }

    // What the app saw.
    let seen = seen_by_app(&node).await;
    let url_of = |entry: &serde_json::Value| entry["url"].as_str().unwrap_or_default().to_owned();
    for case in corpus() {
        if let Some(entry) = seen
            .iter()
            .find(|entry| url_of(entry).contains(case.marker))
        {
            failures.push(format!("{}: reached the app as {entry}", case.name));
        }
    }
    if let Some(entry) = seen
        .iter()
        .find(|entry| url_of(entry).contains("slowloris"))
    {
        failures.push(format!("slowloris: reached the app as {entry}"));
    }
    for entry in seen
        .iter()
        .filter(|entry| url_of(entry).contains("slow-body"))
    {
        if entry["complete"] != false {
            failures.push(format!("slow body: the app got a complete request {entry}"));
        }
    }
    match seen
        .iter()
        .find(|entry| url_of(entry) == "/hostile-free/xff")
    {
        Some(entry) => {
            let headers = &entry["headers"];
            if headers["x-forwarded-for"] != "127.0.0.1" {
                failures.push(format!(
                    "X-Forwarded-For reached the app as {}",
                    headers["x-forwarded-for"]
                ));
            }
            if headers["x-forwarded-host"] == "evil" {
                failures.push("X-Forwarded-Host: evil reached the app".to_owned());
            }
        }
        None => failures.push("the X-Forwarded-For request never reached the app".to_owned()),
    }
    drop(slow_bodies);

    // Still alive, still serving.
    assert!(
        process_is_running(node.pid()),
        "the node died: {}",
        node.log()
    );
    assert_eq!(healthz(&node).await, StatusCode::OK);
    let after = client
        .get(node.url(&format!("/apps/{APP}/after")))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK, "{}", node.log());
    let body: serde_json::Value = after.json().await.unwrap();
    assert_eq!(body["url"], "/after");

    assert!(
        failures.is_empty(),
        "{} hostile case(s) not handled:\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}
