//! Shoal's benchmarks, one subcommand per scenario (BENCHMARKS.md records the figures):
//!
//! ```text
//! cargo run -p shoal-tests --release --bin bench -- static [--duration 10s] [--connections 32]
//! cargo run -p shoal-tests --release --bin bench -- wake [--cycles 20]
//! cargo run -p shoal-tests --release --bin bench -- failover [--runs 10]
//! cargo run -p shoal-tests --release --bin bench -- forwarding [--connections 8,1]
//! ```
//!
//! The machine is shared and noisy, so a scenario never reports an absolute figure alone: it
//! runs Shoal and a baseline side by side in one run, interleaving their wrk runs, and reports
//! medians and the ratio. Each scenario prints a markdown table and writes the same data, with
//! the conditions, to `bench-results/<scenario>.json`.
//!
//! A new scenario (service apps, the QUIC hop) is a new [`Scenario`] variant and one function
//! that returns its [`Results`]; `shoal_tests::bench` holds what they share.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use shoal_tests::bench::nginx::{self, Nginx};
use shoal_tests::bench::report::{self, format_mib, Row};
use shoal_tests::bench::wrk::{self, Target, WrkSettings};
use shoal_tests::bench::{self, check_target, resident_memory_kib, Conditions, Expect};
use shoal_tests::bench::{failover, forwarding, wake};
use shoal_tests::{examples_dir, shoal_bin, TestNode};

/// An unrecorded wrk run per target before the measured rounds: first connections, page cache.
const WARMUP: Duration = Duration::from_secs(2);
/// How long a freshly deployed node sits idle before its resident memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// DESIGN §10: an idle node stays under 40 MB of resident memory.
const IDLE_MEMORY_TARGET_BYTES: u64 = 40_000_000;

#[derive(Parser)]
#[command(about = "Shoal's benchmarks: Shoal next to a baseline, measured in one run")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Static app serving (examples/dashboard) next to nginx serving the same files.
    Static(LoadOptions),
    /// Service apps woken from paused and from stopped, next to a bare `docker start`.
    Wake(WakeOptions),
    /// Kill the raft leader of three voters; time until a survivor acknowledges a deploy.
    Failover(FailoverOptions),
    /// A service app reached directly, through the local and a remote ingress, and nginx.
    Forwarding(forwarding::Options),
}

impl Scenario {
    /// The name results are filed under, `bench-results/<name>.json`.
    fn name(&self) -> &'static str {
        match self {
            Scenario::Static(_) => "static",
            Scenario::Wake(_) => "wake",
            Scenario::Failover(_) => "failover",
            Scenario::Forwarding(_) => "forwarding",
        }
    }
}

/// How hard and how long wrk loads each target.
#[derive(Args, Clone, Debug)]
struct LoadOptions {
    /// Length of one measured wrk run: `10s`, `2m`; a bare number is seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Connections wrk keeps open.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Measured runs per target, interleaved across targets; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
}

impl LoadOptions {
    fn wrk_settings(&self) -> WrkSettings {
        // One wrk thread: with two cores, the other one is left to the server under test.
        WrkSettings {
            threads: 1,
            connections: self.connections,
            duration: self.duration,
        }
    }

    /// The command that reproduces a run with these options.
    fn command_line(&self, scenario: &str, build_profile: &str) -> String {
        let release = if build_profile == "release" {
            " --release"
        } else {
            ""
        };
        format!(
            "cargo run -p shoal-tests{release} --bin bench -- {scenario} --duration {}s \
             --connections {} --repeats {}",
            self.duration.as_secs(),
            self.connections,
            self.repeats
        )
    }
}

/// How many wakes of each kind are timed.
#[derive(Args, Clone, Debug)]
struct WakeOptions {
    /// Measured cycles; each times one wake of every kind.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    cycles: u32,
}

/// How many failovers are timed.
#[derive(Args, Clone, Debug)]
struct FailoverOptions {
    /// Timed runs; each kills the current leader once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// What a scenario hands back: a report for people and the same data for machines.
struct Results {
    markdown: String,
    json: Value,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = cli.scenario.name();
    let results = match &cli.scenario {
        Scenario::Static(options) => static_apps(options),
        Scenario::Wake(options) => wake_apps(options),
        Scenario::Failover(options) => failover_runs(options),
        Scenario::Forwarding(options) => forwarding_runs(options),
    };
    match results.and_then(|results| {
        let path = bench::write_results(name, &results.json)?;
        println!("{}", results.markdown);
        println!("Results written to {}", path.display());
        Ok(())
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Static apps: nginx and Shoal serve the files of examples/dashboard; wrk loads a stylesheet
/// and the index page from both, and the index page through Shoal's path prefix, where the
/// HTML is rewritten while it streams.
fn static_apps(options: &LoadOptions) -> Result<Results> {
    let settings = options.wrk_settings();
    eprintln!("bench: building shoal if needed (a release build takes minutes)");
    let shoal = shoal_bin();
    let build_profile = profile_of(shoal);
    let conditions = Conditions::gather(&build_profile);
    let nginx_version = nginx::version()?;

    let work = tempfile::tempdir()?;
    let app_dir = examples_dir().join("dashboard");
    let node = TestNode::start(&work.path().join("node"));
    node.cli_ok(&["deploy", app_dir.to_str().context("a UTF-8 examples path")?]);
    std::thread::sleep(IDLE_SETTLE);
    let shoal_idle_kib = resident_memory_kib(node.pid())?;
    let nginx = Nginx::start(&work.path().join("nginx"), &app_dir)?;

    let planned = static_rows(&node, &nginx, &app_dir)?;
    for row in &planned {
        check_target(&row.target, &row.expect)?;
    }
    let targets: Vec<Target> = planned.iter().map(|row| row.target.clone()).collect();
    let runs = wrk::run_interleaved(&settings, &targets, options.repeats as usize, WARMUP)?;
    let shoal_loaded_kib = resident_memory_kib(node.pid())?;
    let nginx_loaded_kib = resident_memory_kib(nginx.pid())?;
    let load_average_at_end = bench::load_average();

    let rows: Vec<Row> = planned
        .into_iter()
        .zip(runs)
        .map(|(planned, runs)| Row {
            target: planned.target,
            baseline: planned.baseline,
            runs,
        })
        .collect();
    let measured = StaticMeasurements {
        conditions,
        shoal_bin: shoal.display().to_string(),
        nginx_version,
        rows,
        memory: MemoryFigures {
            shoal_idle_kib,
            shoal_loaded_kib,
            nginx_loaded_kib,
        },
        load_average_at_end,
    };
    Ok(measured.results(options, &settings))
}

/// Service apps: wake from paused and from stopped, next to a bare start of the same container
/// (see `shoal_tests::bench::wake`).
fn wake_apps(options: &WakeOptions) -> Result<Results> {
    let (build_profile, command) = build_and_describe(&format!("wake --cycles {}", options.cycles));
    let report = wake::run(options.cycles, &build_profile, &command)?;
    Ok(Results {
        markdown: report.markdown,
        json: report.json,
    })
}

/// Builds `shoal` (in this binary's profile) and returns that profile and the command that
/// reproduces the scenario `arguments`.
fn build_and_describe(arguments: &str) -> (String, String) {
    eprintln!("bench: building shoal if needed (a release build takes minutes)");
    let build_profile = profile_of(shoal_bin());
    let release = if build_profile == "release" {
        " --release"
    } else {
        ""
    };
    let command = format!("cargo run -p shoal-tests{release} --bin bench -- {arguments}");
    (build_profile, command)
}

/// Failover: the raft leader of three voters killed, and the time until a deploy through a
/// survivor is acknowledged (see `shoal_tests::bench::failover`).
fn failover_runs(options: &FailoverOptions) -> Result<Results> {
    let (build_profile, command) = build_and_describe(&format!("failover --runs {}", options.runs));
    let report = failover::run(options.runs, &build_profile, &command)?;
    Ok(Results {
        markdown: report.markdown,
        json: report.json,
    })
}

/// Forwarding: a service app directly, through both ingresses and nginx (see
/// `shoal_tests::bench::forwarding`).
fn forwarding_runs(options: &forwarding::Options) -> Result<Results> {
    let (build_profile, command) = build_and_describe(&options.arguments());
    let report = forwarding::run(options, &build_profile, &command)?;
    Ok(Results {
        markdown: report.markdown,
        json: report.json,
    })
}

/// Everything the static scenario measured, before it is reported.
struct StaticMeasurements {
    conditions: Conditions,
    shoal_bin: String,
    nginx_version: String,
    rows: Vec<Row>,
    memory: MemoryFigures,
    load_average_at_end: String,
}

impl StaticMeasurements {
    fn results(&self, options: &LoadOptions, settings: &WrkSettings) -> Results {
        let command = options.command_line("static", &self.conditions.build_profile);
        let mut conditions = self.conditions.to_json();
        for (key, value) in [
            ("shoal_bin", json!(self.shoal_bin)),
            ("nginx_version", json!(self.nginx_version)),
            ("nginx_config", json!(NGINX_CONFIG_SUMMARY)),
            ("wrk", json!(settings.command_line())),
            ("repeats", json!(options.repeats)),
            ("warmup_secs_per_target", json!(WARMUP.as_secs())),
            ("load_average_at_end", json!(self.load_average_at_end)),
        ] {
            conditions.insert(key.to_owned(), value);
        }
        let json = json!({
            "scenario": "static",
            "command": command,
            "conditions": conditions,
            "rows": report::rows_json(&self.rows),
            "memory": self.memory.to_json(),
        });
        let markdown = format!(
            "### Static apps\n\n{}\n{}\nConditions: {}; {} ({NGINX_CONFIG_SUMMARY}); `{}`, \
             median of {} interleaved runs per row after a {}s warm-up; load average {} at \
             start, {} at the end.\n\nCommand: `{command}`\n",
            report::markdown_table(&self.rows),
            self.memory.markdown(),
            self.conditions.summary_line(),
            self.nginx_version,
            settings.command_line(),
            options.repeats,
            WARMUP.as_secs(),
            self.conditions.load_average,
            self.load_average_at_end,
        );
        Results { markdown, json }
    }
}

/// How the nginx baseline is configured (bench/nginx.rs writes the file).
const NGINX_CONFIG_SUMMARY: &str =
    "1 worker, no master process, access_log off, sendfile on, defaults otherwise";

/// One row of a scenario before it is loaded.
struct PlannedRow {
    target: Target,
    /// Index of the nginx row serving the same file.
    baseline: Option<usize>,
    /// What the target must answer before it is loaded.
    expect: Expect,
}

/// The five static rows, in table order.
fn static_rows(node: &TestNode, nginx: &Nginx, app_dir: &Path) -> Result<Vec<PlannedRow>> {
    let stylesheet = bench::read_file(&app_dir.join("assets/style.css"))?;
    let index = bench::read_file(&app_dir.join("index.html"))?;
    let nginx_row = |label: &str, path: &str, expect| PlannedRow {
        target: Target {
            label: label.to_owned(),
            url: nginx.url(path),
            host: None,
            server_pid: Some(nginx.pid()),
        },
        baseline: None,
        expect,
    };
    // Host mode needs the app's host name; the node runs with the default `--domain localhost`.
    let shoal_row = |label: &str, path: &str, host: Option<&str>, baseline, expect| PlannedRow {
        target: Target {
            label: label.to_owned(),
            url: node.url(path),
            host: host.map(str::to_owned),
            server_pid: Some(node.pid()),
        },
        baseline: Some(baseline),
        expect,
    };
    let host = Some("dashboard.localhost");
    Ok(vec![
        nginx_row(
            "nginx `/assets/style.css`",
            "/assets/style.css",
            Expect::Bytes(stylesheet.clone()),
        ),
        shoal_row(
            "shoal host `/assets/style.css`",
            "/assets/style.css",
            host,
            0,
            Expect::Bytes(stylesheet),
        ),
        nginx_row(
            "nginx `/index.html`",
            "/index.html",
            Expect::Bytes(index.clone()),
        ),
        shoal_row(
            "shoal host `/` (index.html as is)",
            "/",
            host,
            2,
            Expect::Bytes(index.clone()),
        ),
        shoal_row(
            "shoal prefix `/apps/dashboard/` (rewritten)",
            "/apps/dashboard/",
            None,
            2,
            Expect::RewrittenFrom {
                original: index,
                needle: "/apps/dashboard/assets/style.css".to_owned(),
            },
        ),
    ])
}

/// Resident memory read from /proc around the load.
struct MemoryFigures {
    shoal_idle_kib: u64,
    shoal_loaded_kib: u64,
    nginx_loaded_kib: u64,
}

impl MemoryFigures {
    fn idle_within_target(&self) -> bool {
        self.shoal_idle_kib * 1024 < IDLE_MEMORY_TARGET_BYTES
    }

    fn to_json(&self) -> Value {
        json!({
            "shoal_idle_rss_kib": self.shoal_idle_kib,
            "shoal_after_load_rss_kib": self.shoal_loaded_kib,
            "nginx_after_load_rss_kib": self.nginx_loaded_kib,
            "idle_target_bytes": IDLE_MEMORY_TARGET_BYTES,
            "idle_within_target": self.idle_within_target(),
        })
    }

    fn markdown(&self) -> String {
        let verdict = if self.idle_within_target() {
            "within"
        } else {
            "over"
        };
        format!(
            "| resident memory (VmRSS) | |\n|---|---:|\n\
             | shoal node, idle, dashboard deployed | {} ({verdict} the 40 MB target) |\n\
             | shoal node, after the load | {} |\n\
             | nginx (one process), after the load | {} |\n",
            format_mib(self.shoal_idle_kib),
            format_mib(self.shoal_loaded_kib),
            format_mib(self.nginx_loaded_kib),
        )
    }
}

/// The cargo profile directory a binary sits in (`release`, `debug`).
fn profile_of(binary: &Path) -> String {
    binary
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `10s`, `2m`, `1h` or a bare number of seconds, in whole seconds as wrk takes them.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit_secs) = match text.strip_suffix('s') {
        Some(number) => (number, 1),
        None => match text.strip_suffix('m') {
            Some(number) => (number, 60),
            None => match text.strip_suffix('h') {
                Some(number) => (number, 3600),
                None => (text, 1),
            },
        },
    };
    match number.parse::<u64>() {
        Ok(count) if count > 0 => Ok(Duration::from_secs(count * unit_secs)),
        _ => Err(format!(
            "`{text}` is not a duration; write whole seconds, minutes or hours: 10s, 2m, 1h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_seconds_minutes_or_hours() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        for bad in ["", "0s", "1.5s", "10ms", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_reproducing_command_carries_the_options() {
        let options = LoadOptions {
            duration: Duration::from_secs(10),
            connections: 32,
            repeats: 3,
        };
        assert_eq!(
            options.command_line("static", "release"),
            "cargo run -p shoal-tests --release --bin bench -- static --duration 10s \
             --connections 32 --repeats 3"
        );
    }

    #[test]
    fn cli_parses_the_static_scenario_with_defaults() {
        let cli = Cli::try_parse_from(["bench", "static"]).unwrap();
        let Scenario::Static(options) = cli.scenario else {
            panic!("parsed as another scenario");
        };
        assert_eq!(options.duration, Duration::from_secs(10));
        assert_eq!(options.connections, 32);
        assert_eq!(options.repeats, 3);
        assert!(Cli::try_parse_from(["bench", "static", "--repeats", "0"]).is_err());
    }

    #[test]
    fn cli_parses_the_wake_scenario_with_defaults() {
        let cli = Cli::try_parse_from(["bench", "wake"]).unwrap();
        let Scenario::Wake(options) = cli.scenario else {
            panic!("parsed as another scenario");
        };
        assert_eq!(options.cycles, 20);
        let cli = Cli::try_parse_from(["bench", "wake", "--cycles", "5"]).unwrap();
        assert_eq!(cli.scenario.name(), "wake");
        assert!(Cli::try_parse_from(["bench", "wake", "--cycles", "0"]).is_err());
    }

    #[test]
    fn cli_parses_the_failover_scenario_with_defaults() {
        let cli = Cli::try_parse_from(["bench", "failover"]).unwrap();
        let Scenario::Failover(options) = cli.scenario else {
            panic!("parsed as another scenario");
        };
        assert_eq!(options.runs, 10);
        let cli = Cli::try_parse_from(["bench", "failover", "--runs", "3"]).unwrap();
        assert_eq!(cli.scenario.name(), "failover");
        assert!(Cli::try_parse_from(["bench", "failover", "--runs", "0"]).is_err());
    }
}
