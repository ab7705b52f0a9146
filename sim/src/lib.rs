//! `shoal-sim`: deterministic simulation of Shoal clusters on virtual time (DESIGN §8).
//!
//! Layout:
//! - `fleet`: the cheap event loop. It drives the real placement decision
//!   (`shoal_mesh::placement::place`) for a thousand nodes and ten thousand apps under skewed
//!   traffic, with modelled instance pools (single-flight starts, scale-out, idle pause and
//!   stop) and gossip that reaches each node a few rounds late; it reports instance and node
//!   load balance and cold starts. `shoal-sim balance` runs it.
//!
//! - `cluster`: the whole-cluster harness. Several real nodes' control planes (raft, gossip, the
//!   orchestrator and its cron duty) in one process on virtual time, over a simulated network,
//!   with faults and a workload drawn from one seed. `shoal-sim --seeds N` runs it.
//! - `check`: one pure checker per invariant of DESIGN §8, fed the trace after every step.
//! - `trace`: the events a run records; their text hashes to the run's trace hash.

pub mod check;
pub mod cluster;
pub mod fleet;
pub mod trace;
