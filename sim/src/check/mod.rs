//! One pure checker per invariant of DESIGN §8, fed the trace step by step.
//!
//! A checker reads only [`Event`]s (faults, workload outcomes, observations) and the simulated
//! time; it keeps what it needs in ordered maps, so the same trace gives the same
//! [`Violation`]s in the same order.
//!
//! Layout:
//! - [`leader`]: at most one leader per term, and every fence names a real leadership;
//! - [`deploys`]: an acknowledged deploy is never lost;
//! - [`cron`]: each cron (job, tick) fires at most once, and at least once when it should;
//! - [`members`]: gossip's live sets converge on the truth once faults stop;
//! - [`monotonic`]: terms, commit indexes, applied indexes and release versions never go back;
//! - [`routes`]: no work is sent to a node dead for longer than the detection bound;
//! - [`coldstart`]: simultaneous requests to a cold app start one instance, and are answered.

pub mod coldstart;
pub mod cron;
pub mod deploys;
pub mod leader;
pub mod members;
pub mod monotonic;
pub mod routes;

pub use coldstart::ColdStartChecker;
pub use cron::CronChecker;
pub use deploys::DeployChecker;
pub use leader::LeaderChecker;
pub use members::MembersChecker;
pub use monotonic::MonotonicChecker;
pub use routes::RouteChecker;

use crate::trace::{Event, NodeId, Violation};

/// Bounds the checkers judge against.
#[derive(Clone, Debug)]
pub struct Params {
    /// Gossip round interval, ms (200 in Shoal).
    pub gossip_interval_ms: u64,
    /// How long gossip takes to call a silent node dead, ms.
    pub dead_after_ms: u64,
    /// After the last fault (crash, restart, partition, heal), the live sets of all live nodes
    /// must equal ground truth within this many ms.
    pub converge_ms: u64,
}

/// What the harness knows once the run is over.
#[derive(Clone, Debug, Default)]
pub struct End {
    /// (job, tick) pairs that were due while a leader was up and the cluster was healed and
    /// quiet long enough: each must have a committed first-attempt fire in the final table of
    /// some live node.
    pub expected_ticks: Vec<(String, i64)>,
    /// Apps whose first requests came as one burst from several nodes while the cluster was
    /// quiet: each must have started at most one instance and answered every request.
    pub cold_bursts: Vec<String>,
}

/// One invariant, checked as the trace grows. Pure: no I/O, no clock, no randomness, no
/// HashMap iteration (use BTreeMap/BTreeSet), so the same trace gives the same verdicts.
pub trait Checker {
    /// Its name, as violations carry it (e.g. "one-leader-per-term").
    fn name(&self) -> &'static str;
    /// Reads one step's events (faults and workload outcomes first, then observations, in
    /// the order they happened) at simulated time `at_ms`; returns what they break.
    fn step(&mut self, at_ms: u64, events: &[Event]) -> Vec<Violation>;
    /// The run is over at `at_ms`: checks the eventual properties.
    fn finish(&mut self, at_ms: u64, end: &End) -> Vec<Violation>;
}

/// Every checker, in a fixed order.
pub fn all(params: &Params) -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(LeaderChecker::default()),
        Box::new(DeployChecker::default()),
        Box::new(CronChecker::default()),
        Box::new(MembersChecker::new(params)),
        Box::new(MonotonicChecker::default()),
        Box::new(RouteChecker::new(params)),
        Box::new(ColdStartChecker::default()),
    ]
}

/// A node's table as last observed: its applied index and each app's version.
#[derive(Clone, Debug, Default)]
struct Table {
    /// Its applied index.
    applied: u64,
    /// Each app's version.
    apps: std::collections::BTreeMap<String, u64>,
}

/// A run a worker accepted, as checkers keep it to judge at the end.
#[derive(Clone, Debug)]
struct Accepted {
    /// When the worker accepted it, ms.
    at_ms: u64,
    /// The worker.
    worker: NodeId,
    /// The node that sent it.
    from: NodeId,
    /// The job.
    job: String,
    /// The run.
    run_id: String,
    /// The sender's fence term.
    fence_term: u64,
    /// The sender's fence index.
    fence_index: u64,
}

impl Accepted {
    /// The accepted run an event reports, if it reports one.
    fn read(at_ms: u64, event: &Event) -> Option<Self> {
        let Event::JobAccepted {
            worker,
            from,
            job,
            run_id,
            fence_term,
            fence_index,
        } = event
        else {
            return None;
        };
        Some(Self {
            at_ms,
            worker: *worker,
            from: *from,
            job: job.clone(),
            run_id: run_id.clone(),
            fence_term: *fence_term,
            fence_index: *fence_index,
        })
    }

    /// The run as a message names it.
    fn describe(&self) -> String {
        format!(
            "worker {} accepted run {} of job {} from node {} (accepted at {} ms) with fence term {} index {}",
            self.worker,
            self.run_id,
            self.job,
            self.from,
            self.at_ms,
            self.fence_term,
            self.fence_index
        )
    }
}

/// A violation of `checker` seen at `at_ms`.
fn violation(checker: &'static str, at_ms: u64, message: String) -> Violation {
    Violation {
        checker,
        at_ms,
        message,
    }
}

/// Node ids as `{1, 2, 3}`, in order.
fn node_list<'a>(nodes: impl IntoIterator<Item = &'a NodeId>) -> String {
    let ids: Vec<String> = nodes.into_iter().map(|node| node.to_string()).collect();
    format!("{{{}}}", ids.join(", "))
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
