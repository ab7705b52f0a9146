//! `shoal-fuzz`: what the fuzz targets in `fuzz_targets/` check, and how they build inputs.
//!
//! Layout:
//! - [`bundle_check`]: bundle uploads through the node's store, and the invariants after each.
//! - [`archive`]: structured hostile tar.zst archives (the `bundle_archive` target).
//! - [`route_check`]: `shoal_proxy::route` against what each route promises.
//! - [`policy_check`]: `[policy]` tables and their rates, CIDR blocks and sizes.
//!
//! The `*_check` modules are also compiled into node/tests/fuzz_regressions.rs, which replays
//! fuzz/corpus and fuzz/regressions under `cargo test`; they use only crates that test has.

pub mod archive;
pub mod bundle_check;
pub mod policy_check;
pub mod route_check;
