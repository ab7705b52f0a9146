//! How a [`super::TestCluster`] is started: how many voters and workers, the container
//! runtime every node runs apps with, and flags added to one node's command line or another's.

use super::node::Role;

/// The container runtime a node runs service apps and jobs with (`--runtime`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// `--runtime process`: plain child processes of the node. Needs no Docker, isolates
    /// nothing; what a SIGKILLed node leaves running is killed when the cluster is dropped.
    #[default]
    Process,
    /// `--runtime docker`: real containers. A test that uses it calls
    /// [`crate::docker_or_skip`] first; the containers labelled with the cluster's node names
    /// are removed when the cluster is dropped.
    Docker,
}

impl Runtime {
    /// The value of `--runtime`.
    pub fn flag_value(self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Docker => "docker",
        }
    }
}

/// Flags added to one node's command line, chosen by its start index (0 is the seed, then the
/// voters, then the workers) and its role.
pub type ExtraFlags = fn(usize, Role) -> Vec<String>;

/// What [`super::TestCluster::start_with`] starts.
///
/// ```no_run
/// use shoal_tests::cluster::{ClusterOptions, Role, Runtime, TestCluster};
///
/// // Voters that only route and vote; the two workers run every app instance, in Docker.
/// let options = ClusterOptions::new(3, 2)
///     .runtime(Runtime::Docker)
///     .extra_flags(|_, role| match role {
///         Role::Seed | Role::Voter => vec!["--no-worker".to_owned()],
///         Role::Worker => Vec::new(),
///     });
/// let cluster = TestCluster::start_with(options)?;
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Voters, the seed included (at least 1).
    pub voters: usize,
    /// Nodes joined without `--voter`.
    pub workers: usize,
    /// Added to `shoal seed`'s command line only (e.g. `--join-token-ttl 1s`).
    pub seed_flags: Vec<String>,
    /// The runtime of every node (`process` unless told).
    pub runtime: Runtime,
    /// Added to each node's command line, the seed's included, after every other flag.
    pub extra_flags: ExtraFlags,
}

impl ClusterOptions {
    /// `voters` voters (the seed among them) and `workers` workers, `--runtime process`, no
    /// extra flags.
    pub fn new(voters: usize, workers: usize) -> Self {
        Self {
            voters,
            workers,
            seed_flags: Vec::new(),
            runtime: Runtime::Process,
            extra_flags: no_extra_flags,
        }
    }

    /// With `seed_flags` added to `shoal seed`'s command line.
    pub fn seed_flags(mut self, seed_flags: &[&str]) -> Self {
        self.seed_flags = seed_flags.iter().map(|flag| (*flag).to_owned()).collect();
        self
    }

    /// With every node on `runtime`.
    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// With `extra_flags(index, role)` added to each node's command line.
    pub fn extra_flags(mut self, extra_flags: ExtraFlags) -> Self {
        self.extra_flags = extra_flags;
        self
    }
}

/// No extra flag for any node.
pub fn no_extra_flags(_index: usize, _role: Role) -> Vec<String> {
    Vec::new()
}
