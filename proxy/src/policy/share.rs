//! Signed share links: `?shoal_share=<expiry>.<key version>.<signature>`.
//!
//! The signature is HMAC-SHA256 under the app's share key over the app's name, the expiry and
//! the key's version, so a link opens one app until it expires, and rotating the key revokes
//! every link made before.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The query parameter a share link carries.
pub const SHARE_PARAM: &str = "shoal_share";

/// The cookie that keeps a share link's grant for the page's other requests.
pub fn share_cookie_name(app: &str) -> String {
    format!("shoal_share_{app}")
}

/// An app's key for signing share links.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKey {
    /// Bumped by each rotation; part of every link.
    pub version: u32,
    /// 32 random bytes, hex.
    pub key: String,
}

impl std::fmt::Debug for ShareKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShareKey(v{}, ..)", self.version)
    }
}

/// What a presented share token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareCheck {
    /// Signed by the current key, not expired: valid until this Unix second.
    Valid {
        /// Expiry (Unix seconds).
        expires_unix_s: u64,
    },
    /// Signed by the current key, but past its expiry.
    Expired,
    /// Malformed, forged, for another app, or signed by a rotated key.
    Invalid,
}

impl ShareKey {
    /// Signs a link for `app` that expires at `expires_unix_s`.
    pub fn sign(&self, app: &str, expires_unix_s: u64) -> String {
        let signature = self.signature(app, expires_unix_s);
        format!(
            "{expires_unix_s}.{}.{}",
            self.version,
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// Checks a presented token at `now_unix_ms`.
    pub fn check(&self, app: &str, token: &str, now_unix_ms: u64) -> ShareCheck {
        let mut parts = token.splitn(3, '.');
        let (Some(expires), Some(version), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return ShareCheck::Invalid;
        };
        let (Ok(expires_unix_s), Ok(version)) = (expires.parse::<u64>(), version.parse::<u32>())
        else {
            return ShareCheck::Invalid;
        };
        if version != self.version {
            return ShareCheck::Invalid;
        }
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return ShareCheck::Invalid;
        };
        let Some(mut mac) = self.mac() else {
            return ShareCheck::Invalid;
        };
        mac.update(&message(app, expires_unix_s, self.version));
        if mac.verify_slice(&signature).is_err() {
            return ShareCheck::Invalid;
        }
        if expires_unix_s.saturating_mul(1000) <= now_unix_ms {
            ShareCheck::Expired
        } else {
            ShareCheck::Valid { expires_unix_s }
        }
    }

    fn signature(&self, app: &str, expires_unix_s: u64) -> Vec<u8> {
        match self.mac() {
            Some(mut mac) => {
                mac.update(&message(app, expires_unix_s, self.version));
                mac.finalize().into_bytes().to_vec()
            }
            None => Vec::new(),
        }
    }

    fn mac(&self) -> Option<Hmac<Sha256>> {
        let key = hex::decode(&self.key).ok().filter(|key| key.len() >= 16)?;
        Hmac::<Sha256>::new_from_slice(&key).ok()
    }
}

fn message(app: &str, expires_unix_s: u64, version: u32) -> Vec<u8> {
    format!("shoal-share\0{app}\0{expires_unix_s}\0{version}").into_bytes()
}
