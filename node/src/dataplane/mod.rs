//! The data plane: where a service app's request runs (DESIGN §4, steps 4 to 6).
//!
//! Every node's ingress hands service-app requests to the app's [`ServiceRouter`]. It asks
//! [`shoal_mesh::placement::place`] for a worker, from the gossip [`PlacementView`] plus what
//! this node itself has in flight (gossip lags by a round; this node's own requests do not).
//! The local worker takes the request with no network hop; another worker gets it as one
//! HTTP/1.1 exchange on a QUIC stream of kind [`KIND_FORWARD`] ([`server`]), which runs it
//! on that node's own instances and never places it again, so a request hops at most once.
//!
//! Retries are only where they are safe: a worker that could not be reached was sent nothing,
//! so the request goes to the next pick; once sent, only a request without a body and with an
//! idempotent method is sent again, and never an upgrade. A worker that is unreachable is left
//! out of this node's picks for [`SUSPECT_FOR`], until gossip has caught up.

pub mod jobs;
pub mod server;
pub mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{Method, Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use shoal_mesh::placement::{place, Decision, Request as Placement, Warm, WorkerLoad};
use shoal_mesh::quic::write_frame;
use shoal_proxy::body::{self, Body};
use shoal_proxy::forward::{bad_gateway, forward_on, ForwardError, ForwardTarget};
use shoal_proxy::ingress::{
    serve_lease, unavailable, Client, ServiceBackend, APP_RESPONSE_TIMEOUT,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::cluster::Cluster;
use crate::manifest::AppSpec;
use crate::worker::{AppActor, Worker};
pub use view::PlacementView;
use view::WORKER_KEY;

/// QUIC stream kind of a forwarded request: a JSON [`ForwardHeader`] frame, then HTTP/1.1.
pub const KIND_FORWARD: u8 = 20;
/// How long an unreachable worker is left out of this node's picks.
pub const SUSPECT_FOR: Duration = Duration::from_secs(3);
/// Most workers one request is offered to.
const ATTEMPTS: usize = 3;
/// Extra wait for a forwarded response beyond the app's own timeout: the worker may first
/// wait for the release to reach it and for an instance to start.
const HOP_SLACK: Duration = Duration::from_secs(60);

/// What the ingress node tells the worker about a forwarded request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardHeader {
    /// The app.
    pub app: String,
    /// The release the ingress placed (the worker waits until it has it).
    pub release: u64,
    /// The client's address, for `X-Forwarded-For`.
    pub client: SocketAddr,
    /// The Host the client asked for.
    pub host: Option<String>,
}

/// Labels of `shoal_forwarded_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    /// `local` (no hop), `remote` (sent to another node), `retried` (sent again after a
    /// failure), `failed` (no worker took it).
    outcome: &'static str,
}

/// How a node's data plane is set up.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Runs app instances (false for `--no-worker`).
    pub runs_apps: bool,
    /// Takes cron job runs (false only where something else does: the simulator's stub
    /// workers). Without it, job streams are ignored and no orphaned run is swept.
    pub runs_jobs: bool,
    /// Seeds the RNG that breaks ties between equally loaded workers.
    pub rng_seed: u64,
}

/// This node's side of the data plane, shared by every app's router.
pub struct DataPlane {
    node_name: String,
    runs_apps: bool,
    runs_jobs: bool,
    worker: Arc<Worker>,
    cluster: OnceLock<Arc<Cluster>>,
    rng: Mutex<StdRng>,
    /// Workers that could not be reached, until when they are left out.
    suspects: Mutex<BTreeMap<u64, Instant>>,
    /// Requests this node has in flight, by (worker, app).
    outstanding: Arc<Mutex<BTreeMap<(u64, String), u64>>>,
    /// The service apps this node can run, by name (for forwarded requests).
    local: watch::Sender<Arc<BTreeMap<String, ServiceRouter>>>,
    routed: Family<RouteLabels, Counter>,
    /// Fences seen and runs running, per cron job.
    jobs: Mutex<jobs::JobBook>,
    /// This data plane, for tasks that outlive a stream.
    this: std::sync::Weak<DataPlane>,
}

impl DataPlane {
    /// The data plane of node `node_name`.
    pub fn new(
        node_name: String,
        settings: Settings,
        worker: Arc<Worker>,
        registry: &mut Registry,
    ) -> Arc<Self> {
        let routed = Family::<RouteLabels, Counter>::default();
        registry.register(
            "shoal_forwarded_requests",
            "Service-app requests by where they went: local (no hop), remote (another node), retried, failed",
            routed.clone(),
        );
        Arc::new_cyclic(|this| Self {
            node_name,
            runs_apps: settings.runs_apps,
            runs_jobs: settings.runs_jobs,
            worker,
            cluster: OnceLock::new(),
            rng: Mutex::new(StdRng::seed_from_u64(settings.rng_seed)),
            suspects: Mutex::default(),
            outstanding: Arc::default(),
            local: watch::Sender::new(Arc::default()),
            routed,
            jobs: Mutex::default(),
            this: this.clone(),
        })
    }

    /// Connects the data plane to the control plane, once it runs.
    pub fn attach(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
        if let (true, Some(this)) = (self.runs_apps && self.runs_jobs, self.this.upgrade()) {
            tokio::spawn(this.sweep_orphan_runs());
        }
    }

    /// Whether this node runs app instances.
    pub fn runs_apps(&self) -> bool {
        self.runs_apps
    }

    /// The router of a service app's current release (`release_dir` holds its unpacked
    /// bundle). When this node already runs the app, its instances move to the release now.
    pub fn router(
        self: &Arc<Self>,
        spec: &AppSpec,
        release: u64,
        release_dir: PathBuf,
        digest: &str,
    ) -> ServiceRouter {
        let router = ServiceRouter {
            inner: Arc::new(RouterInner {
                spec: spec.clone(),
                release,
                release_dir,
                digest: digest.to_owned(),
                actor: OnceLock::new(),
                plane: self.clone(),
            }),
        };
        if self.runs_apps
            && (self.worker.apps().contains(&spec.name) || self.is_cold_pick(&router.inner))
        {
            // Runs it already (its instances move to this release), or is the worker every
            // node would pick to start it: the container is created now, not on the first
            // request.
            router.actor();
        }
        router
    }

    /// Whether this node is the worker the cold rule picks for the router's app.
    fn is_cold_pick(&self, router: &RouterInner) -> bool {
        let Some(cluster) = self.cluster.get() else {
            return false;
        };
        let decision = self.pick(cluster, router, &[]);
        matches!(decision, Decision::Spawn { node } if node == cluster.identity.node_id)
    }

    /// Publishes the service apps this node can run now (called on every table change).
    pub fn set_local(&self, routers: BTreeMap<String, ServiceRouter>) {
        self.local.send_replace(Arc::new(routers));
    }

    /// What this node gossips about its apps: whether it runs apps ([`WORKER_KEY`]), the
    /// requests its instances are serving, its instances, and `warm:<app>` =
    /// `"<release>,<in_flight>,<running instances>"` for every app with an instance of its
    /// newest release that is not stopped (a paused or starting one is worth routing to).
    pub async fn load(&self) -> BTreeMap<String, String> {
        let mut load = BTreeMap::new();
        let mut instances = 0;
        let mut in_flight_total: u64 = 0;
        for app in self.worker.apps() {
            let views = self.worker.status(&app).await;
            instances += views.len();
            let warm: Vec<_> = views
                .iter()
                .filter(|v| {
                    !matches!(
                        v.state.as_str(),
                        "stopped" | "stopping" | "failed" | "removing"
                    )
                })
                .collect();
            let in_flight: u64 = warm.iter().map(|v| u64::from(v.in_flight)).sum();
            in_flight_total += in_flight;
            if let Some(newest) = warm.iter().map(|v| v.release).max() {
                // Only running instances add to the node's share: paused and starting ones
                // cannot serve yet (0 counts as one, see `shoal_mesh::placement::WarmValue`).
                let running = warm.iter().filter(|v| v.state == "running").count();
                load.insert(
                    format!("warm:{app}"),
                    format!("{newest},{in_flight},{running}"),
                );
            }
        }
        let runs_apps = self.runs_apps && self.worker.runtime_failed().is_none();
        load.insert(WORKER_KEY.into(), if runs_apps { "1" } else { "0" }.into());
        load.insert("instances".into(), instances.to_string());
        load.insert("in_flight".into(), in_flight_total.to_string());
        load
    }

    fn count(&self, outcome: &'static str) {
        self.routed.get_or_create(&RouteLabels { outcome }).inc();
    }

    /// Picks the worker for one request of `router`'s app, leaving out `excluded`.
    fn pick(&self, cluster: &Cluster, router: &RouterInner, excluded: &[u64]) -> Decision {
        let view = cluster.placement_view();
        let now = Instant::now();
        let mut suspects = self.suspects.lock().expect("suspects lock");
        suspects.retain(|_, until| *until > now);
        let mut workers: Vec<WorkerLoad> = view.workers.clone();
        for worker in &mut workers {
            if excluded.contains(&worker.node) || suspects.contains_key(&worker.node) {
                worker.live = false;
            }
        }
        drop(suspects);
        // This node knows itself better than gossip does (its keys may not be out yet).
        let me = cluster.identity.node_id;
        match workers.iter_mut().find(|w| w.node == me) {
            Some(entry) => {
                entry.live = true;
                entry.runs_apps = self.serves_here();
            }
            None if self.serves_here() => {
                workers.push(WorkerLoad {
                    node: me,
                    live: true,
                    runs_apps: true,
                    in_flight: 0,
                    instances: 0,
                    cpus: 0,
                    mem_available_mib: 0,
                });
                workers.sort_by_key(|w| w.node);
            }
            None => {}
        }
        let warm = with_outstanding(
            view.warm
                .get(&router.spec.name)
                .map_or(&[][..], Vec::as_slice),
            &self.outstanding.lock().expect("outstanding lock"),
            &router.spec.name,
            router.release,
        );
        let request = Placement {
            app: &router.spec.name,
            release: router.release,
            concurrency_target: router.spec.scale.concurrency_target,
            max_holders: router.spec.scale.max,
        };
        let mut rng = self.rng.lock().expect("rng lock");
        let decision = place(&request, &workers, &warm, &mut *rng);
        if let Decision::Spawn { .. } = decision {
            if crate::planted::enabled(crate::planted::Bug::ColdSpawnAnywhere) {
                let eligible: Vec<u64> = workers
                    .iter()
                    .filter(|w| w.live && w.runs_apps)
                    .map(|w| w.node)
                    .collect();
                if !eligible.is_empty() {
                    let node = eligible[rand::Rng::gen_range(&mut *rng, 0..eligible.len())];
                    return Decision::Spawn { node };
                }
            }
        }
        decision
    }

    async fn route(
        &self,
        router: &ServiceRouter,
        request: Request<Body>,
        client: Client,
    ) -> Response<Body> {
        let Some(cluster) = self.cluster.get() else {
            return self.serve_here_or_refuse(router, request, client).await;
        };
        let retriable = is_retriable(&request);
        let (parts, body) = request.into_parts();
        let mut first = Some((parts.clone(), body));
        let mut excluded: Vec<u64> = Vec::new();
        for attempt in 0..ATTEMPTS {
            let node = match self.pick(cluster, &router.inner, &excluded) {
                Decision::Warm { node }
                | Decision::Spawn { node }
                | Decision::ScaleOut { node } => node,
                Decision::NoWorker => break,
            };
            let (parts, body) = match first.take() {
                Some(first) => first,
                None if retriable => (clone_parts(&parts), body::empty()),
                None => break,
            };
            if attempt > 0 {
                self.count("retried");
            }
            let request = Request::from_parts(parts, body);
            if node == cluster.identity.node_id {
                self.count("local");
                return router.serve_here(request, &client).await;
            }
            match self
                .forward_to(cluster, node, router, request, &client)
                .await
            {
                Ok(response) => {
                    self.count("remote");
                    return response;
                }
                Err(Hop { sent, reason }) => {
                    debug!(node, app = %router.inner.spec.name, %reason, sent, "forwarding failed");
                    self.suspects
                        .lock()
                        .expect("suspects lock")
                        .insert(node, Instant::now() + SUSPECT_FOR);
                    excluded.push(node);
                    if sent && !retriable {
                        self.count("failed");
                        return bad_gateway("the worker running the app went away");
                    }
                }
            }
        }
        self.count("failed");
        unavailable(
            &format!(
                "no worker can run app `{}` right now; try again in a moment",
                router.inner.spec.name
            ),
            Duration::from_secs(2),
        )
    }

    /// Whether this node can run the app itself: a worker whose runtime did not fail.
    fn serves_here(&self) -> bool {
        self.runs_apps && self.worker.runtime_failed().is_none()
    }

    /// Before the control plane runs: this node's own instances, if it has any.
    async fn serve_here_or_refuse(
        &self,
        router: &ServiceRouter,
        request: Request<Body>,
        client: Client,
    ) -> Response<Body> {
        if self.runs_apps {
            router.serve_here(request, &client).await
        } else {
            unavailable(
                "this node is still joining the cluster",
                Duration::from_secs(1),
            )
        }
    }

    async fn forward_to(
        &self,
        cluster: &Cluster,
        node: u64,
        router: &ServiceRouter,
        request: Request<Body>,
        client: &Client,
    ) -> Result<Response<Body>, Hop> {
        let not_sent = |reason: String| Hop {
            sent: false,
            reason,
        };
        let addr = *cluster
            .placement_view()
            .quic
            .get(&node)
            .ok_or_else(|| not_sent("no QUIC address in gossip".into()))?;
        let (mut send, recv) = cluster
            .quic()
            .open(node, addr, KIND_FORWARD)
            .await
            .map_err(|error| not_sent(error.to_string()))?;
        let header = ForwardHeader {
            app: router.inner.spec.name.clone(),
            release: router.inner.release,
            client: client.addr,
            host: client.host.clone(),
        };
        let header = serde_json::to_vec(&header).expect("a header serializes");
        write_frame(&mut send, &header)
            .await
            .map_err(|error| not_sent(error.to_string()))?;
        let guard = Outstanding::enter(&self.outstanding, node, &router.inner.spec.name);
        let target = ForwardTarget {
            client: client.addr,
            host: client.host.clone(),
            timeout: APP_RESPONSE_TIMEOUT + HOP_SLACK,
            from_peer: true,
        };
        match forward_on(tokio::io::join(recv, send), request, &target, None).await {
            Ok(response) => Ok(response.map(|body| body::with_guard(body, Box::new(guard)))),
            Err(ForwardError::Timeout) => Ok(shoal_proxy::forward::gateway_timeout()),
            Err(ForwardError::Failed(error)) => Err(Hop {
                sent: true,
                reason: error.to_string(),
            }),
        }
    }
}

/// Reads one JSON frame of at most `max` bytes.
async fn read_json<T: serde::de::DeserializeOwned>(
    recv: &mut shoal_mesh::link::LinkRecv,
    max: usize,
) -> Result<T, String> {
    let frame = shoal_mesh::quic::read_frame(recv, max)
        .await
        .map_err(|error| error.to_string())?;
    serde_json::from_slice(&frame).map_err(|error| error.to_string())
}

/// Why a hop gave no response: `sent` when the worker may have received the request.
struct Hop {
    sent: bool,
    reason: String,
}

/// The warm entries of `app` for placement: gossip's, each raised to at least what this node
/// itself has in flight there, plus an entry for every worker this node sent requests of the
/// app that gossip does not show yet (the worker is starting it). The extra entries are what
/// keep a cold app on one worker while gossip catches up: without them this node's own
/// queued requests would make that worker look busy and the cold rule would pick another.
pub fn with_outstanding(
    gossip: &[Warm],
    outstanding: &BTreeMap<(u64, String), u64>,
    app: &str,
    release: u64,
) -> Vec<Warm> {
    let mut warm: Vec<Warm> = gossip.to_vec();
    for ((node, name), &count) in outstanding {
        if name != app || count == 0 {
            continue;
        }
        match warm
            .iter_mut()
            .find(|w| w.node == *node && w.release == release)
        {
            Some(entry) => entry.in_flight = entry.in_flight.max(count),
            None => warm.push(Warm {
                node: *node,
                release,
                in_flight: count,
            }),
        }
    }
    warm
}

/// Counts one forwarded request as in flight on (node, app) until dropped.
struct Outstanding {
    map: Arc<Mutex<BTreeMap<(u64, String), u64>>>,
    key: (u64, String),
}

impl Outstanding {
    fn enter(map: &Arc<Mutex<BTreeMap<(u64, String), u64>>>, node: u64, app: &str) -> Self {
        let key = (node, app.to_owned());
        *map.lock()
            .expect("outstanding lock")
            .entry(key.clone())
            .or_default() += 1;
        Self {
            map: map.clone(),
            key,
        }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("outstanding lock");
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// A request that can be sent again after a failure: an idempotent method, no body, no
/// upgrade.
fn is_retriable<B: hyper::body::Body>(request: &Request<B>) -> bool {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let headers = request.headers();
    let bodiless = request.body().is_end_stream()
        || (headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            && !headers.contains_key(http::header::TRANSFER_ENCODING));
    idempotent && bodiless && !headers.contains_key(http::header::UPGRADE)
}

/// A copy of a request head to send again (without the connection's upgrade hook).
fn clone_parts(parts: &Parts) -> Parts {
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version)
        .body(())
        .expect("parts of a valid request");
    *request.headers_mut() = parts.headers.clone();
    request.into_parts().0
}

/// Serves one service app's requests from any node: the ingress's backend for the app.
#[derive(Clone)]
pub struct ServiceRouter {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    spec: AppSpec,
    release: u64,
    release_dir: PathBuf,
    digest: String,
    /// This node's actor for the app, started on first local use.
    actor: OnceLock<AppActor>,
    plane: Arc<DataPlane>,
}

impl std::fmt::Debug for ServiceRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServiceRouter({} r{})",
            self.inner.spec.name, self.inner.release
        )
    }
}

impl ServiceRouter {
    /// The release this router places.
    pub fn release(&self) -> u64 {
        self.inner.release
    }

    fn actor(&self) -> &AppActor {
        self.inner.actor.get_or_init(|| {
            self.inner.plane.worker.backend(
                &self.inner.spec,
                self.inner.release,
                self.inner.release_dir.clone(),
                &self.inner.digest,
            )
        })
    }

    /// Runs the request on this node's instances (starting one if needed).
    pub async fn serve_here<B>(&self, request: Request<B>, client: &Client) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<shoal_proxy::body::BoxError>,
    {
        let lease = self.actor().acquire().await;
        serve_lease(lease, request, client).await
    }
}

impl ServiceBackend for ServiceRouter {
    fn serve(&self, request: Request<Body>, client: Client) -> BoxFuture<'static, Response<Body>> {
        let router = self.clone();
        Box::pin(async move { router.inner.plane.route(&router, request, client).await })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
