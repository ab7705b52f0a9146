//! Structured hostile archives (`..`, absolute names into the sandbox, links out, devices, huge
//! sizes, metadata headers, odd zstd frames) uploaded as bundles.
//!
//! Set SHOAL_FUZZ_WRITE_UPLOAD=<file> to also write the built tar.zst there, e.g. to keep a
//! crash as a regression case for node/tests/fuzz_regressions.rs (which has no `arbitrary`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::archive::HostileArchive;
use shoal_fuzz::bundle_check::Sandbox;

fuzz_target!(|archive: HostileArchive| {
    let sandbox = Sandbox::new().expect("sandbox");
    let upload = archive.build(sandbox.path());
    if let Some(out) = std::env::var_os("SHOAL_FUZZ_WRITE_UPLOAD") {
        // The regression format of bundle_unpack: a 0 byte, then the upload as it is.
        std::fs::write(out, [&[0u8][..], &upload].concat()).expect("upload written");
    }
    if let Err(violation) = sandbox.check(&upload) {
        panic!("bundle invariant broken: {violation}");
    }
});
