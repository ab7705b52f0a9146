//! `shoal`: the node binary's library. One binary runs every role: ingress, worker, voter,
//! and the client commands that talk to a node's admin API.
//!
//! Layout:
//! - [`cli`]: the command line of DESIGN.md §9 (clap).
//! - [`node`]: a running node: data dir, listeners, routing snapshot, graceful shutdown.
//! - [`api`]: the admin API under `/v1/` and `/metrics`.
//! - [`client`]: `shoal deploy`, `shoal apps`, `shoal rm` against the admin API.
//! - [`instances`]: the instances of one service app on one worker, as a pure state machine.
//! - [`manifest`]: `shoal.toml`, from raw to validated [`manifest::AppSpec`].
//! - [`state`]: the app table as a deterministic state machine over commands.
//! - [`cluster`]: the control plane: identity, join, QUIC, gossip, raft, the orchestrator.
//! - [`raft`]: openraft among the voters: log, state machine (the app table), network, types.
//! - [`bundle`]: packing bundles, and the node's content-addressed, hostile-input-proof store.
//! - [`runtime`]: container runtimes (Docker) and the shared runtime image.
//! - [`tokens`]: the admin token.
//! - [`worker`]: runs service apps: one actor per app drives its instance pool on the runtime.

pub mod api;
pub mod bundle;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cron;
pub mod dataplane;
pub mod instances;
pub mod manifest;
pub mod node;
pub mod planted;
pub mod raft;
pub mod runs;
pub mod runtime;
pub mod state;
pub mod tokens;
pub mod worker;
