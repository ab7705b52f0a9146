//! The `failover` scenario (DESIGN §10): kill the active orchestrator (the raft leader) and
//! time how long until a new one accepts a deploy. Target: under 1 s p50.
//!
//! A cluster of three voters on loopback ([`TestCluster`], `--runtime process`). Each run:
//!
//! 1. waits until the cluster is whole (every node live and ready, one agreed leader);
//! 2. SIGKILLs the leader; the clock starts just before the signal is sent;
//! 3. at once, and again every [`RETRY_PAUSE`] after each failure, POSTs a tiny static bundle
//!    (a new app per run) to one survivor's admin API, rotating through the nodes from run to
//!    run, so that some deploys land on the new leader and some are forwarded; an attempt
//!    that hangs counts as failed after [`ATTEMPT_TIMEOUT`];
//! 4. stops the clock when a deploy is acknowledged (a 2xx: committed, bundle on a majority);
//! 5. restarts the killed node with its same command line (untimed).
//!
//! The figure is client-side wall time, kill to acknowledgement: failure detection, election,
//! the forwarding node learning the new leader, bundle replication and commit.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use super::report::{round3, Spread};
use super::{load_average, Conditions};
use crate::cluster::{static_bundle, TestCluster, FORMED_WITHIN};
use crate::shoal_bin;

/// DESIGN §10: a new orchestrator accepts deploys in under 1 s p50.
pub const TARGET_P50_MS: f64 = 1000.0;
/// Voters in the cluster.
pub const VOTERS: usize = 3;
/// How long one deploy attempt may take before it counts as failed and is retried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed attempt (a refused connection or a 503 comes back at once).
pub const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long a run may wait for an acknowledgement before the scenario fails.
const ACK_WITHIN: Duration = Duration::from_secs(60);
/// How long a run may wait for the cluster to agree on a leader before the kill.
const LEADER_WITHIN: Duration = Duration::from_secs(30);

/// What the scenario hands back: a report for people and the same data for machines.
pub struct FailoverReport {
    /// The section printed and pasted into BENCHMARKS.md.
    pub markdown: String,
    /// Everything measured, each run included, with the conditions.
    pub json: Value,
}

/// One timed failover.
#[derive(Clone, Debug)]
struct Sample {
    killed: String,
    via: String,
    new_leader: String,
    via_was_new_leader: bool,
    attempts: u32,
    first_error: Option<String>,
    kill_to_ack_ms: f64,
    rejoined_ms: f64,
}

impl Sample {
    fn to_json(&self) -> Value {
        json!({
            "killed": self.killed,
            "deployed_through": self.via,
            "new_leader": self.new_leader,
            "deployed_through_new_leader": self.via_was_new_leader,
            "attempts": self.attempts,
            "first_error": self.first_error,
            "kill_to_ack_ms": round3(self.kill_to_ack_ms),
            "restart_to_whole_ms": round3(self.rejoined_ms),
        })
    }
}

/// Runs the scenario: `runs` timed failovers. `command` reproduces the run.
pub fn run(runs: u32, build_profile: &str, command: &str) -> Result<FailoverReport> {
    ensure!(runs > 0, "at least one run");
    let conditions = Conditions::gather(build_profile);
    eprintln!(
        "bench: failover, {runs} runs on {VOTERS} voters; load average {}",
        conditions.load_average
    );
    let mut cluster = TestCluster::start(VOTERS, 0)?;
    // Unrecorded: one deploy through the leader, so the first run measures a warm cluster.
    let leader = cluster.leader(LEADER_WITHIN)?;
    cluster.deploy(leader, &static_bundle("warmup", "warm-up"), ATTEMPT_TIMEOUT)?;

    let mut samples = Vec::new();
    for run in 0..runs {
        let sample = one_failover(&mut cluster, run)?;
        eprintln!(
            "bench: run {}/{runs}: killed {}, acknowledged through {} ({}) after {:.1} ms, \
             {} attempts",
            run + 1,
            sample.killed,
            sample.via,
            if sample.via_was_new_leader {
                "the new leader"
            } else {
                "a follower"
            },
            sample.kill_to_ack_ms,
            sample.attempts
        );
        samples.push(sample);
    }
    let load_average_at_end = load_average();
    Ok(report(&conditions, &samples, command, &load_average_at_end))
}

fn one_failover(cluster: &mut TestCluster, run: u32) -> Result<Sample> {
    cluster.wait_formed(FORMED_WITHIN)?;
    let leader = cluster.leader(LEADER_WITHIN)?;
    // Rotate through the nodes so that over the runs every survivor takes deploys, sometimes as
    // the new leader and sometimes as a follower that forwards.
    let count = cluster.nodes.len();
    let mut via = run as usize % count;
    if via == leader {
        via = (via + 1) % count;
    }
    let app = format!("failover-{run}");
    let bundle = static_bundle(&app, &format!("run {run}"));

    let killed_at = Instant::now();
    cluster.kill(leader);
    let mut attempts = 0;
    let mut first_error = None;
    let kill_to_ack = loop {
        attempts += 1;
        match cluster.deploy(via, &bundle, ATTEMPT_TIMEOUT) {
            Ok(_) => break killed_at.elapsed(),
            Err(error) => {
                first_error.get_or_insert_with(|| format!("{error:#}"));
                if killed_at.elapsed() >= ACK_WITHIN {
                    return Err(cluster.failure(format!(
                        "run {run}: no deploy through {} was acknowledged within {ACK_WITHIN:?} \
                         of the kill; the last attempt: {error:#}",
                        cluster.nodes[via].name
                    )));
                }
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    };
    let new_leader = cluster.leader(LEADER_WITHIN)?;

    let restarted_at = Instant::now();
    cluster.restart(leader)?;
    cluster.wait_formed(FORMED_WITHIN)?;
    Ok(Sample {
        killed: cluster.nodes[leader].name.clone(),
        via: cluster.nodes[via].name.clone(),
        new_leader: cluster.nodes[new_leader].name.clone(),
        via_was_new_leader: via == new_leader,
        attempts,
        first_error,
        kill_to_ack_ms: millis(kill_to_ack),
        rejoined_ms: millis(restarted_at.elapsed()),
    })
}

fn report(
    conditions: &Conditions,
    samples: &[Sample],
    command: &str,
    load_average_at_end: &str,
) -> FailoverReport {
    let times: Vec<f64> = samples.iter().map(|sample| sample.kill_to_ack_ms).collect();
    let stats = Spread::of(&times, 0.90);
    let met = stats.p50 < TARGET_P50_MS;
    let verdict = if met { "met" } else { "missed" };

    let mut runs_table = String::from(
        "| run | killed leader | deployed through | new leader | attempts | kill → ack |\n\
         |---:|---|---|---|---:|---:|\n",
    );
    for (run, sample) in samples.iter().enumerate() {
        runs_table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} ms |\n",
            run + 1,
            sample.killed,
            if sample.via_was_new_leader {
                format!("{} (new leader)", sample.via)
            } else {
                format!("{} (follower)", sample.via)
            },
            sample.new_leader,
            sample.attempts,
            sample.kill_to_ack_ms
        ));
    }
    let markdown = format!(
        "### Failover: kill the leader, time until a deploy is acknowledged\n\n\
         | {} runs, {VOTERS} voters | p50 | p90 | max | mean | min | target |\n\
         |---|---:|---:|---:|---:|---:|---|\n\
         | SIGKILL of the leader → first acknowledged deploy through a survivor | {:.1} ms | \
         {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | p50 under {TARGET_P50_MS:.0} ms: **{verdict}** |\n\n\
         {runs_table}\n\
         p90 is the nearest-rank 90th percentile: with fewer than 10 runs it is the slowest run. \
         Each attempt is one `POST /v1/apps` of a tiny static bundle on a new connection, \
         {} s timeout, retried {} ms after a failure.\n\n\
         Conditions: {}; `shoal` processes on loopback with `--runtime process`; load average \
         {} at start, {load_average_at_end} at the end.\n\nCommand: `{command}`\n",
        samples.len(),
        stats.p50,
        stats.tail,
        stats.max,
        stats.mean,
        stats.min,
        ATTEMPT_TIMEOUT.as_secs(),
        RETRY_PAUSE.as_millis(),
        conditions.summary_line(),
        conditions.load_average,
    );

    let mut conditions_json = conditions.to_json();
    for (key, value) in [
        ("shoal_bin", json!(shoal_bin().display().to_string())),
        ("voters", json!(VOTERS)),
        ("runtime", json!("process")),
        ("runs", json!(samples.len())),
        ("attempt_timeout_ms", json!(ATTEMPT_TIMEOUT.as_millis())),
        ("retry_pause_ms", json!(RETRY_PAUSE.as_millis())),
        ("load_average_at_end", json!(load_average_at_end)),
    ] {
        conditions_json.insert(key.to_owned(), value);
    }
    let json = json!({
        "scenario": "failover",
        "command": command,
        "conditions": conditions_json,
        "kill_to_ack_ms": {
            "p50": round3(stats.p50),
            "p90": round3(stats.tail),
            "max": round3(stats.max),
            "mean": round3(stats.mean),
            "min": round3(stats.min),
        },
        "target": {
            "kill_to_ack_p50_under_ms": TARGET_P50_MS,
            "met": met,
        },
        "p90_note": "nearest rank; with fewer than 10 runs p90 is the maximum",
        "runs": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
    });
    FailoverReport { markdown, json }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: f64, via_was_new_leader: bool) -> Sample {
        Sample {
            killed: "a".into(),
            via: "b".into(),
            new_leader: "b".into(),
            via_was_new_leader,
            attempts: 3,
            first_error: Some("connection refused".into()),
            kill_to_ack_ms: ms,
            rejoined_ms: 900.0,
        }
    }

    #[test]
    fn p90_is_the_nearest_rank() {
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let stats = Spread::of(&ten, 0.90);
        assert_eq!(stats.p50, 5.5);
        assert_eq!(stats.tail, 9.0);
        assert_eq!(stats.max, 10.0);
        assert_eq!(Spread::of(&[3.0, 1.0, 2.0], 0.90).tail, 3.0);
    }

    #[test]
    fn the_report_holds_the_runs_the_figures_and_the_target() {
        let conditions = Conditions {
            date_utc: "2026-01-01T00:00:00Z".into(),
            nproc: "2".into(),
            cpu_model: "test cpu".into(),
            kernel: "6.1".into(),
            os: "Debian".into(),
            build_profile: "release".into(),
            commit: "abc".into(),
            load_average: "0.1 0.2 0.3".into(),
        };
        let samples = [
            sample(400.0, true),
            sample(700.0, false),
            sample(1500.0, true),
        ];
        let report = report(&conditions, &samples, "cargo run ...", "0.1 0.2 0.3");
        assert_eq!(report.json["scenario"], "failover");
        assert_eq!(report.json["kill_to_ack_ms"]["p50"], 700.0);
        assert_eq!(report.json["kill_to_ack_ms"]["p90"], 1500.0);
        assert_eq!(report.json["kill_to_ack_ms"]["max"], 1500.0);
        assert_eq!(report.json["target"]["kill_to_ack_p50_under_ms"], 1000.0);
        assert_eq!(report.json["target"]["met"], true);
        assert_eq!(report.json["runs"].as_array().unwrap().len(), 3);
        assert_eq!(report.json["runs"][1]["kill_to_ack_ms"], 700.0);
        assert!(report
            .markdown
            .contains("| 700.0 ms | 1500.0 ms | 1500.0 ms |"));
        assert!(report.markdown.contains("**met**"));
        assert!(report.markdown.contains("b (follower)"));

        let slow = [sample(1200.0, true)];
        let report = super::report(&conditions, &slow, "cargo run ...", "0.1 0.2 0.3");
        assert_eq!(report.json["target"]["met"], false);
        assert!(report.markdown.contains("**missed**"));
    }
}
