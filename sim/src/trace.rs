//! What a whole-cluster run records: faults (the ground truth the harness knows), workload
//! outcomes, and what each live node reports after every step. Checkers read nothing else.
//!
//! Every value is simulated time or a seeded id, and every collection is ordered, so the
//! `Debug` text of a trace is the same for the same seed (its SHA-256 is the trace hash).

use std::collections::{BTreeMap, BTreeSet};

/// A node's raft id (drawn from the seeded RNG; stable across restarts).
pub type NodeId = u64;

/// One committed run of a job, as a node's app table holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FireRecord {
    /// The job (app) name.
    pub job: String,
    /// The run's id.
    pub run_id: String,
    /// The tick, Unix seconds.
    pub tick: i64,
    /// 0 for the first attempt.
    pub attempt: u32,
    /// `shoal run`, not a scheduled tick.
    pub manual: bool,
    /// The term of the fence that fired it.
    pub fence_term: u64,
    /// It ended failed, timed out or lost (a retry of it is allowed).
    pub failed: bool,
}

/// One thing that happened, at the end of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    // ---- faults: ground truth ----
    /// The node's process died (its tasks and unsynced data are gone).
    Crash {
        /// The node.
        node: NodeId,
    },
    /// The node started again on its data.
    Restart {
        /// The node.
        node: NodeId,
    },
    /// From now on, everything `from` sends to `to` is lost (one way).
    Partition {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
    },
    /// Every partition is removed.
    Heal,
    /// The node's network and disk are slow by `extra_ms` from now on (0: back to normal).
    Slow {
        /// The node.
        node: NodeId,
        /// Extra latency per message and per raft log flush.
        extra_ms: u64,
    },

    // ---- observations, one per live node per step, only when they changed ----
    /// The node's raft metrics (voters only).
    Raft {
        /// The node.
        node: NodeId,
        /// Current term.
        term: u64,
        /// The leader it knows.
        leader: Option<NodeId>,
        /// Whether it is the leader.
        is_leader: bool,
        /// Index of its last log entry.
        last_log: u64,
        /// The highest index it knows committed. openraft 0.9's metrics carry no commit
        /// index, so this is its applied index (it applies only committed entries).
        committed: u64,
        /// Applied index of its state machine.
        applied: u64,
    },
    /// The node's app table (every node holds one).
    Table {
        /// The node.
        node: NodeId,
        /// The table's applied index.
        applied: u64,
        /// Current release version of each app.
        apps: BTreeMap<String, u64>,
        /// Every run the table holds.
        fires: BTreeSet<FireRecord>,
    },
    /// The members the node's gossip sees live (itself included).
    Members {
        /// The node.
        node: NodeId,
        /// Live members.
        live: BTreeSet<NodeId>,
    },

    // ---- workload outcomes ----
    /// A deploy was acknowledged to its client: committed at `index`.
    DeployAcked {
        /// The app.
        app: String,
        /// The release version the deploy made.
        version: u64,
        /// The log index it committed at.
        index: u64,
    },
    /// A client asked for an app's delete (its ack may never come, though it commits).
    DeleteRequested {
        /// The app.
        app: String,
    },
    /// A delete was acknowledged to its client: committed at `index`.
    DeleteAcked {
        /// The app.
        app: String,
        /// The log index it committed at.
        index: u64,
    },
    /// A node opened a stream to send a peer work (`what`: "job run" or "request").
    Routed {
        /// The sender.
        from: NodeId,
        /// The peer.
        to: NodeId,
        /// What it sent.
        what: String,
    },
    /// A worker accepted a run an orchestrator sent it.
    /// A node's runtime started an instance of a service app (a cold start or a scale-out).
    InstanceStarted {
        node: NodeId,
        app: String,
        instance: String,
    },
    /// The workload sent request `id` for `app` to node `ingress`.
    RequestSent {
        id: u64,
        ingress: NodeId,
        app: String,
    },
    /// Request `id` was answered (`instance`: the one that served it, if any did).
    Answered {
        id: u64,
        ingress: NodeId,
        status: u16,
        instance: Option<String>,
    },
    JobAccepted {
        /// The worker.
        worker: NodeId,
        /// The node that sent it.
        from: NodeId,
        /// The job.
        job: String,
        /// The run.
        run_id: String,
        /// The sender's fence term.
        fence_term: u64,
        /// The sender's fence index.
        fence_index: u64,
    },
}

/// An invariant broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker's name.
    pub checker: &'static str,
    /// Simulated time, ms.
    pub at_ms: u64,
    /// What was seen.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {} ms: {}", self.checker, self.at_ms, self.message)
    }
}
