//! Raft membership: who votes, removing a node for good, and the leader's duty of promoting
//! nodes that joined as voters (learner first, then voter), run under the orchestrator's fence.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership, ServerState};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::orchestrator::{Fence, Leadership, RaftView, Transition};
use super::rpc::{MembershipRequest, RpcError, KIND_MEMBERSHIP};
use super::{keys, member_id, member_quic, Cluster, ClusterError, PROPOSE_DEADLINE, RPC_TIMEOUT};
use crate::raft::{NodeId, PeerNode, Raft};
use crate::state::Command;

impl Cluster {
    /// The voters: raft's membership on voters, gossip's `voter` key elsewhere.
    pub(super) fn voters(&self) -> Vec<(NodeId, SocketAddr)> {
        if let Some(raft) = self.active_raft() {
            let membership = current_membership(raft);
            return membership
                .voter_ids()
                .filter_map(|id| {
                    let node = membership.get_node(&id)?;
                    Some((id, node.quic.parse().ok()?))
                })
                .collect();
        }
        let members = self.members.lock().expect("members").clone();
        members
            .iter()
            .filter(|m| m.live && m.keys.get(keys::VOTER).is_some_and(|v| v == "1"))
            .filter_map(|m| Some((member_id(m)?, member_quic(m)?)))
            .collect()
    }

    /// Removes a node from raft (voter or learner). Forwarded to the leader.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_DEADLINE;
        loop {
            let outcome = match self.leader() {
                Some((leader, _)) if leader == self.identity.node_id => {
                    self.change_membership_locally(MembershipRequest::Remove(id))
                        .await
                }
                Some((leader, addr)) => {
                    let request =
                        serde_json::to_vec(&MembershipRequest::Remove(id)).expect("serializes");
                    match self
                        .quic
                        .call(leader, addr, KIND_MEMBERSHIP, &request, RPC_TIMEOUT)
                        .await
                    {
                        Ok(reply) => serde_json::from_slice(&reply).unwrap_or_else(|error| {
                            Err(RpcError::Failed(format!("bad reply: {error}")))
                        }),
                        Err(_) => Err(RpcError::NotLeader { leader: None }),
                    }
                }
                None => Err(RpcError::NotLeader { leader: None }),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(RpcError::Failed(message)) => return Err(ClusterError::Failed(message)),
                Err(RpcError::NotLeader { .. }) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::NoLeader(PROPOSE_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn change_membership_locally(
        &self,
        request: MembershipRequest,
    ) -> Result<(), RpcError> {
        let raft = self
            .active_raft()
            .ok_or(RpcError::NotLeader { leader: None })?;
        let MembershipRequest::Remove(id) = request;
        let membership = current_membership(raft);
        if membership.get_node(&id).is_none() {
            return Err(RpcError::Failed(format!("node {id} is not a raft member")));
        }
        let map = |error: RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>| match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                RpcError::NotLeader {
                    leader: forward.leader_id,
                }
            }
            other => RpcError::Failed(other.to_string()),
        };
        // Retire it first, so the orchestrator cannot promote it again in between.
        match self.propose_locally(Command::RetireNode { id }).await {
            Ok(_) => {}
            Err(error) => return Err(error),
        }
        if membership.voter_ids().any(|voter| voter == id) {
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(map)?;
        }
        raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(map)?;
        info!(node = id, "removed a node from raft");
        Ok(())
    }

    /// Runs the orchestrator duties while this node leads.
    pub(super) async fn orchestrator_loop(self: Arc<Self>) {
        let Some(raft) = self.active_raft().cloned() else {
            return;
        };
        let mut metrics = raft.metrics();
        let mut leadership = Leadership::default();
        let mut duties: Option<CancellationToken> = None;
        loop {
            let view = {
                let m = metrics.borrow_and_update();
                RaftView {
                    is_leader: m.state == ServerState::Leader,
                    term: m.current_term,
                    last_log_index: m.last_log_index.unwrap_or(0),
                }
            };
            for transition in leadership.observe(view) {
                match transition {
                    Transition::Start(fence) => {
                        info!(%fence, "this node is the active orchestrator");
                        let token = self.stop.child_token();
                        tokio::spawn(self.clone().promote_voters(fence, token.clone()));
                        tokio::spawn(self.clone().cron_duty(fence, token.clone()));
                        duties = Some(token);
                    }
                    Transition::Stop(fence) => {
                        info!(%fence, "this node is no longer the active orchestrator");
                        if let Some(token) = duties.take() {
                            token.cancel();
                        }
                    }
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                changed = metrics.changed() => if changed.is_err() { break },
            }
        }
        if let Some(token) = duties.take() {
            token.cancel();
        }
    }

    /// Leader duty: a live node that gossips `voter=1` but is not a voter joins raft as a
    /// learner and, once it has caught up, is promoted.
    async fn promote_voters(self: Arc<Self>, fence: Fence, token: CancellationToken) {
        let Some(raft) = self.active_raft().cloned() else {
            return;
        };
        loop {
            let membership = current_membership(&raft);
            let members = self.members.lock().expect("members").clone();
            let retired = self.replica.table().retired_nodes().clone();
            for member in members.iter().filter(|m| m.live) {
                if token.is_cancelled() {
                    return;
                }
                let (Some(id), Some(addr)) = (member_id(member), member_quic(member)) else {
                    continue;
                };
                let wants_vote = member.keys.get(keys::VOTER).is_some_and(|v| v == "1")
                    && !retired.contains(&id);
                if !wants_vote || membership.voter_ids().any(|voter| voter == id) {
                    continue;
                }
                let node = PeerNode {
                    name: member.keys.get(keys::NAME).cloned().unwrap_or_default(),
                    quic: addr.to_string(),
                };
                info!(%fence, node = id, name = %node.name, "adding a voter");
                let outcome = async {
                    raft.add_learner(id, node, true).await?;
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                }
                .await;
                if let Err(error) = outcome {
                    warn!(%fence, node = id, %error, "could not add a voter yet");
                }
            }
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }
}

/// The membership raft works with now (its latest, possibly uncommitted, config).
fn current_membership(raft: &Raft) -> Membership<NodeId, PeerNode> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}
