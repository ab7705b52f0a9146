//! The ingress request handler: route -> (policy) -> serve or forward -> rewrite response.
//!
//! The node hands it an [`AppDirectory`], its view of the app table, so routing never waits
//! on anything remote: a lookup is a read of a local snapshot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::forward::{forward, forward_via, Dial, ForwardTarget, StreamHook};
use crate::gate::Gate;
use crate::limits::{guard_body, BodyCut};
use crate::metrics::{IngressMetrics, NO_APP};
use crate::policy::Policy;
use crate::rewrite::PrefixRewriter;
use crate::route::{self, prefix_for, Mode, Route};
use crate::static_files::{self, StaticOptions};

/// The node's read-only view of its apps, as the ingress needs it.
pub trait AppDirectory: Send + Sync + 'static {
    /// The current release of `app`, if one is deployed.
    fn lookup(&self, app: &str) -> Option<AppTarget>;
    /// The app that owns a custom domain (`host` lowercase, without port), if any.
    fn app_for_domain(&self, host: &str) -> Option<String>;
    /// Whether this node can route requests (it holds an app table).
    fn is_ready(&self) -> bool;
}

/// Where the ingress sends requests for one app.
#[derive(Clone, Debug)]
pub struct AppTarget {
    /// Identifies the release's content (its bundle digest); part of every ETag.
    pub release_id: String,
    /// Who may reach the app, checked before anything is served.
    pub policy: Arc<Policy>,
    /// What serves it.
    pub backend: Backend,
}

/// A warm instance granted to one request, until the lease is dropped.
pub struct Lease {
    /// Where the instance answers.
    pub addr: SocketAddr,
    /// How long the request waited for a start, if it did.
    pub waited: Option<Duration>,
    /// Reports WebSocket streams opening and closing (they keep the instance awake).
    pub on_stream: Option<StreamHook>,
    /// Dropped when the response is finished: marks the request done.
    pub guard: Box<dyn Send>,
    /// How to reach `addr` when TCP does not (the simulator's instances); `None` on a real
    /// node.
    pub dial: Option<Arc<dyn Dial>>,
}

/// Why no instance could take the request: answered 503 with Retry-After.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// One sentence for the client.
    pub reason: String,
    /// When to try again.
    pub retry_after: Duration,
}

/// The client of a request, as the ingress that received it knows it.
#[derive(Clone, Debug)]
pub struct Client {
    /// The client's socket address.
    pub addr: SocketAddr,
    /// The Host it asked for.
    pub host: Option<String>,
}

/// Serves a service app's requests: on an instance of this node, or through another node.
pub trait ServiceBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Answers one request whose path is already the app's own.
    fn serve(&self, request: Request<Body>, client: Client) -> BoxFuture<'static, Response<Body>>;
}

/// What serves an app's requests.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A service app's instances.
    Service(Arc<dyn ServiceBackend>),
    /// Files of an unpacked release, served by this node.
    Static {
        /// The release directory.
        root: PathBuf,
        /// How to serve it.
        options: StaticOptions,
    },
    /// The app exists but this node cannot serve it; answered with 503 and the reason.
    Unavailable {
        /// One sentence for the client.
        reason: String,
    },
}

/// Settings of the ingress.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// Apps answer at `<app>.<domain>`.
    pub domain: String,
    /// This node's name, sent in `x-shoal-node`.
    pub node_name: String,
    /// Longest silence while a client sends a request body; then the request fails (408).
    pub body_idle_timeout: Duration,
}

/// Default of [`IngressConfig::body_idle_timeout`].
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The request handler shared by every connection of the ingress listener.
pub struct Ingress {
    directory: Arc<dyn AppDirectory>,
    config: IngressConfig,
    node_header: HeaderValue,
    metrics: IngressMetrics,
    gate: Arc<Gate>,
}

impl Ingress {
    /// Creates the handler.
    pub fn new(
        directory: Arc<dyn AppDirectory>,
        config: IngressConfig,
        metrics: IngressMetrics,
        gate: Arc<Gate>,
    ) -> Self {
        let node_header = HeaderValue::from_str(&config.node_name)
            .unwrap_or_else(|_| HeaderValue::from_static("shoal"));
        Self {
            directory,
            config,
            node_header,
            metrics,
            gate,
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let in_flight = self.metrics.enter();
        let host = request
            .headers()
            .get(HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| request.uri().host())
            .map(str::to_owned);
        let route = match self.custom_domain_route(host.as_deref(), request.uri().path()) {
            Some(route) => route,
            None => self.route(host.as_deref(), request.uri().path()),
        };
        let (app_label, mut response) = match route {
            Route::Health => (NO_APP.to_owned(), text(StatusCode::OK, "ok")),
            Route::Ready if self.directory.is_ready() => {
                (NO_APP.to_owned(), text(StatusCode::OK, "ready"))
            }
            Route::Ready => (
                NO_APP.to_owned(),
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready"),
            ),
            Route::NotFound => (NO_APP.to_owned(), not_found_here()),
            Route::UnknownHost => (
                NO_APP.to_owned(),
                text(StatusCode::NOT_FOUND, "unknown host"),
            ),
            Route::AddTrailingSlash { app } => self.add_trailing_slash(app, &request),
            Route::App { app, mode, path } => match self.directory.lookup(&app) {
                Some(target) => {
                    let response = self
                        .serve_app(&app, target, mode, &path, request, peer)
                        .await;
                    (app, response)
                }
                None => (NO_APP.to_owned(), no_such_app(&app)),
            },
        };
        // A service app's answer from another node already names the node that ran it.
        let headers = response.headers_mut();
        if !headers.contains_key(NODE_HEADER) {
            headers.insert(NODE_HEADER, self.node_header.clone());
        }
        headers.insert(INGRESS_HEADER, self.node_header.clone());
        self.metrics.observe(
            &app_label,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        response.map(|body| crate::body::with_guard(body, Box::new(in_flight)))
    }

    /// Routes by the cluster's domain; a Host that is neither ours nor an address never
    /// reaches an app (DNS rebinding, misdirected traffic): only health checks answer on it.
    fn route(&self, host: Option<&str>, path: &str) -> Route {
        match route::route(host, path, &self.config.domain) {
            Route::App { .. } | Route::AddTrailingSlash { .. }
                if !host.is_none_or(|host| route::is_known_host(host, &self.config.domain)) =>
            {
                Route::UnknownHost
            }
            route => route,
        }
    }

    fn custom_domain_route(&self, host: Option<&str>, path: &str) -> Option<Route> {
        let name = route::host_name(host?).to_ascii_lowercase();
        let app = self.directory.app_for_domain(&name)?;
        Some(Route::App {
            app,
            mode: Mode::Host,
            path: path.to_owned(),
        })
    }

    async fn serve_app(
        &self,
        app: &str,
        target: AppTarget,
        mode: Mode,
        path: &str,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let admitted = match self
            .gate
            .admit(app, &target.policy, mode, &mut request, peer, unix_ms_now())
            .await
        {
            Ok(admitted) => admitted,
            Err(refused) => return refused,
        };
        let response = match &target.backend {
            Backend::Static { root, options } => {
                let (parts, _body) = request.into_parts();
                static_files::serve(root, &target.release_id, path, &parts, options).await
            }
            Backend::Service(service) => {
                let (parts, body) = request.into_parts();
                let (body, watch) = guard_body(
                    body,
                    Some(admitted.max_body()),
                    self.config.body_idle_timeout,
                );
                let response = serve_service(
                    service.as_ref(),
                    path,
                    Request::from_parts(parts, body),
                    peer,
                )
                .await;
                // The app (or the hop) failed because the client's body was cut off: say so.
                match watch.cut() {
                    Some(BodyCut::TooLarge) => {
                        text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                    }
                    Some(BodyCut::TooSlow) => {
                        let mut response =
                            text(StatusCode::REQUEST_TIMEOUT, "request body too slow");
                        response
                            .headers_mut()
                            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                        response
                    }
                    None => response,
                }
            }
            Backend::Unavailable { reason } => unavailable(reason, Duration::from_secs(5)),
        };
        let response = admitted.finish(response);
        match mode {
            Mode::Host => response,
            Mode::Prefix => PrefixRewriter::new(&prefix_for(app)).rewrite_response(response),
        }
    }

    fn add_trailing_slash(
        &self,
        app: String,
        request: &Request<Incoming>,
    ) -> (String, Response<Body>) {
        if self.directory.lookup(&app).is_none() {
            return (NO_APP.to_owned(), no_such_app(&app));
        }
        let mut location = format!("{}/", prefix_for(&app));
        if let Some(query) = request.uri().query() {
            location.push('?');
            location.push_str(query);
        }
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(LOCATION, value);
        }
        (app, response)
    }
}

async fn serve_service(
    service: &dyn ServiceBackend,
    path: &str,
    mut request: Request<Body>,
    peer: SocketAddr,
) -> Response<Body> {
    // The app sees its own path: the `/apps/<app>` prefix is gone in prefix mode.
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    if let Ok(uri) = path_and_query.parse() {
        *request.uri_mut() = uri;
    }
    let host = request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    service.serve(request, Client { addr: peer, host }).await
}

/// Sends `request` to the instance a lease grants (or answers the rejection), marking the
/// response with the start wait and holding the lease until the response is finished.
pub async fn serve_lease<B>(
    lease: Result<Lease, Rejection>,
    request: Request<B>,
    client: &Client,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let lease = match lease {
        Ok(lease) => lease,
        Err(rejection) => return unavailable(&rejection.reason, rejection.retry_after),
    };
    let target = ForwardTarget {
        client: client.addr,
        host: client.host.clone(),
        timeout: APP_RESPONSE_TIMEOUT,
        from_peer: false,
    };
    let response = match &lease.dial {
        Some(dial) => forward_via(&**dial, request, lease.addr, &target, lease.on_stream).await,
        None => forward(request, lease.addr, &target, lease.on_stream).await,
    };
    let (mut parts, body) = response.into_parts();
    if let Some(waited) = lease.waited {
        if let Ok(value) = HeaderValue::from_str(&waited.as_millis().to_string()) {
            parts.headers.insert(COLD_START_HEADER, value);
        }
    }
    Response::from_parts(parts, body::with_guard(body, lease.guard))
}

/// Now, as Unix milliseconds (the ingress is the shell that reads the clock for the gate).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Longest wait for an app's response headers.
pub const APP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// Set on a response that waited for an instance to start: the wait in milliseconds.
pub const COLD_START_HEADER: &str = "x-shoal-cold-start-ms";
/// The node that ran the request (for a static app, the node that served it).
pub const NODE_HEADER: &str = "x-shoal-node";
/// The node whose ingress received the request.
pub const INGRESS_HEADER: &str = "x-shoal-ingress";

/// `503` with a one-sentence reason and `Retry-After`.
pub fn unavailable(reason: &str, retry_after: Duration) -> Response<Body> {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, reason);
    let seconds = retry_after.as_secs().max(1).to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

/// A short plain-text response.
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(body::full(format!("{message}\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn no_such_app(app: &str) -> Response<Body> {
    text(StatusCode::NOT_FOUND, &format!("no app named `{app}`"))
}

fn not_found_here() -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        "not found: apps are served at /apps/<name>/ or at http://<name>.<domain>/",
    )
}
