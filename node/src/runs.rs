//! A cron job's run records, part of the replicated app table (DESIGN §7).
//!
//! The state machine is the referee that makes a tick fire once: a scheduled `Fire` for a
//! tick at or before the job's last fired tick is refused, whoever proposes it; and a run
//! starts only through `RunStarted`, which only a pending run accepts, so of two workers that
//! were both handed a run (a new leader re-dispatching what an old one already sent) only
//! the first to commit starts the process. Workers commit `RunStarted` before they start it.

use serde::{Deserialize, Serialize};

pub use crate::cluster::orchestrator::Fence;

/// A schedule tick: Unix seconds (UTC).
pub type Tick = i64;

/// Run records kept per job; older ones are dropped.
pub const RUN_HISTORY: usize = 100;

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Fired, not started by any worker yet.
    Pending,
    /// A worker started it.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, or could not start.
    Failed,
    /// Killed at the job's `timeout`.
    TimedOut,
    /// Its worker died or the run vanished.
    Lost,
    /// Not run: the tick came while another run was active (`overlap = "forbid"`).
    Skipped,
    /// Stopped for a newer run (`overlap = "replace"`).
    Replaced,
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, RunState::Pending | RunState::Running)
    }
}

/// One run of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `<tick>` for a scheduled run, `<tick>.<attempt>` for a retry, `m<fired_at_ms>` for a
    /// manual one.
    pub run_id: String,
    /// The schedule tick (or the request time of a manual run).
    pub tick: Tick,
    /// 0 for the first attempt.
    pub attempt: u32,
    /// Started with `shoal run`.
    pub manual: bool,
    /// The fence of the orchestrator that fired it (zero for a manual run fired through the API).
    pub fence: Fence,
    /// Where it is.
    pub state: RunState,
    /// The worker that started it.
    pub worker: Option<u64>,
    /// The release it runs.
    pub release: u64,
    /// When it was fired, started and finished (Unix ms).
    pub fired_at_ms: u64,
    /// See `fired_at_ms`.
    pub started_at_ms: Option<u64>,
    /// See `fired_at_ms`.
    pub finished_at_ms: Option<u64>,
    /// The process's exit code.
    pub exit_code: Option<i32>,
    /// The end of its output.
    pub log_tail: String,
    /// Why it was skipped, lost or failed to start.
    pub reason: Option<String>,
}

/// A job's runs, oldest first, and the last tick fired by the schedule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobRuns {
    /// The latest scheduled tick fired (or skipped): no scheduled tick at or before it fires.
    pub last_tick: Option<Tick>,
    /// Runs, oldest first, at most [`RUN_HISTORY`].
    pub runs: Vec<Run>,
}

/// A fire request, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fire {
    /// The tick.
    pub tick: Tick,
    /// 0 for the first attempt; a retry repeats the tick with a higher attempt.
    pub attempt: u32,
    /// `shoal run`: not bound to the schedule's ticks.
    pub manual: bool,
    /// The firing orchestrator's fence.
    pub fence: Fence,
    /// The release to run.
    pub release: u64,
    /// When (Unix ms), stamped by the proposer.
    pub at_ms: u64,
    /// Recorded as skipped with this reason instead of run.
    pub skip: Option<String>,
}

/// How a run ended, as a worker (or the orchestrator, for a lost run) reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnd {
    /// The final state.
    pub state: RunState,
    /// The exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The end of its output.
    pub log_tail: String,
    /// Why, when it did not run to an exit.
    pub reason: Option<String>,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// Why a run command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RunRefusal {
    /// A scheduled tick at or before the last one fired.
    #[error("tick {tick} is not after the last fired tick {last}")]
    AlreadyFired {
        /// The tick asked for.
        tick: Tick,
        /// The last fired.
        last: Tick,
    },
    /// A retry or manual run whose id exists.
    #[error("run {0} exists")]
    Exists(String),
    /// No such run.
    #[error("no run {0}")]
    NoSuchRun(String),
    /// The run is not pending (it started elsewhere or ended).
    #[error("run {run_id} is {state:?}, not pending")]
    NotPending {
        /// The run.
        run_id: String,
        /// Its state.
        state: RunState,
    },
    /// The run has ended already.
    #[error("run {0} has ended")]
    Ended(String),
    /// The app is not a cron job.
    #[error("app {0} is not a cron job")]
    NotAJob(String),
}

impl JobRuns {
    /// The id a fire gets.
    pub fn run_id(fire: &Fire) -> String {
        match (fire.manual, fire.attempt) {
            (true, _) => format!("m{}", fire.at_ms),
            (false, 0) => fire.tick.to_string(),
            (false, attempt) => format!("{}.{attempt}", fire.tick),
        }
    }

    /// Records a fire. A first scheduled attempt must be after the last fired tick.
    pub fn fire(&mut self, fire: &Fire) -> Result<Run, RunRefusal> {
        let run_id = Self::run_id(fire);
        if !fire.manual && fire.attempt == 0 {
            if let Some(last) = self.last_tick.filter(|last| fire.tick <= *last) {
                return Err(RunRefusal::AlreadyFired {
                    tick: fire.tick,
                    last,
                });
            }
            self.last_tick = Some(fire.tick);
        }
        if self.get(&run_id).is_some() {
            return Err(RunRefusal::Exists(run_id));
        }
        let run = Run {
            run_id,
            tick: fire.tick,
            attempt: fire.attempt,
            manual: fire.manual,
            fence: fire.fence,
            state: if fire.skip.is_some() {
                RunState::Skipped
            } else {
                RunState::Pending
            },
            worker: None,
            release: fire.release,
            fired_at_ms: fire.at_ms,
            started_at_ms: None,
            finished_at_ms: fire.skip.as_ref().map(|_| fire.at_ms),
            exit_code: None,
            log_tail: String::new(),
            reason: fire.skip.clone(),
        };
        self.runs.push(run.clone());
        if self.runs.len() > RUN_HISTORY {
            let excess = self.runs.len() - RUN_HISTORY;
            self.runs.drain(..excess);
        }
        Ok(run)
    }

    /// A worker starts a pending run: the first to commit wins.
    pub fn start(&mut self, run_id: &str, worker: u64, at_ms: u64) -> Result<(), RunRefusal> {
        let run = self
            .get_mut(run_id)
            .ok_or_else(|| RunRefusal::NoSuchRun(run_id.to_owned()))?;
        if run.state != RunState::Pending {
            return Err(RunRefusal::NotPending {
                run_id: run_id.to_owned(),
                state: run.state,
            });
        }
        run.state = RunState::Running;
        run.worker = Some(worker);
        run.started_at_ms = Some(at_ms);
        Ok(())
    }

    /// A run ends (pending ones too: lost before any worker started them).
    pub fn end(&mut self, run_id: &str, end: &RunEnd) -> Result<(), RunRefusal> {
        let run = self
            .get_mut(run_id)
            .ok_or_else(|| RunRefusal::NoSuchRun(run_id.to_owned()))?;
        if run.state.is_final() {
            return Err(RunRefusal::Ended(run_id.to_owned()));
        }
        run.state = end.state;
        run.exit_code = end.exit_code;
        run.log_tail = end.log_tail.clone();
        run.reason = end.reason.clone();
        run.finished_at_ms = Some(end.at_ms);
        Ok(())
    }

    /// One run.
    pub fn get(&self, run_id: &str) -> Option<&Run> {
        self.runs.iter().rev().find(|run| run.run_id == run_id)
    }

    fn get_mut(&mut self, run_id: &str) -> Option<&mut Run> {
        self.runs.iter_mut().rev().find(|run| run.run_id == run_id)
    }

    /// Runs that have not ended.
    pub fn active(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(|run| !run.state.is_final())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(tick: Tick) -> Fire {
        Fire {
            tick,
            attempt: 0,
            manual: false,
            fence: Fence { term: 1, index: 5 },
            release: 1,
            at_ms: 1000,
            skip: None,
        }
    }

    fn end(state: RunState) -> RunEnd {
        RunEnd {
            state,
            exit_code: Some(0),
            log_tail: "done\n".into(),
            reason: None,
            at_ms: 2000,
        }
    }

    #[test]
    fn a_scheduled_tick_fires_once_whoever_proposes_it() {
        let mut runs = JobRuns::default();
        runs.fire(&fire(60)).unwrap();
        let again = Fire {
            fence: Fence { term: 2, index: 9 },
            ..fire(60)
        };
        assert_eq!(
            runs.fire(&again),
            Err(RunRefusal::AlreadyFired { tick: 60, last: 60 }),
            "a new leader's fire of the same tick is refused"
        );
        assert_eq!(
            runs.fire(&fire(30)),
            Err(RunRefusal::AlreadyFired { tick: 30, last: 60 })
        );
        runs.fire(&fire(120)).unwrap();
        assert_eq!(runs.last_tick, Some(120));
        assert_eq!(runs.runs.len(), 2);
    }

    #[test]
    fn retries_and_manual_runs_are_not_bound_to_the_last_tick() {
        let mut runs = JobRuns::default();
        runs.fire(&fire(60)).unwrap();
        let retry = Fire {
            attempt: 1,
            ..fire(60)
        };
        assert_eq!(runs.fire(&retry).unwrap().run_id, "60.1");
        assert_eq!(runs.fire(&retry), Err(RunRefusal::Exists("60.1".into())));
        let manual = Fire {
            manual: true,
            ..fire(10)
        };
        assert_eq!(runs.fire(&manual).unwrap().run_id, "m1000");
        assert_eq!(runs.last_tick, Some(60));
    }

    #[test]
    fn only_the_first_worker_starts_a_run() {
        let mut runs = JobRuns::default();
        runs.fire(&fire(60)).unwrap();
        runs.start("60", 7, 1500).unwrap();
        assert_eq!(
            runs.start("60", 8, 1600),
            Err(RunRefusal::NotPending {
                run_id: "60".into(),
                state: RunState::Running
            })
        );
        assert_eq!(runs.get("60").unwrap().worker, Some(7));
        runs.end("60", &end(RunState::Succeeded)).unwrap();
        assert_eq!(
            runs.end("60", &end(RunState::Lost)),
            Err(RunRefusal::Ended("60".into()))
        );
        assert_eq!(runs.get("60").unwrap().state, RunState::Succeeded);
        assert_eq!(runs.active().count(), 0);
    }

    #[test]
    fn a_skipped_tick_counts_as_fired_and_ends_at_once() {
        let mut runs = JobRuns::default();
        let skip = Fire {
            skip: Some("the previous run is still going".into()),
            ..fire(60)
        };
        let run = runs.fire(&skip).unwrap();
        assert_eq!(run.state, RunState::Skipped);
        assert!(runs.fire(&fire(60)).is_err());
        assert_eq!(
            runs.start("60", 1, 0),
            Err(RunRefusal::NotPending {
                run_id: "60".into(),
                state: RunState::Skipped
            })
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut runs = JobRuns::default();
        for tick in 0..(RUN_HISTORY as i64 + 20) {
            runs.fire(&fire(tick)).unwrap();
        }
        assert_eq!(runs.runs.len(), RUN_HISTORY);
        assert_eq!(runs.runs[0].tick, 20);
    }
}
