//! `shoal-sim`: deterministic simulation of Shoal clusters on virtual time (DESIGN §8).
//!
//! Layout:
//! - `fleet`: the cheap event loop. It drives the real placement decision
//!   (`shoal_mesh::placement::place`) for a thousand nodes and ten thousand apps under skewed
//!   traffic, with modelled instance pools (single-flight starts, scale-out, idle pause and
//!   stop) and gossip that reaches each node a few rounds late; it reports instance and node
//!   load balance and cold starts. `shoal-sim balance` runs it.
//!
//! Planned beside it: a harness that runs several real nodes in one process on virtual time
//! with a simulated network, clock, container runtime and disk; workloads and fault injection
//! driven by one seed; and one pure checker per invariant of DESIGN §8 (`shoal-sim --seeds N`).

pub mod check;
pub mod cluster;
pub mod fleet;
pub mod trace;
