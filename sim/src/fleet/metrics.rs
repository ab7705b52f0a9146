//! What a fleet run measures, and the [`Report`] it ends with.
//!
//! **Instance load balance.** Time is cut into windows (`Config::window`, 5 s by default). An
//! instance's load in a window is the number of requests forwarded to it in that window; only
//! instances that were ready through the whole window count (one that started, paused or
//! stopped inside it would look light for reasons that are not placement's). For every app
//! with at least two such instances in a window, each instance's load is divided by the mean
//! load of that app's instances in that window: the *normalized load*, 1.0 being a perfectly
//! even share. Loads are compared within an app because Zipf traffic makes apps differ by
//! orders of magnitude; placement's job is to spread each app over its instances.
//! - `max_over_mean`: the largest normalized load seen (the busiest instance against its app's
//!   mean, worst window); DESIGN §10's "busiest instance carries at most 1.25x the mean load".
//! - `p99_over_mean`: the 99th percentile of normalized loads.
//! - `mean_max_over_mean`: the busiest instance's normalized load, averaged over app-windows.
//!
//! Reported for the hot apps (the `Config::hot_apps` most popular, 10 by default) and for all
//! apps. Rare apps' windows hold a few requests per instance, so their ratios mostly measure
//! Poisson noise; the hot apps' figure is the one to read.
//!
//! **Holder load balance** is the same per holder, an app's instances on one node: the
//! requests of its instances ready through the window divided by how many they are, over the
//! app's mean per instance (placement weighs a holder by its instances, so a holder with three
//! takes three shares). Placement chooses nodes, and the worker's pool spreads over its own
//! instances, so this separates the two.
//!
//! **Node load balance.** At every gossip round, each node's requests (waiting for a start,
//! queued for a slot, or being served) are sampled: max over mean and p99 over mean across
//! nodes, averaged over rounds (and the worst round's max over mean). Over the whole run, the
//! requests each node served: max over mean.
//!
//! **Cold starts** are instance starts that are not a thaw: `first` when the app had no instance
//! ready or coming up anywhere in the cluster, `duplicate` when none was ready but another node
//! was already starting one (the cold rule's views disagreed), `scale` when an instance was
//! ready somewhere (scale-out, across nodes or within a worker). Starts and refusals are also
//! counted from the end of the first window on, past the cold boot (every app is cold at 0).
//!
//! The trace hash folds in every placement decision and every start, so two runs agree on it
//! only if they made the same decisions at the same virtual times.

use serde::Serialize;

use super::clock::{Micros, MILLISECOND, SECOND};

/// Where a request was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// To a warm instance (p2c).
    Warm,
    /// To the cold rule's worker.
    Spawn,
    /// To a new holder because every holder was at its target.
    ScaleOut,
}

/// Why an instance started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartKind {
    /// The app had nothing ready or coming up anywhere.
    First,
    /// Nothing ready, but another node was already starting it.
    Duplicate,
    /// An instance was ready somewhere.
    Scale,
}

/// Counters and samples gathered while the loop runs.
#[derive(Debug)]
pub struct Metrics {
    hot_apps: usize,
    window: Micros,
    pub(super) arrived: u64,
    pub(super) completed: u64,
    rejected_queue_full: u64,
    rejected_deadline: u64,
    /// Rejections and starts from the end of the first window on (past the cold boot).
    steady_rejected: u64,
    steady_starts_by_kind: [u64; 3],
    pub(super) no_worker: u64,
    placed: [u64; 3],
    pub(super) saturated_warm: u64,
    waited_for_start: u64,
    wait_total: Micros,
    wait_max: Micros,
    pub(super) waited_for_capacity: u64,
    latencies: Vec<u32>,
    pub(super) requests_per_app: Vec<u64>,
    cold_starts: Vec<u32>,
    wakes: Vec<u32>,
    starts_by_kind: [u64; 3],
    hot: BalanceSamples,
    all: BalanceSamples,
    hot_holders: BalanceSamples,
    all_holders: BalanceSamples,
    within_holders: BalanceSamples,
    node_samples: u64,
    node_max_sum: f64,
    node_p99_sum: f64,
    node_max_worst: f64,
    trace: u64,
    pub(super) events: u64,
}

#[derive(Debug, Default)]
struct BalanceSamples {
    normalized: Vec<f64>,
    app_windows: u64,
    max_sum: f64,
    worst: Option<Worst>,
    /// (window start, largest normalized load in that window).
    by_window: Vec<(Micros, f64)>,
}

/// The app-window with the busiest instance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Worst {
    /// The app's popularity rank (1 = most requested).
    pub app_rank: u32,
    /// Start of the window, in seconds.
    pub window_start_s: f64,
    /// Instances (or holders) ready through the window.
    pub instances: u32,
    /// Requests the busiest one took (for a holder, all its instances' requests).
    pub busiest: u64,
    /// Its share at its app's mean: the mean requests per instance (for a holder, times its
    /// instances).
    pub mean: f64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Metrics {
    /// Empty metrics for `apps` apps.
    pub fn new(apps: usize, hot_apps: usize, window: Micros) -> Self {
        Self {
            hot_apps,
            window,
            arrived: 0,
            completed: 0,
            rejected_queue_full: 0,
            rejected_deadline: 0,
            steady_rejected: 0,
            steady_starts_by_kind: [0; 3],
            no_worker: 0,
            placed: [0; 3],
            saturated_warm: 0,
            waited_for_start: 0,
            wait_total: 0,
            wait_max: 0,
            waited_for_capacity: 0,
            latencies: Vec::new(),
            requests_per_app: vec![0; apps],
            cold_starts: vec![0; apps],
            wakes: vec![0; apps],
            starts_by_kind: [0; 3],
            hot: BalanceSamples::default(),
            all: BalanceSamples::default(),
            hot_holders: BalanceSamples::default(),
            all_holders: BalanceSamples::default(),
            within_holders: BalanceSamples::default(),
            node_samples: 0,
            node_max_sum: 0.0,
            node_p99_sum: 0.0,
            node_max_worst: 0.0,
            trace: FNV_OFFSET,
            events: 0,
        }
    }

    /// Folds `words` into the trace hash (FNV-1a over their little-endian bytes).
    pub fn trace(&mut self, words: &[u64]) {
        for word in words {
            for byte in word.to_le_bytes() {
                self.trace ^= u64::from(byte);
                self.trace = self.trace.wrapping_mul(FNV_PRIME);
            }
        }
    }

    /// A placement decision.
    pub fn placed(&mut self, now: Micros, ingress: u32, app: u32, node: u32, placed: Placed) {
        self.placed[placed as usize] += 1;
        self.trace(&[
            now,
            u64::from(ingress),
            u64::from(app),
            u64::from(node),
            placed as u64,
        ]);
    }

    /// A refused request.
    pub fn rejected(&mut self, now: Micros, queue_full: bool) {
        if queue_full {
            self.rejected_queue_full += 1;
        } else {
            self.rejected_deadline += 1;
        }
        if now >= self.window {
            self.steady_rejected += 1;
        }
    }

    /// An instance start (not a thaw).
    pub fn cold_start(&mut self, now: Micros, node: u32, app: u32, kind: StartKind) {
        self.cold_starts[app as usize] += 1;
        self.starts_by_kind[kind as usize] += 1;
        if now >= self.window {
            self.steady_starts_by_kind[kind as usize] += 1;
        }
        self.trace(&[now, u64::from(node), u64::from(app), 10 + kind as u64]);
    }

    /// Instance starts of `app` so far.
    pub fn cold_starts_of(&self, app: u32) -> u32 {
        self.cold_starts[app as usize]
    }

    /// A thaw of a paused instance.
    pub fn wake(&mut self, app: u32) {
        self.wakes[app as usize] += 1;
    }

    /// A request that waited `waited` for an instance to come up.
    pub fn waited(&mut self, waited: Micros) {
        self.waited_for_start += 1;
        self.wait_total += waited;
        self.wait_max = self.wait_max.max(waited);
    }

    /// A request answered after `latency`.
    pub fn completed(&mut self, latency: Micros) {
        self.completed += 1;
        self.latencies
            .push(u32::try_from(latency).unwrap_or(u32::MAX));
    }

    /// One gossip round's sample of requests at each node.
    pub fn sample_nodes(&mut self, loads: &mut [u64]) {
        let total: u64 = loads.iter().sum();
        if total == 0 || loads.is_empty() {
            return;
        }
        let mean = total as f64 / loads.len() as f64;
        let max = *loads.iter().max().expect("not empty") as f64 / mean;
        let p99 = percentile_u64(loads, 0.99) as f64 / mean;
        self.node_samples += 1;
        self.node_max_sum += max;
        self.node_p99_sum += p99;
        self.node_max_worst = self.node_max_worst.max(max);
    }

    /// One window's loads as (app, requests, instances): for every instance ready through the
    /// window (1), for every node holding such instances (theirs added up, and their count),
    /// and for each hot holder with two or more, its instances.
    pub fn close_window(
        &mut self,
        window_start: Micros,
        instances: &mut [(u32, u64, u64)],
        holders: &mut [(u32, u64, u64)],
        within_holders: &[Vec<(u32, u64, u64)>],
    ) {
        let hot = self.hot_apps;
        add_window(window_start, instances, hot, &mut self.hot, &mut self.all);
        add_window(
            window_start,
            holders,
            hot,
            &mut self.hot_holders,
            &mut self.all_holders,
        );
        for holder in within_holders {
            let mut group = holder.clone();
            let mut ignored = BalanceSamples::default();
            add_window(
                window_start,
                &mut group,
                hot,
                &mut self.within_holders,
                &mut ignored,
            );
        }
    }

    /// The figures, given the run's conditions and the state left at the end.
    pub fn report(mut self, conditions: Conditions, end: EndState) -> Report {
        let requests = self.requests(end.unfinished);
        let cold_starts = self.cold_start_report(&end.holders);
        Report {
            conditions,
            requests,
            decisions: Decisions {
                warm: self.placed[Placed::Warm as usize],
                spawn: self.placed[Placed::Spawn as usize],
                scale_out: self.placed[Placed::ScaleOut as usize],
                saturated_warm: self.saturated_warm,
            },
            instance_balance_hot: self.hot.summary(),
            instance_balance_all: self.all.summary(),
            holder_balance_hot: self.hot_holders.summary(),
            holder_balance_all: self.all_holders.summary(),
            within_holder_balance_hot: self.within_holders.summary(),
            node_balance: NodeBalance {
                in_flight_max_over_mean: ratio(self.node_max_sum, self.node_samples),
                in_flight_p99_over_mean: ratio(self.node_p99_sum, self.node_samples),
                in_flight_max_over_mean_worst: self.node_max_worst,
                served_max_over_mean: max_over_mean(&end.served_per_node),
                served_p99_over_mean: p99_over_mean(&end.served_per_node),
            },
            cold_starts,
            windows: end.duration / self.window,
            events: self.events,
            trace_hash: format!("{:016x}", self.trace),
        }
    }

    fn requests(&mut self, unfinished: u64) -> Requests {
        let latency = |q: f64, latencies: &mut Vec<u32>| {
            if latencies.is_empty() {
                return 0.0;
            }
            let at = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
            let (_, value, _) = latencies.select_nth_unstable(at);
            f64::from(*value) / MILLISECOND as f64
        };
        Requests {
            arrived: self.arrived,
            completed: self.completed,
            rejected_queue_full: self.rejected_queue_full,
            rejected_deadline: self.rejected_deadline,
            rejected_after_first_window: self.steady_rejected,
            no_worker: self.no_worker,
            unfinished,
            waited_for_start: self.waited_for_start,
            wait_for_start_mean_ms: ratio(self.wait_total as f64, self.waited_for_start)
                / MILLISECOND as f64,
            wait_for_start_max_ms: self.wait_max as f64 / MILLISECOND as f64,
            waited_for_capacity: self.waited_for_capacity,
            latency_p50_ms: latency(0.50, &mut self.latencies),
            latency_p99_ms: latency(0.99, &mut self.latencies),
            latency_max_ms: latency(1.0, &mut self.latencies),
        }
    }

    fn cold_start_report(&self, holders: &[(u32, u32)]) -> ColdStartReport {
        let hot = self.hot_apps.min(self.cold_starts.len());
        let top = (0..hot)
            .map(|app| AppStarts {
                rank: app as u32 + 1,
                requests: self.requests_per_app[app],
                cold_starts: self.cold_starts[app],
                wakes: self.wakes[app],
                holders_at_end: holders.get(app).map_or(0, |h| h.0),
                instances_at_end: holders.get(app).map_or(0, |h| h.1),
            })
            .collect();
        let tail = hot..self.cold_starts.len();
        let tail_requested = tail
            .clone()
            .filter(|&a| self.requests_per_app[a] > 0)
            .count() as u64;
        let tail_total: u64 = tail.clone().map(|a| u64::from(self.cold_starts[a])).sum();
        let (tail_max, tail_max_app) = tail
            .clone()
            .map(|a| (self.cold_starts[a], a))
            .max_by_key(|&(n, a)| (n, std::cmp::Reverse(a)))
            .unwrap_or((0, 0));
        ColdStartReport {
            total: self.starts_by_kind.iter().sum(),
            first: self.starts_by_kind[StartKind::First as usize],
            duplicate: self.starts_by_kind[StartKind::Duplicate as usize],
            scale: self.starts_by_kind[StartKind::Scale as usize],
            after_first_window: self.steady_starts_by_kind,
            wakes: self.wakes.iter().map(|&n| u64::from(n)).sum(),
            top_apps: top,
            top_total: (0..hot).map(|a| u64::from(self.cold_starts[a])).sum(),
            tail_apps_requested: tail_requested,
            tail_total,
            tail_per_requested_app: ratio(tail_total as f64, tail_requested),
            tail_apps_started_more_than_once: tail.filter(|&a| self.cold_starts[a] > 1).count()
                as u64,
            tail_max,
            tail_max_rank: tail_max_app as u32 + 1,
        }
    }
}

impl BalanceSamples {
    fn add(&mut self, window_start: Micros, normalized: impl Iterator<Item = f64>, worst: Worst) {
        let before = self.normalized.len();
        self.normalized.extend(normalized);
        let max = self.normalized[before..]
            .iter()
            .copied()
            .fold(0.0, f64::max);
        self.app_windows += 1;
        self.max_sum += max;
        let current = self
            .worst
            .as_ref()
            .map_or(0.0, |w| w.busiest as f64 / w.mean);
        if max > current {
            self.worst = Some(worst);
        }
        match self.by_window.last_mut() {
            Some((start, window_max)) if *start == window_start => {
                *window_max = window_max.max(max);
            }
            _ => self.by_window.push((window_start, max)),
        }
    }

    fn summary(mut self) -> Balance {
        let observations = self.normalized.len() as u64;
        let max = self.normalized.iter().copied().fold(0.0, f64::max);
        let p99 = if self.normalized.is_empty() {
            0.0
        } else {
            let at = ((0.99 * self.normalized.len() as f64).ceil() as usize).max(1) - 1;
            let (_, value, _) = self
                .normalized
                .select_nth_unstable_by(at, |a, b| a.total_cmp(b));
            *value
        };
        Balance {
            app_windows: self.app_windows,
            instance_windows: observations,
            max_over_mean: max,
            p99_over_mean: p99,
            mean_max_over_mean: ratio(self.max_sum, self.app_windows),
            worst: self.worst,
            max_over_mean_by_window: self
                .by_window
                .iter()
                .map(|&(start, max)| (start as f64 / SECOND as f64, (max * 1e3).round() / 1e3))
                .collect(),
        }
    }
}

/// Adds one window's (app, load, instances) triples, grouped by app, to the hot and all-app
/// samples: each load per instance over its app's mean per instance.
fn add_window(
    window_start: Micros,
    loads: &mut [(u32, u64, u64)],
    hot_apps: usize,
    hot: &mut BalanceSamples,
    all: &mut BalanceSamples,
) {
    loads.sort_by_key(|&(app, _, _)| app);
    for group in loads.chunk_by(|a, b| a.0 == b.0) {
        let total: u64 = group.iter().map(|&(_, n, _)| n).sum();
        let instances: u64 = group.iter().map(|&(_, _, i)| i).sum();
        if group.len() < 2 || total == 0 {
            continue;
        }
        let app = group[0].0;
        let per_instance = total as f64 / instances as f64;
        let normalized = |&(_, n, i): &(u32, u64, u64)| n as f64 / (i as f64 * per_instance);
        let busiest = group
            .iter()
            .max_by(|a, b| normalized(a).total_cmp(&normalized(b)))
            .expect("two or more");
        let worst = Worst {
            app_rank: app + 1,
            window_start_s: window_start as f64 / SECOND as f64,
            instances: group.len() as u32,
            busiest: busiest.1,
            mean: busiest.2 as f64 * per_instance,
        };
        let normalized = group.iter().map(normalized);
        if (app as usize) < hot_apps {
            hot.add(window_start, normalized.clone(), worst.clone());
        }
        all.add(window_start, normalized, worst);
    }
}

fn ratio(sum: f64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

fn percentile_u64(values: &mut [u64], q: f64) -> u64 {
    let at = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    *values.select_nth_unstable(at).1
}

fn max_over_mean(values: &[u64]) -> f64 {
    let total: u64 = values.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let mean = total as f64 / values.len() as f64;
    *values.iter().max().expect("not empty") as f64 / mean
}

fn p99_over_mean(values: &[u64]) -> f64 {
    let total: u64 = values.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let mean = total as f64 / values.len() as f64;
    percentile_u64(&mut values.to_vec(), 0.99) as f64 / mean
}

/// The state the loop leaves, for the report.
#[derive(Debug, Default)]
pub struct EndState {
    /// Requests still waiting or being served when the run stopped.
    pub unfinished: u64,
    /// Requests each node served.
    pub served_per_node: Vec<u64>,
    /// For the hot apps, by rank: (nodes holding a warm instance, warm instances) at the end.
    pub holders: Vec<(u32, u32)>,
    /// Virtual time simulated.
    pub duration: Micros,
}

/// The parameters a run had, in human units.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conditions {
    /// Nodes (each an ingress and a worker).
    pub nodes: usize,
    /// Apps.
    pub apps: usize,
    /// Virtual seconds simulated.
    pub seconds: f64,
    /// The RNG seed.
    pub seed: u64,
    /// Zipf exponent of app popularity.
    pub zipf: f64,
    /// Total arrival rate, requests per second (Poisson).
    pub rate: f64,
    /// Mean service time (exponential), ms.
    pub service_ms: f64,
    /// Cold start (create/start until ready), ms.
    pub cold_start_ms: f64,
    /// Thaw of a paused instance, ms.
    pub wake_ms: f64,
    /// `scale.concurrency_target`.
    pub concurrency_target: u32,
    /// `scale.max` (per-worker instances, and nodes holding the app).
    pub scale_max: u32,
    /// `scale.pause_after`, s.
    pub pause_after_s: f64,
    /// `scale.idle_timeout`, s.
    pub idle_timeout_s: f64,
    /// Concurrent requests a node serves before it queues them (0 = unlimited).
    pub node_capacity: u32,
    /// Gossip round, ms.
    pub gossip_round_ms: f64,
    /// How gossip lags: `epidemic(fanout)` or `fixed(rounds)`.
    pub gossip_lag: String,
    /// Mean gossip lag between two nodes, rounds.
    pub gossip_lag_mean_rounds: f64,
    /// Largest gossip lag, rounds.
    pub gossip_lag_max_rounds: u8,
    /// Balance window, s.
    pub window_s: f64,
    /// How many of the most popular apps count as hot.
    pub hot_apps: usize,
}

/// What happened to the requests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Requests {
    /// Requests that arrived at an ingress.
    pub arrived: u64,
    /// Answered by an instance.
    pub completed: u64,
    /// Refused: the start queue was full.
    pub rejected_queue_full: u64,
    /// Refused: waited too long for a start.
    pub rejected_deadline: u64,
    /// Refusals after the first window (the cold boot of every app is over).
    pub rejected_after_first_window: u64,
    /// Refused: no worker at all.
    pub no_worker: u64,
    /// Still in progress at the end.
    pub unfinished: u64,
    /// Waited for an instance to come up (cold start or thaw).
    pub waited_for_start: u64,
    /// Mean wait of those, ms.
    pub wait_for_start_mean_ms: f64,
    /// Longest wait, ms.
    pub wait_for_start_max_ms: f64,
    /// Found their worker at capacity and queued for a slot.
    pub waited_for_capacity: u64,
    /// Latency (arrival to answer) median, ms.
    pub latency_p50_ms: f64,
    /// Latency p99, ms.
    pub latency_p99_ms: f64,
    /// Longest latency, ms.
    pub latency_max_ms: f64,
}

/// How placement decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decisions {
    /// p2c over warm holders.
    pub warm: u64,
    /// Cold rule, no holder in view.
    pub spawn: u64,
    /// Every holder at target: a new holder.
    pub scale_out: u64,
    /// Warm decisions where every holder in the ingress's view was at or over its target per
    /// instance and no scale-out was possible (`scale.max` holders): all workers of the app
    /// busy.
    pub saturated_warm: u64,
}

/// Instance load balance (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Balance {
    /// App-windows with at least two instances ready through the window.
    pub app_windows: u64,
    /// Instance-windows in those.
    pub instance_windows: u64,
    /// Busiest instance over its app's mean, worst window.
    pub max_over_mean: f64,
    /// 99th percentile of instance load over its app's mean.
    pub p99_over_mean: f64,
    /// Busiest over mean, averaged over app-windows.
    pub mean_max_over_mean: f64,
    /// Where `max_over_mean` was seen.
    pub worst: Option<Worst>,
    /// (window start in seconds, busiest over mean in that window), windows with data only.
    pub max_over_mean_by_window: Vec<(f64, f64)>,
}

/// Node load balance (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeBalance {
    /// Max over mean of requests at each node, averaged over gossip rounds.
    pub in_flight_max_over_mean: f64,
    /// p99 over mean of the same, averaged over rounds.
    pub in_flight_p99_over_mean: f64,
    /// The worst round's max over mean.
    pub in_flight_max_over_mean_worst: f64,
    /// Requests served per node over the run: max over mean.
    pub served_max_over_mean: f64,
    /// Requests served per node over the run: p99 over mean.
    pub served_p99_over_mean: f64,
}

/// One hot app's starts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppStarts {
    /// Popularity rank (1 = most requested).
    pub rank: u32,
    /// Requests it got.
    pub requests: u64,
    /// Instance starts (not thaws).
    pub cold_starts: u32,
    /// Thaws.
    pub wakes: u32,
    /// Nodes with a warm instance at the end.
    pub holders_at_end: u32,
    /// Warm instances at the end.
    pub instances_at_end: u32,
}

/// Cold starts (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ColdStartReport {
    /// All starts.
    pub total: u64,
    /// Nothing of the app was up anywhere.
    pub first: u64,
    /// Another node was already starting it and none was ready.
    pub duplicate: u64,
    /// An instance was ready somewhere.
    pub scale: u64,
    /// First, duplicate and scale-out starts after the first window (past the cold boot).
    pub after_first_window: [u64; 3],
    /// Thaws of paused instances.
    pub wakes: u64,
    /// The hot apps, by rank.
    pub top_apps: Vec<AppStarts>,
    /// Starts of the hot apps.
    pub top_total: u64,
    /// Tail apps (not hot) that got at least one request.
    pub tail_apps_requested: u64,
    /// Starts of tail apps.
    pub tail_total: u64,
    /// Starts per requested tail app.
    pub tail_per_requested_app: f64,
    /// Tail apps started more than once.
    pub tail_apps_started_more_than_once: u64,
    /// Most starts of one tail app.
    pub tail_max: u32,
    /// That app's rank.
    pub tail_max_rank: u32,
}

/// Everything a fleet run reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The parameters.
    pub conditions: Conditions,
    /// Requests.
    pub requests: Requests,
    /// Placement decisions.
    pub decisions: Decisions,
    /// Instance balance of the hot apps: the headline figure.
    pub instance_balance_hot: Balance,
    /// Instance balance of every app with two or more instances.
    pub instance_balance_all: Balance,
    /// The same per holder (an app's instances on one node, per instance) for the hot apps:
    /// what p2c spreads directly.
    pub holder_balance_hot: Balance,
    /// Holder balance of every app with two or more holders.
    pub holder_balance_all: Balance,
    /// For the hot apps, the instances of one holder against that holder's mean: what the
    /// worker's pool spreads (least in flight first, ties to the least recently used).
    pub within_holder_balance_hot: Balance,
    /// Node balance.
    pub node_balance: NodeBalance,
    /// Cold starts.
    pub cold_starts: ColdStartReport,
    /// Balance windows closed.
    pub windows: u64,
    /// Events processed.
    pub events: u64,
    /// FNV-1a over every decision and start.
    pub trace_hash: String,
}
