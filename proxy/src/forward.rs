//! Forwarding a request to an app instance over HTTP/1.1, bodies streaming both ways.
//!
//! Upgrades (WebSocket) are carried through: when the instance answers `101`, both upgraded
//! connections are spliced together until either side closes. Hop-by-hop headers are dropped
//! and `X-Forwarded-*` set by Shoal, never trusted from the client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::body::{self, Body, BoxError};

/// Longest wait for a connection to an instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What the ingress knows about a request it forwards.
#[derive(Clone, Debug)]
pub struct ForwardTarget {
    /// The client's address, for `X-Forwarded-For`.
    pub client: SocketAddr,
    /// The Host the client asked for, for `X-Forwarded-Host`.
    pub host: Option<String>,
    /// Longest wait for the response headers.
    pub timeout: Duration,
    /// The upstream is another Shoal node, not an app: its `x-shoal-*` response headers are
    /// kept (an app's are dropped, so no app can claim to be a node or a cold start).
    pub from_peer: bool,
}

/// Called with `true` when an upgraded stream opens, `false` when it closes.
pub type StreamHook = Box<dyn Fn(bool) + Send + Sync>;

/// Sends `request` (whose path is already the app's own) to the instance at `addr`, on a
/// pooled keep-alive connection: a connection per request would cost the app an accept and
/// the node a local port (held for a minute after close) every time.
pub async fn forward<B>(
    mut request: Request<B>,
    addr: SocketAddr,
    target: &ForwardTarget,
    on_stream: Option<StreamHook>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let client_upgrade = is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    prepare_request_headers(request.headers_mut(), target);
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    match format!("http://{addr}{path}").parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return bad_gateway("the request path cannot be forwarded"),
    }
    // Pooled connections are HTTP/1.1 keep-alive, whatever the client spoke.
    *request.version_mut() = http::Version::HTTP_11;
    let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
    let response =
        match tokio::time::timeout(target.timeout, instance_client().request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) if error.is_connect() => {
                debug!(%addr, %error, "instance refused the connection");
                return not_accepting();
            }
            Ok(Err(error)) => {
                debug!(%addr, %error, "upstream request failed");
                return closed_early();
            }
            Err(_) => return gateway_timeout(),
        };
    finish_response(response, client_upgrade, target, on_stream)
}

/// A byte stream to an instance, as a [`Dial`] opens it.
pub trait InstanceIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> InstanceIo for T {}

/// Opens connections to instances that TCP does not reach: the simulator's, which answer in
/// memory. A real node has none and uses its pooled TCP client ([`forward`]).
pub trait Dial: Send + Sync + 'static {
    /// A new connection to the instance at `addr` (refused when nothing listens there).
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<Box<dyn InstanceIo>>>;
}

/// [`forward`] over a connection `dial` opens, one exchange per connection, with the same
/// answers when the instance refuses, fails or is late.
pub async fn forward_via<B>(
    dial: &dyn Dial,
    request: Request<B>,
    addr: SocketAddr,
    target: &ForwardTarget,
    on_stream: Option<StreamHook>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let io = match tokio::time::timeout(CONNECT_TIMEOUT, dial.dial(addr)).await {
        Ok(Ok(io)) => io,
        Ok(Err(error)) => {
            debug!(%addr, %error, "instance refused the connection");
            return not_accepting();
        }
        Err(_) => return not_accepting(),
    };
    match forward_on(io, request, target, on_stream).await {
        Ok(response) => response,
        Err(ForwardError::Timeout) => gateway_timeout(),
        Err(ForwardError::Failed(error)) => {
            debug!(%addr, %error, "upstream request failed");
            closed_early()
        }
    }
}

/// `502`: nothing accepts connections at the instance's address.
fn not_accepting() -> Response<Body> {
    bad_gateway("the app is not accepting connections")
}

/// `502`: the instance dropped the connection without a response.
fn closed_early() -> Response<Body> {
    bad_gateway("the app closed the connection before answering")
}

/// Most idle connections kept per instance.
const POOL_IDLE_PER_INSTANCE: usize = 64;
/// An idle pooled connection is closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type InstanceClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// The node's one pool of connections to app instances, keyed by address.
fn instance_client() -> &'static InstanceClient {
    static CLIENT: std::sync::OnceLock<InstanceClient> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_PER_INSTANCE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector)
    })
}

/// Why an exchange over a byte stream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No response head within the target's timeout.
    #[error("no response within the timeout")]
    Timeout,
    /// The connection failed or closed before a response head arrived.
    #[error("{0}")]
    Failed(hyper::Error),
}

/// Sends `request` as one HTTP/1.1 exchange over `io`: an instance's TCP connection, or a
/// stream to another node. Hop-by-hop headers go and `X-Forwarded-*` are set from `target`;
/// a `101` answer splices both upgraded connections together.
pub async fn forward_on<IO, B>(
    io: IO,
    mut request: Request<B>,
    target: &ForwardTarget,
    on_stream: Option<StreamHook>,
) -> Result<Response<Body>, ForwardError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let client_upgrade = is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    prepare_request_headers(request.headers_mut(), target);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ForwardError::Failed)?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%error, "upstream connection ended with an error");
        }
    });
    let response = match tokio::time::timeout(target.timeout, sender.send_request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return Err(ForwardError::Failed(error)),
        Err(_) => return Err(ForwardError::Timeout),
    };
    Ok(finish_response(response, client_upgrade, target, on_stream))
}

/// The response for the client: a `101` splices both upgraded connections together; other
/// answers lose their hop-by-hop headers (and an app's `x-shoal-*` headers).
fn finish_response(
    response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    target: &ForwardTarget,
    on_stream: Option<StreamHook>,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            return splice_upgrade(response, client_upgrade, on_stream);
        }
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if !target.from_peer {
        strip_shoal_headers(&mut parts.headers);
    }
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
}

/// Drops `x-shoal-*` headers: only Shoal sets them.
fn strip_shoal_headers(headers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-shoal-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

fn splice_upgrade(
    mut response: Response<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    on_stream: Option<StreamHook>,
) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
            return;
        };
        if let Some(hook) = &on_stream {
            hook(true);
        }
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        if let Some(hook) = &on_stream {
            hook(false);
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, body::empty())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let upgrade = is_upgrade(headers);
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && *name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn prepare_request_headers(headers: &mut HeaderMap, target: &ForwardTarget) {
    strip_hop_by_hop(headers);
    for name in [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "x-real-ip",
    ] {
        headers.remove(name);
    }
    let client_ip = target.client.ip().to_string();
    if let Ok(value) = HeaderValue::from_str(&client_ip) {
        headers.insert("x-forwarded-for", value.clone());
        headers.insert("x-real-ip", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = target
        .host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        headers.insert("x-forwarded-host", host);
    }
}

/// `502` with a one-sentence reason.
pub fn bad_gateway(message: &str) -> Response<Body> {
    crate::ingress::text(StatusCode::BAD_GATEWAY, message)
}

/// `504`: the app did not answer in time.
pub fn gateway_timeout() -> Response<Body> {
    crate::ingress::text(
        StatusCode::GATEWAY_TIMEOUT,
        "the app did not answer in time",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped_and_forwarded_headers_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        let target = ForwardTarget {
            client: "192.0.2.7:5555".parse().unwrap(),
            host: Some("api.localhost".into()),
            timeout: Duration::from_secs(1),
            from_peer: false,
        };
        prepare_request_headers(&mut headers, &target);
        assert!(!headers.contains_key("connection"));
        assert!(!headers.contains_key("x-secret"));
        assert!(!headers.contains_key("keep-alive"));
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-host"], "api.localhost");
        assert_eq!(headers["accept"], "*/*");
    }

    #[test]
    fn an_apps_shoal_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("x-shoal-node", HeaderValue::from_static("spoofed"));
        headers.insert("x-shoal-cold-start-ms", HeaderValue::from_static("1"));
        headers.insert("x-shoals", HeaderValue::from_static("kept"));
        strip_shoal_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-shoals"], "kept");
    }

    /// Instances in memory: `addr` port 1 answers with the request's `x-forwarded-for` and
    /// an app's `x-shoal-node`; anything else refuses.
    struct MemoryDial;

    impl Dial for MemoryDial {
        fn dial(
            &self,
            addr: SocketAddr,
        ) -> BoxFuture<'static, std::io::Result<Box<dyn InstanceIo>>> {
            Box::pin(async move {
                if addr.port() != 1 {
                    return Err(std::io::ErrorKind::ConnectionRefused.into());
                }
                let (client, server) = tokio::io::duplex(4096);
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let seen = request.headers()["x-forwarded-for"].clone();
                    let response = Response::builder()
                        .header("x-seen-for", seen)
                        .header("x-shoal-node", "spoofed")
                        .body(http_body_util::Full::new(Bytes::from_static(b"hi")))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(server), service),
                );
                Ok(Box::new(client) as Box<dyn InstanceIo>)
            })
        }
    }

    fn target() -> ForwardTarget {
        ForwardTarget {
            client: "192.0.2.7:5555".parse().unwrap(),
            host: None,
            timeout: Duration::from_secs(1),
            from_peer: false,
        }
    }

    #[tokio::test]
    async fn a_dialled_instance_answers_through_the_same_header_rules() {
        let request = Request::get("/x").body(body::empty()).unwrap();
        let addr = "10.0.0.1:1".parse().unwrap();
        let response = forward_via(&MemoryDial, request, addr, &target(), None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-seen-for"], "192.0.2.7");
        assert!(!response.headers().contains_key("x-shoal-node"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
    }

    #[tokio::test]
    async fn a_refused_dial_is_a_bad_gateway() {
        let request = Request::get("/").body(body::empty()).unwrap();
        let addr = "10.0.0.1:2".parse().unwrap();
        let response = forward_via(&MemoryDial, request, addr, &target(), None).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn upgrade_headers_survive_for_websockets() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("Upgrade"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&headers));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "Upgrade");
    }
}
