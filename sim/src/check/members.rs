//! `members-converge`: once faults stop and no partition is in force, every live node's gossip
//! live set equals the nodes actually up, within `converge_ms`.
//!
//! The truth is every node the trace has named, less those crashed and not restarted. A node
//! named for the first time joins the truth at once, so its first sighting starts a new epoch
//! like a fault does: the cluster gets `converge_ms` to learn of it. Hence every node judged
//! has been live for at least `converge_ms`, whether or not it has reported its members yet
//! (a node that never did is judged as seeing no one).

use std::collections::{BTreeMap, BTreeSet};

use super::{node_list, violation, Checker, End, Params};
use crate::trace::{Event, NodeId, Violation};

/// The checker's name.
const NAME: &str = "members-converge";

/// Checks that gossip's live sets converge on the truth after the last fault.
#[derive(Clone, Debug)]
pub struct MembersChecker {
    /// How long after the last fault the live sets must be right, ms.
    converge_ms: u64,
    /// Every node the trace has named.
    known: BTreeSet<NodeId>,
    /// Nodes down now.
    crashed: BTreeSet<NodeId>,
    /// One-way partitions in force, (from, to).
    partitions: BTreeSet<(NodeId, NodeId)>,
    /// When the last fault or first sighting of a node happened, ms.
    last_change_ms: u64,
    /// Each node's last reported live set.
    members: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Nodes already reported in this epoch.
    reported: BTreeSet<NodeId>,
}

impl MembersChecker {
    /// A checker judging against `params.converge_ms`.
    pub fn new(params: &Params) -> Self {
        Self {
            converge_ms: params.converge_ms,
            known: BTreeSet::new(),
            crashed: BTreeSet::new(),
            partitions: BTreeSet::new(),
            last_change_ms: 0,
            members: BTreeMap::new(),
            reported: BTreeSet::new(),
        }
    }

    /// Starts a new epoch at `at_ms`: the live sets get `converge_ms` again.
    fn change(&mut self, at_ms: u64) {
        self.last_change_ms = at_ms;
        self.reported.clear();
    }

    /// Notes that the trace named `node`; a new node starts a new epoch.
    fn name_node(&mut self, at_ms: u64, node: NodeId) {
        if self.known.insert(node) {
            self.change(at_ms);
        }
    }

    /// Reads one event.
    fn read(&mut self, at_ms: u64, event: &Event) {
        match event {
            Event::Crash { node } => {
                self.name_node(at_ms, *node);
                self.crashed.insert(*node);
                self.change(at_ms);
            }
            Event::Restart { node } => {
                self.name_node(at_ms, *node);
                self.crashed.remove(node);
                self.change(at_ms);
            }
            Event::Partition { from, to } => {
                self.partitions.insert((*from, *to));
                self.change(at_ms);
            }
            Event::Heal => {
                self.partitions.clear();
                self.change(at_ms);
            }
            Event::Raft { node, .. } | Event::Table { node, .. } => self.name_node(at_ms, *node),
            Event::Members { node, live } => {
                self.name_node(at_ms, *node);
                for member in live {
                    self.name_node(at_ms, *member);
                }
                self.members.insert(*node, live.clone());
            }
            Event::DeployAcked { .. }
            | Event::DeleteAcked { .. }
            | Event::JobAccepted { .. }
            | Event::InstanceStarted { .. }
            | Event::RequestSent { .. }
            | Event::Answered { .. }
            | Event::Routed { .. }
            | Event::Slow { .. }
            | Event::DeleteRequested { .. } => {}
        }
    }

    /// Whether the live sets must be right at `at_ms`.
    fn settled(&self, at_ms: u64) -> bool {
        self.partitions.is_empty() && at_ms >= self.last_change_ms.saturating_add(self.converge_ms)
    }

    /// Reports each live node whose live set is not the truth, once per epoch.
    fn judge(&mut self, at_ms: u64) -> Vec<Violation> {
        let truth: BTreeSet<NodeId> = self.known.difference(&self.crashed).copied().collect();
        let empty = BTreeSet::new();
        let mut violations = Vec::new();
        for node in &truth {
            let seen = self.members.get(node).unwrap_or(&empty);
            if seen == &truth || self.reported.contains(node) {
                continue;
            }
            self.reported.insert(*node);
            violations.push(violation(
                NAME,
                at_ms,
                format!(
                    "node {node} sees live {}, but the live nodes are {} (extra {}, missing {}), {} ms after the last fault or join at {} ms",
                    node_list(seen),
                    node_list(&truth),
                    node_list(seen.difference(&truth)),
                    node_list(truth.difference(seen)),
                    at_ms.saturating_sub(self.last_change_ms),
                    self.last_change_ms
                ),
            ));
        }
        violations
    }
}

impl Checker for MembersChecker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, at_ms: u64, events: &[Event]) -> Vec<Violation> {
        for event in events {
            self.read(at_ms, event);
        }
        if self.settled(at_ms) {
            self.judge(at_ms)
        } else {
            Vec::new()
        }
    }

    fn finish(&mut self, at_ms: u64, _end: &End) -> Vec<Violation> {
        // The run may end well after the last step the harness reported.
        self.step(at_ms, &[])
    }
}
