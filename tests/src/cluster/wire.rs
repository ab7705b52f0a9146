//! What the cluster harness reads and writes: `/v1/nodes` answers, Prometheus text, join
//! tokens, and the small static bundles the tests deploy. Pure functions, tested below.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bundle_of;

/// `GET /v1/nodes`: the leader, the term, and every member the node knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodesView {
    /// The leader's id, if the node knows one.
    pub leader: Option<String>,
    /// The raft term the node is in.
    pub term: u64,
    /// The members, as listed (sorted by name).
    pub nodes: Vec<Member>,
}

/// One member in a [`NodesView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node id, a u64 in decimal.
    pub id: String,
    /// `--name`.
    pub name: String,
    /// Whether it is a raft voter.
    pub voter: bool,
    /// `leader`, `follower`, `learner`, `candidate` or `none`.
    pub raft: String,
    /// Whether gossip thinks it is alive.
    pub live: bool,
    /// Its admin API address.
    pub api: String,
    /// Its ingress address.
    pub http: String,
    /// Its QUIC address.
    pub quic: String,
    /// The raft index its app table has applied.
    pub applied_index: u64,
}

impl NodesView {
    /// Reads the JSON answer; a missing or mistyped field is an error that names it.
    pub fn parse(value: &Value) -> Result<Self> {
        let leader = match &value["leader"] {
            Value::Null => None,
            Value::String(id) => Some(id.clone()),
            other => bail!("`leader` is neither a string nor null: {other}"),
        };
        let term = value["term"].as_u64().context("`term` is not a u64")?;
        let nodes = value["nodes"]
            .as_array()
            .context("`nodes` is not an array")?
            .iter()
            .map(Member::parse)
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("in {value}"))?;
        Ok(Self {
            leader,
            term,
            nodes,
        })
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.nodes.iter().find(|member| member.name == name)
    }

    /// The member with id `id`.
    pub fn member_by_id(&self, id: &str) -> Option<&Member> {
        self.nodes.iter().find(|member| member.id == id)
    }

    /// The leader's name, if the leader is known and listed.
    pub fn leader_name(&self) -> Option<&str> {
        let leader = self.leader.as_deref()?;
        Some(self.member_by_id(leader)?.name.as_str())
    }

    /// The names of the members marked live.
    pub fn live_names(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|member| member.live)
            .map(|member| member.name.as_str())
            .collect()
    }

    /// What must not move unless membership changes: the leader, the term and each member's
    /// identity, role, liveness and addresses (applied indexes and load are left out).
    pub fn membership(&self) -> (Option<String>, u64, Vec<String>) {
        let members = self
            .nodes
            .iter()
            .map(|m| {
                format!(
                    "{} {} voter={} live={} api={} http={} quic={}",
                    m.id, m.name, m.voter, m.live, m.api, m.http, m.quic
                )
            })
            .collect();
        (self.leader.clone(), self.term, members)
    }
}

impl Member {
    fn parse(value: &Value) -> Result<Self> {
        let text = |key: &str| -> Result<String> {
            value[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("member field `{key}` is not a string"))
        };
        let id = text("id")?;
        id.parse::<u64>()
            .with_context(|| format!("member id `{id}` is not a u64 in decimal"))?;
        Ok(Self {
            id,
            name: text("name")?,
            voter: value["voter"].as_bool().context("`voter` is not a bool")?,
            raft: text("raft")?,
            live: value["live"].as_bool().context("`live` is not a bool")?,
            api: text("api")?,
            http: text("http")?,
            quic: text("quic")?,
            applied_index: value["applied_index"]
                .as_u64()
                .context("`applied_index` is not a u64")?,
        })
    }
}

/// The sum of the samples of metric `name` (with `label="value"` among their labels, if
/// given) in Prometheus or OpenMetrics text; 0 when there are none.
pub fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let wanted_label = label.map(|(key, value)| format!("{key}=\"{value}\""));
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if let Some(wanted) = &wanted_label {
                if !labels.split(',').any(|pair| pair.trim() == wanted) {
                    return None;
                }
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// The prefix of a join token.
pub const JOIN_TOKEN_PREFIX: &str = "shoal-join-v1.";

/// `token` with another secret of the same length: well formed, for the right cluster and
/// seed, and wrong. Fails if `token` is not a `shoal-join-v1.` token holding a `secret`.
pub fn tamper_join_token(token: &str) -> Result<String> {
    let body = token
        .trim()
        .strip_prefix(JOIN_TOKEN_PREFIX)
        .context("not a shoal-join-v1 token")?;
    let mut fields: Value =
        serde_json::from_slice(&base64url_decode(body)?).context("the token's body is not JSON")?;
    let secret = fields["secret"]
        .as_str()
        .context("the token holds no `secret`")?;
    let mut bytes = base64url_decode(secret)?;
    for byte in &mut bytes {
        *byte ^= 0x5a;
    }
    fields["secret"] = Value::String(base64url_encode(&bytes));
    let json = serde_json::to_vec(&fields)?;
    Ok(format!("{JOIN_TOKEN_PREFIX}{}", base64url_encode(&json)))
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (i, byte)| {
            word | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..=chunk.len() {
            out.push(BASE64URL[(word >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Reads base64url without padding.
pub fn base64url_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        if chunk.len() == 1 {
            bail!("`{text}` is not base64url: a dangling character");
        }
        let mut word = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let value = BASE64URL
                .iter()
                .position(|a| a == c)
                .with_context(|| format!("`{}` is not a base64url character", *c as char))?;
            word |= (value as u32) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((word >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

/// `shoal.toml` of a static app.
pub fn static_manifest(name: &str) -> String {
    format!("name = \"{name}\"\nkind = \"static\"\n")
}

/// An `index.html` that holds `marker`.
pub fn static_index(marker: &str) -> String {
    format!("<!doctype html>\n<title>{marker}</title>\n<p id=\"marker\">{marker}</p>\n")
}

/// A `tar.zst` bundle of a static app `name` whose index page holds `marker`.
pub fn static_bundle(name: &str, marker: &str) -> Vec<u8> {
    let manifest = static_manifest(name);
    let index = static_index(marker);
    bundle_of(&[
        ("shoal.toml", manifest.as_bytes()),
        ("index.html", index.as_bytes()),
    ])
}

/// SplitMix64: a small seeded RNG, so a failing run can be repeated with its printed seed.
#[derive(Clone, Debug)]
pub struct SmallRng(u64);

impl SmallRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from the clock, to print and pass to [`SmallRng::new`].
    pub fn seed_from_clock() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(0x5eed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn base64url_round_trips_every_length() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37) ^ 0xa5).collect();
            let text = base64url_encode(&bytes);
            assert!(!text.contains('=') && !text.contains('+') && !text.contains('/'));
            assert_eq!(base64url_decode(&text).unwrap(), bytes, "{len}");
        }
        assert_eq!(base64url_encode(b"shoal?>"), "c2hvYWw_Pg");
        assert!(base64url_decode("a").is_err());
        assert!(base64url_decode("ab+c").is_err());
    }

    #[test]
    fn a_tampered_token_differs_only_in_its_secret() {
        let fields = json!({
            "seed": "127.0.0.1:7947",
            "ca_fingerprint": "ab".repeat(32),
            "secret": base64url_encode(&[7u8; 32]),
            "expires_at_unix": 4_000_000_000u64,
        });
        let token = format!(
            "{JOIN_TOKEN_PREFIX}{}",
            base64url_encode(&serde_json::to_vec(&fields).unwrap())
        );
        let tampered = tamper_join_token(&token).unwrap();
        let body = tampered.strip_prefix(JOIN_TOKEN_PREFIX).unwrap();
        let read: Value = serde_json::from_slice(&base64url_decode(body).unwrap()).unwrap();
        assert_eq!(read["seed"], fields["seed"]);
        assert_eq!(read["ca_fingerprint"], fields["ca_fingerprint"]);
        assert_eq!(read["expires_at_unix"], fields["expires_at_unix"]);
        let secret = base64url_decode(read["secret"].as_str().unwrap()).unwrap();
        assert_eq!(secret.len(), 32);
        assert_ne!(secret, vec![7u8; 32]);
        assert!(tamper_join_token("shoal-join-v2.abc").is_err());
    }

    #[test]
    fn metric_samples_are_summed_by_label() {
        let text = "# TYPE shoal_gossip_datagrams_dropped counter\n\
            shoal_gossip_datagrams_dropped_total{reason=\"forged\"} 3\n\
            shoal_gossip_datagrams_dropped_total{reason=\"stale\"} 2\n\
            shoal_gossip_datagrams_dropped_total{node=\"a\",reason=\"forged\"} 1 1700000000\n\
            shoal_gossip_datagrams_dropped_totally 100\n\
            shoal_requests_total 9\n# EOF\n";
        let name = "shoal_gossip_datagrams_dropped_total";
        assert_eq!(metric_sum(text, name, Some(("reason", "forged"))), 4.0);
        assert_eq!(metric_sum(text, name, Some(("reason", "replayed"))), 0.0);
        assert_eq!(metric_sum(text, name, None), 6.0);
        assert_eq!(metric_sum(text, "shoal_requests_total", None), 9.0);
    }

    #[test]
    fn nodes_views_are_read_and_checked() {
        let member = |id: &str, name: &str, voter, raft: &str, live| {
            json!({
                "id": id, "name": name, "voter": voter, "raft": raft, "live": live,
                "api": "127.0.0.1:1", "http": "127.0.0.1:2", "quic": "127.0.0.1:3",
                "applied_index": 12, "load": {"in_flight": 0, "instances": 0},
            })
        };
        let value = json!({
            "leader": "17",
            "term": 3,
            "nodes": [
                member("17", "a", true, "leader", true),
                member("18446744073709551615", "b", false, "none", false),
            ],
        });
        let view = NodesView::parse(&value).unwrap();
        assert_eq!(view.leader_name(), Some("a"));
        assert_eq!(view.live_names(), vec!["a"]);
        assert_eq!(view.term, 3);
        assert!(!view.member("b").unwrap().voter);

        let no_leader = json!({"leader": null, "term": 0, "nodes": []});
        assert_eq!(NodesView::parse(&no_leader).unwrap().leader_name(), None);
        let bad_id =
            json!({"leader": null, "term": 0, "nodes": [member("x", "a", true, "none", true)]});
        assert!(NodesView::parse(&bad_id).is_err());
    }

    #[test]
    fn static_bundles_hold_a_manifest_and_the_marker() {
        let bundle = static_bundle("f1", "marker-f1");
        let tar = zstd::decode_all(&bundle[..]).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut files = std::collections::BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            files.insert(path, text);
        }
        assert_eq!(files["shoal.toml"], "name = \"f1\"\nkind = \"static\"\n");
        assert!(files["index.html"].contains("marker-f1"));
    }

    #[test]
    fn the_small_rng_is_seeded() {
        let mut a = SmallRng::new(42);
        let mut b = SmallRng::new(42);
        assert_eq!(a.next_u64(), b.next_u64());
        assert!((0..100).all(|_| a.below(5) < 5));
        assert_ne!(SmallRng::new(1).next_u64(), SmallRng::new(2).next_u64());
    }
}
