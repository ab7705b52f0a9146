//! `one-leader-per-term`: at most one node is ever seen leading a term, every run a worker
//! accepts carries the fence of a term its sender was seen leading, and no worker accepts a
//! job's run with a fence older than one it accepted before (in one incarnation: a restarted
//! worker has forgotten the fences it saw).

use std::collections::{BTreeMap, BTreeSet};

use super::{node_list, violation, Accepted, Checker, End};
use crate::trace::{Event, NodeId, Violation};

/// The checker's name.
const NAME: &str = "one-leader-per-term";

/// Checks one leader per term and that fences name observed leaderships.
#[derive(Clone, Debug, Default)]
pub struct LeaderChecker {
    /// Every node seen as leader of each term (more than one is a violation).
    leaders: BTreeMap<u64, BTreeSet<NodeId>>,
    /// The highest term any node has reported.
    max_term: u64,
    /// Accepted runs whose fence is judged at the end (those already found impossible are not
    /// kept, so they are reported once).
    accepted: Vec<Accepted>,
    /// The newest fence (term, index) each worker accepted for each job since it started.
    newest: BTreeMap<(NodeId, String), (u64, u64)>,
}

impl LeaderChecker {
    /// Records that `node` leads `term`; a second leader of the term is a violation.
    fn observe_leader(&mut self, at_ms: u64, node: NodeId, term: u64) -> Option<Violation> {
        let leaders = self.leaders.entry(term).or_default();
        if leaders.contains(&node) {
            return None;
        }
        let earlier = node_list(leaders.iter());
        let first_time = leaders.is_empty();
        leaders.insert(node);
        if first_time {
            return None;
        }
        Some(violation(
            NAME,
            at_ms,
            format!("term {term} has a second leader: node {node} leads it, but {earlier} already led it"),
        ))
    }

    /// Judges a fence at once if no term seen so far makes it possible; keeps it otherwise.
    fn accept(&mut self, accepted: Accepted, at_ms: u64) -> Option<Violation> {
        if accepted.fence_term > self.max_term + 1 {
            return Some(violation(
                NAME,
                at_ms,
                format!(
                    "{}, but the highest term any node has reported is {}",
                    accepted.describe(),
                    self.max_term
                ),
            ));
        }
        self.accepted.push(accepted);
        None
    }

    /// A worker accepting a job's run with an older fence than one it accepted before.
    fn fence_not_older(&mut self, accepted: &Accepted) -> Option<Violation> {
        let fence = (accepted.fence_term, accepted.fence_index);
        let key = (accepted.worker, accepted.job.clone());
        let newest = self.newest.entry(key).or_insert(fence);
        if fence >= *newest {
            *newest = fence;
            return None;
        }
        Some(violation(
            NAME,
            accepted.at_ms,
            format!(
                "worker {} accepted run {} of job {} with fence {}.{}, older than {}.{} it \
                 accepted before",
                accepted.worker,
                accepted.run_id,
                accepted.job,
                accepted.fence_term,
                accepted.fence_index,
                newest.0,
                newest.1
            ),
        ))
    }

    /// Judges one accepted run's fence against every leadership of the whole run.
    fn judge_fence(&self, accepted: &Accepted, at_ms: u64) -> Option<Violation> {
        let leaders = self.leaders.get(&accepted.fence_term);
        let why = match leaders {
            Some(leaders) if leaders.contains(&accepted.from) => return None,
            Some(leaders) => format!(
                "term {} was led by {}",
                accepted.fence_term,
                node_list(leaders.iter())
            ),
            None => format!("no node was seen leading term {}", accepted.fence_term),
        };
        Some(violation(
            NAME,
            at_ms,
            format!("{}, but {why}", accepted.describe()),
        ))
    }
}

impl Checker for LeaderChecker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, at_ms: u64, events: &[Event]) -> Vec<Violation> {
        let mut violations = Vec::new();
        // Observations come after outcomes in a step; read them first so a fence is judged
        // against the terms known at the end of its step.
        for event in events {
            if let Event::Raft {
                node,
                term,
                is_leader,
                ..
            } = event
            {
                self.max_term = self.max_term.max(*term);
                if *is_leader {
                    violations.extend(self.observe_leader(at_ms, *node, *term));
                }
            }
        }
        for event in events {
            if let Event::Restart { node } = event {
                self.newest.retain(|(worker, _), _| worker != node);
            }
            if let Some(accepted) = Accepted::read(at_ms, event) {
                violations.extend(self.fence_not_older(&accepted));
                violations.extend(self.accept(accepted, at_ms));
            }
        }
        violations
    }

    fn finish(&mut self, at_ms: u64, _end: &End) -> Vec<Violation> {
        self.accepted
            .iter()
            .filter_map(|accepted| self.judge_fence(accepted, at_ms))
            .collect()
    }
}
