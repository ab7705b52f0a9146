//! `shoal-mesh`: the fabric that turns Shoal nodes into one cluster.
//!
//! Layout:
//! - `gossip`: chitchat membership and load over a sealed UDP transport: who is live, their
//!   keys, graceful leave, a change counter.
//! - `seal`: the gossip key, the sealed datagram envelope (AEAD, freshness, replay cache) and
//!   the chitchat transport that seals every datagram.
//! - `link`: the seam every node-to-node stream goes through ([`link::PeerLink`],
//!   [`link::StreamHandler`]): QUIC in production, in-memory pipes in the simulator.
//! - `quic`: the quinn endpoint: the pool of mutually authenticated peer connections, framed
//!   calls, and the one-request join protocol for nodes without a certificate yet.
//! - `stream_http`: HTTP/1.1 over one QUIC bidirectional stream, one exchange per stream
//!   (streamed bodies, SSE, upgrades): the forwarding hop between nodes.
//! - `pki`: the cluster CA, node certificates, the mutual-TLS configs and join tokens.
//! - `placement`: the pure decision that picks the worker for a service request: power of two
//!   choices over warm instances, rendezvous hashing over the least-loaded workers when cold.
//!
//! openraft's network is a thin layer over [`link::PeerLink::call`] and lives beside the raft
//! type config it implements, in the node crate (`shoal::raft::network`).

pub mod gossip;
pub mod link;
pub mod pki;
pub mod placement;
pub mod quic;
pub mod seal;
pub mod stream_http;
