//! One node of a [`super::TestCluster`]: its flags, its process, its log.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::options::Runtime;
use super::{http, read_trimmed, POLL};
use crate::{free_port, free_udp_port, shoal_bin};

/// The drain timeout every node runs with, so a SIGTERM returns quickly.
const DRAIN_TIMEOUT: &str = "5s";

/// What a node is in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Started with `shoal seed`: the first voter.
    Seed,
    /// Joined with `--voter`.
    Voter,
    /// Joined without `--voter`.
    Worker,
}

impl Role {
    /// Whether the node is a raft voter.
    pub fn is_voter(self) -> bool {
        matches!(self, Role::Seed | Role::Voter)
    }
}

/// One node of a [`TestCluster`]: its addresses, its command line, its process if running.
pub struct ClusterNode {
    /// The node's name (`--name`), unique in the test process.
    pub name: String,
    /// Seed, voter or worker.
    pub role: Role,
    /// The node's data dir.
    pub data_dir: PathBuf,
    /// Ingress address (`--http`).
    pub http: SocketAddr,
    /// Admin API address (`--api`).
    pub api: SocketAddr,
    /// Gossip address (`--gossip`, UDP).
    pub gossip: SocketAddr,
    /// QUIC address (`--quic`, UDP).
    pub quic: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl ClusterNode {
    /// A node that has not started yet; [`ClusterNode::spawn`] starts it with `args`.
    pub(super) fn new(flags: NodeFlags, role: Role, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name: flags.name,
            role,
            data_dir: flags.data_dir,
            http: flags.http,
            api: flags.api,
            gossip: flags.gossip,
            quic: flags.quic,
            args,
            log,
            child: None,
            starts: 0,
        }
    }

    /// Whether a process was started and not yet reaped (without asking whether it runs).
    pub(super) fn has_process(&self) -> bool {
        self.child.is_some()
    }

    /// The arguments `shoal` runs with (the same at every start).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// `shoal <args>`, for messages.
    pub fn command_line(&self) -> String {
        format!("shoal {}", self.args.join(" "))
    }

    /// Whether the process is running (a process that exited is reaped and forgotten).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// The process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://<ingress><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `http://<admin API><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// Everything every start of the node printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the log is.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The admin token file's contents, trimmed, if the node wrote one.
    pub fn admin_token_file(&self) -> Option<String> {
        read_trimmed(&self.data_dir.join("tokens/admin"))
    }

    /// Starts the process with the node's command line, its output appended to the log.
    pub(super) fn spawn(&mut self) -> Result<()> {
        use std::io::Write;
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        writeln!(
            log,
            "===== start #{} of {}: {}",
            self.starts,
            self.name,
            self.command_line()
        )?;
        let child = Command::new(shoal_bin())
            .args(&self.args)
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env_remove("SHOAL_DATA_DIR")
            .env_remove("SHOAL_API")
            .env_remove("SHOAL_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.command_line()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the node answers `/healthz` with 200; fails at once if the process exits.
    pub(super) fn wait_healthy(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!("{} exited with {status} before it was healthy", self.name);
                }
            } else {
                bail!("{} is not running", self.name);
            }
            if let Ok(reply) = http::get(&self.url("/healthz"), Duration::from_secs(2)) {
                if reply.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("{} did not answer /healthz within {within:?}", self.name);
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL, and reap the process. Nothing happens if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM without waiting.
    pub(super) fn signal_terminate(&self) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Waits for the process to exit after a SIGTERM; SIGKILLs it and fails after `within`.
    pub(super) fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        let mut child = self.child.take().context("not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} ignored SIGTERM for {within:?} and was killed",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The node flags of one node: `--data-dir`, the four addresses, `--advertise 127.0.0.1`,
/// `--name`, `--runtime` (`process` unless told) and a short drain timeout.
#[derive(Clone, Debug)]
pub struct NodeFlags {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--http`.
    pub http: SocketAddr,
    /// `--api`.
    pub api: SocketAddr,
    /// `--gossip`.
    pub gossip: SocketAddr,
    /// `--quic`.
    pub quic: SocketAddr,
    /// `--runtime`.
    pub runtime: Runtime,
}

impl NodeFlags {
    /// Fresh ports on 127.0.0.1, `<dir>/<name>` as the data dir and `--runtime process`.
    pub fn fresh(dir: &Path, name: &str) -> Self {
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            name: name.to_owned(),
            data_dir: dir.join(name),
            http: loopback(fresh_tcp_port()),
            api: loopback(fresh_tcp_port()),
            gossip: loopback(free_udp_port()),
            quic: loopback(free_udp_port()),
            runtime: Runtime::Process,
        }
    }

    /// These flags with `--runtime runtime`.
    pub fn with_runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// The flags as `shoal` arguments.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["--data-dir".into(), self.data_dir.display().to_string()];
        for (flag, address) in [
            ("--http", self.http),
            ("--api", self.api),
            ("--gossip", self.gossip),
            ("--quic", self.quic),
        ] {
            args.push(flag.into());
            args.push(address.to_string());
        }
        args.extend(
            [
                "--advertise",
                "127.0.0.1",
                "--name",
                &self.name,
                "--runtime",
                self.runtime.flag_value(),
                "--drain-timeout",
                DRAIN_TIMEOUT,
            ]
            .map(str::to_owned),
        );
        args
    }
}

/// A free TCP port this process has not handed to a cluster node before (restarts reuse a
/// node's ports, so no two nodes may ever share one).
fn fresh_tcp_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = free_port();
        if handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}
