//! The fleet loop: placement, single-flight starts and gossip load for a thousand nodes, with
//! nothing else (DESIGN §8, "a second, cheaper event loop"; issue 8 point 5).
//!
//! **Real code.** Every request is placed by `shoal_mesh::placement::place`, the function the
//! node's data plane calls (`node/src/dataplane/mod.rs::DataPlane::pick`), with a view built the
//! way the node builds it: gossip's `in_flight`, `instances` and `warm:<app>` keys as
//! `PlacementView::from_members` reads them (one entry per warm instance, by the real
//! `WarmValue::entries`), a few rounds late, raised by the ingress's own forwarded requests in
//! flight (`with_outstanding`). The request carries the app's release,
//! `concurrency_target` and `max_holders = scale.max`, as `pick` fills it in. At deploy each
//! app's container is pre-created on the worker `place` picks for it on an idle cluster, as
//! `DataPlane::router` does via `is_cold_pick`.
//!
//! **Modelled.** The per-worker instance pool ([`pool`], after `node/src/instances.rs`), gossip
//! propagation ([`gossip`], push-pull epidemic with chitchat's fan-out of 3), the ingress's
//! in-flight book ([`ingress`]), the workload (Poisson arrivals at a uniformly drawn ingress,
//! DNS round robin; Zipf app popularity; exponential service times) and each node's capacity
//! (concurrent requests it serves before queueing them). No network delay, no failures, one
//! release.
//!
//! Layout:
//! - [`clock`]: virtual time and the event queue;
//! - [`sample`]: Zipf and exponential draws;
//! - [`pool`]: the instance pool model;
//! - [`gossip`]: gossip lag and each ingress's view;
//! - [`ingress`]: the ingress's own in-flight counts;
//! - [`world`]: the event loop tying them together;
//! - [`metrics`]: what is measured and the [`Report`].
//!
//! Determinism: one `StdRng` seeded from [`Config::seed`] makes every draw (workload, gossip
//! lags, p2c), events at equal times run in scheduling order, and every collection a decision
//! reads is a `Vec` or a `BTreeMap`. The same config gives the same [`Report`], trace hash
//! included.

pub mod clock;
pub mod gossip;
pub mod ingress;
pub mod metrics;
pub mod pool;
pub mod sample;
pub mod world;

use clock::{Micros, MILLISECOND, SECOND};
pub use metrics::Report;
pub use world::World;

/// How gossip lags between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GossipLag {
    /// Push-pull epidemic, `fanout` peers per node per round (chitchat: 3).
    Epidemic {
        /// Peers per node per round.
        fanout: usize,
    },
    /// Every other node exactly `rounds` rounds late.
    Fixed {
        /// Rounds.
        rounds: u8,
    },
}

impl std::fmt::Display for GossipLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GossipLag::Epidemic { fanout } => write!(f, "epidemic(fanout {fanout})"),
            GossipLag::Fixed { rounds } => write!(f, "fixed({rounds} rounds)"),
        }
    }
}

/// A fleet run's parameters. Scale settings default to the manifest's `[scale]` defaults
/// (`node/src/manifest.rs`) except `concurrency_target` and `max`, which are set so that the
/// popular apps need several instances at the default rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Nodes, each an ingress and a worker.
    pub nodes: usize,
    /// Apps, all service apps.
    pub apps: usize,
    /// Virtual time to simulate.
    pub duration: Micros,
    /// Seed of the run's one RNG.
    pub seed: u64,
    /// Zipf exponent of app popularity (0 = uniform).
    pub zipf_exponent: f64,
    /// Total requests per second over the cluster (Poisson); 0 = only injected requests.
    pub rate: f64,
    /// Mean service time (exponential).
    pub service_mean: Micros,
    /// Create/start of an instance until it answers.
    pub cold_start: Micros,
    /// Thaw of a paused instance.
    pub wake: Micros,
    /// `scale.concurrency_target`.
    pub concurrency_target: u32,
    /// `scale.max`: instances per worker, and nodes holding the app.
    pub scale_max: u32,
    /// `scale.pause_after`.
    pub pause_after: Micros,
    /// `scale.idle_timeout`.
    pub idle_timeout: Micros,
    /// Requests that may wait for a start on one worker (`worker.rs`: 1,000).
    pub queue_limit: usize,
    /// How long a request may wait for a start (`worker.rs`: 30 s).
    pub queue_deadline: Micros,
    /// Concurrent requests a node serves before queueing (0 = unlimited).
    pub node_capacity: u32,
    /// Gossip round (`DEFAULT_GOSSIP_INTERVAL`: 200 ms).
    pub gossip_round: Micros,
    /// How gossip lags.
    pub gossip_lag: GossipLag,
    /// The worker's pool tick (`worker.rs`: 500 ms).
    pub worker_tick: Micros,
    /// Balance window.
    pub window: Micros,
    /// The most popular apps reported as hot.
    pub hot_apps: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodes: 1_000,
            apps: 10_000,
            duration: 60 * SECOND,
            seed: 1,
            zipf_exponent: 1.0,
            rate: 50_000.0,
            service_mean: 20 * MILLISECOND,
            cold_start: 500 * MILLISECOND,
            wake: 25 * MILLISECOND,
            concurrency_target: 10,
            scale_max: 64,
            pause_after: 30 * SECOND,
            idle_timeout: 600 * SECOND,
            queue_limit: 1_000,
            queue_deadline: 30 * SECOND,
            node_capacity: 64,
            gossip_round: 200 * MILLISECOND,
            gossip_lag: GossipLag::Epidemic { fanout: 3 },
            worker_tick: 500 * MILLISECOND,
            window: 5 * SECOND,
            hot_apps: 10,
        }
    }
}

/// A parameter that cannot make a run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid fleet parameter: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Checks the parameters; a valid config runs without panicking.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: &str| Err(ConfigError(message.to_owned()));
        if self.nodes == 0 || self.nodes > 65_535 {
            return fail("`nodes` must be between 1 and 65,535");
        }
        if self.apps == 0 || self.apps > 10_000_000 {
            return fail("`apps` must be between 1 and 10,000,000");
        }
        if !(self.zipf_exponent.is_finite() && self.zipf_exponent >= 0.0) {
            return fail("`zipf` must be a finite number >= 0");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return fail("`rate` must be a finite number >= 0");
        }
        if self.scale_max == 0 || self.concurrency_target == 0 {
            return fail("`scale-max` and `concurrency-target` must be at least 1");
        }
        if self.gossip_round == 0 || self.worker_tick == 0 || self.window == 0 {
            return fail("the gossip round, worker tick and window must be longer than zero");
        }
        if let GossipLag::Epidemic { fanout: 0 } = self.gossip_lag {
            return fail("the gossip fanout must be at least 1");
        }
        Ok(())
    }
}

/// Runs the fleet loop for `config.duration` and reports.
pub fn run(config: &Config) -> Result<Report, ConfigError> {
    config.validate()?;
    let mut world = World::new(config.clone());
    world.run_until(config.duration);
    Ok(world.report())
}

#[cfg(test)]
mod tests;
