//! A running node: its data dir, app table, bundle store, listeners and shutdown.
//!
//! A node establishes its cluster identity (creating a cluster, joining one, or loading its
//! data dir), opens its replica of the app table and its bundle store, starts the control plane
//! ([`crate::cluster`]), and serves the ingress and the admin API. The ingress reads a routing
//! snapshot rebuilt whenever the replica changes, so a request never waits on a write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_proxy::gate::Gate;
use shoal_proxy::ingress::{
    AppDirectory, AppTarget, Backend, Ingress, IngressConfig, BODY_IDLE_TIMEOUT,
};
use shoal_proxy::metrics::IngressMetrics;
use shoal_proxy::ratelimit::{sum_published, RateLimiter, PUBLISHED_ENTRIES};
use shoal_proxy::route::prefix_for;
use shoal_proxy::server::{self, ServerLimits};
use shoal_proxy::static_files::StaticOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bundle::{BundleLimits, BundleStore};
use crate::cluster::identity::{join_token_path, Identity};
use crate::cluster::{join, Cluster, ClusterConfig, Environment};
use crate::dataplane::view::RATE_KEY;
use crate::dataplane::{self, DataPlane, ServiceRouter};
use crate::manifest::AppKind;
use crate::raft::state_machine::Replica;
use crate::state::{App, AppTable};
use crate::tokens::{admin_token_path, AdminToken};
use crate::worker::Worker;

/// Which container runtime runs service apps and jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Docker Engine through its API (isolated containers).
    Docker,
    /// Plain processes on the host (no isolation; for machines without Docker).
    Process,
}

/// Everything a node needs to start, from flags.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// Ingress listen address.
    pub http: SocketAddr,
    /// Admin API listen address.
    pub api: SocketAddr,
    /// Gossip (UDP) listen address.
    pub gossip: SocketAddr,
    /// QUIC (UDP) listen address.
    pub quic: SocketAddr,
    /// Address other nodes and URLs use for this node.
    pub advertise: Option<IpAddr>,
    /// Apps answer at `<app>.<domain>`.
    pub domain: String,
    /// This node's name.
    pub node_name: String,
    /// Requested runtime (None: choose).
    pub runtime: Option<RuntimeKind>,
    /// Bundle limits.
    pub bundle_limits: BundleLimits,
    /// Time in-flight requests get at shutdown.
    pub drain_timeout: Duration,
    /// A node that stops answering gossip is marked dead within this bound.
    pub dead_after: Duration,
    /// Runs app instances (false: routes only, `--no-worker`).
    pub worker: bool,
    /// Seed a new cluster or join one (first start only).
    pub membership: Membership,
}

impl NodeConfig {
    /// The host part of URLs printed for users.
    pub fn public_host(&self) -> String {
        match self.advertise {
            Some(ip) => ip.to_string(),
            None if self.http.ip().is_unspecified() => "localhost".to_owned(),
            None => self.http.ip().to_string(),
        }
    }

    /// The URLs an app of `kind` answers on (none for cron jobs, which serve no requests).
    pub fn app_urls(&self, app: &str, kind: AppKind) -> Vec<String> {
        if kind == AppKind::Cron {
            return Vec::new();
        }
        let port = self.http.port();
        let port = if port == 80 {
            String::new()
        } else {
            format!(":{port}")
        };
        vec![
            format!("http://{app}.{}{port}/", self.domain),
            format!("http://{}{port}{}/", self.public_host(), prefix_for(app)),
        ]
    }
}

/// How a node becomes a member on its first start.
#[derive(Clone, Debug)]
pub enum Membership {
    /// `shoal seed`: create a new cluster if the data dir holds none.
    Seed {
        /// How long the join token it creates is accepted.
        join_token_ttl: Duration,
    },
    /// `shoal join`: join through a voter if the data dir holds no identity.
    Join {
        /// A voter's QUIC address.
        seed: String,
        /// The join token.
        token: String,
        /// Join as a voter.
        voter: bool,
    },
}

/// A node's shared state, used by the admin API and the ingress.
pub struct Node {
    /// How it was started.
    pub config: NodeConfig,
    /// The admin token.
    pub token: AdminToken,
    /// Content-addressed bundles.
    pub bundles: Arc<BundleStore>,
    /// This node's copy of the app table (applied by raft on voters, fetched elsewhere).
    pub replica: Arc<Replica>,
    /// Serialises "store the bundle, propose the command" against garbage collection, so a
    /// collection never removes a bundle that a deploy is about to name.
    pub write_lock: tokio::sync::Mutex<()>,
    routes: RwLock<Arc<Routes>>,
    /// Prometheus registry served at `/metrics`.
    pub registry: Registry,
    bundle_bytes: Gauge<i64, AtomicI64>,
    ingress_metrics: IngressMetrics,
    /// Counts requests per client for apps with a rate limit; shared with the other nodes
    /// through gossip.
    limiter: Arc<RateLimiter>,
    gossip_dropped: Family<DropLabels, Counter>,
    /// Runs service apps' instances.
    pub worker: Arc<Worker>,
    /// Places service-app requests on workers and serves those forwarded here.
    pub dataplane: Arc<DataPlane>,
    /// Service routers by (app, release), so each refresh reuses them.
    routers: std::sync::Mutex<BTreeMap<(String, u64), ServiceRouter>>,
    cluster: OnceLock<Arc<Cluster>>,
    /// Digests some table seen by this process named: collectable at once when unnamed.
    once_named: std::sync::Mutex<BTreeSet<String>>,
}

/// Labels of `shoal_gossip_datagrams_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The routing snapshot: app name (and custom domain) to target.
#[derive(Default)]
struct Routes {
    apps: HashMap<String, AppTarget>,
    domains: HashMap<String, String>,
}

/// Unreferenced bundles younger than this are kept: a deploy may be replicating one.
const GARBAGE_GRACE: Duration = Duration::from_secs(600);

impl Node {
    /// Opens the data dir and everything in it. `token` is the admin token (created or stored
    /// by the caller).
    pub fn open(config: NodeConfig, token: AdminToken) -> anyhow::Result<Arc<Self>> {
        let data_dir = &config.data_dir;
        let bundles = BundleStore::open(&data_dir.join("bundles"), config.bundle_limits.clone())
            .context("cannot open the bundle store")?;
        let state_path = data_dir.join("raft").join("state.redb");
        let replica = Replica::open(&state_path).map_err(|error| {
            anyhow::anyhow!(
                "cannot open the app table {}: {error}",
                state_path.display()
            )
        })?;
        let mut registry = Registry::default();
        let ingress_metrics = IngressMetrics::register(&mut registry);
        let bundle_bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "shoal_bundle_bytes_stored",
            "Bytes of bundle blobs stored on this node",
            bundle_bytes.clone(),
        );
        let gossip_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "shoal_gossip_datagrams_dropped",
            "Gossip datagrams dropped: forged (failed authentication), stale (outside the freshness window) or replayed",
            gossip_dropped.clone(),
        );
        let worker = Worker::new(config.node_name.clone(), config.runtime);
        let dataplane = DataPlane::new(
            config.node_name.clone(),
            dataplane::Settings {
                runs_apps: config.worker,
                runs_jobs: true,
                // The RNG only breaks ties between equally loaded workers; nothing replays it.
                rng_seed: u64::from(std::process::id()) ^ unix_ms_now(),
            },
            worker.clone(),
            &mut registry,
        );
        let node = Arc::new(Self {
            worker,
            dataplane,
            routers: std::sync::Mutex::default(),
            config,
            token,
            bundles: Arc::new(bundles),
            replica,
            write_lock: tokio::sync::Mutex::new(()),
            routes: RwLock::new(Arc::default()),
            registry,
            bundle_bytes,
            ingress_metrics,
            limiter: Arc::new(RateLimiter::default()),
            gossip_dropped,
            cluster: OnceLock::new(),
            once_named: std::sync::Mutex::default(),
        });
        node.refresh_routes();
        // A single-node data dir from before the control plane: its bundles are about to be
        // named again by the new cluster (see `cluster::adopt_legacy_apps`).
        let upgrading =
            node.table().apps().next().is_none() && !node.replica.legacy_apps().is_empty();
        if !upgrading {
            node.collect_garbage();
        }
        Ok(node)
    }

    /// The control plane (set once the node has started it).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// The current app table (a cheap snapshot).
    pub fn table(&self) -> Arc<AppTable> {
        self.replica.table()
    }

    /// One app, if deployed.
    pub fn app(&self, name: &str) -> Option<App> {
        self.replica.table().get(name).cloned()
    }

    /// Records that a committed release names `digest` (so it is collected as soon as none does).
    pub fn mark_named(&self, digest: &str) {
        self.once_named
            .lock()
            .expect("once_named lock")
            .insert(digest.to_owned());
    }

    /// Removes stored bundles that no kept release names any more. A bundle no table has named
    /// yet is kept for [`GARBAGE_GRACE`]: a deploy may be replicating it. Blocking.
    pub fn collect_garbage(&self) {
        let referenced = self.table().referenced_digests();
        let mut once_named = self.once_named.lock().expect("once_named lock");
        once_named.extend(referenced.iter().cloned());
        match self.bundles.digests() {
            Ok(stored) => {
                for digest in stored.iter().filter(|d| !referenced.contains(*d)) {
                    let young = std::fs::metadata(self.bundles.blob_path(digest))
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|modified| modified.elapsed().ok())
                        .is_some_and(|age| age < GARBAGE_GRACE);
                    if young && !once_named.contains(digest) {
                        continue;
                    }
                    once_named.remove(digest);
                    if let Err(error) = self.bundles.remove(digest) {
                        warn!(%digest, %error, "could not remove an unused bundle");
                    }
                }
            }
            Err(error) => warn!(%error, "could not list stored bundles"),
        }
        self.bundle_bytes
            .set(i64::try_from(self.bundles.stored_bytes()).unwrap_or(i64::MAX));
    }

    fn refresh_routes(&self) {
        let table = self.table();
        let mut routes = Routes::default();
        let mut services: BTreeMap<String, ServiceRouter> = BTreeMap::new();
        for app in table.apps() {
            let router = self.service_router(app);
            if let Some(router) = &router {
                services.insert(app.name.clone(), router.clone());
            }
            let target = self.target_for(app, router);
            for domain in &app.current().spec.domains {
                routes
                    .domains
                    .insert(domain.to_ascii_lowercase(), app.name.clone());
            }
            routes.apps.insert(app.name.clone(), target);
        }
        for app in self.worker.apps() {
            if !services.contains_key(&app) {
                self.worker.retire(&app);
            }
        }
        self.routers
            .lock()
            .expect("routers lock")
            .retain(|(app, release), _| {
                table
                    .get(app)
                    .is_some_and(|a| a.current().version == *release)
            });
        self.dataplane.set_local(services);
        *self.routes.write().expect("routes lock") = Arc::new(routes);
    }

    /// The router of a service app whose bundle this node holds (one per release: routers
    /// of one release share this node's actor for the app).
    fn service_router(&self, app: &App) -> Option<ServiceRouter> {
        let release = app.current();
        if release.spec.kind != AppKind::Service || !self.bundles.contains(&release.digest) {
            return None;
        }
        let mut routers = self.routers.lock().expect("routers lock");
        let key = (app.name.clone(), release.version);
        let router = routers.entry(key).or_insert_with(|| {
            self.dataplane.router(
                &release.spec,
                release.version,
                self.bundles.release_dir(&release.digest),
                &release.digest,
            )
        });
        Some(router.clone())
    }

    /// The ingress target of `app`; `router` is its service router, if it has one here.
    fn target_for(&self, app: &App, router: Option<ServiceRouter>) -> AppTarget {
        let release = app.current();
        let backend = if !self.bundles.contains(&release.digest) {
            Backend::Unavailable {
                reason: format!(
                    "app `{}` is being copied to this node; try again in a moment",
                    app.name
                ),
            }
        } else {
            match release.spec.kind {
                AppKind::Static => Backend::Static {
                    root: self.bundles.release_dir(&release.digest),
                    options: StaticOptions {
                        spa_fallback: release.spec.static_files.spa_fallback.clone(),
                        asset_max_age: release.spec.static_files.max_age,
                    },
                },
                AppKind::Service => match router {
                    Some(router) => Backend::Service(Arc::new(router)),
                    None => Backend::Unavailable {
                        reason: format!("app `{}` cannot be routed here", app.name),
                    },
                },
                kind => Backend::Unavailable {
                    reason: format!(
                        "app `{}` is a {kind} app; this node cannot run {kind} apps yet",
                        app.name
                    ),
                },
            }
        };
        AppTarget {
            release_id: release.digest.clone(),
            policy: Arc::new(app.policy.clone()),
            backend,
        }
    }

    /// What this node gossips as its load: its data plane's (see [`DataPlane::load`]) and
    /// its host's CPUs and available memory.
    async fn load(&self) -> BTreeMap<String, String> {
        let mut load = self.dataplane.load().await;
        load.insert(
            "cpus".into(),
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .to_string(),
        );
        if let Some(mib) = mem_available_mib() {
            load.insert("mem_available_mib".into(), mib.to_string());
        }
        load
    }

    /// Publishes this node's busiest per-client request counts (the `rate` gossip key) and
    /// hands the rate limiter what the other live nodes published.
    fn share_rates(&self, cluster: &Cluster, load: &mut BTreeMap<String, String>) {
        let now = unix_ms_now();
        // Published even when empty: gossip keeps a key until it is overwritten, and a stale
        // count would go on limiting a client elsewhere.
        let published = self.limiter.publish(now, PUBLISHED_ENTRIES);
        load.insert(RATE_KEY.to_owned(), published);
        let view = cluster.placement_view();
        let me = cluster.identity.node_id;
        let others = view
            .rates
            .iter()
            .filter(|(node, _)| *node != me)
            .map(|(_, text)| text.as_str());
        self.limiter.set_remote(sum_published(others));
    }

    /// Copies gossip's drop counters into the Prometheus family.
    fn export_gossip_stats(&self, seen: &mut [u64; 3]) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let stats = cluster.seal_stats().snapshot();
        let now = [stats.forged, stats.stale, stats.replayed];
        for ((reason, value), previous) in ["forged", "stale", "replayed"]
            .into_iter()
            .zip(now)
            .zip(seen.iter_mut())
        {
            if value > *previous {
                self.gossip_dropped
                    .get_or_create(&DropLabels { reason })
                    .inc_by(value - *previous);
                *previous = value;
            }
        }
    }
}

impl AppDirectory for Node {
    fn lookup(&self, app: &str) -> Option<AppTarget> {
        let routes = Arc::clone(&self.routes.read().expect("routes lock"));
        routes.apps.get(app).cloned()
    }

    fn app_for_domain(&self, host: &str) -> Option<String> {
        let routes = Arc::clone(&self.routes.read().expect("routes lock"));
        routes.domains.get(host).cloned()
    }

    fn is_ready(&self) -> bool {
        self.cluster().is_some_and(|cluster| cluster.is_ready())
    }
}

/// `MemAvailable` from /proc/meminfo, in MiB.
fn mem_available_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Milliseconds since the Unix epoch, for stamping commands at the edge.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs a node until `shutdown` is cancelled; returns once in-flight requests have drained.
pub async fn run(mut config: NodeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(config.data_dir.join("raft"))
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    // Containers bind-mount releases from here, and mounts need absolute paths.
    config.data_dir = std::path::absolute(&config.data_dir)?;
    let http_listener = bind(config.http, "--http").await?;
    let api_listener = bind(config.api, "--api").await?;
    let advertise = advertise_ip(&config).await;
    let (identity, token, fresh_seed) = establish_identity(&config, advertise).await?;
    let open_config = config.clone();
    let node = tokio::task::spawn_blocking(move || Node::open(open_config, token)).await??;
    let cluster_config = ClusterConfig {
        node_name: config.node_name.clone(),
        advertise,
        gossip: config.gossip,
        quic: config.quic,
        http: http_listener.local_addr()?,
        api: api_listener.local_addr()?,
        data_dir: config.data_dir.clone(),
        dead_after: config.dead_after,
    };
    let cluster = Cluster::start(
        Environment::default(),
        cluster_config,
        identity,
        fresh_seed,
        node.replica.clone(),
        node.bundles.clone(),
        node.token.expose().to_owned(),
        node.dataplane.clone(),
        shutdown.child_token(),
    )
    .await?;
    let _ = node.cluster.set(cluster.clone());
    node.dataplane.attach(cluster.clone());
    tokio::spawn(follow_table(
        node.clone(),
        cluster.clone(),
        shutdown.clone(),
    ));
    // Choose the runtime now (building the image if it is missing), without delaying static apps.
    if node.config.worker {
        let worker = node.worker.clone();
        tokio::spawn(async move {
            let _ = worker.runtime().await;
        });
    }
    print_banner(&node, &http_listener, &api_listener, fresh_seed);

    let ingress = Arc::new(Ingress::new(
        node.clone(),
        IngressConfig {
            domain: node.config.domain.clone(),
            node_name: node.config.node_name.clone(),
            body_idle_timeout: BODY_IDLE_TIMEOUT,
        },
        node.ingress_metrics.clone(),
        Arc::new(Gate::new(node.limiter.clone())),
    ));
    let limits = ServerLimits {
        drain_timeout: node.config.drain_timeout,
        ..ServerLimits::default()
    };
    let ingress_server = server::serve(
        http_listener,
        move |request, peer| {
            let ingress = ingress.clone();
            async move { ingress.handle(request, peer).await }
        },
        limits.clone(),
        shutdown.clone(),
    );
    let api_node = node.clone();
    let api_server = server::serve(
        api_listener,
        move |request, _peer| crate::api::handle(api_node.clone(), request),
        limits,
        shutdown.clone(),
    );
    tokio::join!(ingress_server, api_server);
    cluster.shutdown().await;
    node.worker.shutdown(Duration::from_secs(20)).await;
    info!("node stopped");
    Ok(())
}

/// Loads this node's cluster identity, or creates one (seed) or asks for one (join). Returns
/// it with the admin token and whether a new cluster was created.
async fn establish_identity(
    config: &NodeConfig,
    advertise: IpAddr,
) -> anyhow::Result<(Identity, AdminToken, bool)> {
    let data_dir = &config.data_dir;
    if let Some(identity) = Identity::load(data_dir)? {
        let (token, _) = AdminToken::load_or_create(data_dir)
            .with_context(|| format!("cannot read {}", admin_token_path(data_dir).display()))?;
        return Ok((identity, token, false));
    }
    match &config.membership {
        Membership::Seed { join_token_ttl } => {
            let quic = SocketAddr::new(advertise, config.quic.port()).to_string();
            let gossip = SocketAddr::new(advertise, config.gossip.port()).to_string();
            let identity = Identity::new_cluster(
                &config.node_name,
                advertise,
                &quic,
                &gossip,
                unix_ms_now() / 1000,
                join_token_ttl.as_secs(),
                &mut rand::rngs::OsRng,
            )?;
            let (token, _) = AdminToken::load_or_create(data_dir).with_context(|| {
                format!(
                    "cannot read or create {}",
                    admin_token_path(data_dir).display()
                )
            })?;
            identity.save(data_dir)?;
            Ok((identity, token, true))
        }
        Membership::Join { seed, token, voter } => {
            let (identity, admin_token) =
                join::join(seed, token, &config.node_name, *voter, advertise).await?;
            let token = AdminToken::store(data_dir, &admin_token).with_context(|| {
                format!("cannot write {}", admin_token_path(data_dir).display())
            })?;
            identity.save(data_dir)?;
            info!(node_id = identity.node_id, cluster = %identity.cluster_id, "joined the cluster");
            Ok((identity, token, false))
        }
    }
}

/// The IP other nodes reach this one at: `--advertise`, else the IP the QUIC socket is bound
/// to, else the source address the kernel would use towards the seed (join) or the default
/// route (seed), else loopback.
async fn advertise_ip(config: &NodeConfig) -> IpAddr {
    if let Some(ip) = config.advertise {
        return ip;
    }
    if !config.quic.ip().is_unspecified() {
        return config.quic.ip();
    }
    let target = match &config.membership {
        Membership::Join { seed, .. } => seed.clone(),
        Membership::Seed { .. } => "192.0.2.1:9".to_owned(),
    };
    let probe = async {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
        socket.connect(&target).await.ok()?;
        socket.local_addr().ok().map(|addr| addr.ip())
    };
    match probe.await {
        Some(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::from([127, 0, 0, 1]),
    }
}

/// Rebuilds routing (and collects garbage) whenever the table changes or a bundle arrives,
/// and once a second hands gossip this node's load and copies gossip's counters to metrics.
async fn follow_table(node: Arc<Node>, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut changes = node.replica.subscribe();
    let mut seen = [0u64; 3];
    // Load steers placement, so it is published every gossip round or so.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let table_changed = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = changes.changed() => true,
            () = cluster.bundle_arrived() => false,
            _ = tick.tick() => {
                node.export_gossip_stats(&mut seen);
                let mut load = node.load().await;
                node.share_rates(&cluster, &mut load);
                cluster.set_load(load);
                continue;
            }
        };
        let refresh_node = node.clone();
        let _ = tokio::task::spawn_blocking(move || {
            refresh_node.refresh_routes();
            if table_changed {
                refresh_node.collect_garbage();
            }
        })
        .await;
    }
}

async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({flag}): is another shoal node running? choose another address with {flag}")
    })
}

/// Writes a line to stdout, ignoring a closed stdout (println! would panic).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn print_banner(node: &Node, http: &TcpListener, api: &TcpListener, new_cluster: bool) {
    let mut out = std::io::stdout().lock();
    let http = http
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let api = api
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let data_dir = node.config.data_dir.display();
    let Some(cluster) = node.cluster() else {
        return;
    };
    let identity = &cluster.identity;
    let role = if identity.voter { "voter" } else { "worker" };
    say!(
        out,
        "shoal node `{}` is up: node {} ({role}) of cluster {}",
        node.config.node_name,
        identity.node_id,
        identity.cluster_id
    );
    say!(
        out,
        "  ingress   http://{http}   (apps at http://<app>.{}:{}/ and /apps/<app>/)",
        node.config.domain,
        node.config.http.port()
    );
    say!(out, "  admin API http://{api}");
    say!(out, "  data dir  {data_dir}");
    if new_cluster {
        say!(
            out,
            "  admin token (shown once, kept in {}):",
            admin_token_path(&node.config.data_dir).display()
        );
        say!(out, "    {}", node.token.expose());
    } else {
        say!(
            out,
            "  admin token in {}",
            admin_token_path(&node.config.data_dir).display()
        );
    }
    if let Some(token) = &identity.join_token {
        say!(
            out,
            "  join with: shoal join --seed {} --token {}",
            token.seed,
            token.encode()
        );
        say!(
            out,
            "             (add --voter for a standby orchestrator; the token is kept in {})",
            join_token_path(&node.config.data_dir).display()
        );
    }
    let apps = node.table();
    for app in apps.apps() {
        say!(
            out,
            "  app {:<20} {}",
            app.name,
            node.config.app_urls(&app.name, app.kind()).join("  ")
        );
    }
}
