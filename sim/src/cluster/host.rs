//! One simulated node: the real control plane ([`Cluster`]: raft, gossip, orchestrator duties,
//! the cron duty) on its own paused tokio runtime, with a data dir that outlives crashes.
//!
//! The runtime is the node's process: [`Host::crash`] drops it, and with it every task the node
//! spawned; [`Host::start`] builds a new one on the same data dir. The harness steps each
//! runtime by 1 ms of virtual time with [`Host::step`].
//!
//! Each node also runs the real data plane: a [`Worker`] on the simulator's in-memory
//! [`SimRuntime`], and a [`DataPlane`] that places requests, forwards them over the simulated
//! links and serves those forwarded to it. What `node::follow_table` does on a real node, a
//! small loop does here: the table's service apps become routers (no bundles: the simulated
//! instances never read one), and every 250 ms the data plane's load goes out through gossip,
//! with fixed host facts.
//!
//! Jobs run on no runtime: a [`StubWorker`] takes the jobs the orchestrator dispatches, records
//! them, and reports each run started and then succeeded through raft, as a worker would.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use prometheus_client::registry::Registry;
use shoal::bundle::{BundleLimits, BundleStore};
use shoal::cluster::identity::Identity;
use shoal::cluster::{Cluster, ClusterConfig, Environment, RaftTiming};
use shoal::dataplane::jobs::{JobBook, JobMessage, KIND_JOB};
use shoal::dataplane::{DataPlane, ServiceRouter, Settings, KIND_FORWARD};
use shoal::manifest::AppKind;
use shoal::raft::state_machine::Replica;
use shoal::runs::{RunEnd, RunState};
use shoal::state::Command;
use shoal::worker::Worker;
use shoal_mesh::link::{LinkRecv, LinkSend, StreamHandler};
use shoal_mesh::quic::{read_frame, write_frame};
use shoal_proxy::ingress::{Client, ServiceBackend};
use tokio_util::sync::CancellationToken;

use super::disk::SimDisk;
use super::gossip_net::GossipNet;
use super::link::{OpenHook, SimLink, Switchboard};
use super::net::Net;
use super::runtime::{SimRuntime, INSTANCE_HEADER};
use crate::trace::{Event, NodeId};

/// The Unix time (ms) at which every simulation starts: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// How long a stub worker's run takes to start, and then to succeed.
const RUN_START: Duration = Duration::from_millis(200);
const RUN_LENGTH: Duration = Duration::from_millis(300);

/// What every node of one run shares: the network, and where events are recorded.
#[derive(Clone)]
pub struct Shared {
    /// The simulated network.
    pub net: Net,
    /// Gossip over it.
    pub gossip: GossipNet,
    /// Streams over it.
    pub board: Switchboard,
    /// Events the nodes' tasks record (job runs, acknowledged writes), drained every step.
    pub outbox: Arc<Mutex<Vec<Event>>>,
    /// The admin token every node is given.
    pub token: String,
    /// The last request id handed out.
    pub requests: Arc<AtomicU64>,
}

impl Shared {
    /// Records `event`.
    pub fn record(&self, event: Event) {
        super::lock(&self.outbox).push(event);
    }

    /// A new request id.
    pub fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes what was recorded since the last call.
    pub fn drain(&self) -> Vec<Event> {
        std::mem::take(&mut *super::lock(&self.outbox))
    }
}

/// One node of the simulated cluster.
pub struct Host {
    /// Its raft id.
    pub id: NodeId,
    /// Its name (`n0`, `n1`, ...).
    pub name: String,
    /// A voter, or a worker only.
    pub voter: bool,
    identity: Identity,
    dir: tempfile::TempDir,
    /// Extra ms each raft log flush takes (a slow disk); outlives restarts, like the disk.
    disk_delay: Arc<AtomicU64>,
    /// Raft's log and state machine files; a crash loses their unsynced writes.
    disk: SimDisk,
    running: Option<Running>,
}

struct Running {
    cluster: Arc<Cluster>,
    /// The service apps this node routes, by name (its ingress).
    routers: Routers,
    /// Its data plane (which holds its routers, which hold it: cleared at a crash).
    dataplane: Arc<DataPlane>,
    // Dropped after `cluster` (fields drop in order): the node's tasks go with it.
    runtime: tokio::runtime::Runtime,
}

impl Host {
    /// A node that has not started yet.
    pub fn new(id: NodeId, name: String, voter: bool, identity: Identity) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("shoal-sim-{name}-"))
            .tempdir()
            .context("cannot make the node's data dir")?;
        Ok(Self {
            id,
            name,
            voter,
            identity,
            dir,
            disk_delay: Arc::new(AtomicU64::new(0)),
            disk: SimDisk::default(),
            running: None,
        })
    }

    /// The address its QUIC endpoint would have (what raft and gossip carry).
    pub fn quic_addr(&self) -> SocketAddr {
        SocketAddr::new(ip_of(self.id), 7001)
    }

    /// Whether the node is up.
    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// Its control plane, while it is up.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.running.as_ref().map(|running| &running.cluster)
    }

    /// Starts the node on its data dir (`fresh_seed` for the first voter of a new cluster).
    pub fn start(
        &mut self,
        shared: &Shared,
        fresh_seed: bool,
        timing: RaftTiming,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.running.is_none(), "node {} is already up", self.name);
        shared.net.set_down(self.id, false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .context("cannot build the node's runtime")?;
        let data_dir: PathBuf = self.dir.path().to_owned();
        std::fs::create_dir_all(data_dir.join("raft"))?;
        let replica = Replica::open_with(
            &data_dir.join("raft").join("state.redb"),
            Some(&self.disk.opener()),
        )
        .map_err(|error| anyhow::anyhow!("cannot open the app table: {error}"))?;
        let bundles = Arc::new(BundleStore::open(
            &data_dir.join("bundles"),
            BundleLimits::default(),
        )?);
        let stub = Arc::new(StubWorker {
            node: self.id,
            shared: shared.clone(),
            cluster: OnceLock::new(),
            book: Mutex::default(),
        });
        let runtime_of_apps = SimRuntime::new(self.id, shared.clone());
        let worker = Worker::with_runtime(self.name.clone(), Arc::new(runtime_of_apps));
        let dataplane = {
            // Entered so that the data plane's tasks belong to this node.
            let _entered = runtime.enter();
            DataPlane::new(
                self.name.clone(),
                Settings {
                    runs_apps: true,
                    runs_jobs: false,
                    rng_seed: self.id,
                },
                worker.clone(),
                &mut Registry::default(),
            )
        };
        let handler = Arc::new(NodeHandler {
            stub: stub.clone(),
            // Weak: the data plane holds the cluster, which holds this handler.
            dataplane: Arc::downgrade(&dataplane),
        });
        let net = shared.net.clone();
        let board = shared.board.clone();
        let handle = runtime.handle().clone();
        let (id, quic) = (self.id, self.quic_addr());
        let link_net = net.clone();
        let recorder = shared.clone();
        let on_open: OpenHook = Arc::new(move |from, to, kind| {
            let what = match kind {
                KIND_JOB => "job run",
                KIND_FORWARD => "request",
                _ => return,
            };
            recorder.record(Event::Routed {
                from,
                to,
                what: what.to_owned(),
            });
        });
        let env = Environment {
            clock: Arc::new(move || EPOCH_MS + net.now_ms()),
            link: Some(Box::new(move |handler: Arc<dyn StreamHandler>| {
                board.register(id, handler, handle);
                let link = SimLink::new(id, quic, link_net, board.clone()).on_open(on_open);
                Ok(Arc::new(link) as Arc<dyn shoal_mesh::link::PeerLink>)
            })),
            gossip: Some((
                shared.gossip.transport(self.id),
                shared.gossip.addr(self.id),
            )),
            raft: timing,
            disk_delay: Some(self.disk_delay.clone()),
            database: Some(self.disk.opener()),
        };
        let config = ClusterConfig {
            node_name: self.name.clone(),
            advertise: ip_of(self.id),
            gossip: shared.gossip.addr(self.id),
            quic,
            http: SocketAddr::new(ip_of(self.id), 8080),
            api: SocketAddr::new(ip_of(self.id), 8081),
            data_dir,
            dead_after: Duration::from_secs(2),
        };
        let start = Cluster::start(
            env,
            config,
            self.identity.clone(),
            fresh_seed,
            replica,
            bundles,
            shared.token.clone(),
            handler,
            CancellationToken::new(),
        );
        let cluster = runtime.block_on(start)?;
        let _ = stub.cluster.set(Arc::downgrade(&cluster));
        let routers = Routers::default();
        {
            let _entered = runtime.enter();
            dataplane.attach(cluster.clone());
            tokio::spawn(follow_table(
                cluster.clone(),
                worker,
                dataplane.clone(),
                routers.clone(),
            ));
        }
        self.running = Some(Running {
            cluster,
            routers,
            dataplane,
            runtime,
        });
        Ok(())
    }

    /// Sends one request for `app` into this node's ingress (as DNS round robin would); its
    /// answer is recorded as [`Event::Answered`]. Nothing if the node is down.
    pub fn request(&self, shared: &Shared, id: u64, app: &str) {
        let Some(running) = &self.running else {
            return;
        };
        let router = super::lock(&running.routers).get(app).cloned();
        let shared = shared.clone();
        let ingress = self.id;
        running.runtime.spawn(async move {
            let Some(router) = router else {
                shared.record(Event::Answered {
                    id,
                    ingress,
                    status: 404,
                    instance: None,
                });
                return;
            };
            let request = http::Request::get("/")
                .header(http::header::HOST, "sim")
                .body(shoal_proxy::body::empty())
                .expect("a valid request");
            let client = Client {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40000),
                host: Some("sim".into()),
            };
            let response = ServiceBackend::serve(&router, request, client).await;
            let instance = response
                .headers()
                .get(INSTANCE_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            shared.record(Event::Answered {
                id,
                ingress,
                status: response.status().as_u16(),
                instance,
            });
        });
    }

    /// Makes the node's disk slow: each raft log flush takes `extra_ms` more (0: normal).
    pub fn set_disk_delay(&self, extra_ms: u64) {
        self.disk_delay.store(extra_ms, Ordering::Relaxed);
    }

    /// Kills the node: its disk loses what was not synced (before anything of the node can
    /// shut down cleanly), then its runtime and every task on it are dropped; the data dir
    /// stays.
    pub fn crash(&mut self, shared: &Shared) {
        shared.board.unregister(self.id);
        shared.net.set_down(self.id, true);
        if let Some(running) = self.running.take() {
            self.disk.crash();
            let Running {
                cluster,
                routers,
                dataplane,
                runtime,
            } = running;
            dataplane.set_local(BTreeMap::new());
            drop((cluster, routers, dataplane));
            runtime.shutdown_background();
        }
    }

    /// Runs the node's tasks through `dt` of virtual time.
    pub fn step(&self, dt: Duration) {
        if let Some(running) = &self.running {
            running
                .runtime
                .block_on(async move { tokio::time::sleep(dt).await });
        }
    }

    /// Runs `task` on the node (a client request to it); nothing if it is down.
    pub fn spawn<F>(&self, task: impl FnOnce(Arc<Cluster>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(running) = &self.running {
            running.runtime.spawn(task(running.cluster.clone()));
        }
    }
}

/// The service apps a node routes, by name.
type Routers = Arc<Mutex<BTreeMap<String, ServiceRouter>>>;

/// What `node::follow_table` does on a real node, for service apps and without bundles: on
/// every table change the data plane gets a router per service app (kept per release, so a
/// release's router and its actor live on), apps gone from the table are retired, and every
/// 250 ms the data plane's load is published with fixed host facts (never this machine's).
async fn follow_table(
    cluster: Arc<Cluster>,
    worker: Arc<Worker>,
    dataplane: Arc<DataPlane>,
    routers: Routers,
) {
    let mut by_release: BTreeMap<(String, u64), ServiceRouter> = BTreeMap::new();
    let mut seen = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for round in 0u64.. {
        tick.tick().await;
        let table = cluster.table();
        if seen.as_ref().is_none_or(|seen| !Arc::ptr_eq(seen, &table)) {
            let mut current = BTreeMap::new();
            for app in table.apps() {
                let release = app.current();
                if release.spec.kind != AppKind::Service {
                    continue;
                }
                let router = by_release
                    .entry((app.name.clone(), release.version))
                    .or_insert_with(|| {
                        dataplane.router(
                            &release.spec,
                            release.version,
                            PathBuf::from("/sim/no-bundle"),
                            &release.digest,
                        )
                    });
                current.insert(app.name.clone(), router.clone());
            }
            by_release.retain(|(app, version), _| {
                table
                    .get(app)
                    .is_some_and(|a| a.current().version == *version)
            });
            for app in worker.apps() {
                if !current.contains_key(&app) {
                    worker.retire(&app);
                }
            }
            dataplane.set_local(current.clone());
            *super::lock(&routers) = current;
            seen = Some(table);
        }
        if round % 5 == 0 {
            let mut load = dataplane.load().await;
            load.insert("cpus".into(), "2".into());
            load.insert("mem_available_mib".into(), "4096".into());
            cluster.set_load(load);
        }
    }
}

/// Streams to a node: job runs to its stub worker, the rest to its data plane.
struct NodeHandler {
    stub: Arc<StubWorker>,
    dataplane: Weak<DataPlane>,
}

#[async_trait]
impl StreamHandler for NodeHandler {
    async fn handle(&self, peer: u64, kind: u8, send: LinkSend, recv: LinkRecv) {
        if kind == KIND_JOB {
            self.stub.handle(peer, kind, send, recv).await;
        } else if let Some(dataplane) = self.dataplane.upgrade() {
            dataplane.handle(peer, kind, send, recv).await;
        }
    }
}

/// The fixed fake IP of a node.
fn ip_of(id: NodeId) -> IpAddr {
    let [.., a, b, c] = id.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, a, b, c.max(1)))
}

/// A worker without containers: admits dispatched runs by their fence as a real worker does
/// (`JobBook`), records them, and reports them started and done through raft.
struct StubWorker {
    node: NodeId,
    shared: Shared,
    cluster: OnceLock<Weak<Cluster>>,
    book: Mutex<JobBook>,
}

#[async_trait]
impl StreamHandler for StubWorker {
    async fn handle(&self, peer: u64, kind: u8, mut send: LinkSend, mut recv: LinkRecv) {
        if kind != KIND_JOB {
            return;
        }
        let Ok(frame) = read_frame(&mut recv, 64 << 10).await else {
            return;
        };
        let Ok(message) = serde_json::from_slice::<JobMessage>(&frame) else {
            return;
        };
        let reply: Result<(), String> = {
            let mut book = super::lock(&self.book);
            match &message {
                JobMessage::Run(dispatch) => book.admit(&dispatch.job, dispatch.fence),
                JobMessage::Cancel { job, fence, .. } => book.admit(job, *fence),
            }
        };
        let bytes = serde_json::to_vec(&reply).unwrap_or_default();
        if write_frame(&mut send, &bytes).await.is_err() {
            return;
        }
        let _ = send.finish();
        let (Ok(()), JobMessage::Run(dispatch)) = (reply, message) else {
            return;
        };
        self.shared.record(Event::JobAccepted {
            worker: self.node,
            from: peer,
            job: dispatch.job.clone(),
            run_id: dispatch.run_id.clone(),
            fence_term: dispatch.fence.term,
            fence_index: dispatch.fence.index,
        });
        let Some(cluster) = self.cluster.get().and_then(Weak::upgrade) else {
            return;
        };
        let node = self.node;
        tokio::spawn(async move {
            tokio::time::sleep(RUN_START).await;
            let started = Command::RunStarted {
                job: dispatch.job.clone(),
                run_id: dispatch.run_id.clone(),
                worker: node,
                at_ms: cluster.now_ms(),
            };
            if cluster.propose(started).await.is_err() {
                return;
            }
            tokio::time::sleep(RUN_LENGTH).await;
            let ended = Command::RunEnded {
                job: dispatch.job,
                run_id: dispatch.run_id,
                end: RunEnd {
                    state: RunState::Succeeded,
                    exit_code: Some(0),
                    log_tail: String::new(),
                    reason: None,
                    at_ms: cluster.now_ms(),
                },
            };
            let _ = cluster.propose(ended).await;
        });
    }
}
