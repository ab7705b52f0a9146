//! The simulated network: one broker through which every cross-node message travels.
//!
//! A sender hands [`Net::send`] a closure instead of bytes; the harness calls
//! [`Net::advance_to`] at each step boundary, which runs every closure whose delivery time
//! has come, with `true` when the message arrives and `false` when it is lost. Latency, loss,
//! one-way partitions, crashed nodes and slow nodes are decided here and nowhere else.
//!
//! Determinism: every draw comes from the Net's own seeded RNG, a fixed number of draws per
//! `send` call (one latency draw, plus one loss draw for a datagram, whether or not the message
//! is then lost to a partition), and closures run in `(deliver_at, send order)` order. So the
//! same seed and the same sequence of calls give the same deliveries in the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use crate::trace::NodeId;

/// The kind of message: datagrams may be lost and reordered; stream messages are ordered per
/// (from, to) pair and never lost except by a partition or a down node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A gossip datagram: subject to the loss draw, and a later one may arrive first.
    Datagram,
    /// A piece of a reliable stream (QUIC in production): in order per (from, to) pair.
    Stream,
}

/// The network's background faults; partitions, crashes and slow nodes are set on [`Net`].
#[derive(Clone, Debug)]
pub struct Faults {
    /// One-way latency in ms, drawn uniformly from `min..=max`.
    pub latency_ms: (u64, u64),
    /// The probability that a datagram is lost, `0.0..1.0`.
    pub datagram_loss: f64,
}

/// Counters for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages whose closure ran with `true`.
    pub delivered: u64,
    /// Messages whose closure ran with `false`.
    pub lost: u64,
}

/// What a message does when it arrives (`true`) or is lost (`false`).
type Deliver = Box<dyn FnOnce(bool) + Send>;

/// A message waiting for its delivery time.
struct Pending {
    from: NodeId,
    to: NodeId,
    /// Lost already at send time (the loss draw, a partition or a down node).
    lost: bool,
    /// A timer ([`Net::after`]), not a message: it always fires.
    timer: bool,
    deliver: Deliver,
}

struct State {
    now_ms: u64,
    rng: StdRng,
    faults: Faults,
    next_sequence: u64,
    /// Keyed by `(deliver_at, sequence)`: the order closures run in.
    queue: BTreeMap<(u64, u64), Pending>,
    /// The latest delivery time given to a stream message of each `(from, to)` pair.
    stream_tail: BTreeMap<(NodeId, NodeId), u64>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    down: BTreeSet<NodeId>,
    slow: BTreeMap<NodeId, u64>,
    stats: NetStats,
}

impl State {
    /// Whether a `from -> to` message is lost to a partition or a down end right now.
    fn cut(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to)) || self.down.contains(&from) || self.down.contains(&to)
    }

    fn slowness(&self, node: NodeId) -> u64 {
        self.slow.get(&node).copied().unwrap_or(0)
    }
}

/// The broker; cheap to clone (every clone is the same network).
#[derive(Clone)]
pub struct Net {
    state: Arc<Mutex<State>>,
}

impl Net {
    /// A network at time 0 drawing from `seed`.
    ///
    /// Panics if `faults.latency_ms` has its minimum above its maximum.
    pub fn new(seed: u64, faults: Faults) -> Self {
        let (min, max) = faults.latency_ms;
        assert!(min <= max, "latency range {min}..={max} ms is empty");
        let state = State {
            now_ms: 0,
            rng: StdRng::seed_from_u64(seed),
            faults,
            next_sequence: 0,
            queue: BTreeMap::new(),
            stream_tail: BTreeMap::new(),
            blocked: BTreeSet::new(),
            down: BTreeSet::new(),
            slow: BTreeMap::new(),
            stats: NetStats::default(),
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The time of the last [`Net::advance_to`], in ms.
    pub fn now_ms(&self) -> u64 {
        self.lock().now_ms
    }

    /// Schedules `deliver(true)` at now + latency (+ the slow-node extra of either end); stream
    /// messages never overtake an earlier stream message of the same (from, to) pair.
    /// `deliver(false)` instead when the message is lost: a datagram by the loss draw; any
    /// message when `from -> to` is blocked or either end is down at send time, or when
    /// `from -> to` is blocked or `to` is down at delivery time (a message sent before its
    /// sender crashed still arrives). The closure runs inside `advance_to`, on the harness thread, never under the
    /// Net's lock (it may call `send` again). A lost message's closure also runs at its
    /// delivery time, so a stream's losses are reported in order too.
    pub fn send(
        &self,
        from: NodeId,
        to: NodeId,
        class: Class,
        deliver: Box<dyn FnOnce(bool) + Send>,
    ) {
        let mut state = self.lock();
        let (min, max) = state.faults.latency_ms;
        let latency = state.rng.gen_range(min..=max);
        let dropped =
            class == Class::Datagram && state.rng.gen::<f64>() < state.faults.datagram_loss;
        let extra = state.slowness(from) + state.slowness(to);
        let mut deliver_at = state.now_ms + latency + extra;
        if class == Class::Stream {
            let tail = state.stream_tail.entry((from, to)).or_insert(0);
            deliver_at = deliver_at.max(*tail);
            *tail = deliver_at;
        }
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let lost = dropped || state.cut(from, to);
        let pending = Pending {
            from,
            to,
            lost,
            timer: false,
            deliver,
        };
        state.queue.insert((deliver_at, sequence), pending);
    }

    /// Runs `action(true)` `delay_ms` from now, in order with the messages (a timeout the
    /// network itself keeps, such as QUIC's idle timeout).
    pub fn after(&self, delay_ms: u64, action: Box<dyn FnOnce(bool) + Send>) {
        let mut state = self.lock();
        let at = state.now_ms + delay_ms;
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let pending = Pending {
            from: 0,
            to: 0,
            lost: false,
            timer: true,
            deliver: action,
        };
        state.queue.insert((at, sequence), pending);
    }

    /// Moves time to `now_ms` (never backwards) and runs every closure due by then in
    /// (deliver_at, sequence) order. Messages scheduled by those closures for a time
    /// <= now_ms also run in this call.
    pub fn advance_to(&self, now_ms: u64) {
        {
            let mut state = self.lock();
            state.now_ms = state.now_ms.max(now_ms);
        }
        while let Some((arrived, deliver)) = self.pop_due() {
            deliver(arrived);
        }
    }

    /// Takes the next due message off the queue and counts it; `None` when nothing is due.
    fn pop_due(&self) -> Option<(bool, Deliver)> {
        let mut state = self.lock();
        let now_ms = state.now_ms;
        let entry = state.queue.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        let pending = entry.remove();
        if pending.timer {
            return Some((true, pending.deliver));
        }
        // What was sent before its sender went down still arrives; a partition or a down
        // receiver loses it.
        let arrived = !pending.lost
            && !state.blocked.contains(&(pending.from, pending.to))
            && !state.down.contains(&pending.to);
        if arrived {
            state.stats.delivered += 1;
        } else {
            state.stats.lost += 1;
        }
        Some((arrived, pending.deliver))
    }

    /// One-way partition: from now on `from -> to` messages are lost.
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }

    /// Whether `from -> to` is blocked.
    pub fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.lock().blocked.contains(&(from, to))
    }

    /// A crashed node: everything to or from it is lost until `set_down(node, false)`.
    pub fn set_down(&self, node: NodeId, down: bool) {
        let mut state = self.lock();
        if down {
            state.down.insert(node);
        } else {
            state.down.remove(&node);
        }
    }

    /// Extra one-way latency on every message to or from `node` (a slow node); 0 to clear.
    pub fn set_slow(&self, node: NodeId, extra_ms: u64) {
        let mut state = self.lock();
        if extra_ms == 0 {
            state.slow.remove(&node);
        } else {
            state.slow.insert(node, extra_ms);
        }
    }

    /// Counters for reports: messages delivered, lost.
    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// The state; a closure that panicked never held the lock, so poisoning carries no
    /// half-done update and is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        super::lock(&self.state)
    }
}
