//! Host header, path and domain (`host \n path \n domain`) routed by `shoal_proxy::route`; see
//! `shoal_fuzz::route_check` for what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::route_check::{check_route, RouteInput};

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = check_route(&RouteInput::from_fuzz_input(data)) {
        panic!("route invariant broken: {violation}");
    }
});
