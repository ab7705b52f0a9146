//! Forwarding a request to an app instance over HTTP/1.1, bodies streaming both ways.
//!
//! Upgrades (WebSocket) are carried through: when the instance answers `101`, both upgraded
//! connections are spliced together until either side closes. Hop-by-hop headers are dropped
//! and `X-Forwarded-*` set by Shoal, never trusted from the client.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::{self, Body};

/// Longest wait for a connection to an instance.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a request goes and what the ingress knows about the client.
#[derive(Clone, Debug)]
pub struct ForwardTarget {
    /// The instance's address.
    pub addr: SocketAddr,
    /// The client's address, for `X-Forwarded-For`.
    pub client: SocketAddr,
    /// The Host the client asked for, for `X-Forwarded-Host`.
    pub host: Option<String>,
    /// Longest wait for the instance's response headers.
    pub timeout: Duration,
}

/// Called with `true` when an upgraded stream opens, `false` when it closes.
pub type StreamHook = Box<dyn Fn(bool) + Send + Sync>;

/// Sends `request` (whose path is already the app's own) to the instance.
pub async fn forward(
    mut request: Request<Incoming>,
    target: ForwardTarget,
    on_stream: Option<StreamHook>,
) -> Response<Body> {
    let client_upgrade = is_upgrade(request.headers()).then(|| hyper::upgrade::on(&mut request));
    prepare_request_headers(request.headers_mut(), &target);
    // Bounded: the address of an instance that died can vanish, and a connect to it would
    // hang rather than be refused.
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr));
    let stream = match connect.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            debug!(addr = %target.addr, %error, "instance refused the connection");
            return bad_gateway("the app is not accepting connections");
        }
        Err(_) => return bad_gateway("the app is not accepting connections"),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(parts) => parts,
            Err(_) => return bad_gateway("the app closed the connection"),
        };
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%error, "upstream connection ended with an error");
        }
    });
    let response = match tokio::time::timeout(target.timeout, sender.send_request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            debug!(addr = %target.addr, %error, "upstream request failed");
            return bad_gateway("the app closed the connection before answering");
        }
        Err(_) => return gateway_timeout(),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            return splice_upgrade(response, client_upgrade, on_stream);
        }
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
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

fn bad_gateway(message: &str) -> Response<Body> {
    crate::ingress::text(StatusCode::BAD_GATEWAY, message)
}

fn gateway_timeout() -> Response<Body> {
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
            addr: "10.0.0.2:3000".parse().unwrap(),
            client: "192.0.2.7:5555".parse().unwrap(),
            host: Some("api.localhost".into()),
            timeout: Duration::from_secs(1),
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
