//! Bugs planted on purpose, so that the simulator (`shoal-sim --bug NAME`) can show that its
//! checkers catch them (DESIGN §8). The code paths exist only with the `planted-bugs` cargo
//! feature, and even then stay off until a simulator run switches one on: a build that
//! compiles them in still behaves correctly.

/// A bug the simulator can plant (`shoal-sim --bug NAME`; the names are clap's kebab-case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Bug {
    /// The cron duty dispatches a due tick without committing its `Fire` through raft.
    CronFireWithoutCommit,
    /// The cron duty dispatches runs to workers gossip reports dead.
    DispatchIgnoresLiveness,
    /// An ingress sends a cold app's request to a worker of its own random choice, not the one
    /// the cold rule picks from every node's view (so simultaneous requests start several).
    ColdSpawnAnywhere,
    /// The raft log (entries, vote, committed id) is written without ever being synced to
    /// disk, and reports its writes durable all the same.
    RaftLogNeverSyncs,
}

#[cfg(feature = "planted-bugs")]
static PLANTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Bug {
    /// Its name on the command line.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }

    fn bit(self) -> u32 {
        match self {
            Self::CronFireWithoutCommit => 1,
            Self::DispatchIgnoresLiveness => 2,
            Self::ColdSpawnAnywhere => 4,
            Self::RaftLogNeverSyncs => 8,
        }
    }
}

/// Switches `bug` on for the whole process (only with the `planted-bugs` feature).
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Bug) {
    PLANTED.fetch_or(bug.bit(), std::sync::atomic::Ordering::SeqCst);
}

/// Whether `bug` was planted.
pub fn enabled(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.load(std::sync::atomic::Ordering::Relaxed) & bug.bit() != 0
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug.bit();
        false
    }
}
