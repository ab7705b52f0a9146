//! The event loop: requests arrive, are placed by the real `place`, wait for or use an
//! instance, are served and answered; gossip rounds publish load; windows close.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_mesh::placement::{place, Decision, Request, Warm, WorkerLoad};

use super::clock::{EventQueue, Micros, SECOND};
use super::gossip::{GossipViews, LagTable, NodeLoad, Snapshot, WarmKey, RELEASE};
use super::ingress::Outstanding;
use super::metrics::{Conditions, EndState, Metrics, Placed, Report, StartKind};
use super::pool::{self, InstanceId, Phase, Pool, PoolConfig, Rejection, RequestId};
use super::sample::{exponential, Zipf};
use super::{Config, GossipLag};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// The next Poisson arrival.
    Arrival,
    /// A request placed by hand (tests).
    Inject {
        ingress: u32,
        app: u32,
    },
    GossipRound,
    InstanceUp {
        node: u32,
        app: u32,
        instance: InstanceId,
    },
    ServiceDone {
        request: RequestId,
    },
    PoolTick {
        node: u32,
        app: u32,
    },
    WindowEnd,
}

/// A request from arrival to answer.
#[derive(Clone, Copy, Debug)]
struct Flight {
    ingress: u32,
    app: u32,
    node: u32,
    instance: InstanceId,
    arrived: Micros,
}

/// A worker's service slots.
#[derive(Clone, Debug, Default)]
struct Node {
    /// Requests being served.
    busy: u32,
    /// Requests forwarded to an instance, waiting for a slot.
    queue: VecDeque<RequestId>,
    /// Requests placed here and not answered (waiting for a start, queued or served).
    assigned: u64,
    /// Requests answered.
    served: u64,
}

/// One app's instances across the cluster, for classifying starts.
#[derive(Clone, Copy, Debug, Default)]
struct AppUp {
    ready: u32,
    coming_up: u32,
}

/// A fleet of nodes on virtual time.
#[derive(Debug)]
pub struct World {
    config: Config,
    pool_config: PoolConfig,
    rng: StdRng,
    queue: EventQueue<Event>,
    zipf: Zipf,
    /// Next Poisson arrival, in fractional microseconds (so short gaps do not round away).
    next_arrival: f64,
    names: Vec<String>,
    nodes: Vec<Node>,
    /// Each node's pools, by app.
    pools: Vec<BTreeMap<u32, Pool>>,
    app_up: Vec<AppUp>,
    views: GossipViews,
    outstanding: Outstanding,
    flights: Vec<Flight>,
    free: Vec<RequestId>,
    metrics: Metrics,
    window_start: Micros,
    end: Micros,
    /// Scratch buffers, kept to avoid allocating per event.
    warm: Vec<Warm>,
    actions: Vec<pool::Action>,
    loads: Vec<NodeLoad>,
    warm_keys: Vec<WarmKey>,
    node_sample: Vec<u64>,
}

impl World {
    /// A fleet at time zero: every app deployed, its container pre-created on its cold pick.
    /// Precondition: `config.validate()` passed.
    pub fn new(config: Config) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let lags = match config.gossip_lag {
            GossipLag::Epidemic { fanout } => LagTable::epidemic(config.nodes, fanout, &mut rng),
            GossipLag::Fixed { rounds } => LagTable::fixed(config.nodes, rounds),
        };
        let pool_config = PoolConfig {
            max: config.scale_max,
            concurrency_target: config.concurrency_target,
            pause_after: config.pause_after,
            idle_timeout: config.idle_timeout,
            queue_limit: config.queue_limit,
            queue_deadline: config.queue_deadline,
        };
        let names: Vec<String> = (0..config.apps).map(|a| format!("app-{a}")).collect();
        let pools = pre_create(&config, pool_config, &names, &mut rng);
        let loads: Vec<NodeLoad> = pools
            .iter()
            .map(|p| NodeLoad {
                in_flight: 0,
                instances: p.len() as u64,
            })
            .collect();
        let mut initial = Snapshot::default();
        initial.fill(config.apps, &loads, &mut Vec::new());
        let mut world = Self {
            pool_config,
            rng,
            queue: EventQueue::new(),
            zipf: Zipf::new(config.apps, config.zipf_exponent),
            next_arrival: 0.0,
            names,
            nodes: vec![Node::default(); config.nodes],
            pools,
            app_up: vec![AppUp::default(); config.apps],
            views: GossipViews::new(lags, initial),
            outstanding: Outstanding::new(config.nodes),
            flights: Vec::new(),
            free: Vec::new(),
            metrics: Metrics::new(config.apps, config.hot_apps, config.window),
            window_start: 0,
            end: 0,
            warm: Vec::new(),
            actions: Vec::new(),
            loads: Vec::new(),
            warm_keys: Vec::new(),
            node_sample: Vec::new(),
            config,
        };
        world.schedule_arrival();
        world
            .queue
            .schedule(world.config.gossip_round, Event::GossipRound);
        world.queue.schedule(world.config.window, Event::WindowEnd);
        world
    }

    /// Places a request for `app` at `ingress` at time `at` (besides the Poisson arrivals).
    pub fn inject(&mut self, at: Micros, ingress: u32, app: u32) {
        self.queue.schedule(at, Event::Inject { ingress, app });
    }

    /// Runs every event due at or before `end`.
    pub fn run_until(&mut self, end: Micros) {
        while self.queue.peek_time().is_some_and(|at| at <= end) {
            let (now, event) = self.queue.pop().expect("peeked");
            self.metrics.events += 1;
            self.handle(now, event);
        }
        self.end = self.end.max(end);
    }

    /// Instance starts (not thaws) of `app` so far.
    pub fn cold_starts(&self, app: u32) -> u32 {
        self.metrics.cold_starts_of(app)
    }

    /// Nodes holding an instance of `app` that is not stopped.
    pub fn warm_nodes(&self, app: u32) -> Vec<u32> {
        (0..self.pools.len() as u32)
            .filter(|&n| {
                self.pools[n as usize]
                    .get(&app)
                    .is_some_and(|p| p.warm_in_flight().is_some())
            })
            .collect()
    }

    /// Requests answered so far.
    pub fn completed(&self) -> u64 {
        self.metrics.completed
    }

    fn handle(&mut self, now: Micros, event: Event) {
        match event {
            Event::Arrival => {
                let app = self.zipf.sample(&mut self.rng) as u32;
                let ingress = self.rng.gen_range(0..self.config.nodes) as u32;
                self.schedule_arrival();
                self.arrive(now, ingress, app);
            }
            Event::Inject { ingress, app } => self.arrive(now, ingress, app),
            Event::GossipRound => self.gossip_round(),
            Event::InstanceUp {
                node,
                app,
                instance,
            } => {
                let up = &mut self.app_up[app as usize];
                up.coming_up -= 1;
                up.ready += 1;
                self.pool_event(now, node, app, pool::Event::Ready { instance });
            }
            Event::ServiceDone { request } => self.service_done(now, request),
            Event::PoolTick { node, app } => {
                let pool = self.pools[node as usize]
                    .get_mut(&app)
                    .expect("ticks only for pools that exist");
                if pool.tick_at == Some(now) {
                    pool.tick_at = None;
                }
                self.pool_event(now, node, app, pool::Event::Tick);
            }
            Event::WindowEnd => self.close_window(now),
        }
    }

    fn schedule_arrival(&mut self) {
        if self.config.rate <= 0.0 {
            return;
        }
        let u: f64 = self.rng.gen();
        self.next_arrival += -(1.0 - u).ln() * SECOND as f64 / self.config.rate;
        self.queue
            .schedule(self.next_arrival.round() as Micros, Event::Arrival);
    }

    /// DESIGN §4 step 4 at `ingress`: `DataPlane::pick` builds the view, `place` decides.
    fn arrive(&mut self, now: Micros, ingress: u32, app: u32) {
        self.metrics.arrived += 1;
        self.metrics.requests_per_app[app as usize] += 1;
        self.warm.clear();
        self.views.warm(ingress as usize, app, &mut self.warm);
        self.outstanding.apply(ingress, app, &mut self.warm);
        let request = Request {
            app: &self.names[app as usize],
            release: RELEASE,
            concurrency_target: self.config.concurrency_target,
            max_holders: self.config.scale_max,
        };
        let workers: &[WorkerLoad] = self.views.workers(ingress as usize);
        let (node, placed) = match place(&request, workers, &self.warm, &mut self.rng) {
            Decision::Warm { node } => (node, Placed::Warm),
            Decision::Spawn { node } => (node, Placed::Spawn),
            Decision::ScaleOut { node } => (node, Placed::ScaleOut),
            Decision::NoWorker => {
                self.metrics.no_worker += 1;
                return;
            }
        };
        let node = node as u32;
        if placed == Placed::Warm
            && every_holder_at_target(&self.warm, self.config.concurrency_target)
        {
            self.metrics.saturated_warm += 1;
        }
        self.metrics.placed(now, ingress, app, node, placed);
        let flight = Flight {
            ingress,
            app,
            node,
            instance: InstanceId::MAX,
            arrived: now,
        };
        let request = match self.free.pop() {
            Some(id) => {
                self.flights[id as usize] = flight;
                id
            }
            None => {
                self.flights.push(flight);
                (self.flights.len() - 1) as RequestId
            }
        };
        if node != ingress {
            self.outstanding.enter(ingress, app, node);
        }
        self.nodes[node as usize].assigned += 1;
        self.pool_event(now, node, app, pool::Event::Request { request });
    }

    /// Feeds the pool of (`node`, `app`) one event and carries out what it decides.
    fn pool_event(&mut self, now: Micros, node: u32, app: u32, event: pool::Event) {
        let config = self.pool_config;
        let pool = self.pools[node as usize]
            .entry(app)
            .or_insert_with(|| Pool::new(config));
        pool.handle(now, event, &mut self.actions);
        if let Some(deadline) = pool.next_deadline() {
            // The worker ticks its pools every `worker_tick`; time-driven changes wait for it.
            let tick = self.config.worker_tick;
            let at = deadline.max(now + 1).div_ceil(tick) * tick;
            if pool.tick_at.is_none_or(|t| at < t) {
                pool.tick_at = Some(at);
                self.queue.schedule(at, Event::PoolTick { node, app });
            }
        }
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            self.carry_out(now, node, app, action);
        }
        self.actions = actions;
    }

    fn carry_out(&mut self, now: Micros, node: u32, app: u32, action: pool::Action) {
        let up = &mut self.app_up[app as usize];
        match action {
            pool::Action::Forward {
                request,
                instance,
                waited,
            } => {
                self.flights[request as usize].instance = instance;
                if let Some(waited) = waited {
                    self.metrics.waited(waited);
                }
                self.start_service(now, node, request);
            }
            pool::Action::Reject { request, reason } => {
                self.metrics.rejected(now, reason == Rejection::QueueFull);
                self.finish(now, request, false);
            }
            pool::Action::ColdStart { instance } => {
                let kind = if up.ready > 0 {
                    StartKind::Scale
                } else if up.coming_up > 0 {
                    StartKind::Duplicate
                } else {
                    StartKind::First
                };
                up.coming_up += 1;
                self.metrics.cold_start(now, node, app, kind);
                let at = now + self.config.cold_start;
                let event = Event::InstanceUp {
                    node,
                    app,
                    instance,
                };
                self.queue.schedule(at, event);
            }
            pool::Action::Wake { instance } => {
                up.coming_up += 1;
                self.metrics.wake(app);
                let event = Event::InstanceUp {
                    node,
                    app,
                    instance,
                };
                self.queue.schedule(now + self.config.wake, event);
            }
            pool::Action::Paused { .. }
            | pool::Action::Stopped {
                was_ready: true, ..
            } => {
                up.ready -= 1;
            }
            pool::Action::Stopped { .. } => {}
        }
    }

    /// Takes a service slot on `node`, or queues for one.
    fn start_service(&mut self, now: Micros, node: u32, request: RequestId) {
        let capacity = self.config.node_capacity;
        let slots = &mut self.nodes[node as usize];
        if capacity == 0 || slots.busy < capacity {
            slots.busy += 1;
            let duration = exponential(&mut self.rng, self.config.service_mean);
            self.queue
                .schedule(now + duration, Event::ServiceDone { request });
        } else {
            slots.queue.push_back(request);
            self.metrics.waited_for_capacity += 1;
        }
    }

    fn service_done(&mut self, now: Micros, request: RequestId) {
        let flight = self.flights[request as usize];
        self.nodes[flight.node as usize].busy -= 1;
        self.finish(now, request, true);
        if let Some(next) = self.nodes[flight.node as usize].queue.pop_front() {
            self.start_service(now, flight.node, next);
        }
        let done = pool::Event::Done {
            instance: flight.instance,
        };
        self.pool_event(now, flight.node, flight.app, done);
    }

    /// The request answered (`completed`) or was refused: the ingress forgets it.
    fn finish(&mut self, now: Micros, request: RequestId, completed: bool) {
        let flight = self.flights[request as usize];
        if flight.node != flight.ingress {
            self.outstanding
                .leave(flight.ingress, flight.app, flight.node);
        }
        let node = &mut self.nodes[flight.node as usize];
        node.assigned -= 1;
        if completed {
            node.served += 1;
            self.metrics.completed(now - flight.arrived);
        }
        self.free.push(request);
    }

    /// Every node publishes its keys (`node.rs::load`); a node-load sample is taken.
    fn gossip_round(&mut self) {
        self.loads.clear();
        self.warm_keys.clear();
        for (node, pools) in self.pools.iter().enumerate() {
            let mut load = NodeLoad::default();
            for (&app, pool) in pools {
                load.instances += pool.instances().len() as u64;
                if let Some(in_flight) = pool.warm_in_flight() {
                    load.in_flight += in_flight;
                    self.warm_keys.push(WarmKey {
                        app,
                        node: node as u32,
                        in_flight,
                        instances: pool.ready_instances(),
                    });
                }
            }
            self.loads.push(load);
        }
        let apps = self.config.apps;
        let (loads, warm_keys) = (&self.loads, &mut self.warm_keys);
        self.views
            .publish(|snapshot| snapshot.fill(apps, loads, warm_keys));
        self.node_sample.clear();
        self.node_sample
            .extend(self.nodes.iter().map(|n| n.assigned));
        self.metrics.sample_nodes(&mut self.node_sample);
        self.queue
            .after(self.config.gossip_round, Event::GossipRound);
    }

    fn close_window(&mut self, now: Micros) {
        let start = self.window_start;
        let mut instances = Vec::new();
        let mut holders = Vec::new();
        let mut within = Vec::new();
        for pools in &mut self.pools {
            for (&app, pool) in pools.iter_mut() {
                let before = instances.len();
                let mut served = 0;
                for instance in pool.instances_mut() {
                    if instance.ready_since.is_some_and(|t| t <= start) {
                        instances.push((app, instance.served_in_window, 1));
                        served += instance.served_in_window;
                    }
                    instance.served_in_window = 0;
                }
                let counted = (instances.len() - before) as u64;
                if counted > 0 {
                    holders.push((app, served, counted));
                }
                if counted > 1 && (app as usize) < self.config.hot_apps {
                    within.push(instances[before..].to_vec());
                }
            }
        }
        self.metrics
            .close_window(start, &mut instances, &mut holders, &within);
        self.window_start = now;
        self.queue.after(self.config.window, Event::WindowEnd);
    }

    /// The figures so far.
    pub fn report(self) -> Report {
        let hot = self.config.hot_apps.min(self.config.apps);
        let holders = (0..hot as u32)
            .map(|app| {
                let mut nodes = 0;
                let mut instances = 0;
                for pool in self.pools.iter().filter_map(|p| p.get(&app)) {
                    let warm = pool
                        .instances()
                        .iter()
                        .filter(|i| i.phase != Phase::Stopped)
                        .count() as u32;
                    nodes += u32::from(warm > 0);
                    instances += warm;
                }
                (nodes, instances)
            })
            .collect();
        let end = EndState {
            unfinished: (self.flights.len() - self.free.len()) as u64,
            served_per_node: self.nodes.iter().map(|n| n.served).collect(),
            holders,
            duration: self.end,
        };
        let conditions = conditions(&self.config, self.views.lags());
        self.metrics.report(conditions, end)
    }
}

/// Whether every holder in `warm` (one entry per instance, sorted by node) has at least
/// `target` in flight per instance, as `place` reads it: a warm decision then had no room
/// anywhere.
fn every_holder_at_target(warm: &[Warm], target: u32) -> bool {
    warm.chunk_by(|a, b| a.node == b.node).all(|entries| {
        let in_flight = entries.iter().map(|w| w.in_flight).max().unwrap_or(0);
        in_flight >= u64::from(target) * entries.len() as u64
    })
}

/// At deploy, the app's container is created on the worker the cold rule picks on an idle
/// cluster (`DataPlane::router` -> `is_cold_pick`).
fn pre_create(
    config: &Config,
    pool_config: PoolConfig,
    names: &[String],
    rng: &mut StdRng,
) -> Vec<BTreeMap<u32, Pool>> {
    let idle: Vec<WorkerLoad> = (0..config.nodes as u64)
        .map(|node| WorkerLoad {
            node,
            live: true,
            runs_apps: true,
            in_flight: 0,
            instances: 0,
            cpus: 0,
            mem_available_mib: 0,
        })
        .collect();
    let mut pools = vec![BTreeMap::new(); config.nodes];
    for (app, name) in names.iter().enumerate() {
        let request = Request {
            app: name,
            release: RELEASE,
            concurrency_target: config.concurrency_target,
            max_holders: config.scale_max,
        };
        if let Decision::Spawn { node } = place(&request, &idle, &[], rng) {
            pools[node as usize].insert(app as u32, Pool::pre_created(pool_config, 0));
        }
    }
    pools
}

fn conditions(config: &Config, lags: &LagTable) -> Conditions {
    let seconds = |m: Micros| m as f64 / SECOND as f64;
    let millis = |m: Micros| m as f64 / 1_000.0;
    Conditions {
        nodes: config.nodes,
        apps: config.apps,
        seconds: seconds(config.duration),
        seed: config.seed,
        zipf: config.zipf_exponent,
        rate: config.rate,
        service_ms: millis(config.service_mean),
        cold_start_ms: millis(config.cold_start),
        wake_ms: millis(config.wake),
        concurrency_target: config.concurrency_target,
        scale_max: config.scale_max,
        pause_after_s: seconds(config.pause_after),
        idle_timeout_s: seconds(config.idle_timeout),
        node_capacity: config.node_capacity,
        gossip_round_ms: millis(config.gossip_round),
        gossip_lag: config.gossip_lag.to_string(),
        gossip_lag_mean_rounds: (lags.mean() * 100.0).round() / 100.0,
        gossip_lag_max_rounds: lags.max(),
        window_s: seconds(config.window),
        hot_apps: config.hot_apps,
    }
}
