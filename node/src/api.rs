//! The admin API: JSON over HTTP under `/v1/`, and Prometheus text at `/metrics`.
//!
//! Every `/v1/` call needs `Authorization: Bearer <admin token>`. A deploy streams the bundle
//! to disk, unpacks and checks it, reads its `shoal.toml`, and only then stores the bundle and
//! applies the `Deploy` command; any failure on the way leaves nothing behind.
//!
//! A cron job's runs are read at `GET /v1/apps/NAME/runs`; `POST` there commits a manual
//! `Fire`, and the orchestrator dispatches the pending run like a scheduled one.

use std::sync::Arc;

use futures_util::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shoal_proxy::body::{self, Body};
use tracing::{info, warn};

use crate::bundle::BundleError;

#[path = "api_policy.rs"]
mod policy;

use crate::cluster::ClusterError;
use crate::manifest::{AppKind, AppSpec, Manifest};
use crate::node::{unix_ms_now, Node};
use crate::runs::{Fence, Fire, Run, RunRefusal, Tick};
use crate::state::{App, AppTable, Applied, Command, Release};
use policy::Grant;
pub use policy::{DeployTokenView, PolicyChange, PolicyView};

/// An API failure: a status and one sentence for the user.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        warn!(%error, "admin api request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {error}"),
        )
    }
}

impl From<BundleError> for ApiError {
    fn from(error: BundleError) -> Self {
        if !error.is_client_error() {
            return Self::internal(error);
        }
        let status = match error {
            BundleError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, error.to_string())
    }
}

/// Answers one admin API request.
pub async fn handle(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path == "/metrics" && request.method() == Method::GET {
        return metrics(&node);
    }
    if !path.starts_with("/v1/") {
        return error_response(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such endpoint; the API lives under /v1/",
        ));
    }
    let Some(grant) = grant(&node, &request) else {
        let mut response = error_response(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer <admin token>` or the app's deploy token",
        ));
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let result = route(&node, grant, request, &segments).await;
    result.unwrap_or_else(error_response)
}

async fn route(
    node: &Arc<Node>,
    grant: Grant,
    request: Request<Incoming>,
    segments: &[&str],
) -> Result<Response<Body>, ApiError> {
    // A deploy token reaches only its own app's endpoints.
    if let ["apps", name, ..] = segments {
        grant.check(name)?;
    }
    match (request.method().clone(), segments) {
        (Method::GET, ["apps"]) => list_apps(node, &grant, consistent(&request)).await,
        (Method::POST, ["apps"]) => deploy(node, &grant, request).await,
        (Method::GET, ["apps", name]) => show_app(node, name, consistent(&request)).await,
        (Method::GET, ["apps", name, "logs"]) => logs(node, name, request.uri().query()).await,
        (Method::DELETE, ["apps", name]) => delete_app(node, name).await,
        (Method::GET, ["apps", name, "runs"]) => list_runs(node, name, consistent(&request)).await,
        (Method::POST, ["apps", name, "runs"]) => trigger_run(node, name).await,
        (Method::GET, ["apps", name, "policy"]) => {
            let table = read_table(node, consistent(&request)).await?;
            policy::show(name, &table)
        }
        (Method::PATCH, ["apps", name, "policy"]) => policy::patch(node, name, request).await,
        (Method::POST, ["apps", name, "share"]) => policy::share(node, name, request).await,
        (Method::GET, ["tokens"]) => {
            grant.admin_only()?;
            policy::list_tokens(&*read_table(node, consistent(&request)).await?)
        }
        (Method::POST, ["tokens"]) => {
            grant.admin_only()?;
            policy::create_token(node, request).await
        }
        (Method::DELETE, ["tokens", id]) => {
            grant.admin_only()?;
            policy::revoke_token(node, id).await
        }
        (Method::GET, ["nodes"]) => {
            grant.admin_only()?;
            nodes(node)
        }
        (Method::DELETE, ["nodes", id]) => {
            grant.admin_only()?;
            remove_node(node, id).await
        }
        (_, ["apps"])
        | (_, ["apps", _])
        | (_, ["apps", _, "runs" | "policy" | "share"])
        | (_, ["tokens"] | ["tokens", _]) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here",
        )),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
    }
}

/// Collects unused bundles now, so the answer to a delete or deploy reflects it.
async fn collect_garbage(node: &Arc<Node>) {
    let node = node.clone();
    let _ = tokio::task::spawn_blocking(move || node.collect_garbage()).await;
}

fn not_started() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the node is still starting its control plane; try again in a moment",
    )
}

fn unavailable(error: ClusterError) -> ApiError {
    match error {
        ClusterError::Failed(message) => ApiError::internal(message),
        other => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// `GET /v1/nodes`: every member this node's gossip knows, with roles, load and the leader.
fn nodes(node: &Node) -> Result<Response<Body>, ApiError> {
    let cluster = node.cluster().ok_or_else(not_started)?;
    Ok(json_response(StatusCode::OK, &cluster.nodes()))
}

/// `DELETE /v1/nodes/ID`: removes a node from raft (a voter stops voting).
async fn remove_node(node: &Node, id: &str) -> Result<Response<Body>, ApiError> {
    let cluster = node.cluster().ok_or_else(not_started)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("`{id}` is not a node id")))?;
    if id == cluster.identity.node_id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a node cannot remove itself; ask another node",
        ));
    }
    cluster.remove_node(id).await.map_err(|error| match error {
        ClusterError::Failed(message) => ApiError::new(StatusCode::BAD_REQUEST, message),
        other => unavailable(other),
    })?;
    info!(node = id, "node removed from raft");
    Ok(json_response(
        StatusCode::OK,
        &json!({ "removed": id.to_string() }),
    ))
}

/// What the request's bearer token grants, if anything.
fn grant(node: &Node, request: &Request<Incoming>) -> Option<Grant> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))?;
    policy::grant_of(node, token.trim())
}

fn metrics(node: &Node) -> Response<Body> {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &node.registry) {
        return error_response(ApiError::internal(error));
    }
    let mut response = Response::new(body::full(text));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn deploy(
    node: &Arc<Node>,
    grant: &Grant,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let name_override = query_param(request.uri().query(), "name");
    if let Some(name) = &name_override {
        grant.check(name)?;
    }
    let limit = node.bundles.limits().max_compressed_bytes;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut upload = request.into_body().into_data_stream();
    if declared.is_some_and(|length| length > limit) {
        drain_refused_upload(&mut upload, declared).await;
        return Err(BundleError::TooLarge { limit }.into());
    }
    let staged = match node.bundles.stage(&mut upload).await {
        Ok(staged) => staged,
        Err(error) => {
            drain_refused_upload(&mut upload, declared).await;
            return Err(error.into());
        }
    };
    let unpack_node = node.clone();
    let (staged, unpacked, spec) = tokio::task::spawn_blocking(move || {
        let unpacked = unpack_node.bundles.unpack(&staged)?;
        let spec = Manifest::load(unpacked.path(), name_override.as_deref()).map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                error
                    .to_string()
                    .replace(&unpacked.path().display().to_string(), "bundle"),
            )
        })?;
        Ok::<_, ApiError>((staged, unpacked, spec))
    })
    .await
    .map_err(ApiError::internal)??;
    // A deploy token deploys only its app, whatever the bundle's manifest names.
    grant.check(&spec.name)?;

    let cluster = node.cluster().ok_or_else(not_started)?.clone();
    let _write = node.write_lock.lock().await;
    let commit_node = node.clone();
    let (digest, bundle_bytes) = tokio::task::spawn_blocking(move || {
        let digest = staged.digest().to_owned();
        let bundle_bytes = staged.size();
        commit_node.bundles.commit(staged, unpacked)?;
        Ok::<_, ApiError>((digest, bundle_bytes))
    })
    .await
    .map_err(ApiError::internal)??;
    // A deploy is acknowledged only once its bundle is on a majority of voters and the
    // release naming it is committed.
    let started = std::time::Instant::now();
    cluster
        .replicate_bundle(&digest)
        .await
        .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    let replicated = started.elapsed();
    let command = Command::Deploy {
        spec: Box::new(spec),
        digest: digest.clone(),
        bundle_bytes,
        at_unix_ms: unix_ms_now(),
    };
    let applied = cluster.propose(command).await.map_err(unavailable)?;
    node.mark_named(&digest);
    drop(_write);
    collect_garbage(node).await;
    tracing::debug!(
        replicate_ms = replicated.as_millis() as u64,
        commit_ms = (started.elapsed() - replicated).as_millis() as u64,
        "deploy committed"
    );

    let (name, created) = match &applied {
        Applied::Deployed { app, .. } => (app.clone(), true),
        Applied::Unchanged { app, .. } => (app.clone(), false),
        other => {
            return Err(ApiError::internal(format!(
                "unexpected deploy outcome {other:?}"
            )))
        }
    };
    let app = node
        .app(&name)
        .ok_or_else(|| ApiError::internal("deployed app vanished"))?;
    let release = app.current();
    info!(app = %name, version = release.version, created, "deploy applied");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &json!({
            "app": name,
            "kind": release.spec.kind,
            "version": release.version,
            "digest": release.digest,
            "created": created,
            "urls": node.config.app_urls(&name, release.spec.kind),
        }),
    ))
}

/// Reads and discards what is left of a refused upload, so the client, still sending, gets to
/// read the error instead of a reset connection. Bounded: a client that would send more than
/// [`DRAIN_LIMIT`], or take longer than [`DRAIN_TIME`], is cut off.
async fn drain_refused_upload<S>(upload: &mut S, declared: Option<u64>)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, hyper::Error>> + Unpin,
{
    if declared.is_some_and(|length| length > DRAIN_LIMIT) {
        return;
    }
    let drain = async {
        let mut drained = 0u64;
        while let Some(Ok(chunk)) = upload.next().await {
            drained += chunk.len() as u64;
            if drained > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
}

/// Most bytes of a refused upload read before answering.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;
/// Longest time spent reading a refused upload before answering.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// `?consistent=true`: read through the leader after confirming it with a quorum.
fn consistent(request: &Request<Incoming>) -> bool {
    query_param(request.uri().query(), "consistent").is_some_and(|v| v == "true" || v == "1")
}

/// The table to answer a read from: the local replica, or a linearizable read.
async fn read_table(node: &Node, consistent: bool) -> Result<Arc<AppTable>, ApiError> {
    if !consistent {
        return Ok(node.table());
    }
    let cluster = node.cluster().ok_or_else(not_started)?;
    cluster.linearizable_table().await.map_err(unavailable)
}

async fn list_apps(
    node: &Node,
    grant: &Grant,
    consistent: bool,
) -> Result<Response<Body>, ApiError> {
    let table = read_table(node, consistent).await?;
    let apps: Vec<_> = table
        .apps()
        .filter(|app| grant.covers(&app.name))
        .map(|app| AppSummary::new(node, app))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "apps": apps })))
}

async fn show_app(node: &Node, name: &str, consistent: bool) -> Result<Response<Body>, ApiError> {
    let table = read_table(node, consistent).await?;
    let app = table.get(name).cloned().ok_or_else(|| no_such_app(name))?;
    let releases: Vec<_> = app.releases.iter().rev().map(ReleaseView::new).collect();
    let instances = node.worker.status(name).await;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "app": AppSummary::new(node, &app),
            "created_at": rfc3339(app.created_at_unix_ms),
            "releases": releases,
            "instances": instances,
        }),
    ))
}

/// `GET /v1/apps/NAME/logs?tail=N&follow=true`: the newest instance's output, streamed.
async fn logs(node: &Node, name: &str, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    node.app(name).ok_or_else(|| no_such_app(name))?;
    let tail = query_param(query, "tail")
        .and_then(|t| t.parse().ok())
        .unwrap_or(100);
    let follow = query_param(query, "follow").is_some_and(|f| f == "true" || f == "1");
    let stream = node
        .worker
        .logs(name, tail, follow)
        .await
        .map_err(|message| ApiError::new(StatusCode::CONFLICT, message))?;
    let frames = stream.map(|chunk| {
        chunk
            .map(http_body::Frame::data)
            .map_err(|e| Box::new(e) as shoal_proxy::body::BoxError)
    });
    let mut response = Response::new(http_body_util::StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

async fn delete_app(node: &Arc<Node>, name: &str) -> Result<Response<Body>, ApiError> {
    let cluster = node.cluster().ok_or_else(not_started)?;
    let applied = cluster
        .propose(Command::Delete {
            name: name.to_owned(),
        })
        .await
        .map_err(unavailable)?;
    collect_garbage(node).await;
    match applied {
        Applied::Deleted { app } => {
            info!(%app, "app deleted");
            Ok(json_response(StatusCode::OK, &json!({ "deleted": app })))
        }
        Applied::NotFound { app } => Err(no_such_app(&app)),
        other => Err(ApiError::internal(format!(
            "unexpected delete outcome {other:?}"
        ))),
    }
}

fn no_such_app(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no app named `{name}`"))
}

/// `GET /v1/apps/NAME/runs`: a cron job's runs, newest first.
async fn list_runs(node: &Node, name: &str, consistent: bool) -> Result<Response<Body>, ApiError> {
    let table = read_table(node, consistent).await?;
    let app = table.get(name).ok_or_else(|| no_such_app(name))?;
    Ok(json_response(StatusCode::OK, &RunsView::of(app)?))
}

/// `POST /v1/apps/NAME/runs`: commits a manual fire of the job's current release. The run is
/// pending when this answers; the orchestrator dispatches it.
async fn trigger_run(node: &Node, name: &str) -> Result<Response<Body>, ApiError> {
    let cluster = node.cluster().ok_or_else(not_started)?;
    // Read through the leader: right after a deploy this node's replica may still hold the
    // previous release, or no app at all.
    let table = cluster.linearizable_table().await.map_err(unavailable)?;
    let app = table.get(name).ok_or_else(|| no_such_app(name))?;
    if app.kind() != AppKind::Cron {
        return Err(not_a_job(name, app.kind()));
    }
    let command = manual_fire(name, app.current().version, unix_ms_now());
    let applied = cluster.propose(command).await.map_err(unavailable)?;
    let run = fired_run(applied, name)?;
    info!(job = %name, run = %run.run_id, release = run.release, "manual run fired");
    Ok(json_response(StatusCode::CREATED, &run))
}

/// The `Fire` of `shoal run`: not bound to the schedule, so the state machine neither checks
/// nor moves the job's last tick; its fence is zero because no orchestrator fired it.
fn manual_fire(job: &str, release: u64, now_ms: u64) -> Command {
    Command::Fire {
        job: job.to_owned(),
        fire: Fire {
            tick: Tick::try_from(now_ms / 1000).unwrap_or(Tick::MAX),
            attempt: 0,
            manual: true,
            fence: Fence { term: 0, index: 0 },
            release,
            at_ms: now_ms,
            skip: None,
        },
    }
}

/// The run a committed manual fire recorded, or why there is none.
fn fired_run(applied: Applied, name: &str) -> Result<Run, ApiError> {
    match applied {
        Applied::Fired { run, .. } => Ok(*run),
        Applied::NotFound { app } => Err(no_such_app(&app)),
        // The app was redeployed as another kind between our read and the commit.
        Applied::RunRefused {
            reason: RunRefusal::NotAJob(_),
            ..
        } => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("app `{name}` is not a cron job"),
        )),
        Applied::RunRefused { reason, .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("cannot start a run of `{name}`: {reason}"),
        )),
        other => Err(ApiError::internal(format!(
            "unexpected run outcome {other:?}"
        ))),
    }
}

fn not_a_job(name: &str, kind: AppKind) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("app `{name}` is a {kind} app, not a cron job"),
    )
}

/// What `GET /v1/apps/NAME/runs` answers, and `shoal runs` reads.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct RunsView {
    /// The job.
    pub job: String,
    /// The latest scheduled tick fired or skipped (Unix seconds), if any.
    pub last_tick: Option<Tick>,
    /// Its kept runs, newest first.
    pub runs: Vec<Run>,
}

impl RunsView {
    fn of(app: &App) -> Result<Self, ApiError> {
        if app.kind() != AppKind::Cron {
            return Err(not_a_job(&app.name, app.kind()));
        }
        Ok(Self {
            job: app.name.clone(),
            last_tick: app.runs.last_tick,
            runs: app.runs.runs.iter().rev().cloned().collect(),
        })
    }
}

/// One line of `shoal apps`.
#[derive(Serialize)]
struct AppSummary {
    name: String,
    kind: String,
    version: u64,
    digest: String,
    deployed_at: String,
    urls: Vec<String>,
}

impl AppSummary {
    fn new(node: &Node, app: &App) -> Self {
        let release = app.current();
        Self {
            name: app.name.clone(),
            kind: release.spec.kind.to_string(),
            version: release.version,
            digest: release.digest.clone(),
            deployed_at: rfc3339(release.deployed_at_unix_ms),
            urls: node.config.app_urls(&app.name, release.spec.kind),
        }
    }
}

/// A release as the API shows it.
#[derive(Serialize)]
struct ReleaseView<'a> {
    version: u64,
    digest: &'a str,
    bundle_bytes: u64,
    deployed_at: String,
    spec: &'a AppSpec,
}

impl<'a> ReleaseView<'a> {
    fn new(release: &'a Release) -> Self {
        Self {
            version: release.version,
            digest: &release.digest,
            bundle_bytes: release.bundle_bytes,
            deployed_at: rfc3339(release.deployed_at_unix_ms),
            spec: &release.spec,
        }
    }
}

fn rfc3339(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(value).expect("API views serialize");
    text.push(b'\n');
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: ApiError) -> Response<Body> {
    json_response(error.status, &json!({ "error": error.message }))
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
