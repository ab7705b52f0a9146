//! The ingress's policy gate: runs an app's [`Policy`] checks in order on a request, with the
//! node's rate limiter and password cache, and dresses the response on its way out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{AUTHORIZATION, COOKIE, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::body::Body;
use crate::ingress::text;
use crate::limits::declared_length;
use crate::policy::{
    cookies_without, query_without, share_cookie_name, verify_password, Auth, HeaderRule, Identity,
    Policy, Preflight, Refusal, SHARE_PARAM,
};
use crate::ratelimit::RateLimiter;
use crate::route::{prefix_for, Mode};

/// The header that tells the app who the policy let in (`token:NAME`, `user:NAME`, `share`).
/// Whatever a client sends under this name is dropped.
pub const AUTH_HEADER: &str = "x-shoal-auth";

/// A verified password is trusted this long before it is checked again.
const PASSWORD_CACHE_TTL_MS: u64 = 5 * 60 * 1000;
/// Verified passwords remembered at most.
const PASSWORD_CACHE_ENTRIES: usize = 10_000;
/// Password checks run at once (each takes tens of milliseconds of a core).
const PASSWORD_CHECKS: usize = 2;

/// What the gate decided for a request it let through.
#[derive(Debug)]
pub struct Admitted {
    policy: Arc<Policy>,
    origin: Option<String>,
    set_cookie: Option<HeaderValue>,
}

impl Admitted {
    /// The largest request body the app accepts.
    pub fn max_body(&self) -> u64 {
        self.policy.max_body
    }

    /// Adds the policy's security and CORS headers (and a share link's cookie) to `response`.
    pub fn finish(&self, mut response: Response<Body>) -> Response<Body> {
        dress(&self.policy, self.origin.as_deref(), &mut response);
        if let Some(cookie) = &self.set_cookie {
            response.headers_mut().append(SET_COOKIE, cookie.clone());
        }
        response
    }
}

/// The checks one node runs for every app: shared state across requests.
#[derive(Debug)]
pub struct Gate {
    limiter: Arc<RateLimiter>,
    verified: Mutex<HashMap<[u8; 32], u64>>,
    checks: Semaphore,
}

impl Gate {
    /// A gate counting rates in `limiter`.
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self {
            limiter,
            verified: Mutex::new(HashMap::new()),
            checks: Semaphore::new(PASSWORD_CHECKS),
        }
    }

    /// The rate limiter (the node publishes its counts through gossip).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// Runs `policy` on `request` for `app` at `now_unix_ms`. On success the request is ready
    /// for the app: credentials the policy consumed are removed and [`AUTH_HEADER`] names who
    /// got in. On refusal (or a CORS preflight, answered here) the response to send.
    pub async fn admit<B>(
        &self,
        app: &str,
        policy: &Arc<Policy>,
        mode: Mode,
        request: &mut Request<B>,
        peer: SocketAddr,
        now_unix_ms: u64,
    ) -> Result<Admitted, Response<Body>> {
        // Only a CORS policy answers to the Origin.
        let origin = policy
            .cors
            .as_ref()
            .and_then(|_| request.headers().get("origin"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let refuse = |refusal: Refusal, retry_after: Option<Duration>| {
            let mut response = refusal_response(&refusal, retry_after);
            dress(policy, origin.as_deref(), &mut response);
            response
        };
        let client: IpAddr = policy.client_ip(peer.ip(), request.headers());
        policy.ip_allowed(client).map_err(|r| refuse(r, None))?;
        if let Some(limit) = policy.rate_limit {
            if let Err(wait) = self.limiter.check(app, client, limit, now_unix_ms) {
                let refusal = Refusal {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    reason: "too many requests",
                    challenge: None,
                };
                return Err(refuse(refusal, Some(wait)));
            }
        }
        match policy.preflight(request.method(), request.headers()) {
            Preflight::NotOne => {}
            Preflight::Refused(refusal) => return Err(refuse(refusal, None)),
            Preflight::Allowed(headers) => {
                let mut response = Response::new(crate::body::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                for (name, value) in headers {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        response.headers_mut().append(name, value);
                    }
                }
                return Err(response);
            }
        }
        let query = request.uri().query();
        let identity = match policy.authenticate(app, request.headers(), query, now_unix_ms) {
            Auth::Granted(identity) => identity,
            Auth::Refused(refusal) => return Err(refuse(refusal, None)),
            Auth::CheckPassword {
                user,
                password,
                hash,
            } => {
                if self
                    .password_ok(app, &user, password, hash, now_unix_ms)
                    .await
                {
                    Identity::User(user)
                } else {
                    let refusal = Refusal {
                        status: StatusCode::UNAUTHORIZED,
                        reason: "invalid credentials",
                        challenge: Some(format!("Basic realm=\"{app}\", charset=\"UTF-8\"")),
                    };
                    return Err(refuse(refusal, None));
                }
            }
        };
        policy
            .body_allowed(declared_length(request.headers()))
            .map_err(|r| refuse(r, None))?;
        let set_cookie = prepare_for_app(app, mode, &identity, request, now_unix_ms);
        Ok(Admitted {
            policy: policy.clone(),
            origin,
            set_cookie,
        })
    }

    /// Verifies a basic-auth password (off the async threads, a few at a time), remembering
    /// a success for a while so a page's many requests cost one check.
    async fn password_ok(
        &self,
        app: &str,
        user: &str,
        password: String,
        hash: String,
        now_unix_ms: u64,
    ) -> bool {
        let key: [u8; 32] = Sha256::new()
            .chain_update(app.as_bytes())
            .chain_update([0])
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|until| *until > now_unix_ms)
        {
            return true;
        }
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if ok {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= PASSWORD_CACHE_ENTRIES {
                verified.retain(|_, until| *until > now_unix_ms);
                if verified.len() >= PASSWORD_CACHE_ENTRIES {
                    verified.clear();
                }
            }
            verified.insert(key, now_unix_ms + PASSWORD_CACHE_TTL_MS);
        }
        ok
    }
}

/// Strips what the policy consumed and what a client must not set, and names the identity.
/// Returns the share cookie to set when a share link came in the query.
fn prepare_for_app<B>(
    app: &str,
    mode: Mode,
    identity: &Identity,
    request: &mut Request<B>,
    now_unix_ms: u64,
) -> Option<HeaderValue> {
    let headers = request.headers_mut();
    headers.remove(AUTH_HEADER);
    if let Some(value) = identity
        .header_value()
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        headers.insert(HeaderName::from_static(AUTH_HEADER), value);
    }
    match identity {
        Identity::Anyone => None,
        Identity::Token(_) | Identity::User(_) => {
            headers.remove(AUTHORIZATION);
            None
        }
        Identity::Share {
            expires_unix_s,
            token,
            from_link,
        } => {
            let cookie = share_cookie_name(app);
            match cookies_without(headers, &cookie) {
                Some(kept) => {
                    if let Ok(value) = HeaderValue::from_str(&kept) {
                        headers.insert(COOKIE, value);
                    }
                }
                None => {
                    headers.remove(COOKIE);
                }
            }
            if !from_link {
                return None;
            }
            strip_share_param(request);
            let path = match mode {
                Mode::Host => "/".to_owned(),
                Mode::Prefix => format!("{}/", prefix_for(app)),
            };
            let max_age = (expires_unix_s * 1000).saturating_sub(now_unix_ms) / 1000;
            HeaderValue::from_str(&format!(
                "{cookie}={token}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax"
            ))
            .ok()
        }
    }
}

fn strip_share_param<B>(request: &mut Request<B>) {
    let uri = request.uri();
    let Some(query) = uri.query() else {
        return;
    };
    let path = uri.path();
    let rebuilt = match query_without(query, SHARE_PARAM) {
        Some(rest) => format!("{path}?{rest}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(path_and_query) = rebuilt.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
}

/// A refusal as a short plain-text response.
fn refusal_response(refusal: &Refusal, retry_after: Option<Duration>) -> Response<Body> {
    let mut response = text(refusal.status, refusal.reason);
    let headers = response.headers_mut();
    if let Some(challenge) = refusal
        .challenge
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        headers.insert(WWW_AUTHENTICATE, challenge);
    }
    if let Some(wait) = retry_after {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// Adds the security headers and, for an allowed origin, the CORS headers.
fn dress(policy: &Policy, origin: Option<&str>, response: &mut Response<Body>) {
    let headers = response.headers_mut();
    for (name, rule) in policy.headers.rules() {
        let name = HeaderName::from_static(name);
        match rule {
            HeaderRule::Off => {}
            HeaderRule::Default(value) => {
                if !headers.contains_key(&name) {
                    headers.insert(name, HeaderValue::from_static(value));
                }
            }
            HeaderRule::Set(value) => {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
        }
    }
    if let Some(origin) = origin {
        for (name, value) in policy.cors_headers(origin) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                if name == "vary" {
                    headers.append(name, value);
                } else {
                    headers.insert(name, value);
                }
            }
        }
    }
}
