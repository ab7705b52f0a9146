//! Cron jobs end to end on a three-voter cluster of real processes (`--runtime process`): a job
//! fires every two seconds while the leader is SIGKILLed again and again, and neither its run
//! records nor its own output (each run appends its tick to a file) show a tick twice, or a
//! tick skipped inside one leader's term (`catch_up = "latest"`). Overlap policies are each
//! shown by a job that outlives its interval.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use shoal_tests::bundle_of;
use shoal_tests::cluster::{ClusterLock, TestCluster};

/// The job: appends `<tick> <run id>` to `$TICKS_FILE`, sleeps `$SLEEP_MS`, then appends
/// `done <tick>`.
const JOB_JS: &str = r#"const fs = require("fs");
fs.appendFileSync(process.env.TICKS_FILE, `${process.env.SHOAL_TICK} ${process.env.SHOAL_RUN_ID}\n`);
console.log(`tick ${process.env.SHOAL_TICK}`);
setTimeout(() => {
  fs.appendFileSync(process.env.TICKS_FILE, `done ${process.env.SHOAL_TICK}\n`);
  process.exit(0);
}, Number(process.env.SLEEP_MS || 0));
"#;

/// A job bundle named `name` on `schedule`, writing to `ticks`, with extra manifest lines.
fn job_bundle(name: &str, schedule: &str, ticks: &Path, sleep_ms: u64, extra: &str) -> Vec<u8> {
    let manifest = format!(
        "name = \"{name}\"\nkind = \"cron\"\ncommand = [\"node\", \"job.js\"]\n\
         schedule = \"{schedule}\"\n{extra}\n\
         [env]\nTICKS_FILE = \"{}\"\nSLEEP_MS = \"{sleep_ms}\"\n",
        ticks.display()
    );
    bundle_of(&[
        ("shoal.toml", manifest.as_bytes()),
        ("job.js", JOB_JS.as_bytes()),
    ])
}

/// The job's runs as a node lists them, oldest first.
fn runs(cluster: &TestCluster, index: usize, job: &str) -> Result<Vec<Value>> {
    let reply = cluster.api_get(index, &format!("/v1/apps/{job}/runs?consistent=true"))?;
    anyhow::ensure!(
        reply.status == 200,
        "GET runs: {} {}",
        reply.status,
        reply.text()
    );
    let mut runs = reply.json()?["runs"]
        .as_array()
        .cloned()
        .context("a runs array")?;
    runs.reverse();
    Ok(runs)
}

/// Lines of the ticks file: (tick, run id).
fn ticks_written(path: &Path) -> Vec<(i64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (tick, run) = line.split_once(' ')?;
            Some((tick.parse().ok()?, run.to_owned()))
        })
        .collect()
}

fn state(run: &Value) -> &str {
    run["state"].as_str().unwrap_or("?")
}

#[test]
fn no_tick_runs_twice_or_is_skipped_within_a_term_while_leaders_are_killed() -> Result<()> {
    let _lock = ClusterLock::acquire();
    let mut cluster = TestCluster::start(3, 0)?;
    let ticks = cluster.dir().join("ticks.log");
    // Each run takes a second, so kills often land while one runs on the killed node.
    let bundle = job_bundle("beat", "*/2 * * * * *", &ticks, 1_000, "");
    cluster.deploy_until_acknowledged(0, &bundle, Duration::from_secs(30))?;
    cluster.wait_for(
        "the first run to write its tick",
        Duration::from_secs(30),
        || match ticks_written(&ticks).len() {
            0 => Err("no tick yet".to_owned()),
            _ => Ok(()),
        },
    )?;
    for round in 0..4 {
        std::thread::sleep(Duration::from_secs(5));
        let leader = cluster.leader(Duration::from_secs(30))?;
        eprintln!(
            "round {round}: killing the leader {}",
            cluster.nodes[leader].name
        );
        cluster.kill(leader);
        let next = cluster.leader(Duration::from_secs(30))?;
        cluster.check(next != leader, "a new leader")?;
        cluster.restart(leader)?;
    }
    std::thread::sleep(Duration::from_secs(6));
    let index = cluster.leader(Duration::from_secs(30))?;
    // Let the runs under way end, then read.
    std::thread::sleep(Duration::from_secs(3));
    let runs = runs(&cluster, index, "beat")?;
    let written = ticks_written(&ticks);
    let report = format!(
        "runs:\n{}\nticks written: {written:?}",
        runs.iter()
            .map(|run| format!(
                "  {} tick {} attempt {} {} fence {} worker {}",
                run["run_id"],
                run["tick"],
                run["attempt"],
                state(run),
                run["fence"],
                run["worker"]
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("{report}");

    // The job's own output: no tick twice.
    let mut seen = BTreeSet::new();
    for (tick, _) in &written {
        cluster.check(
            seen.insert(*tick),
            format!("tick {tick} ran twice\n{report}"),
        )?;
    }
    // The records: one scheduled run per tick, and every run that started wrote its tick.
    let mut record_ticks = BTreeSet::new();
    for run in runs.iter().filter(|run| run["manual"] == false) {
        let tick = run["tick"].as_i64().context("tick")?;
        cluster.check(
            record_ticks.insert(tick),
            format!("tick {tick} has two runs\n{report}"),
        )?;
        if state(run) == "succeeded" {
            cluster.check(
                seen.contains(&tick),
                format!("run of tick {tick} succeeded but wrote nothing\n{report}"),
            )?;
        }
    }
    for tick in &seen {
        cluster.check(
            record_ticks.contains(tick),
            format!("tick {tick} ran with no record\n{report}"),
        )?;
    }
    // Within one leader's term, every tick of the schedule was fired (run or skipped).
    let mut by_term: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for run in &runs {
        let term = run["fence"]["term"].as_u64().context("fence term")?;
        by_term
            .entry(term)
            .or_default()
            .push(run["tick"].as_i64().context("tick")?);
    }
    for (term, mut term_ticks) in by_term {
        term_ticks.sort_unstable();
        for pair in term_ticks.windows(2) {
            cluster.check(
                pair[1] - pair[0] == 2,
                format!(
                    "term {term} skipped ticks between {} and {}\n{report}",
                    pair[0], pair[1]
                ),
            )?;
        }
    }
    // Every run but the newest has ended, also those whose worker was killed under them (its
    // restart finds them and reports them lost).
    let newest = runs
        .iter()
        .filter_map(|run| run["tick"].as_i64())
        .max()
        .unwrap_or(0);
    for run in &runs {
        let tick = run["tick"].as_i64().unwrap_or(0);
        cluster.check(
            tick >= newest - 4 || !matches!(state(run), "running" | "pending"),
            format!("the run of tick {tick} never ended\n{report}"),
        )?;
    }
    let succeeded = runs.iter().filter(|run| state(run) == "succeeded").count();
    cluster.check(
        succeeded >= 10,
        format!("only {succeeded} runs succeeded over ~40 s\n{report}"),
    )?;
    Ok(())
}

#[test]
fn overlap_policies_decide_what_a_tick_does_while_the_last_run_goes_on() -> Result<()> {
    let _lock = ClusterLock::acquire();
    let cluster = TestCluster::start(1, 0)?;
    let started = Instant::now();
    for policy in ["forbid", "allow", "replace"] {
        let ticks = cluster.dir().join(format!("{policy}.log"));
        // Each run outlives the 2 s interval by far.
        let bundle = job_bundle(
            policy,
            "*/2 * * * * *",
            &ticks,
            5_000,
            &format!("overlap = \"{policy}\""),
        );
        cluster.deploy_until_acknowledged(0, &bundle, Duration::from_secs(30))?;
    }
    std::thread::sleep(Duration::from_secs(12));
    let mut report = String::new();
    let mut states: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut finished: BTreeMap<&str, usize> = BTreeMap::new();
    for policy in ["forbid", "allow", "replace"] {
        let log = std::fs::read_to_string(cluster.dir().join(format!("{policy}.log")))
            .unwrap_or_default();
        finished.insert(
            policy,
            log.lines().filter(|l| l.starts_with("done ")).count(),
        );
        let runs = runs(&cluster, 0, policy)?;
        let list: Vec<String> = runs.iter().map(|run| state(run).to_owned()).collect();
        report.push_str(&format!(
            "{policy}: {list:?}, {} ran to the end\n",
            finished[policy]
        ));
        states.insert(policy, list);
    }
    eprintln!("after {:?}:\n{report}", started.elapsed());
    let count = |policy: &str, state: &str| states[policy].iter().filter(|s| *s == state).count();
    let active = |policy: &str| count(policy, "running") + count(policy, "pending");
    // Nothing died, so nothing is lost (run ids repeat across jobs: each job's are its own).
    for policy in ["forbid", "allow", "replace"] {
        cluster.check(
            count(policy, "lost") == 0,
            format!("{policy} lost runs\n{report}"),
        )?;
    }
    // forbid: one run at a time; the ticks during it are skipped.
    cluster.check(
        active("forbid") <= 1 && count("forbid", "skipped") >= 2,
        format!("forbid\n{report}"),
    )?;
    // allow: runs pile up side by side.
    cluster.check(
        count("allow", "skipped") == 0 && active("allow") >= 2 && finished["allow"] >= 1,
        format!("allow\n{report}"),
    )?;
    // replace: each tick stops the run before it, process and all: none ran to its end.
    cluster.check(
        active("replace") <= 1 && count("replace", "replaced") >= 2 && finished["replace"] == 0,
        format!("replace\n{report}"),
    )?;
    Ok(())
}
