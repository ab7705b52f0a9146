//! The `wake` scenario (DESIGN §10): how long the first request to an idle service app takes
//! when its container is paused and when it has been stopped, next to a bare start of an
//! identical container plus its first answer, all measured in one run.
//!
//! One node serves two copies of examples/api: [`PAUSED_APP`] pauses after 1 s idle and stops
//! only after 10 min; [`STOPPED_APP`] pauses after 1 s and stops after 2 s. The baseline is one
//! container this scenario creates itself, from the image the node's container runs, with the
//! stopped app's release mounted at `/app` and the node container's limits and hardening
//! (read back from `docker inspect`, so the two cannot drift apart).
//!
//! Every cycle waits until the paused app is `paused` and the stopped app `exited`, lets the
//! node settle, then times, one after the other while nothing else moves:
//!
//! 1. the baseline twice, in an order that alternates per cycle: `docker start` and `docker
//!    inspect` (for the address, which changes between starts) through the CLI, and the same
//!    two calls made to the Engine API over its socket, as the node makes them; each then GETs
//!    `/hello` every [`POLL_INTERVAL`] until it answers, and is stopped (untimed);
//! 2. GET `/apps/wake-stopped/hello` through the node's ingress;
//! 3. GET `/apps/wake-paused/hello`.
//!
//! Each figure is wall time at the client around one blocking request, on a new connection,
//! from before it is sent until its body is read; the node's `x-shoal-cold-start-ms` header
//! (how long the request waited for its instance) is recorded next to it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};

use super::report::{median, round3, Spread};
use super::{load_average, Conditions};
use crate::{container_states, examples_dir, shoal_bin, TestNode};

/// The app woken from `paused`.
pub const PAUSED_APP: &str = "wake-paused";
/// The app woken from `exited`.
pub const STOPPED_APP: &str = "wake-stopped";
/// The bridge network the node puts app containers on.
const NETWORK: &str = "shoal-apps";
/// The port the apps listen on (`$PORT`).
const APP_PORT: u16 = 3000;
/// How often the baseline is asked for its first answer after its start.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How often `docker ps` is read while waiting for the apps to pause and stop.
const STATE_POLL: Duration = Duration::from_millis(100);
/// Pause between the states being reached and the first timed request, so the node has
/// handled the outcome of its own pause or stop call.
pub const SETTLE: Duration = Duration::from_millis(300);
/// How long the deploy may take to pre-create the containers (the first one on a machine
/// builds the runtime image).
const CREATED_WITHIN: Duration = Duration::from_secs(300);
/// How long one cycle may wait for the pause and the stop.
const STATES_WITHIN: Duration = Duration::from_secs(60);
/// How long a started baseline container has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// DESIGN §10: wake from paused under 30 ms p50.
pub const PAUSED_TARGET_MS: f64 = 30.0;
/// DESIGN §10: wake from stopped within 1.2x of a bare `docker start` plus first response.
pub const STOPPED_TARGET_RATIO: f64 = 1.2;

/// The resources both apps declare: the node's defaults, written out.
const RESOURCES: &str = "[resources]\nmemory = \"256MiB\"\ncpus = 1.0\npids = 256\n";

/// What the scenario hands back: a report for people and the same data for machines.
pub struct WakeReport {
    /// The section printed and pasted into BENCHMARKS.md.
    pub markdown: String,
    /// Everything measured, each sample included, with the conditions.
    pub json: Value,
}

/// Runs the scenario: `cycles` timed wakes of each kind. `command` reproduces the run.
pub fn run(cycles: u32, build_profile: &str, command: &str) -> Result<WakeReport> {
    ensure!(cycles > 0, "at least one cycle");
    let docker = DockerFacts::gather()?;
    let engine = Engine::from_env()?;
    let conditions = Conditions::gather(build_profile);
    eprintln!(
        "bench: wake, {cycles} cycles; load average {}",
        conditions.load_average
    );

    let work = tempfile::tempdir()?;
    let node = TestNode::start(&work.path().join("node"));
    for (app, idle_timeout) in [(PAUSED_APP, "10m"), (STOPPED_APP, "2s")] {
        let dir = app_copy(work.path(), app, "1s", idle_timeout)?;
        node.cli_ok(&["deploy", dir.to_str().context("a UTF-8 temp path")?]);
    }
    wait_for_states(
        &node,
        &[(PAUSED_APP, "created"), (STOPPED_APP, "created")],
        CREATED_WITHIN,
    )?;

    let template = NodeContainer::of(&node, STOPPED_APP)?;
    let bare = BareContainer::create(&node.name, &template)?;
    let probe = Probe::new()?;
    let paused_url = node.url(&format!("/apps/{PAUSED_APP}/hello"));
    let stopped_url = node.url(&format!("/apps/{STOPPED_APP}/hello"));

    // Unrecorded: the first start of every container (from `created`), which also warms the
    // page cache for node and the release.
    eprintln!("bench: warm-up: first start of each container");
    let warmup = json!({
        "shoal_paused_app_first_start": probe.timed_app_get(&paused_url)?.to_json(),
        "shoal_stopped_app_first_start": probe.timed_app_get(&stopped_url)?.to_json(),
        "bare_first_start": bare.time_start(&probe, Starter::Engine(&engine))?.to_json(),
    });

    let mut measured = Measured::default();
    for cycle in 0..cycles {
        wait_for_states(
            &node,
            &[(PAUSED_APP, "paused"), (STOPPED_APP, "exited")],
            STATES_WITHIN,
        )?;
        std::thread::sleep(SETTLE);
        let starters = [Starter::Cli, Starter::Engine(&engine)];
        let order: Vec<&Starter> = if cycle % 2 == 0 {
            starters.iter().collect()
        } else {
            starters.iter().rev().collect()
        };
        for starter in order {
            let sample = bare.time_start(&probe, *starter)?;
            match starter {
                Starter::Cli => measured.bare_cli.push(sample),
                Starter::Engine(_) => measured.bare_engine.push(sample),
            }
        }
        measured.stopped.push(probe.timed_app_get(&stopped_url)?);
        measured.paused.push(probe.timed_app_get(&paused_url)?);
        eprintln!(
            "bench: cycle {}/{cycles}: paused {}, stopped {}, bare CLI {:.1} ms, bare API {:.1} ms",
            cycle + 1,
            measured.paused[cycle as usize].describe(),
            measured.stopped[cycle as usize].describe(),
            measured.bare_cli[cycle as usize].total_ms,
            measured.bare_engine[cycle as usize].total_ms,
        );
    }
    let load_average_at_end = load_average();
    drop(bare);

    let mut extra = Map::new();
    extra.insert("shoal_bin".into(), json!(shoal_bin().display().to_string()));
    extra.insert("docker".into(), docker.to_json());
    extra.insert("runtime_image".into(), json!(template.image));
    extra.insert("runtime_image_id".into(), json!(template.image_id));
    extra.insert("bare_container".into(), json!(bare_create_args(&template)));
    extra.insert("cycles".into(), json!(cycles));
    extra.insert("poll_interval_ms".into(), json!(POLL_INTERVAL.as_millis()));
    extra.insert("settle_ms".into(), json!(SETTLE.as_millis()));
    extra.insert("load_average_at_end".into(), json!(load_average_at_end));
    let report = Report {
        conditions,
        extra,
        docker,
        template,
        measured,
        warmup,
        command: command.to_owned(),
        load_average_at_end,
    };
    Ok(report.finish())
}

/// A copy of examples/api named `name`, with its own idle timers.
fn app_copy(work: &Path, name: &str, pause_after: &str, idle_timeout: &str) -> Result<PathBuf> {
    let source = examples_dir().join("api");
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&source).with_context(|| format!("read {}", source.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.file_name() != "shoal.toml" {
            std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
        }
    }
    std::fs::write(
        dir.join("shoal.toml"),
        manifest(name, pause_after, idle_timeout),
    )?;
    Ok(dir)
}

fn manifest(name: &str, pause_after: &str, idle_timeout: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"service\"\ncommand = [\"node\", \"server.js\"]\n\
         port = {APP_PORT}\n\n{RESOURCES}\n[scale]\npause_after = \"{pause_after}\"\n\
         idle_timeout = \"{idle_timeout}\"\n"
    )
}

/// Waits until each app has exactly one container, in the state named.
fn wait_for_states(node: &TestNode, wanted: &[(&str, &str)], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let states: Vec<(&str, Vec<String>)> = wanted
            .iter()
            .map(|(app, _)| (*app, container_states(&node.name, app)))
            .collect();
        let reached = wanted
            .iter()
            .zip(&states)
            .all(|((_, state), (_, seen))| seen.len() == 1 && seen[0] == *state);
        if reached {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the apps did not reach {wanted:?} within {}s; they are {states:?}. The node's \
                 log ends:\n{}",
                within.as_secs(),
                log_tail(&node.log(), 40)
            );
        }
        std::thread::sleep(STATE_POLL);
    }
}

fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `docker <args>`, which must succeed; its trimmed stdout.
fn docker(args: &[&str]) -> Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .context("run the docker CLI")?;
    if !output.status.success() {
        bail!(
            "`docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The Docker engine the run used.
#[derive(Clone, Debug)]
struct DockerFacts {
    server_version: String,
    client_version: String,
    storage_driver: String,
    cgroup: String,
    default_runtime: String,
}

impl DockerFacts {
    /// Reads them; fails (the scenario measures nothing) when no engine answers.
    fn gather() -> Result<Self> {
        let info = docker(&[
            "info",
            "--format",
            "{{.ServerVersion}}|{{.Driver}}|{{.CgroupDriver}} cgroup v{{.CgroupVersion}}|\
             {{.DefaultRuntime}}",
        ])
        .context("the wake scenario needs a Docker engine, and `docker info` did not answer")?;
        let fields: Vec<&str> = info.split('|').collect();
        ensure!(fields.len() == 4, "unexpected `docker info` output: {info}");
        let client_version =
            docker(&["version", "--format", "{{.Client.Version}}"]).unwrap_or_default();
        Ok(Self {
            server_version: fields[0].to_owned(),
            storage_driver: fields[1].to_owned(),
            cgroup: fields[2].to_owned(),
            default_runtime: fields[3].to_owned(),
            client_version,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "server_version": self.server_version,
            "client_version": self.client_version,
            "storage_driver": self.storage_driver,
            "cgroup": self.cgroup,
            "default_runtime": self.default_runtime,
        })
    }

    fn summary(&self) -> String {
        format!(
            "Docker {} (storage driver {}, {}, runtime {})",
            self.server_version, self.storage_driver, self.cgroup, self.default_runtime
        )
    }
}

/// The Docker Engine API on its unix socket, spoken over HTTP/1.0 (one connection per call,
/// closed by the engine after its answer).
struct Engine {
    socket: PathBuf,
}

impl Engine {
    /// The socket `DOCKER_HOST` names, or the default one.
    fn from_env() -> Result<Self> {
        let socket = socket_path(std::env::var("DOCKER_HOST").ok().as_deref())?;
        ensure!(
            socket.exists(),
            "the Docker socket {} does not exist",
            socket.display()
        );
        Ok(Self { socket })
    }

    fn call(&self, method: &str, path: &str) -> Result<(u16, Vec<u8>)> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(ANSWER_WITHIN))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n"
        )?;
        let mut reply = Vec::new();
        stream
            .read_to_end(&mut reply)
            .with_context(|| format!("read the engine's answer to {method} {path}"))?;
        parse_http_reply(&reply).with_context(|| format!("the engine's answer to {method} {path}"))
    }

    /// `POST /containers/<id>/start`: returns once the engine reports the container running.
    fn start(&self, id: &str) -> Result<()> {
        let (status, body) = self.call("POST", &format!("/containers/{id}/start"))?;
        ensure!(
            status == 204,
            "starting {id} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }

    /// `GET /containers/<id>/json`: the container's address on the apps network.
    fn address(&self, id: &str) -> Result<String> {
        let (status, body) = self.call("GET", &format!("/containers/{id}/json"))?;
        ensure!(
            status == 200,
            "inspecting {id} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let inspected: Value = serde_json::from_slice(&body)?;
        Ok(
            inspected["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

/// Where the engine's unix socket is, given `DOCKER_HOST`.
fn socket_path(docker_host: Option<&str>) -> Result<PathBuf> {
    match docker_host {
        None | Some("") => Ok(PathBuf::from("/var/run/docker.sock")),
        Some(host) => match host.strip_prefix("unix://") {
            Some(path) => Ok(PathBuf::from(path)),
            None => bail!(
                "DOCKER_HOST is `{host}`: the wake scenario's Engine API baseline speaks to a \
                 unix socket only"
            ),
        },
    }
}

/// The status and body of an HTTP/1.x reply read to its end (no chunked bodies).
fn parse_http_reply(reply: &[u8]) -> Result<(u16, Vec<u8>)> {
    let split = reply
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&reply[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("a chunked body, which this small client does not read");
    }
    Ok((status, reply[split + 4..].to_vec()))
}

/// Blocking HTTP GETs, each on a new connection.
struct Probe {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// One answer: status, the node's cold-start header, body.
struct Answer {
    status: u16,
    cold_start_ms: Option<u64>,
    body: Vec<u8>,
}

impl Answer {
    /// Whether it is the example API's answer to `/hello`.
    fn is_hello(&self) -> bool {
        self.status == 200
            && serde_json::from_slice::<Value>(&self.body)
                .is_ok_and(|value| value["hello"] == json!("world"))
    }
}

impl Probe {
    fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            // A container that is not listening yet refuses at once; this bounds a lost SYN.
            .connect_timeout(Duration::from_millis(250))
            .timeout(ANSWER_WITHIN)
            .build()?;
        Ok(Self { runtime, client })
    }

    fn get(&self, url: &str) -> Result<Answer> {
        self.runtime.block_on(async {
            let response = self.client.get(url).send().await?;
            let status = response.status().as_u16();
            let cold_start_ms = response
                .headers()
                .get("x-shoal-cold-start-ms")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok());
            let body = response.bytes().await?.to_vec();
            Ok(Answer {
                status,
                cold_start_ms,
                body,
            })
        })
    }

    /// Times one GET to an app through the node's ingress, which must answer `/hello`.
    fn timed_app_get(&self, url: &str) -> Result<AppSample> {
        let began = Instant::now();
        let answer = self.get(url).with_context(|| format!("GET {url}"))?;
        let total = began.elapsed();
        ensure!(
            answer.is_hello(),
            "GET {url} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        Ok(AppSample {
            total_ms: millis(total),
            cold_start_ms: answer.cold_start_ms,
        })
    }

    /// GETs `url` every [`POLL_INTERVAL`] until it answers `/hello`.
    fn first_answer(&self, url: &str, deadline: Instant) -> Result<()> {
        loop {
            match self.get(url) {
                Ok(answer) if answer.is_hello() => return Ok(()),
                Ok(answer) => bail!(
                    "GET {url} answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                ),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!("GET {url}: no answer in time")))
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }
}

/// One timed request to an app through the node.
#[derive(Clone, Debug)]
struct AppSample {
    /// Wall time at the client, request sent to body read.
    total_ms: f64,
    /// The node's `x-shoal-cold-start-ms`, absent when the request did not wait.
    cold_start_ms: Option<u64>,
}

impl AppSample {
    fn to_json(&self) -> Value {
        json!({ "total_ms": round3(self.total_ms), "cold_start_header_ms": self.cold_start_ms })
    }

    fn describe(&self) -> String {
        match self.cold_start_ms {
            Some(header) => format!("{:.1} ms (header {header} ms)", self.total_ms),
            None => format!("{:.1} ms (no header)", self.total_ms),
        }
    }
}

/// One timed start of the bare container, split where the calls returned.
#[derive(Clone, Debug)]
struct BareSample {
    /// The start call returned.
    started_ms: f64,
    /// The inspect call returned (the address is known).
    inspected_ms: f64,
    /// The first answer to `/hello` was read.
    total_ms: f64,
}

impl BareSample {
    fn to_json(&self) -> Value {
        json!({
            "start_returned_ms": round3(self.started_ms),
            "inspect_returned_ms": round3(self.inspected_ms),
            "total_ms": round3(self.total_ms),
        })
    }
}

/// How the bare container is started and inspected.
#[derive(Clone, Copy)]
enum Starter<'a> {
    /// `docker start`, `docker inspect`: two CLI processes.
    Cli,
    /// The same two calls to the Engine API, as the node makes them.
    Engine(&'a Engine),
}

/// What the node gave the stopped app's container, read back from `docker inspect`.
struct NodeContainer {
    image: String,
    image_id: String,
    release: PathBuf,
    command: Vec<String>,
    user: String,
    host_config: Value,
}

impl NodeContainer {
    fn of(node: &TestNode, app: &str) -> Result<Self> {
        let ids = docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=io.shoal.node={}", node.name),
            "--filter",
            &format!("label=io.shoal.app={app}"),
        ])?;
        let ids: Vec<&str> = ids.lines().collect();
        ensure!(ids.len() == 1, "{app} has containers {ids:?}; expected one");
        let inspected: Value = serde_json::from_str(&docker(&["inspect", ids[0]])?)?;
        let inspected = &inspected[0];
        let image = inspected["Config"]["Image"]
            .as_str()
            .context("no Config.Image")?
            .to_owned();
        ensure!(
            image.starts_with("shoal-runtime:"),
            "{app}'s container runs `{image}`, not a shoal-runtime image"
        );
        // The release the node unpacked: `<data-dir>/bundles/releases/<digest>`.
        let shown: Value = serde_json::from_str(&node.cli_ok(&["apps", app, "--json"]))?;
        let digest = shown["app"]["digest"]
            .as_str()
            .context("`shoal apps --json` shows no app.digest")?;
        let release = node.data_dir.join("bundles/releases").join(digest);
        let mounted = inspected["Mounts"]
            .as_array()
            .and_then(|mounts| mounts.iter().find(|mount| mount["Destination"] == "/app"))
            .and_then(|mount| mount["Source"].as_str())
            .context("the node's container mounts nothing at /app")?;
        ensure!(
            release.canonicalize()? == Path::new(mounted).canonicalize()?,
            "the release dir {} is not what the node mounted ({mounted})",
            release.display()
        );
        let command = inspected["Config"]["Cmd"]
            .as_array()
            .context("no Config.Cmd")?
            .iter()
            .map(|part| part.as_str().map(str::to_owned).context("a Cmd part"))
            .collect::<Result<Vec<_>>>()?;
        let host_config = inspected["HostConfig"].clone();
        // The hardening the baseline copies: refuse to compare with a container without it.
        ensure!(
            host_config["ReadonlyRootfs"] == json!(true)
                && host_config["Init"] == json!(true)
                && host_config["CapDrop"]
                    .as_array()
                    .is_some_and(|caps| caps.contains(&json!("ALL"))),
            "the node's container is not hardened as DESIGN §5 says: {host_config}"
        );
        Ok(Self {
            image,
            image_id: inspected["Image"].as_str().unwrap_or_default().to_owned(),
            release,
            command,
            user: inspected["Config"]["User"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            host_config,
        })
    }
}

/// The `docker create` arguments of the baseline: the node container's image, command, user,
/// limits and hardening, the same release mounted the same way.
fn bare_create_args(template: &NodeContainer) -> Vec<String> {
    let host = &template.host_config;
    let mut args: Vec<String> = vec![
        "--network".into(),
        NETWORK.into(),
        "--read-only".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--init".into(),
        "--restart".into(),
        "no".into(),
        "--user".into(),
        template.user.clone(),
        "--workdir".into(),
        "/app".into(),
        "--env".into(),
        format!("PORT={APP_PORT}"),
    ];
    if let Some(tmpfs) = host["Tmpfs"]["/tmp"].as_str() {
        args.extend(["--tmpfs".into(), format!("/tmp:{tmpfs}")]);
    }
    for option in host["SecurityOpt"].as_array().into_iter().flatten() {
        if let Some(option) = option.as_str() {
            args.extend(["--security-opt".into(), option.to_owned()]);
        }
    }
    for (flag, key) in [
        ("--memory", "Memory"),
        ("--memory-swap", "MemorySwap"),
        ("--pids-limit", "PidsLimit"),
    ] {
        if let Some(value) = host[key].as_i64().filter(|value| *value > 0) {
            args.extend([flag.into(), value.to_string()]);
        }
    }
    if let Some(nano_cpus) = host["NanoCpus"].as_i64().filter(|value| *value > 0) {
        args.extend(["--cpus".into(), format!("{}", nano_cpus as f64 / 1e9)]);
    }
    if let Some(ipc) = host["IpcMode"].as_str().filter(|mode| !mode.is_empty()) {
        args.extend(["--ipc".into(), ipc.to_owned()]);
    }
    args.extend([
        "--mount".into(),
        format!(
            "type=bind,source={},target=/app,readonly",
            template.release.display()
        ),
        "--label".into(),
        "io.shoal.bench=wake-baseline".into(),
    ]);
    args
}

/// The baseline container, removed when dropped (on errors too).
struct BareContainer {
    id: String,
}

impl BareContainer {
    /// Creates it, labelled with the node's name so the node's own cleanup would remove it too.
    fn create(node_name: &str, template: &NodeContainer) -> Result<Self> {
        let mut args: Vec<String> = vec!["create".into()];
        args.extend(bare_create_args(template));
        args.extend(["--label".into(), format!("io.shoal.node={node_name}")]);
        args.push(template.image.clone());
        args.extend(template.command.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = docker(&args)?;
        eprintln!("bench: baseline container {}", &id[..12.min(id.len())]);
        Ok(Self { id })
    }

    /// Starts it, learns its address, GETs `/hello` until it answers, then stops it (untimed).
    fn time_start(&self, probe: &Probe, starter: Starter) -> Result<BareSample> {
        let began = Instant::now();
        match starter {
            Starter::Cli => {
                docker(&["start", &self.id])?;
            }
            Starter::Engine(engine) => engine.start(&self.id)?,
        }
        let started = began.elapsed();
        let address = match starter {
            Starter::Cli => docker(&[
                "inspect",
                "-f",
                &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
                &self.id,
            ])?,
            Starter::Engine(engine) => engine.address(&self.id)?,
        };
        let inspected = began.elapsed();
        if address.is_empty() {
            let state = docker(&["inspect", "-f", "{{.State.Status}}", &self.id])?;
            let logs = Command::new("docker")
                .args(["logs", "--tail", "20", &self.id])
                .output()
                .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
                .unwrap_or_default();
            bail!("the baseline container has no address on {NETWORK} (state {state}): {logs}");
        }
        let url = format!("http://{address}:{APP_PORT}/hello");
        probe.first_answer(&url, began + ANSWER_WITHIN)?;
        let total = began.elapsed();
        docker(&["stop", "-t", "1", &self.id])?;
        Ok(BareSample {
            started_ms: millis(started),
            inspected_ms: millis(inspected),
            total_ms: millis(total),
        })
    }
}

impl Drop for BareContainer {
    fn drop(&mut self) {
        if let Err(error) = docker(&["rm", "-f", &self.id]) {
            eprintln!("bench: could not remove the baseline container: {error:#}");
        }
    }
}

/// Every timed sample, in cycle order.
#[derive(Default)]
struct Measured {
    paused: Vec<AppSample>,
    stopped: Vec<AppSample>,
    bare_cli: Vec<BareSample>,
    bare_engine: Vec<BareSample>,
}

/// The JSON of a wake spread (p99 as its tail).
fn spread_json(spread: Spread) -> Value {
    json!({
        "p50_ms": round3(spread.p50),
        "p99_ms": round3(spread.tail),
        "mean_ms": round3(spread.mean),
        "min_ms": round3(spread.min),
        "max_ms": round3(spread.max),
    })
}

/// Everything measured, before it is reported.
struct Report {
    conditions: Conditions,
    extra: Map<String, Value>,
    docker: DockerFacts,
    template: NodeContainer,
    measured: Measured,
    warmup: Value,
    command: String,
    load_average_at_end: String,
}

/// One row of the table.
struct Line {
    label: &'static str,
    key: &'static str,
    stats: Spread,
    headers: Option<Vec<Option<u64>>>,
    samples: Vec<Value>,
}

impl Line {
    fn app(label: &'static str, key: &'static str, samples: &[AppSample]) -> Self {
        let totals: Vec<f64> = samples.iter().map(|sample| sample.total_ms).collect();
        Self {
            label,
            key,
            stats: Spread::of(&totals, 0.99),
            headers: Some(samples.iter().map(|sample| sample.cold_start_ms).collect()),
            samples: samples.iter().map(AppSample::to_json).collect(),
        }
    }

    fn bare(label: &'static str, key: &'static str, samples: &[BareSample]) -> Self {
        let totals: Vec<f64> = samples.iter().map(|sample| sample.total_ms).collect();
        Self {
            label,
            key,
            stats: Spread::of(&totals, 0.99),
            headers: None,
            samples: samples.iter().map(BareSample::to_json).collect(),
        }
    }

    /// Median of the cold-start headers present, and how many were missing.
    fn header_median(&self) -> Option<(Option<f64>, usize)> {
        let headers = self.headers.as_ref()?;
        let present: Vec<f64> = headers.iter().flatten().map(|ms| *ms as f64).collect();
        let missing = headers.len() - present.len();
        Some(((!present.is_empty()).then(|| median(present)), missing))
    }

    fn header_cell(&self) -> String {
        match self.header_median() {
            None => "-".to_owned(),
            Some((None, _)) => "none sent".to_owned(),
            Some((Some(ms), 0)) => format!("{ms:.1} ms"),
            Some((Some(ms), missing)) => format!("{ms:.1} ms ({missing} without)"),
        }
    }

    fn to_json(&self) -> Value {
        let mut value = json!({
            "label": self.label,
            "stats": spread_json(self.stats),
            "samples": self.samples,
        });
        if let Some((header_p50, missing)) = self.header_median() {
            value["cold_start_header_p50_ms"] = json!(header_p50);
            value["cold_start_header_missing"] = json!(missing);
        }
        value
    }
}

/// Median over one split point of the baseline samples.
fn split_median(samples: &[BareSample], pick: fn(&BareSample) -> f64) -> f64 {
    median(samples.iter().map(pick).collect())
}

impl Report {
    fn finish(self) -> WakeReport {
        let measured = &self.measured;
        let cycles = measured.paused.len();
        let lines = [
            Line::app(
                "shoal, from `paused` (GET through the ingress)",
                "shoal_from_paused",
                &measured.paused,
            ),
            Line::app(
                "shoal, from `exited` (GET through the ingress)",
                "shoal_from_stopped",
                &measured.stopped,
            ),
            Line::bare(
                "bare `docker start` + `docker inspect` (CLI) + first answer",
                "bare_docker_cli",
                &measured.bare_cli,
            ),
            Line::bare(
                "bare start + inspect (Engine API) + first answer",
                "bare_engine_api",
                &measured.bare_engine,
            ),
        ];
        let paused_p50 = lines[0].stats.p50;
        let stopped_p50 = lines[1].stats.p50;
        let ratio_cli = stopped_p50 / lines[2].stats.p50;
        let ratio_engine = stopped_p50 / lines[3].stats.p50;
        let paused_met = paused_p50 < PAUSED_TARGET_MS;
        let stopped_met = ratio_cli <= STOPPED_TARGET_RATIO;
        let verdict = |met: bool| if met { "met" } else { "missed" };

        let mut table = format!(
            "| wake, {cycles} cycles | p50 | p99 (= max) | mean | min | \
             `x-shoal-cold-start-ms` p50 |\n|---|---:|---:|---:|---:|---:|\n"
        );
        for line in &lines {
            table.push_str(&format!(
                "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} |\n",
                line.label,
                line.stats.p50,
                line.stats.tail,
                line.stats.mean,
                line.stats.min,
                line.header_cell()
            ));
        }
        let split = |samples: &[BareSample]| {
            format!(
                "start returned {:.1} ms, address known {:.1} ms, first answer {:.1} ms",
                split_median(samples, |s| s.started_ms),
                split_median(samples, |s| s.inspected_ms),
                split_median(samples, |s| s.total_ms),
            )
        };
        let host = &self.template.host_config;
        let limits = format!(
            "memory {} MiB (swap the same), {} CPU, pids {}, tmpfs /tmp `{}`",
            host["Memory"].as_i64().unwrap_or(0) >> 20,
            host["NanoCpus"].as_i64().unwrap_or(0) as f64 / 1e9,
            host["PidsLimit"].as_i64().unwrap_or(0),
            host["Tmpfs"]["/tmp"].as_str().unwrap_or("-"),
        );
        let markdown = format!(
            "### Service apps: wake\n\n{table}\n\
             p99 is the nearest-rank 99th percentile: with fewer than 100 samples it is the \
             slowest sample.\n\n\
             - **Wake from paused**: p50 {paused_p50:.1} ms against the DESIGN §10 target of \
             under {PAUSED_TARGET_MS:.0} ms: **{}**.\n\
             - **Wake from stopped**: p50 {stopped_p50:.1} ms = **{ratio_cli:.2}x** the bare \
             `docker start` (CLI) p50, against the target of at most \
             {STOPPED_TARGET_RATIO:.1}x: **{}**; {ratio_engine:.2}x the Engine API baseline.\n\
             - Baseline split, medians: CLI: {}; Engine API: {}.\n\n\
             Conditions: {}; {}; runtime image `{}`; containers: {limits}, read-only rootfs, \
             cap-drop ALL, no-new-privileges, init, user {}; baseline polled every {} ms; \
             each request on a new connection; {} ms settle after the states are reached; \
             load average {} at start, {} at the end.\n\nCommand: `{}`\n",
            verdict(paused_met),
            verdict(stopped_met),
            split(&measured.bare_cli),
            split(&measured.bare_engine),
            self.conditions.summary_line(),
            self.docker.summary(),
            self.template.image,
            self.template.user,
            POLL_INTERVAL.as_millis(),
            SETTLE.as_millis(),
            self.conditions.load_average,
            self.load_average_at_end,
            self.command,
        );

        let mut conditions = self.conditions.to_json();
        conditions.extend(self.extra);
        let mut rows = Map::new();
        for line in &lines {
            rows.insert(line.key.to_owned(), line.to_json());
        }
        let json = json!({
            "scenario": "wake",
            "command": self.command,
            "conditions": conditions,
            "rows": rows,
            "stopped_p50_over_bare_cli_p50": round3(ratio_cli),
            "stopped_p50_over_bare_engine_api_p50": round3(ratio_engine),
            "baseline_split_p50_ms": {
                "cli": {
                    "start_returned": round3(split_median(&measured.bare_cli, |s| s.started_ms)),
                    "inspect_returned": round3(split_median(&measured.bare_cli, |s| s.inspected_ms)),
                },
                "engine_api": {
                    "start_returned": round3(split_median(&measured.bare_engine, |s| s.started_ms)),
                    "inspect_returned": round3(split_median(&measured.bare_engine, |s| s.inspected_ms)),
                },
            },
            "targets": {
                "paused_p50_under_ms": PAUSED_TARGET_MS,
                "paused_met": paused_met,
                "stopped_ratio_at_most": STOPPED_TARGET_RATIO,
                "stopped_met": stopped_met,
            },
            "p99_note": "nearest rank; with fewer than 100 samples p99 is the maximum",
            "warmup": self.warmup,
        });
        WakeReport { markdown, json }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_of_fewer_than_a_hundred_samples_is_the_maximum() {
        let samples: Vec<f64> = (1..=20).map(f64::from).collect();
        let stats = Spread::of(&samples, 0.99);
        assert_eq!(stats.tail, 20.0);
        assert_eq!(stats.p50, 10.5);
        assert_eq!(stats.mean, 10.5);
        let hundred: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(Spread::of(&hundred, 0.99).tail, 198.0);
    }

    #[test]
    fn engine_replies_are_split_into_status_and_body() {
        let reply = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}";
        assert_eq!(
            parse_http_reply(reply).unwrap(),
            (200, b"{\"a\":1}".to_vec())
        );
        assert_eq!(
            parse_http_reply(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap(),
            (204, Vec::new())
        );
        assert!(
            parse_http_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err()
        );
        assert!(parse_http_reply(b"garbage").is_err());
    }

    #[test]
    fn the_socket_comes_from_docker_host() {
        assert_eq!(
            socket_path(None).unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            socket_path(Some("unix:///run/user/1000/docker.sock")).unwrap(),
            PathBuf::from("/run/user/1000/docker.sock")
        );
        assert!(socket_path(Some("tcp://10.0.0.1:2375")).is_err());
    }

    #[test]
    fn the_manifest_sets_the_timers_and_the_default_resources() {
        let text = manifest("wake-stopped", "1s", "2s");
        assert!(text.contains("name = \"wake-stopped\""));
        assert!(text.contains("pause_after = \"1s\""));
        assert!(text.contains("idle_timeout = \"2s\""));
        assert!(text.contains("memory = \"256MiB\""));
    }
}
