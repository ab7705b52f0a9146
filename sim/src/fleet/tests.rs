//! Whole-loop tests: determinism, single-flight across ingresses, and the balance target.

use super::clock::{MILLISECOND, SECOND};
use super::*;

/// A small fleet, fast enough for a debug-build unit test.
fn small(seed: u64) -> Config {
    Config {
        nodes: 50,
        apps: 500,
        duration: 20 * SECOND,
        seed,
        rate: 10_000.0,
        ..Config::default()
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let config = Config {
        duration: 4 * SECOND,
        ..small(11)
    };
    let first = run(&config).unwrap();
    let again = run(&config).unwrap();
    assert_eq!(first.trace_hash, again.trace_hash);
    assert_eq!(first, again, "every figure, not only the hash");
    assert!(first.requests.completed > 30_000, "{:?}", first.requests);
    let other = run(&Config { seed: 12, ..config }).unwrap();
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "the seed drives the run"
    );
}

#[test]
fn k_simultaneous_requests_from_every_ingress_start_one_instance() {
    let config = Config {
        nodes: 20,
        apps: 10,
        rate: 0.0,
        concurrency_target: 1_000,
        ..Config::default()
    };
    let mut world = World::new(config);
    let app = 3;
    // 100 requests in the same microsecond, five at each of the 20 ingresses: no gossip has
    // shown the app warm anywhere, so each ingress runs the cold rule on its own view.
    for k in 0..100u32 {
        world.inject(SECOND, k % 20, app);
    }
    world.run_until(3 * SECOND);
    assert_eq!(world.cold_starts(app), 1, "one start, not one per ingress");
    assert_eq!(world.warm_nodes(app).len(), 1);
    assert_eq!(world.completed(), 100, "all of them answered");
    // Later requests reuse it.
    for k in 0..20u32 {
        world.inject(4 * SECOND + u64::from(k) * MILLISECOND, k, app);
    }
    world.run_until(6 * SECOND);
    assert_eq!(world.cold_starts(app), 1);
    assert_eq!(world.completed(), 120);
}

#[test]
fn a_hot_app_scales_out_over_several_nodes() {
    let config = Config {
        nodes: 20,
        apps: 10,
        rate: 0.0,
        ..Config::default()
    };
    let mut world = World::new(config);
    // 2,000 requests per second to one app for 5 s: about 40 in flight, target 10.
    for k in 0..10_000u64 {
        world.inject(SECOND + k * 500, (k % 20) as u32, 0);
    }
    world.run_until(8 * SECOND);
    let holders = world.warm_nodes(0).len();
    assert!((3..=20).contains(&holders), "{holders} holders");
    assert_eq!(world.completed(), 10_000);
}

/// DESIGN §10's balance target on a small fleet: each hot app's requests over its instances
/// (what a user of the app feels), over the nodes holding it per instance (what `place`
/// spreads, from gossip a few rounds late) and within one node (what the pool spreads). Measured
/// 1.17x, 1.17x and 1.10x; before placement weighed holders per instance and the pool spread
/// its ties, the instances were at 1.92x.
#[test]
fn hot_apps_share_their_load_within_a_quarter_of_the_mean() {
    let report = run(&small(1)).unwrap();
    let balances = [
        ("instances", &report.instance_balance_hot),
        ("holders", &report.holder_balance_hot),
        ("within a holder", &report.within_holder_balance_hot),
    ];
    for (what, balance) in balances {
        // The figure must rest on real multi-instance windows, or the test could not fail.
        assert!(balance.app_windows >= 9, "{what}: {balance:?}");
        assert!(balance.instance_windows >= 20, "{what}: {balance:?}");
        assert!(
            balance.max_over_mean <= 1.25,
            "{what}: busiest at {:.3}x its app's mean: {balance:?}",
            balance.max_over_mean
        );
    }
}

#[test]
fn bad_parameters_are_refused() {
    for config in [
        Config {
            nodes: 0,
            ..Config::default()
        },
        Config {
            zipf_exponent: f64::NAN,
            ..Config::default()
        },
        Config {
            scale_max: 0,
            ..Config::default()
        },
        Config {
            gossip_lag: GossipLag::Epidemic { fanout: 0 },
            ..Config::default()
        },
    ] {
        assert!(run(&config).is_err(), "{config:?}");
    }
}
