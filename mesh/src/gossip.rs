//! Cluster membership over chitchat, with every datagram sealed (see [`crate::seal`]).
//!
//! [`Gossip::start`] runs one chitchat node on a [`SealedTransport`] over UDP;
//! [`Gossip::start_with_transport`] runs it, unsealed, on any other [`Transport`] (the
//! simulator's network). Each node publishes a few small keys ([`Gossip::set`]);
//! [`Gossip::members`] returns every node known, whether it is live, and its keys;
//! [`Gossip::changes`] ticks when that view changes.
//!
//! Liveness is chitchat's phi accrual detector, tuned so that its timeout is nearly fixed and
//! derived from [`GossipConfig::dead_after`] (see [`failure_detector_config`]): a node that
//! stops answering is reported dead by every peer within that bound. A node that calls
//! [`Gossip::leave`] publishes `status=leaving` and is reported dead at once.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// What a transport for [`Gossip::start_with_transport`] implements and carries: chitchat's
/// transport traits, the decoded message a `Socket` moves, and what its calls return.
pub use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    NodeState, ProtocolVersion,
};
/// The decoded gossip message a [`Socket`] sends and receives.
pub use chitchat::{ChitchatEnvelope, ChitchatMessage};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::seal::SENTINEL_CLUSTER_ID;
pub use crate::seal::{Clock, GossipKey, SealStats, SealStatsSnapshot, SealedTransport};

/// Default gossip round.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(200);

/// Default bound within which a silent node is reported dead.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(2);

/// Default freshness window of sealed datagrams (tolerated clock skew plus transit).
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(30);

/// The key [`Gossip::leave`] sets; reserved.
pub const STATUS_KEY: &str = "status";

/// The value of [`STATUS_KEY`] on a node that is leaving.
pub const STATUS_LEAVING: &str = "leaving";

/// How long a dead node stays in the member list before it is forgotten. Long enough to ride
/// out a reboot or a short partition; a forgotten node that comes back simply rejoins.
pub const DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(5 * 60);

/// How long a deleted key's tombstone is kept. A peer that lags further behind is reset with
/// a full copy of the node's state, which costs bandwidth but never correctness.
pub const TOMBSTONE_GRACE_PERIOD: Duration = Duration::from_secs(10 * 60);

/// Gossip rounds `leave` spends telling peers before it stops.
const LEAVE_ROUNDS: u32 = 2;

/// A node whose own keys exceed this is warned about (DESIGN §3 wants them small): a large
/// state takes several rounds to reach a newcomer, and every change is gossiped to everyone.
const SELF_STATE_WARN_BYTES: usize = 8 * 1024;

/// What went wrong starting gossip or reading its key; each message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The hex key has the wrong length.
    #[error(
        "the gossip key must be 64 hex characters (32 bytes) but has {found}; copy it again from \
         an existing node's pki/gossip.key"
    )]
    KeyLength {
        /// The length found, in characters.
        found: usize,
    },
    /// The hex key has a character that is not a hex digit.
    #[error(
        "the gossip key must contain only hex digits (0-9, a-f); copy it again from an existing \
         node's pki/gossip.key"
    )]
    KeyDigits,
    /// A setting of [`GossipConfig`] is unusable; the message names it.
    #[error("{0}")]
    Config(String),
    /// The gossip socket could not be bound.
    #[error(
        "cannot bind the gossip socket on {addr}/udp ({source}); free that port or pick another"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// chitchat refused to start.
    #[error("cannot start gossip: {0}")]
    Start(String),
}

/// How to run one gossip node.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// This node's id, e.g. `node-1234`; unique in the cluster.
    pub node_id: String,
    /// Fresh at each start (e.g. unix ms), so peers tell a restart from the old incarnation.
    pub generation: u64,
    /// Where the gossip socket binds; port 0 picks a free port (see [`Gossip::local_addr`]).
    pub listen: SocketAddr,
    /// The address peers send to; port 0 means the bound port.
    pub advertise: SocketAddr,
    /// `host:port` of other nodes' gossip sockets.
    pub seeds: Vec<String>,
    /// Nodes of different clusters ignore each other.
    pub cluster_id: String,
    /// The cluster's gossip key.
    pub key: GossipKey,
    /// One gossip round.
    pub interval: Duration,
    /// A node that stops answering is reported dead within this bound; at least 5 rounds.
    pub dead_after: Duration,
    /// Datagrams stamped further than this from the receiver's clock are dropped.
    pub freshness: Duration,
    /// Keys published from the start.
    pub initial: Vec<(String, String)>,
}

impl GossipConfig {
    /// A config for tests: loopback, a free port, cluster `shoal-test`, default timings.
    pub fn for_test(node_id: &str, key: GossipKey) -> Self {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            node_id: node_id.to_owned(),
            generation: 1,
            listen: loopback,
            advertise: loopback,
            seeds: Vec::new(),
            cluster_id: "shoal-test".to_owned(),
            key,
            interval: DEFAULT_GOSSIP_INTERVAL,
            dead_after: DEFAULT_DEAD_AFTER,
            freshness: DEFAULT_FRESHNESS,
            initial: Vec::new(),
        }
    }

    /// Checks the settings that would otherwise fail later or silently misbehave.
    pub fn validate(&self) -> Result<(), GossipError> {
        let invalid = |reason: String| Err(GossipError::Config(reason));
        if self.node_id.is_empty() {
            return invalid("the gossip node id is empty; give every node a unique id".into());
        }
        if self.cluster_id.is_empty() || self.cluster_id == SENTINEL_CLUSTER_ID {
            return invalid(
                "the gossip cluster id is empty or reserved; use the cluster's id".into(),
            );
        }
        if self.interval < Duration::from_millis(10) {
            return invalid(format!(
                "the gossip interval ({:?}) must be at least 10 ms",
                self.interval
            ));
        }
        if self.dead_after < self.interval * 5 {
            return invalid(format!(
                "dead_after ({:?}) must be at least five gossip intervals ({:?}) or nodes flap",
                self.dead_after,
                self.interval * 5
            ));
        }
        if self.freshness < Duration::from_secs(1) {
            return invalid(format!(
                "the gossip freshness window ({:?}) must be at least one second",
                self.freshness
            ));
        }
        if self.advertise.ip().is_unspecified() {
            return invalid(format!(
                "the gossip advertise address {} is unspecified; set an address other nodes reach",
                self.advertise
            ));
        }
        Ok(())
    }
}

/// One node as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub node_id: String,
    /// Its advertised gossip address.
    pub gossip_addr: SocketAddr,
    /// Heard from within the detection bound and not leaving; always true for this node.
    pub live: bool,
    /// Its published keys, deleted ones excluded.
    pub keys: BTreeMap<String, String>,
}

/// A running gossip node. Dropping it stops gossip abruptly (peers detect it as dead);
/// [`Gossip::leave`] stops it gracefully.
pub struct Gossip {
    handle: ChitchatHandle,
    local_addr: SocketAddr,
    interval: Duration,
    stats: Arc<SealStats>,
    changes_rx: watch::Receiver<u64>,
    _watcher: AbortOnDrop,
}

impl Gossip {
    /// Binds the gossip socket and starts gossiping with `config.seeds`.
    ///
    /// `clock` returns unix ms; it stamps and checks the freshness of datagrams.
    pub async fn start(config: GossipConfig, clock: Clock) -> Result<Self, GossipError> {
        config.validate()?;
        let bind_error = |source| GossipError::Bind {
            addr: config.listen,
            source,
        };
        let socket = UdpSocket::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = socket.local_addr().map_err(bind_error)?;
        let stats = Arc::new(SealStats::default());
        let transport =
            SealedTransport::new(config.key.clone(), config.freshness, clock, stats.clone())
                .with_socket(socket);
        Self::launch(config, &transport, local_addr, stats).await
    }

    /// Starts gossiping with `config.seeds` over `transport`, unsealed and without binding
    /// anything itself: the seam a simulator or an in-memory test plugs its network into.
    ///
    /// chitchat opens its socket with `transport.open(local_addr)`; `local_addr` replaces
    /// `config.listen` (which is not used), and an `advertise` port of 0 means `local_addr`'s.
    /// `config.key` and `config.freshness` are not used either, and [`Gossip::stats`] stays at
    /// zero: sealing is [`SealedTransport`]'s job, which [`Gossip::start`] puts in front.
    pub async fn start_with_transport(
        config: GossipConfig,
        transport: &dyn Transport,
        local_addr: SocketAddr,
    ) -> Result<Self, GossipError> {
        config.validate()?;
        Self::launch(
            config,
            transport,
            local_addr,
            Arc::new(SealStats::default()),
        )
        .await
    }

    /// Runs chitchat for a validated `config` on `transport`, whose socket opens on
    /// `local_addr`; `stats` is what [`Gossip::stats`] returns.
    async fn launch(
        config: GossipConfig,
        transport: &dyn Transport,
        local_addr: SocketAddr,
        stats: Arc<SealStats>,
    ) -> Result<Self, GossipError> {
        let mut advertise = config.advertise;
        if advertise.port() == 0 {
            advertise.set_port(local_addr.port());
        }
        let chitchat_config = chitchat_config(&config, local_addr, advertise);
        let handle = spawn_chitchat(chitchat_config, config.initial.clone(), transport)
            .await
            .map_err(|error| GossipError::Start(format!("{error:#}")))?;
        let (changes_tx, changes_rx) = watch::channel(0);
        let watcher = tokio::spawn(watch_changes(
            handle.chitchat(),
            config.interval,
            changes_tx,
        ));
        info!(node_id = %config.node_id, addr = %local_addr, %advertise, "gossip started");
        Ok(Self {
            handle,
            local_addr,
            interval: config.interval,
            stats,
            changes_rx,
            _watcher: AbortOnDrop(watcher),
        })
    }

    /// Publishes `key = value` (peers see it within a round or two).
    pub async fn set(&self, key: &str, value: &str) {
        self.set_many(&[(key.to_owned(), value.to_owned())]).await;
    }

    /// Publishes several keys at once.
    pub async fn set_many(&self, pairs: &[(String, String)]) {
        self.handle
            .with_chitchat(|chitchat| {
                let state = chitchat.self_node_state();
                for (key, value) in pairs {
                    state.set(key, value);
                }
                warn_if_large(state);
            })
            .await;
    }

    /// Withdraws a published key; nothing happens if it was never set.
    pub async fn delete(&self, key: &str) {
        self.handle
            .with_chitchat(|chitchat| {
                let state = chitchat.self_node_state();
                if state.contains_key(key) {
                    state.delete(key);
                }
            })
            .await;
    }

    /// Every node known, this one included, sorted by node id; one entry per node id (its
    /// newest generation).
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = self.handle.chitchat();
        let chitchat = chitchat.lock().await;
        newest_views(&chitchat)
            .into_iter()
            .map(|view| Member {
                node_id: view.id.node_id.to_string(),
                gossip_addr: view.id.gossip_advertise_addr,
                live: view.live,
                keys: view
                    .state
                    .key_values()
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .collect(),
            })
            .collect()
    }

    /// The datagram counters, to export as metrics.
    pub fn stats(&self) -> Arc<SealStats> {
        self.stats.clone()
    }

    /// A counter that increases whenever a member joins, dies, leaves or changes its keys.
    /// The view is checked once per gossip round.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes_rx.clone()
    }

    /// The bound gossip address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Leaves gracefully: publishes `status=leaving`, pushes it to every live peer for two
    /// rounds so that they report this node dead at once, then stops.
    pub async fn leave(self) {
        let Self {
            handle, interval, ..
        } = self;
        let peers = handle
            .with_chitchat(|chitchat| {
                chitchat.self_node_state().set(STATUS_KEY, STATUS_LEAVING);
                let self_id = chitchat.self_chitchat_id().clone();
                chitchat
                    .live_nodes()
                    .filter(|id| **id != self_id)
                    .map(|id| id.gossip_advertise_addr)
                    .collect::<BTreeSet<_>>()
            })
            .await;
        for _ in 0..LEAVE_ROUNDS {
            for peer in &peers {
                // A closed command channel means the server already stopped: nothing to tell.
                let _ = handle.gossip(*peer);
            }
            tokio::time::sleep(interval).await;
        }
        if let Err(error) = handle.shutdown().await {
            warn!(error = %format!("{error:#}"), "gossip did not stop cleanly");
        }
    }
}

/// Aborts a background task when its owner goes away.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// chitchat's settings for `config`, listening on the already bound `local_addr`.
fn chitchat_config(
    config: &GossipConfig,
    local_addr: SocketAddr,
    advertise: SocketAddr,
) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(config.node_id.clone(), config.generation, advertise),
        cluster_id: config.cluster_id.clone(),
        gossip_interval: config.interval,
        listen_addr: local_addr,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: failure_detector_config(config.interval, config.dead_after),
        marked_for_deletion_grace_period: TOMBSTONE_GRACE_PERIOD,
        catchup_callback: None,
        // Only affects chitchat's own live-nodes watcher; `members` applies the same rule.
        extra_liveness_predicate: Some(Box::new(|state: &NodeState| !is_leaving(state))),
        // Every Shoal node runs chitchat 0.13, which reads the compressed digest.
        protocol_version: ProtocolVersion::V1,
    }
}

/// The failure detector tuned for a nearly fixed timeout that fits within `dead_after`.
///
/// chitchat's phi is `silence / mean_interval`, where the mean is smoothed towards
/// `initial_interval` with the weight of five samples. With a one-sample window, a prior of
/// one gossip round `i` and samples capped at `2i`, the mean stays within `[5i/6, 7i/6]` however
/// the network behaves, so the timeout `phi_threshold * mean` is known in advance. The
/// threshold puts the longest timeout one round under `dead_after`, leaving a round for the
/// liveness update that runs at each gossip tick. With the defaults (200 ms, 2 s) a node is
/// declared dead after 1.3 to 1.8 s of silence: that is 6 to 9 missed rounds, which a loaded
/// machine does not miss by accident.
pub fn failure_detector_config(interval: Duration, dead_after: Duration) -> FailureDetectorConfig {
    let round = interval.as_secs_f64();
    let longest_mean = round * 7.0 / 6.0;
    let phi_threshold = ((dead_after.as_secs_f64() - round) / longest_mean).max(1.0);
    FailureDetectorConfig {
        phi_threshold,
        sampling_window_size: 1,
        max_interval: interval * 2,
        initial_interval: interval,
        dead_node_grace_period: DEAD_NODE_GRACE_PERIOD,
    }
}

fn is_leaving(state: &NodeState) -> bool {
    state.get(STATUS_KEY) == Some(STATUS_LEAVING)
}

fn warn_if_large(state: &NodeState) {
    let bytes: usize = state
        .key_values()
        .map(|(key, value)| key.len() + value.len())
        .sum();
    if bytes > SELF_STATE_WARN_BYTES {
        warn!(
            bytes,
            limit = SELF_STATE_WARN_BYTES,
            "gossip state is large; keep keys small so the cluster's state fits in one datagram"
        );
    }
}

/// One node's newest known incarnation.
struct View<'a> {
    id: &'a ChitchatId,
    state: &'a NodeState,
    live: bool,
}

/// Every node's newest generation (this node's current one always wins), sorted by node id.
fn newest_views(chitchat: &Chitchat) -> Vec<View<'_>> {
    let self_id = chitchat.self_chitchat_id();
    let live: BTreeSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut newest: BTreeMap<&str, View<'_>> = BTreeMap::new();
    for (id, state) in chitchat.node_states() {
        let view = View {
            id,
            state,
            live: id == self_id || (live.contains(id) && !is_leaving(state)),
        };
        match newest.entry(&id.node_id) {
            Entry::Vacant(entry) => {
                entry.insert(view);
            }
            Entry::Occupied(mut entry) => {
                let kept = entry.get().id;
                if kept != self_id && (id == self_id || id.generation_id > kept.generation_id) {
                    entry.insert(view);
                }
            }
        }
    }
    newest.into_values().collect()
}

/// What `changes` compares: who is there, whether live, and their key versions.
fn fingerprint(chitchat: &Chitchat) -> Vec<(String, u64, bool, u64)> {
    newest_views(chitchat)
        .into_iter()
        .map(|view| {
            (
                view.id.node_id.to_string(),
                view.id.generation_id,
                view.live,
                view.state.max_version(),
            )
        })
        .collect()
}

/// Bumps `changes_tx` whenever the fingerprint differs from the previous round's.
async fn watch_changes(
    chitchat: Arc<Mutex<Chitchat>>,
    interval: Duration,
    changes_tx: watch::Sender<u64>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous = None;
    loop {
        ticker.tick().await;
        let current = fingerprint(&*chitchat.lock().await);
        if previous
            .as_ref()
            .is_some_and(|previous| *previous != current)
        {
            changes_tx.send_modify(|count| *count += 1);
        }
        previous = Some(current);
    }
}

#[cfg(test)]
#[path = "gossip_tests.rs"]
mod tests;
