//! The control plane's consensus: openraft 0.9 among the voters.
//!
//! The raft log carries [`Command`]s; its state machine is the app table of [`crate::state`]
//! (applied by [`AppTable::apply`](crate::state::AppTable::apply) with the entry's log index).
//! Log, vote and state machine live in redb under `<data-dir>/raft/`. Raft RPCs travel over
//! the QUIC connections of `shoal_mesh::quic`.
//!
//! - [`log_store`]: the log and the vote ([`openraft::storage::RaftLogStorage`]).
//! - `format`: openraft is built with `single-term-leader` (one leader per term); data dirs
//!   written before are upgraded when opened.
//! - [`state_machine`]: the app table as [`openraft::storage::RaftStateMachine`], and the
//!   [`state_machine::Replica`] every node (voter or not) routes from.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Applied, Command};

mod format;
pub mod log_store;
pub mod network;
pub mod state_machine;

/// What openraft knows about a member: enough to dial it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The node's name (for people).
    pub name: String,
    /// The node's QUIC address, `IP:PORT`.
    pub quic: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.quic)
    }
}

openraft::declare_raft_types!(
    /// Shoal's raft types: commands in, [`Applied`] out, nodes identified by a u64 that their
    /// certificate carries.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = PeerNode,
);

/// Raft node id (also in each node's certificate).
pub type NodeId = u64;
/// The raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id (term, index): with `single-term-leader` a term names its one leader.
pub type LogId = openraft::LogId<NodeId>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;
/// A storage error.
pub type StorageError = openraft::StorageError<NodeId>;
