//! The run endpoints through the real handler on a node without a control plane (its replica
//! holds a table built by the state machine), and what triggering a run commits and answers.

use std::time::Duration;

use shoal_proxy::server::{self, ServerLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::bundle::BundleLimits;
use crate::node::{Membership, NodeConfig};
use crate::runs::{RunEnd, RunState};
use crate::state::deploy_for_test;
use crate::tokens::AdminToken;

const TOKEN: &str = "shoal_test_token";
/// 2026-11-24T19:20:00Z.
const TICK: Tick = 1_795_548_000;

fn deploy_job(name: &str) -> Command {
    let manifest =
        format!("name = \"{name}\"\nkind = \"cron\"\ncommand = [\"x\"]\nschedule = \"@hourly\"\n");
    let spec = Manifest::parse(&manifest, "t", None).expect("valid manifest");
    Command::Deploy {
        spec: Box::new(spec),
        digest: "d1".into(),
        bundle_bytes: 1,
        at_unix_ms: 0,
    }
}

fn scheduled_fire(job: &str, tick: Tick) -> Command {
    Command::Fire {
        job: job.into(),
        fire: Fire {
            tick,
            attempt: 0,
            manual: false,
            fence: Fence { term: 2, index: 7 },
            release: 1,
            at_ms: tick as u64 * 1000,
            skip: None,
        },
    }
}

/// A table with the cron job `job` (two scheduled runs, the second finished, and one manual
/// run) and the static app `site`.
fn table() -> AppTable {
    let commands = [
        deploy_job("job"),
        deploy_for_test("site", "d2", 0),
        scheduled_fire("job", TICK),
        scheduled_fire("job", TICK + 3600),
        Command::RunStarted {
            job: "job".into(),
            run_id: (TICK + 3600).to_string(),
            worker: 3,
            at_ms: 1_000,
        },
        Command::RunEnded {
            job: "job".into(),
            run_id: (TICK + 3600).to_string(),
            end: RunEnd {
                state: RunState::Succeeded,
                exit_code: Some(0),
                log_tail: "ok\n".into(),
                reason: None,
                at_ms: 2_200,
            },
        },
        manual_fire("job", 1, 1_795_551_700_123),
    ];
    let mut table = AppTable::default();
    for (index, command) in commands.iter().enumerate() {
        let applied = table.apply(index as u64 + 1, command);
        assert!(
            !matches!(
                applied,
                Applied::RunRefused { .. } | Applied::NotFound { .. }
            ),
            "{applied:?}"
        );
    }
    table
}

/// A node serving the admin API on a free port; its control plane never starts.
struct Harness {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(table: AppTable) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let unused = "127.0.0.1:0".parse().unwrap();
        let config = NodeConfig {
            data_dir: dir.path().to_owned(),
            http: unused,
            api: unused,
            gossip: unused,
            quic: unused,
            advertise: None,
            domain: "localhost".into(),
            node_name: "test".into(),
            runtime: None,
            bundle_limits: BundleLimits::default(),
            drain_timeout: Duration::from_secs(1),
            dead_after: Duration::from_secs(2),
            worker: false,
            membership: Membership::Seed {
                join_token_ttl: Duration::from_secs(3600),
            },
        };
        let token = AdminToken::store(dir.path(), TOKEN).unwrap();
        let node = Node::open(config, token).unwrap();
        assert!(node.replica.install(table).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(server::serve(
            listener,
            move |request, _peer| handle(node.clone(), request),
            ServerLimits::default(),
            shutdown.clone(),
        ));
        Self {
            base,
            http: reqwest::Client::new(),
            shutdown,
            _dir: dir,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_the_last_scheduled_tick() {
    let harness = Harness::start(table()).await;
    let (status, body) = harness
        .call(reqwest::Method::GET, "/v1/apps/job/runs")
        .await;
    assert_eq!(status, 200, "{body}");
    let view: RunsView = serde_json::from_value(body).unwrap();
    assert_eq!(view.job, "job");
    assert_eq!(
        view.last_tick,
        Some(TICK + 3600),
        "the manual run does not move it"
    );
    let ids: Vec<_> = view.runs.iter().map(|run| run.run_id.as_str()).collect();
    assert_eq!(ids, ["m1795551700123", "1795551600", "1795548000"]);
    let finished = &view.runs[1];
    assert_eq!(finished.state, RunState::Succeeded);
    assert_eq!(finished.worker, Some(3));
    assert_eq!(
        (finished.started_at_ms, finished.finished_at_ms),
        (Some(1_000), Some(2_200))
    );
}

#[tokio::test]
async fn runs_of_anything_but_a_cron_job_are_refused_with_a_sentence() {
    let harness = Harness::start(table()).await;
    let (status, body) = harness
        .call(reqwest::Method::GET, "/v1/apps/site/runs")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("app `site` is a static app, not a cron job"))
    );
    let (status, body) = harness
        .call(reqwest::Method::GET, "/v1/apps/nope/runs")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("no app named `nope`"))
    );
    let (status, _) = harness
        .call(reqwest::Method::PUT, "/v1/apps/job/runs")
        .await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn runs_need_the_admin_token() {
    let harness = Harness::start(table()).await;
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let response = harness
            .http
            .request(method, format!("{}/v1/apps/job/runs", harness.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
    }
}

#[tokio::test]
async fn triggering_a_run_waits_for_the_control_plane() {
    let harness = Harness::start(table()).await;
    let (status, body) = harness
        .call(reqwest::Method::POST, "/v1/apps/job/runs")
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("try again"));
}

#[test]
fn a_manual_fire_commits_a_pending_run_of_the_current_release() {
    let mut table = table();
    let now_ms = 1_795_552_000_456;
    let command = manual_fire("job", 1, now_ms);
    assert_eq!(
        command,
        Command::Fire {
            job: "job".into(),
            fire: Fire {
                tick: 1_795_552_000,
                attempt: 0,
                manual: true,
                fence: Fence { term: 0, index: 0 },
                release: 1,
                at_ms: now_ms,
                skip: None,
            },
        }
    );
    let run = fired_run(table.apply(100, &command), "job").unwrap();
    assert_eq!(run.run_id, "m1795552000456");
    assert_eq!(
        (run.state, run.release, run.manual),
        (RunState::Pending, 1, true)
    );
    assert_eq!(table.get("job").unwrap().runs.last_tick, Some(TICK + 3600));

    let again = fired_run(table.apply(101, &command), "job").unwrap_err();
    assert_eq!(
        (again.status, again.message.as_str()),
        (
            StatusCode::CONFLICT,
            "cannot start a run of `job`: run m1795552000456 exists"
        )
    );
}

#[test]
fn a_manual_fire_of_a_static_or_missing_app_is_refused() {
    let mut table = table();
    let refused = fired_run(table.apply(100, &manual_fire("site", 1, 5)), "site").unwrap_err();
    assert_eq!(
        (refused.status, refused.message.as_str()),
        (StatusCode::CONFLICT, "app `site` is not a cron job")
    );
    let missing = fired_run(table.apply(101, &manual_fire("nope", 1, 5)), "nope").unwrap_err();
    assert_eq!(
        (missing.status, missing.message.as_str()),
        (StatusCode::NOT_FOUND, "no app named `nope`")
    );
}
