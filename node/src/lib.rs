//! `shoal`: the node binary's library. One binary runs every role: ingress, worker, voter,
//! and the client commands that talk to a node's admin API.
//!
//! Layout:
//! - [`cli`]: the command line of DESIGN.md §9 (clap).
//! - [`node`]: a running node: data dir, listeners, routing snapshot, graceful shutdown.
//! - [`api`]: the admin API under `/v1/` and `/metrics`.
//! - [`client`]: `shoal deploy`, `shoal apps`, `shoal rm` against the admin API.
//! - [`manifest`]: `shoal.toml`, from raw to validated [`manifest::AppSpec`].
//! - [`state`]: the app table as a deterministic state machine over commands.
//! - [`store`]: the app table persisted in redb.
//! - [`bundle`]: packing bundles, and the node's content-addressed, hostile-input-proof store.
//! - [`tokens`]: the admin token.

pub mod api;
pub mod bundle;
pub mod cli;
pub mod client;
pub mod manifest;
pub mod node;
pub mod state;
pub mod store;
pub mod tokens;
