//! Replays the fuzz seeds and every kept crash through the fuzz targets' own invariant checks,
//! so `cargo test` on stable keeps them as regression cases without cargo-fuzz.
//!
//! Inputs: fuzz/corpus/<target>/ (seeds) and fuzz/regressions/<target>/ (crashes found by
//! scripts/fuzz.sh, kept once the bug is fixed). The checks are compiled from fuzz/src, the
//! same files the fuzz targets use.

use std::fs;
use std::path::{Path, PathBuf};

// Shared with the fuzz crate, which uses parts this test does not.
#[allow(dead_code)]
#[path = "../../fuzz/src/bundle_check.rs"]
mod bundle_check;
#[allow(dead_code)]
#[path = "../../fuzz/src/policy_check.rs"]
mod policy_check;
#[allow(dead_code)]
#[path = "../../fuzz/src/route_check.rs"]
mod route_check;

use bundle_check::{upload_from_fuzz_input, Sandbox, Verdict};
use policy_check::check_policy;
use route_check::{check_route, RouteInput};

/// Every input kept for `target`, seeds first, each with its path.
fn kept_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir.join(kind).join(target);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|entry| entry.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).unwrap();
            inputs.push((path, data));
        }
    }
    inputs
}

fn name_of(path: &Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

#[test]
fn bundle_inputs_keep_the_unpacking_invariants() {
    let inputs = kept_inputs("bundle_unpack");
    assert!(
        inputs
            .iter()
            .any(|(path, _)| name_of(path).starts_with("seed-valid-")),
        "no bundle seeds found: {inputs:?}"
    );
    let mut failures = Vec::new();
    for (path, data) in &inputs {
        let sandbox = Sandbox::new().unwrap();
        let name = name_of(path);
        match sandbox.check(&upload_from_fuzz_input(data)) {
            Err(violation) => failures.push(format!("{}: {violation}", path.display())),
            // Seeds say what they are: a valid bundle, or a hostile one.
            Ok(Verdict::Refused(reason)) if name.starts_with("seed-valid-") => {
                failures.push(format!("{}: refused: {reason}", path.display()))
            }
            Ok(Verdict::Accepted { .. })
                if name.starts_with("seed-") && !name.starts_with("seed-valid-") =>
            {
                failures.push(format!("{}: hostile seed accepted", path.display()))
            }
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn route_inputs_keep_the_routing_invariants() {
    let inputs = kept_inputs("route");
    assert!(!inputs.is_empty(), "no route seeds found");
    let failures: Vec<String> = inputs
        .iter()
        .filter_map(|(path, data)| {
            let violation = check_route(&RouteInput::from_fuzz_input(data)).err()?;
            Some(format!("{}: {violation}", path.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn policy_inputs_keep_the_policy_invariants() {
    let inputs = kept_inputs("policy");
    assert!(!inputs.is_empty(), "no policy seeds found");
    let failures: Vec<String> = inputs
        .iter()
        .filter_map(|(path, data)| {
            // The fuzz target skips input that is not UTF-8 too.
            let text = std::str::from_utf8(data).ok()?;
            let violation = check_policy(text).err()?;
            Some(format!("{}: {violation}", path.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
