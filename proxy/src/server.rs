//! The HTTP/1.1 accept loop every Shoal listener runs, with graceful shutdown, hardened
//! against hostile clients.
//!
//! The caller binds the listener and owns the shutdown token (so tests bind port 0 and stop
//! cleanly). On shutdown the loop stops accepting, idle keep-alive connections close at once,
//! and in-flight requests get `drain_timeout` to finish.
//!
//! What a client cannot do, and who stops it (hyper 1.12, checked by `server_tests.rs`):
//! - A head over [`ServerLimits::max_header_bytes`] or with more than
//!   [`ServerLimits::max_headers`] lines: hyper answers `431` and closes.
//! - A head not finished within [`ServerLimits::header_read_timeout`] (slowloris), or a
//!   keep-alive connection idle that long between requests: hyper closes the connection
//!   without an answer.
//! - Two different `Content-Length`s, a `Transfer-Encoding` whose last coding is not
//!   `chunked`, `Transfer-Encoding` in HTTP/1.0, obs-fold lines, a space before a header's
//!   colon: hyper answers `400` and closes.
//! - Both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1, request smuggling): hyper
//!   would serve it as chunked after dropping `Content-Length` from the headers, so the
//!   handler could not tell. A `HeadScanner` reads the raw bytes as they arrive and notes
//!   which framing headers each head carried; the service wrapper answers `400` with
//!   `Connection: close` before the handler runs. It refuses the same way, where hyper lets
//!   the request through: codings other than a plain `chunked` (`gzip, chunked`), bare LF
//!   line endings, a missing, repeated or invalid `Host`, and an absolute-form target whose
//!   host is not the `Host` header's.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{HeaderValue, Method, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::body::Body;

/// Limits that protect a listener from slow or greedy clients.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Time a client has to send a request's head, counted from the moment the server waits
    /// for it: from the connection's start, and again each time a keep-alive connection
    /// becomes idle after a response. So it is also the keep-alive idle timeout. A client
    /// that misses it is disconnected without an answer.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (bytes, request line included); larger gets `431`.
    pub max_header_bytes: usize,
    /// Most header lines a request may have; more gets `431`.
    pub max_headers: usize,
    /// Time in-flight requests get to finish once shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` is cancelled, then drains.
///
/// Malformed or ambiguous requests are answered `400` (or `431`) without calling `handler`;
/// see the module's documentation for the list.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let connections = TaskTracker::new();
    let local = listener.local_addr().ok();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(serve_connection(
            stream,
            peer,
            handler.clone(),
            builder.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    info!(addr = ?local, "listener closed, draining in-flight requests");
    connections.close();
    tokio::select! {
        () = connections.wait() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            warn!(addr = ?local, "drain timeout reached, closing remaining connections");
        }
    }
}

/// One connection, until it ends or `shutdown` is cancelled: hyper over a stream whose
/// request heads are scanned as they arrive, and a service that refuses what
/// [`check_request`] refuses before `handler` sees it.
async fn serve_connection<H, F>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    builder: http1::Builder,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let scanner = SharedScanner::default();
    let io = ScannedStream {
        stream,
        scanner: scanner.clone(),
    };
    let service = service_fn(move |request: Request<Incoming>| {
        let verdict = check_request(&request, scanner.lock().take_head());
        let handler = handler.clone();
        let scanner = scanner.clone();
        async move {
            if let Err(reason) = verdict {
                debug!(%peer, reason, "malformed request refused");
                return Ok::<_, Infallible>(refuse(reason));
            }
            let is_connect = request.method() == Method::CONNECT;
            let response = handler(request, peer).await;
            // From here on the bytes are a tunnel's, not HTTP/1 messages. Clients send
            // them only after reading this response, which is not written yet.
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                || (is_connect && response.status().is_success())
            {
                scanner.lock().stop();
            }
            Ok(response)
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight, close idle keep-alive connections now.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%peer, %error, "connection ended with an error");
    }
}

/// `400` with the reason, closing the connection: after a malformed head nothing that
/// follows on the connection can be trusted to start where it seems to.
fn refuse(reason: &str) -> Response<Body> {
    let mut response = crate::ingress::text(StatusCode::BAD_REQUEST, reason);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether a request hyper parsed may reach the handler; `Err` holds the sentence for the
/// client. `facts` are what the [`HeadScanner`] saw in the same head's raw bytes; `None`
/// means it could not follow the connection's framing, which is refused too.
fn check_request<B>(request: &Request<B>, facts: Option<HeadFacts>) -> Result<(), &'static str> {
    let headers = request.headers();
    let Some(facts) = facts else {
        return Err("malformed request: its framing could not be followed");
    };
    if facts.content_length && facts.transfer_encoding {
        return Err("a request must not have both Content-Length and Transfer-Encoding");
    }
    // hyper keeps Transfer-Encoding, and Content-Length when there is no Transfer-Encoding:
    // a head that disagrees with the scanner's means the two read the stream differently.
    let out_of_step = facts.transfer_encoding != headers.contains_key(TRANSFER_ENCODING)
        || (!facts.transfer_encoding
            && facts.content_length != headers.contains_key(CONTENT_LENGTH));
    if out_of_step {
        return Err("malformed request: its framing could not be followed");
    }
    if facts.bare_line_feed {
        return Err("malformed request: lines must end with CRLF");
    }
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        let plain_chunked = coding
            .to_str()
            .is_ok_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        if !plain_chunked || codings.next().is_some() {
            return Err("Transfer-Encoding other than chunked is not supported");
        }
    }
    check_host(request)
}

/// RFC 9112 §3.2: exactly one valid `Host` in HTTP/1.1, naming the same host as an
/// absolute-form target if there is one (the ingress routes by `Host`; an upstream might
/// route by the target).
fn check_host<B>(request: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err("a request must have one Host header, not several"),
        (None, _) if request.version() == Version::HTTP_11 => {
            return Err("an HTTP/1.1 request must have a Host header")
        }
        (None, _) => None,
        (Some(value), None) if value.is_empty() => None,
        (Some(value), None) => match Authority::try_from(value.as_bytes()) {
            Ok(authority) if is_host_and_port(&authority) => Some(authority),
            _ => return Err("invalid Host header"),
        },
    };
    let (Some(target), Some(host)) = (request.uri().authority(), host) else {
        return Ok(());
    };
    let default_port = match request.uri().scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let same_host = target.host().eq_ignore_ascii_case(host.host())
        && target.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port);
    if same_host {
        Ok(())
    } else {
        Err("the request target and the Host header name different hosts")
    }
}

/// Whether `authority` is `host[:port]` (no user info, a numeric port), as `Host` must be.
fn is_host_and_port(authority: &Authority) -> bool {
    let whole = authority.as_str();
    whole.starts_with(authority.host())
        && (whole.len() == authority.host().len() || authority.port_u16().is_some())
}

/// The connection's stream, with every byte read shown to the connection's scanner before
/// hyper parses it.
struct ScannedStream {
    stream: TcpStream,
    scanner: SharedScanner,
}

impl AsyncRead for ScannedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        let fresh = &buf.filled()[before..];
        if !fresh.is_empty() {
            self.scanner.lock().feed(fresh);
        }
        result
    }
}

impl AsyncWrite for ScannedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A connection's scanner, shared by its stream (which feeds it) and its service (which
/// takes one head's facts per request).
#[derive(Clone, Default)]
struct SharedScanner(Arc<Mutex<HeadScanner>>);

impl SharedScanner {
    fn lock(&self) -> MutexGuard<'_, HeadScanner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the raw bytes of one request head said about its framing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HeadFacts {
    /// The head had a `Content-Length` line.
    content_length: bool,
    /// The head had a `Transfer-Encoding` line.
    transfer_encoding: bool,
    /// A line of the head ended with LF alone.
    bare_line_feed: bool,
}

/// Heads scanned ahead of the handler; hyper buffers at most `max_buf_size` bytes, so a
/// client pipelining more than this many requests is out of bounds.
const MAX_PENDING_HEADS: usize = 1024;

/// Follows a connection's HTTP/1.1 request stream byte by byte, the way hyper frames it:
/// heads (noting [`HeadFacts`]), then bodies by `Transfer-Encoding: chunked` or
/// `Content-Length`, skipped without being kept. It holds a few counters, never the bytes.
///
/// A pure state machine: `feed` bytes in the order they arrive, `take_head` once per
/// request hyper parsed. Where hyper would reject the bytes, the scanner gives up (hyper
/// closes the connection anyway); after an upgrade it is stopped.
#[derive(Debug, Default)]
struct HeadScanner {
    phase: Phase,
    heads: VecDeque<HeadFacts>,
}

#[derive(Debug)]
enum Phase {
    Head(HeadState),
    Fixed {
        remaining: u64,
    },
    Chunked(Chunk),
    /// Not (or no longer) HTTP/1 framing the scanner can follow.
    Off,
}

impl Default for Phase {
    fn default() -> Self {
        Phase::Head(HeadState::default())
    }
}

/// Progress through one head.
#[derive(Debug, Default)]
struct HeadState {
    facts: HeadFacts,
    /// The request line has begun (empty lines before it are skipped, as hyper does).
    started: bool,
    /// The current line is the request line.
    in_request_line: bool,
    /// Bytes of the current line, CRs not counted.
    line_len: usize,
    previous_was_cr: bool,
    field: Field,
    /// The lowercased start of the current header name (long names match nothing).
    name: [u8; NAME_PREFIX],
    name_len: usize,
    /// Past the colon of the current header line.
    in_value: bool,
    /// The first valid Content-Length.
    content_length: Option<u64>,
    /// Whether the last Transfer-Encoding line ended in `chunked`.
    chunked: bool,
}

/// Longest header name kept: `transfer-encoding`.
const NAME_PREFIX: usize = 17;

/// Which header the current line is, and its value parsed so far.
#[derive(Debug, Default)]
enum Field {
    #[default]
    Other,
    /// The value so far (`None`: not a valid length), whether a digit came, and whether
    /// trailing space began.
    ContentLength {
        value: Option<u64>,
        digits: bool,
        ended: bool,
    },
    /// The last coding so far, lowercased (`None`: too long or malformed to be `chunked`).
    TransferEncoding { coding: Option<Coding>, ended: bool },
}

#[derive(Debug, Default)]
struct Coding {
    bytes: [u8; 7],
    len: usize,
}

/// Where a chunked body's scan is, as in hyper's decoder.
#[derive(Debug)]
enum Chunk {
    Start,
    Size(u64),
    SizeSpace(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
}

impl HeadScanner {
    /// Follows `bytes`, the next bytes read from the connection.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.phase {
                Phase::Off => return,
                Phase::Fixed { remaining } => {
                    bytes = skip(bytes, remaining);
                    if *remaining == 0 {
                        self.phase = Phase::default();
                    }
                }
                Phase::Chunked(Chunk::Data(remaining)) => {
                    bytes = skip(bytes, remaining);
                    if *remaining == 0 {
                        self.phase = Phase::Chunked(Chunk::DataCr);
                    }
                }
                Phase::Chunked(chunk) => {
                    match chunk.step(bytes[0]) {
                        Some(Some(next)) => *chunk = next,
                        Some(None) => self.phase = Phase::default(),
                        None => self.phase = Phase::Off,
                    }
                    bytes = &bytes[1..];
                }
                Phase::Head(head) => {
                    let head_done = head.step(bytes[0]);
                    bytes = &bytes[1..];
                    if head_done {
                        self.finish_head();
                    }
                }
            }
        }
    }

    fn finish_head(&mut self) {
        let Phase::Head(head) = std::mem::replace(&mut self.phase, Phase::Off) else {
            return;
        };
        if self.heads.len() >= MAX_PENDING_HEADS {
            self.stop();
            return;
        }
        self.heads.push_back(head.facts);
        self.phase = if head.facts.transfer_encoding {
            // Not chunked last: hyper answers 400 and closes.
            if head.chunked {
                Phase::Chunked(Chunk::Start)
            } else {
                Phase::Off
            }
        } else if !head.facts.content_length {
            Phase::default()
        } else {
            match head.content_length {
                Some(0) => Phase::default(),
                Some(remaining) => Phase::Fixed { remaining },
                // An invalid length: hyper answers 400 and closes.
                None => Phase::Off,
            }
        };
    }

    /// The facts of the next head hyper will hand to the service, if the scanner saw it.
    fn take_head(&mut self) -> Option<HeadFacts> {
        self.heads.pop_front()
    }

    /// The connection no longer carries HTTP/1 messages (it was upgraded).
    fn stop(&mut self) {
        self.phase = Phase::Off;
        self.heads.clear();
    }
}

/// Passes over up to `remaining` body bytes, counting them off.
fn skip<'a>(bytes: &'a [u8], remaining: &mut u64) -> &'a [u8] {
    let skipped = bytes
        .len()
        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
    *remaining -= skipped as u64;
    &bytes[skipped..]
}

impl HeadState {
    /// Follows one byte of the head; true when it was the end of the head.
    fn step(&mut self, byte: u8) -> bool {
        match byte {
            b'\n' => {
                let bare = !self.previous_was_cr;
                self.previous_was_cr = false;
                self.end_line(bare)
            }
            b'\r' => {
                self.previous_was_cr = true;
                false
            }
            _ => {
                self.previous_was_cr = false;
                if !self.started {
                    self.started = true;
                    self.in_request_line = true;
                }
                self.line_len += 1;
                if !self.in_request_line {
                    self.header_byte(byte);
                }
                false
            }
        }
    }

    fn end_line(&mut self, bare_line_feed: bool) -> bool {
        if !self.started {
            // An empty line before the request line: skipped, as hyper does.
            return false;
        }
        self.facts.bare_line_feed |= bare_line_feed;
        let empty = self.line_len == 0;
        self.in_request_line = false;
        self.line_len = 0;
        self.name_len = 0;
        self.in_value = false;
        match std::mem::take(&mut self.field) {
            Field::Other => {}
            Field::ContentLength { value, digits, .. } => {
                // hyper keeps the first length (it rejects a different second one).
                if self.content_length.is_none() && digits {
                    self.content_length = value;
                }
            }
            Field::TransferEncoding { coding, .. } => {
                self.chunked =
                    coding.is_some_and(|coding| &coding.bytes[..coding.len] == b"chunked");
            }
        }
        empty
    }

    fn header_byte(&mut self, byte: u8) {
        if !self.in_value {
            if byte == b':' {
                self.in_value = true;
                self.field = self.classify_name();
            } else if self.name_len < NAME_PREFIX {
                self.name[self.name_len] = byte.to_ascii_lowercase();
                self.name_len += 1;
            } else {
                // Longer than any name the scanner looks for.
                self.name_len = NAME_PREFIX + 1;
            }
            return;
        }
        let is_space = byte == b' ' || byte == b'\t';
        match &mut self.field {
            Field::Other => {}
            Field::ContentLength {
                value,
                digits,
                ended,
            } => match byte {
                b'0'..=b'9' if !*ended => {
                    *digits = true;
                    *value = value
                        .and_then(|value| value.checked_mul(10))
                        .and_then(|value| value.checked_add(u64::from(byte - b'0')));
                }
                _ if is_space => *ended = *digits,
                _ => *value = None,
            },
            Field::TransferEncoding { coding, ended } => match byte {
                b',' => {
                    *coding = Some(Coding::default());
                    *ended = false;
                }
                _ if is_space => *ended = coding.as_ref().is_some_and(|coding| coding.len > 0),
                _ => match coding {
                    Some(current) if !*ended && current.len < current.bytes.len() => {
                        current.bytes[current.len] = byte.to_ascii_lowercase();
                        current.len += 1;
                    }
                    _ => *coding = None,
                },
            },
        }
    }

    fn classify_name(&mut self) -> Field {
        match &self.name[..self.name_len.min(NAME_PREFIX)] {
            _ if self.name_len > NAME_PREFIX => Field::Other,
            b"content-length" => {
                self.facts.content_length = true;
                Field::ContentLength {
                    value: Some(0),
                    digits: false,
                    ended: false,
                }
            }
            b"transfer-encoding" => {
                self.facts.transfer_encoding = true;
                Field::TransferEncoding {
                    coding: Some(Coding::default()),
                    ended: false,
                }
            }
            _ => Field::Other,
        }
    }
}

impl Chunk {
    /// The state after `byte`: `Some(Some(next))`, `Some(None)` when the body is over, `None`
    /// when hyper would reject the byte.
    fn step(&self, byte: u8) -> Option<Option<Chunk>> {
        let hex = |size: u64| {
            let digit = (byte as char).to_digit(16)?;
            size.checked_mul(16)?.checked_add(u64::from(digit))
        };
        let next = match (self, byte) {
            (Chunk::Start, _) => Chunk::Size(hex(0)?),
            (Chunk::Size(size), b' ' | b'\t') | (Chunk::SizeSpace(size), b' ' | b'\t') => {
                Chunk::SizeSpace(*size)
            }
            (Chunk::Size(size) | Chunk::SizeSpace(size), b';') => Chunk::Extension(*size),
            (Chunk::Size(size) | Chunk::SizeSpace(size) | Chunk::Extension(size), b'\r') => {
                Chunk::SizeLf(*size)
            }
            (Chunk::Size(size), _) => Chunk::Size(hex(*size)?),
            (Chunk::Extension(_), b'\n') => return None,
            (Chunk::Extension(size), _) => Chunk::Extension(*size),
            (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
            (Chunk::SizeLf(size), b'\n') => Chunk::Data(*size),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Start,
            (Chunk::EndCr, b'\r') => Chunk::EndLf,
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::EndCr | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
            (Chunk::EndLf, b'\n') => return Some(None),
            _ => return None,
        };
        Some(Some(next))
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
