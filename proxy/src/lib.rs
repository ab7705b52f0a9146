//! `shoal-proxy`: the HTTP ingress every Shoal node runs.
//!
//! A request reads as route -> policy -> choose target -> serve or forward -> rewrite response.
//!
//! Layout:
//! - [`body`]: the boxed body type every handler returns, and small constructors for it.
//! - [`route`]: which app a request is for, from its Host (`<app>.<domain>`) or path (`/apps/<app>/`).
//! - [`static_files`]: serving a static app's release directory (index files, ETag, Range, SPA fallback).
//! - [`rewrite`]: streaming HTML rewriting and header rewriting so an app written for `/` works
//!   under `/apps/<app>/`.
//! - [`forward`]: HTTP/1.1 forwarding to an app instance, streaming, with WebSocket upgrades.
//! - [`metrics`]: the ingress's Prometheus metrics.
//! - [`policy`]: per-app security policy (access, credentials, share links, IP allowlist,
//!   rate limit, CORS, security headers, body limit) and its pure checks.
//! - [`ratelimit`]: per-client rate limits shared by the nodes through gossip.
//! - [`gate`]: runs an app's policy on each request at the ingress.
//! - [`ingress`]: the request handler that ties these together.
//! - [`server`]: the accept loop with graceful shutdown, shared with the admin API.
//! - [`limits`]: request body limits at the ingress: a size cap and an idle timeout.

pub mod body;
pub mod forward;
pub mod gate;
pub mod ingress;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod static_files;
