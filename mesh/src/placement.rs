//! Placement: which worker serves a request for a service app (DESIGN §4 step 4).
//!
//! [`place`] is a pure function of the caller's gossip view: no I/O, no clock, and the only
//! randomness is the RNG the caller passes, so a seeded RNG replays every decision. Inputs are
//! sorted by node id before any choice, so the order in which gossip lists nodes never matters.
//!
//! Eligible workers are those that are live and run apps. A [`Warm`] entry counts only when its
//! node is eligible and its release is the request's release: older releases are draining.
//!
//! **Warm path.** When warm holders exist, power of two choices: two distinct holders drawn
//! uniformly, the one with the lower `in_flight / concurrency_target` wins (on a tie the first
//! draw, so ties favour no node) and the decision is [`Decision::Warm`]. When every holder is at or above its target and
//! some eligible worker holds no warm instance, the decision is [`Decision::ScaleOut`] to the
//! non-holder the cold rule picks; with no such worker, or when `max_holders` nodes already
//! hold one, the p2c pick is used anyway.
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

/// A warm instance of one app on one node, from gossip `warm:<app>` = `"<release>,<in_flight>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warm {
    /// The node holding the warm instance.
    pub node: u64,
    /// The release version the instance runs.
    pub release: u64,
    /// Requests in flight on that node's instances of the app.
    pub in_flight: u64,
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
/// `workers` holds one entry per node; `warm` the app's `warm:<app>` entries (see
/// [`parse_warm`]). The RNG is used only on the warm path, to draw the two p2c candidates.
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
    if below_max && holders.iter().all(|holder| holder.in_flight >= target) {
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
        node: power_of_two_choices(&holders, rng).node,
    }
}

/// Parses a gossip `warm:<app>` value, `"<release>,<in_flight>"`, both plain decimal `u64`s.
/// Anything else (signs, spaces, extra fields, overflow) gives `None`.
pub fn parse_warm(node: u64, value: &str) -> Option<Warm> {
    let (release, in_flight) = value.split_once(',')?;
    Some(Warm {
        node,
        release: parse_decimal(release)?,
        in_flight: parse_decimal(in_flight)?,
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

/// Warm entries of the request's release on eligible nodes, sorted by node, one per node.
fn eligible_holders(request: &Request, workers: &[WorkerLoad], warm: &[Warm]) -> Vec<Warm> {
    let mut candidates: Vec<Warm> = warm
        .iter()
        .copied()
        .filter(|entry| entry.release == request.release)
        .collect();
    if candidates.is_empty() {
        return candidates;
    }
    candidates.sort_by_key(|entry| (entry.node, entry.in_flight));
    candidates.dedup_by_key(|entry| entry.node);
    let mut eligible_nodes: Vec<u64> = workers
        .iter()
        .filter(|w| is_eligible(w))
        .map(|w| w.node)
        .filter(|node| {
            candidates
                .binary_search_by_key(node, |entry| entry.node)
                .is_ok()
        })
        .collect();
    eligible_nodes.sort_unstable();
    candidates.retain(|entry| eligible_nodes.binary_search(&entry.node).is_ok());
    candidates
}

/// Draws two distinct holders (one if only one) and keeps the less loaded. All holders share
/// the request's concurrency target, so comparing `in_flight` compares the ratios.
/// Precondition: `holders` is non-empty and sorted by node.
fn power_of_two_choices(holders: &[Warm], rng: &mut impl RngCore) -> Warm {
    if holders.len() == 1 {
        return holders[0];
    }
    let first = rng.gen_range(0..holders.len());
    let mut second = rng.gen_range(0..holders.len() - 1);
    if second >= first {
        second += 1;
    }
    let (a, b) = (holders[first], holders[second]);
    // On a tie the first draw wins: itself a uniform pick, so ties do not favour any node.
    if a.in_flight <= b.in_flight {
        a
    } else {
        b
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
