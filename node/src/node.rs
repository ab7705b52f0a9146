//! A running node: its data dir, app table, bundle store, listeners and shutdown.
//!
//! Today a node is a single-node cluster: it applies commands to its own table. The ingress
//! reads a routing snapshot rebuilt after every change, so a request never waits on a write.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_proxy::ingress::{AppDirectory, AppTarget, Backend, Ingress, IngressConfig};
use shoal_proxy::metrics::IngressMetrics;
use shoal_proxy::route::prefix_for;
use shoal_proxy::server::{self, ServerLimits};
use shoal_proxy::static_files::StaticOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bundle::{BundleLimits, BundleStore};
use crate::manifest::AppKind;
use crate::state::{App, AppTable, Applied, Command};
use crate::store::StateStore;
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

/// A node's shared state, used by the admin API and the ingress.
pub struct Node {
    /// How it was started.
    pub config: NodeConfig,
    /// The admin token.
    pub token: AdminToken,
    /// Content-addressed bundles.
    pub bundles: BundleStore,
    /// The app table and its storage; writes hold this lock.
    state: Mutex<StateStore>,
    /// Serialises "store the bundle, apply the command, collect garbage" so a collection never
    /// removes a bundle that a deploy is about to name.
    pub write_lock: tokio::sync::Mutex<()>,
    routes: RwLock<Arc<Routes>>,
    /// Prometheus registry served at `/metrics`.
    pub registry: Registry,
    bundle_bytes: Gauge<i64, AtomicI64>,
    ingress_metrics: IngressMetrics,
    /// Runs service apps' instances.
    pub worker: Arc<Worker>,
}

/// The routing snapshot: app name (and custom domain) to target.
#[derive(Default)]
struct Routes {
    apps: HashMap<String, AppTarget>,
    domains: HashMap<String, String>,
}

impl Node {
    /// Opens the data dir and everything in it.
    pub fn open(mut config: NodeConfig) -> anyhow::Result<(Arc<Self>, bool)> {
        std::fs::create_dir_all(config.data_dir.join("raft"))
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        // Containers bind-mount releases from here, and mounts need absolute paths.
        config.data_dir = std::path::absolute(&config.data_dir)?;
        let data_dir = &config.data_dir;
        let (token, token_created) = AdminToken::load_or_create(data_dir).with_context(|| {
            format!(
                "cannot read or create {}",
                admin_token_path(data_dir).display()
            )
        })?;
        let bundles = BundleStore::open(&data_dir.join("bundles"), config.bundle_limits.clone())
            .context("cannot open the bundle store")?;
        let state_path = data_dir.join("raft").join("state.redb");
        let state = StateStore::open(&state_path)
            .with_context(|| format!("cannot open the app table {}", state_path.display()))?;
        let mut registry = Registry::default();
        let ingress_metrics = IngressMetrics::register(&mut registry);
        let bundle_bytes = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "shoal_bundle_bytes_stored",
            "Bytes of bundle blobs stored on this node",
            bundle_bytes.clone(),
        );
        let worker = Worker::new(config.node_name.clone(), config.runtime);
        let node = Arc::new(Self {
            worker,
            config,
            token,
            bundles,
            state: Mutex::new(state),
            write_lock: tokio::sync::Mutex::new(()),
            routes: RwLock::new(Arc::default()),
            registry,
            bundle_bytes,
            ingress_metrics,
        });
        node.refresh_routes();
        node.collect_garbage();
        Ok((node, token_created))
    }

    /// A copy of the current app table.
    pub fn table(&self) -> AppTable {
        self.state.lock().expect("state lock").table().clone()
    }

    /// One app, if deployed.
    pub fn app(&self, name: &str) -> Option<App> {
        self.state
            .lock()
            .expect("state lock")
            .table()
            .get(name)
            .cloned()
    }

    /// Applies a command, persists it, and updates routing. Blocking (a redb commit): call it
    /// from `spawn_blocking`.
    pub fn apply(&self, command: &Command) -> anyhow::Result<Applied> {
        let applied = self.state.lock().expect("state lock").apply(command)?;
        self.refresh_routes();
        Ok(applied)
    }

    /// Removes stored bundles that no kept release names.
    pub fn collect_garbage(&self) {
        let referenced = self.table().referenced_digests();
        match self.bundles.digests() {
            Ok(stored) => {
                for digest in stored.iter().filter(|d| !referenced.contains(*d)) {
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
        for app in table.apps() {
            let target = self.target_for(app);
            for domain in &app.current().spec.domains {
                routes
                    .domains
                    .insert(domain.to_ascii_lowercase(), app.name.clone());
            }
            routes.apps.insert(app.name.clone(), target);
        }
        let services: Vec<String> = routes
            .apps
            .iter()
            .filter(|(_, target)| matches!(target.backend, Backend::Service(_)))
            .map(|(name, _)| name.clone())
            .collect();
        for app in self.worker.apps() {
            if !services.contains(&app) {
                self.worker.retire(&app);
            }
        }
        *self.routes.write().expect("routes lock") = Arc::new(routes);
    }

    fn target_for(&self, app: &App) -> AppTarget {
        let release = app.current();
        let backend = match release.spec.kind {
            AppKind::Static => Backend::Static {
                root: self.bundles.release_dir(&release.digest),
                options: StaticOptions {
                    spa_fallback: release.spec.static_files.spa_fallback.clone(),
                    asset_max_age: release.spec.static_files.max_age,
                },
            },
            AppKind::Service => Backend::Service(Arc::new(self.worker.backend(
                &release.spec,
                release.version,
                self.bundles.release_dir(&release.digest),
                &release.digest,
            ))),
            kind => Backend::Unavailable {
                reason: format!(
                    "app `{}` is a {kind} app; this node cannot run {kind} apps yet",
                    app.name
                ),
            },
        };
        AppTarget {
            release_id: release.digest.clone(),
            backend,
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
        true
    }
}

/// Milliseconds since the Unix epoch, for stamping commands at the edge.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs a node until `shutdown` is cancelled; returns once in-flight requests have drained.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http_listener = bind(config.http, "--http").await?;
    let api_listener = bind(config.api, "--api").await?;
    let (node, token_created) = tokio::task::spawn_blocking(move || Node::open(config)).await??;
    // Choose the runtime now (building the image if it is missing), without delaying static apps.
    let worker = node.worker.clone();
    tokio::spawn(async move {
        let _ = worker.runtime().await;
    });
    print_banner(&node, &http_listener, &api_listener, token_created);

    let ingress = Arc::new(Ingress::new(
        node.clone(),
        IngressConfig {
            domain: node.config.domain.clone(),
            node_name: node.config.node_name.clone(),
        },
        node.ingress_metrics.clone(),
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
    node.worker.shutdown(Duration::from_secs(20)).await;
    info!("node stopped");
    Ok(())
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

fn print_banner(node: &Node, http: &TcpListener, api: &TcpListener, token_created: bool) {
    let mut out = std::io::stdout().lock();
    let http = http
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let api = api
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let data_dir = node.config.data_dir.display();
    say!(
        out,
        "shoal node `{}` is up: a single-node cluster",
        node.config.node_name
    );
    say!(
        out,
        "  ingress   http://{http}   (apps at http://<app>.{}:{}/ and /apps/<app>/)",
        node.config.domain,
        node.config.http.port()
    );
    say!(out, "  admin API http://{api}");
    say!(out, "  data dir  {data_dir}");
    if token_created {
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
