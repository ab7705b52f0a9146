//! `shoal-sim`: runs simulations and prints what they measured.
//!
//! - `shoal-sim --seeds N`: N whole-cluster runs, one fresh process per seed, checked against
//!   the invariants of DESIGN §8; `--check-determinism` runs each twice and compares traces.
//! - `shoal-sim run --seed S`: one run (`--trace` prints its trace; `--bug` plants a bug).
//! - `shoal-sim balance`: the fleet loop (placement at scale) and its figures.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shoal::planted::Bug;
use shoal_sim::cluster::run as cluster_run;
use shoal_sim::fleet::{self, Config, GossipLag, Report};

mod entropy;
mod seeds;

/// Deterministic simulations of Shoal clusters.
///
/// With no subcommand: runs whole clusters (3 to 5 real nodes on virtual time, with crashes,
/// partitions, slow nodes and a deploy and cron workload) for `--seeds` seeds, and checks the
/// invariants of DESIGN §8 after every millisecond. A failing seed prints the command that
/// replays it.
#[derive(Debug, Parser)]
#[command(name = "shoal-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// How many seeds to run.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Virtual seconds per run.
    #[arg(long, default_value_t = 40)]
    seconds: u64,
    /// Run every seed twice, in two processes, and fail if the trace hashes differ.
    #[arg(long)]
    check_determinism: bool,
    /// Processes at once (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Plant a bug in every run (see `shoal-sim run --help`).
    #[arg(long)]
    bug: Option<Bug>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One whole-cluster run.
    Run(RunArgs),
    /// Placement at scale: load balance and cold starts under Zipf traffic.
    Balance(BalanceArgs),
}

/// One seed.
#[derive(Debug, Args)]
struct RunArgs {
    /// The seed: it fixes the cluster, the faults, the workload and every random draw.
    #[arg(long)]
    seed: u64,
    /// Virtual seconds.
    #[arg(long, default_value_t = 40)]
    seconds: u64,
    /// Plant a bug.
    #[arg(long)]
    bug: Option<Bug>,
    /// Nodes (3 to 10; default: drawn from the seed, 3 to 5). Three of them vote.
    #[arg(long, value_parser = clap::value_parser!(u8).range(3..=10))]
    nodes: Option<u8>,
    /// Print the whole trace (one line per event) before the report.
    #[arg(long)]
    trace: bool,
    /// Print the report as one line of JSON.
    #[arg(long)]
    json: bool,
}

/// The fleet loop's parameters (defaults: `shoal_sim::fleet::Config::default()`).
#[derive(Debug, Args)]
struct BalanceArgs {
    /// Nodes, each an ingress and a worker.
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// Apps (all service apps).
    #[arg(long, default_value_t = 10_000)]
    apps: usize,
    /// Virtual seconds to simulate.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the run's RNG.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Zipf exponent of app popularity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Requests per second over the whole cluster (Poisson).
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    /// Mean service time (exponential), e.g. `20ms`.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    service: Duration,
    /// Time from start to ready of an instance, e.g. `500ms`.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    cold_start: Duration,
    /// Time to thaw a paused instance.
    #[arg(long, default_value = "25ms", value_parser = humantime::parse_duration)]
    wake: Duration,
    /// `scale.concurrency_target` of every app.
    #[arg(long, default_value_t = 10)]
    concurrency_target: u32,
    /// `scale.max` of every app (instances per worker, and nodes holding it).
    #[arg(long, default_value_t = 64)]
    scale_max: u32,
    /// `scale.pause_after`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pause_after: Duration,
    /// `scale.idle_timeout`.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Concurrent requests a node serves before queueing them (0 = unlimited).
    #[arg(long, default_value_t = 64)]
    capacity: u32,
    /// Gossip lag: `epidemic` (push-pull, fanout 3), `epidemic:F`, or a fixed number of rounds.
    #[arg(long, default_value = "epidemic", value_parser = parse_lag)]
    gossip_lag: GossipLag,
    /// Balance window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How many of the most popular apps count as hot.
    #[arg(long, default_value_t = 10)]
    hot_apps: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_lag(text: &str) -> Result<GossipLag, String> {
    let fanout = match text {
        "epidemic" => Some(3),
        _ => text
            .strip_prefix("epidemic:")
            .map(str::parse)
            .transpose()
            .map_err(|_| {
                format!("`{text}`: the fanout after `epidemic:` must be a whole number")
            })?,
    };
    if let Some(fanout) = fanout {
        return Ok(GossipLag::Epidemic { fanout });
    }
    text.parse()
        .map(|rounds| GossipLag::Fixed { rounds })
        .map_err(|_| format!("`{text}`: expected `epidemic`, `epidemic:F` or rounds (0-255)"))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl BalanceArgs {
    fn config(&self) -> Config {
        Config {
            nodes: self.nodes,
            apps: self.apps,
            duration: self.seconds.saturating_mul(1_000_000),
            seed: self.seed,
            zipf_exponent: self.zipf,
            rate: self.rate,
            service_mean: micros(self.service),
            cold_start: micros(self.cold_start),
            wake: micros(self.wake),
            concurrency_target: self.concurrency_target,
            scale_max: self.scale_max,
            pause_after: micros(self.pause_after),
            idle_timeout: micros(self.idle_timeout),
            node_capacity: self.capacity,
            gossip_lag: self.gossip_lag,
            window: micros(self.window),
            hot_apps: self.hot_apps,
            ..Config::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Some(Command::Balance(args)) => balance(args).map(|()| true),
        Some(Command::Run(args)) => run_one(args),
        None => run_seeds(&cli),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // The reader went away (`| head`): nothing more to say to it.
        Err(error) if is_broken_pipe(&error) => ExitCode::from(2),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
}

/// One seed in this process; true when no invariant broke.
fn run_one(args: &RunArgs) -> anyhow::Result<bool> {
    entropy::reseed(args.seed);
    if let Some(bug) = args.bug {
        shoal::planted::plant(bug);
    }
    let started = Instant::now();
    let report = cluster_run::run(&cluster_run::Options {
        seed: args.seed,
        seconds: args.seconds,
        nodes: args.nodes.map(usize::from),
        keep_trace: args.trace,
        stop_at_violation: false,
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        entropy::drawn() > 0,
        "this binary's getrandom was not called: runs would not be deterministic"
    );
    let mut out = std::io::stdout().lock();
    if let Some(trace) = &report.trace {
        out.write_all(trace.as_bytes())?;
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "seed {}: {} nodes ({} voters), {} s simulated in {elapsed:.1} s, trace {}",
            report.seed,
            report.nodes,
            report.voters,
            report.simulated_ms / 1000,
            &report.trace_hash[..16]
        )?;
        for fault in &report.faults {
            writeln!(out, "  fault {fault}")?;
        }
        writeln!(
            out,
            "  {} leader terms, {} deploys acknowledged, {} runs accepted, {} requests ({} \
             answered 200), {} ticks due in the quiet tail, messages {} delivered / {} lost",
            report.leader_terms,
            report.deploys_acked,
            report.runs_accepted,
            report.requests.0,
            report.requests.1,
            report.expected_ticks,
            report.messages.0,
            report.messages.1
        )?;
        for violation in &report.violations {
            writeln!(out, "  VIOLATION {violation}")?;
        }
    }
    Ok(report.violations.is_empty())
}

/// Many seeds, each in its own process; true when all passed.
fn run_seeds(cli: &Cli) -> anyhow::Result<bool> {
    let plan = seeds::Plan {
        first: cli.first_seed,
        count: cli.seeds,
        seconds: cli.seconds,
        bug: cli.bug.map(Bug::name),
        check_determinism: cli.check_determinism,
        jobs: cli.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
    };
    let started = Instant::now();
    let verdicts = seeds::run_all(&plan, |verdict| print_verdict(verdict, &plan))?;
    let failed = verdicts.iter().filter(|v| !v.passed()).count();
    println!(
        "{} seeds ({}..{}), {} s simulated each{}: {} passed, {failed} failed, in {:.0} s",
        verdicts.len(),
        plan.first,
        plan.first + plan.count - 1,
        plan.seconds,
        if plan.check_determinism {
            ", each run twice"
        } else {
            ""
        },
        verdicts.len() - failed,
        started.elapsed().as_secs_f64()
    );
    Ok(failed == 0)
}

fn print_verdict(verdict: &seeds::Verdict, plan: &seeds::Plan) {
    let replay = format!(
        "cargo run -p shoal-sim --release -- run --seed {} --seconds {}{} --trace",
        verdict.seed,
        plan.seconds,
        plan.bug
            .as_deref()
            .map(|bug| format!(" --bug {bug}"))
            .unwrap_or_default()
    );
    match &verdict.outcome {
        Err(error) => println!("seed {}: ERROR {error}\n  replay: {replay}", verdict.seed),
        Ok(outcome) => {
            let determinism = match &verdict.second_hash {
                None => String::new(),
                Some(Ok(hash)) if *hash == outcome.trace_hash => ", replayed identically".into(),
                Some(Ok(hash)) => format!(
                    ", NOT DETERMINISTIC: second trace {} differs",
                    &hash[..16.min(hash.len())]
                ),
                Some(Err(error)) => format!(", second run failed: {error}"),
            };
            println!(
                "seed {}: {} nodes, {} faults, {} ticks checked, trace {}{determinism}{}",
                verdict.seed,
                outcome.nodes,
                outcome.faults.len(),
                outcome.expected_ticks,
                &outcome.trace_hash[..16.min(outcome.trace_hash.len())],
                if verdict.passed() { "" } else { "  FAILED" }
            );
            for violation in &outcome.violations {
                println!("  VIOLATION {violation}");
            }
            if !verdict.passed() {
                println!("  replay: {replay}");
            }
        }
    }
}

/// The report, plus the wall-clock time the run took (which no figure depends on).
#[derive(serde::Serialize)]
struct JsonOutput<'a> {
    #[serde(flatten)]
    report: &'a Report,
    runtime_s: f64,
}

fn balance(args: &BalanceArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let report = fleet::run(&args.config())?;
    let elapsed = started.elapsed();
    let text = if args.json {
        let output = JsonOutput {
            report: &report,
            runtime_s: (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        };
        format!(
            "{}\n",
            serde_json::to_string_pretty(&output).context("report to JSON")?
        )
    } else {
        format!(
            "{}runtime {:.1} s (wall clock)\n",
            render(&report),
            elapsed.as_secs_f64()
        )
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the report")
}

fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let c = &report.conditions;
    let r = &report.requests;
    let d = &report.decisions;
    let n = &report.node_balance;
    let s = &report.cold_starts;
    let _ = writeln!(
        out,
        "fleet: {} nodes, {} apps, {} s, seed {}, zipf {}, {} req/s, service {} ms, cold start {} ms",
        c.nodes, c.apps, c.seconds, c.seed, c.zipf, c.rate, c.service_ms, c.cold_start_ms
    );
    let _ = writeln!(
        out,
        "       target {}, scale.max {}, pause {} s, idle {} s, capacity {}, gossip {} ms {} (mean {} rounds, max {})",
        c.concurrency_target, c.scale_max, c.pause_after_s, c.idle_timeout_s, c.node_capacity,
        c.gossip_round_ms, c.gossip_lag, c.gossip_lag_mean_rounds, c.gossip_lag_max_rounds
    );
    render_balances(report, &mut out);
    let _ = writeln!(
        out,
        "node balance: requests at a node max/mean {:.2} (worst round {:.2}), p99/mean {:.2}; served over the run max/mean {:.2}, p99/mean {:.2}",
        n.in_flight_max_over_mean, n.in_flight_max_over_mean_worst, n.in_flight_p99_over_mean,
        n.served_max_over_mean, n.served_p99_over_mean
    );
    let _ = writeln!(
        out,
        "requests: {} arrived, {} completed, {} unfinished; rejected {} (queue full) + {} (deadline), {} of them after the first window; {} no worker",
        r.arrived, r.completed, r.unfinished, r.rejected_queue_full, r.rejected_deadline,
        r.rejected_after_first_window, r.no_worker
    );
    let _ = writeln!(
        out,
        "    waited for a start {} (mean {:.0} ms, max {:.0} ms); queued for a slot {}; latency p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
        r.waited_for_start, r.wait_for_start_mean_ms, r.wait_for_start_max_ms, r.waited_for_capacity,
        r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    );
    let _ = writeln!(
        out,
        "decisions: {} warm, {} spawn, {} scale-out; {} warm with every holder at target",
        d.warm, d.spawn, d.scale_out, d.saturated_warm
    );
    let _ = writeln!(
        out,
        "cold starts: {} ({} first, {} duplicate, {} scale-out; after the first window {}/{}/{}), {} wakes",
        s.total, s.first, s.duplicate, s.scale, s.after_first_window[0],
        s.after_first_window[1], s.after_first_window[2], s.wakes
    );
    let _ = writeln!(
        out,
        "    hot apps {}, tail {} over {} requested apps ({:.2} each, {} started more than once, most {} for rank {})",
        s.top_total, s.tail_total,
        s.tail_apps_requested, s.tail_per_requested_app, s.tail_apps_started_more_than_once,
        s.tail_max, s.tail_max_rank
    );
    for app in &s.top_apps {
        let _ = writeln!(
            out,
            "    rank {:>2}: {:>8} requests, {:>3} cold starts, {:>3} wakes, {:>3} holders / {:>3} instances at the end",
            app.rank, app.requests, app.cold_starts, app.wakes, app.holders_at_end, app.instances_at_end
        );
    }
    let _ = writeln!(out, "events {}, trace {}", report.events, report.trace_hash);
    out
}

/// The balance lines: per instance, per holder and within a holder (see `fleet::metrics`).
fn render_balances(report: &Report, out: &mut String) {
    use std::fmt::Write as _;
    for (label, unit, b) in [
        (
            "instance balance, hot apps",
            "instances",
            &report.instance_balance_hot,
        ),
        (
            "instance balance, all apps",
            "instances",
            &report.instance_balance_all,
        ),
        (
            "holder balance, hot apps",
            "holders",
            &report.holder_balance_hot,
        ),
        (
            "holder balance, all apps",
            "holders",
            &report.holder_balance_all,
        ),
        (
            "within one holder, hot apps",
            "instances",
            &report.within_holder_balance_hot,
        ),
    ] {
        let _ = writeln!(
            out,
            "{label} ({} s windows): max/mean {:.3}, p99/mean {:.3}, mean of max/mean {:.3} ({} app-windows, {} {unit}-windows)",
            report.conditions.window_s, b.max_over_mean, b.p99_over_mean, b.mean_max_over_mean, b.app_windows, b.instance_windows
        );
        if let Some(w) = &b.worst {
            let _ = writeln!(
                out,
                "    worst: app rank {} in the window from {} s, {} {unit}, busiest {} vs mean {:.1}",
                w.app_rank, w.window_start_s, w.instances, w.busiest, w.mean
            );
        }
        if !label.contains("all apps") {
            let series: Vec<String> = b
                .max_over_mean_by_window
                .iter()
                .map(|(start, max)| format!("{start}s {max:.2}"))
                .collect();
            let _ = writeln!(out, "    by window: {}", series.join(", "));
        }
    }
}
