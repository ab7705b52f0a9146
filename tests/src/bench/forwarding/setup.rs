//! The `forwarding` scenario's set-up: the two `shoal` processes, the app's container as
//! Docker shows it, the nginx proxy in front of it, and the blocking HTTP calls the set-up
//! makes. Everything started here is stopped when dropped, and the app's containers removed.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::{APP, BODY, MANIFEST, SERVER_JS};
use crate::{bundle_of, free_port, free_udp_port, remove_containers, unique_node_name};

/// The bridge network the node puts app containers on.
const NETWORK: &str = "shoal-apps";
/// How long a started node has to answer `/healthz`.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);
/// How long B has to join and both nodes to be ready.
const JOINED_WITHIN: Duration = Duration::from_secs(90);
/// How long the app has to answer through both ingresses (the first deploy on a machine
/// builds the runtime image).
const SERVING_WITHIN: Duration = Duration::from_secs(300);
/// How long a SIGTERMed node may take to exit before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(15);
/// Timeout of one set-up call (not the measured ones: wrk makes those).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks while waiting.
const POLL: Duration = Duration::from_millis(200);

/// Fails with a clear sentence when `shoal` predates the data plane.
pub(super) fn require_no_worker_flag(shoal: &Path) -> Result<()> {
    let help = Command::new(shoal)
        .args(["seed", "--help"])
        .output()
        .with_context(|| format!("run {} seed --help", shoal.display()))?;
    ensure!(
        String::from_utf8_lossy(&help.stdout).contains("--no-worker"),
        "{} has no `--no-worker` flag: the forwarding scenario needs the data plane (a node \
         that routes without running apps)",
        shoal.display()
    );
    Ok(())
}

/// The two nodes: A routes (`--no-worker`, the seed), B runs the app.
pub(super) struct Cluster {
    pub(super) router: NodeProcess,
    pub(super) worker: NodeProcess,
    pub(super) admin_token: String,
}

impl Cluster {
    pub(super) fn start(shoal: &Path, dir: &Path, http: &Http) -> Result<Self> {
        let prefix = unique_node_name();
        let mut router = NodeProcess::spawn(
            shoal,
            dir,
            &format!("{prefix}-a"),
            &["seed".into()],
            &["--no-worker"],
        )?;
        router.wait_healthy(http)?;
        let tokens = router.data_dir.join("tokens");
        let (admin_token, join_token) = wait_until("A's token files", JOINED_WITHIN, || {
            match (
                read_trimmed(&tokens.join("admin")),
                read_trimmed(&tokens.join("join")),
            ) {
                (Some(admin), Some(join)) => Ok((admin, join)),
                _ => Err("tokens/admin or tokens/join not written yet".to_owned()),
            }
        })?;
        let join = ["join".into(), "--seed".into(), router.quic.to_string()]
            .into_iter()
            .chain(["--token".into(), join_token])
            .collect::<Vec<String>>();
        let mut worker = NodeProcess::spawn(shoal, dir, &format!("{prefix}-b"), &join, &[])?;
        worker.wait_healthy(http)?;
        let cluster = Self {
            router,
            worker,
            admin_token,
        };
        cluster
            .wait_joined(http)
            .map_err(|error| cluster.failure(error))?;
        Ok(cluster)
    }

    /// Waits until A lists B live and both nodes answer `/readyz`.
    pub(super) fn wait_joined(&self, http: &Http) -> Result<()> {
        let name = &self.worker.name;
        wait_until(&format!("A to list {name} live"), JOINED_WITHIN, || {
            let nodes = http
                .call_json(&self.router.api_url("/v1/nodes"), &self.admin_token)
                .map_err(|error| format!("{error:#}"))?;
            let live = nodes["nodes"].as_array().into_iter().flatten().any(|node| {
                node["name"].as_str() == Some(name) && node["live"].as_bool() == Some(true)
            });
            live.then_some(())
                .ok_or_else(|| format!("/v1/nodes: {nodes}"))
        })?;
        for node in [&self.router, &self.worker] {
            wait_until(
                &format!("{} to be ready", node.name),
                JOINED_WITHIN,
                || match http.get(&node.url("/readyz"), None) {
                    Ok(answer) if answer.status == 200 => Ok(()),
                    Ok(answer) => Err(format!("/readyz answered {}", answer.status)),
                    Err(error) => Err(format!("{error:#}")),
                },
            )?;
        }
        Ok(())
    }

    /// Deploys the app through A's admin API, waits until both ingresses serve it, and finds
    /// its container.
    pub(super) fn deploy_and_warm(&self, http: &Http) -> Result<Instance> {
        let bundle = bundle_of(&[
            ("shoal.toml", MANIFEST.as_bytes()),
            ("server.js", SERVER_JS.as_bytes()),
        ]);
        wait_until(
            "the deploy through A to be acknowledged",
            JOINED_WITHIN,
            || {
                let url = self.router.api_url("/v1/apps");
                match http.post(&url, &self.admin_token, bundle.clone()) {
                    Ok(answer) if (200..300).contains(&answer.status) => Ok(()),
                    Ok(answer) => Err(format!("{} {}", answer.status, answer.text())),
                    Err(error) => Err(format!("{error:#}")),
                }
            },
        )?;
        eprintln!("bench: deployed {APP}; waiting for it to answer (the first deploy on a machine builds the runtime image)");
        for node in [&self.worker, &self.router] {
            wait_until(
                &format!("{APP} to answer through {}", node.name),
                SERVING_WITHIN,
                || match http.get(&node.url("/"), Some(&app_host())) {
                    Ok(answer) if answer.status == 200 && answer.body == BODY => Ok(()),
                    Ok(answer) => Err(format!("{} {}", answer.status, answer.text())),
                    Err(error) => Err(format!("{error:#}")),
                },
            )?;
        }
        self.instance(http)
    }

    /// The app's one running container on B, as the admin API and `docker inspect` show it.
    pub(super) fn instance(&self, http: &Http) -> Result<Instance> {
        let shown = http.call_json(
            &self.worker.api_url(&format!("/v1/apps/{APP}")),
            &self.admin_token,
        )?;
        let running: Vec<&str> = shown["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|instance| instance["state"] == "running")
            .filter_map(|instance| instance["container"].as_str())
            .collect();
        let [container] = running[..] else {
            bail!("B should run one instance of {APP}; its admin API shows {shown}");
        };
        Instance::inspect(container, &self.worker.name)
    }

    /// `error`, followed by the tail of both nodes' logs.
    pub(super) fn failure(&self, error: anyhow::Error) -> anyhow::Error {
        let tails: Vec<String> = [&self.router, &self.worker]
            .iter()
            .map(|node| {
                let log = node.log.display();
                format!("----- {} ({log}):\n{}", node.name, node.tail(40))
            })
            .collect();
        anyhow::anyhow!("{error:#}\n\n{}", tails.join("\n"))
    }
}

/// `<APP>.localhost`: the node's default `--domain` in host mode.
pub(super) fn app_host() -> String {
    format!("{APP}.localhost")
}

/// One `shoal seed` or `shoal join` process on free loopback ports, stopped when dropped
/// (SIGTERM, then SIGKILL), and the containers labelled with its name removed.
pub(super) struct NodeProcess {
    pub(super) name: String,
    pub(super) data_dir: PathBuf,
    pub(super) http: SocketAddr,
    pub(super) api: SocketAddr,
    pub(super) quic: SocketAddr,
    pub(super) log: PathBuf,
    pub(super) command: String,
    pub(super) child: Option<Child>,
}

impl NodeProcess {
    /// `shoal <leading> <node flags> <trailing>`, with `--runtime docker`.
    pub(super) fn spawn(
        shoal: &Path,
        dir: &Path,
        name: &str,
        leading: &[String],
        trailing: &[&str],
    ) -> Result<Self> {
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (http, api) = (loopback(free_port()), loopback(free_port()));
        let (gossip, quic) = (loopback(free_udp_port()), loopback(free_udp_port()));
        let data_dir = dir.join(name);
        let mut args: Vec<String> = leading.to_vec();
        args.extend(["--data-dir".into(), data_dir.display().to_string()]);
        for (flag, addr) in [
            ("--http", http),
            ("--api", api),
            ("--gossip", gossip),
            ("--quic", quic),
        ] {
            args.extend([flag.to_owned(), addr.to_string()]);
        }
        args.extend(["--advertise", "127.0.0.1", "--name", name].map(str::to_owned));
        args.extend(["--runtime", "docker", "--drain-timeout", "5s"].map(str::to_owned));
        args.extend(trailing.iter().map(|flag| (*flag).to_owned()));
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(shoal)
            .args(&args)
            .env("SHOAL_LOG", "info")
            .env_remove("SHOAL_DATA_DIR")
            .env_remove("SHOAL_API")
            .env_remove("SHOAL_TOKEN")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawn {}", shoal.display()))?;
        Ok(Self {
            name: name.to_owned(),
            data_dir,
            http,
            api,
            quic,
            log,
            command: format!("shoal {}", displayed_args(&args).join(" ")),
            child: Some(child),
        })
    }

    pub(super) fn wait_healthy(&mut self, http: &Http) -> Result<()> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "{} exited with {status}; its log:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
            if matches!(http.get(&self.url("/healthz"), None), Ok(answer) if answer.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer /healthz; its log:\n{}",
                    self.name,
                    self.tail(40)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub(super) fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(super) fn tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_WITHIN;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        remove_containers(&self.name);
    }
}

/// `args` with the join token's value left out (the command lines go into the results).
pub(super) fn displayed_args(args: &[String]) -> Vec<String> {
    let mut shown = args.to_vec();
    for index in 1..shown.len() {
        if shown[index - 1] == "--token" {
            shown[index] = "<A's tokens/join>".to_owned();
        }
    }
    shown
}

/// The app's container, read back with `docker inspect`.
#[derive(Clone, Debug)]
pub(super) struct Instance {
    pub(super) container: String,
    pub(super) addr: SocketAddr,
    pub(super) image: String,
    /// The container's `node` process (the child of `docker-init`), whose CPU time is read.
    pub(super) app_pid: Option<u32>,
    /// The container's CPU cgroup `cpu.stat`, where the quota's throttling is counted.
    pub(super) cpu_stat: Option<PathBuf>,
}

impl Instance {
    pub(super) fn inspect(container: &str, node: &str) -> Result<Self> {
        let inspected: Value = serde_json::from_str(&docker(&["inspect", container])?)?;
        let inspected = &inspected[0];
        let labels = &inspected["Config"]["Labels"];
        ensure!(
            labels["io.shoal.app"] == APP && labels["io.shoal.node"] == node,
            "container {container} is not {APP}'s on {node}: labels {labels}"
        );
        let ip = inspected["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
            .as_str()
            .filter(|ip| !ip.is_empty())
            .with_context(|| format!("container {container} has no address on {NETWORK}"))?;
        let port = labels["io.shoal.port"]
            .as_str()
            .context("no io.shoal.port label")?;
        let pid = inspected["State"]["Pid"].as_u64().unwrap_or(0) as u32;
        Ok(Self {
            container: container.to_owned(),
            addr: format!("{ip}:{port}").parse()?,
            image: inspected["Config"]["Image"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            app_pid: (pid > 0).then(|| node_process(pid)),
            cpu_stat: cpu_stat_path(container),
        })
    }
}

/// The container's `cpu.stat` under cgroup v1 or v2, with the cgroupfs or systemd driver.
fn cpu_stat_path(container: &str) -> Option<PathBuf> {
    [
        format!("/sys/fs/cgroup/cpu/docker/{container}/cpu.stat"),
        format!("/sys/fs/cgroup/cpu,cpuacct/docker/{container}/cpu.stat"),
        format!("/sys/fs/cgroup/system.slice/docker-{container}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{container}/cpu.stat"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|path| path.is_file())
}

/// How often and how long the container's CPU quota has stopped it so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Throttling {
    /// Quota periods (100 ms) in which the container ran out of quota.
    pub(super) periods: u64,
    /// Time it spent stopped.
    pub(super) time: Duration,
}

impl Throttling {
    /// Reads `cpu.stat`; `None` when it cannot be read.
    pub(super) fn read(cpu_stat: Option<&Path>) -> Option<Self> {
        parse_cpu_stat(&std::fs::read_to_string(cpu_stat?).ok()?)
    }

    /// What happened between `earlier` and `self`.
    pub(super) fn since(self, earlier: Self) -> Self {
        Self {
            periods: self.periods.saturating_sub(earlier.periods),
            time: self.time.saturating_sub(earlier.time),
        }
    }
}

/// `nr_throttled` and `throttled_time` (ns, cgroup v1) or `throttled_usec` (v2).
pub(super) fn parse_cpu_stat(text: &str) -> Option<Throttling> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .parse::<u64>()
                .ok()
        })
    };
    let time = match field("throttled_time") {
        Some(nanos) => Duration::from_nanos(nanos),
        None => Duration::from_micros(field("throttled_usec")?),
    };
    Some(Throttling {
        periods: field("nr_throttled")?,
        time,
    })
}

/// `pid` if it is `node`, else its first child (under `--init`, pid 1 is `docker-init`).
pub(super) fn node_process(pid: u32) -> u32 {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "node" {
        return pid;
    }
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|children| children.split_whitespace().next()?.parse().ok())
        .unwrap_or(pid)
}

/// A throwaway nginx proxying to the container, one foreground process with one worker,
/// stopped when dropped. Two servers: bare `proxy_pass` and one with an upstream keepalive pool.
pub(super) struct ProxyNginx {
    pub(super) child: Child,
    pub(super) plain: SocketAddr,
    pub(super) keepalive: SocketAddr,
}

impl ProxyNginx {
    pub(super) fn start(work_dir: &Path, upstream: SocketAddr) -> Result<Self> {
        std::fs::create_dir_all(work_dir)?;
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (plain, keepalive) = (loopback(free_port()), loopback(free_port()));
        let config = work_dir.join("nginx.conf");
        std::fs::write(&config, proxy_config(work_dir, upstream, plain, keepalive))?;
        let child = Command::new(nginx_program())
            .arg("-p")
            .arg(work_dir)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(work_dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nginx (scripts/setup.sh installs it)")?;
        let mut proxy = Self {
            child,
            plain,
            keepalive,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while [plain, keepalive]
            .iter()
            .any(|addr| TcpStream::connect(addr).is_err())
        {
            if Instant::now() >= deadline || matches!(proxy.child.try_wait(), Ok(Some(_))) {
                let log = std::fs::read_to_string(work_dir.join("error.log")).unwrap_or_default();
                bail!("nginx did not start; its error log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proxy)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProxyNginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn nginx_program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("nginx").is_file()));
    PathBuf::from(if on_path { "nginx" } else { "/usr/sbin/nginx" })
}

/// The proxy config: one worker, no access log, defaults otherwise; temp dirs in `work_dir`.
pub(super) fn proxy_config(
    work_dir: &Path,
    upstream: SocketAddr,
    plain: SocketAddr,
    keepalive: SocketAddr,
) -> String {
    let work = work_dir.display();
    format!(
        r#"# Written by the shoal forwarding benchmark; see BENCHMARKS.md.
daemon off;
master_process off;
worker_processes 1;
pid "{work}/nginx.pid";
error_log "{work}/error.log" warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path "{work}/client_body";
    proxy_temp_path "{work}/proxy";
    fastcgi_temp_path "{work}/fastcgi";
    uwsgi_temp_path "{work}/uwsgi";
    scgi_temp_path "{work}/scgi";

    upstream app_keepalive {{
        server {upstream};
        keepalive 16;
    }}

    server {{
        listen {plain};
        location / {{
            proxy_pass http://{upstream};
        }}
    }}

    server {{
        listen {keepalive};
        location / {{
            proxy_pass http://app_keepalive;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

/// Polls `check` every [`POLL`] until it returns `Ok`, or fails after `within` with what it
/// last said.
pub(super) fn wait_until<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                bail!("waited {within:?} for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Blocking HTTP calls for the set-up and the checks, each on a new connection.
pub(super) struct Http {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) client: reqwest::Client,
}

/// A whole answer.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: reqwest::header::HeaderMap,
    pub(super) body: Vec<u8>,
}

impl Answer {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Http {
    pub(super) fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .build()?;
        Ok(Self { runtime, client })
    }

    pub(super) fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer> {
        self.runtime.block_on(async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await?.to_vec();
            Ok(Answer {
                status,
                headers,
                body,
            })
        })
    }

    pub(super) fn get(&self, url: &str, host: Option<&str>) -> Result<Answer> {
        let mut request = self.client.get(url);
        if let Some(host) = host {
            request = request.header(reqwest::header::HOST, host);
        }
        self.send(request).with_context(|| format!("GET {url}"))
    }

    pub(super) fn post(&self, url: &str, token: &str, bundle: Vec<u8>) -> Result<Answer> {
        let request = self
            .client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/zstd")
            .timeout(Duration::from_secs(120))
            .body(bundle);
        self.send(request).with_context(|| format!("POST {url}"))
    }

    /// An admin API GET that must answer 200 with JSON.
    pub(super) fn call_json(&self, url: &str, token: &str) -> Result<Value> {
        let answer = self
            .send(self.client.get(url).bearer_auth(token))
            .with_context(|| format!("GET {url}"))?;
        ensure!(
            answer.status == 200,
            "GET {url} answered {}: {}",
            answer.status,
            answer.text()
        );
        Ok(serde_json::from_slice(&answer.body)?)
    }
}

/// `docker <args>`, which must succeed; its trimmed stdout.
pub(super) fn docker(args: &[&str]) -> Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .context("run the docker CLI")?;
    ensure!(
        output.status.success(),
        "`docker {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

pub(super) fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

pub(super) fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
