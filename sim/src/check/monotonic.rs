//! `never-backwards`: per node, the raft term (durable vote) and the table's applied index
//! (durable table) never decrease, even across restarts; the committed index never decreases
//! within one incarnation; an app's version never decreases unless the app was deleted in
//! between.
//!
//! A delete shows as the app missing from an observed table, or, when a delete and a redeploy
//! both landed between two observations, as an acknowledged delete whose index the table
//! applied in between. A node may apply the delete before its client hears the ack, so a
//! version drop is judged in `finish`, once every acknowledged delete is known.

use std::collections::{BTreeMap, BTreeSet};

use super::{violation, Checker, End, Table};
use crate::trace::{Event, NodeId, Violation};

/// The checker's name.
const NAME: &str = "never-backwards";

/// Checks that terms, commit and applied indexes and versions never go back.
#[derive(Clone, Debug, Default)]
pub struct MonotonicChecker {
    /// Each node's last raft term.
    terms: BTreeMap<NodeId, u64>,
    /// Each node's last committed index in its current incarnation.
    committed: BTreeMap<NodeId, u64>,
    /// Each node's last table.
    tables: BTreeMap<NodeId, Table>,
    /// Log indexes of acknowledged deletes per app.
    deletes: BTreeMap<String, BTreeSet<u64>>,
    /// Version drops, judged in `finish`: (at, node, app, was, now, applied before, after).
    drops: Vec<(u64, NodeId, String, u64, u64, u64, u64)>,
}

/// Records `after` as `node`'s value of `field`; a drop from the value before is a violation.
fn advance(
    last: &mut BTreeMap<NodeId, u64>,
    at_ms: u64,
    node: NodeId,
    field: &str,
    after: u64,
) -> Option<Violation> {
    let before = last.insert(node, after)?;
    (after < before).then(|| backwards(at_ms, node, field, before, after))
}

/// The violation for `node`'s `field` going from `before` down to `after`.
fn backwards(at_ms: u64, node: NodeId, field: &str, before: u64, after: u64) -> Violation {
    violation(
        NAME,
        at_ms,
        format!("node {node} {field} went backwards: {before} -> {after}"),
    )
}

impl MonotonicChecker {
    /// Whether an acknowledged delete of `app` landed in (`from`, `to`].
    fn deleted_between(&self, app: &str, from: u64, to: u64) -> bool {
        from < to
            && self
                .deletes
                .get(app)
                .is_some_and(|deletes| deletes.range(from + 1..=to).next().is_some())
    }

    /// Reads one node's table.
    fn read_table(&mut self, at_ms: u64, node: NodeId, after: Table) -> Vec<Violation> {
        let mut violations = Vec::new();
        if let Some(before) = self.tables.get(&node) {
            if after.applied < before.applied {
                let field = "table applied index";
                violations.push(backwards(at_ms, node, field, before.applied, after.applied));
            }
            for (app, &version) in &after.apps {
                let Some(&was) = before.apps.get(app) else {
                    continue;
                };
                if version < was {
                    let (from, to) = (before.applied, after.applied);
                    self.drops
                        .push((at_ms, node, app.clone(), was, version, from, to));
                }
            }
        }
        self.tables.insert(node, after);
        violations
    }

    /// Reads one event.
    fn read(&mut self, at_ms: u64, event: &Event) -> Vec<Violation> {
        match event {
            Event::Restart { node } => {
                self.committed.remove(node);
                Vec::new()
            }
            Event::Raft {
                node,
                term,
                committed,
                ..
            } => {
                let term = advance(&mut self.terms, at_ms, *node, "raft term", *term);
                let field = "raft committed index";
                let committed = advance(&mut self.committed, at_ms, *node, field, *committed);
                term.into_iter().chain(committed).collect()
            }
            Event::Table {
                node,
                applied,
                apps,
                ..
            } => {
                let table = Table {
                    applied: *applied,
                    apps: apps.clone(),
                };
                self.read_table(at_ms, *node, table)
            }
            Event::DeleteAcked { app, index } => {
                self.deletes.entry(app.clone()).or_default().insert(*index);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

impl Checker for MonotonicChecker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, at_ms: u64, events: &[Event]) -> Vec<Violation> {
        events
            .iter()
            .flat_map(|event| self.read(at_ms, event))
            .collect()
    }

    fn finish(&mut self, _at_ms: u64, _end: &End) -> Vec<Violation> {
        self.drops
            .iter()
            .filter(|(_, _, app, _, _, from, to)| !self.deleted_between(app, *from, *to))
            .map(|(at_ms, node, app, was, version, _, _)| {
                backwards(*at_ms, *node, &format!("app {app} version"), *was, *version)
            })
            .collect()
    }
}
