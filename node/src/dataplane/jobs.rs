//! The worker side of cron runs: the orchestrator dispatches a fired run here on a
//! [`KIND_JOB`] stream, stamped with its fence.
//!
//! A dispatch whose fence is older than one this node has seen for the job is refused: it
//! comes from a deposed orchestrator. An accepted run first commits `RunStarted`, which only a
//! pending run accepts, and only then starts the process, so a run re-dispatched by a new
//! orchestrator runs on one worker at most. Its end (exit code, duration, log tail) is
//! committed with retries, so a leader change while it runs loses no result.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_mesh::link::{LinkRecv, LinkSend};
use shoal_mesh::quic::write_frame;
use tracing::{debug, info, warn};

use super::DataPlane;
use crate::cluster::Cluster;
use crate::node::unix_ms_now;
use crate::runs::{Fence, RunEnd, RunState};
use crate::state::{Applied, Command};

/// QUIC stream kind of a job message: a JSON [`JobMessage`] frame, answered with a JSON
/// `Result<(), String>` frame.
pub const KIND_JOB: u8 = 21;
/// Longest wait for the job's release (table and bundle) to reach this node.
const RELEASE_WAIT: Duration = Duration::from_secs(30);
/// How often a worker looks for runs it started before a restart.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How long a run's end is retried while no leader takes it.
const REPORT_FOR: Duration = Duration::from_secs(120);

/// What the orchestrator sends a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum JobMessage {
    /// Run a pending run.
    Run(Dispatch),
    /// Stop a run (`overlap = "replace"`): a newer one takes its place.
    Cancel {
        /// The job.
        job: String,
        /// The run.
        run_id: String,
        /// The orchestrator's fence.
        fence: Fence,
    },
}

/// One run to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dispatch {
    /// The job.
    pub job: String,
    /// The run.
    pub run_id: String,
    /// The release to run.
    pub release: u64,
    /// The orchestrator's fence.
    pub fence: Fence,
    /// The run's time limit.
    pub timeout_ms: u64,
}

/// What this node knows of the jobs it was sent: the newest fence per job and its running
/// runs' tasks.
#[derive(Default)]
pub struct JobBook {
    fences: BTreeMap<String, Fence>,
    /// By (job, run id): run ids repeat across jobs (a tick's number).
    running: BTreeMap<(String, String), tokio::task::AbortHandle>,
}

impl JobBook {
    /// Records `fence` for `job`, or refuses it when an orchestrator with a newer one has
    /// been seen.
    pub fn admit(&mut self, job: &str, fence: Fence) -> Result<(), String> {
        match self.fences.get(job) {
            Some(seen) if fence < *seen => Err(format!(
                "fence {fence} is older than {seen}, already seen for job `{job}`"
            )),
            _ => {
                self.fences.insert(job.to_owned(), fence);
                Ok(())
            }
        }
    }
}

impl DataPlane {
    /// Serves one job stream.
    pub(super) async fn serve_job(
        self: Arc<Self>,
        peer: u64,
        mut send: LinkSend,
        mut recv: LinkRecv,
    ) {
        let message: JobMessage = match super::read_json(&mut recv, 64 << 10).await {
            Ok(message) => message,
            Err(error) => {
                debug!(peer, %error, "unreadable job message");
                return;
            }
        };
        let cancelled = match &message {
            JobMessage::Cancel { job, .. } => Some(job.clone()),
            JobMessage::Run(_) => None,
        };
        let mut reply = self.clone().take_job(message);
        if let (Ok(()), Some(job)) = (&reply, cancelled) {
            // The aborted task left its process: stop it before the newer run may start.
            reply = self.worker.stop_job_runs(&job).await.map(|stopped| {
                info!(%job, stopped, "stopped a replaced run");
            });
        }
        if let Err(error) = &reply {
            info!(peer, %error, "refused a job message");
        }
        let bytes = serde_json::to_vec(&reply).expect("a reply serializes");
        if write_frame(&mut send, &bytes).await.is_ok() {
            let _ = send.finish();
            let _ = send.stopped().await;
        }
    }

    fn take_job(self: Arc<Self>, message: JobMessage) -> Result<(), String> {
        if !self.runs_apps {
            return Err("this node runs no apps (--no-worker)".into());
        }
        let mut book = self.jobs.lock().expect("jobs lock");
        match message {
            JobMessage::Run(dispatch) => {
                book.admit(&dispatch.job, dispatch.fence)?;
                let key = (dispatch.job.clone(), dispatch.run_id.clone());
                let task = tokio::spawn(self.clone().run_dispatched(dispatch));
                book.running.insert(key, task.abort_handle());
                Ok(())
            }
            JobMessage::Cancel { job, run_id, fence } => {
                book.admit(&job, fence)?;
                if let Some(task) = book.running.remove(&(job, run_id)) {
                    task.abort();
                }
                Ok(())
            }
        }
    }

    async fn run_dispatched(self: Arc<Self>, dispatch: Dispatch) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        if let Some(end) = self.run_once(&cluster, &dispatch).await {
            report(&cluster, &dispatch.job, &dispatch.run_id, end).await;
        }
        // Only now: until its end is committed, the sweep must see the run as ours.
        self.jobs
            .lock()
            .expect("jobs lock")
            .running
            .remove(&(dispatch.job.clone(), dispatch.run_id.clone()));
    }

    /// Ends as lost the runs the table says run here but this process does not run: they
    /// started before this node restarted, and nobody will report their end.
    pub(super) async fn sweep_orphan_runs(self: Arc<Self>) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        let me = cluster.identity.node_id;
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let table = cluster.table();
            let orphans: Vec<(String, String)> = {
                let book = self.jobs.lock().expect("jobs lock");
                table
                    .apps()
                    .flat_map(|app| {
                        app.runs
                            .active()
                            .filter(|run| run.state == RunState::Running && run.worker == Some(me))
                            .filter(|run| {
                                !book
                                    .running
                                    .contains_key(&(app.name.clone(), run.run_id.clone()))
                            })
                            .map(|run| (app.name.clone(), run.run_id.clone()))
                    })
                    .collect()
            };
            for (job, run_id) in orphans {
                warn!(%job, run = %run_id, "a run this node started before it restarted is lost");
                let end = RunEnd {
                    state: RunState::Lost,
                    exit_code: None,
                    log_tail: String::new(),
                    reason: Some("its worker restarted while it ran".into()),
                    at_ms: unix_ms_now(),
                };
                report(&cluster, &job, &run_id, end).await;
            }
        }
    }

    /// Commits the start, runs the process, and says how it ended (`None`: not started here).
    async fn run_once(&self, cluster: &Cluster, dispatch: &Dispatch) -> Option<RunEnd> {
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        let (release, dir) = loop {
            let table = cluster.table();
            let found = table.get(&dispatch.job).and_then(|app| {
                let release = app
                    .releases
                    .iter()
                    .find(|release| release.version == dispatch.release)?;
                Some((release.clone(), cluster.release_dir(&release.digest)?))
            });
            if let Some(found) = found {
                break found;
            }
            if tokio::time::Instant::now() > deadline {
                warn!(job = %dispatch.job, run = %dispatch.run_id, "the job's release never reached this node");
                return Some(RunEnd {
                    state: RunState::Failed,
                    exit_code: None,
                    log_tail: String::new(),
                    reason: Some("the release did not reach the worker in time".into()),
                    at_ms: unix_ms_now(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let start = Command::RunStarted {
            job: dispatch.job.clone(),
            run_id: dispatch.run_id.clone(),
            worker: cluster.identity.node_id,
            at_ms: unix_ms_now(),
        };
        match cluster.propose(start).await {
            Ok(Applied::RunUpdated { .. }) => {}
            Ok(other) => {
                debug!(run = %dispatch.run_id, ?other, "the run is not ours to start");
                return None;
            }
            Err(error) => {
                // Unknown whether it committed: the orchestrator re-dispatches a pending run,
                // and only one start commits.
                warn!(run = %dispatch.run_id, %error, "could not commit the run's start");
                return None;
            }
        }
        info!(job = %dispatch.job, run = %dispatch.run_id, "running a job");
        let outcome = self
            .worker
            .run_job(
                &release.spec,
                release.version,
                dir,
                &release.digest,
                Duration::from_millis(dispatch.timeout_ms),
                run_env(cluster, dispatch),
            )
            .await;
        let at_ms = unix_ms_now();
        Some(match outcome {
            Ok(outcome) => RunEnd {
                state: if outcome.timed_out {
                    RunState::TimedOut
                } else if outcome.exit_code == Some(0) {
                    RunState::Succeeded
                } else {
                    RunState::Failed
                },
                exit_code: outcome.exit_code.and_then(|code| i32::try_from(code).ok()),
                log_tail: outcome.log_tail,
                reason: outcome
                    .oom_killed
                    .then(|| "killed for using more than its memory limit".to_owned()),
                at_ms,
            },
            Err(error) => RunEnd {
                state: RunState::Failed,
                exit_code: None,
                log_tail: String::new(),
                reason: Some(error),
                at_ms,
            },
        })
    }
}

/// What a run sees of itself: `SHOAL_JOB`, `SHOAL_RUN_ID`, `SHOAL_TICK` (Unix seconds of the
/// schedule tick, or of the request for a manual run) and `SHOAL_ATTEMPT` (0 for the first).
fn run_env(cluster: &Cluster, dispatch: &Dispatch) -> BTreeMap<String, String> {
    let table = cluster.table();
    let run = table
        .get(&dispatch.job)
        .and_then(|app| app.runs.get(&dispatch.run_id));
    let mut env = BTreeMap::from([
        ("SHOAL_JOB".to_owned(), dispatch.job.clone()),
        ("SHOAL_RUN_ID".to_owned(), dispatch.run_id.clone()),
    ]);
    if let Some(run) = run {
        env.insert("SHOAL_TICK".into(), run.tick.to_string());
        env.insert("SHOAL_ATTEMPT".into(), run.attempt.to_string());
    }
    env
}

/// Commits a run's end, retrying while no leader takes it.
async fn report(cluster: &Cluster, job: &str, run_id: &str, end: RunEnd) {
    let deadline = tokio::time::Instant::now() + REPORT_FOR;
    let command = Command::RunEnded {
        job: job.to_owned(),
        run_id: run_id.to_owned(),
        end,
    };
    loop {
        match cluster.propose(command.clone()).await {
            Ok(_) => return,
            Err(error) if tokio::time::Instant::now() > deadline => {
                warn!(run = %run_id, %error, "gave up reporting a run's end");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_fence_is_refused_per_job() {
        let mut book = JobBook::default();
        let fence = |term, index| Fence { term, index };
        book.admit("a", fence(2, 10)).unwrap();
        book.admit("a", fence(2, 10)).unwrap();
        assert!(book.admit("a", fence(1, 99)).is_err(), "a deposed leader");
        assert!(book.admit("a", fence(2, 9)).is_err());
        book.admit("b", fence(1, 1)).unwrap();
        book.admit("a", fence(3, 1)).unwrap();
        assert!(book.admit("a", fence(2, 10)).is_err());
    }
}
