//! The `forwarding` scenario (DESIGN §10): what a request to a service app costs on each path
//! to its container, measured side by side in one run on one machine:
//!
//! 1. **direct**: wrk straight to the container's address on the `shoal-apps` bridge;
//! 2. **local ingress**: through the ingress of the node that runs the container (node B);
//! 3. **remote ingress**: through the ingress of a node that runs no apps (node A,
//!    `--no-worker`), which forwards the request over QUIC (mTLS) to B;
//! 4. **nginx `proxy_pass`** to the container, as the bare directive does it (a new upstream
//!    connection per request), and with an upstream keepalive pool.
//!
//! The cluster is two real processes on loopback: `shoal seed --runtime docker --no-worker`
//! (A) and `shoal join --runtime docker` (B). The app is a Node.js server answering a fixed
//! 17-byte body ([`SERVER_JS`]) with one instance (`scale.max = 1`) that does not pause during
//! the run. The admin API shows the instance's container id but not its address, so the
//! address is read with `docker inspect` (its IP on `shoal-apps` and its `io.shoal.port`).
//!
//! A pass (one per `--connections` value) loads every variant `repeats` times round-robin,
//! the first variant of a round rotating from round to round, after one unrecorded warm-up run
//! each. Around every run the CPU time of nodes A and B, the app's `node` process and nginx is
//! read from /proc, so each row also says which process paid for its requests; before every
//! run the host's sockets in TIME_WAIT are counted (a path that opens a connection to the
//! container per request leaves one per request for 60 s, and they all draw on the ephemeral
//! ports towards the container's one address).
//! Answers with an error status do not stop a run: they are counted, shown next to the row,
//! and fail its targets.
//!
//! Layout: this file, the scenario, its variants and the load; [`setup`], the processes and
//! the container; [`results`], the verdicts and the report; `tests`, the pure parts' tests.

mod results;
mod setup;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use self::results::{report, Facts, Setup};
use self::setup::{
    app_host, command_output, docker, require_no_worker_flag, Cluster, Http, Instance, ProxyNginx,
    Throttling,
};
use super::report::{median, Row, Summary};
use super::wrk::{self, format_latency, Target, WrkRun, WrkSettings};
use super::{cpu_time, load_average, nginx, Conditions};
use crate::shoal_bin;

/// The app's name; it answers at `http://<APP>.localhost/` on every node.
pub const APP: &str = "forwarding-hello";
/// What the app answers to every request.
pub const BODY: &[u8] = b"hello from shoal\n";
/// The app: no dependencies, a fixed body with its length, keep-alive as Node.js defaults.
pub const SERVER_JS: &str = r#"// The forwarding benchmark's app: the same 17 bytes for every request.
const http = require("http");
const body = Buffer.from("hello from shoal\n");
const headers = { "content-type": "text/plain", "content-length": body.length };
http
  .createServer((request, response) => {
    response.writeHead(200, headers);
    response.end(body);
  })
  .listen(Number(process.env.PORT || 3000));
"#;
/// The app's manifest: the node's default resources spelled out, one instance, no pause.
pub const MANIFEST: &str = "name = \"forwarding-hello\"\nkind = \"service\"\n\
    command = [\"node\", \"server.js\"]\nport = 3000\n\n\
    [resources]\nmemory = \"256MiB\"\ncpus = 1.0\npids = 256\n\n\
    [scale]\nmax = 1\npause_after = \"10m\"\nidle_timeout = \"30m\"\n";

/// DESIGN §10: the local ingress keeps at least this share of the direct requests/s.
pub const LOCAL_OVER_DIRECT_TARGET: f64 = 0.85;
/// DESIGN §10: a forwarded request adds under this much at p99 on loopback.
pub const HOP_P99_TARGET_MS: f64 = 1.0;
/// An unrecorded wrk run per variant and pass before the measured rounds.
const WARMUP: Duration = Duration::from_secs(2);
/// A run starts when at most this many sockets towards the container are in TIME_WAIT.
const TIME_WAIT_DRAINED: u64 = 5_000;
/// Longest wait for that (a socket stays in TIME_WAIT for 60 s).
const TIME_WAIT_DRAIN_WITHIN: Duration = Duration::from_secs(75);

/// The variants, in table order.
const DIRECT: usize = 0;
const LOCAL: usize = 1;
const REMOTE: usize = 2;
const NGINX: usize = 3;
const NGINX_KEEPALIVE: usize = 4;
/// The processes whose CPU time is read around each run, in [`Pids`] order.
const PROCESSES: [&str; 4] = ["app", "node B", "node A", "nginx"];

/// How hard, how long and how often each variant is loaded.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Length of one measured wrk run, in whole seconds: `10s` or `10`.
    #[arg(long, default_value = "10s", value_parser = parse_seconds)]
    pub duration: Duration,
    /// wrk connections, one pass per value (comma-separated); targets are checked on the first.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 1])]
    pub connections: Vec<u32>,
    /// Measured runs per variant and pass, interleaved; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
}

impl Options {
    /// The scenario's arguments as typed on the command line.
    pub fn arguments(&self) -> String {
        let connections: Vec<String> = self.connections.iter().map(u32::to_string).collect();
        format!(
            "forwarding --duration {}s --connections {} --repeats {}",
            self.duration.as_secs(),
            connections.join(","),
            self.repeats
        )
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.strip_suffix('s').unwrap_or(text).parse::<u64>() {
        Ok(seconds) if seconds > 0 => Ok(Duration::from_secs(seconds)),
        _ => Err(format!(
            "`{text}` is not a whole number of seconds such as 10s"
        )),
    }
}

/// What the scenario hands back: a report for people and the same data for machines.
pub struct ForwardingReport {
    /// The section printed and pasted into BENCHMARKS.md.
    pub markdown: String,
    /// Everything measured, each run included, with the conditions.
    pub json: Value,
}

/// Runs the scenario. `command` reproduces the run.
pub fn run(options: &Options, build_profile: &str, command: &str) -> Result<ForwardingReport> {
    ensure!(
        !options.connections.is_empty() && !options.connections.contains(&0),
        "--connections takes one or more counts above zero"
    );
    let shoal = shoal_bin();
    require_no_worker_flag(shoal)?;
    let docker_version = docker(&["version", "--format", "{{.Server.Version}}"])
        .context("the forwarding scenario needs a Docker engine, and none answered")?;
    let facts = Facts {
        shoal_bin: shoal.display().to_string(),
        conditions: Conditions::gather(build_profile),
        docker_version,
        nginx_version: nginx::version()?,
        node_version: command_output("node", &["--version"]),
        command: command.to_owned(),
        options: options.clone(),
    };
    eprintln!(
        "bench: forwarding; load average {}",
        facts.conditions.load_average
    );
    let work = tempfile::Builder::new()
        .prefix("shoal-forwarding-")
        .tempdir()?;
    let measured = measure(shoal, work.path(), options);
    if measured.is_err() {
        let kept = work.keep();
        eprintln!("bench: node logs and data dirs kept in {}", kept.display());
    }
    let (passes, setup) = measured?;
    Ok(report(&facts, &setup, &passes, &load_average()))
}

/// Starts the cluster and nginx, deploys and checks the app, and loads every pass. Everything
/// it starts is stopped, and the app's container removed, when it returns, on errors too.
fn measure(shoal: &Path, dir: &Path, options: &Options) -> Result<(Vec<Pass>, Setup)> {
    let http = Http::new()?;
    let cluster = Cluster::start(shoal, dir, &http)?;
    let instance = cluster
        .deploy_and_warm(&http)
        .map_err(|error| cluster.failure(error))?;
    let proxy = ProxyNginx::start(&dir.join("nginx"), instance.addr)?;
    let variants = variants(&cluster, &instance, &proxy);
    for variant in &variants {
        variant
            .check(&http)
            .map_err(|error| cluster.failure(error))?;
    }
    let pids = [
        instance.app_pid,
        Some(cluster.worker.pid()),
        Some(cluster.router.pid()),
        Some(proxy.pid()),
    ];
    let mut passes = Vec::new();
    for &connections in &options.connections {
        let settings = WrkSettings {
            // One wrk thread: the other core is left to the nodes, the app and nginx.
            threads: 1,
            connections,
            duration: options.duration,
        };
        let repeats = options.repeats as usize;
        let rows = load_pass(&settings, &variants, repeats, &pids, &instance)
            .map_err(|error| cluster.failure(error))?;
        passes.push(Pass { settings, rows });
    }
    let setup = Setup {
        commands: [
            cluster.router.command.clone(),
            cluster.worker.command.clone(),
        ],
        instance,
    };
    Ok((passes, setup))
}

/// One way to reach the app.
#[derive(Clone, Debug)]
struct Variant {
    key: &'static str,
    target: Target,
    /// `(x-shoal-node, x-shoal-ingress)` a Shoal answer must carry.
    shoal_headers: Option<(String, String)>,
}

fn variants(cluster: &Cluster, instance: &Instance, proxy: &ProxyNginx) -> Vec<Variant> {
    let variant = |key, label: &str, url: String, host: Option<String>, headers| Variant {
        key,
        target: Target {
            label: label.to_owned(),
            url,
            host,
            server_pid: None,
        },
        shoal_headers: headers,
    };
    let (a, b) = (&cluster.router.name, &cluster.worker.name);
    vec![
        variant(
            "direct",
            "direct to the container",
            format!("http://{}/", instance.addr),
            None,
            None,
        ),
        variant(
            "local_ingress",
            "local ingress (node B, runs it)",
            cluster.worker.url("/"),
            Some(app_host()),
            Some((b.clone(), b.clone())),
        ),
        variant(
            "remote_ingress",
            "remote ingress (node A → QUIC → B)",
            cluster.router.url("/"),
            Some(app_host()),
            Some((b.clone(), a.clone())),
        ),
        variant(
            "nginx",
            "nginx `proxy_pass`",
            format!("http://{}/", proxy.plain),
            None,
            None,
        ),
        variant(
            "nginx_keepalive",
            "nginx `proxy_pass`, upstream keepalive 16",
            format!("http://{}/", proxy.keepalive),
            None,
            None,
        ),
    ]
}

impl Variant {
    /// GETs the variant once: 200, the app's body, and for Shoal the right nodes.
    fn check(&self, http: &Http) -> Result<()> {
        let answer = http.get(&self.target.url, self.target.host.as_deref())?;
        ensure!(
            answer.status == 200 && answer.body == BODY,
            "{}: {} answered {}: {}",
            self.target.label,
            self.target.url,
            answer.status,
            answer.text()
        );
        if let Some((node, ingress)) = &self.shoal_headers {
            let seen = (
                answer.header("x-shoal-node"),
                answer.header("x-shoal-ingress"),
            );
            ensure!(
                seen == (Some(node.as_str()), Some(ingress.as_str())),
                "{}: x-shoal-node and x-shoal-ingress are {seen:?}, not ({node}, {ingress})",
                self.target.label
            );
        }
        Ok(())
    }
}

/// The processes whose CPU time is read around each run, in [`PROCESSES`] order.
type Pids = [Option<u32>; 4];

/// One variant's runs in one pass, in round order.
struct Measured {
    variant: Variant,
    runs: Vec<WrkRun>,
    /// CPU time of each of [`PROCESSES`] during each run.
    cpu: Vec<[Option<Duration>; 4]>,
    /// The host's sockets towards the container in TIME_WAIT around each run.
    ports: Vec<Ports>,
    /// How the container's CPU quota stopped it during each run.
    throttled: Vec<Option<Throttling>>,
}

impl Measured {
    fn summary(&self) -> Summary {
        Row {
            target: self.variant.target.clone(),
            baseline: None,
            runs: self.runs.clone(),
        }
        .summary()
    }

    /// Error responses and socket errors over every run.
    fn errors(&self) -> u64 {
        self.runs
            .iter()
            .map(|run| run.error_responses + run.socket_errors)
            .sum()
    }

    /// Median CPU time per request of process `index` over the runs, in microseconds.
    fn cpu_per_request_us(&self, index: usize) -> Option<f64> {
        let per_request: Vec<f64> = self
            .runs
            .iter()
            .zip(&self.cpu)
            .filter_map(|(run, cpu)| Some(cpu[index]?.as_secs_f64() * 1e6 / run.requests as f64))
            .collect();
        (!per_request.is_empty()).then(|| median(per_request))
    }
}

/// One pass: the wrk settings and every variant's runs, in table order.
struct Pass {
    settings: WrkSettings,
    rows: Vec<Measured>,
}

/// Which variant runs `offset`-th in round `round`: the first rotates from round to round.
fn round_order(round: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |offset| (round + offset) % count)
}

/// Loads every variant `repeats` times, round-robin, after one warm-up run each. Every run
/// first lets the sockets towards `container` in TIME_WAIT drain (see [`drain_time_wait`]).
fn load_pass(
    settings: &WrkSettings,
    variants: &[Variant],
    repeats: usize,
    pids: &Pids,
    instance: &Instance,
) -> Result<Vec<Measured>> {
    let container = instance.addr;
    let cpu_stat = instance.cpu_stat.as_deref();
    let warmup = WrkSettings {
        duration: WARMUP,
        ..settings.clone()
    };
    for variant in variants {
        eprintln!(
            "bench: warm-up {} ({})",
            variant.target.label,
            warmup.command_line()
        );
        drain_time_wait(container);
        // Answers with an error status do not fail a run here: a path that runs out of ports
        // answers 502, and that is a finding, not a broken benchmark.
        wrk::run_counting_errors(&warmup, &variant.target)?;
    }
    let mut rows: Vec<Measured> = variants
        .iter()
        .map(|variant| Measured {
            variant: variant.clone(),
            runs: Vec::new(),
            cpu: Vec::new(),
            ports: Vec::new(),
            throttled: Vec::new(),
        })
        .collect();
    for round in 0..repeats {
        for index in round_order(round, variants.len()) {
            let row = &mut rows[index];
            let (waited, at_start) = drain_time_wait(container);
            let before = pids.map(|pid| pid.and_then(|pid| cpu_time(pid).ok()));
            let throttled_before = Throttling::read(cpu_stat);
            let run = wrk::run_counting_errors(settings, &row.variant.target)?;
            let throttled = Throttling::read(cpu_stat)
                .zip(throttled_before)
                .map(|(after, before)| after.since(before));
            let after = pids.map(|pid| pid.and_then(|pid| cpu_time(pid).ok()));
            let ports = Ports {
                drain_waited: waited,
                at_start,
                at_end: time_wait_towards(container),
            };
            let mut cpu = [None; 4];
            for (slot, (before, after)) in cpu.iter_mut().zip(before.iter().zip(after)) {
                *slot = before.zip(after).map(|(b, a)| a.saturating_sub(b));
            }
            eprintln!(
                "bench: -c{} round {}/{repeats} {:<44} {:>8.0} req/s  p50 {:>9}  p99 {:>9}  \
                 errors {}  TIME_WAIT {:?} after a {:.0}s drain",
                settings.connections,
                round + 1,
                row.variant.target.label,
                run.requests_per_sec,
                format_latency(run.p50),
                format_latency(run.p99),
                run.error_responses + run.socket_errors,
                ports.at_end,
                waited.as_secs_f64(),
            );
            row.runs.push(run);
            row.cpu.push(cpu);
            row.ports.push(ports);
            row.throttled.push(throttled);
        }
    }
    Ok(rows)
}

/// The host's TCP sockets towards the container in TIME_WAIT around one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Ports {
    /// How long the run waited for earlier runs' sockets to drain.
    drain_waited: Duration,
    /// When the run started (after the drain).
    at_start: Option<u64>,
    /// When the run ended: about one per request, when a path connects per request.
    at_end: Option<u64>,
}

/// Waits, up to [`TIME_WAIT_DRAIN_WITHIN`], until at most [`TIME_WAIT_DRAINED`] of the host's
/// sockets towards `container` are in TIME_WAIT; returns the wait and the count then.
///
/// Every connection a proxy opens to the container and closes first stays in TIME_WAIT for
/// 60 s, holding one of the ~28,000 ephemeral ports towards the container's one address (Linux
/// reuses them early only towards loopback). A path that connects per request at a few
/// thousand requests/s exhausts them within one run; without this wait, the next variant
/// would start short of ports, whatever it is.
fn drain_time_wait(container: SocketAddr) -> (Duration, Option<u64>) {
    let began = Instant::now();
    loop {
        let count = time_wait_towards(container);
        let drained = count.is_none_or(|count| count <= TIME_WAIT_DRAINED);
        if drained || began.elapsed() >= TIME_WAIT_DRAIN_WITHIN {
            return (began.elapsed(), count);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The host's TCP sockets towards `remote` in TIME_WAIT (/proc/net/tcp, this network
/// namespace).
fn time_wait_towards(remote: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    count_time_wait(&table, remote)
}

/// Counts the rows of a /proc/net/tcp table whose remote address is `remote` and whose state
/// is TIME_WAIT (`06`). `None` for an IPv6 address, which this table does not hold.
fn count_time_wait(table: &str, remote: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(remote) = remote else {
        return None;
    };
    // The kernel prints the address's network-order bytes read as one native u32 (on a
    // little-endian host 172.18.0.2 reads 020012AC), and the port in host order.
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(remote.ip().octets()),
        remote.port()
    );
    let count = table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(2);
            fields.next() == Some(wanted.as_str()) && fields.next() == Some("06")
        })
        .count();
    Some(count as u64)
}
