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
use crate::forward::{forward, ForwardTarget, StreamHook};
use crate::metrics::{IngressMetrics, NO_APP};
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
}

/// Why no instance could take the request: answered 503 with Retry-After.
#[derive(Clone, Debug)]
pub struct Rejection {
    /// One sentence for the client.
    pub reason: String,
    /// When to try again.
    pub retry_after: Duration,
}

/// Runs a service app's instances and hands out leases on them.
pub trait ServiceBackend: Send + Sync + std::fmt::Debug + 'static {
    /// A warm instance for one request, starting one if needed (the wait is bounded).
    fn acquire(&self) -> BoxFuture<'static, Result<Lease, Rejection>>;
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
}

/// The request handler shared by every connection of the ingress listener.
pub struct Ingress {
    directory: Arc<dyn AppDirectory>,
    config: IngressConfig,
    node_header: HeaderValue,
    metrics: IngressMetrics,
}

impl Ingress {
    /// Creates the handler.
    pub fn new(
        directory: Arc<dyn AppDirectory>,
        config: IngressConfig,
        metrics: IngressMetrics,
    ) -> Self {
        let node_header = HeaderValue::from_str(&config.node_name)
            .unwrap_or_else(|_| HeaderValue::from_static("shoal"));
        Self {
            directory,
            config,
            node_header,
            metrics,
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
        let route = self
            .custom_domain_route(host.as_deref(), request.uri().path())
            .unwrap_or_else(|| {
                route::route(host.as_deref(), request.uri().path(), &self.config.domain)
            });
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
        response
            .headers_mut()
            .insert("x-shoal-node", self.node_header.clone());
        self.metrics.observe(
            &app_label,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        response.map(|body| crate::body::with_guard(body, Box::new(in_flight)))
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
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let response = match &target.backend {
            Backend::Static { root, options } => {
                let (parts, _body) = request.into_parts();
                static_files::serve(root, &target.release_id, path, &parts, options).await
            }
            Backend::Service(service) => serve_service(service.as_ref(), path, request, peer).await,
            Backend::Unavailable { reason } => unavailable(reason, Duration::from_secs(5)),
        };
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
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let lease = match service.acquire().await {
        Ok(lease) => lease,
        Err(rejection) => return unavailable(&rejection.reason, rejection.retry_after),
    };
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
    let target = ForwardTarget {
        addr: lease.addr,
        client: peer,
        host,
        timeout: Duration::from_secs(300),
    };
    let response = forward(request, target, lease.on_stream).await;
    let (mut parts, body) = response.into_parts();
    if let Some(waited) = lease.waited {
        if let Ok(value) = HeaderValue::from_str(&waited.as_millis().to_string()) {
            parts.headers.insert("x-shoal-cold-start-ms", value);
        }
    }
    Response::from_parts(parts, body::with_guard(body, lease.guard))
}

fn unavailable(reason: &str, retry_after: Duration) -> Response<Body> {
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
