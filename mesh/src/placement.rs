//! Placement: which worker serves a request for a service app (DESIGN §4 step 4).
//!
//! [`place`] is a pure function of the caller's gossip view: no I/O, no clock, and the only
//! randomness is the RNG the caller passes, so a seeded RNG replays every decision. Inputs are
//! sorted by node id before any choice, so the order in which gossip lists nodes never matters.
//!
//! Eligible workers are those that are live and run apps. A [`Warm`] entry counts only when its
//! node is eligible and its release is the request's release: older releases are draining.
//!
//! **Warm path.** `warm` lists one [`Warm`] entry per instance that serves: a node's
//! `warm:<app>` value says how many it runs ([`parse_warm`], [`WarmValue::entries`]). A
//! *holder* is a node with entries of the request's release: its instance count is its number
//! of entries, its in-flight the largest `in_flight` among them (each carries the node's total;
//! a caller may raise one, as the ingress does with its own requests in flight there), and its
//! *load* is in-flight per instance. Power of two choices: two distinct holders are drawn, each
//! with probability proportional to its instances (the first among all holders, the second
//! among the others). The first draw is kept unless its load is higher than the second's; then
//! the second is taken with probability `(first's load - second's load) / concurrency_target`,
//! and always once the loads are a whole target apart. The decision is [`Decision::Warm`]. When
//! every holder has at least `concurrency_target` in flight per instance and some eligible
//! worker holds no warm instance, the decision is [`Decision::ScaleOut`] to the non-holder the
//! cold rule picks; with no such worker, or when `max_holders` nodes already hold one, the p2c
//! pick is used anyway.
//!
//! Why weighted draws and a graded preference: an instance, not a node, serves a request, so a
//! holder with six instances should take three times the requests of one with two, and uniform
//! draws over holders cap any holder's share at 2/H whatever its instances. Loads come from
//! gossip several rounds late, and every ingress reading the same round acts on the same
//! numbers. Always taking the lighter of the two (plain p2c) herds them all onto whichever
//! holder looked lightest, and so does any fixed threshold: a holder just past it is dropped
//! by everyone at once, its queue empties, and the next round floods it, while the new
//! instances its worker starts for the flood draw it yet more share (in the fleet simulation,
//! with views one round late, a threshold of a quarter of the target let one app climb to 80
//! instances on four nodes). A preference that grows with the gap moves only a matching share
//! of the requests, so the loads settle instead of swinging; for holders that differ by a few
//! requests per instance, mostly noise in gossip's counts, the weighted draw mostly decides,
//! an even share per instance on average. One entry per instance, rather than a count on one
//! entry, keeps the entry a caller builds or raises what it was.
//!
//! **Cold rule.** Each eligible worker has a load score `in_flight + instances`. The candidates
//! are the workers whose score is at most `min + slack`, where `min` is the lowest score and
//! `slack = max(COLD_SLACK_ABSOLUTE, min * COLD_SLACK_PERCENT / 100)` (8 or 25 %, whichever is
//! larger). Among the candidates the one with the highest [`rendezvous_score`] of
//! `(app, node)` wins (ties: lower node id), giving [`Decision::Spawn`].
//!
//! The trade-off: ingress nodes see load through gossip, a little late and not all at the same
//! moment. Picking the strictly least-loaded worker would let two ingresses that differ by one
//! in-flight request choose different workers, and both would start the app. With the slack,
//! views that differ by less than the slack keep the same candidate set, and rendezvous hashing
//! maps a cold app to the same worker from every ingress; that worker single-flights the spawn,
//! so K simultaneous cold requests start one instance. The cost is that a cold spawn may land
//! on a worker up to the slack busier than the least loaded, and that views straddling the
//! slack's edge can still disagree (at worst one extra instance, which idles away). A worker
//! beyond the slack, the heavily loaded one, is never picked while a lighter one exists.
//!
//! [`rendezvous_score`] is a fixed 64-bit hash, FNV-1a over the app name's bytes and the node
//! id's 8 little-endian bytes, then the splitmix64 finalizer; unlike std's `DefaultHasher` it is
//! the same on every Rust version and every platform, which matters because every node must
//! compute the same pick.

use rand::{Rng, RngCore};

/// Absolute part of the cold rule's slack, in load-score units (in-flight requests plus
/// instances).
pub const COLD_SLACK_ABSOLUTE: u64 = 8;

/// Relative part of the cold rule's slack, as a percentage of the lowest load score.
pub const COLD_SLACK_PERCENT: u64 = 25;

/// Most entries one `warm:<app>` value expands to ([`WarmValue::entries`]): a bound on what a
/// malformed or hostile value can cost, far above the instances one node runs of one app.
pub const MAX_WARM_INSTANCES: u64 = 256;

/// One worker's load as the ingress sees it through gossip. Callers pass one entry per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLoad {
    /// The worker's node id.
    pub node: u64,
    /// Whether gossip reports the node live.
    pub live: bool,
    /// Whether the node has the worker role (runs app containers).
    pub runs_apps: bool,
    /// Requests in flight on the node, across all its apps.
    pub in_flight: u64,
    /// Instances (running or paused) on the node.
    pub instances: u64,
    /// CPUs on the node; carried for reporting, not weighed by the rules here.
    pub cpus: u32,
    /// Memory available on the node, in MiB; carried for reporting, not weighed here.
    pub mem_available_mib: u64,
}

/// One warm instance of one app on one node: a node publishing `warm:<app>` with `n`
/// instances gives `n` equal entries ([`WarmValue::entries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warm {
    /// The node holding the warm instance.
    pub node: u64,
    /// The release version the instance runs.
    pub release: u64,
    /// Requests in flight on that node's instances of the app, all of them together.
    pub in_flight: u64,
}

/// A gossip `warm:<app>` value: `"<release>,<in_flight>,<instances>"` (see [`parse_warm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmValue {
    /// The newest release among the node's warm instances of the app (running, starting or
    /// paused).
    pub release: u64,
    /// Requests in flight on those instances, all of them together.
    pub in_flight: u64,
    /// How many of the node's instances of the app serve requests now; 0 (all of them
    /// starting or paused) counts as one.
    pub instances: u64,
}

impl WarmValue {
    /// The placement entries for this value as published by `node`: one [`Warm`] per instance,
    /// at least one and at most [`MAX_WARM_INSTANCES`], each carrying the node's in-flight.
    pub fn entries(self, node: u64) -> impl Iterator<Item = Warm> {
        let entry = Warm {
            node,
            release: self.release,
            in_flight: self.in_flight,
        };
        let count = self.instances.clamp(1, MAX_WARM_INSTANCES);
        (0..count).map(move |_| entry)
    }
}

/// The request to place: an app, its current release and its per-instance concurrency target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The app's name.
    pub app: &'a str,
    /// The app's current release version; warm instances of other releases are ignored.
    pub release: u64,
    /// In-flight requests one instance is meant to carry; 0 is treated as 1.
    pub concurrency_target: u32,
    /// Most nodes that may hold an instance of the app at once (the app's `scale.max`): no
    /// scale-out beyond it; 0 means no limit.
    pub max_holders: u32,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward to a warm instance on `node`.
    Warm {
        /// The node holding the chosen warm instance.
        node: u64,
    },
    /// The app is cold: `node` single-flights a spawn and holds the request until it is ready.
    Spawn {
        /// The worker the cold rule picked.
        node: u64,
    },
    /// Every warm instance is at or above its target: start another one on `node`.
    ScaleOut {
        /// A worker without a warm instance, picked by the cold rule.
        node: u64,
    },
    /// No live worker runs apps: the ingress answers 503.
    NoWorker,
}

/// Decides which worker serves `request`, from the caller's gossip view.
///
/// `workers` holds one entry per node; `warm` the app's warm entries, one per warm instance
/// (see [`WarmValue::entries`]). The RNG is used only on the warm path, to draw the two p2c
/// candidates.
pub fn place(
    request: &Request,
    workers: &[WorkerLoad],
    warm: &[Warm],
    rng: &mut impl RngCore,
) -> Decision {
    let target = u64::from(request.concurrency_target.max(1));
    let holders = eligible_holders(request, workers, warm);
    if holders.is_empty() {
        let eligible: Vec<&WorkerLoad> = workers.iter().filter(|w| is_eligible(w)).collect();
        return match cold_pick(request.app, &eligible) {
            Some(node) => Decision::Spawn { node },
            None => Decision::NoWorker,
        };
    }
    let below_max = request.max_holders == 0 || holders.len() < request.max_holders as usize;
    if below_max && holders.iter().all(|holder| holder.at_target(target)) {
        let non_holders: Vec<&WorkerLoad> = workers
            .iter()
            .filter(|w| {
                is_eligible(w) && holders.binary_search_by_key(&w.node, |h| h.node).is_err()
            })
            .collect();
        if let Some(node) = cold_pick(request.app, &non_holders) {
            return Decision::ScaleOut { node };
        }
    }
    Decision::Warm {
        node: power_of_two_choices(&holders, target, rng).node,
    }
}

/// Parses a gossip `warm:<app>` value, `"<release>,<in_flight>,<instances>"`, plain decimal
/// `u64`s. The older two-field form `"<release>,<in_flight>"`, which nodes published before
/// the instance count (during a rolling upgrade some still do), counts as one instance. Fields
/// after the third are ignored, so that a later version may add some without this one losing
/// the entry. Anything else (signs, spaces, empty fields, overflow) gives `None`.
pub fn parse_warm(value: &str) -> Option<WarmValue> {
    let mut fields = value.split(',');
    let release = parse_decimal(fields.next()?)?;
    let in_flight = parse_decimal(fields.next()?)?;
    let instances = match fields.next() {
        Some(instances) => parse_decimal(instances)?,
        None => 1,
    };
    Some(WarmValue {
        release,
        in_flight,
        instances,
    })
}

/// The rendezvous (highest random weight) score of `node` for `app`: FNV-1a 64 over the app
/// name's UTF-8 bytes followed by the node id's 8 little-endian bytes, then the splitmix64
/// finalizer. Fixed forever: every node of every version must compute the same value.
pub fn rendezvous_score(app: &str, node: u64) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET_BASIS;
    for byte in app.bytes().chain(node.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    splitmix64_finalize(hash)
}

fn splitmix64_finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn is_eligible(worker: &WorkerLoad) -> bool {
    worker.live && worker.runs_apps
}

/// A node holding warm instances of the request's release, as `place` weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    node: u64,
    in_flight: u64,
    /// At least 1.
    instances: u64,
}

impl Holder {
    fn at_target(&self, target: u64) -> bool {
        u128::from(self.in_flight) >= u128::from(target) * u128::from(self.instances)
    }
}

/// The holders among `warm`'s entries of the request's release on eligible nodes, sorted by
/// node: a node's entries counted as its instances, the largest `in_flight` as its in-flight.
fn eligible_holders(request: &Request, workers: &[WorkerLoad], warm: &[Warm]) -> Vec<Holder> {
    let mut entries: Vec<(u64, u64)> = warm
        .iter()
        .filter(|entry| entry.release == request.release)
        .map(|entry| (entry.node, entry.in_flight))
        .collect();
    if entries.is_empty() {
        return Vec::new();
    }
    entries.sort_unstable();
    let mut holders: Vec<Holder> = Vec::new();
    for (node, in_flight) in entries {
        match holders.last_mut() {
            Some(holder) if holder.node == node => {
                holder.instances += 1;
                holder.in_flight = holder.in_flight.max(in_flight);
            }
            _ => holders.push(Holder {
                node,
                in_flight,
                instances: 1,
            }),
        }
    }
    let mut eligible_nodes: Vec<u64> = workers
        .iter()
        .filter(|w| is_eligible(w))
        .map(|w| w.node)
        .collect();
    eligible_nodes.sort_unstable();
    holders.retain(|holder| eligible_nodes.binary_search(&holder.node).is_ok());
    holders
}

/// Draws two distinct holders, each with probability proportional to its instances (one if
/// only one), and keeps the first unless the second is lighter per instance, with the graded
/// preference of the module docs. Precondition: `holders` is non-empty and sorted by node.
fn power_of_two_choices(holders: &[Holder], target: u64, rng: &mut impl RngCore) -> Holder {
    if holders.len() == 1 {
        return holders[0];
    }
    let total: u64 = holders.iter().map(|holder| holder.instances).sum();
    let first = weighted_index(holders, None, rng.gen_range(0..total));
    let rest = total - holders[first].instances;
    let second = weighted_index(holders, Some(first), rng.gen_range(0..rest));
    let (a, b) = (holders[first], holders[second]);
    if prefer_second(&a, &b, target, rng) {
        b
    } else {
        a
    }
}

/// The holder whose span of instances holds position `at`, counting every holder's instances
/// in node order and leaving `skip` out.
fn weighted_index(holders: &[Holder], skip: Option<usize>, mut at: u64) -> usize {
    for (index, holder) in holders.iter().enumerate() {
        if Some(index) == skip {
            continue;
        }
        if at < holder.instances {
            return index;
        }
        at -= holder.instances;
    }
    unreachable!("`at` is below the instances counted")
}

/// Whether to take `b` over `a`: with probability `(load a - load b) / target`, capped at 1,
/// where load is in-flight per instance. Scaled by `na nb` to stay in integers: the gap is
/// `fa nb - fb na` against `target na nb` (`u128`, saturating, which no real count comes
/// near). Draws from `rng` only when the answer is not certain.
fn prefer_second(a: &Holder, b: &Holder, target: u64, rng: &mut impl RngCore) -> bool {
    let product = |factors: &[u64]| {
        factors
            .iter()
            .fold(1u128, |acc, &f| acc.saturating_mul(u128::from(f)))
    };
    let a_load = product(&[a.in_flight, b.instances]);
    let b_load = product(&[b.in_flight, a.instances]);
    let whole_target = product(&[target, a.instances, b.instances]);
    let gap = a_load.saturating_sub(b_load);
    if gap == 0 {
        false
    } else if gap >= whole_target {
        true
    } else {
        rng.gen_range(0..whole_target) < gap
    }
}

fn load_score(worker: &WorkerLoad) -> u64 {
    worker.in_flight.saturating_add(worker.instances)
}

/// The cold rule (see the module docs): rendezvous over the workers within the slack of the
/// lowest load score. `None` when `candidates` is empty.
fn cold_pick(app: &str, candidates: &[&WorkerLoad]) -> Option<u64> {
    let min = candidates.iter().map(|w| load_score(w)).min()?;
    let slack = COLD_SLACK_ABSOLUTE.max(min.saturating_mul(COLD_SLACK_PERCENT) / 100);
    let bound = min.saturating_add(slack);
    candidates
        .iter()
        .filter(|w| load_score(w) <= bound)
        .map(|w| (rendezvous_score(app, w.node), std::cmp::Reverse(w.node)))
        .max()
        .map(|(_, std::cmp::Reverse(node))| node)
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
