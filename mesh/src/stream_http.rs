//! HTTP/1.1 over one QUIC bidirectional stream: how one node forwards a request (a page load,
//! an SSE feed, a WebSocket) to the node that runs the app.
//!
//! One stream carries exactly one exchange: the client side sends one request and drops its
//! half of the connection, the server side serves with keep-alive off. A QUIC stream costs a
//! few bytes of state, so pooling HTTP connections on top of one would only add a second pool;
//! concurrent requests to one peer are concurrent streams on the pooled QUIC connection.
//!
//! Both functions are generic over the byte stream, so any `AsyncRead + AsyncWrite` works;
//! with quinn, pass `tokio::io::join(recv, send)` (from [`crate::quic::QuicNode::open`] on the
//! client, from the [`crate::quic::StreamHandler`] on the server).
//!
//! The stream ends the way the HTTP/1.1 connection ends: when hyper shuts the connection down
//! it finishes the QUIC send side, and dropping the `RecvStream` tells the peer to stop
//! sending. A client that gives up (drops the response future or the response body) closes its
//! side, and the server's hyper notices the end of the stream and drops the service's future.
//! Upgrades (WebSocket) hand the raw stream over through [`hyper::upgrade::on`] on both sides.

use std::error::Error as StdError;
use std::time::Duration;

use http::header::{HeaderValue, HOST};
use http::uri::Authority;
use http::{Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// How long the server side waits for a request's head before it drops the stream.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong with an HTTP exchange over a stream; each message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum StreamHttpError {
    /// The request has neither a Host header nor an absolute URI to take one from.
    #[error("the request to {0} names no host: give it an absolute URI or a Host header")]
    NoHost(Uri),
    /// The HTTP/1.1 exchange failed: the stream closed early, or a message was malformed.
    #[error("the HTTP exchange over the peer stream failed: {0}")]
    Http(#[from] hyper::Error),
}

/// Sends one HTTP/1.1 request over `io` (e.g. `tokio::io::join(recv, send)`) and returns the
/// response as soon as its head arrives; the body streams in as the peer sends it.
///
/// The connection runs on a spawned task that lives until the response body (or an upgrade)
/// ends; dropping the response ends it early and closes the stream. The Host header is taken
/// from the URI when missing, and an absolute URI is sent in origin form (`/path?query`).
/// Upgrades (WebSocket) work: call [`hyper::upgrade::on`] on the response.
pub async fn send_request<IO, B>(
    io: IO,
    request: Request<B>,
) -> Result<Response<Incoming>, StreamHttpError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let request = prepare_request(request)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            debug!(error = %err, "http over quic stream ended with an error");
        }
    });
    // `sender` is dropped on return: hyper closes the connection once this exchange is over.
    Ok(sender.send_request(request).await?)
}

/// Serves exactly one HTTP/1.1 exchange on `io` with `service` (keep-alive off, upgrades on),
/// e.g. `serve_one(tokio::io::join(recv, send), service_fn(handler))`.
///
/// Returns once the response has been written (or handed over to an upgrade), or with an
/// error when the client went away or sent no request head within [`HEADER_READ_TIMEOUT`];
/// in both cases the service's future is dropped.
pub async fn serve_one<IO, S, B>(io: IO, service: S) -> Result<(), StreamHttpError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await?;
    Ok(())
}

/// Gives the request a Host header (the low-level hyper client sets none) and an origin-form
/// URI (the absolute form is for proxies).
fn prepare_request<B>(mut request: Request<B>) -> Result<Request<B>, StreamHttpError> {
    if !request.headers().contains_key(HOST) {
        let host = request
            .uri()
            .authority()
            .and_then(host_header)
            .ok_or_else(|| StreamHttpError::NoHost(request.uri().clone()))?;
        request.headers_mut().insert(HOST, host);
    }
    if request.uri().scheme().is_some() {
        let origin_form = match request.uri().path_and_query() {
            Some(path_and_query) => Uri::from(path_and_query.clone()),
            None => Uri::from_static("/"),
        };
        *request.uri_mut() = origin_form;
    }
    Ok(request)
}

/// `host[:port]` of an authority, without any `user:password@`, which a Host header must not
/// carry.
fn host_header(authority: &Authority) -> Option<HeaderValue> {
    let host = match authority.port_u16() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_string(),
    };
    HeaderValue::from_str(&host).ok()
}

#[cfg(test)]
#[path = "stream_http_tests.rs"]
mod tests;
