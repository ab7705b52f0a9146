//! Container runtimes: where service apps and jobs run (DESIGN.md §5).
//!
//! One small trait, [`ContainerRuntime`], with a Docker implementation ([`docker`], bollard)
//! for production; a plain-process one and the simulator's in-memory one come later. The
//! lifecycle policy (when to start, pause, stop) lives elsewhere as a pure state machine; a
//! runtime only carries out what it is told.
//!
//! Layout:
//! - [`image`]: builds the shared hardened `shoal-runtime` image from the host's files, with no
//!   registry.
//! - [`docker`]: [`ContainerRuntime`] on the Docker Engine API, with every container hardened.
//! - [`process`]: plain child processes, for machines without Docker (no isolation).

pub mod docker;
pub mod image;
pub mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use shoal_proxy::forward::Dial;

/// Labels every Shoal container carries, so a restarted node can adopt or remove them.
pub mod labels {
    /// `"true"` on every container Shoal made.
    pub const MANAGED: &str = "io.shoal.managed";
    /// The app's name.
    pub const APP: &str = "io.shoal.app";
    /// The release version.
    pub const RELEASE: &str = "io.shoal.release";
    /// The release's bundle digest.
    pub const DIGEST: &str = "io.shoal.digest";
    /// The node that owns the container.
    pub const NODE: &str = "io.shoal.node";
    /// `service` or `job`.
    pub const ROLE: &str = "io.shoal.role";
}

/// Everything needed to create one instance of a release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// The app's name.
    pub app: String,
    /// The release version.
    pub release: u64,
    /// The release's bundle digest.
    pub digest: String,
    /// The node creating it (a label, and part of the container name).
    pub node: String,
    /// The unpacked release, mounted read-only at `/app` (the working directory).
    pub release_dir: PathBuf,
    /// argv; resolved inside the image (e.g. `node server.js`).
    pub command: Vec<String>,
    /// The port the app listens on inside the container (service apps); `PORT` is set to it.
    pub port: Option<u16>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Memory limit in bytes (swap equals it: no swap).
    pub memory_bytes: u64,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Process count limit.
    pub pids: u32,
    /// Size cap of the tmpfs at `/tmp`.
    pub tmp_bytes: u64,
}

/// What a container is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Created, never started (pre-created at deploy).
    Created,
    /// Running.
    Running,
    /// Frozen (cgroup freezer); wakes in milliseconds.
    Paused,
    /// Exited. `oom_killed` when the memory limit killed it.
    Exited {
        /// Exit code, if known.
        exit_code: Option<i64>,
        /// Killed by the kernel's OOM killer.
        oom_killed: bool,
    },
    /// Anything else Docker reports (restarting, removing, dead).
    Other(String),
}

/// One container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The runtime's id for it.
    pub id: String,
    /// App label.
    pub app: String,
    /// Release label.
    pub release: u64,
    /// Digest label.
    pub digest: String,
    /// Node label.
    pub node: String,
    /// Current state.
    pub state: InstanceState,
    /// Where the app's port is reachable from the node while running.
    pub addr: Option<SocketAddr>,
}

/// How a run-to-completion job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// Exit code (`None` when it was killed for running out of time).
    pub exit_code: Option<i64>,
    /// Whether the time limit killed it.
    pub timed_out: bool,
    /// Whether the memory limit killed it.
    pub oom_killed: bool,
    /// Wall time from start to exit.
    pub duration: Duration,
    /// The last lines of its output (stdout and stderr interleaved), at most a few KiB.
    pub log_tail: String,
}

/// A runtime failure, with a sentence for the operator.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine cannot be reached.
    #[error("the container engine is unreachable: {0}")]
    Unavailable(String),
    /// No such container.
    #[error("no container `{0}`")]
    NotFound(String),
    /// The runtime image is missing or cannot be built.
    #[error("the shoal-runtime image is unavailable: {0}")]
    Image(String),
    /// Anything else the engine refused.
    #[error("container engine error: {0}")]
    Engine(String),
}

/// Where apps run. Every method is safe to call again after a crash (adoption relies on it).
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates (does not start) an instance; returns its id.
    async fn create(&self, spec: &InstanceSpec) -> Result<String, RuntimeError>;
    /// Starts a created or exited instance; returns where its port is reachable.
    async fn start(&self, id: &str) -> Result<Option<SocketAddr>, RuntimeError>;
    /// Freezes a running instance.
    async fn pause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Thaws a paused instance.
    async fn unpause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops an instance: SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes an instance (stopping it first if needed).
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// The instance's current state and address.
    async fn inspect(&self, id: &str) -> Result<InstanceInfo, RuntimeError>;
    /// Every instance labelled as belonging to `node`.
    async fn list(&self, node: &str) -> Result<Vec<InstanceInfo>, RuntimeError>;
    /// The instance's output (stdout and stderr), the last `tail` lines, then new lines if `follow`.
    async fn logs(
        &self,
        id: &str,
        tail: usize,
        follow: bool,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, RuntimeError>;
    /// Runs `spec` to completion with a time limit, removing the container afterwards.
    async fn run_to_completion(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<JobOutcome, RuntimeError>;
    /// How connections reach this runtime's instances when TCP does not (the simulator's
    /// instances answer in memory); `None`, the default: they listen on real sockets.
    fn dialer(&self) -> Option<Arc<dyn Dial>> {
        None
    }
}

/// The last `limit` bytes of `output` as text, from the first full line when it was cut.
pub(crate) fn tail_text(output: &[u8], limit: usize) -> String {
    if output.len() <= limit {
        return String::from_utf8_lossy(output).into_owned();
    }
    let mut tail = &output[output.len() - limit..];
    if let Some(newline) = tail.iter().position(|&byte| byte == b'\n') {
        if newline + 1 < tail.len() {
            tail = &tail[newline + 1..];
        }
    }
    String::from_utf8_lossy(tail).into_owned()
}
