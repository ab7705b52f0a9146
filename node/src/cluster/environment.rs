//! What the control plane runs on: the clock, the link to peers, the gossip transport, raft's
//! timers and its disk ([`Environment`]); and how the real machine's QUIC endpoint is bound.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use shoal_mesh::gossip::Clock;
use shoal_mesh::link::PeerLink;
use shoal_mesh::quic::{QuicConfig, QuicNode, StreamHandler};

use super::identity::Identity;
use super::rpc::Handler;
use super::{join, wall_clock_ms, ClusterConfig};

/// Raft's timers, in milliseconds (openraft draws each election timeout in
/// `election_min..election_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    pub heartbeat: u64,
    /// Shortest election timeout.
    pub election_min: u64,
    /// Longest election timeout (exclusive).
    pub election_max: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat: 50,
            election_min: 250,
            election_max: 350,
        }
    }
}

/// Opens the node's link to its peers, given the handler of the streams they open to it.
pub type LinkFactory =
    Box<dyn FnOnce(Arc<dyn StreamHandler>) -> anyhow::Result<Arc<dyn PeerLink>> + Send>;

/// What the control plane runs on. [`Environment::default`] is the real machine: the wall
/// clock, QUIC, sealed UDP gossip. The simulator (`shoal-sim`) hands in virtual time, its own
/// network and per-node raft timing; nothing else differs.
pub struct Environment {
    /// Unix milliseconds: the one clock the control plane reads.
    pub clock: Clock,
    /// Replaces the QUIC endpoint (and with it the join service).
    pub link: Option<LinkFactory>,
    /// Replaces sealed UDP gossip: a transport and the address it is reached at.
    pub gossip: Option<(Arc<dyn shoal_mesh::gossip::Transport>, SocketAddr)>,
    /// Raft's timers.
    pub raft: RaftTiming,
    /// Milliseconds added to every raft log flush (a slow disk); `None`: the disk as it is.
    pub disk_delay: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Opens the raft log's database somewhere other than the file system; `None`: a file.
    pub database: Option<crate::raft::log_store::DatabaseOpener>,
}

impl Default for Environment {
    fn default() -> Self {
        Self {
            clock: Arc::new(wall_clock_ms),
            link: None,
            gossip: None,
            raft: RaftTiming::default(),
            disk_delay: None,
            database: None,
        }
    }
}

/// The join service's list of gossip seeds, refreshed by the tick loop.
pub(super) type JoinSeeds = Arc<Mutex<Vec<String>>>;

/// Binds the node's QUIC endpoint, with the join service on voters that hold the CA key.
pub(super) fn bind_quic(
    config: &ClusterConfig,
    identity: &Identity,
    admin_token: String,
    handler: Arc<Handler>,
) -> anyhow::Result<(Arc<QuicNode>, Option<JoinSeeds>)> {
    let ca_cert = rustls_der(&identity.ca_cert_pem)?;
    let join_service = if identity.voter {
        let seeds_for_join = Arc::new(Mutex::new(Vec::<String>::new()));
        let seeds = seeds_for_join.clone();
        join::JoinService::new(
            identity.clone(),
            admin_token,
            Arc::new(move || seeds.lock().expect("seeds").clone()),
            Arc::new(|| wall_clock_ms() / 1000),
        )?
        .map(|service| (Arc::new(service), seeds_for_join))
    } else {
        None
    };
    let quic_config = QuicConfig {
        // Two missed keep-alives: a peer that vanished without closing is noticed soon.
        idle_timeout: Duration::from_secs(3),
        ..QuicConfig::new(
            config.quic,
            ca_cert,
            identity.node.clone(),
            identity.node_id,
        )
    };
    let quic = QuicNode::bind(
        quic_config,
        handler,
        join_service
            .as_ref()
            .map(|(service, _)| service.clone() as Arc<dyn shoal_mesh::quic::JoinHandler>),
    )
    .with_context(|| {
        format!(
            "cannot listen on {} (--quic): is another shoal node running?",
            config.quic
        )
    })?;
    Ok((quic, join_service.map(|(_, seeds)| seeds)))
}

fn rustls_der(pem: &str) -> anyhow::Result<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| anyhow::anyhow!("the CA certificate in pki/ca.pem is unreadable: {error}"))
}
