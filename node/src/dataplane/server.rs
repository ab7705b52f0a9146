//! The worker side of a forwarded request: one [`super::KIND_FORWARD`] stream from another
//! node's ingress, served on this node's own instances.
//!
//! The ingress placed the request on a release it knows; this node may not have that release
//! yet (its table or the bundle is a moment behind), so it waits for it, bounded by
//! [`RELEASE_WAIT`], and then runs the request locally: never placed again, so a request hops
//! at most once. The response names this node in `x-shoal-node`.

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderValue, Response};
use hyper::service::service_fn;
use shoal_mesh::link::{LinkRecv, LinkSend};
use shoal_mesh::quic::StreamHandler;
use shoal_mesh::stream_http::serve_one;
use shoal_proxy::body::Body;
use shoal_proxy::ingress::{text, unavailable, Client, NODE_HEADER};
use tracing::debug;

use super::{DataPlane, ForwardHeader, ServiceRouter, KIND_FORWARD};

/// Longest wait for the release the ingress placed to reach this node.
pub const RELEASE_WAIT: Duration = Duration::from_secs(15);
/// Largest forward header frame.
const MAX_HEADER: usize = 16 << 10;

#[async_trait::async_trait]
impl StreamHandler for DataPlane {
    async fn handle(&self, peer: u64, kind: u8, send: LinkSend, mut recv: LinkRecv) {
        if kind == super::jobs::KIND_JOB {
            if let (true, Some(this)) = (self.runs_jobs, self.this.upgrade()) {
                this.serve_job(peer, send, recv).await;
            }
            return;
        }
        if kind != KIND_FORWARD {
            debug!(peer, kind, "unknown data-plane stream kind");
            return;
        }
        let header: ForwardHeader = match super::read_json(&mut recv, MAX_HEADER).await {
            Ok(header) => header,
            Err(error) => {
                debug!(peer, %error, "unreadable forward header");
                return;
            }
        };
        let answer = self.router_for(&header).await;
        let node = HeaderValue::from_str(&self.node_name).ok();
        let client = Client {
            addr: header.client,
            host: header.host,
        };
        let service = service_fn(move |request| {
            let answer = answer.clone();
            let client = client.clone();
            let node = node.clone();
            async move {
                let mut response = match answer {
                    Ok(router) => router.serve_here(request, &client).await,
                    Err(refusal) => refusal(),
                };
                if let Some(node) = node {
                    response.headers_mut().insert(NODE_HEADER, node);
                }
                Ok::<_, Infallible>(response)
            }
        });
        if let Err(error) = serve_one(tokio::io::join(recv, send), service).await {
            debug!(peer, %error, "forwarded request ended early");
        }
    }
}

/// Builds the answer when the app cannot run here.
type Refusal = fn() -> Response<Body>;

impl DataPlane {
    /// This node's router for the header's app at (at least) its release, waiting for it.
    async fn router_for(&self, header: &ForwardHeader) -> Result<ServiceRouter, Refusal> {
        if !self.runs_apps {
            return Err(|| {
                unavailable(
                    "this node runs no apps (--no-worker)",
                    Duration::from_secs(1),
                )
            });
        }
        let mut local = self.local.subscribe();
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        loop {
            let found = local
                .borrow_and_update()
                .get(&header.app)
                .filter(|router| router.release() >= header.release)
                .cloned();
            if let Some(router) = found {
                return Ok(router);
            }
            match tokio::time::timeout_at(deadline, local.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(|| {
                        text(
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            "the app's release has not reached the worker yet; try again",
                        )
                    })
                }
            }
        }
    }
}
