//! [`TestCluster`]: a Shoal cluster of real processes on loopback: one `shoal seed` node and
//! `shoal join` nodes (voters and workers), each with its own data dir, free ports (gossip and
//! QUIC on UDP) and a log file that every failure prints, all with `--runtime process` unless
//! [`ClusterOptions`] say otherwise (Docker, and extra flags per node such as `--no-worker`).
//!
//! Layout: this file, the cluster and its waits; [`options`], what a cluster is started with;
//! [`node`], one node's flags and process; [`http`], blocking HTTP calls; [`wire`], what is
//! read and written (`/v1/nodes`, Prometheus text, join tokens, static bundles); [`lock`], one
//! cluster at a time; [`leftovers`], the app instances killed nodes leave, removed at the end.
//!
//! Tests kill (SIGKILL), stop (SIGTERM) and restart nodes with the same command line, deploy
//! through any node's admin API, and wait, always with a bound, until every node agrees. Every
//! wait that runs out returns an error holding what it last saw and the tail of every node's
//! log; the cluster's directory is then kept (its path is printed) so the whole logs can be read.
//!
//! Cluster tests take a [`ClusterLock`] first, so that only one cluster runs at a time, even
//! across test binaries.
//!
//! Everything here blocks: call it from plain `#[test]` functions or threads, never from inside
//! an async runtime (the HTTP calls run on a runtime of their own, [`http`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{shoal_bin, unique_node_name};

pub mod http;
pub mod leftovers;
pub mod lock;
pub mod node;
pub mod options;
pub mod wire;

pub use http::Reply;
pub use lock::ClusterLock;
pub use node::{ClusterNode, NodeFlags, Role};
pub use options::{ClusterOptions, ExtraFlags, Runtime};
pub use wire::{metric_sum, static_bundle, tamper_join_token, Member, NodesView, SmallRng};

/// How long a started process has to answer `/healthz` (a debug build on a busy 2-core machine).
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(60);
/// How long a cluster has to form: every node live and ready, one leader all agree on.
pub const FORMED_WITHIN: Duration = Duration::from_secs(90);
/// How long `shoal seed` has to write its token files once it answers `/healthz`.
const TOKENS_WITHIN: Duration = Duration::from_secs(15);
/// How long a SIGTERM may take before the node is killed (its drain timeout is shorter).
const TERMINATE_WITHIN: Duration = Duration::from_secs(30);
/// Timeout of one admin API call made while waiting.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two looks while waiting.
pub const POLL: Duration = Duration::from_millis(100);
/// Lines of each node's log a failure prints.
const LOG_TAIL_LINES: usize = 60;

/// A cluster of real `shoal` processes, all killed when it is dropped, with the app instances
/// they leave (processes, or Docker containers labelled with their names).
pub struct TestCluster {
    /// Every node, the seed first, then voters, then workers (in start order).
    pub nodes: Vec<ClusterNode>,
    /// The seed's admin token (every node takes it).
    pub admin_token: String,
    /// The join token the seed wrote.
    pub join_token: String,
    /// The runtime every node runs apps with.
    pub runtime: Runtime,
    extra_flags: ExtraFlags,
    dir: Option<tempfile::TempDir>,
    keep_dir: AtomicBool,
}

impl TestCluster {
    /// Starts a seed, `voters - 1` voters and `workers` workers, one after the other (each
    /// join waits until the seed lists the node before the next starts), then waits until the
    /// cluster is formed ([`TestCluster::wait_formed`]).
    pub fn start(voters: usize, workers: usize) -> Result<Self> {
        Self::start_with_seed_flags(voters, workers, &[])
    }

    /// [`TestCluster::start`], with `seed_flags` added to `shoal seed`'s command line (e.g.
    /// `["--join-token-ttl", "1s"]`).
    pub fn start_with_seed_flags(
        voters: usize,
        workers: usize,
        seed_flags: &[&str],
    ) -> Result<Self> {
        Self::start_with(ClusterOptions::new(voters, workers).seed_flags(seed_flags))
    }

    /// Starts the cluster `options` describe, as [`TestCluster::start`] does: the seed, then
    /// the voters, then the workers (node `index` gets `(options.extra_flags)(index, role)`),
    /// then waits until it is formed. A test on [`Runtime::Docker`] calls
    /// [`crate::docker_or_skip`] first.
    pub fn start_with(options: ClusterOptions) -> Result<Self> {
        anyhow::ensure!(options.voters >= 1, "a cluster has at least its seed");
        shoal_bin();
        let dir = tempfile::Builder::new()
            .prefix("shoal-cluster-")
            .tempdir()
            .context("create the cluster's directory")?;
        let mut cluster = Self {
            nodes: Vec::new(),
            admin_token: String::new(),
            join_token: String::new(),
            runtime: options.runtime,
            extra_flags: options.extra_flags,
            dir: Some(dir),
            keep_dir: AtomicBool::new(false),
        };
        let prefix = unique_node_name();
        cluster.start_seed(&format!("{prefix}-v0"), &options.seed_flags)?;
        for index in 1..options.voters + options.workers {
            let (role, letter) = if index < options.voters {
                (Role::Voter, 'v')
            } else {
                (Role::Worker, 'w')
            };
            cluster.start_joiner(&format!("{prefix}-{letter}{index}"), role)?;
        }
        cluster.wait_formed(FORMED_WITHIN)?;
        Ok(cluster)
    }

    /// The directory holding every node's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as the cluster")
            .path()
    }

    /// The seed node.
    pub fn seed(&self) -> &ClusterNode {
        &self.nodes[0]
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// The indexes of the nodes whose process runs.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&index| self.nodes[index].is_running())
            .collect()
    }

    /// Node flags for a new node named `name`: fresh ports, its data dir under the cluster's,
    /// the cluster's runtime.
    pub fn node_flags(&self, name: &str) -> NodeFlags {
        NodeFlags::fresh(self.dir(), name).with_runtime(self.runtime)
    }

    fn start_seed(&mut self, name: &str, seed_flags: &[String]) -> Result<()> {
        let flags = self.node_flags(name);
        let mut args = vec!["seed".to_owned()];
        args.extend(flags.args());
        args.extend(seed_flags.iter().cloned());
        args.extend((self.extra_flags)(0, Role::Seed));
        self.launch(flags, Role::Seed, args)?;
        let seed = &self.nodes[0];
        let tokens = seed.data_dir.join("tokens");
        let (admin, join) = self.wait_for("the seed's token files", TOKENS_WITHIN, || {
            match (
                read_trimmed(&tokens.join("admin")),
                read_trimmed(&tokens.join("join")),
            ) {
                (Some(admin), Some(join)) => Ok((admin, join)),
                seen => Err(format!("tokens/admin and tokens/join: {seen:?}")),
            }
        })?;
        self.admin_token = admin;
        self.join_token = join;
        self.wait_ready(0, FORMED_WITHIN)
    }

    fn start_joiner(&mut self, name: &str, role: Role) -> Result<()> {
        let flags = self.node_flags(name);
        let mut args = vec![
            "join".to_owned(),
            "--seed".to_owned(),
            self.seed().quic.to_string(),
            "--token".to_owned(),
            self.join_token.clone(),
        ];
        if role == Role::Voter {
            args.push("--voter".to_owned());
        }
        args.extend(flags.args());
        args.extend((self.extra_flags)(self.nodes.len(), role));
        self.launch(flags, role, args)?;
        let name = name.to_owned();
        self.wait_for(
            &format!("the seed to list {name} live (voter: {})", role.is_voter()),
            FORMED_WITHIN,
            || {
                let view = self.nodes_view(0).map_err(|error| format!("{error:#}"))?;
                match view.member(&name) {
                    Some(member) if member.live && member.voter == role.is_voter() => Ok(()),
                    other => Err(format!("{name} is {other:?}")),
                }
            },
        )
    }

    fn launch(&mut self, flags: NodeFlags, role: Role, args: Vec<String>) -> Result<()> {
        let log = self.dir().join(format!("{}.log", flags.name));
        self.nodes.push(ClusterNode::new(flags, role, args, log));
        let index = self.nodes.len() - 1;
        self.restart(index)
    }

    /// Starts node `index` again with the same command line and waits until it answers
    /// `/healthz` (not until it is ready: see [`TestCluster::wait_formed`]).
    pub fn restart(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let started = node
            .spawn()
            .and_then(|()| node.wait_healthy(HEALTHY_WITHIN));
        started.map_err(|error| {
            self.failure(format!("starting {}: {error:#}", self.nodes[index].name))
        })
    }

    /// Starts every node that is not running, all at once, and waits until each is healthy.
    pub fn restart_stopped(&mut self) -> Result<()> {
        let stopped: Vec<usize> = (0..self.nodes.len())
            .filter(|&index| !self.nodes[index].is_running())
            .collect();
        for &index in &stopped {
            let spawned = self.nodes[index].spawn();
            spawned.map_err(|error| self.failure(format!("{error:#}")))?;
        }
        for &index in &stopped {
            let healthy = self.nodes[index].wait_healthy(HEALTHY_WITHIN);
            healthy.map_err(|error| self.failure(format!("{error:#}")))?;
        }
        Ok(())
    }

    /// SIGKILLs node `index`.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// SIGTERMs the nodes in `indexes` at once and waits for each to exit; returns their exit
    /// statuses in the same order.
    pub fn terminate(&mut self, indexes: &[usize]) -> Result<Vec<ExitStatus>> {
        for &index in indexes {
            let signalled = self.nodes[index].signal_terminate();
            signalled.map_err(|error| self.failure(format!("{error:#}")))?;
        }
        let mut statuses = Vec::new();
        for &index in indexes {
            let exited = self.nodes[index].wait_exit(TERMINATE_WITHIN);
            statuses.push(exited.map_err(|error| self.failure(format!("{error:#}")))?);
        }
        Ok(statuses)
    }

    /// `GET /v1/nodes` on node `index`.
    pub fn nodes_view(&self, index: usize) -> Result<NodesView> {
        let reply = self.api_get(index, "/v1/nodes")?;
        anyhow::ensure!(
            reply.status == 200,
            "GET /v1/nodes on {} answered {}: {}",
            self.nodes[index].name,
            reply.status,
            reply.text()
        );
        NodesView::parse(&reply.json()?)
    }

    /// Waits until the cluster is whole: every running node answers `/readyz` with 200 and its
    /// `/v1/nodes` lists exactly the running nodes as live, with their roles, and the same
    /// leader, a running voter that calls itself `leader`. Returns the seed's view (or the
    /// first running node's, when the seed is down).
    pub fn wait_formed(&mut self, within: Duration) -> Result<NodesView> {
        let running = self.running();
        self.wait_for("the cluster to form", within, || self.formed(&running))
    }

    fn formed(&self, running: &[usize]) -> Result<NodesView, String> {
        let running_names: BTreeSet<&str> = running
            .iter()
            .map(|&index| self.nodes[index].name.as_str())
            .collect();
        let mut leaders = BTreeSet::new();
        let mut first_view = None;
        for &index in running {
            let name = &self.nodes[index].name;
            let ready = http::get(&self.nodes[index].url("/readyz"), CALL_TIMEOUT)
                .map_err(|error| format!("{name} /readyz: {error:#}"))?;
            if ready.status != 200 {
                return Err(format!("{name} /readyz answered {}", ready.status));
            }
            let view = self
                .nodes_view(index)
                .map_err(|error| format!("{error:#}"))?;
            let live: BTreeSet<&str> = view.live_names().into_iter().collect();
            if live != running_names {
                return Err(format!("{name} sees {live:?} live, not {running_names:?}"));
            }
            for &other in running {
                let node = &self.nodes[other];
                let voter = view.member(&node.name).map(|member| member.voter);
                if voter != Some(node.role.is_voter()) {
                    return Err(format!("{name} sees {} with voter {voter:?}", node.name));
                }
            }
            let leader = view
                .leader_name()
                .ok_or_else(|| format!("{name} knows no leader"))?;
            leaders.insert(leader.to_owned());
            first_view.get_or_insert(view);
        }
        let view = first_view.ok_or("no node is running")?;
        let [leader] = leaders.iter().collect::<Vec<_>>()[..] else {
            return Err(format!("the nodes name different leaders: {leaders:?}"));
        };
        let index = self
            .index_of(leader)
            .ok_or(format!("unknown leader {leader}"))?;
        if !running.contains(&index) {
            return Err(format!("the leader {leader} is not running"));
        }
        let own = self
            .nodes_view(index)
            .map_err(|error| format!("{error:#}"))?;
        match own.member(leader) {
            Some(member) if member.raft == "leader" => Ok(view),
            other => Err(format!("{leader} says of itself {other:?}")),
        }
    }

    /// Waits until every running node names the same leader, a running node; returns its index.
    /// Right after a kill the survivors may still name the dead leader: this waits that out.
    pub fn leader(&mut self, within: Duration) -> Result<usize> {
        let running = self.running();
        self.wait_for("one leader all running nodes agree on", within, || {
            let mut leaders = BTreeSet::new();
            for &index in &running {
                let view = self
                    .nodes_view(index)
                    .map_err(|error| format!("{error:#}"))?;
                leaders.insert(view.leader_name().unwrap_or("(none)").to_owned());
            }
            match leaders.iter().collect::<Vec<_>>()[..] {
                [leader] => match self.index_of(leader) {
                    Some(index) if running.contains(&index) => Ok(index),
                    _ => Err(format!("the leader named is {leader}, not a running node")),
                },
                _ => Err(format!("the running nodes name {leaders:?}")),
            }
        })
    }

    /// Waits until node `index` answers `/readyz` with 200.
    pub fn wait_ready(&self, index: usize, within: Duration) -> Result<()> {
        let node = &self.nodes[index];
        self.wait_for(
            &format!("{} to be ready", node.name),
            within,
            || match http::get(&node.url("/readyz"), CALL_TIMEOUT) {
                Ok(reply) if reply.status == 200 => Ok(()),
                Ok(reply) => Err(format!("/readyz answered {}", reply.status)),
                Err(error) => Err(format!("{error:#}")),
            },
        )
    }

    /// A GET on node `index`'s admin API with the admin token.
    pub fn api_get(&self, index: usize, path: &str) -> Result<Reply> {
        let url = self.nodes[index].api_url(path);
        http::request(
            reqwest::Method::GET,
            &url,
            Some(&self.admin_token),
            None,
            CALL_TIMEOUT,
        )
    }

    /// A GET on node `index`'s ingress.
    pub fn ingress_get(&self, index: usize, path: &str) -> Result<Reply> {
        http::get(&self.nodes[index].url(path), CALL_TIMEOUT)
    }

    /// One deploy of a `tar.zst` bundle through node `index` (see [`deploy_bundle`]).
    pub fn deploy(&self, index: usize, bundle: &[u8], timeout: Duration) -> Result<Deployed> {
        deploy_bundle(self.nodes[index].api, &self.admin_token, bundle, timeout)
    }

    /// Deploys through node `index` again and again until one is acknowledged, or fails after
    /// `within`. Returns the acknowledgement, the time from the call to it, and the attempts.
    pub fn deploy_until_acknowledged(
        &self,
        index: usize,
        bundle: &[u8],
        within: Duration,
    ) -> Result<(Deployed, Duration, u32)> {
        let began = Instant::now();
        let mut attempts = 0;
        let deployed = self.wait_for(
            &format!(
                "a deploy through {} to be acknowledged",
                self.nodes[index].name
            ),
            within,
            || {
                attempts += 1;
                let left = within.saturating_sub(began.elapsed()).max(POLL);
                self.deploy(index, bundle, left.min(CALL_TIMEOUT))
                    .map_err(|error| format!("{error:#}"))
            },
        )?;
        Ok((deployed, began.elapsed(), attempts))
    }

    /// `GET /v1/apps` on node `index`: each app's current version and digest.
    pub fn apps_on(&self, index: usize) -> Result<BTreeMap<String, AppVersion>> {
        let reply = self.api_get(index, "/v1/apps")?;
        anyhow::ensure!(
            reply.status == 200,
            "GET /v1/apps answered {}",
            reply.status
        );
        let value = reply.json()?;
        let apps = value["apps"].as_array().context("no `apps` array")?;
        apps.iter()
            .map(|app| {
                let name = app["name"].as_str().context("an app without a name")?;
                Ok((name.to_owned(), AppVersion::from_json(app)?))
            })
            .collect()
    }

    /// `GET /v1/apps/NAME` on node `index`: the whole answer, or `None` on 404.
    pub fn app_on(&self, index: usize, name: &str) -> Result<Option<Value>> {
        let reply = self.api_get(index, &format!("/v1/apps/{name}"))?;
        match reply.status {
            200 => Ok(Some(reply.json()?)),
            404 => Ok(None),
            status => bail!("GET /v1/apps/{name} answered {status}: {}", reply.text()),
        }
    }

    /// Waits until every running node's `/v1/apps` holds each `(app, version)` exactly.
    pub fn wait_apps_everywhere(
        &mut self,
        expected: &BTreeMap<String, AppVersion>,
        within: Duration,
    ) -> Result<()> {
        let running = self.running();
        let what = format!("{} apps on every running node", expected.len());
        self.wait_for(&what, within, || {
            for &index in &running {
                let apps = self.apps_on(index).map_err(|error| format!("{error:#}"))?;
                let wrong: Vec<String> = expected
                    .iter()
                    .filter(|(name, version)| apps.get(*name) != Some(version))
                    .take(5)
                    .map(|(name, version)| {
                        format!("{name}: want {version:?}, see {:?}", apps.get(name))
                    })
                    .collect();
                if !wrong.is_empty() {
                    return Err(format!("{}: {}", self.nodes[index].name, wrong.join("; ")));
                }
            }
            Ok(())
        })
    }

    /// Waits until every running node's ingress answers `GET path` with 200 and a body that
    /// contains `needle`.
    pub fn wait_served_everywhere(
        &mut self,
        path: &str,
        needle: &[u8],
        within: Duration,
    ) -> Result<()> {
        let running = self.running();
        self.wait_for(&format!("every node to serve {path}"), within, || {
            for &index in &running {
                let name = &self.nodes[index].name;
                let reply = self
                    .ingress_get(index, path)
                    .map_err(|error| format!("{name}: {error:#}"))?;
                if reply.status != 200 || !contains(&reply.body, needle) {
                    return Err(format!(
                        "{name} answered {}: {}",
                        reply.status,
                        reply.text()
                    ));
                }
            }
            Ok(())
        })
    }

    /// Runs the real `shoal` CLI against node `index` with the admin token.
    pub fn cli(&self, index: usize, args: &[&str]) -> Output {
        Command::new(shoal_bin())
            .args(args)
            .env("SHOAL_API", self.nodes[index].api.to_string())
            .env("SHOAL_TOKEN", &self.admin_token)
            .env_remove("SHOAL_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run the shoal CLI")
    }

    /// Runs `shoal <args>` (a command expected to exit by itself, such as a refused `shoal
    /// join`), its output kept in `<dir>/<label>.out` and `.err`. Kills it and fails after
    /// `within`; otherwise returns its exit status, stdout and stderr.
    pub fn run_to_exit(
        &self,
        label: &str,
        args: &[String],
        within: Duration,
    ) -> Result<(ExitStatus, String, String)> {
        let stdout_path = self.dir().join(format!("{label}.out"));
        let stderr_path = self.dir().join(format!("{label}.err"));
        let mut child = Command::new(shoal_bin())
            .args(args)
            .env_remove("SHOAL_DATA_DIR")
            .env_remove("SHOAL_API")
            .env_remove("SHOAL_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .context("spawn shoal")?;
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(self.failure(format!(
                    "`shoal {}` still ran after {within:?}; its stderr:\n{stderr}",
                    args.join(" ")
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        Ok((status, read(&stdout_path), read(&stderr_path)))
    }

    /// The sum of a metric's samples (those with `label`, if given) on node `index`'s
    /// `/metrics`; 0 when it has none yet.
    pub fn metric(&self, index: usize, name: &str, label: Option<(&str, &str)>) -> Result<f64> {
        let reply = self.api_get(index, "/metrics")?;
        anyhow::ensure!(
            reply.status == 200,
            "GET /metrics answered {}",
            reply.status
        );
        Ok(metric_sum(&reply.text(), name, label))
    }

    /// Polls `check` every [`POLL`] until it returns `Ok`, or fails after `within` with what
    /// it last said and every node's log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        loop {
            match check() {
                Ok(value) => return Ok(value),
                Err(last) if Instant::now() >= deadline => {
                    return Err(
                        self.failure(format!("waited {within:?} for {what}; last seen: {last}"))
                    )
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// `Ok` if `condition` holds, else [`TestCluster::failure`] with `what`.
    pub fn check(&self, condition: bool, what: impl Display) -> Result<()> {
        if condition {
            Ok(())
        } else {
            Err(self.failure(what))
        }
    }

    /// An error that says `what` went wrong and holds the tail of every node's log; the
    /// cluster's directory is kept so the whole logs can be read.
    pub fn failure(&self, what: impl Display) -> anyhow::Error {
        self.keep_dir.store(true, Ordering::Relaxed);
        let mut text = format!("{what}\n");
        for node in &self.nodes {
            let log = node.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            text.push_str(&format!(
                "\n----- {} ({:?}, {}), last {} lines of {}:\n{}\n",
                node.name,
                node.role,
                if node.has_process() {
                    "started"
                } else {
                    "stopped"
                },
                tail.len(),
                node.log_path().display(),
                tail.join("\n")
            ));
        }
        anyhow!(text)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if let Some(dir) = &self.dir {
            let names: Vec<&str> = self.nodes.iter().map(|node| node.name.as_str()).collect();
            leftovers::remove_leftovers(self.runtime, dir.path(), &names);
        }
        if self.keep_dir.load(Ordering::Relaxed) || std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("cluster logs and data dirs kept in {}", kept.display());
            }
        }
    }
}

/// An app's current release as `/v1/apps` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppVersion {
    /// The release version.
    pub version: u64,
    /// The bundle's sha256.
    pub digest: String,
}

impl AppVersion {
    fn from_json(value: &Value) -> Result<Self> {
        Ok(Self {
            version: value["version"].as_u64().context("no `version`")?,
            digest: value["digest"].as_str().context("no `digest`")?.to_owned(),
        })
    }
}

/// An acknowledged deploy: what `POST /v1/apps` answered with a 2xx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    /// The app.
    pub app: String,
    /// The release it made current.
    pub release: AppVersion,
    /// The HTTP status (201 for a new release, 200 for unchanged content).
    pub status: u16,
}

/// `POST /v1/apps` with a `tar.zst` bundle to the admin API at `api`. Anything but a 2xx with
/// the app, version and digest is an error.
pub fn deploy_bundle(
    api: SocketAddr,
    token: &str,
    bundle: &[u8],
    timeout: Duration,
) -> Result<Deployed> {
    let reply = http::request(
        reqwest::Method::POST,
        &format!("http://{api}/v1/apps"),
        Some(token),
        Some(bundle.to_vec()),
        timeout,
    )?;
    anyhow::ensure!(
        (200..300).contains(&reply.status),
        "deploy through {api} answered {}: {}",
        reply.status,
        reply.text().trim()
    );
    let value = reply.json()?;
    Ok(Deployed {
        app: value["app"].as_str().context("no `app`")?.to_owned(),
        release: AppVersion::from_json(&value)?,
        status: reply.status,
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}
