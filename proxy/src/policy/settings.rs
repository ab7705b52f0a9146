//! The `[policy]` table of `shoal.toml`: the settings a release brings along.
//!
//! Every field is optional: a deploy sets what its `shoal.toml` names and leaves the rest of
//! the app's policy as `shoal policy` last left it. Credentials other than basic-auth hashes
//! (bearer tokens, the share key) are never in a manifest: they are made by the admin API.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use super::values::{check_origin, Cidr, RateLimit, Size};
use super::{check_hash, Access, BasicUser, Cors, Policy, SecurityHeaders};

/// Largest body limit a policy may set.
const MAX_BODY_LIMIT: u64 = 16 << 30;

/// A policy setting that cannot be used, in one sentence.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// `[policy]` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// `"public"` or `"private"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Networks allowed in (`[]` for anyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_ips: Option<Vec<Cidr>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<Cidr>>,
    /// `"100/min"`, or `"off"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// `"10MiB"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Size>,
    /// `[policy.cors]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSettings>,
    /// `[policy.headers]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderSettings>,
    /// `[policy.users]`: user name = Argon2 hash (`shoal policy NAME --add-user` makes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<BTreeMap<String, String>>,
}

/// `[policy.cors]` as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed (`["*"]` for any; `[]` turns CORS off).
    pub allow_origins: Vec<String>,
    /// Default `GET, HEAD, POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    /// Default `content-type, authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// `"10m"` (default); at most a day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// `[policy.headers]` as written; `"off"` sends none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSettings {
    /// `Content-Security-Policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_security_policy: Option<String>,
    /// `X-Frame-Options`: `DENY`, `SAMEORIGIN` or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_options: Option<String>,
    /// `Referrer-Policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_policy: Option<String>,
}

impl PolicySettings {
    /// Checks everything that parsing alone does not.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.rate_limit()?;
        if let Some(size) = self.max_body {
            if size.0 > MAX_BODY_LIMIT {
                return Err(PolicyError(format!(
                    "`max_body` is at most {}",
                    Size(MAX_BODY_LIMIT)
                )));
            }
        }
        if let Some(cors) = &self.cors {
            cors.to_cors()?;
        }
        if let Some(headers) = &self.headers {
            headers.to_headers()?;
        }
        if let Some(users) = &self.users {
            for (name, hash) in users {
                check_user_name(name)?;
                check_hash(hash).map_err(|error| PolicyError(format!("user `{name}`: {error}")))?;
            }
        }
        Ok(())
    }

    /// `rate_limit`: `Some(None)` for `"off"`.
    fn rate_limit(&self) -> Result<Option<Option<RateLimit>>, PolicyError> {
        match self.rate_limit.as_deref() {
            None => Ok(None),
            Some(off) if off.eq_ignore_ascii_case("off") => Ok(Some(None)),
            Some(text) => text
                .parse()
                .map(|limit| Some(Some(limit)))
                .map_err(|error| PolicyError(format!("`rate_limit`: {error}"))),
        }
    }

    /// Sets the fields these settings name on `policy`. Call [`Self::validate`] first;
    /// anything invalid is left as it was.
    pub fn apply_to(&self, policy: &mut Policy) {
        if let Some(access) = self.access {
            policy.access = access;
        }
        if let Some(allow_ips) = &self.allow_ips {
            policy.allow_ips = allow_ips.clone();
        }
        if let Some(trusted) = &self.trusted_proxies {
            policy.trusted_proxies = trusted.clone();
        }
        if let Ok(Some(limit)) = self.rate_limit() {
            policy.rate_limit = limit;
        }
        if let Some(size) = self.max_body {
            policy.max_body = size.0;
        }
        if let Some(cors) = &self.cors {
            if let Ok(cors) = cors.to_cors() {
                policy.cors = cors;
            }
        }
        if let Some(headers) = &self.headers {
            if let Ok(headers) = headers.to_headers() {
                policy.headers = headers;
            }
        }
        if let Some(users) = &self.users {
            policy.users = users
                .iter()
                .map(|(name, hash)| BasicUser {
                    name: name.clone(),
                    hash: hash.clone(),
                })
                .collect();
        }
    }
}

impl CorsSettings {
    /// The CORS policy (None when no origin is allowed).
    pub fn to_cors(&self) -> Result<Option<Cors>, PolicyError> {
        let error = |message: String| PolicyError(format!("`cors`: {message}"));
        for origin in &self.allow_origins {
            check_origin(origin).map_err(error)?;
        }
        if self.allow_origins.is_empty() {
            return Ok(None);
        }
        let allow_credentials = self.allow_credentials.unwrap_or(false);
        if allow_credentials && self.allow_origins.iter().any(|o| o == "*") {
            return Err(error(
                "`allow_credentials` needs the origins named: browsers refuse `*` with credentials"
                    .to_owned(),
            ));
        }
        let allow_methods = match &self.allow_methods {
            Some(methods) => methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map(|m| m.to_string())
                        .map_err(|_| error(format!("`{m}` is not an HTTP method")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => vec!["GET".into(), "HEAD".into(), "POST".into()],
        };
        let allow_headers = match &self.allow_headers {
            Some(headers) => headers
                .iter()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map(|h| h.to_string())
                        .map_err(|_| error(format!("`{h}` is not a header name")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => vec!["content-type".into(), "authorization".into()],
        };
        let max_age = match &self.max_age {
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|d| *d <= Duration::from_secs(86_400))
                .ok_or_else(|| {
                    error(format!(
                        "`max_age = \"{text}\"`: write a duration up to 1d, like `10m`"
                    ))
                })?,
            None => Duration::from_secs(600),
        };
        Ok(Some(Cors {
            allow_origins: self.allow_origins.clone(),
            allow_methods,
            allow_headers,
            allow_credentials,
            max_age_secs: max_age.as_secs() as u32,
        }))
    }
}

impl HeaderSettings {
    /// The security headers these settings give.
    pub fn to_headers(&self) -> Result<SecurityHeaders, PolicyError> {
        let check = |name: &str, value: &Option<String>| match value {
            Some(value) if HeaderValue::from_str(value).is_err() || value.trim().is_empty() => {
                Err(PolicyError(format!(
                    "`headers.{name}` must be a non-empty header value on one line"
                )))
            }
            _ => Ok(value.clone()),
        };
        let frame_options = check("frame_options", &self.frame_options)?;
        if let Some(value) = &frame_options {
            if !["DENY", "SAMEORIGIN", "OFF"].contains(&value.to_ascii_uppercase().as_str()) {
                return Err(PolicyError(
                    "`headers.frame_options` is `DENY`, `SAMEORIGIN` or `off`".to_owned(),
                ));
            }
        }
        Ok(SecurityHeaders {
            content_security_policy: check(
                "content_security_policy",
                &self.content_security_policy,
            )?,
            frame_options,
            referrer_policy: check("referrer_policy", &self.referrer_policy)?,
        })
    }
}

/// A basic-auth user name: what a browser's prompt can send.
pub fn check_user_name(name: &str) -> Result<(), PolicyError> {
    if name.is_empty()
        || name.len() > 64
        || name.contains(':')
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(PolicyError(format!(
            "`{name}` is not a user name: 1-64 characters, no colon, spaces or control characters"
        )));
    }
    Ok(())
}
