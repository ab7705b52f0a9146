use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

const RELEASE: u64 = 7;
const TARGET: u32 = 10;

fn worker(node: u64) -> WorkerLoad {
    WorkerLoad {
        node,
        live: true,
        runs_apps: true,
        in_flight: 0,
        instances: 0,
        cpus: 4,
        mem_available_mib: 8_192,
    }
}

fn loaded(node: u64, in_flight: u64, instances: u64) -> WorkerLoad {
    WorkerLoad {
        in_flight,
        instances,
        ..worker(node)
    }
}

fn workers(nodes: impl IntoIterator<Item = u64>) -> Vec<WorkerLoad> {
    nodes.into_iter().map(worker).collect()
}

fn warm(node: u64, in_flight: u64) -> Warm {
    Warm {
        node,
        release: RELEASE,
        in_flight,
    }
}

fn request(app: &str) -> Request<'_> {
    Request {
        app,
        release: RELEASE,
        concurrency_target: TARGET,
        max_holders: 0,
    }
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn app_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("app-{i}")).collect()
}

fn spawn_node(decision: Decision) -> u64 {
    match decision {
        Decision::Spawn { node } => node,
        other => panic!("expected a spawn, got {other:?}"),
    }
}

fn warm_node(decision: Decision) -> u64 {
    match decision {
        Decision::Warm { node } => node,
        other => panic!("expected a warm pick, got {other:?}"),
    }
}

/// The cold pick with every worker equally loaded: the plain rendezvous winner.
fn cold_pick_of(app: &str, nodes: &[u64]) -> u64 {
    let view = workers(nodes.iter().copied());
    spawn_node(place(&request(app), &view, &[], &mut rng(0)))
}

#[test]
fn same_inputs_and_seed_give_the_same_decision() {
    let view = workers(1..=6);
    let holders = [warm(1, 3), warm(2, 4), warm(3, 3), warm(5, 2)];
    let mut seen = BTreeSet::new();
    for seed in 0..200 {
        let first = place(&request("notebook"), &view, &holders, &mut rng(seed));
        let again = place(&request("notebook"), &view, &holders, &mut rng(seed));
        assert_eq!(first, again, "seed {seed}");
        seen.insert(warm_node(first));
    }
    // The seed does drive the draw: more than one holder comes out over 200 seeds.
    assert!(seen.len() > 1, "{seen:?}");
}

#[test]
fn input_order_does_not_change_the_decision() {
    let view = workers(1..=6);
    let holders = vec![warm(1, 3), warm(2, 4), warm(3, 3), warm(5, 2)];
    for seed in 0..200 {
        let expected = place(&request("notebook"), &view, &holders, &mut rng(seed));
        let mut shuffled_view = view.clone();
        let mut shuffled_holders = holders.clone();
        shuffled_view.shuffle(&mut rng(seed + 1_000));
        shuffled_holders.shuffle(&mut rng(seed + 2_000));
        let got = place(
            &request("notebook"),
            &shuffled_view,
            &shuffled_holders,
            &mut rng(seed),
        );
        assert_eq!(got, expected, "seed {seed}");
    }
}

#[test]
fn every_ingress_view_of_a_cold_app_picks_the_same_worker() {
    let mut jitter = rng(42);
    for app in app_names(300) {
        let mut picks = BTreeSet::new();
        for _ingress in 0..8 {
            // Each ingress sees slightly different load (gossip lag) and its own list order.
            let mut view: Vec<WorkerLoad> = (1..=5)
                .map(|node| {
                    loaded(
                        node,
                        10 + jitter.gen_range(0..=4),
                        2 + jitter.gen_range(0..=1),
                    )
                })
                .collect();
            view.shuffle(&mut jitter);
            let decision = place(&request(&app), &view, &[], &mut rng(jitter.gen()));
            picks.insert(spawn_node(decision));
        }
        assert_eq!(picks.len(), 1, "{app}: ingresses disagree: {picks:?}");
    }
}

/// A view where `favourite` carries `(in_flight, instances)` = `busy` and every other node `rest`.
fn favouring(nodes: &[u64], favourite: u64, busy: (u64, u64), rest: (u64, u64)) -> Vec<WorkerLoad> {
    nodes
        .iter()
        .map(|&node| {
            let (in_flight, instances) = if node == favourite { busy } else { rest };
            loaded(node, in_flight, instances)
        })
        .collect()
}

#[test]
fn small_load_differences_within_the_slack_do_not_change_the_cold_pick() {
    let nodes = [1, 2, 3, 4, 5];
    for app in app_names(200) {
        let favourite = cold_pick_of(&app, &nodes);
        // The favourite is the busiest, but within the slack (8) of the least loaded.
        let view = favouring(&nodes, favourite, (7, 1), (0, 0));
        assert_eq!(
            spawn_node(place(&request(&app), &view, &[], &mut rng(0))),
            favourite,
            "{app}"
        );
    }
    // The relative slack: at a minimum of 100 the slack is 25.
    for app in app_names(200) {
        let favourite = cold_pick_of(&app, &nodes);
        let view = favouring(&nodes, favourite, (120, 5), (100, 5));
        assert_eq!(
            spawn_node(place(&request(&app), &view, &[], &mut rng(0))),
            favourite,
            "{app}"
        );
    }
}

#[test]
fn a_heavily_loaded_worker_is_avoided_for_cold_spawns() {
    let nodes = [1, 2, 3, 4, 5];
    for app in app_names(200) {
        let favourite = cold_pick_of(&app, &nodes);
        let view = favouring(&nodes, favourite, (40, 4), (2, 1));
        let pick = spawn_node(place(&request(&app), &view, &[], &mut rng(0)));
        assert_ne!(
            pick, favourite,
            "{app}: the heavily loaded worker was picked"
        );
        let others: Vec<u64> = nodes.iter().copied().filter(|&n| n != favourite).collect();
        assert_eq!(pick, cold_pick_of(&app, &others), "{app}");
    }
}

#[test]
fn p2c_prefers_the_less_loaded_of_two_holders() {
    let view = workers(1..=4);
    let mut tie_wins = BTreeMap::<u64, u32>::new();
    for seed in 0..200 {
        let holders = [warm(3, 7), warm(2, 1)];
        assert_eq!(
            warm_node(place(&request("a"), &view, &holders, &mut rng(seed))),
            2
        );
        // Equal load: either, chosen by the draw, so no node is favoured.
        let tied = [warm(4, 5), warm(3, 5)];
        *tie_wins
            .entry(warm_node(place(
                &request("a"),
                &view,
                &tied,
                &mut rng(seed),
            )))
            .or_default() += 1;
    }
    assert_eq!(tie_wins.len(), 2, "{tie_wins:?}");
    assert!(tie_wins.values().all(|&wins| wins > 60), "{tie_wins:?}");
}

#[test]
fn p2c_never_picks_the_busiest_of_three_holders() {
    let view = workers(1..=5);
    let holders = [warm(1, 0), warm(2, 5), warm(3, 50)];
    let draws = 3_000;
    let mut counts = BTreeMap::<u64, u32>::new();
    for seed in 0..draws {
        let node = warm_node(place(&request("a"), &view, &holders, &mut rng(seed)));
        *counts.entry(node).or_default() += 1;
    }
    // Two distinct holders are drawn, so the one at 50 always meets a lighter one.
    assert_eq!(counts.get(&3), None, "{counts:?}");
    // The idle one wins every pair it is in (2 of 3 pairs), the middle one the rest.
    let idle = f64::from(counts[&1]) / f64::from(draws as u32);
    assert!(
        (0.6..0.73).contains(&idle),
        "idle holder share {idle}: {counts:?}"
    );
}

#[test]
fn a_single_holder_is_used_while_under_target() {
    let view = workers(1..=3);
    let decision = place(&request("a"), &view, &[warm(2, 9)], &mut rng(1));
    assert_eq!(decision, Decision::Warm { node: 2 });
}

#[test]
fn stale_releases_and_dead_or_non_app_nodes_are_ignored() {
    let mut view = workers(1..=5);
    view[1].live = false; // node 2
    view[2].runs_apps = false; // node 3
    let stale = Warm {
        node: 1,
        release: RELEASE - 1,
        in_flight: 0,
    };
    let holders = [stale, warm(2, 0), warm(3, 0), warm(4, 9), warm(9, 0)]; // 9: unknown node
    for seed in 0..100 {
        assert_eq!(
            place(&request("a"), &view, &holders, &mut rng(seed)),
            Decision::Warm { node: 4 }
        );
    }
    // With only ignored entries the app is cold, and the spawn avoids dead and non-app nodes.
    let ignored = [stale, warm(2, 0), warm(3, 0), warm(9, 0)];
    for app in app_names(100) {
        let node = spawn_node(place(&request(&app), &view, &ignored, &mut rng(0)));
        assert!([1, 4, 5].contains(&node), "{app}: spawned on {node}");
    }
}

#[test]
fn no_scale_out_once_max_holders_hold_the_app() {
    let view = workers(1..=5);
    let full = [warm(1, 10), warm(2, 12)];
    let capped = Request {
        max_holders: 2,
        ..request("a")
    };
    for seed in 0..50 {
        assert_eq!(
            place(&capped, &view, &full, &mut rng(seed)),
            Decision::Warm { node: 1 },
            "seed {seed}: two holders is the cap, so the less loaded one takes it"
        );
    }
    let room = Request {
        max_holders: 3,
        ..request("a")
    };
    assert!(matches!(
        place(&room, &view, &full, &mut rng(0)),
        Decision::ScaleOut { .. }
    ));
}

#[test]
fn all_holders_at_target_scale_out_to_a_non_holder() {
    let view = workers(1..=5);
    for app in app_names(100) {
        let holders = [warm(1, 10), warm(2, 12)];
        let decision = place(&request(&app), &view, &holders, &mut rng(3));
        assert_eq!(
            decision,
            Decision::ScaleOut {
                node: cold_pick_of(&app, &[3, 4, 5])
            },
            "{app}"
        );
        // One holder under target: no scale-out, and p2c still avoids the full one.
        let one_free = [warm(1, 10), warm(2, 9)];
        assert_eq!(
            place(&request(&app), &view, &one_free, &mut rng(3)),
            Decision::Warm { node: 2 }
        );
    }
    // Every eligible worker already holds one: the p2c pick anyway.
    let everywhere = [
        warm(1, 30),
        warm(2, 11),
        warm(3, 40),
        warm(4, 50),
        warm(5, 60),
    ];
    let mut dead_non_holder = view.clone();
    dead_non_holder.push(WorkerLoad {
        live: false,
        ..worker(6)
    });
    for seed in 0..50 {
        let decision = place(&request("a"), &dead_non_holder, &everywhere, &mut rng(seed));
        assert!(matches!(decision, Decision::Warm { .. }), "{decision:?}");
    }
}

#[test]
fn no_eligible_worker_gives_no_worker() {
    let holders = [warm(1, 0), warm(2, 0)];
    assert_eq!(
        place(&request("a"), &[], &[], &mut rng(0)),
        Decision::NoWorker
    );
    assert_eq!(
        place(&request("a"), &[], &holders, &mut rng(0)),
        Decision::NoWorker
    );
    let dead = [
        WorkerLoad {
            live: false,
            ..worker(1)
        },
        WorkerLoad {
            runs_apps: false,
            ..worker(2)
        },
    ];
    assert_eq!(
        place(&request("a"), &dead, &holders, &mut rng(0)),
        Decision::NoWorker
    );
    assert_eq!(
        place(&request("a"), &dead, &[], &mut rng(0)),
        Decision::NoWorker
    );
}

#[test]
fn parse_warm_accepts_the_gossip_form_and_rejects_garbage() {
    assert_eq!(
        parse_warm(4, "7,3"),
        Some(Warm {
            node: 4,
            release: 7,
            in_flight: 3
        })
    );
    assert_eq!(
        parse_warm(1, "18446744073709551615,0"),
        Some(Warm {
            node: 1,
            release: u64::MAX,
            in_flight: 0
        })
    );
    for garbage in [
        "",
        ",",
        "7",
        "7,",
        ",3",
        "7,3,1",
        " 7,3",
        "7, 3",
        "7,3\n",
        "+7,3",
        "-1,3",
        "7,-3",
        "x,3",
        "7,0x3",
        "7;3",
        "18446744073709551616,0",
        "7.0,3",
        "٧,3",
    ] {
        assert_eq!(parse_warm(1, garbage), None, "{garbage:?}");
    }
}

#[test]
fn rendezvous_score_is_pinned() {
    // FNV-1a 64 then splitmix64, computed independently; a change here moves every cold app.
    assert_eq!(rendezvous_score("", 0), 0x813f_0174_a236_7c13);
    assert_eq!(rendezvous_score("notebook", 1), 0x1dd9_c61a_a8ef_3af4);
    assert_eq!(rendezvous_score("notebook", 2), 0x3f8d_4028_c48d_cc6a);
    assert_eq!(
        rendezvous_score("sales-dashboard", 42),
        0xbcc1_117d_3763_91f2
    );
}

#[test]
fn rendezvous_spreads_cold_apps_over_nodes() {
    let nodes = [1, 2, 3, 4, 5];
    let mut counts = BTreeMap::<u64, u32>::new();
    let apps = app_names(1_000);
    for app in &apps {
        *counts.entry(cold_pick_of(app, &nodes)).or_default() += 1;
    }
    for node in nodes {
        let share = f64::from(counts.get(&node).copied().unwrap_or(0)) / apps.len() as f64;
        assert!(
            (0.10..=0.30).contains(&share),
            "node {node} got {share}: {counts:?}"
        );
    }
}

#[test]
fn removing_a_worker_moves_only_its_cold_apps() {
    let all = [1, 2, 3, 4, 5];
    let without_three = [1, 2, 4, 5];
    for app in app_names(500) {
        let before = cold_pick_of(&app, &all);
        let after = cold_pick_of(&app, &without_three);
        if before != 3 {
            assert_eq!(after, before, "{app} moved although its worker stayed");
        }
    }
}

/// DESIGN §10: on 1,000 workers the busiest warm instance carries at most 1.25x the mean.
/// 200 apps with 5 holders each, requests round-robin over apps, each request in flight for
/// the next 1,000 requests: about 1 in flight per holder, the light load where most p2c draws
/// tie (when ties went to the lower node id, this gave 1.38x to 1.42x).
#[test]
fn a_thousand_workers_keep_the_busiest_holder_near_the_mean() {
    const WORKERS: u64 = 1_000;
    const APPS: usize = 200;
    const HOLDERS: usize = 5;
    const REQUESTS: usize = 50_000;
    const LIFETIME: usize = 1_000;
    let mut rng = rng(1_000);
    let view = workers(0..WORKERS);
    let names = app_names(APPS);
    let all_nodes: Vec<u64> = (0..WORKERS).collect();
    let mut holders: Vec<Vec<Warm>> = (0..APPS)
        .map(|_| {
            all_nodes
                .choose_multiple(&mut rng, HOLDERS)
                .map(|&node| warm(node, 0))
                .collect()
        })
        .collect();
    let mut served = BTreeMap::<(usize, u64), u32>::new();
    let mut in_flight = VecDeque::new();
    for step in 0..REQUESTS {
        if in_flight.len() == LIFETIME {
            let (app, node): (usize, u64) = in_flight.pop_front().unwrap();
            holders[app]
                .iter_mut()
                .find(|h| h.node == node)
                .unwrap()
                .in_flight -= 1;
        }
        let app = step % APPS;
        let node = warm_node(place(&request(&names[app]), &view, &holders[app], &mut rng));
        holders[app]
            .iter_mut()
            .find(|h| h.node == node)
            .unwrap()
            .in_flight += 1;
        *served.entry((app, node)).or_default() += 1;
        in_flight.push_back((app, node));
    }
    let mean = REQUESTS as f64 / (APPS * HOLDERS) as f64;
    let busiest = f64::from(*served.values().max().unwrap());
    assert!(
        busiest / mean <= 1.25,
        "busiest holder {busiest} vs mean {mean}"
    );
}
