//! `acked-deploy-kept`: once a deploy is acknowledged at a log index, every table that has
//! applied that index holds the app at that version or later, unless an acknowledged delete of
//! the app after the deploy has been applied too.
//!
//! A follower may apply a delete before its client hears the ack, so a table that lacks an app
//! (or holds an older version) is only a suspect until the run ends; `finish` judges the
//! suspects against every acknowledged delete. Only acknowledged deletes excuse: a delete that
//! committed but whose ack was lost is known only as requested: once a delete of an app has
//! been requested and none of its deletes was acknowledged, a table that lacks the app, or holds
//! an older version, is excused (it cannot be told from the delete).

use std::collections::{BTreeMap, BTreeSet};

use super::{violation, Checker, End, Table};
use crate::trace::{Event, NodeId, Violation};

/// The checker's name.
const NAME: &str = "acked-deploy-kept";

/// An acknowledged deploy.
#[derive(Clone, Copy, Debug)]
struct Ack {
    /// The release version it made.
    version: u64,
    /// The log index it committed at.
    index: u64,
    /// When the client was told, ms.
    at_ms: u64,
    /// How many tables had been observed before it (to know whether any came after).
    tables_before: u64,
}

/// Checks that acknowledged deploys survive in every table that applied them.
#[derive(Clone, Debug, Default)]
pub struct DeployChecker {
    /// Acknowledged deploys per app, in the order acknowledged.
    acks: BTreeMap<String, Vec<Ack>>,
    /// Log indexes of acknowledged deletes per app.
    deletes: BTreeMap<String, BTreeSet<u64>>,
    /// Each node's last table.
    tables: BTreeMap<NodeId, Table>,
    /// How many table observations have been read.
    tables_seen: u64,
    /// The highest applied index any table has reported.
    max_applied: u64,
    /// (node, app, ack index) already suspected, so a lost deploy is reported once per node.
    reported: BTreeSet<(NodeId, String, u64)>,
    /// Tables that looked like they lost a deploy, judged in `finish`.
    suspects: Vec<Suspect>,
    /// When a delete of each app was first requested.
    delete_requested: BTreeMap<String, u64>,
}

/// A table that, when seen, did not hold an acknowledged deploy.
#[derive(Clone, Debug)]
struct Suspect {
    at_ms: u64,
    node: NodeId,
    app: String,
    applied: u64,
    have: Option<u64>,
}

impl DeployChecker {
    /// The acknowledged deploy of `app` a table at `applied` must hold: the one with the
    /// highest version among those applied and not undone by an applied delete.
    fn required(&self, app: &str, applied: u64) -> Option<Ack> {
        let acks = self.acks.get(app)?;
        let last_delete = self
            .deletes
            .get(app)
            .and_then(|deletes| deletes.range(..=applied).next_back().copied());
        acks.iter()
            .filter(|ack| ack.index <= applied)
            .filter(|ack| last_delete.is_none_or(|delete| delete < ack.index))
            .max_by_key(|ack| (ack.version, ack.index))
            .copied()
    }

    /// Judges one node's table for one app with what is known now; a table that lacks the
    /// deploy becomes a suspect, once per node and ack.
    fn judge(&mut self, at_ms: u64, node: NodeId, app: &str) -> Option<Violation> {
        let table = self.tables.get(&node)?;
        let ack = self.required(app, table.applied)?;
        let have = table.apps.get(app).copied();
        if have.is_some_and(|version| version >= ack.version) {
            return None;
        }
        if self.reported.insert((node, app.to_string(), ack.index)) {
            self.suspects.push(Suspect {
                at_ms,
                node,
                app: app.to_owned(),
                applied: table.applied,
                have,
            });
        }
        None
    }

    /// Whether a delete of `app` was requested by `at_ms` and none of its deletes was
    /// acknowledged, so its outcome is unknown.
    fn unknown_delete(&self, app: &str, at_ms: u64) -> bool {
        self.delete_requested
            .get(app)
            .is_some_and(|&requested| requested <= at_ms)
            && self.deletes.get(app).is_none_or(BTreeSet::is_empty)
    }

    /// Judges a suspect with every delete acknowledged in the run.
    fn convict(&self, suspect: &Suspect) -> Option<Violation> {
        if self.unknown_delete(&suspect.app, suspect.at_ms) {
            return None;
        }
        let Suspect {
            at_ms,
            node,
            ref app,
            applied,
            have,
        } = *suspect;
        let ack = self.required(app, applied)?;
        if have.is_some_and(|version| version >= ack.version) {
            return None;
        }
        let held = match have {
            Some(version) => format!("version {version}"),
            None => "no such app".to_string(),
        };
        Some(violation(
            NAME,
            at_ms,
            format!(
                "node {node}'s table at applied index {} holds {held} for app {app}, but version {} was acknowledged at index {} (at {} ms)",
                applied, ack.version, ack.index, ack.at_ms
            ),
        ))
    }

    /// Judges every app with acknowledged deploys in `node`'s last table.
    fn judge_table(&mut self, at_ms: u64, node: NodeId) -> Vec<Violation> {
        let apps: Vec<String> = self.acks.keys().cloned().collect();
        apps.iter()
            .filter_map(|app| self.judge(at_ms, node, app))
            .collect()
    }

    /// Judges every node's last table for `app`, after a new ack of it.
    fn judge_app(&mut self, at_ms: u64, app: &str) -> Vec<Violation> {
        let nodes: Vec<NodeId> = self.tables.keys().copied().collect();
        nodes
            .into_iter()
            .filter_map(|node| self.judge(at_ms, node, app))
            .collect()
    }

    /// Reads one event.
    fn read(&mut self, at_ms: u64, event: &Event) -> Vec<Violation> {
        match event {
            Event::DeployAcked {
                app,
                version,
                index,
            } => {
                let ack = Ack {
                    version: *version,
                    index: *index,
                    at_ms,
                    tables_before: self.tables_seen,
                };
                self.acks.entry(app.clone()).or_default().push(ack);
                self.judge_app(at_ms, app)
            }
            Event::DeleteAcked { app, index } => {
                self.deletes.entry(app.clone()).or_default().insert(*index);
                Vec::new()
            }
            Event::DeleteRequested { app } => {
                self.delete_requested.entry(app.clone()).or_insert(at_ms);
                Vec::new()
            }
            Event::Table {
                node,
                applied,
                apps,
                ..
            } => {
                self.tables_seen += 1;
                self.max_applied = self.max_applied.max(*applied);
                let table = Table {
                    applied: *applied,
                    apps: apps.clone(),
                };
                self.tables.insert(*node, table);
                self.judge_table(at_ms, *node)
            }
            _ => Vec::new(),
        }
    }
}

impl Checker for DeployChecker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, at_ms: u64, events: &[Event]) -> Vec<Violation> {
        events
            .iter()
            .flat_map(|event| self.read(at_ms, event))
            .collect()
    }

    fn finish(&mut self, at_ms: u64, _end: &End) -> Vec<Violation> {
        let mut violations: Vec<Violation> = self
            .suspects
            .iter()
            .filter_map(|suspect| self.convict(suspect))
            .collect();
        for (app, acks) in &self.acks {
            for ack in acks {
                let tables_after = self.tables_seen > ack.tables_before;
                if tables_after && self.max_applied < ack.index {
                    violations.push(violation(
                        NAME,
                        at_ms,
                        format!(
                            "deploy of app {app} version {} acknowledged at index {} (at {} ms) was never applied anywhere: the highest applied index any table reported is {}",
                            ack.version, ack.index, ack.at_ms, self.max_applied
                        ),
                    ));
                }
            }
        }
        violations
    }
}
