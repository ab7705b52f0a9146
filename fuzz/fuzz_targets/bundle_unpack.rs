//! Arbitrary bytes uploaded as a bundle (first byte: raw tar.zst, or a tar compressed by the
//! harness); see `shoal_fuzz::bundle_check` for what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::bundle_check::{upload_from_fuzz_input, Sandbox};

fuzz_target!(|data: &[u8]| {
    let sandbox = Sandbox::new().expect("sandbox");
    if let Err(violation) = sandbox.check(&upload_from_fuzz_input(data)) {
        panic!("bundle invariant broken: {violation}");
    }
});
