//! The admin API's policy, share-link and deploy-token endpoints.
//!
//! - `GET /v1/apps/NAME/policy`: the app's policy, without secrets.
//! - `PATCH /v1/apps/NAME/policy`: change it (a [`PolicyChange`]); new bearer tokens are made
//!   here and shown once, in the answer.
//! - `POST /v1/apps/NAME/share` `{"ttl": "1h"}`: a signed share link.
//! - `GET|POST /v1/tokens`, `DELETE /v1/tokens/ID`: deploy tokens (admin token only).
//!
//! A change is read from the leader, applied to a copy, and committed as `SetPolicy` with the
//! version it was read at; if another change landed in between, it is read and applied again.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shoal_proxy::body::Body;
use shoal_proxy::policy::{
    check_hash, check_user_name, hash_password, token_digest, Access, BasicUser, BearerToken, Cidr,
    CorsSettings, HeaderSettings, Policy, PolicySettings, ShareKey, Size, SHARE_PARAM,
};
use subtle::ConstantTimeEq;
use tracing::info;

use super::{json_response, no_such_app, not_started, rfc3339, unavailable, ApiError};
use crate::node::{unix_ms_now, Node};
use crate::state::{App, AppTable, Applied, Command, DeployToken};

/// Longest body of a policy change or token request.
const MAX_JSON: usize = 64 * 1024;
/// Share links live at most this long.
const MAX_SHARE_TTL: Duration = Duration::from_secs(366 * 86_400);
/// Attempts at a policy change that keeps meeting concurrent changes.
const ATTEMPTS: usize = 5;

/// What a request may do with the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Grant {
    /// Everything: the cluster's admin token.
    Admin,
    /// One app's endpoints: a deploy token for it.
    App(String),
}

impl Grant {
    /// Whether this grant covers `app`.
    pub(super) fn covers(&self, app: &str) -> bool {
        match self {
            Grant::Admin => true,
            Grant::App(granted) => granted == app,
        }
    }

    /// Refuses unless this is the admin token.
    pub(super) fn admin_only(&self) -> Result<(), ApiError> {
        match self {
            Grant::Admin => Ok(()),
            Grant::App(app) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this deploy token grants only app `{app}`; this needs the admin token"),
            )),
        }
    }

    /// Refuses unless this grant covers `app`.
    pub(super) fn check(&self, app: &str) -> Result<(), ApiError> {
        if self.covers(app) {
            Ok(())
        } else {
            self.admin_only()
        }
    }
}

/// The grant of a presented token: the admin token, or a deploy token in the table.
pub(super) fn grant_of(node: &Node, presented: &str) -> Option<Grant> {
    if node.token.matches(presented) {
        return Some(Grant::Admin);
    }
    let id = deploy_token_id(presented)?;
    let table = node.table();
    let token = table.deploy_tokens().get(id)?;
    let digest = token_digest(presented);
    bool::from(digest.as_bytes().ct_eq(token.sha256.as_bytes()))
        .then(|| Grant::App(token.app.clone()))
}

/// `shoal_dt_<id>_<secret>` -> `<id>`.
fn deploy_token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("shoal_dt_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some(id)
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    hex::encode(buffer)
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let body = http_body_util::Limited::new(request.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body must be JSON of at most {MAX_JSON} bytes"),
            )
        })?
        .to_bytes();
    let body = if body.is_empty() {
        &b"{}"[..]
    } else {
        &body[..]
    };
    serde_json::from_slice(body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, format!("bad JSON: {error}")))
}

/// An app's policy as the API shows it: no hashes, no keys.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyView {
    /// The app.
    pub app: String,
    /// Bumped by each change.
    pub version: u64,
    /// `public` or `private`.
    pub access: Access,
    /// Bearer tokens by name.
    pub tokens: Vec<TokenView>,
    /// Basic-auth user names.
    pub users: Vec<String>,
    /// Whether share links can be made (and which key signs them).
    pub share_key_version: Option<u32>,
    /// Networks allowed in (empty: any).
    pub allow_ips: Vec<Cidr>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Per client, for the whole cluster.
    pub rate_limit: Option<String>,
    /// Largest request body (bytes).
    pub max_body: u64,
    /// CORS, when on.
    pub cors: Option<serde_json::Value>,
    /// Security headers as set (`null`: the default).
    pub headers: serde_json::Value,
}

/// A bearer token as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenView {
    /// Its name.
    pub name: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

impl PolicyView {
    fn of(app: &App) -> Self {
        let policy = &app.policy;
        Self {
            app: app.name.clone(),
            version: app.policy_version,
            access: policy.access,
            tokens: policy
                .tokens
                .iter()
                .map(|t| TokenView {
                    name: t.name.clone(),
                    created_at: rfc3339(t.created_at_unix_ms),
                })
                .collect(),
            users: policy.users.iter().map(|u| u.name.clone()).collect(),
            share_key_version: policy.share.as_ref().map(|key| key.version),
            allow_ips: policy.allow_ips.clone(),
            trusted_proxies: policy.trusted_proxies.clone(),
            rate_limit: policy.rate_limit.map(|r| r.to_string()),
            max_body: policy.max_body,
            cors: policy
                .cors
                .as_ref()
                .map(|c| serde_json::to_value(c).unwrap_or_default()),
            headers: serde_json::to_value(&policy.headers).unwrap_or_default(),
        }
    }
}

/// A change to an app's policy (`PATCH /v1/apps/NAME/policy`). Absent fields stay as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// `public` or `private`.
    #[serde(default)]
    pub access: Option<Access>,
    /// Make bearer tokens with these names (shown once in the answer). Makes a public app
    /// private unless `access` says otherwise.
    #[serde(default)]
    pub add_tokens: Vec<String>,
    /// Revoke the bearer tokens with these names.
    #[serde(default)]
    pub revoke_tokens: Vec<String>,
    /// Add (or replace) basic-auth users. Makes a public app private unless `access` says
    /// otherwise.
    #[serde(default)]
    pub add_users: Vec<NewUser>,
    /// Remove these users.
    #[serde(default)]
    pub remove_users: Vec<String>,
    /// Replace the IP allowlist (`[]`: anyone).
    #[serde(default)]
    pub allow_ips: Option<Vec<Cidr>>,
    /// Replace the trusted proxies.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<Cidr>>,
    /// `"100/min"` or `"off"`.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// `"10MiB"`.
    #[serde(default)]
    pub max_body: Option<Size>,
    /// Replace the CORS settings (`allow_origins: []` turns CORS off).
    #[serde(default)]
    pub cors: Option<CorsSettings>,
    /// Replace the security header settings.
    #[serde(default)]
    pub headers: Option<HeaderSettings>,
    /// Make a new share key: every share link made before stops working.
    #[serde(default)]
    pub rotate_share_key: bool,
}

/// A basic-auth user to add: a password (hashed here) or an Argon2 hash made elsewhere.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// The user name.
    pub name: String,
    /// The password.
    #[serde(default)]
    pub password: Option<String>,
    /// Or its Argon2 PHC hash.
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// Checks a token name.
fn check_label(kind: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{name}` is not a {kind} name: 1-64 letters, digits, `-`, `_` or `.`"),
        ))
    }
}

/// Hashes new users' passwords (slow: run it on a blocking thread).
fn hash_users(users: Vec<NewUser>) -> Result<Vec<BasicUser>, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    users
        .into_iter()
        .map(|user| {
            check_user_name(&user.name).map_err(|e| bad(e.to_string()))?;
            let hash = match (user.password, user.password_hash) {
                (Some(password), None) if !password.is_empty() => {
                    hash_password(&password).map_err(bad)?
                }
                (None, Some(hash)) => {
                    check_hash(&hash).map_err(|e| bad(format!("user `{}`: {e}", user.name)))?;
                    hash
                }
                _ => {
                    return Err(bad(format!(
                        "user `{}`: give a non-empty `password` or a `password_hash`",
                        user.name
                    )))
                }
            };
            Ok(BasicUser {
                name: user.name,
                hash,
            })
        })
        .collect()
}

impl PolicyChange {
    /// The settings part, checked.
    fn settings(&self) -> Result<PolicySettings, ApiError> {
        let settings = PolicySettings {
            access: None,
            allow_ips: self.allow_ips.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            rate_limit: self.rate_limit.clone(),
            max_body: self.max_body,
            cors: self.cors.clone(),
            headers: self.headers.clone(),
            users: None,
        };
        settings
            .validate()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        Ok(settings)
    }

    /// Applies the change to `policy`; returns the secrets of the tokens it made.
    fn apply(
        &self,
        policy: &mut Policy,
        settings: &PolicySettings,
        users: &[BasicUser],
        now: u64,
    ) -> Result<Vec<(String, String)>, ApiError> {
        settings.apply_to(policy);
        for name in &self.revoke_tokens {
            let before = policy.tokens.len();
            policy.tokens.retain(|t| &t.name != name);
            if policy.tokens.len() == before {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no token named `{name}`"),
                ));
            }
        }
        for name in &self.remove_users {
            let before = policy.users.len();
            policy.users.retain(|u| &u.name != name);
            if policy.users.len() == before {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no user named `{name}`"),
                ));
            }
        }
        let mut secrets = Vec::new();
        for name in &self.add_tokens {
            check_label("token", name)?;
            if policy.tokens.iter().any(|t| &t.name == name) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("a token named `{name}` exists: revoke it first"),
                ));
            }
            let secret = format!("shoal_at_{}", random_hex(32));
            policy.tokens.push(BearerToken {
                name: name.clone(),
                sha256: token_digest(&secret),
                created_at_unix_ms: now,
            });
            secrets.push((name.clone(), secret));
        }
        for user in users {
            policy.users.retain(|u| u.name != user.name);
            policy.users.push(user.clone());
        }
        if self.rotate_share_key {
            policy.share = Some(new_share_key(policy.share.as_ref()));
        }
        let adds_credentials = !self.add_tokens.is_empty() || !users.is_empty();
        match self.access {
            Some(access) => policy.access = access,
            None if adds_credentials => policy.access = Access::Private,
            None => {}
        }
        Ok(secrets)
    }
}

fn new_share_key(previous: Option<&ShareKey>) -> ShareKey {
    ShareKey {
        version: previous.map_or(1, |key| key.version + 1),
        key: random_hex(32),
    }
}

/// Reads the app from the leader, changes a copy of its policy with `change`, and commits it;
/// again if another change got in between. Returns the app as committed and what `change`
/// returned.
async fn change_policy<T>(
    node: &Node,
    name: &str,
    mut change: impl FnMut(&mut Policy) -> Result<T, ApiError>,
) -> Result<(App, T), ApiError> {
    let cluster = node.cluster().ok_or_else(not_started)?;
    for _ in 0..ATTEMPTS {
        let table = cluster.linearizable_table().await.map_err(unavailable)?;
        let app = table.get(name).ok_or_else(|| no_such_app(name))?;
        let mut policy = app.policy.clone();
        let outcome = change(&mut policy)?;
        let command = Command::SetPolicy {
            app: name.to_owned(),
            policy: Box::new(policy.clone()),
            base_version: app.policy_version,
        };
        match cluster.propose(command).await.map_err(unavailable)? {
            Applied::PolicySet { version, .. } => {
                let mut app = app.clone();
                app.policy = policy;
                app.policy_version = version;
                return Ok((app, outcome));
            }
            Applied::PolicyConflict { .. } => continue,
            Applied::NotFound { app } => return Err(no_such_app(&app)),
            other => {
                return Err(ApiError::internal(format!(
                    "unexpected policy outcome {other:?}"
                )))
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "the policy kept changing under this request; try again",
    ))
}

/// `GET /v1/apps/NAME/policy`.
pub(super) fn show(name: &str, table: &AppTable) -> Result<Response<Body>, ApiError> {
    let app = table.get(name).ok_or_else(|| no_such_app(name))?;
    Ok(json_response(StatusCode::OK, &PolicyView::of(app)))
}

/// `PATCH /v1/apps/NAME/policy`.
pub(super) async fn patch(
    node: &Node,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let change: PolicyChange = read_json(request).await?;
    let settings = change.settings()?;
    let users = tokio::task::spawn_blocking({
        let users = change.add_users.clone();
        move || hash_users(users)
    })
    .await
    .map_err(ApiError::internal)??;
    let now = unix_ms_now();
    let (app, secrets) = change_policy(node, name, |policy| {
        change.apply(policy, &settings, &users, now)
    })
    .await?;
    info!(app = %name, version = app.policy_version, "policy changed");
    let tokens: serde_json::Map<String, serde_json::Value> = secrets
        .into_iter()
        .map(|(name, secret)| (name, serde_json::Value::String(secret)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "policy": PolicyView::of(&app), "new_tokens": tokens }),
    ))
}

/// `POST /v1/apps/NAME/share` `{"ttl": "1h"}`.
pub(super) async fn share(
    node: &Node,
    name: &str,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ShareRequest {
        #[serde(default)]
        ttl: Option<String>,
    }
    let asked: ShareRequest = read_json(request).await?;
    let ttl = match asked.ttl.as_deref() {
        None => Duration::from_secs(3600),
        Some(text) => humantime::parse_duration(text).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`ttl = \"{text}\"` is not a duration: write `1h`, `30m`, `7d`"),
            )
        })?,
    };
    if ttl < Duration::from_secs(1) || ttl > MAX_SHARE_TTL {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a share link lives from 1 second to 366 days",
        ));
    }
    let table = node
        .cluster()
        .ok_or_else(not_started)?
        .linearizable_table()
        .await
        .map_err(unavailable)?;
    let app = table.get(name).ok_or_else(|| no_such_app(name))?.clone();
    // The first link makes the app's share key.
    let app = match app.policy.share {
        Some(_) => app,
        None => {
            change_policy(node, name, |policy| {
                if policy.share.is_none() {
                    policy.share = Some(new_share_key(None));
                }
                Ok(())
            })
            .await?
            .0
        }
    };
    let key = app
        .policy
        .share
        .as_ref()
        .ok_or_else(|| ApiError::internal("the share key vanished"))?;
    let expires_unix_s = (unix_ms_now() + ttl.as_millis() as u64) / 1000;
    let token = key.sign(name, expires_unix_s);
    let urls: Vec<String> = node
        .config
        .app_urls(name, app.kind())
        .into_iter()
        .map(|url| format!("{url}?{SHARE_PARAM}={token}"))
        .collect();
    info!(app = %name, ttl_secs = ttl.as_secs(), "share link made");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "app": name,
            "token": token,
            "expires_at": rfc3339(expires_unix_s * 1000),
            "urls": urls,
            "public": app.policy.access == Access::Public,
        }),
    ))
}

/// A deploy token as the API lists it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeployTokenView {
    /// Its id (the token's public part).
    pub id: String,
    /// The app it grants.
    pub app: String,
    /// Its label.
    pub name: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
}

impl DeployTokenView {
    fn of(token: &DeployToken) -> Self {
        Self {
            id: token.id.clone(),
            app: token.app.clone(),
            name: token.name.clone(),
            created_at: rfc3339(token.created_at_unix_ms),
        }
    }
}

/// `GET /v1/tokens`.
pub(super) fn list_tokens(table: &AppTable) -> Result<Response<Body>, ApiError> {
    let tokens: Vec<DeployTokenView> = table
        .deploy_tokens()
        .values()
        .map(DeployTokenView::of)
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "tokens": tokens })))
}

/// `POST /v1/tokens` `{"app": "NAME", "name": "notebook"}`: the token is in the answer, once.
pub(super) async fn create_token(
    node: &Node,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewToken {
        app: String,
        #[serde(default)]
        name: Option<String>,
    }
    let asked: NewToken = read_json(request).await?;
    if !shoal_proxy::route::is_valid_app_name(&asked.app) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a valid app name", asked.app),
        ));
    }
    let name = asked.name.unwrap_or_else(|| "deploy".to_owned());
    check_label("token", &name)?;
    let cluster = node.cluster().ok_or_else(not_started)?;
    let id = random_hex(6);
    let secret = format!("shoal_dt_{id}_{}", random_hex(32));
    let token = DeployToken {
        id: id.clone(),
        app: asked.app.clone(),
        name,
        sha256: token_digest(&secret),
        created_at_unix_ms: unix_ms_now(),
    };
    let view = DeployTokenView::of(&token);
    match cluster
        .propose(Command::AddDeployToken { token })
        .await
        .map_err(unavailable)?
    {
        Applied::TokenAdded { .. } => {}
        other => {
            return Err(ApiError::internal(format!(
                "unexpected token outcome {other:?}"
            )))
        }
    }
    info!(app = %asked.app, id = %id, "deploy token made");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "token": secret, "deploy_token": view }),
    ))
}

/// `DELETE /v1/tokens/ID`.
pub(super) async fn revoke_token(node: &Node, id: &str) -> Result<Response<Body>, ApiError> {
    let cluster = node.cluster().ok_or_else(not_started)?;
    match cluster
        .propose(Command::RevokeDeployToken { id: id.to_owned() })
        .await
        .map_err(unavailable)?
    {
        Applied::TokenRevoked { id } => {
            info!(%id, "deploy token revoked");
            Ok(json_response(StatusCode::OK, &json!({ "revoked": id })))
        }
        Applied::TokenRefused { id } => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no deploy token with id `{id}`"),
        )),
        other => Err(ApiError::internal(format!(
            "unexpected token outcome {other:?}"
        ))),
    }
}
