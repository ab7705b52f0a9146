//! `cron-once`: each scheduled (job, tick, attempt) commits at most one run across the whole
//! cluster, a tick is fired again (attempt N + 1) only after attempt N failed, workers only
//! run committed runs, and every tick that was due while the cluster could fire it ends up
//! fired.

use std::collections::{BTreeMap, BTreeSet};

use super::{node_list, violation, Accepted, Checker, End};
use crate::trace::{Event, FireRecord, NodeId, Violation};

/// The checker's name.
const NAME: &str = "cron-once";

/// A scheduled fire's identity: (job, tick, attempt).
type FireKey = (String, i64, u32);

/// Checks at-most-once commits, commit-before-run, and at-least-once for due ticks.
#[derive(Clone, Debug, Default)]
pub struct CronChecker {
    /// The run id first seen committed for each scheduled fire, and the node that held it.
    committed: BTreeMap<FireKey, (String, NodeId)>,
    /// Every (job, run id) any table ever held.
    held_runs: BTreeSet<(String, String)>,
    /// Each node's last table: its first-attempt scheduled (job, tick)s.
    first_fires: BTreeMap<NodeId, BTreeSet<(String, i64)>>,
    /// Nodes down now.
    crashed: BTreeSet<NodeId>,
    /// Every run a worker accepted.
    accepted: Vec<Accepted>,
    /// (node, fire) already reported for holding two runs of one fire.
    reported_in_table: BTreeSet<(NodeId, FireKey)>,
    /// (fire, run id) already reported for disagreeing with the first committed run.
    reported_across: BTreeSet<(FireKey, String)>,
    /// Retries already reported for following an attempt that did not fail.
    reported_retries: BTreeSet<FireKey>,
}

impl CronChecker {
    /// Reads one node's table.
    fn read_table(
        &mut self,
        at_ms: u64,
        node: NodeId,
        fires: &BTreeSet<FireRecord>,
    ) -> Vec<Violation> {
        let mut runs: BTreeMap<FireKey, BTreeSet<&str>> = BTreeMap::new();
        let mut violations = self.premature_retries(at_ms, node, fires);
        for fire in fires {
            self.held_runs
                .insert((fire.job.clone(), fire.run_id.clone()));
            if !fire.manual {
                let key = (fire.job.clone(), fire.tick, fire.attempt);
                runs.entry(key).or_default().insert(&fire.run_id);
            }
        }
        let first: BTreeSet<(String, i64)> = runs
            .keys()
            .filter(|(_, _, attempt)| *attempt == 0)
            .map(|(job, tick, _)| (job.clone(), *tick))
            .collect();
        self.first_fires.insert(node, first);
        for (key, run_ids) in runs {
            let found = if run_ids.len() > 1 {
                self.twice_in_table(at_ms, node, key, &run_ids)
            } else {
                let run_id = run_ids.first().copied().unwrap_or_default();
                self.against_committed(at_ms, node, key, run_id)
            };
            violations.extend(found);
        }
        violations
    }

    /// A retry (attempt N + 1) of a tick whose attempt N, held in the same table, did not fail.
    fn premature_retries(
        &mut self,
        at_ms: u64,
        node: NodeId,
        fires: &BTreeSet<FireRecord>,
    ) -> Vec<Violation> {
        let ended: BTreeMap<FireKey, bool> = fires
            .iter()
            .filter(|fire| !fire.manual)
            .map(|fire| ((fire.job.clone(), fire.tick, fire.attempt), fire.failed))
            .collect();
        let mut violations = Vec::new();
        for fire in fires.iter().filter(|fire| !fire.manual && fire.attempt > 0) {
            let before = (fire.job.clone(), fire.tick, fire.attempt - 1);
            // A pruned earlier attempt proves nothing either way.
            if ended.get(&before) != Some(&false) {
                continue;
            }
            let key = (fire.job.clone(), fire.tick, fire.attempt);
            if self.reported_retries.insert(key) {
                violations.push(violation(
                    NAME,
                    at_ms,
                    format!(
                        "node {node}'s table holds run {} of job {} tick {}, attempt {}, but \
                         attempt {} did not fail",
                        fire.run_id,
                        fire.job,
                        fire.tick,
                        fire.attempt,
                        fire.attempt - 1
                    ),
                ));
            }
        }
        violations
    }

    /// One table holds several runs of one scheduled fire.
    fn twice_in_table(
        &mut self,
        at_ms: u64,
        node: NodeId,
        key: FireKey,
        run_ids: &BTreeSet<&str>,
    ) -> Option<Violation> {
        if let Some(run_id) = run_ids.first() {
            self.committed
                .entry(key.clone())
                .or_insert_with(|| (run_id.to_string(), node));
        }
        let (job, tick, attempt) = key.clone();
        if !self.reported_in_table.insert((node, key)) {
            return None;
        }
        let listed: Vec<&str> = run_ids.iter().copied().collect();
        Some(violation(
            NAME,
            at_ms,
            format!(
                "node {node}'s table holds {} runs of job {job} tick {tick} attempt {attempt}: {}",
                listed.len(),
                listed.join(", ")
            ),
        ))
    }

    /// A table's one run of a scheduled fire must be the run first seen committed for it.
    fn against_committed(
        &mut self,
        at_ms: u64,
        node: NodeId,
        key: FireKey,
        run_id: &str,
    ) -> Option<Violation> {
        let (first_run, first_node) = self
            .committed
            .entry(key.clone())
            .or_insert_with(|| (run_id.to_string(), node))
            .clone();
        if first_run == run_id {
            return None;
        }
        let (job, tick, attempt) = key.clone();
        if !self.reported_across.insert((key, run_id.to_string())) {
            return None;
        }
        Some(violation(
            NAME,
            at_ms,
            format!(
                "job {job} tick {tick} attempt {attempt} committed twice: node {node}'s table holds run {run_id}, node {first_node}'s held run {first_run}"
            ),
        ))
    }

    /// Every accepted run must have been held by some table.
    fn uncommitted_runs(&self, at_ms: u64) -> Vec<Violation> {
        let mut reported = BTreeSet::new();
        let mut violations = Vec::new();
        for accepted in &self.accepted {
            let run = (accepted.job.clone(), accepted.run_id.clone());
            if self.held_runs.contains(&run) || !reported.insert(run) {
                continue;
            }
            violations.push(violation(
                NAME,
                at_ms,
                format!(
                    "worker {} ran a fire that was never committed: run {} of job {} from node {} (accepted at {} ms) is in no table",
                    accepted.worker, accepted.run_id, accepted.job, accepted.from, accepted.at_ms
                ),
            ));
        }
        violations
    }

    /// Every expected (job, tick) must be fired in the last table of some live node.
    fn missed_ticks(&self, at_ms: u64, end: &End) -> Vec<Violation> {
        let live: Vec<NodeId> = self
            .first_fires
            .keys()
            .filter(|node| !self.crashed.contains(node))
            .copied()
            .collect();
        let fired: BTreeSet<&(String, i64)> = live
            .iter()
            .filter_map(|node| self.first_fires.get(node))
            .flatten()
            .collect();
        let expected: BTreeSet<&(String, i64)> = end.expected_ticks.iter().collect();
        expected
            .into_iter()
            .filter(|tick| !fired.contains(tick))
            .map(|(job, tick)| {
                violation(
                    NAME,
                    at_ms,
                    format!(
                        "job {job} tick {tick} was due but no first-attempt scheduled fire of it is in the last table of any live node {}",
                        node_list(live.iter())
                    ),
                )
            })
            .collect()
    }
}

impl Checker for CronChecker {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, at_ms: u64, events: &[Event]) -> Vec<Violation> {
        let mut violations = Vec::new();
        for event in events {
            match event {
                Event::Crash { node } => {
                    self.crashed.insert(*node);
                }
                Event::Restart { node } => {
                    self.crashed.remove(node);
                }
                Event::Table { node, fires, .. } => {
                    violations.extend(self.read_table(at_ms, *node, fires));
                }
                Event::JobAccepted { .. } => self.accepted.extend(Accepted::read(at_ms, event)),
                _ => {}
            }
        }
        violations
    }

    fn finish(&mut self, at_ms: u64, end: &End) -> Vec<Violation> {
        let mut violations = self.uncommitted_runs(at_ms);
        violations.extend(self.missed_ticks(at_ms, end));
        violations
    }
}
