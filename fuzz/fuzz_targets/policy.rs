//! `[policy]` tables of shoal.toml (UTF-8 TOML), and the rates, CIDR blocks and sizes in them;
//! see `shoal_fuzz::policy_check` for what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::policy_check::check_policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(violation) = check_policy(text) {
        panic!("policy invariant broken: {violation}");
    }
});
