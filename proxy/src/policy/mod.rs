//! Per-app security policy, checked by the ingress of whichever node receives a request.
//!
//! A [`Policy`] is replicated with the app (raft) and changes without a redeploy. Checking a
//! request against it is pure: [`Policy::client_ip`], [`Policy::ip_allowed`],
//! [`Policy::preflight`] and [`Policy::authenticate`] take the request's facts and the time from
//! their caller and return a decision; [`crate::gate`] runs them in order together with the
//! rate limiter and the body limit, and answers refusals.
//!
//! Order at the ingress: client address -> IP allowlist (403) -> rate limit (429) -> CORS
//! preflight -> credentials (401) -> body limit (413) -> the app; then security and CORS
//! headers on the way out.

mod passwords;
mod settings;
mod share;
mod values;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use passwords::{check_hash, hash_password, verify_password};
pub use settings::{check_user_name, CorsSettings, HeaderSettings, PolicyError, PolicySettings};
pub use share::{share_cookie_name, ShareCheck, ShareKey, SHARE_PARAM};
pub use values::{canonical, check_origin, parse_size, Cidr, RateLimit, Size};

/// Request bodies larger than this are refused unless the policy says otherwise.
pub const DEFAULT_MAX_BODY: u64 = 10 << 20;

/// Who may reach an app.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone (within the IP allowlist and rate limit).
    #[default]
    Public,
    /// Only requests with a bearer token, a basic-auth user or a valid share link.
    Private,
}

/// A named bearer token; only its SHA-256 is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BearerToken {
    /// The label it was created with (`ci`, `notebook`).
    pub name: String,
    /// SHA-256 of the token, lowercase hex.
    pub sha256: String,
    /// When it was created (Unix ms).
    pub created_at_unix_ms: u64,
}

/// A basic-auth user; only the Argon2 hash of the password is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicUser {
    /// The user name.
    pub name: String,
    /// Argon2 PHC string.
    pub hash: String,
}

/// CORS: which other origins' pages may call the app from a browser.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cors {
    /// `https://host[:port]` origins, or `*` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows.
    pub allow_methods: Vec<String>,
    /// Request headers a preflight allows (lowercase).
    pub allow_headers: Vec<String>,
    /// Whether the browser may send cookies and credentials (never with `*`).
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer (seconds).
    pub max_age_secs: u32,
}

impl Cors {
    /// Whether `origin` may call the app.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }
}

/// Security headers added to every response. `None` takes the default; `"off"` sends none.
/// A default is added only when the app did not set the header itself; a value the policy
/// names replaces the app's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityHeaders {
    /// `Content-Security-Policy` (default `frame-ancestors 'self'`).
    pub content_security_policy: Option<String>,
    /// `X-Frame-Options` (default `SAMEORIGIN`).
    pub frame_options: Option<String>,
    /// `Referrer-Policy` (default `strict-origin-when-cross-origin`).
    pub referrer_policy: Option<String>,
}

/// The value to send for one security header, and whether it replaces the app's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderRule {
    /// Send nothing.
    Off,
    /// Add this unless the app set the header.
    Default(&'static str),
    /// Send this, replacing the app's.
    Set(String),
}

impl SecurityHeaders {
    /// The rules, by header name; `X-Content-Type-Options: nosniff` is always a default.
    pub fn rules(&self) -> [(&'static str, HeaderRule); 4] {
        fn rule(value: &Option<String>, default: &'static str) -> HeaderRule {
            match value.as_deref() {
                None => HeaderRule::Default(default),
                Some(off) if off.eq_ignore_ascii_case("off") => HeaderRule::Off,
                Some(value) => HeaderRule::Set(value.to_owned()),
            }
        }
        [
            (
                "content-security-policy",
                rule(&self.content_security_policy, "frame-ancestors 'self'"),
            ),
            ("x-frame-options", rule(&self.frame_options, "SAMEORIGIN")),
            (
                "referrer-policy",
                rule(&self.referrer_policy, "strict-origin-when-cross-origin"),
            ),
            ("x-content-type-options", HeaderRule::Default("nosniff")),
        ]
    }
}

/// An app's security policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Public, or private to the credentials below.
    pub access: Access,
    /// Bearer tokens.
    pub tokens: Vec<BearerToken>,
    /// Basic-auth users.
    pub users: Vec<BasicUser>,
    /// The key share links are signed with (made when the first link is).
    pub share: Option<ShareKey>,
    /// When not empty, only clients in these networks get in.
    pub allow_ips: Vec<Cidr>,
    /// Proxies whose `X-Forwarded-For` names the client; everyone else's is ignored.
    pub trusted_proxies: Vec<Cidr>,
    /// Requests per client address, for the cluster as a whole.
    pub rate_limit: Option<RateLimit>,
    /// Largest request body (bytes).
    pub max_body: u64,
    /// Cross-origin browser access.
    pub cors: Option<Cors>,
    /// Security headers.
    pub headers: SecurityHeaders,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            access: Access::Public,
            tokens: Vec::new(),
            users: Vec::new(),
            share: None,
            allow_ips: Vec::new(),
            trusted_proxies: Vec::new(),
            rate_limit: None,
            max_body: DEFAULT_MAX_BODY,
            cors: None,
            headers: SecurityHeaders::default(),
        }
    }
}

/// Why a request was refused: a status, a short reason for the client and, for 401, the
/// challenge to send. Reasons say what to do, never what was close to right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 401, 403, 413 or 429.
    pub status: StatusCode,
    /// One short sentence.
    pub reason: &'static str,
    /// `WWW-Authenticate` for a 401.
    pub challenge: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str) -> Self {
        Self {
            status,
            reason,
            challenge: None,
        }
    }
}

/// Who a private app let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The app is public: no credential was needed.
    Anyone,
    /// A bearer token, by its name.
    Token(String),
    /// A basic-auth user.
    User(String),
    /// A share link, valid until this Unix second; `from_link` when it came in the query
    /// (so the grant is set as a cookie for the page's other requests).
    Share {
        /// Expiry (Unix seconds).
        expires_unix_s: u64,
        /// The token, as presented.
        token: String,
        /// It came in the query string, not the cookie.
        from_link: bool,
    },
}

impl Identity {
    /// The value of `x-shoal-auth` the app receives.
    pub fn header_value(&self) -> Option<String> {
        match self {
            Identity::Anyone => None,
            Identity::Token(name) => Some(format!("token:{name}")),
            Identity::User(name) => Some(format!("user:{name}")),
            Identity::Share { .. } => Some("share".to_owned()),
        }
    }
}

/// The outcome of checking credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Let in.
    Granted(Identity),
    /// A basic-auth password to verify against `hash` (slow: the caller does it off the async
    /// threads, and may cache a success).
    CheckPassword {
        /// The user.
        user: String,
        /// The presented password.
        password: String,
        /// The stored hash.
        hash: String,
    },
    /// Refused.
    Refused(Refusal),
}

/// A CORS preflight's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Not a preflight, or the app has no CORS policy: the request goes on.
    NotOne,
    /// Allowed: answer 204 with these headers.
    Allowed(Vec<(&'static str, String)>),
    /// The origin or method is not allowed: 403.
    Refused(Refusal),
}

impl Policy {
    /// The client's address: the socket's peer, unless the peer is a trusted proxy, in which
    /// case the nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                // Garbage in the chain: trust nothing before it.
                return client;
            };
            client = canonical(ip);
            if !self.is_trusted(client) {
                return client;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|cidr| cidr.contains(ip))
    }

    /// Whether the allowlist lets `client` in (an empty list lets everyone in).
    pub fn ip_allowed(&self, client: IpAddr) -> Result<(), Refusal> {
        if self.allow_ips.is_empty() || self.allow_ips.iter().any(|cidr| cidr.contains(client)) {
            Ok(())
        } else {
            Err(Refusal::new(StatusCode::FORBIDDEN, "forbidden"))
        }
    }

    /// Whether `declared` (the request's Content-Length) is over the body limit.
    pub fn body_allowed(&self, declared: Option<u64>) -> Result<(), Refusal> {
        match declared {
            Some(length) if length > self.max_body => Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            )),
            _ => Ok(()),
        }
    }

    /// Answers a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) when the app has a CORS policy.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Preflight {
        let Some(cors) = &self.cors else {
            return Preflight::NotOne;
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(origin), Some(requested)) =
            (header("origin"), header("access-control-request-method"))
        else {
            return Preflight::NotOne;
        };
        if method != Method::OPTIONS {
            return Preflight::NotOne;
        }
        let refused = Preflight::Refused(Refusal::new(
            StatusCode::FORBIDDEN,
            "cross-origin request not allowed",
        ));
        if !cors.allows(origin)
            || !cors
                .allow_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(requested))
        {
            return refused;
        }
        let requested_headers = header("access-control-request-headers").unwrap_or("");
        let all_allowed = requested_headers
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| cors.allow_headers.iter().any(|a| a.eq_ignore_ascii_case(h)));
        if !all_allowed {
            return refused;
        }
        let mut answer = self.cors_headers(origin);
        answer.push((
            "access-control-allow-methods",
            cors.allow_methods.join(", "),
        ));
        if !cors.allow_headers.is_empty() {
            answer.push((
                "access-control-allow-headers",
                cors.allow_headers.join(", "),
            ));
        }
        answer.push(("access-control-max-age", cors.max_age_secs.to_string()));
        Preflight::Allowed(answer)
    }

    /// The CORS headers of a response to a request from `origin` (none if not allowed).
    pub fn cors_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        let Some(cors) = &self.cors else {
            return Vec::new();
        };
        if !cors.allows(origin) {
            return Vec::new();
        }
        let wildcard = cors.allow_origins.iter().any(|o| o == "*");
        let mut headers = Vec::new();
        if wildcard && !cors.allow_credentials {
            headers.push(("access-control-allow-origin", "*".to_owned()));
        } else {
            headers.push(("access-control-allow-origin", origin.to_owned()));
            headers.push(("vary", "Origin".to_owned()));
        }
        if cors.allow_credentials {
            headers.push(("access-control-allow-credentials", "true".to_owned()));
        }
        headers
    }

    /// Checks the request's credentials for `app` at `now_unix_ms`: a bearer token or basic
    /// auth in `Authorization`, or a share link in the query or its cookie.
    pub fn authenticate(
        &self,
        app: &str,
        headers: &HeaderMap,
        query: Option<&str>,
        now_unix_ms: u64,
    ) -> Auth {
        if self.access == Access::Public {
            return Auth::Granted(Identity::Anyone);
        }
        let challenge = self.challenge(app);
        let refused = |reason| {
            Auth::Refused(Refusal {
                status: StatusCode::UNAUTHORIZED,
                reason,
                challenge: Some(challenge.clone()),
            })
        };
        // A share link in the query wins over a stale cookie.
        let link = query.and_then(|q| query_value(q, SHARE_PARAM));
        let cookie = cookie_value(headers, &share_cookie_name(app));
        let share = link.map(|t| (t, true)).or(cookie.map(|t| (t, false)));
        if let Some((token, from_link)) = share {
            let check = self.share.as_ref().map_or(ShareCheck::Invalid, |key| {
                key.check(app, &token, now_unix_ms)
            });
            match check {
                ShareCheck::Valid { expires_unix_s } => {
                    return Auth::Granted(Identity::Share {
                        expires_unix_s,
                        token,
                        from_link,
                    })
                }
                // A stale cookie must not hide a good Authorization header.
                _ if !from_link && headers.contains_key(AUTHORIZATION) => {}
                ShareCheck::Expired => return refused("share link expired"),
                ShareCheck::Invalid => return refused("invalid share link"),
            }
        }
        let Some(authorization) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return refused("authentication required");
        };
        let (scheme, credentials) = authorization
            .trim()
            .split_once(' ')
            .unwrap_or((authorization, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return match self.token_named(credentials) {
                Some(name) => Auth::Granted(Identity::Token(name)),
                None => refused("invalid credentials"),
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD
                .decode(credentials)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return refused("invalid credentials");
            };
            return match self.users.iter().find(|u| u.name == user) {
                Some(found) => Auth::CheckPassword {
                    user: user.to_owned(),
                    password: password.to_owned(),
                    hash: found.hash.clone(),
                },
                None => refused("invalid credentials"),
            };
        }
        refused("invalid credentials")
    }

    /// The name of the token whose hash matches `presented`, comparing every hash in full.
    fn token_named(&self, presented: &str) -> Option<String> {
        let digest = hex::encode(Sha256::digest(presented.as_bytes()));
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.sha256.as_bytes().ct_eq(digest.as_bytes())) {
                found = Some(token.name.clone());
            }
        }
        found
    }

    /// `WWW-Authenticate` for a refused request: Basic when users exist (browsers then ask).
    fn challenge(&self, app: &str) -> String {
        if self.users.is_empty() {
            format!("Bearer realm=\"{app}\"")
        } else {
            format!("Basic realm=\"{app}\", charset=\"UTF-8\"")
        }
    }
}

/// SHA-256 of a bearer token, as stored.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The value of `name` in a query string (not percent-decoded: share tokens need none).
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The query without the parameter `name` (None when nothing is left).
pub fn query_without(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect();
    let kept = kept.join("&");
    (!kept.is_empty()).then_some(kept)
}

/// The value of the cookie `name` among the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_owned())
}

/// The `Cookie` header without the cookie `name` (None when nothing is left).
pub fn cookies_without(headers: &HeaderMap, name: &str) -> Option<String> {
    let kept: Vec<&str> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}
