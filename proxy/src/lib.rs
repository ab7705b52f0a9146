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
//! - [`ingress`]: the request handler that ties these together.
//! - [`server`]: the accept loop with graceful shutdown, shared with the admin API.

pub mod body;
pub mod forward;
pub mod ingress;
pub mod metrics;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod static_files;
