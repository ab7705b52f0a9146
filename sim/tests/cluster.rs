//! End-to-end tests of the whole-cluster simulator: each one starts the real `shoal-sim`
//! binary, as a user would, and asserts on its exit status and what it prints.
//!
//! A 24 s run takes about a second of CPU in a debug build; the whole file stays well under a
//! minute on two cores.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Virtual seconds of the short runs: long enough for a fault before the quiet tail.
const SHORT: &str = "24";

/// The planted bug's name on the command line.
const BUG: &str = "cron-fire-without-commit";

/// The fields of `run --json`, which the multi-seed runner and users' scripts read.
const REPORT_FIELDS: [&str; 14] = [
    "seed",
    "trace_hash",
    "nodes",
    "voters",
    "simulated_ms",
    "events",
    "faults",
    "leader_terms",
    "deploys_acked",
    "runs_accepted",
    "requests",
    "expected_ticks",
    "messages",
    "violations",
];

/// Runs the binary with `args` and, for each `(name, value)` in `env`, that variable set.
fn shoal_sim(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shoal-sim"));
    command.args(args).env_remove("SHOAL_SIM_OS_ENTROPY");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("cannot start shoal-sim")
}

/// One `run --json` and what it printed.
struct Run {
    /// The exit code (`None` when killed by a signal).
    code: Option<i32>,
    /// Everything before the JSON line (the trace, with `--trace`).
    before_report: String,
    /// The JSON report.
    report: Value,
}

impl Run {
    fn hash(&self) -> &str {
        self.report["trace_hash"]
            .as_str()
            .expect("trace_hash is a string")
    }

    fn count(&self, field: &str) -> u64 {
        self.report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} is not a count in {}", self.report))
    }

    fn violations(&self) -> Vec<String> {
        self.report["violations"]
            .as_array()
            .expect("violations is an array")
            .iter()
            .map(|v| v.as_str().expect("a violation is a string").to_owned())
            .collect()
    }
}

/// `shoal-sim run --seed S --seconds N --json` plus `extra`, with `env` set.
fn run_seed(seed: u64, seconds: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let seed = seed.to_string();
    let mut args = vec!["run", "--seed", &seed, "--seconds", seconds, "--json"];
    args.extend_from_slice(extra);
    let output = shoal_sim(&args, env);
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (before_report, json_line) = match stdout.trim_end_matches('\n').rsplit_once('\n') {
        Some((before, last)) => (format!("{before}\n"), last),
        None => (String::new(), stdout.trim_end()),
    };
    let report = serde_json::from_str(json_line).unwrap_or_else(|error| {
        panic!(
            "{args:?} printed no JSON report ({error}), exit {:?}\nstderr: {stderr}",
            output.status.code()
        )
    });
    Run {
        code: output.status.code(),
        before_report,
        report,
    }
}

/// Same seed in two processes gives the same report, field for field (so the trace hash and
/// every count are reproducible), the report has the documented fields, and another seed
/// gives another trace.
#[test]
fn same_seed_same_report_other_seed_other_trace() {
    let first = run_seed(3, SHORT, &[], &[]);
    let second = run_seed(3, SHORT, &[], &[]);
    let other = run_seed(4, SHORT, &[], &[]);

    let fields: BTreeSet<&str> = first
        .report
        .as_object()
        .expect("the report is a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, BTreeSet::from(REPORT_FIELDS));
    assert_eq!(first.hash().len(), 64, "a hex SHA-256: {}", first.hash());
    assert_eq!(first.report, second.report);
    assert_eq!(first.code, second.code);
    assert_ne!(first.hash(), other.hash());
}

/// `--trace` prints one line per event, `{ms} {event:?}`, before the report, and the reported
/// trace hash is the SHA-256 of exactly that text: the hash covers the trace as printed.
/// Keeping the trace does not change the run.
#[test]
fn trace_hash_is_the_sha256_of_the_printed_trace() {
    let traced = run_seed(2, SHORT, &["--trace"], &[]);
    let plain = run_seed(2, SHORT, &[], &[]);
    let trace = &traced.before_report;

    let lines: Vec<&str> = trace.lines().collect();
    assert!(!lines.is_empty(), "--trace printed no trace");
    assert_eq!(lines.len() as u64, traced.count("events"));
    let mut previous_ms = 0;
    for line in &lines {
        let (ms, event) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not `ms event`: {line}"));
        let ms: u64 = ms
            .parse()
            .unwrap_or_else(|_| panic!("no ms at the start of: {line}"));
        assert!(ms >= previous_ms, "time went back at: {line}");
        assert!(ms <= traced.count("simulated_ms"), "after the end: {line}");
        assert!(!event.is_empty(), "no event in: {line}");
        previous_ms = ms;
    }
    assert_eq!(hex::encode(Sha256::digest(trace.as_bytes())), traced.hash());
    assert_eq!(traced.report, plain.report);
}

/// With `SHOAL_SIM_OS_ENTROPY=1` the process's getrandom is no longer intercepted and two runs
/// of one seed differ: the interception is what makes runs reproducible (the first test shows
/// they are without the variable).
#[test]
fn os_entropy_makes_runs_differ() {
    let os_entropy = [("SHOAL_SIM_OS_ENTROPY", "1")];
    let mut hashes = Vec::new();
    for _attempt in 0..3 {
        let first = run_seed(2, SHORT, &[], &os_entropy);
        let second = run_seed(2, SHORT, &[], &os_entropy);
        for run in [&first, &second] {
            assert!(
                matches!(run.code, Some(0 | 1)),
                "exit {:?}: {}",
                run.code,
                run.report
            );
            assert!(run.count("nodes") >= 3);
        }
        if first.hash() != second.hash() {
            return;
        }
        hashes.push(first.hash().to_owned());
    }
    panic!("three pairs of runs on OS entropy replayed identically: {hashes:?}");
}

/// A run without a planted bug passes, with faults, and its workload really ran: a leader was
/// elected, deploys were acknowledged, cron runs were accepted and ticks were due at the end
/// (so the checkers had something to check).
#[test]
fn clean_runs_pass_and_do_work() {
    let mut faults = 0;
    for seed in 1..=3 {
        let run = run_seed(seed, "30", &[], &[]);
        assert_eq!(run.code, Some(0), "seed {seed}: {}", run.report);
        assert_eq!(run.violations(), Vec::<String>::new(), "seed {seed}");
        for field in [
            "leader_terms",
            "deploys_acked",
            "runs_accepted",
            "expected_ticks",
        ] {
            assert!(run.count(field) >= 1, "seed {seed}: {field} is 0");
        }
        assert_eq!(run.count("simulated_ms"), 30_000, "seed {seed}");
        let answered_ok = run.report["requests"][1]
            .as_u64()
            .expect("requests is [sent, ok]");
        assert!(
            answered_ok >= 3,
            "seed {seed}: the cold burst was not answered"
        );
        faults += run.report["faults"].as_array().map_or(0, Vec::len);
    }
    assert!(
        faults > 0,
        "no fault in any run: the test checks too little"
    );
}

/// The planted bug (a cron fire dispatched without its raft commit) is caught by the
/// `cron-once` checker and fails the run, while the same seed without it passes.
#[test]
fn planted_bug_is_caught() {
    let buggy = run_seed(1, SHORT, &["--bug", BUG], &[]);
    let clean = run_seed(1, SHORT, &[], &[]);

    assert_eq!(buggy.code, Some(1), "{}", buggy.report);
    assert!(
        buggy
            .violations()
            .iter()
            .any(|v| v.starts_with("cron-once ") && v.contains("never committed")),
        "no uncommitted fire reported: {:?}",
        buggy.violations()
    );
    assert_eq!(clean.code, Some(0), "{}", clean.report);
    assert_eq!(clean.violations(), Vec::<String>::new());
}

/// Simultaneous requests to a cold app start one instance: with the cold rule replaced by
/// each ingress's own random pick (planted), the `one-cold-start` checker reports several
/// starts, while the same seeds pass without the bug.
#[test]
fn cold_start_without_single_flight_is_caught() {
    for seed in 1..=3 {
        let buggy = run_seed(seed, SHORT, &["--bug", "cold-spawn-anywhere"], &[]);
        assert_eq!(buggy.code, Some(1), "seed {seed}: {}", buggy.report);
        assert!(
            buggy
                .violations()
                .iter()
                .any(|v| v.starts_with("one-cold-start ") && v.contains("instances")),
            "seed {seed}: no extra cold start reported: {:?}",
            buggy.violations()
        );
        let clean = run_seed(seed, SHORT, &[], &[]);
        assert_eq!(clean.code, Some(0), "seed {seed}: {}", clean.report);
    }
}

/// The multi-seed runner runs each seed twice with `--check-determinism`, says each replayed
/// identically and passes; with a planted bug it fails and prints a command that replays it.
#[test]
fn multi_seed_runner_checks_determinism_and_prints_replays() {
    let passing = shoal_sim(
        &[
            "--seeds",
            "3",
            "--seconds",
            SHORT,
            "--check-determinism",
            "--jobs",
            "2",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&passing.stdout);
    assert_eq!(passing.status.code(), Some(0), "{stdout}");
    for seed in 1..=3 {
        let line = stdout
            .lines()
            .find(|line| line.starts_with(&format!("seed {seed}: ")))
            .unwrap_or_else(|| panic!("no line for seed {seed}: {stdout}"));
        assert!(line.ends_with(", replayed identically"), "{line}");
    }
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");

    let failing = shoal_sim(&["--bug", BUG, "--seeds", "2", "--seconds", SHORT], &[]);
    let stdout = String::from_utf8_lossy(&failing.stdout);
    assert_ne!(failing.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("0 passed, 2 failed"), "{stdout}");
    let replay = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("replay: "))
        .unwrap_or_else(|| panic!("no replay command: {stdout}"));
    assert!(replay.contains("run --seed "), "{replay}");
    assert!(replay.contains(&format!("--bug {BUG}")), "{replay}");
}

/// Bad input is refused by the argument parser with a usage error (exit 2) that says what is
/// allowed, before any run starts.
#[test]
fn bad_arguments_are_refused() {
    let too_few_nodes = shoal_sim(&["run", "--seed", "1", "--nodes", "2"], &[]);
    let stderr = String::from_utf8_lossy(&too_few_nodes.stderr);
    assert_eq!(too_few_nodes.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("3..=10"), "{stderr}");
    assert!(too_few_nodes.stdout.is_empty());

    let unknown_bug = shoal_sim(&["run", "--seed", "1", "--bug", "nonsense"], &[]);
    let stderr = String::from_utf8_lossy(&unknown_bug.stderr);
    assert_eq!(unknown_bug.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("possible values"), "{stderr}");
    assert!(stderr.contains(BUG), "{stderr}");
    assert!(unknown_bug.stdout.is_empty());
}

/// A short run ends with a verdict (exit 0 or 1), never a panic (101) or an error (2): the
/// scenario fits its workload and faults into whatever length it is given.
#[test]
fn short_runs_do_not_panic() {
    for seconds in ["5", "12", "20"] {
        for seed in 1..=3 {
            let output = shoal_sim(
                &["run", "--seed", &seed.to_string(), "--seconds", seconds],
                &[],
            );
            assert!(
                matches!(output.status.code(), Some(0 | 1)),
                "seed {seed}, {seconds} s: exit {:?}\n{}",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Bugs that only some seeds reach: dispatch to workers gossip reports dead (caught by the
/// no-route-to-dead checker), and a raft log that never syncs its writes (the simulated disk
/// loses them at a crash, and the restarted node's term goes back). Each makes a batch of 12
/// seeds fail and print its replay command; the same batch without a bug passes.
#[test]
fn planted_bugs_are_caught_by_some_seed_of_a_batch() {
    let batch = ["--seeds", "12", "--seconds", "40", "--jobs", "2"];
    for (bug, checker) in [
        ("dispatch-ignores-liveness", "no-route-to-dead"),
        ("raft-log-never-syncs", "never-backwards"),
    ] {
        let planted = shoal_sim(&[&batch[..], &["--bug", bug]].concat(), &[]);
        let stdout = String::from_utf8_lossy(&planted.stdout);
        assert_ne!(planted.status.code(), Some(0), "{bug}: {stdout}");
        assert!(
            stdout.contains(&format!("VIOLATION {checker}")),
            "no seed caught {bug}:\n{stdout}"
        );
        assert!(stdout.contains(&format!("--bug {bug} --trace")), "{stdout}");
    }

    let clean = shoal_sim(&batch, &[]);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("12 passed, 0 failed"), "{stdout}");
}
