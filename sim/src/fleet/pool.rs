//! The instances of one app on one worker: a model of `node/src/instances.rs` (`Pool`) cut
//! down to what placement sees, on virtual time.
//!
//! Kept from the real pool, rule for rule:
//! - a request goes to the ready instance with the fewest in flight, and among equals to the
//!   one forwarded to least recently (`least_loaded_ready`); with none ready it waits in a
//!   queue (limit and deadline) and the pool brings **one** instance up if none is coming up
//!   (`housekeeping` -> `wake_one`): K waiting requests start one instance;
//! - `wake_one` thaws a paused instance first, then starts a stopped one, then creates a new
//!   one while fewer than `max` exist;
//! - when the instance comes up every waiter is forwarded to the least-loaded ready instance;
//! - scale-out: when every ready instance has `concurrency_target` in flight, none is coming
//!   up and fewer than `max` are up, one more is brought up (`scale_out`);
//! - idle: a ready instance with nothing in flight is paused after `pause_after` (stopped
//!   instead if `idle_timeout` has passed too); a paused one is stopped after `idle_timeout`.
//!   Stopped instances keep their container (counted in gossip's `instances`), so the next
//!   start skips the create.
//!
//! Left out: releases (one release per run), crashes and backoff, streams, `min` (always 0).
//! Transitions that take a Docker call in reality (create+start, unpause) take the configured
//! `cold_start` / `wake` time here; pause and stop are instantaneous.

use std::collections::VecDeque;

use super::clock::Micros;

/// Index of an instance within its pool (instances are never removed: one release per run).
pub type InstanceId = u32;
/// A request, as the fleet loop numbers it.
pub type RequestId = u32;

/// One app's scale settings, as `node/src/worker.rs::pool_config` builds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most instances at once (`scale.max`).
    pub max: u32,
    /// In-flight requests per instance before another starts.
    pub concurrency_target: u32,
    /// Idle time before a ready instance is paused.
    pub pause_after: Micros,
    /// Idle time before an instance is stopped.
    pub idle_timeout: Micros,
    /// Requests that may wait for a start.
    pub queue_limit: usize,
    /// How long a request may wait for a start.
    pub queue_deadline: Micros,
}

/// Where an instance is in its life (the real pool's `Creating`, `Pausing` and `Stopping`
/// are folded into their neighbours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A container exists and is not running.
    Stopped,
    /// Being created and/or started: a cold start.
    Starting,
    /// Being thawed.
    Waking,
    /// Serving.
    Ready,
    /// Frozen.
    Paused,
}

impl Phase {
    fn is_coming_up(self) -> bool {
        matches!(self, Phase::Starting | Phase::Waking)
    }
}

/// One instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Where it is.
    pub phase: Phase,
    /// Requests forwarded to it and not finished.
    pub in_flight: u32,
    /// Last time it had work.
    pub idle_since: Micros,
    /// Since when it has been ready without a break (`None` when not ready); for metrics.
    pub ready_since: Option<Micros>,
    /// Requests forwarded to it in the current metrics window.
    pub served_in_window: u64,
    /// Which forward of the pool last went to it (0: none yet).
    pub last_forward: u64,
}

/// What happened to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request arrived at this worker for this app.
    Request {
        /// The request.
        request: RequestId,
    },
    /// An instance finished coming up.
    Ready {
        /// The instance.
        instance: InstanceId,
    },
    /// A forwarded request finished.
    Done {
        /// The instance that served it.
        instance: InstanceId,
    },
    /// Time passed (the worker's 500 ms tick): deadlines and idle timers are checked.
    Tick,
}

/// Why a request was refused (the real pool answers 503 with `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// `queue_limit` requests were waiting already.
    QueueFull,
    /// It waited `queue_deadline` for a start.
    Deadline,
}

/// What the fleet loop must carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Serve the request on the instance; `waited` is set when it waited for a start.
    Forward {
        /// The request.
        request: RequestId,
        /// The ready instance.
        instance: InstanceId,
        /// How long it waited for an instance to come up.
        waited: Option<Micros>,
    },
    /// Refuse the request.
    Reject {
        /// The request.
        request: RequestId,
        /// Why.
        reason: Rejection,
    },
    /// Create and/or start the instance (a cold start); report `Ready` when done.
    ColdStart {
        /// The instance.
        instance: InstanceId,
    },
    /// Thaw a paused instance; report `Ready` when done.
    Wake {
        /// The instance.
        instance: InstanceId,
    },
    /// A ready instance was paused.
    Paused {
        /// The instance.
        instance: InstanceId,
    },
    /// An instance was stopped; `was_ready` when it went straight from ready to stopped.
    Stopped {
        /// The instance.
        instance: InstanceId,
        /// Whether it was ready (rather than paused) before.
        was_ready: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiter {
    request: RequestId,
    arrived: Micros,
}

/// Every instance of one app on one worker, and the requests waiting for one.
#[derive(Clone, Debug)]
pub struct Pool {
    config: PoolConfig,
    instances: Vec<Instance>,
    waiters: VecDeque<Waiter>,
    /// Requests forwarded so far: the sequence `Instance::last_forward` records.
    forwards: u64,
    /// When the fleet loop has a `Tick` scheduled for this pool (its bookkeeping).
    pub tick_at: Option<Micros>,
}

impl Pool {
    /// An empty pool: the first request creates the container.
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            instances: Vec::new(),
            waiters: VecDeque::new(),
            forwards: 0,
            tick_at: None,
        }
    }

    /// A pool whose container was pre-created at deploy (the real `Deployed` -> `Create`).
    pub fn pre_created(config: PoolConfig, now: Micros) -> Self {
        let mut pool = Self::new(config);
        pool.instances.push(new_instance(Phase::Stopped, now));
        pool
    }

    /// The instances, by id.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Mutable access for the metrics window reset.
    pub fn instances_mut(&mut self) -> &mut [Instance] {
        &mut self.instances
    }

    /// Requests waiting for an instance to come up.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// What the worker gossips as the in-flight of `warm:<app>`: the sum over instances that
    /// are not stopped, when there is any (a paused or starting instance is worth routing to).
    /// As in `node/src/node.rs::load`, requests waiting for a start are not counted.
    pub fn warm_in_flight(&self) -> Option<u64> {
        let mut warm = false;
        let mut in_flight = 0u64;
        for instance in &self.instances {
            if instance.phase != Phase::Stopped {
                warm = true;
                in_flight += u64::from(instance.in_flight);
            }
        }
        warm.then_some(in_flight)
    }

    /// What the worker gossips as the instance count of `warm:<app>`: its ready instances (as
    /// `node.rs::load` counts those `running`; 0 while all are starting or paused).
    pub fn ready_instances(&self) -> u64 {
        self.instances
            .iter()
            .filter(|i| i.phase == Phase::Ready)
            .count() as u64
    }

    /// Applies one event at `now`, appending what to do to `actions`.
    pub fn handle(&mut self, now: Micros, event: Event, actions: &mut Vec<Action>) {
        match event {
            Event::Request { request } => self.request(now, request, actions),
            Event::Ready { instance } => self.ready(now, instance, actions),
            Event::Done { instance } => {
                let instance = &mut self.instances[instance as usize];
                instance.in_flight = instance.in_flight.saturating_sub(1);
                instance.idle_since = now;
            }
            Event::Tick => {}
        }
        self.housekeeping(now, actions);
    }

    /// The earliest time at which time alone changes something (a waiter's deadline, an idle
    /// pause or stop), if any.
    pub fn next_deadline(&self) -> Option<Micros> {
        let idle_first = self.config.pause_after.min(self.config.idle_timeout);
        let idle = self
            .instances
            .iter()
            .filter(|i| i.in_flight == 0)
            .filter_map(|i| match i.phase {
                Phase::Ready => Some(i.idle_since.saturating_add(idle_first)),
                Phase::Paused => Some(i.idle_since.saturating_add(self.config.idle_timeout)),
                _ => None,
            })
            .min();
        let deadline = self
            .waiters
            .front()
            .map(|w| w.arrived.saturating_add(self.config.queue_deadline));
        match (idle, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn request(&mut self, now: Micros, request: RequestId, actions: &mut Vec<Action>) {
        if let Some(id) = self.least_loaded_ready() {
            self.forward(now, request, id, None, actions);
        } else if self.waiters.len() >= self.config.queue_limit {
            actions.push(Action::Reject {
                request,
                reason: Rejection::QueueFull,
            });
        } else {
            self.waiters.push_back(Waiter {
                request,
                arrived: now,
            });
        }
    }

    fn least_loaded_ready(&self) -> Option<InstanceId> {
        self.instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.phase == Phase::Ready)
            .min_by_key(|(id, i)| (i.in_flight, i.last_forward, *id))
            .map(|(id, _)| id as InstanceId)
    }

    fn forward(
        &mut self,
        now: Micros,
        request: RequestId,
        id: InstanceId,
        waited: Option<Micros>,
        actions: &mut Vec<Action>,
    ) {
        self.forwards += 1;
        let instance = &mut self.instances[id as usize];
        instance.in_flight += 1;
        instance.idle_since = now;
        instance.served_in_window += 1;
        instance.last_forward = self.forwards;
        actions.push(Action::Forward {
            request,
            instance: id,
            waited,
        });
    }

    fn ready(&mut self, now: Micros, id: InstanceId, actions: &mut Vec<Action>) {
        let instance = &mut self.instances[id as usize];
        instance.phase = Phase::Ready;
        instance.idle_since = now;
        instance.ready_since = Some(now);
        while let Some(waiter) = self.waiters.pop_front() {
            let target = self.least_loaded_ready().expect("an instance is ready");
            let waited = now.saturating_sub(waiter.arrived);
            self.forward(now, waiter.request, target, Some(waited), actions);
        }
    }

    /// The real pool's `housekeeping`, minus releases and `min`.
    fn housekeeping(&mut self, now: Micros, actions: &mut Vec<Action>) {
        self.expire_waiters(now, actions);
        if !self.waiters.is_empty() && !self.any(|p| p.is_coming_up()) {
            self.wake_one(now, actions);
        }
        self.scale_out(now, actions);
        self.idle(now, actions);
    }

    fn expire_waiters(&mut self, now: Micros, actions: &mut Vec<Action>) {
        while let Some(waiter) = self.waiters.front() {
            if now.saturating_sub(waiter.arrived) < self.config.queue_deadline {
                break;
            }
            actions.push(Action::Reject {
                request: waiter.request,
                reason: Rejection::Deadline,
            });
            self.waiters.pop_front();
        }
    }

    fn any(&self, test: impl Fn(Phase) -> bool) -> bool {
        self.instances.iter().any(|i| test(i.phase))
    }

    fn count(&self, test: impl Fn(Phase) -> bool) -> usize {
        self.instances.iter().filter(|i| test(i.phase)).count()
    }

    /// Brings one instance up, the cheapest first: thaw, start, create.
    fn wake_one(&mut self, now: Micros, actions: &mut Vec<Action>) {
        let find = |phase: Phase| self.instances.iter().position(|i| i.phase == phase);
        if let Some(id) = find(Phase::Paused) {
            self.instances[id].phase = Phase::Waking;
            actions.push(Action::Wake {
                instance: id as InstanceId,
            });
        } else if let Some(id) = find(Phase::Stopped) {
            self.instances[id].phase = Phase::Starting;
            actions.push(Action::ColdStart {
                instance: id as InstanceId,
            });
        } else if self.instances.len() < self.config.max as usize {
            self.instances.push(new_instance(Phase::Starting, now));
            actions.push(Action::ColdStart {
                instance: (self.instances.len() - 1) as InstanceId,
            });
        }
    }

    fn scale_out(&mut self, now: Micros, actions: &mut Vec<Action>) {
        let target = self.config.concurrency_target;
        let mut ready = self
            .instances
            .iter()
            .filter(|i| i.phase == Phase::Ready)
            .peekable();
        let saturated = ready.peek().is_some() && ready.all(|i| i.in_flight >= target);
        let up = self.count(|p| p == Phase::Ready || p.is_coming_up());
        if saturated && !self.any(|p| p.is_coming_up()) && up < self.config.max as usize {
            self.wake_one(now, actions);
        }
    }

    fn idle(&mut self, now: Micros, actions: &mut Vec<Action>) {
        let (pause_after, idle_timeout) = (self.config.pause_after, self.config.idle_timeout);
        for (id, instance) in self.instances.iter_mut().enumerate().rev() {
            if instance.in_flight > 0 {
                continue;
            }
            let idle = now.saturating_sub(instance.idle_since);
            let id = id as InstanceId;
            match instance.phase {
                Phase::Ready if idle >= pause_after.min(idle_timeout) => {
                    instance.ready_since = None;
                    if idle >= idle_timeout {
                        instance.phase = Phase::Stopped;
                        actions.push(Action::Stopped {
                            instance: id,
                            was_ready: true,
                        });
                    } else {
                        instance.phase = Phase::Paused;
                        actions.push(Action::Paused { instance: id });
                    }
                }
                Phase::Paused if idle >= idle_timeout => {
                    instance.phase = Phase::Stopped;
                    actions.push(Action::Stopped {
                        instance: id,
                        was_ready: false,
                    });
                }
                _ => {}
            }
        }
    }
}

fn new_instance(phase: Phase, now: Micros) -> Instance {
    Instance {
        phase,
        in_flight: 0,
        idle_since: now,
        ready_since: None,
        served_in_window: 0,
        last_forward: 0,
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
