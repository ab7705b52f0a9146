//! The control plane of one node: its cluster identity, the QUIC endpoint, sealed gossip, and
//! (on voters) raft. The leader is the active orchestrator; every other voter is a passive
//! standby holding the same log.
//!
//! - Writes ([`Cluster::propose`]) go to the leader over QUIC, and return once committed and
//!   applied here (read your writes).
//! - Every node keeps a [`Replica`] of the app table: voters through raft, other nodes by
//!   fetching the table whenever gossip shows a newer applied index, so routing never waits on
//!   the leader.
//! - Bundles are pushed to a majority of voters before the deploy that names them is proposed
//!   ([`Cluster::replicate_bundle`]), and pulled by every node that lacks one the table names.
//!
//! Files: [`identity`] (what is on disk), [`join`] (admitting nodes), [`orchestrator`]
//! (leader-only duties and their fence, a pure state machine), `membership` (voters, removal,
//! the promotion duty), `bundles` (push and pull), `rpc` (the node-to-node requests),
//! `environment` (what the control plane runs on: the real machine, or the simulator's).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use serde::Serialize;
use shoal_mesh::gossip::{Clock, Gossip, GossipConfig, Member, SealStats};
use shoal_mesh::link::PeerLink;
use shoal_mesh::quic::StreamHandler;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::bundle::BundleStore;
use crate::dataplane::PlacementView;
use crate::raft::log_store::LogStore;
use crate::raft::network::QuicNetwork;
use crate::raft::state_machine::{Replica, StateMachine};
use crate::raft::{NodeId, PeerNode, Raft};
use crate::state::{AppTable, Applied, Command};

mod bundles;
mod cron_duty;
mod environment;
pub mod identity;
pub mod join;
mod membership;
pub mod orchestrator;
mod rpc;

use environment::{bind_quic, JoinSeeds};
pub use environment::{Environment, LinkFactory, RaftTiming};
use identity::Identity;
use rpc::{Handler, ProposeReply, RpcError, TableRequest, KIND_PROPOSE, KIND_TABLE};

/// How long a write may wait for a leader (an election, a partition healing).
const PROPOSE_DEADLINE: Duration = Duration::from_secs(15);
/// One RPC's time limit.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node republishes its gossip keys and checks its replica.
const TICK: Duration = Duration::from_millis(200);

/// Gossip keys every node publishes (DESIGN §3).
mod keys {
    pub const NAME: &str = "name";
    pub const VOTER: &str = "voter";
    pub const API: &str = "api";
    pub const HTTP: &str = "http";
    pub const QUIC: &str = "quic";
    pub const APPLIED: &str = "applied";
    pub const RAFT: &str = "raft";
    pub const TERM: &str = "term";
    pub const IN_FLIGHT: &str = "in_flight";
    pub const INSTANCES: &str = "instances";
    pub const WARM_PREFIX: &str = "warm:";
    /// When the node process started (its gossip generation): a change means a restart.
    pub const STARTED: &str = "started";
}

/// Where this node listens and what it advertises.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The node's name.
    pub node_name: String,
    /// The address others reach this node at.
    pub advertise: IpAddr,
    /// Gossip bind address.
    pub gossip: SocketAddr,
    /// QUIC bind address.
    pub quic: SocketAddr,
    /// Ingress address (advertised with `advertise`'s IP when bound to all interfaces).
    pub http: SocketAddr,
    /// Admin API address.
    pub api: SocketAddr,
    /// The data dir.
    pub data_dir: PathBuf,
    /// Node-level gossip and raft timing.
    pub dead_after: Duration,
}

impl ClusterConfig {
    fn advertised(&self, addr: SocketAddr) -> SocketAddr {
        if addr.ip().is_unspecified() {
            SocketAddr::new(self.advertise, addr.port())
        } else {
            addr
        }
    }
}

/// One member as `shoal nodes` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// Node id (decimal string: ids are 53-bit but JSON readers vary).
    pub id: String,
    /// Name.
    pub name: String,
    /// Raft voter.
    pub voter: bool,
    /// `leader`, `follower`, `learner`, `candidate`, or `none` for workers.
    pub raft: String,
    /// Seen alive by this node's gossip.
    pub live: bool,
    /// Admin API address.
    pub api: String,
    /// Ingress address.
    pub http: String,
    /// QUIC address.
    pub quic: String,
    /// Applied index of its app table.
    pub applied_index: u64,
    /// Load.
    pub load: Load,
}

/// A member's load as it gossips it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Load {
    /// Requests in flight.
    pub in_flight: u64,
    /// Running instances.
    pub instances: u64,
}

/// `GET /v1/nodes`.
#[derive(Clone, Debug, Serialize)]
pub struct NodesView {
    /// The leader's id, if known.
    pub leader: Option<String>,
    /// The highest term known.
    pub term: u64,
    /// Every member known, by name.
    pub nodes: Vec<MemberView>,
}

/// A write that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader could be reached in time.
    #[error("no raft leader answered within {0:?}: a majority of voters must be up")]
    NoLeader(Duration),
    /// Too few voters hold the bundle.
    #[error("the bundle reached {held} of the {needed} voters it must be on before the deploy can be acknowledged: {reason}")]
    BundleNotReplicated {
        /// Voters holding it.
        held: usize,
        /// Majority.
        needed: usize,
        /// The last failure.
        reason: String,
    },
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// The control plane of this node.
pub struct Cluster {
    /// The node's identity.
    pub identity: Identity,
    config: ClusterConfig,
    quic: Arc<dyn PeerLink>,
    clock: Clock,
    gossip: tokio::sync::RwLock<Option<Gossip>>,
    seal_stats: Arc<SealStats>,
    raft: Option<Raft>,
    replica: Arc<Replica>,
    bundles: Arc<BundleStore>,
    /// Latest gossip view, refreshed each tick.
    members: Mutex<Vec<Member>>,
    /// The same view parsed for placement.
    placement: Mutex<Arc<PlacementView>>,
    /// Woken each time a pulled bundle is stored.
    bundle_arrived: tokio::sync::Notify,
    /// Load keys the node hands in ([`Cluster::set_load`]), published with the next round.
    load: Mutex<BTreeMap<String, String>>,
    /// Set once a non-voter holds a table fetched from a voter (voters read raft instead).
    ready: AtomicBool,
    /// Set when this voter learns it was removed from raft: it then acts as a worker.
    retired: AtomicBool,
    /// Set while a table fetch or a retirement check started by the tick loop runs.
    fetching: AtomicBool,
    stop: CancellationToken,
}

/// The wall clock in Unix milliseconds: the one clock the control plane is handed.
pub fn wall_clock_ms() -> u64 {
    crate::node::unix_ms_now()
}

impl Cluster {
    /// Starts the node's link to its peers, raft (voters) and gossip on `env` (the real machine:
    /// [`Environment::default`]). `fresh_seed` initializes a new raft group.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        env: Environment,
        config: ClusterConfig,
        identity: Identity,
        fresh_seed: bool,
        replica: Arc<Replica>,
        bundles: Arc<BundleStore>,
        admin_token: String,
        data_plane: Arc<dyn StreamHandler>,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let handler = Arc::new(Handler::new(data_plane));
        let (quic, join_seeds): (Arc<dyn PeerLink>, _) = match env.link {
            Some(open) => (open(handler.clone())?, None),
            None => {
                let (quic, join_seeds) =
                    bind_quic(&config, &identity, admin_token, handler.clone())?;
                (quic as Arc<dyn PeerLink>, join_seeds)
            }
        };
        let raft = if identity.voter {
            let raft_dir = config.data_dir.join("raft");
            let mut log_store =
                LogStore::open_with(&raft_dir.join("log.redb"), env.database.as_ref())
                    .map_err(|error| anyhow::anyhow!("cannot open the raft log: {error}"))?;
            if let Some(delay) = env.disk_delay.clone() {
                log_store = log_store.with_flush_delay(delay);
            }
            let state_machine = StateMachine::new(replica.clone());
            let raft_config = Arc::new(
                openraft::Config {
                    cluster_name: identity.cluster_id.clone(),
                    heartbeat_interval: env.raft.heartbeat,
                    election_timeout_min: env.raft.election_min,
                    election_timeout_max: env.raft.election_max,
                    install_snapshot_timeout: 5_000,
                    snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(2_000),
                    max_in_snapshot_log_to_keep: 500,
                    ..Default::default()
                }
                .validate()?,
            );
            let raft = Raft::new(
                identity.node_id,
                raft_config,
                QuicNetwork::new(quic.clone()),
                log_store,
                state_machine,
            )
            .await
            .context("cannot start raft")?;
            if fresh_seed {
                let mut members = BTreeMap::new();
                members.insert(
                    identity.node_id,
                    PeerNode {
                        name: config.node_name.clone(),
                        quic: config.advertised(quic.local_addr()).to_string(),
                    },
                );
                raft.initialize(members)
                    .await
                    .context("cannot initialize the raft group")?;
                adopt_legacy_apps(&raft, &replica).await;
            }
            Some(raft)
        } else {
            None
        };

        let generation = (env.clock)();
        let gossip_config = GossipConfig {
            node_id: format!("node-{}", identity.node_id),
            generation,
            listen: config.gossip,
            advertise: config.advertised(config.gossip),
            seeds: identity.gossip_seeds.clone(),
            cluster_id: identity.cluster_id.clone(),
            key: identity.gossip_key.clone(),
            interval: Duration::from_millis(200),
            dead_after: config.dead_after,
            freshness: Duration::from_secs(30),
            initial: vec![
                (keys::NAME.into(), config.node_name.clone()),
                (keys::VOTER.into(), u8::from(identity.voter).to_string()),
                (keys::API.into(), config.advertised(config.api).to_string()),
                (
                    keys::HTTP.into(),
                    config.advertised(config.http).to_string(),
                ),
                (
                    keys::QUIC.into(),
                    config.advertised(quic.local_addr()).to_string(),
                ),
                (keys::APPLIED.into(), replica.applied_index().to_string()),
                (keys::STARTED.into(), generation.to_string()),
            ],
        };
        let gossip = match env.gossip {
            Some((transport, addr)) => {
                Gossip::start_with_transport(gossip_config, transport.as_ref(), addr).await
            }
            None => Gossip::start(gossip_config, env.clock.clone()).await,
        }
        .with_context(|| {
            format!(
                "cannot start gossip on {} (--gossip): is another shoal node running?",
                config.gossip
            )
        })?;
        let seal_stats = gossip.stats();
        let cluster = Arc::new(Self {
            identity,
            config,
            quic,
            clock: env.clock,
            gossip: tokio::sync::RwLock::new(Some(gossip)),
            seal_stats,
            raft,
            replica,
            bundles,
            members: Mutex::new(Vec::new()),
            placement: Mutex::default(),
            load: Mutex::new(BTreeMap::new()),
            bundle_arrived: tokio::sync::Notify::new(),
            ready: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            fetching: AtomicBool::new(false),
            stop,
        });
        let _ = handler.cluster.set(Arc::downgrade(&cluster));
        tokio::spawn(cluster.clone().tick_loop(join_seeds));
        tokio::spawn(cluster.clone().bundle_loop());
        if cluster.raft.is_some() {
            tokio::spawn(cluster.clone().orchestrator_loop());
        }
        Ok(cluster)
    }

    /// Now, in Unix milliseconds, from the environment's clock.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// This voter's raft metrics (`None` on workers and removed voters).
    pub fn raft_metrics(&self) -> Option<openraft::RaftMetrics<NodeId, PeerNode>> {
        self.active_raft()
            .map(|raft| raft.metrics().borrow().clone())
    }

    /// Sets the load this node gossips (DESIGN §3): `in_flight`, `instances`, `cpus`,
    /// `mem_available_mib`, and `warm:<app>` = `<release>,<in flight>` per app with a running
    /// instance. Published with the next round; `warm:` keys left out are deleted.
    pub fn set_load(&self, load: BTreeMap<String, String>) {
        *self.load.lock().expect("load") = load;
    }

    /// Resolves when a bundle pulled from a peer has been stored (routing can now serve it).
    pub async fn bundle_arrived(&self) {
        self.bundle_arrived.notified().await;
    }

    /// Gossip's datagram counters, for `/metrics`.
    pub fn seal_stats(&self) -> Arc<SealStats> {
        self.seal_stats.clone()
    }

    /// This node's raft, on voters that were not removed.
    fn active_raft(&self) -> Option<&Raft> {
        if self.retired.load(Ordering::Relaxed) {
            None
        } else {
            self.raft.as_ref()
        }
    }

    /// A voter that campaigns without success may have been removed while it was away: ask
    /// the leader, and if the table retires this node, stop raft and carry on as a worker.
    async fn check_retired(&self) {
        let Some(raft) = self.active_raft() else {
            return;
        };
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader.is_some() {
            return;
        }
        let members = self.members.lock().expect("members").clone();
        let Some((leader, addr)) = gossip_leader(&members) else {
            return;
        };
        if leader == self.identity.node_id {
            return;
        }
        let Ok(table) = self.fetch_table(leader, addr, false).await else {
            return;
        };
        if table.retired_nodes().contains(&self.identity.node_id) {
            warn!(
                "this node was removed from raft (shoal nodes --remove); it stops voting and \
                 keeps serving as a worker"
            );
            self.retired.store(true, Ordering::Relaxed);
            let _ = raft.shutdown().await;
            let _ = self.replica.install(table);
        }
    }

    /// Whether the node knows a leader and holds a current table.
    pub fn is_ready(&self) -> bool {
        match self.active_raft() {
            Some(raft) => raft.metrics().borrow().current_leader.is_some(),
            None => self.ready.load(Ordering::Relaxed),
        }
    }

    /// Leaves gossip gracefully (peers see it gone at once), stops raft and closes QUIC.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Some(gossip) = self.gossip.write().await.take() {
            gossip.leave().await;
        }
        if let Some(raft) = self.active_raft() {
            let _ = raft.shutdown().await;
        }
        self.quic.shutdown().await;
    }

    // ---- writes ----

    /// Commits `command` through the leader (wherever it is) and returns what applying it did,
    /// once this node's replica has applied it too.
    pub async fn propose(&self, command: Command) -> Result<Applied, ClusterError> {
        self.propose_indexed(command)
            .await
            .map(|(_, applied)| applied)
    }

    /// [`Cluster::propose`], also returning the log index the command committed at.
    pub async fn propose_indexed(&self, command: Command) -> Result<(u64, Applied), ClusterError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            let attempt = match self.leader() {
                Some((leader, _)) if leader == self.identity.node_id => {
                    self.propose_locally(command.clone()).await
                }
                Some((leader, addr)) => self.propose_remotely(leader, addr, &command).await,
                None => Err(RpcError::NotLeader { leader: None }),
            };
            match attempt {
                Ok((index, applied)) => {
                    self.catch_up(index, deadline).await;
                    return Ok((index, applied));
                }
                Err(RpcError::Failed(message)) => return Err(ClusterError::Failed(message)),
                Err(RpcError::NotLeader { .. }) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                debug!("giving up on a proposal: no leader answered");
                return Err(ClusterError::NoLeader(PROPOSE_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn propose_remotely(
        &self,
        leader: NodeId,
        addr: SocketAddr,
        command: &Command,
    ) -> ProposeReply {
        let request = serde_json::to_vec(command).expect("commands serialize");
        let call = self
            .quic
            .call(leader, addr, KIND_PROPOSE, &request, RPC_TIMEOUT);
        // A leader that dies mid-call keeps its pooled connection until the idle timeout: stop
        // waiting as soon as this node learns of another leader.
        let reply = tokio::select! {
            reply = call => reply,
            () = self.leader_differs_from(leader) => {
                return Err(RpcError::NotLeader { leader: None });
            }
        };
        match reply {
            Ok(reply) => serde_json::from_slice(&reply)
                .unwrap_or_else(|error| Err(RpcError::Failed(format!("bad reply: {error}")))),
            Err(error) => {
                debug!(leader, %error, "leader unreachable for a proposal");
                // The next attempt dials afresh (the leader may have restarted).
                self.quic.forget(leader);
                Err(RpcError::NotLeader { leader: None })
            }
        }
    }

    /// Resolves once this node's view of the leader is no longer `leader` (raft on voters,
    /// gossip elsewhere).
    async fn leader_differs_from(&self, leader: NodeId) {
        if let Some(raft) = self.active_raft() {
            let mut metrics = raft.metrics();
            loop {
                let current = metrics.borrow_and_update().current_leader;
                if current.is_some_and(|id| id != leader) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
        loop {
            tokio::time::sleep(TICK).await;
            if self.leader().is_some_and(|(id, _)| id != leader) {
                return;
            }
        }
    }

    /// Proposes on this node's raft, which must be the leader.
    pub(crate) async fn propose_locally(&self, command: Command) -> ProposeReply {
        let Some(raft) = self.active_raft() else {
            return Err(RpcError::NotLeader { leader: None });
        };
        match raft.client_write(command).await {
            Ok(response) => Ok((response.log_id.index, response.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(RpcError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => {
                Err(RpcError::Failed(error.to_string()))
            }
            Err(RaftError::Fatal(error)) => Err(RpcError::Failed(format!("raft stopped: {error}"))),
        }
    }

    /// Waits (bounded) until the local replica has applied `index`.
    async fn catch_up(&self, index: u64, deadline: tokio::time::Instant) {
        let mut applied = self.replica.subscribe();
        while self.replica.applied_index() < index && tokio::time::Instant::now() < deadline {
            if self.active_raft().is_none() {
                self.refresh_table(false).await;
                if self.replica.applied_index() >= index {
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
        }
    }

    /// The current leader and its QUIC address, from raft (voters) or gossip.
    fn leader(&self) -> Option<(NodeId, SocketAddr)> {
        if let Some(raft) = self.active_raft() {
            let metrics = raft.metrics().borrow().clone();
            let leader = metrics.current_leader?;
            if leader == self.identity.node_id {
                return Some((leader, self.quic.local_addr()));
            }
            let node = metrics.membership_config.membership().get_node(&leader)?;
            return Some((leader, node.quic.parse().ok()?));
        }
        let members = self.members.lock().expect("members").clone();
        gossip_leader(&members)
    }

    // ---- the app table on non-voters, and reads ----

    /// Fetches the table from the leader (or any voter) if it is newer than ours.
    async fn refresh_table(&self, linearizable: bool) -> bool {
        let mut sources = Vec::new();
        if let Some(leader) = self.leader() {
            sources.push(leader);
        }
        sources.extend(self.voters());
        for (peer, addr) in sources {
            if peer == self.identity.node_id {
                continue;
            }
            match self.fetch_table(peer, addr, linearizable).await {
                Ok(table) => {
                    if let Err(error) = self.replica.install(table) {
                        warn!(%error, "could not store the fetched app table");
                    }
                    self.ready.store(true, Ordering::Relaxed);
                    return true;
                }
                Err(error) => debug!(peer, %error, "could not fetch the app table"),
            }
        }
        false
    }

    async fn fetch_table(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        linearizable: bool,
    ) -> anyhow::Result<AppTable> {
        let request = serde_json::to_vec(&TableRequest { linearizable })?;
        let reply = self
            .quic
            .call(peer, addr, KIND_TABLE, &request, RPC_TIMEOUT)
            .await?;
        let reply: Result<AppTable, RpcError> = serde_json::from_slice(&reply)?;
        Ok(reply?)
    }

    /// Answers a table request (voters).
    pub(crate) async fn serve_table(&self, request: TableRequest) -> Result<AppTable, RpcError> {
        if request.linearizable {
            let raft = self
                .active_raft()
                .ok_or(RpcError::NotLeader { leader: None })?;
            raft.ensure_linearizable()
                .await
                .map_err(|_| RpcError::NotLeader {
                    leader: raft.metrics().borrow().current_leader,
                })?;
        }
        Ok((*self.replica.table()).clone())
    }

    /// The table as of now, confirmed with a quorum (a linearizable read).
    pub async fn linearizable_table(&self) -> Result<Arc<AppTable>, ClusterError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            if let Some(raft) = self.active_raft() {
                if let Ok(Some(log_id)) = raft.ensure_linearizable().await {
                    self.catch_up(log_id.index, deadline).await;
                    return Ok(self.replica.table());
                }
            }
            if let Some((leader, addr)) = self.leader() {
                if leader != self.identity.node_id {
                    if let Ok(table) = self.fetch_table(leader, addr, true).await {
                        return Ok(Arc::new(table));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::NoLeader(PROPOSE_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    // ---- gossip and views ----

    /// The latest gossip view, parsed for placement.
    pub fn placement_view(&self) -> Arc<PlacementView> {
        self.placement.lock().expect("placement").clone()
    }

    /// This node's copy of the app table.
    pub fn table(&self) -> Arc<AppTable> {
        self.replica.table()
    }

    /// Where the unpacked bundle `digest` is, if this node holds it.
    pub fn release_dir(&self, digest: &str) -> Option<PathBuf> {
        self.bundles
            .contains(digest)
            .then(|| self.bundles.release_dir(digest))
    }

    /// This node's QUIC endpoint.
    pub fn quic(&self) -> &Arc<dyn PeerLink> {
        &self.quic
    }

    /// Every member this node knows, for `shoal nodes`.
    pub fn nodes(&self) -> NodesView {
        let members = self.members.lock().expect("members").clone();
        let leader = self.leader().map(|(id, _)| id);
        let retired = self.replica.table().retired_nodes().clone();
        let term = members
            .iter()
            .filter_map(|m| m.keys.get(keys::TERM)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let mut nodes: Vec<MemberView> = members
            .iter()
            .filter_map(|m| {
                let id = member_id(m)?;
                let key = |k: &str| m.keys.get(k).cloned().unwrap_or_default();
                let number = |k: &str| m.keys.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
                let voter = key(keys::VOTER) == "1" && !retired.contains(&id);
                let raft = match m.keys.get(keys::RAFT) {
                    _ if retired.contains(&id) => "removed".into(),
                    Some(state) => state.clone(),
                    None if voter => "learner".into(),
                    None => "none".into(),
                };
                Some(MemberView {
                    id: id.to_string(),
                    name: key(keys::NAME),
                    voter,
                    raft: if Some(id) == leader {
                        "leader".into()
                    } else {
                        raft
                    },
                    live: m.live,
                    api: key(keys::API),
                    http: key(keys::HTTP),
                    quic: key(keys::QUIC),
                    applied_index: number(keys::APPLIED),
                    load: Load {
                        in_flight: number(keys::IN_FLIGHT),
                        instances: number(keys::INSTANCES),
                    },
                })
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        NodesView {
            leader: leader.map(|id| id.to_string()),
            term,
            nodes,
        }
    }

    /// Drops pooled QUIC connections to peers that restarted or died: a SIGKILLed process
    /// never closes its connections, and they would otherwise look open until the idle
    /// timeout.
    fn forget_restarted_peers(
        &self,
        members: &[Member],
        seen: &mut BTreeMap<NodeId, (String, bool)>,
    ) {
        for member in members {
            let Some(id) = member_id(member) else {
                continue;
            };
            if id == self.identity.node_id {
                continue;
            }
            let started = member.keys.get(keys::STARTED).cloned().unwrap_or_default();
            let now = (started, member.live);
            if let Some(before) = seen.get(&id) {
                if *before != now {
                    self.quic.close(id);
                }
            }
            seen.insert(id, now);
        }
    }

    /// Runs a fetch from a peer (`fetch`) on its own task, one at a time: the peer may be the
    /// leader that just died, and waiting for its RPC to time out (seconds) must not stall the
    /// tick loop, which keeps the members, the placement view and this node's keys current.
    fn fetch_aside<F, Fut>(self: &Arc<Self>, fetch: F)
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let cluster = self.clone();
        let running = fetch(cluster.clone());
        tokio::spawn(async move {
            running.await;
            cluster.fetching.store(false, Ordering::Release);
        });
    }

    /// Publishes this node's keys, reads the members, refreshes a non-voter's table, and
    /// remembers gossip peers for the next start.
    async fn tick_loop(self: Arc<Self>, join_seeds: Option<JoinSeeds>) {
        let mut published: BTreeMap<String, String> = BTreeMap::new();
        let mut saved_seeds = self.identity.gossip_seeds.clone();
        saved_seeds.sort();
        let mut ticks: u64 = 0;
        let mut peer_starts: BTreeMap<NodeId, (String, bool)> = BTreeMap::new();
        loop {
            let mut keys_now: BTreeMap<String, String> = self.load.lock().expect("load").clone();
            if self.retired.load(Ordering::Relaxed) {
                keys_now.insert(keys::VOTER.into(), "0".into());
                keys_now.insert(keys::RAFT.into(), "removed".into());
            } else if ticks % 10 == 5 {
                self.fetch_aside(|cluster| async move { cluster.check_retired().await });
            }
            ticks += 1;
            keys_now.insert(
                keys::APPLIED.into(),
                self.replica.applied_index().to_string(),
            );
            if let Some(raft) = self.active_raft() {
                let metrics = raft.metrics().borrow().clone();
                let state = match metrics.state {
                    ServerState::Leader => "leader",
                    ServerState::Follower => "follower",
                    ServerState::Learner => "learner",
                    ServerState::Candidate => "candidate",
                    ServerState::Shutdown => "none",
                };
                let is_member = metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == self.identity.node_id);
                let state = if is_member || state == "leader" {
                    state
                } else {
                    "learner"
                };
                keys_now.insert(keys::RAFT.into(), state.into());
                keys_now.insert(keys::TERM.into(), metrics.current_term.to_string());
            }
            let changed: Vec<(String, String)> = keys_now
                .iter()
                .filter(|(k, v)| published.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let members = {
                let gossip = self.gossip.read().await;
                let Some(gossip) = gossip.as_ref() else {
                    return;
                };
                if !changed.is_empty() {
                    gossip.set_many(&changed).await;
                    published.extend(changed);
                }
                let gone: Vec<String> = published
                    .keys()
                    .filter(|k| k.starts_with(keys::WARM_PREFIX) && !keys_now.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    gossip.delete(&key).await;
                    published.remove(&key);
                }
                gossip.members().await
            };
            *self.members.lock().expect("members") = members.clone();
            *self.placement.lock().expect("placement") =
                Arc::new(PlacementView::from_members(&members));
            self.forget_restarted_peers(&members, &mut peer_starts);

            let mut live_seeds: Vec<String> = members
                .iter()
                .filter(|m| m.live && member_id(m) != Some(self.identity.node_id))
                .map(|m| m.gossip_addr.to_string())
                .collect();
            live_seeds.sort();
            if let Some(seeds) = &join_seeds {
                let mut all = live_seeds.clone();
                all.push(self.config.advertised(self.config.gossip).to_string());
                *seeds.lock().expect("seeds") = all;
            }
            if !live_seeds.is_empty() && live_seeds != saved_seeds {
                let mut identity = self.identity.clone();
                identity.gossip_seeds = live_seeds.clone();
                if let Err(error) = identity.save_cluster_file(&self.config.data_dir) {
                    debug!(%error, "could not remember gossip peers");
                }
                saved_seeds = live_seeds;
            }

            if self.active_raft().is_none() {
                let newest = members
                    .iter()
                    .filter(|m| m.live)
                    .filter_map(|m| m.keys.get(keys::APPLIED)?.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0);
                let have_leader = gossip_leader(&members).is_some();
                if have_leader && (newest > self.replica.applied_index() || !self.is_ready()) {
                    self.fetch_aside(|cluster| async move {
                        cluster.refresh_table(false).await;
                    });
                }
                if !have_leader {
                    self.ready.store(false, Ordering::Relaxed);
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

/// A data dir of a single-node Shoal from before the control plane: commit the current
/// release of each of its apps into the new cluster, so upgrading loses no app.
async fn adopt_legacy_apps(raft: &Raft, replica: &Replica) {
    let legacy = replica.legacy_apps();
    if legacy.is_empty() {
        return;
    }
    for _ in 0..100 {
        if raft.metrics().borrow().current_leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for app in legacy {
        let release = app.current().clone();
        let command = Command::Deploy {
            spec: Box::new(release.spec),
            digest: release.digest,
            bundle_bytes: release.bundle_bytes,
            at_unix_ms: release.deployed_at_unix_ms,
        };
        match raft.client_write(command).await {
            Ok(_) => {
                tracing::info!(app = %app.name, "took over an app from the single-node data dir")
            }
            Err(error) => warn!(app = %app.name, %error, "could not take over an app"),
        }
    }
}

fn member_id(member: &Member) -> Option<NodeId> {
    member.node_id.strip_prefix("node-")?.parse().ok()
}

fn member_quic(member: &Member) -> Option<SocketAddr> {
    member.keys.get(keys::QUIC)?.parse().ok()
}

/// The leader gossip reports: a live member saying it leads, the highest term winning.
fn gossip_leader(members: &[Member]) -> Option<(NodeId, SocketAddr)> {
    members
        .iter()
        .filter(|m| m.live && m.keys.get(keys::RAFT).is_some_and(|s| s == "leader"))
        .filter_map(|m| {
            let term: u64 = m.keys.get(keys::TERM)?.parse().ok()?;
            Some((term, member_id(m)?, member_quic(m)?))
        })
        .max_by_key(|(term, id, _)| (*term, *id))
        .map(|(_, id, addr)| (id, addr))
}
