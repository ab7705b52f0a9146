//! `shoal-sim --seeds N`: many whole-cluster runs, each seed in a fresh process of this binary
//! (`shoal-sim run --seed S --json`), a few at a time. With `--check-determinism` each seed runs
//! twice and the two trace hashes must match.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::thread;

use anyhow::Context;
use serde::Deserialize;

/// What the parent reads back from a child run (a subset of `cluster::run::Report`).
#[derive(Clone, Debug, Deserialize)]
pub struct Outcome {
    /// The trace hash.
    pub trace_hash: String,
    /// Nodes.
    pub nodes: usize,
    /// Faults injected.
    pub faults: Vec<String>,
    /// Cron ticks that had to fire.
    pub expected_ticks: usize,
    /// Violations, as text.
    pub violations: Vec<String>,
}

/// How to run the seeds.
#[derive(Clone, Debug)]
pub struct Plan {
    /// First seed.
    pub first: u64,
    /// How many.
    pub count: u64,
    /// Virtual seconds per run.
    pub seconds: u64,
    /// A planted bug, passed to every run.
    pub bug: Option<String>,
    /// Run each seed twice and compare.
    pub check_determinism: bool,
    /// Processes at once.
    pub jobs: usize,
}

/// One seed's verdict.
#[derive(Debug)]
pub struct Verdict {
    /// The seed.
    pub seed: u64,
    /// The first run, or why it could not run.
    pub outcome: Result<Outcome, String>,
    /// The second run's hash, when determinism was checked.
    pub second_hash: Option<Result<String, String>>,
}

impl Verdict {
    /// Whether the seed passed: it ran, broke nothing, and (if checked) replayed identically.
    pub fn passed(&self) -> bool {
        let Ok(outcome) = &self.outcome else {
            return false;
        };
        outcome.violations.is_empty()
            && match &self.second_hash {
                None => true,
                Some(Ok(hash)) => *hash == outcome.trace_hash,
                Some(Err(_)) => false,
            }
    }
}

/// Runs every seed of `plan`, calling `report` with each verdict in seed order.
pub fn run_all(plan: &Plan, mut report: impl FnMut(&Verdict)) -> anyhow::Result<Vec<Verdict>> {
    let exe = std::env::current_exe().context("cannot find this executable to re-run it")?;
    let seeds: Vec<u64> = (plan.first..plan.first + plan.count).collect();
    let mut verdicts = BTreeMap::new();
    let mut next_to_report = 0;
    for batch in seeds.chunks(plan.jobs.max(1)) {
        let handles: Vec<_> = batch
            .iter()
            .map(|&seed| {
                let exe = exe.clone();
                let plan = plan.clone();
                thread::spawn(move || {
                    let outcome = run_child(&exe, &plan, seed);
                    let second_hash = plan
                        .check_determinism
                        .then(|| run_child(&exe, &plan, seed).map(|outcome| outcome.trace_hash));
                    Verdict {
                        seed,
                        outcome,
                        second_hash,
                    }
                })
            })
            .collect();
        for handle in handles {
            let verdict = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a seed's runner thread panicked"))?;
            verdicts.insert(verdict.seed, verdict);
        }
        while let Some(verdict) = seeds
            .get(next_to_report)
            .and_then(|seed| verdicts.get(seed))
        {
            report(verdict);
            next_to_report += 1;
        }
    }
    Ok(verdicts.into_values().collect())
}

fn run_child(exe: &std::path::Path, plan: &Plan, seed: u64) -> Result<Outcome, String> {
    let mut command = Command::new(exe);
    command
        .args(["run", "--json", "--seed", &seed.to_string()])
        .args(["--seconds", &plan.seconds.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(bug) = &plan.bug {
        command.args(["--bug", bug]);
    }
    let output = command
        .output()
        .map_err(|error| format!("cannot start {}: {error}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last_line = stdout.lines().rev().find(|line| line.starts_with('{'));
    match last_line.map(serde_json::from_str::<Outcome>) {
        Some(Ok(outcome)) => Ok(outcome),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            Err(format!(
                "the run exited with {} and no report: {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        }
    }
}
