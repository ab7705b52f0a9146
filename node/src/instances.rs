//! The instances of one service app on one worker, as a pure state machine (DESIGN.md §5, §8).
//!
//! [`Pool::handle`] takes the current time and one [`Event`] and returns the [`Action`]s to
//! carry out; it performs no I/O and reads no clock. A driver task executes the actions against
//! a container runtime and feeds their outcomes back as events. The pool decides:
//! - routing: a request goes to the ready instance with the fewest requests in flight, and
//!   among equals to the one forwarded to least recently, so that equally loaded instances
//!   take turns;
//! - single-flight starts: however many requests arrive for a cold app, one instance starts and
//!   the requests wait in a bounded queue with a deadline (then `Reject` -> 503 + Retry-After);
//! - idle policy: `Pause` after `pause_after` without requests or open streams, `Stop` after
//!   `idle_timeout`; `min` instances stay running;
//! - scale out to `max` when every ready instance is at its concurrency target;
//! - release replacement without failed requests: the new release starts, and only once it is
//!   ready do the old instances stop taking requests, drain, stop and go;
//! - crash handling: an instance that exits or fails to start is restarted on the next request,
//!   with exponential backoff, and its last failure is kept for `shoal apps`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Identifies one instance within its pool.
pub type InstanceId = u64;
/// Identifies one waiting request within its pool.
pub type RequestId = u64;

/// Scale and queueing settings of one app.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Instances kept running even when idle.
    pub min: u32,
    /// Most instances at once.
    pub max: u32,
    /// In-flight requests per instance before another is started.
    pub concurrency_target: u32,
    /// Idle time before a running instance is paused.
    pub pause_after: Duration,
    /// Idle time before an instance is stopped.
    pub idle_timeout: Duration,
    /// Requests that may wait for a start.
    pub queue_limit: usize,
    /// How long a request may wait for a start.
    pub queue_deadline: Duration,
    /// First restart delay after a crash; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
}

impl PoolConfig {
    /// Settings for tests: one instance, short timers.
    pub fn for_test() -> Self {
        Self {
            min: 0,
            max: 1,
            concurrency_target: 10,
            pause_after: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            queue_limit: 100,
            queue_deadline: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Something that happened, fed to [`Pool::handle`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// `release` is now the app's current release.
    Deployed { release: u64 },
    /// A request arrived.
    Request { request: RequestId },
    /// A forwarded request finished.
    RequestDone { instance: InstanceId },
    /// A WebSocket or SSE stream opened on an instance (counts as activity while open).
    StreamOpened { instance: InstanceId },
    /// Such a stream closed.
    StreamClosed { instance: InstanceId },
    /// `Create` succeeded.
    Created { instance: InstanceId },
    /// `Start` or `Unpause` succeeded and the app answers at `addr`.
    Ready {
        instance: InstanceId,
        addr: SocketAddr,
    },
    /// `Pause` succeeded.
    Paused { instance: InstanceId },
    /// `Stop` succeeded.
    Stopped { instance: InstanceId },
    /// `Remove` succeeded.
    Removed { instance: InstanceId },
    /// An action on the instance failed, or the instance exited on its own.
    Failed {
        instance: InstanceId,
        reason: String,
    },
    /// Time passed: deadlines and idle timers are checked.
    Tick,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create (not start) a container for `release`.
    Create { instance: InstanceId, release: u64 },
    /// Start a created or stopped instance, then report `Ready` once its port answers.
    Start { instance: InstanceId },
    /// Freeze a running instance.
    Pause { instance: InstanceId },
    /// Thaw a paused instance, then report `Ready`.
    Unpause { instance: InstanceId },
    /// Stop an instance.
    Stop { instance: InstanceId },
    /// Remove an instance's container.
    Remove { instance: InstanceId },
    /// Send the request to the instance; `waited` is set when it waited for a start.
    Forward {
        request: RequestId,
        instance: InstanceId,
        addr: SocketAddr,
        waited: Option<Duration>,
    },
    /// Answer the request 503 with `Retry-After`.
    Reject {
        request: RequestId,
        reason: String,
        retry_after: Duration,
    },
}

/// Where an instance is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `Create` in flight.
    Creating,
    /// A container exists and is not running (pre-created, or stopped).
    Stopped,
    /// `Start` in flight.
    Starting,
    /// Answering at `addr`.
    Ready { addr: SocketAddr },
    /// `Pause` in flight.
    Pausing { addr: SocketAddr },
    /// Frozen.
    Paused { addr: SocketAddr },
    /// `Unpause` in flight.
    Waking,
    /// `Stop` in flight.
    Stopping,
    /// `Remove` in flight.
    Removing,
    /// Crashed or failed to start; may restart from `retry_at`.
    Failed { retry_at: Instant },
}

/// One instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// Its id.
    pub id: InstanceId,
    /// The release it runs.
    pub release: u64,
    /// Where it is.
    pub phase: Phase,
    /// Requests forwarded and not finished.
    pub in_flight: u32,
    /// Open WebSocket/SSE streams.
    pub streams: u32,
    /// Last time it had work.
    pub idle_since: Instant,
    /// Which forward of the pool last went to it (0: none yet): a count, not a time, so that
    /// requests forwarded at the same instant still go round.
    pub last_forward: u64,
    /// Consecutive failures (reset when it becomes ready).
    pub failures: u32,
    /// The last failure, for operators.
    pub last_failure: Option<String>,
    /// Whether a container exists for it (so a restart is a start, not a create).
    pub has_container: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct Waiter {
    request: RequestId,
    arrived: Instant,
}

/// Every instance of one app on this worker, and the requests waiting for one.
#[derive(Clone, Debug)]
pub struct Pool {
    config: PoolConfig,
    release: Option<u64>,
    instances: BTreeMap<InstanceId, Instance>,
    waiters: VecDeque<Waiter>,
    next_instance: InstanceId,
    /// Requests forwarded so far: the sequence that [`Instance::last_forward`] records.
    forwards: u64,
}

impl Pool {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            release: None,
            instances: BTreeMap::new(),
            waiters: VecDeque::new(),
            next_instance: 1,
            forwards: 0,
        }
    }

    /// Replaces the scale settings (a new release may change them).
    pub fn set_config(&mut self, config: PoolConfig) {
        self.config = config;
    }

    /// The instances, by id.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    /// Requests waiting for an instance.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Applies one event at time `now`.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Deployed { release } => self.deployed(now, release, &mut actions),
            Event::Request { request } => self.request(now, request, &mut actions),
            Event::RequestDone { instance } => self.update(instance, |i| {
                i.in_flight = i.in_flight.saturating_sub(1);
                i.idle_since = now;
            }),
            Event::StreamOpened { instance } => self.update(instance, |i| i.streams += 1),
            Event::StreamClosed { instance } => self.update(instance, |i| {
                i.streams = i.streams.saturating_sub(1);
                i.idle_since = now;
            }),
            Event::Created { instance } => self.created(instance),
            Event::Ready { instance, addr } => self.ready(now, instance, addr, &mut actions),
            Event::Paused { instance } => self.paused(instance),
            Event::Stopped { instance } => self.set_phase(instance, Phase::Stopped),
            Event::Removed { instance } => {
                self.instances.remove(&instance);
            }
            Event::Failed { instance, reason } => self.failed(now, instance, reason),
            Event::Tick => {}
        }
        self.housekeeping(now, &mut actions);
        actions
    }

    fn update(&mut self, id: InstanceId, change: impl FnOnce(&mut Instance)) {
        if let Some(instance) = self.instances.get_mut(&id) {
            change(instance);
        }
    }

    fn set_phase(&mut self, id: InstanceId, phase: Phase) {
        self.update(id, |i| i.phase = phase);
    }

    /// Takes over an instance that exists already (a container a previous run of the node
    /// left), in `phase` (`Stopped`, `Paused` or `Ready`). Returns its new id.
    pub fn adopt(&mut self, now: Instant, release: u64, phase: Phase) -> InstanceId {
        self.insert_instance(now, release, phase, true)
    }

    fn insert_instance(
        &mut self,
        now: Instant,
        release: u64,
        phase: Phase,
        has_container: bool,
    ) -> InstanceId {
        let id = self.next_instance;
        self.next_instance += 1;
        self.instances.insert(
            id,
            Instance {
                id,
                release,
                phase,
                in_flight: 0,
                streams: 0,
                idle_since: now,
                last_forward: 0,
                failures: 0,
                last_failure: None,
                has_container,
            },
        );
        id
    }

    fn deployed(&mut self, now: Instant, release: u64, actions: &mut Vec<Action>) {
        if self.release == Some(release) {
            return;
        }
        self.release = Some(release);
        if self.instances.values().any(|i| i.release == release) {
            // Adopted from a previous run: nothing to pre-create.
            return;
        }
        // Pre-create, so the first request's wake is a start, not a create. Whether it starts
        // now (old instances are serving, or `min` > 0) is housekeeping's call.
        self.add_instance(now, release, actions);
    }

    fn add_instance(&mut self, now: Instant, release: u64, actions: &mut Vec<Action>) {
        let instance = self.insert_instance(now, release, Phase::Creating, false);
        actions.push(Action::Create { instance, release });
    }

    fn request(&mut self, now: Instant, request: RequestId, actions: &mut Vec<Action>) {
        if let Some(id) = self.least_loaded_ready() {
            self.forward(now, request, id, None, actions);
            return;
        }
        if self.waiters.len() >= self.config.queue_limit {
            actions.push(Action::Reject {
                request,
                reason: "too many requests are waiting for the app to start".to_owned(),
                retry_after: Duration::from_secs(1),
            });
            return;
        }
        self.waiters.push_back(Waiter {
            request,
            arrived: now,
        });
    }

    /// The ready instance with the fewest requests in flight: of the current release if it has
    /// one, else of an old release still serving while the new one starts. Among equally loaded
    /// ones, the one forwarded to least recently: instances mostly carry one or two requests,
    /// so ties are the rule, and sending them all to one instance (the lowest id, as before)
    /// gave it up to 1.45x its node's mean in the fleet simulation (BENCHMARKS.md).
    fn least_loaded_ready(&self) -> Option<InstanceId> {
        let ready = |current: bool| {
            self.instances
                .values()
                .filter(move |i| matches!(i.phase, Phase::Ready { .. }))
                .filter(move |i| (Some(i.release) == self.release) == current)
                .min_by_key(|i| (i.in_flight, i.last_forward, i.id))
                .map(|i| i.id)
        };
        ready(true).or_else(|| ready(false))
    }

    fn forward(
        &mut self,
        now: Instant,
        request: RequestId,
        id: InstanceId,
        waited: Option<Duration>,
        actions: &mut Vec<Action>,
    ) {
        let instance = self
            .instances
            .get_mut(&id)
            .expect("routing to a known instance");
        let Phase::Ready { addr } = instance.phase else {
            unreachable!("routing only to ready instances");
        };
        self.forwards += 1;
        instance.in_flight += 1;
        instance.idle_since = now;
        instance.last_forward = self.forwards;
        actions.push(Action::Forward {
            request,
            instance: id,
            addr,
            waited,
        });
    }

    fn created(&mut self, id: InstanceId) {
        self.update(id, |i| {
            i.phase = Phase::Stopped;
            i.has_container = true;
        });
    }

    fn ready(&mut self, now: Instant, id: InstanceId, addr: SocketAddr, actions: &mut Vec<Action>) {
        self.update(id, |i| {
            i.phase = Phase::Ready { addr };
            i.failures = 0;
            i.idle_since = now;
        });
        while let Some(waiter) = self.waiters.pop_front() {
            let target = self.least_loaded_ready().expect("an instance is ready");
            let waited = now.saturating_duration_since(waiter.arrived);
            self.forward(now, waiter.request, target, Some(waited), actions);
        }
    }

    fn paused(&mut self, id: InstanceId) {
        self.update(id, |i| {
            if let Phase::Pausing { addr } = i.phase {
                i.phase = Phase::Paused { addr };
            }
        });
    }

    fn failed(&mut self, now: Instant, id: InstanceId, reason: String) {
        let (base, max) = (self.config.backoff_base, self.config.backoff_max);
        self.update(id, |i| {
            if i.phase == Phase::Creating {
                i.has_container = false;
            }
            i.failures += 1;
            let exponent = i.failures.saturating_sub(1).min(16);
            let delay = base.saturating_mul(1 << exponent).min(max);
            i.phase = Phase::Failed {
                retry_at: now + delay,
            };
            i.in_flight = 0;
            i.streams = 0;
            i.last_failure = Some(reason);
        });
    }

    /// Everything that follows from the state rather than from one event: deadlines, starts
    /// for waiting requests, `min`, scale-out, release replacement, idle pause and stop.
    fn housekeeping(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.expire_waiters(now, actions);
        self.retire_old_releases(actions);
        if !self.waiters.is_empty() && !self.any_current(is_coming_up) {
            self.wake_one(now, actions);
        }
        self.keep_min_running(now, actions);
        self.scale_out(now, actions);
        self.replace_old_release(now, actions);
        self.idle(now, actions);
    }

    fn expire_waiters(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let deadline = self.config.queue_deadline;
        while let Some(waiter) = self.waiters.front() {
            if now.saturating_duration_since(waiter.arrived) < deadline {
                break;
            }
            let waiter = self.waiters.pop_front().expect("front exists");
            actions.push(Action::Reject {
                request: waiter.request,
                reason: "the app did not start in time".to_owned(),
                retry_after: Duration::from_secs(1),
            });
        }
    }

    fn any_current(&self, test: fn(&Phase) -> bool) -> bool {
        self.instances
            .values()
            .any(|i| Some(i.release) == self.release && test(&i.phase))
    }

    fn current_count(&self, test: fn(&Phase) -> bool) -> usize {
        self.instances
            .values()
            .filter(|i| Some(i.release) == self.release && test(&i.phase))
            .count()
    }

    /// Brings one instance of the current release up: the cheapest first (thaw, start, create).
    /// Returns false when every candidate is backing off after failures (waiters are rejected).
    fn wake_one(&mut self, now: Instant, actions: &mut Vec<Action>) -> bool {
        let Some(release) = self.release else {
            return false;
        };
        let current = |i: &&Instance| i.release == release;
        let pick = |test: fn(&Instance, Instant) -> bool| {
            self.instances
                .values()
                .filter(current)
                .find(|i| test(i, now))
                .map(|i| i.id)
        };
        if let Some(id) = pick(|i, _| matches!(i.phase, Phase::Paused { .. })) {
            self.set_phase(id, Phase::Waking);
            actions.push(Action::Unpause { instance: id });
        } else if let Some(id) = pick(|i, now| can_start(i, now) && i.has_container) {
            self.set_phase(id, Phase::Starting);
            actions.push(Action::Start { instance: id });
        } else if let Some(id) = pick(can_start) {
            // Failed before its container existed: create it again.
            self.update(id, |i| i.phase = Phase::Creating);
            actions.push(Action::Create {
                instance: id,
                release,
            });
        } else if self.any_current(|p| matches!(p, Phase::Creating | Phase::Pausing { .. })) {
            // Comes up once its create or pause finishes.
        } else if let Some(retry_at) = self.earliest_retry() {
            self.reject_waiters(now, retry_at, actions);
            return false;
        } else if self.current_count(|p| !matches!(p, Phase::Removing)) < self.config.max as usize {
            self.add_instance(now, release, actions);
        }
        true
    }

    fn earliest_retry(&self) -> Option<Instant> {
        self.instances
            .values()
            .filter(|i| Some(i.release) == self.release)
            .filter_map(|i| match i.phase {
                Phase::Failed { retry_at } => Some(retry_at),
                _ => None,
            })
            .min()
    }

    /// Refuses the waiting requests while the app backs off. The reason stays generic: the
    /// failure's detail (exit code, engine errors, paths) is for operators, not clients.
    fn reject_waiters(&mut self, now: Instant, retry_at: Instant, actions: &mut Vec<Action>) {
        let retry_after = retry_at
            .saturating_duration_since(now)
            .max(Duration::from_secs(1));
        for waiter in self.waiters.drain(..) {
            actions.push(Action::Reject {
                request: waiter.request,
                reason: "the app failed to start and will be retried".to_owned(),
                retry_after,
            });
        }
    }

    fn keep_min_running(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let running = |p: &Phase| matches!(p, Phase::Ready { .. }) || is_coming_up(p);
        while self.current_count(running) < self.config.min as usize {
            let before = actions.len();
            if !self.wake_one(now, actions) || actions.len() == before {
                break;
            }
        }
    }

    fn scale_out(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let target = self.config.concurrency_target;
        let ready: Vec<u32> = self
            .instances
            .values()
            .filter(|i| Some(i.release) == self.release && matches!(i.phase, Phase::Ready { .. }))
            .map(|i| i.in_flight)
            .collect();
        let saturated = !ready.is_empty() && ready.iter().all(|&n| n >= target);
        let up = |p: &Phase| matches!(p, Phase::Ready { .. }) || is_coming_up(p);
        if saturated
            && !self.any_current(is_coming_up)
            && self.current_count(up) < self.config.max as usize
        {
            self.wake_one(now, actions);
        }
    }

    /// While old instances serve, bring the new release up so it can take over.
    fn replace_old_release(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let old_serving = self
            .instances
            .values()
            .any(|i| Some(i.release) != self.release && matches!(i.phase, Phase::Ready { .. }));
        let current_up = |p: &Phase| matches!(p, Phase::Ready { .. }) || is_coming_up(p);
        if old_serving && !self.any_current(current_up) {
            self.wake_one(now, actions);
        }
    }

    /// Old-release instances stop once the current release is ready (or at once if they are
    /// not serving), after their in-flight requests and streams finish; then they are removed.
    fn retire_old_releases(&mut self, actions: &mut Vec<Action>) {
        let current_ready = self.any_current(|p| matches!(p, Phase::Ready { .. }));
        for instance in self.instances.values_mut() {
            if Some(instance.release) == self.release {
                continue;
            }
            let busy = instance.in_flight > 0 || instance.streams > 0;
            match instance.phase {
                Phase::Ready { .. } if current_ready && !busy => {
                    instance.phase = Phase::Stopping;
                    actions.push(Action::Stop {
                        instance: instance.id,
                    });
                }
                Phase::Paused { .. } => {
                    instance.phase = Phase::Stopping;
                    actions.push(Action::Stop {
                        instance: instance.id,
                    });
                }
                Phase::Stopped | Phase::Failed { .. } => {
                    instance.phase = Phase::Removing;
                    actions.push(Action::Remove {
                        instance: instance.id,
                    });
                }
                _ => {}
            }
        }
    }

    fn idle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let (pause_after, idle_timeout) = (self.config.pause_after, self.config.idle_timeout);
        let mut running = self.current_count(|p| matches!(p, Phase::Ready { .. }));
        let min = self.config.min as usize;
        for instance in self.instances.values_mut().rev() {
            if Some(instance.release) != self.release
                || instance.in_flight > 0
                || instance.streams > 0
            {
                continue;
            }
            let idle = now.saturating_duration_since(instance.idle_since);
            match instance.phase {
                Phase::Ready { addr } if running > min && idle >= pause_after.min(idle_timeout) => {
                    running -= 1;
                    if idle >= idle_timeout {
                        instance.phase = Phase::Stopping;
                        actions.push(Action::Stop {
                            instance: instance.id,
                        });
                    } else {
                        instance.phase = Phase::Pausing { addr };
                        actions.push(Action::Pause {
                            instance: instance.id,
                        });
                    }
                }
                Phase::Paused { .. } if idle >= idle_timeout => {
                    instance.phase = Phase::Stopping;
                    actions.push(Action::Stop {
                        instance: instance.id,
                    });
                }
                _ => {}
            }
        }
    }
}

/// Starting, waking or being created: will be ready soon without another action.
fn is_coming_up(phase: &Phase) -> bool {
    matches!(phase, Phase::Starting | Phase::Waking | Phase::Creating)
}

fn can_start(instance: &Instance, now: Instant) -> bool {
    match instance.phase {
        Phase::Stopped => true,
        Phase::Failed { retry_at } => retry_at <= now,
        _ => false,
    }
}

#[cfg(test)]
#[path = "instances_tests.rs"]
mod tests;
