//! The cron duty of the active orchestrator (DESIGN §7): fire due ticks, dispatch fired runs,
//! notice lost runs and retry failed ones.
//!
//! [`plan`] is pure: a job's records, its settings, the time and the live workers in; the
//! actions out, in order. The duty around it commits each `Fire` through raft before it
//! dispatches the run, stamps every message with its fence, and stops the moment leadership
//! is lost. A tick fires once because the state machine refuses a second `Fire` of it, and a
//! run starts once because only one `RunStarted` commits; so the duty is free to re-dispatch a
//! pending run (a new leader does, for whatever the old one fired and may not have sent).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use shoal_mesh::placement::rendezvous_score;
use shoal_mesh::quic::{read_frame, write_frame};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::orchestrator::Fence;
use super::Cluster;
use crate::cron::{due, Overlap, Schedule, Tick, DEFAULT_GRACE};
use crate::dataplane::jobs::{Dispatch, JobMessage, KIND_JOB};
use crate::manifest::AppKind;
use crate::runs::{Fire, RunEnd, RunState};
use crate::state::{App, Applied, Command};

/// How often the duty looks at the jobs.
const PERIOD: Duration = Duration::from_millis(200);
/// A dispatched run that has not started by then is sent again (maybe to another worker).
pub const REDISPATCH_AFTER: Duration = Duration::from_secs(10);
/// A run pending this long is given up as lost.
pub const PENDING_LIMIT: Duration = Duration::from_secs(300);

/// One thing the duty does for a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// End a run (lost, or replaced by a newer one) and, for a replaced run, tell its worker.
    End {
        /// The run.
        run_id: String,
        /// Lost or replaced.
        state: RunState,
        /// Why.
        reason: String,
        /// The worker to tell to stop it.
        cancel_on: Option<u64>,
    },
    /// Commit a fire (then dispatch it unless it is a skip).
    Fire(Fire),
    /// Send a pending run to a worker.
    Dispatch {
        /// The run.
        run_id: String,
        /// Its release.
        release: u64,
    },
}

/// A job's actions at `now_ms`. `dead_workers` are the nodes gossip declares dead (a node it
/// has not heard of yet is not dead: a new leader's view fills in after a round or two);
/// `dispatched` holds when this duty last sent each run.
pub fn plan(
    app: &App,
    schedule: &Schedule,
    fence: Fence,
    now_ms: u64,
    dead_workers: &BTreeSet<u64>,
    dispatched: &BTreeMap<String, u64>,
) -> Vec<Action> {
    let release = app.current();
    let job = &release.spec.job;
    let runs = &app.runs;
    let mut actions = Vec::new();
    let mut ended: BTreeSet<&str> = BTreeSet::new();
    for run in runs.active() {
        let lost = match (run.state, run.worker) {
            (RunState::Running, Some(worker)) if dead_workers.contains(&worker) => {
                Some(format!("worker {worker} died while the run was going"))
            }
            (RunState::Pending, _)
                if now_ms.saturating_sub(run.fired_at_ms) > millis(PENDING_LIMIT) =>
            {
                Some("no worker started the run".to_owned())
            }
            _ => None,
        };
        if let Some(reason) = lost {
            ended.insert(&run.run_id);
            actions.push(Action::End {
                run_id: run.run_id.clone(),
                state: RunState::Lost,
                reason,
                cancel_on: None,
            });
        }
    }
    // Retries: the newest attempt of each recent tick, failed, with tries left, after backoff.
    let mut newest: BTreeMap<(bool, Tick), &crate::runs::Run> = BTreeMap::new();
    for run in runs.runs.iter().rev().take(20) {
        let key = (run.manual, Tick::from_unix_seconds(run.tick));
        newest
            .entry(key)
            .and_modify(|seen| {
                if run.attempt > seen.attempt {
                    *seen = run;
                }
            })
            .or_insert(run);
    }
    for run in newest.values() {
        let failed = matches!(
            run.state,
            RunState::Failed | RunState::TimedOut | RunState::Lost
        ) || ended.contains(run.run_id.as_str());
        if run.manual || !failed || !job.retry.allows(run.attempt + 1) {
            continue;
        }
        let finished = run.finished_at_ms.unwrap_or(now_ms);
        if now_ms >= finished + millis(job.retry.delay(run.attempt + 1)) {
            actions.push(Action::Fire(Fire {
                tick: run.tick,
                attempt: run.attempt + 1,
                manual: false,
                fence,
                release: release.version,
                at_ms: now_ms,
                skip: None,
            }));
        }
    }
    // Pending runs not sent by this duty, or sent a while ago without starting.
    for run in runs.active() {
        let stale = dispatched
            .get(&run.run_id)
            .is_none_or(|at| now_ms.saturating_sub(*at) >= millis(REDISPATCH_AFTER));
        if run.state == RunState::Pending && stale && !ended.contains(run.run_id.as_str()) {
            actions.push(Action::Dispatch {
                run_id: run.run_id.clone(),
                release: run.release,
            });
        }
    }
    // The schedule.
    let now = Tick::from_unix_seconds(i64::try_from(now_ms / 1000).unwrap_or(i64::MAX));
    let created =
        Tick::from_unix_seconds(i64::try_from(app.created_at_unix_ms / 1000).unwrap_or(0));
    let last = runs.last_tick.map(Tick::from_unix_seconds);
    let decision = due(schedule, last, created, now, job.catch_up, DEFAULT_GRACE);
    let fire = |tick: Tick, skip: Option<String>| {
        Action::Fire(Fire {
            tick: tick.unix_seconds(),
            attempt: 0,
            manual: false,
            fence,
            release: release.version,
            at_ms: now_ms,
            skip,
        })
    };
    match (decision.fire, decision.latest) {
        (Some(tick), _) => {
            let active: Vec<_> = runs
                .active()
                .filter(|run| !ended.contains(run.run_id.as_str()))
                .collect();
            match job.overlap {
                Overlap::Forbid if !active.is_empty() => actions.push(fire(
                    tick,
                    Some(format!(
                        "run {} was still going (overlap = \"forbid\")",
                        active[0].run_id
                    )),
                )),
                Overlap::Replace => {
                    for run in active {
                        actions.push(Action::End {
                            run_id: run.run_id.clone(),
                            state: RunState::Replaced,
                            reason: format!("replaced by the run of tick {tick}"),
                            cancel_on: run.worker,
                        });
                    }
                    actions.push(fire(tick, None));
                }
                _ => actions.push(fire(tick, None)),
            }
        }
        // Late ticks under `catch_up = "none"`: recorded as skipped, so they are settled.
        (None, Some(latest)) => actions.push(fire(
            latest,
            Some("the tick was missed and catch_up = \"none\"".to_owned()),
        )),
        (None, None) => {}
    }
    actions
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Cluster {
    /// Leader duty: runs [`plan`] for every cron job until `token` is cancelled.
    pub(super) async fn cron_duty(self: Arc<Self>, fence: Fence, token: CancellationToken) {
        let mut dispatched: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut schedules: BTreeMap<(String, String), Schedule> = BTreeMap::new();
        loop {
            let table = self.replica.table();
            let view = self.placement_view();
            let dead: BTreeSet<u64> = view
                .workers
                .iter()
                .filter(|w| !w.live)
                .map(|w| w.node)
                .collect();
            for app in table.apps().filter(|app| app.kind() == AppKind::Cron) {
                if token.is_cancelled() {
                    return;
                }
                let spec = &app.current().spec;
                let expr = spec.schedule.clone().unwrap_or_default();
                let key = (expr.clone(), spec.job.timezone.clone().unwrap_or_default());
                let schedule = match schedules.get(&key) {
                    Some(schedule) => schedule.clone(),
                    None => match Schedule::parse(&expr, spec.job.timezone.as_deref()) {
                        Ok(schedule) => {
                            schedules.insert(key, schedule.clone());
                            schedule
                        }
                        Err(error) => {
                            warn!(job = %app.name, %error, "cannot evaluate the job's schedule");
                            continue;
                        }
                    },
                };
                let sent: BTreeMap<String, u64> = dispatched
                    .iter()
                    .filter(|((job, _), _)| *job == app.name)
                    .map(|((_, run), at)| (run.clone(), *at))
                    .collect();
                let now_ms = self.now_ms();
                for action in plan(app, &schedule, fence, now_ms, &dead, &sent) {
                    if token.is_cancelled() {
                        return;
                    }
                    self.carry_out(&app.name, fence, action, &mut dispatched)
                        .await;
                }
            }
            dispatched.retain(|(job, run), _| {
                table
                    .get(job)
                    .and_then(|app| app.runs.get(run))
                    .is_some_and(|run| run.state == RunState::Pending)
            });
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(PERIOD) => {}
            }
        }
    }

    async fn carry_out(
        &self,
        job: &str,
        fence: Fence,
        action: Action,
        dispatched: &mut BTreeMap<(String, String), u64>,
    ) {
        match action {
            Action::End {
                run_id,
                state,
                reason,
                cancel_on,
            } => {
                info!(%fence, job, run = %run_id, ?state, %reason, "ending a run");
                let end = RunEnd {
                    state,
                    exit_code: None,
                    log_tail: String::new(),
                    reason: Some(reason),
                    at_ms: self.now_ms(),
                };
                let command = Command::RunEnded {
                    job: job.to_owned(),
                    run_id: run_id.clone(),
                    end,
                };
                if let Err(error) = self.propose(command).await {
                    warn!(%fence, job, %error, "could not end a run");
                    return;
                }
                if let Some(worker) = cancel_on {
                    let cancel = JobMessage::Cancel {
                        job: job.to_owned(),
                        run_id,
                        fence,
                    };
                    if let Err(error) = self.send_job(worker, &cancel).await {
                        debug!(worker, %error, "could not cancel a run");
                    }
                }
            }
            Action::Fire(fire) => {
                let skip = fire.skip.is_some();
                if !skip && crate::planted::enabled(crate::planted::Bug::CronFireWithoutCommit) {
                    let run_id = format!("planted-{}-{}", fire.tick, fire.attempt);
                    self.dispatch(job, &run_id, fire.release, fence, dispatched)
                        .await;
                    return;
                }
                let command = Command::Fire {
                    job: job.to_owned(),
                    fire,
                };
                match self.propose(command).await {
                    Ok(Applied::Fired { run, .. }) => {
                        info!(%fence, job, run = %run.run_id, tick = run.tick, skip, "fired");
                        if !skip {
                            self.dispatch(job, &run.run_id, run.release, fence, dispatched)
                                .await;
                        }
                    }
                    Ok(other) => debug!(%fence, job, ?other, "the fire changed nothing"),
                    Err(error) => warn!(%fence, job, %error, "could not commit a fire"),
                }
            }
            Action::Dispatch { run_id, release } => {
                self.dispatch(job, &run_id, release, fence, dispatched)
                    .await;
            }
        }
    }

    /// Sends a pending run to the least-loaded live worker that takes it.
    async fn dispatch(
        &self,
        job: &str,
        run_id: &str,
        release: u64,
        fence: Fence,
        dispatched: &mut BTreeMap<(String, String), u64>,
    ) {
        dispatched.insert((job.to_owned(), run_id.to_owned()), self.now_ms());
        let timeout_ms = self.replica.table().get(job).map_or(3_600_000, |app| {
            app.current().spec.job.timeout_secs.saturating_mul(1000)
        });
        let message = JobMessage::Run(Dispatch {
            job: job.to_owned(),
            run_id: run_id.to_owned(),
            release,
            fence,
            timeout_ms,
        });
        let view = self.placement_view();
        let mut workers: Vec<_> = view
            .workers
            .iter()
            .filter(|w| w.live || ignore_liveness())
            .filter(|w| w.runs_apps)
            .collect();
        let key = format!("{job}/{run_id}");
        workers.sort_by_key(|w| {
            (
                w.in_flight + w.instances,
                std::cmp::Reverse(rendezvous_score(&key, w.node)),
            )
        });
        for worker in workers {
            match self.send_job(worker.node, &message).await {
                Ok(()) => {
                    info!(%fence, job, run = run_id, worker = worker.node, "dispatched");
                    return;
                }
                Err(error) => debug!(worker = worker.node, %error, "a worker did not take a run"),
            }
        }
        warn!(%fence, job, run = run_id, "no worker took the run; it is sent again later");
    }

    async fn send_job(&self, worker: u64, message: &JobMessage) -> Result<(), String> {
        let addr = *self
            .placement_view()
            .quic
            .get(&worker)
            .ok_or_else(|| format!("no address for node {worker}"))?;
        let exchange = async {
            let (mut send, mut recv) = self
                .quic
                .open(worker, addr, KIND_JOB)
                .await
                .map_err(|e| e.to_string())?;
            let bytes = serde_json::to_vec(message).map_err(|e| e.to_string())?;
            write_frame(&mut send, &bytes)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            let reply = read_frame(&mut recv, 64 << 10)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_slice::<Result<(), String>>(&reply).map_err(|e| e.to_string())?
        };
        tokio::time::timeout(Duration::from_secs(3), exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within 3s".into()))
    }
}

/// Whether the simulator planted the bug that dispatches to dead workers.
fn ignore_liveness() -> bool {
    crate::planted::enabled(crate::planted::Bug::DispatchIgnoresLiveness)
}

#[cfg(test)]
#[path = "cron_duty_tests.rs"]
mod tests;
