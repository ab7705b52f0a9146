//! Tests of the simulated network ([`super::net`]) and of real chitchat gossip over it
//! ([`super::gossip_net`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal_mesh::gossip::{Gossip, GossipConfig, GossipKey, Member};
use tokio::runtime::Runtime;

use super::gossip_net::{GossipNet, GOSSIP_PORT};
use super::net::{Class, Faults, Net, NetStats, NodeId};

// ---- the broker ----

/// One closure run: `(time, from, to, sequence number given by the test, arrived)`.
type Entry = (u64, NodeId, NodeId, u64, bool);

/// A network with the closures' runs recorded in order.
struct Recorder {
    net: Net,
    log: Arc<Mutex<Vec<Entry>>>,
}

impl Recorder {
    fn new(seed: u64, latency_ms: (u64, u64), datagram_loss: f64) -> Self {
        let faults = Faults {
            latency_ms,
            datagram_loss,
        };
        Self {
            net: Net::new(seed, faults),
            log: Arc::default(),
        }
    }

    fn send(&self, from: NodeId, to: NodeId, class: Class, sequence: u64) {
        let net = self.net.clone();
        let log = self.log.clone();
        let deliver = move |arrived: bool| {
            // Reading the clock from inside proves the closure runs outside the Net's lock.
            let entry = (net.now_ms(), from, to, sequence, arrived);
            log.lock().unwrap().push(entry);
        };
        self.net.send(from, to, class, Box::new(deliver));
    }

    fn log(&self) -> Vec<Entry> {
        self.log.lock().unwrap().clone()
    }

    /// The sequence numbers that arrived, in arrival order.
    fn arrived(&self) -> Vec<u64> {
        let log = self.log();
        log.iter()
            .filter(|entry| entry.4)
            .map(|entry| entry.3)
            .collect()
    }

    fn lost(&self) -> Vec<u64> {
        let log = self.log();
        log.iter()
            .filter(|entry| !entry.4)
            .map(|entry| entry.3)
            .collect()
    }
}

/// Sends 200 messages of `class` from 1 to 2, four per ms, under 1-50 ms of latency, and
/// returns what arrived, in order.
fn burst(class: Class) -> Vec<u64> {
    let recorder = Recorder::new(7, (1, 50), 0.0);
    for sequence in 0..200 {
        if sequence % 4 == 0 {
            recorder.net.advance_to(sequence / 4);
        }
        recorder.send(1, 2, class, sequence);
    }
    recorder.net.advance_to(1_000);
    recorder.arrived()
}

#[test]
fn stream_messages_keep_their_order_while_datagrams_are_reordered() {
    let in_order: Vec<u64> = (0..200).collect();
    assert_eq!(burst(Class::Stream), in_order);
    let datagrams = burst(Class::Datagram);
    assert_eq!(datagrams.len(), 200, "no loss configured");
    assert_ne!(
        datagrams, in_order,
        "random latency should reorder datagrams"
    );
}

#[test]
fn stream_messages_wait_behind_a_slow_predecessor_only_on_their_own_pair() {
    let recorder = Recorder::new(1, (10, 10), 0.0);
    recorder.net.set_slow(2, 100);
    recorder.send(1, 2, Class::Stream, 0);
    recorder.net.set_slow(2, 0);
    recorder.send(1, 2, Class::Stream, 1);
    recorder.send(1, 3, Class::Stream, 2);
    recorder.net.advance_to(1_000);
    let log = recorder.log();
    assert_eq!(
        log,
        vec![
            (1_000, 1, 3, 2, true),
            (1_000, 1, 2, 0, true),
            (1_000, 1, 2, 1, true)
        ]
    );
}

#[test]
fn datagram_loss_matches_the_configured_rate_and_streams_are_never_lost() {
    let recorder = Recorder::new(42, (1, 5), 0.3);
    for sequence in 0..10_000 {
        recorder.send(1, 2, Class::Datagram, sequence);
    }
    for sequence in 10_000..11_000 {
        recorder.send(1, 2, Class::Stream, sequence);
    }
    recorder.net.advance_to(10);
    let stats = recorder.net.stats();
    assert_eq!(stats.delivered + stats.lost, 11_000);
    assert!(
        (2_800..=3_200).contains(&stats.lost),
        "{} of 10000 datagrams lost at a 30% rate",
        stats.lost
    );
    assert!(recorder.lost().iter().all(|sequence| *sequence < 10_000));
}

#[test]
fn a_one_way_block_loses_only_that_direction_until_healed() {
    let recorder = Recorder::new(3, (5, 5), 0.0);
    recorder.net.block(1, 2);
    assert!(recorder.net.blocked(1, 2));
    assert!(!recorder.net.blocked(2, 1));
    recorder.send(1, 2, Class::Stream, 0);
    recorder.send(2, 1, Class::Stream, 1);
    recorder.send(1, 3, Class::Datagram, 2);
    recorder.net.advance_to(5);
    assert_eq!(recorder.lost(), vec![0]);
    assert_eq!(recorder.arrived(), vec![1, 2]);

    recorder.net.heal();
    assert!(!recorder.net.blocked(1, 2));
    recorder.send(1, 2, Class::Stream, 3);
    recorder.net.advance_to(10);
    assert_eq!(recorder.arrived(), vec![1, 2, 3]);
}

#[test]
fn a_block_raised_while_a_message_is_in_flight_loses_it() {
    let recorder = Recorder::new(3, (5, 5), 0.0);
    recorder.send(1, 2, Class::Stream, 0);
    recorder.net.advance_to(2);
    recorder.net.block(1, 2);
    recorder.net.advance_to(5);
    assert_eq!(recorder.log(), vec![(5, 1, 2, 0, false)]);
    assert_eq!(
        recorder.net.stats(),
        NetStats {
            delivered: 0,
            lost: 1
        }
    );
}

#[test]
fn a_down_node_loses_everything_to_and_from_it_until_it_is_back() {
    let recorder = Recorder::new(4, (5, 5), 0.0);
    recorder.net.set_down(2, true);
    recorder.send(1, 2, Class::Stream, 0);
    recorder.send(2, 1, Class::Datagram, 1);
    recorder.send(1, 3, Class::Stream, 2);
    recorder.net.advance_to(5);
    assert_eq!(recorder.lost(), vec![0, 1]);
    assert_eq!(recorder.arrived(), vec![2]);

    recorder.net.set_down(2, false);
    recorder.send(1, 2, Class::Stream, 3);
    recorder.net.advance_to(7);
    // In flight when the node goes down again: lost at delivery time.
    recorder.net.set_down(2, true);
    recorder.net.advance_to(10);
    assert_eq!(recorder.lost(), vec![0, 1, 3]);

    recorder.net.set_down(2, false);
    recorder.send(2, 1, Class::Stream, 4);
    recorder.net.advance_to(15);
    assert_eq!(recorder.arrived(), vec![2, 4]);

    // Sent before its sender went down: still arrives, as a packet in flight would.
    recorder.send(2, 1, Class::Stream, 5);
    recorder.net.advance_to(17);
    recorder.net.set_down(2, true);
    recorder.net.advance_to(25);
    assert_eq!(recorder.arrived(), vec![2, 4, 5]);
}

#[test]
fn a_timer_fires_at_its_time_whatever_the_faults() {
    let net = Net::new(
        6,
        Faults {
            latency_ms: (1, 1),
            datagram_loss: 1.0,
        },
    );
    let fired = Arc::new(Mutex::new(Vec::new()));
    let log = fired.clone();
    net.set_down(1, true);
    net.after(
        30,
        Box::new(move |arrived| log.lock().unwrap().push(arrived)),
    );
    net.advance_to(29);
    assert!(fired.lock().unwrap().is_empty());
    net.advance_to(30);
    assert_eq!(*fired.lock().unwrap(), vec![true]);
}

#[test]
fn a_slow_node_adds_its_latency_both_ways_until_cleared() {
    let recorder = Recorder::new(5, (10, 10), 0.0);
    recorder.net.set_slow(2, 100);
    recorder.send(1, 2, Class::Datagram, 0);
    recorder.send(2, 1, Class::Stream, 1);
    recorder.send(1, 3, Class::Datagram, 2);
    for now_ms in 1..=110 {
        recorder.net.advance_to(now_ms);
    }
    recorder.net.set_slow(2, 0);
    recorder.send(1, 2, Class::Datagram, 3);
    recorder.net.advance_to(200);
    assert_eq!(
        recorder.log(),
        vec![
            (10, 1, 3, 2, true),
            (110, 1, 2, 0, true),
            (110, 2, 1, 1, true),
            (200, 1, 2, 3, true)
        ]
    );
}

#[test]
fn messages_sent_by_a_delivery_and_already_due_run_in_the_same_advance() {
    let net = Net::new(
        6,
        Faults {
            latency_ms: (0, 0),
            datagram_loss: 0.0,
        },
    );
    let hops = Arc::new(Mutex::new(Vec::new()));
    fn relay(net: Net, hops: Arc<Mutex<Vec<u64>>>, from: NodeId, left: u32) {
        let inner = net.clone();
        let deliver = move |arrived: bool| {
            assert!(arrived);
            hops.lock().unwrap().push(inner.now_ms());
            if left > 0 {
                relay(inner, hops, 3 - from, left - 1);
            }
        };
        net.send(from, 3 - from, Class::Stream, Box::new(deliver));
    }
    relay(net.clone(), hops.clone(), 1, 4);
    net.advance_to(3);
    assert_eq!(*hops.lock().unwrap(), vec![3; 5]);
    net.advance_to(1);
    assert_eq!(net.now_ms(), 3, "time never goes backwards");
}

/// A seeded mixed workload with a partition and a crash; returns the delivery log.
fn mixed_run(seed: u64) -> Vec<Entry> {
    let recorder = Recorder::new(seed, (1, 40), 0.2);
    let mut sequence = 0;
    for now_ms in 0..300 {
        recorder.net.advance_to(now_ms);
        match now_ms {
            100 => recorder.net.block(1, 3),
            150 => recorder.net.set_down(2, true),
            200 => {
                recorder.net.heal();
                recorder.net.set_down(2, false);
            }
            _ => {}
        }
        for (from, to) in [(1, 2), (2, 3), (3, 1), (1, 3)] {
            let class = if sequence % 3 == 0 {
                Class::Stream
            } else {
                Class::Datagram
            };
            recorder.send(from, to, class, sequence);
            sequence += 1;
        }
    }
    recorder.net.advance_to(1_000);
    recorder.log()
}

#[test]
fn the_same_seed_gives_the_same_deliveries_in_the_same_order() {
    let first = mixed_run(11);
    assert_eq!(first.len(), 1_200);
    assert!(first.iter().any(|entry| entry.4) && first.iter().any(|entry| !entry.4));
    assert_eq!(mixed_run(11), first);
    assert_ne!(mixed_run(12), first);
}

#[test]
fn fake_gossip_addresses_are_distinct_and_map_back_to_their_node() {
    let gossip_net = GossipNet::new(Net::new(
        0,
        Faults {
            latency_ms: (1, 1),
            datagram_loss: 0.0,
        },
    ));
    let nodes = [0, 1, 2, 0xdead_beef, u64::MAX];
    let addrs: BTreeSet<_> = nodes.iter().map(|node| gossip_net.addr(*node)).collect();
    assert_eq!(addrs.len(), nodes.len());
    for node in nodes {
        assert_eq!(gossip_net.node(gossip_net.addr(node)), Some(node));
    }
    let mut other_port = gossip_net.addr(7);
    other_port.set_port(GOSSIP_PORT + 1);
    assert_eq!(gossip_net.node(other_port), None);
    assert_eq!(gossip_net.node("10.0.0.7:7946".parse().unwrap()), None);
}

// ---- real chitchat over the simulated network ----

const INTERVAL: Duration = Duration::from_millis(200);
const DEAD_AFTER: Duration = Duration::from_secs(2);
const NODES: [NodeId; 3] = [1, 2, 3];

/// Three real gossip nodes on one paused runtime, over one `Net`, stepped 1 ms at a time.
struct GossipCluster {
    runtime: Runtime,
    net: Net,
    gossips: Vec<Gossip>,
    now_ms: u64,
}

impl GossipCluster {
    fn start(datagram_loss: f64) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let faults = Faults {
            latency_ms: (1, 20),
            datagram_loss,
        };
        let net = Net::new(99, faults);
        let gossip_net = GossipNet::new(net.clone());
        let key = GossipKey::generate(&mut StdRng::seed_from_u64(1));
        let gossips = NODES
            .iter()
            .map(|&node| {
                let addr = gossip_net.addr(node);
                let mut config = GossipConfig::for_test(&format!("node-{node}"), key.clone());
                config.listen = addr;
                config.advertise = addr;
                config.seeds = NODES
                    .iter()
                    .filter(|&&other| other != node)
                    .map(|&other| gossip_net.addr(other).to_string())
                    .collect();
                config.interval = INTERVAL;
                config.dead_after = DEAD_AFTER;
                let transport = gossip_net.transport(node);
                runtime
                    .block_on(Gossip::start_with_transport(config, &*transport, addr))
                    .unwrap()
            })
            .collect();
        Self {
            runtime,
            net,
            gossips,
            now_ms: 0,
        }
    }

    /// Steps until `done` holds for what every node sees (checked every 50 ms), at most
    /// `limit`; returns how long it took in ms.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&[Vec<Member>]) -> bool) -> u64 {
        let start_ms = self.now_ms;
        let limit_ms = u64::try_from(limit.as_millis()).unwrap();
        loop {
            let elapsed = self.now_ms - start_ms;
            if elapsed.is_multiple_of(50) && done(&self.views()) {
                return elapsed;
            }
            assert!(
                elapsed < limit_ms,
                "not reached within {limit:?}; the views are {:#?}",
                self.views()
            );
            self.step();
        }
    }

    /// Steps `duration`, checking `always` every 50 ms.
    fn run_for(&mut self, duration: Duration, always: impl Fn(&[Vec<Member>]) -> bool) {
        let end_ms = self.now_ms + u64::try_from(duration.as_millis()).unwrap();
        while self.now_ms < end_ms {
            if self.now_ms.is_multiple_of(50) {
                let views = self.views();
                assert!(
                    always(&views),
                    "at {} ms the views are {views:#?}",
                    self.now_ms
                );
            }
            self.step();
        }
    }

    fn step(&mut self) {
        self.now_ms += 1;
        self.net.advance_to(self.now_ms);
        // The sleep is made inside the runtime: it needs the runtime's clock.
        self.runtime
            .block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
    }

    /// What each node sees, in the order of `NODES`.
    fn views(&self) -> Vec<Vec<Member>> {
        self.runtime.block_on(async {
            let mut views = Vec::new();
            for gossip in &self.gossips {
                views.push(gossip.members().await);
            }
            views
        })
    }

    fn set(&self, node: NodeId, key: &str, value: &str) {
        let gossip = &self.gossips[index(node)];
        self.runtime.block_on(gossip.set(key, value));
    }
}

fn index(node: NodeId) -> usize {
    NODES.iter().position(|&known| known == node).unwrap()
}

/// Whether `observer` sees `node` live (`Some(true)`), dead (`Some(false)`) or not at all.
fn sees(views: &[Vec<Member>], observer: NodeId, node: NodeId) -> Option<bool> {
    let name = format!("node-{node}");
    views[index(observer)]
        .iter()
        .find(|member| member.node_id == name)
        .map(|member| member.live)
}

fn all_live(views: &[Vec<Member>]) -> bool {
    NODES.iter().all(|&observer| {
        NODES
            .iter()
            .all(|&node| sees(views, observer, node) == Some(true))
    })
}

/// Whether node 3 and the others see each other dead, and 1 and 2 still see each other.
fn third_cut_off(views: &[Vec<Member>]) -> bool {
    [1, 2].iter().all(|&node| {
        sees(views, node, 3) == Some(false)
            && sees(views, 3, node) == Some(false)
            && sees(views, node, 3 - node) == Some(true)
    })
}

fn cut_third_off(net: &Net) {
    for node in [1, 2] {
        net.block(node, 3);
        net.block(3, node);
    }
}

#[test]
fn gossip_over_the_sim_net_detects_partitions_and_crashes_and_spreads_keys() {
    let mut cluster = GossipCluster::start(0.0);
    let joined_ms = cluster.run_until(Duration::from_secs(3), all_live);
    assert!(cluster
        .gossips
        .iter()
        .all(|gossip| gossip.stats().snapshot() == Default::default()));

    cluster.set(1, "role", "web");
    cluster.run_until(Duration::from_secs(1), |views| {
        NODES.iter().all(|&observer| {
            views[index(observer)]
                .iter()
                .find(|member| member.node_id == "node-1")
                .is_some_and(|member| member.keys.get("role").map(String::as_str) == Some("web"))
        })
    });

    cut_third_off(&cluster.net);
    let partition_ms = cluster.run_until(DEAD_AFTER + Duration::from_secs(1), third_cut_off);
    assert!(
        partition_ms >= 1_000,
        "node 3 was declared dead after only {partition_ms} ms of silence"
    );

    cluster.net.heal();
    let heal_ms = cluster.run_until(Duration::from_secs(5), all_live);

    cluster.net.set_down(2, true);
    let crash_ms = cluster.run_until(DEAD_AFTER + Duration::from_secs(1), |views| {
        [1, 3]
            .iter()
            .all(|&observer| sees(views, observer, 2) == Some(false))
    });
    cluster.net.set_down(2, false);
    let back_ms = cluster.run_until(Duration::from_secs(5), all_live);
    eprintln!(
        "joined in {joined_ms} ms, partition seen in {partition_ms} ms, healed in {heal_ms} ms, \
         crash seen in {crash_ms} ms, back in {back_ms} ms; {:?}",
        cluster.net.stats()
    );
}

#[test]
fn gossip_over_a_lossy_sim_net_never_reports_a_live_node_dead() {
    let mut cluster = GossipCluster::start(0.1);
    cluster.run_until(Duration::from_secs(3), all_live);
    cluster.run_for(Duration::from_secs(10), all_live);
    let stats = cluster.net.stats();
    assert!(
        stats.lost > 0 && stats.delivered > 10 * stats.lost / 2,
        "{stats:?}"
    );
}
