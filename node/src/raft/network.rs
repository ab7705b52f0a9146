//! Raft RPCs over the QUIC peer connections: one `call` per RPC on the pooled, mutually
//! authenticated connection to the target, whose certificate must carry the target's node id
//! (so a message can never reach the wrong node and split the brain).
//!
//! Requests and responses are JSON frames. The receiving side is [`serve`], called by the
//! node's stream handler for the raft stream kinds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_mesh::link::PeerLink;
use shoal_mesh::quic::QuicError;

use super::{NodeId, PeerNode, Raft, TypeConfig};

/// Stream kind of an AppendEntries RPC.
pub const KIND_APPEND: u8 = 1;
/// Stream kind of a Vote RPC.
pub const KIND_VOTE: u8 = 2;
/// Stream kind of an InstallSnapshot RPC (one chunk).
pub const KIND_SNAPSHOT: u8 = 3;

/// Largest raft frame accepted (a batch of entries or a snapshot chunk).
pub const MAX_FRAME: usize = 64 << 20;

/// Makes one [`PeerClient`] per target.
#[derive(Clone)]
pub struct QuicNetwork {
    quic: Arc<dyn PeerLink>,
}

impl QuicNetwork {
    /// Raft traffic over `quic`.
    pub fn new(quic: Arc<dyn PeerLink>) -> Self {
        Self { quic }
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        PeerClient {
            quic: self.quic.clone(),
            target,
            addr: node.quic.parse().map_err(|_| node.quic.clone()),
        }
    }
}

/// Sends raft RPCs to one target.
pub struct PeerClient {
    quic: Arc<dyn PeerLink>,
    target: NodeId,
    /// The target's QUIC address, or the unparsable text membership holds.
    addr: Result<SocketAddr, String>,
}

/// Why an RPC did not reach its target, as a plain error.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("node {target} has an unusable address `{addr}` in the raft membership")]
    BadAddress { target: NodeId, addr: String },
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error("node {target} sent an unreadable raft response: {source}")]
    Decode {
        target: NodeId,
        source: serde_json::Error,
    },
}

impl PeerClient {
    async fn send<Req, Resp, E>(
        &self,
        kind: u8,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let addr = self.addr.clone().map_err(|addr| {
            RPCError::Unreachable(Unreachable::new(&SendError::BadAddress {
                target: self.target,
                addr,
            }))
        })?;
        let bytes = serde_json::to_vec(request).expect("raft requests serialize");
        let reply = self
            .quic
            .call(self.target, addr, kind, &bytes, timeout)
            .await
            // Redial next time: the pooled connection may outlive a crashed peer.
            .inspect_err(|_| self.quic.forget(self.target))
            .map_err(|error| match error {
                QuicError::Unreachable { .. } => {
                    RPCError::Unreachable(Unreachable::new(&SendError::Quic(error)))
                }
                other => RPCError::Network(NetworkError::new(&SendError::Quic(other))),
            })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply).map_err(|source| {
                RPCError::Network(NetworkError::new(&SendError::Decode {
                    target: self.target,
                    source,
                }))
            })?;
        result.map_err(|error| {
            RPCError::RemoteError(openraft::error::RemoteError::new(self.target, error))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.send(KIND_APPEND, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(KIND_SNAPSHOT, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.send(KIND_VOTE, &rpc, option.hard_ttl()).await
    }
}

/// Answers one raft RPC of `kind` (a request frame already read) with the response frame.
/// `None` for a kind that is not raft's or a request that does not decode.
pub async fn serve(raft: &Raft, kind: u8, request: &[u8]) -> Option<Vec<u8>> {
    fn encode<T: Serialize>(value: &T) -> Option<Vec<u8>> {
        Some(serde_json::to_vec(value).expect("raft responses serialize"))
    }
    match kind {
        KIND_APPEND => {
            let rpc: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(request).ok()?;
            encode(&raft.append_entries(rpc).await)
        }
        KIND_VOTE => {
            let rpc: VoteRequest<NodeId> = serde_json::from_slice(request).ok()?;
            encode(&raft.vote(rpc).await)
        }
        KIND_SNAPSHOT => {
            let rpc: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(request).ok()?;
            encode(&raft.install_snapshot(rpc).await)
        }
        _ => None,
    }
}
