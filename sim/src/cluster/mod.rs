//! The whole-cluster harness: several real nodes (their control plane: raft, gossip, the
//! orchestrator and its cron duty) in one process, each on its own paused tokio runtime,
//! stepped in lockstep over a simulated network, with faults and a workload drawn from a seed.
//!
//! - `net`: the broker every cross-node message goes through (latency, loss, partitions).
//! - `gossip_net`: chitchat datagrams over it; `link`: node-to-node streams over it.
//! - `disk`: raft's redb files in memory; a crash loses what was not synced.
//! - `host`: one node, its runtime and data dir; crash and restart; its data plane (the real
//!   worker and placement) on `runtime`'s in-memory instances.
//! - `run`: one seed: scenario, loop, observations, checkers, trace hash.

pub mod disk;
pub mod gossip_net;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, going on past a poisoned lock: a panic elsewhere already fails the run, and
/// the state it guards (queues, registries) stays usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub mod host;
pub mod link;
pub mod net;
pub mod run;
pub mod runtime;

#[cfg(test)]
#[path = "link_tests.rs"]
mod link_tests;
#[cfg(test)]
#[path = "net_tests.rs"]
mod net_tests;
