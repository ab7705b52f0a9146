//! `shoal-sim`: deterministic simulation of whole Shoal clusters.
//!
//! Planned layout: a harness that runs several real nodes in one process on virtual time
//! with a simulated network, clock, container runtime and disk; workloads and fault
//! injection driven by one seed; one pure checker per invariant of DESIGN.md §8; and a
//! cheap event loop that drives the placement logic alone for a thousand nodes.
//!
//! It holds only this map until the control plane and data plane exist to simulate.
