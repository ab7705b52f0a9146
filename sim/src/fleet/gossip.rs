//! What each ingress knows of the cluster: gossip, a few rounds late.
//!
//! Every gossip round (200 ms, `shoal_mesh::gossip::DEFAULT_GOSSIP_INTERVAL`) each node
//! publishes its load as `node/src/node.rs::load` computes it: `in_flight`, `instances` and one
//! `warm:<app>` = `"<release>,<in_flight>,<instances>"` per app with an instance that is not
//! stopped (`in_flight` over those, `instances` the ones ready to serve). A
//! [`Snapshot`] is that round's keys of every node. An observer sees a source's keys from
//! [`LagTable::lag`] rounds ago: 0 for itself, and for another node the round in which the
//! source's update reached it by push-pull gossip.
//!
//! [`LagTable::epidemic`] computes those rounds by running chitchat's spreading once per
//! source: every round every node opens a push-pull exchange with `fanout` peers drawn
//! uniformly (chitchat's `GOSSIP_COUNT` is 3), and an exchange carries the update either way.
//! Each (observer, source) pair keeps its lag for the whole run, so a view never goes back in
//! time. Left out: chitchat's datagram size cap (at 1,000 nodes deltas may be cut and spread
//! slower) and lost datagrams, so the real lag is this or worse.
//!
//! Views are read the way `PlacementView::from_members` reads gossip: one [`WorkerLoad`] per
//! node (every node live and a worker here) and the app's [`Warm`] entries, one per instance
//! (`WarmValue::entries`, the real code), sorted by node.

use rand::Rng;
use shoal_mesh::placement::{Warm, WarmValue, WorkerLoad};

/// The release every app runs: one release per run.
pub const RELEASE: u64 = 1;

/// How many rounds late each observer sees each source.
#[derive(Clone, Debug)]
pub struct LagTable {
    nodes: usize,
    /// `lags[observer * nodes + source]`.
    lags: Vec<u8>,
    max: u8,
}

impl LagTable {
    /// Every other node `rounds` late (0 = everyone sees the round's snapshot at once).
    pub fn fixed(nodes: usize, rounds: u8) -> Self {
        let mut lags = vec![rounds; nodes * nodes];
        for node in 0..nodes {
            lags[node * nodes + node] = 0;
        }
        Self {
            nodes,
            lags,
            max: if nodes > 1 { rounds } else { 0 },
        }
    }

    /// Lags from one push-pull epidemic per source with `fanout` peers per node and round.
    pub fn epidemic(nodes: usize, fanout: usize, rng: &mut impl Rng) -> Self {
        assert!(fanout >= 1, "gossip needs a fanout of at least 1");
        let mut lags = vec![u8::MAX; nodes * nodes];
        let mut reached = vec![u8::MAX; nodes];
        for source in 0..nodes {
            reached.fill(u8::MAX);
            reached[source] = 0;
            spread(&mut reached, fanout, rng);
            for (observer, &round) in reached.iter().enumerate() {
                lags[observer * nodes + source] = round;
            }
        }
        let max = lags.iter().copied().max().unwrap_or(0);
        Self { nodes, lags, max }
    }

    /// Rounds by which `observer` lags behind `source`'s published keys.
    pub fn lag(&self, observer: usize, source: usize) -> u8 {
        self.lags[observer * self.nodes + source]
    }

    /// The largest lag.
    pub fn max(&self) -> u8 {
        self.max
    }

    /// Mean lag over pairs of distinct nodes, in rounds.
    pub fn mean(&self) -> f64 {
        if self.nodes < 2 {
            return 0.0;
        }
        let total: u64 = self.lags.iter().map(|&l| u64::from(l)).sum();
        total as f64 / (self.nodes * (self.nodes - 1)) as f64
    }
}

/// One epidemic: `reached[n]` is the round in which node `n` got the update (`u8::MAX` = not
/// yet). Runs until every node has it.
fn spread(reached: &mut [u8], fanout: usize, rng: &mut impl Rng) {
    let nodes = reached.len();
    if nodes < 2 {
        return;
    }
    let fanout = fanout.min(nodes - 1);
    let mut missing = nodes - 1;
    let mut round: u8 = 0;
    while missing > 0 {
        round = round
            .checked_add(1)
            .expect("gossip spreads in under 255 rounds");
        for node in 0..nodes {
            for _ in 0..fanout {
                // Distinct-peer sampling matters little here; a peer is never the node itself.
                let mut peer = rng.gen_range(0..nodes - 1);
                if peer >= node {
                    peer += 1;
                }
                let (a, b) = (reached[node], reached[peer]);
                if a < round && b == u8::MAX {
                    reached[peer] = round;
                    missing -= 1;
                } else if b < round && a == u8::MAX {
                    reached[node] = round;
                    missing -= 1;
                }
            }
        }
    }
}

/// One node's load keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// `in_flight`: requests its warm instances are serving.
    pub in_flight: u64,
    /// `instances`: its instances in any phase, stopped ones included.
    pub instances: u64,
}

/// One `warm:<app>` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WarmKey {
    /// The app.
    pub app: u32,
    /// The node publishing it.
    pub node: u32,
    /// Its in-flight count.
    pub in_flight: u64,
    /// Its instance count.
    pub instances: u64,
}

/// Every node's keys as published in one round.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// By node.
    pub loads: Vec<NodeLoad>,
    /// Sorted by (app, node).
    warm: Vec<WarmKey>,
    /// `warm[app_start[a]..app_start[a + 1]]` are app `a`'s keys.
    app_start: Vec<u32>,
}

impl Snapshot {
    /// Builds a snapshot from each node's load and the warm keys in any order.
    pub fn fill(&mut self, apps: usize, loads: &[NodeLoad], warm: &mut Vec<WarmKey>) {
        self.loads.clear();
        self.loads.extend_from_slice(loads);
        warm.sort_unstable();
        std::mem::swap(&mut self.warm, warm);
        warm.clear();
        self.app_start.clear();
        self.app_start.reserve(apps + 1);
        let mut at = 0usize;
        for app in 0..=apps {
            while at < self.warm.len() && (self.warm[at].app as usize) < app {
                at += 1;
            }
            self.app_start.push(at as u32);
        }
    }

    /// App `app`'s warm keys, sorted by node.
    pub fn warm(&self, app: u32) -> &[WarmKey] {
        let app = app as usize;
        match (self.app_start.get(app), self.app_start.get(app + 1)) {
            (Some(&start), Some(&end)) => &self.warm[start as usize..end as usize],
            _ => &[],
        }
    }
}

/// The last rounds' snapshots and each observer's view of them.
#[derive(Debug)]
pub struct GossipViews {
    lags: LagTable,
    /// `ring[round % ring.len()]` is that round's snapshot; as long as the largest lag + 1.
    ring: Vec<Snapshot>,
    round: u64,
    /// Each observer's worker list, built at most once per round.
    workers: Vec<Vec<WorkerLoad>>,
    workers_round: Vec<u64>,
}

impl GossipViews {
    /// Views over `lags.nodes` nodes, starting from round 0's snapshot `initial`.
    pub fn new(lags: LagTable, initial: Snapshot) -> Self {
        let nodes = lags.nodes;
        let ring = vec![initial; usize::from(lags.max()) + 1];
        Self {
            lags,
            ring,
            round: 0,
            workers: vec![Vec::new(); nodes],
            workers_round: vec![u64::MAX; nodes],
        }
    }

    /// The lag table.
    pub fn lags(&self) -> &LagTable {
        &self.lags
    }

    /// Starts the next round with the snapshot `fill` writes (into a recycled buffer).
    pub fn publish(&mut self, fill: impl FnOnce(&mut Snapshot)) {
        self.round += 1;
        let slot = (self.round % self.ring.len() as u64) as usize;
        fill(&mut self.ring[slot]);
    }

    fn snapshot(&self, lag: u8) -> &Snapshot {
        // Before round `lag`, the source's first snapshot (round 0) is what everyone has.
        let round = self.round.saturating_sub(u64::from(lag));
        &self.ring[(round % self.ring.len() as u64) as usize]
    }

    /// `observer`'s list of workers, sorted by node.
    pub fn workers(&mut self, observer: usize) -> &[WorkerLoad] {
        if self.workers_round[observer] != self.round {
            let mut list = std::mem::take(&mut self.workers[observer]);
            list.clear();
            for source in 0..self.lags.nodes {
                let load = self.snapshot(self.lags.lag(observer, source)).loads[source];
                list.push(WorkerLoad {
                    node: source as u64,
                    live: true,
                    runs_apps: true,
                    in_flight: load.in_flight,
                    instances: load.instances,
                    cpus: 0,
                    mem_available_mib: 0,
                });
            }
            self.workers[observer] = list;
            self.workers_round[observer] = self.round;
        }
        &self.workers[observer]
    }

    /// Appends `observer`'s warm entries of `app` to `out`: one per instance, sorted by node.
    pub fn warm(&self, observer: usize, app: u32, out: &mut Vec<Warm>) {
        let start = out.len();
        for lag in 0..=self.lags.max() {
            for key in self.snapshot(lag).warm(app) {
                if self.lags.lag(observer, key.node as usize) == lag {
                    let value = WarmValue {
                        release: RELEASE,
                        in_flight: key.in_flight,
                        instances: key.instances,
                    };
                    out.extend(value.entries(u64::from(key.node)));
                }
            }
        }
        out[start..].sort_unstable_by_key(|w| w.node);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    /// `warm` holds (app, node, in_flight, instances).
    fn snapshot(apps: usize, loads: &[(u64, u64)], warm: &[(u32, u32, u64, u64)]) -> Snapshot {
        let loads: Vec<NodeLoad> = loads
            .iter()
            .map(|&(in_flight, instances)| NodeLoad {
                in_flight,
                instances,
            })
            .collect();
        let mut keys: Vec<WarmKey> = warm
            .iter()
            .map(|&(app, node, in_flight, instances)| WarmKey {
                app,
                node,
                in_flight,
                instances,
            })
            .collect();
        let mut snapshot = Snapshot::default();
        snapshot.fill(apps, &loads, &mut keys);
        snapshot
    }

    #[test]
    fn an_epidemic_reaches_everyone_in_a_few_rounds() {
        let lags = LagTable::epidemic(1_000, 3, &mut StdRng::seed_from_u64(1));
        for node in 0..1_000 {
            assert_eq!(lags.lag(node, node), 0);
        }
        // Push-pull with 3 peers: about log4(1,000) rounds to reach most, a few more for all.
        assert!((2.5..=6.0).contains(&lags.mean()), "{}", lags.mean());
        assert!((4..=12).contains(&lags.max()), "{}", lags.max());
        assert!((0..1_000).all(|o| (0..1_000).all(|s| o == s || lags.lag(o, s) >= 1)));
    }

    #[test]
    fn each_observer_sees_each_source_from_its_own_round() {
        // Two nodes, node 1 sees node 0 two rounds late; node 0 sees node 1 at once.
        let mut lags = LagTable::fixed(2, 2);
        lags.lags[1] = 0;
        let mut views = GossipViews::new(lags, snapshot(2, &[(0, 0), (0, 0)], &[]));
        // Node 1 runs a second instance of app 1 from round 3 on.
        let round = |n: u64, node_1_instances: u64| {
            let warm = [(1, 0, n, 1), (1, 1, n, node_1_instances)];
            snapshot(2, &[(n, 10 * n), (n, 10 * n)], &warm)
        };
        views.publish(|s| *s = round(1, 1));
        views.publish(|s| *s = round(2, 1));
        views.publish(|s| *s = round(3, 2));
        let seen = |views: &mut GossipViews, observer: usize| -> Vec<u64> {
            views
                .workers(observer)
                .iter()
                .map(|w| w.in_flight)
                .collect()
        };
        assert_eq!(seen(&mut views, 0), [3, 3]);
        assert_eq!(seen(&mut views, 1), [1, 3]);
        let mut warm = Vec::new();
        views.warm(1, 1, &mut warm);
        assert_eq!(
            warm.iter()
                .map(|w| (w.node, w.in_flight))
                .collect::<Vec<_>>(),
            [(0, 1), (1, 3), (1, 3)],
            "node 0 from round 1; node 1 from round 3, one entry per instance"
        );
        warm.clear();
        views.warm(1, 0, &mut warm);
        assert!(warm.is_empty());
    }

    #[test]
    fn before_the_lag_has_passed_the_first_snapshot_is_seen() {
        let lags = LagTable::fixed(2, 3);
        let mut views = GossipViews::new(lags, snapshot(1, &[(0, 5), (0, 7)], &[]));
        views.publish(|s| *s = snapshot(1, &[(9, 5), (9, 7)], &[]));
        let instances: Vec<u64> = views.workers(0).iter().map(|w| w.instances).collect();
        assert_eq!(instances, [5, 7]);
        let in_flight: Vec<u64> = views.workers(0).iter().map(|w| w.in_flight).collect();
        assert_eq!(in_flight, [9, 0], "itself at once, the other one not yet");
    }
}
