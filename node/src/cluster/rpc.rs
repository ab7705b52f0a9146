//! Node-to-node requests over QUIC other than raft's own: proposing a command to the leader,
//! fetching the app table, moving bundles, and membership changes. Each is one bidi stream whose
//! first byte is its kind; requests and answers are JSON frames, bundle bytes travel raw.

use std::sync::{Arc, OnceLock, Weak};

use serde::{Deserialize, Serialize};
use shoal_mesh::link::{LinkRecv, LinkSend};
use shoal_mesh::quic::{read_frame, write_frame, StreamHandler};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use super::Cluster;
use crate::bundle::is_valid_digest;
use crate::raft::network::{self, MAX_FRAME};
use crate::state::{AppTable, Applied, Command};

/// Propose a command to the leader.
pub const KIND_PROPOSE: u8 = 10;
/// Fetch the app table.
pub const KIND_TABLE: u8 = 11;
/// Pull a bundle blob.
pub const KIND_BUNDLE_GET: u8 = 12;
/// Push a bundle blob.
pub const KIND_BUNDLE_PUT: u8 = 13;
/// Change the voter set (leader only).
pub const KIND_MEMBERSHIP: u8 = 14;

/// Largest control frame (a command carries a manifest; a table carries every app).
pub const MAX_CONTROL_FRAME: usize = 32 << 20;

/// Why a peer did not do what was asked.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum RpcError {
    /// The peer is not the leader; it names the one it knows, if any.
    #[error("node is not the raft leader")]
    NotLeader {
        /// The leader it knows.
        leader: Option<u64>,
    },
    /// It tried and failed.
    #[error("{0}")]
    Failed(String),
}

/// A proposal's outcome: the log index it was committed at, and what applying it did.
pub type ProposeReply = Result<(u64, Applied), RpcError>;

/// `KIND_TABLE` request.
#[derive(Serialize, Deserialize)]
pub struct TableRequest {
    /// Confirm leadership with a quorum first (a linearizable read).
    pub linearizable: bool,
}

/// `KIND_BUNDLE_PUT` header.
#[derive(Serialize, Deserialize)]
pub struct BundleHeader {
    /// sha256 of the blob.
    pub digest: String,
    /// Its size.
    pub size: u64,
}

/// `KIND_MEMBERSHIP` request.
#[derive(Serialize, Deserialize)]
pub enum MembershipRequest {
    /// Remove a node from the voters and from raft.
    Remove(u64),
}

/// Routes authenticated streams to the cluster (set once it exists), and data-plane streams
/// (kinds from [`crate::dataplane::KIND_FORWARD`] on) to the data plane.
pub struct Handler {
    pub(super) cluster: OnceLock<Weak<Cluster>>,
    data_plane: Arc<dyn StreamHandler>,
}

impl Handler {
    /// A handler passing data-plane streams to `data_plane`.
    pub fn new(data_plane: Arc<dyn StreamHandler>) -> Self {
        Self {
            cluster: OnceLock::new(),
            data_plane,
        }
    }
}

#[async_trait::async_trait]
impl StreamHandler for Handler {
    async fn handle(&self, peer: u64, kind: u8, mut send: LinkSend, mut recv: LinkRecv) {
        if kind >= crate::dataplane::KIND_FORWARD {
            return self.data_plane.handle(peer, kind, send, recv).await;
        }
        let Some(cluster) = self.cluster.get().and_then(Weak::upgrade) else {
            // Not started yet (or stopping): the peer retries.
            send.reset(1);
            return;
        };
        if let Err(error) = serve(&cluster, peer, kind, &mut send, &mut recv).await {
            debug!(peer, kind, %error, "peer request failed");
            send.reset(2);
        }
    }
}

async fn serve(
    cluster: &Arc<Cluster>,
    peer: u64,
    kind: u8,
    send: &mut LinkSend,
    recv: &mut LinkRecv,
) -> anyhow::Result<()> {
    match kind {
        network::KIND_APPEND | network::KIND_VOTE | network::KIND_SNAPSHOT => {
            let request = read_frame(recv, MAX_FRAME).await?;
            let Some(raft) = &cluster.raft else {
                anyhow::bail!("raft RPC from {peer} to a node that is not a voter");
            };
            let reply = network::serve(raft, kind, &request)
                .await
                .ok_or_else(|| anyhow::anyhow!("undecodable raft RPC from {peer}"))?;
            respond(send, &reply).await
        }
        KIND_PROPOSE => {
            let request = read_frame(recv, MAX_CONTROL_FRAME).await?;
            let command: Command = serde_json::from_slice(&request)?;
            let reply: ProposeReply = cluster.propose_locally(command).await;
            respond(send, &serde_json::to_vec(&reply)?).await
        }
        KIND_TABLE => {
            let request: TableRequest = serde_json::from_slice(&read_frame(recv, 4096).await?)?;
            let reply: Result<AppTable, RpcError> = cluster.serve_table(request).await;
            respond(send, &serde_json::to_vec(&reply)?).await
        }
        KIND_BUNDLE_GET => {
            let digest = String::from_utf8(read_frame(recv, 256).await?)?;
            serve_bundle(cluster, &digest, send).await
        }
        KIND_BUNDLE_PUT => receive_bundle(cluster, send, recv).await,
        KIND_MEMBERSHIP => {
            let request: MembershipRequest =
                serde_json::from_slice(&read_frame(recv, 4096).await?)?;
            let reply: Result<(), RpcError> = cluster.change_membership_locally(request).await;
            respond(send, &serde_json::to_vec(&reply)?).await
        }
        other => anyhow::bail!("unknown stream kind {other} from {peer}"),
    }
}

async fn respond(send: &mut LinkSend, bytes: &[u8]) -> anyhow::Result<()> {
    write_frame(send, bytes).await?;
    send.finish()?;
    Ok(())
}

/// Sends the blob of `digest`: a JSON frame `Result<size, message>`, then the raw bytes.
async fn serve_bundle(cluster: &Cluster, digest: &str, send: &mut LinkSend) -> anyhow::Result<()> {
    if !is_valid_digest(digest) || !cluster.bundles.contains(digest) {
        let reply: Result<u64, String> = Err(format!("bundle {digest} is not stored here"));
        return respond(send, &serde_json::to_vec(&reply)?).await;
    }
    let mut file = tokio::fs::File::open(cluster.bundles.blob_path(digest)).await?;
    let size = file.metadata().await?.len();
    let reply: Result<u64, String> = Ok(size);
    write_frame(send, &serde_json::to_vec(&reply)?).await?;
    tokio::io::copy(&mut file, send).await?;
    send.flush().await?;
    send.finish()?;
    Ok(())
}

/// Receives a pushed blob: header, "have"/"send", the bytes, then "ok" or the refusal.
async fn receive_bundle(
    cluster: &Arc<Cluster>,
    send: &mut LinkSend,
    recv: &mut LinkRecv,
) -> anyhow::Result<()> {
    let header: BundleHeader = serde_json::from_slice(&read_frame(recv, 4096).await?)?;
    if !is_valid_digest(&header.digest) {
        anyhow::bail!("a pushed bundle has an invalid digest");
    }
    if cluster.bundles.contains(&header.digest) {
        return respond(send, b"have").await;
    }
    write_frame(send, b"send").await?;
    let outcome = cluster
        .store_bundle_from(&header.digest, header.size, recv)
        .await;
    let reply: Result<(), String> = outcome.map_err(|error| {
        warn!(digest = %header.digest, %error, "refused a pushed bundle");
        error.to_string()
    });
    respond(send, &serde_json::to_vec(&reply)?).await
}
