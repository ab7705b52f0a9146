//! `no-route-to-dead`: no node sends work (a job run; a forwarded request) to a node that has
//! been dead for longer than the detection bound: `dead_after` plus one second for the gossip
//! view and the sender's loop to catch up.
//!
//! Dead is ground truth the harness knows: crashed and not restarted, or cut off from every
//! other node (all its outgoing traffic blocked; then no peer can relay its heartbeat either).
//! A node that can still be heard through a third node is not dead to anyone, and no node is
//! dead to itself. A sender that restarted learns the cluster afresh, so its bound runs from
//! its restart if that came later.

use std::collections::{BTreeMap, BTreeSet};

use super::{violation, Checker, End, Params};
use crate::trace::{Event, NodeId, Violation};

/// The checker's name.
const NAME: &str = "no-route-to-dead";

/// Slack over `dead_after`: a gossip view refresh and a sender's loop period, with room.
const SLACK_MS: u64 = 1_000;

/// Checks that work never goes to a node known dead.
#[derive(Clone, Debug)]
pub struct RouteChecker {
    /// How long a node may be dead before routing to it is a violation.
    bound_ms: u64,
    /// Every node seen.
    nodes: BTreeSet<NodeId>,
    /// Crashed nodes, since when.
    crashed: BTreeMap<NodeId, u64>,
    /// Blocked (from, to) pairs.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Nodes cut off from all others, since when.
    isolated: BTreeMap<NodeId, u64>,
    /// When each node last restarted.
    restarted: BTreeMap<NodeId, u64>,
}

impl RouteChecker {
    /// A checker for the detection bound of `params`.
    pub fn new(params: &Params) -> Self {
        Self {
            bound_ms: params.dead_after_ms + SLACK_MS,
            nodes: BTreeSet::new(),
            crashed: BTreeMap::new(),
            blocked: BTreeSet::new(),
            isolated: BTreeMap::new(),
            restarted: BTreeMap::new(),
        }
    }

    /// Recomputes which nodes are cut off, keeping the start of each ongoing isolation.
    fn update_isolation(&mut self, at_ms: u64) {
        let cut_off: BTreeSet<NodeId> = self
            .nodes
            .iter()
            .copied()
            .filter(|&node| {
                let others: Vec<NodeId> =
                    self.nodes.iter().copied().filter(|&o| o != node).collect();
                !others.is_empty() && others.iter().all(|&o| self.blocked.contains(&(node, o)))
            })
            .collect();
        self.isolated.retain(|node, _| cut_off.contains(node));
        for node in cut_off {
            self.isolated.entry(node).or_insert(at_ms);
        }
    }

    /// Since when `node` has been dead, if it is.
    fn dead_since(&self, node: NodeId) -> Option<u64> {
        match (self.crashed.get(&node), self.isolated.get(&node)) {
            (Some(&a), Some(&b)) => Some(a.min(b)),
            (Some(&a), None) | (None, Some(&a)) => Some(a),
            (None, None) => None,
        }
    }

    fn read(&mut self, at_ms: u64, event: &Event) -> Option<Violation> {
        match event {
            Event::Crash { node } => {
                self.nodes.insert(*node);
                self.crashed.insert(*node, at_ms);
            }
            Event::Restart { node } => {
                self.crashed.remove(node);
                self.restarted.insert(*node, at_ms);
            }
            Event::Partition { from, to } => {
                self.nodes.extend([*from, *to]);
                self.blocked.insert((*from, *to));
                self.update_isolation(at_ms);
            }
            Event::Heal => {
                self.blocked.clear();
                self.isolated.clear();
            }
            Event::Raft { node, .. } | Event::Table { node, .. } | Event::Members { node, .. }
                if self.nodes.insert(*node) =>
            {
                self.update_isolation(at_ms);
            }
            // A node is never dead to itself (a cut-off leader may still serve its own runs).
            Event::Routed { from, to, what } if from != to => {
                let restarted = self.restarted.get(from).copied().unwrap_or(0);
                let since = self.dead_since(*to)?.max(restarted);
                let dead_for = at_ms.saturating_sub(since);
                if dead_for > self.bound_ms {
                    return Some(violation(
                        NAME,
                        at_ms,
                        format!(
                            "node {from} sent a {what} to node {to}, dead for {dead_for} ms \
                             (since {since} ms; the bound is {} ms)",
                            self.bound_ms
                        ),
                    ));
                }
            }
            _ => {}
        }
        None
    }
}

impl Checker for RouteChecker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, at_ms: u64, events: &[Event]) -> Vec<Violation> {
        events
            .iter()
            .filter_map(|event| self.read(at_ms, event))
            .collect()
    }

    fn finish(&mut self, _at_ms: u64, _end: &End) -> Vec<Violation> {
        Vec::new()
    }
}
