//! `shoal-mesh`: the fabric that turns Shoal nodes into one cluster.
//!
//! Planned layout (each module arrives with the issue that needs it):
//! - `gossip`: chitchat membership and load over a sealed UDP transport.
//! - `quic`: the quinn endpoint and the pool of mutually authenticated peer connections.
//! - `pki`: the cluster CA, node certificates, the mutual-TLS configs and join tokens.
//! - `raft`: openraft's network over QUIC.
//! - `placement`: the pure state machine that picks the worker for a request.
//!
//! Today the node runs as a single-node cluster and only `pki` has arrived.

pub mod pki;
