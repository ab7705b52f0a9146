//! A node's cluster identity on disk: `pki/` (CA, node certificate and key, gossip key),
//! `tokens/join`, and `cluster.json` (cluster id, node id, role, peers to gossip with).
//!
//! `shoal seed` creates a new cluster's identity; `shoal join` receives one from a voter. A node
//! certificate in `pki/node.pem` is what makes a data dir a cluster member: it is written last,
//! so a crash or a refused join leaves a data dir that is not one.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use shoal_mesh::gossip::GossipKey;
use shoal_mesh::pki::{ClusterCa, JoinToken, NodeIdentity};

/// How long a join token made by `shoal seed` is accepted.
pub const DEFAULT_JOIN_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// What a node knows about the cluster it belongs to.
#[derive(Clone)]
pub struct Identity {
    /// The cluster's id (also gossip's cluster id and raft's cluster name).
    pub cluster_id: String,
    /// This node's raft and certificate id.
    pub node_id: u64,
    /// Whether this node is (or is becoming) a raft voter.
    pub voter: bool,
    /// The cluster CA certificate.
    pub ca_cert_pem: String,
    /// The CA key: held by voters (which issue certificates to joining nodes), never by workers.
    pub ca_key_pem: Option<String>,
    /// This node's certificate and key.
    pub node: NodeIdentity,
    /// The key gossip datagrams are sealed with.
    pub gossip_key: GossipKey,
    /// The join token, on voters (any voter can admit a node).
    pub join_token: Option<JoinToken>,
    /// Gossip addresses to contact at start.
    pub gossip_seeds: Vec<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("voter", &self.voter)
            .finish_non_exhaustive()
    }
}

/// `cluster.json`: the non-secret part.
#[derive(Serialize, Deserialize)]
struct ClusterFile {
    cluster_id: String,
    node_id: u64,
    voter: bool,
    gossip_seeds: Vec<String>,
}

fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Where the join token lives.
pub fn join_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens").join("join")
}

/// The certificate whose presence makes a data dir a member.
pub fn node_cert_path(data_dir: &Path) -> PathBuf {
    pki_dir(data_dir).join("node.pem")
}

impl Identity {
    /// A new cluster: CA, the seed's certificate (node id from `rng`), gossip key and join token.
    pub fn new_cluster<R: RngCore>(
        node_name: &str,
        advertise: IpAddr,
        quic_addr: &str,
        gossip_addr: &str,
        now_unix: u64,
        token_ttl_secs: u64,
        rng: &mut R,
    ) -> anyhow::Result<Self> {
        let cluster_id = format!("shoal-{:016x}", rng.next_u64());
        let ca = ClusterCa::generate(&cluster_id)?;
        let node_id = new_node_id(rng);
        let node = ca.issue_node_certificate(&cert_name(node_name), node_id, &[advertise])?;
        let join_token =
            JoinToken::new(quic_addr, &ca.fingerprint(), token_ttl_secs, now_unix, rng);
        Ok(Self {
            cluster_id,
            node_id,
            voter: true,
            ca_cert_pem: ca.cert_pem(),
            ca_key_pem: Some(ca.key_pem()),
            node,
            gossip_key: GossipKey::generate(rng),
            join_token: Some(join_token),
            gossip_seeds: vec![gossip_addr.to_owned()],
        })
    }

    /// The CA, if this node holds its key.
    pub fn ca(&self) -> anyhow::Result<Option<ClusterCa>> {
        self.ca_key_pem
            .as_deref()
            .map(|key| ClusterCa::from_pem(&self.ca_cert_pem, key))
            .transpose()
            .context("the CA in pki/ is unreadable")
    }

    /// Loads the identity from `data_dir`; `None` if it holds no node certificate yet.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        if !node_cert_path(data_dir).is_file() {
            return Ok(None);
        }
        let pki = pki_dir(data_dir);
        let read = |name: &str| -> anyhow::Result<String> {
            let path = pki.join(name);
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))
        };
        let optional = |path: PathBuf| -> anyhow::Result<Option<String>> {
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
            }
        };
        let file: ClusterFile = serde_json::from_str(&read("../cluster.json")?)
            .context("cluster.json in the data dir is unreadable")?;
        let join_token = optional(join_token_path(data_dir))?
            .map(|text| JoinToken::decode(&text))
            .transpose()
            .context("tokens/join is unreadable")?;
        Ok(Some(Self {
            cluster_id: file.cluster_id,
            node_id: file.node_id,
            voter: file.voter,
            ca_cert_pem: read("ca.pem")?,
            ca_key_pem: optional(pki.join("ca.key"))?,
            node: NodeIdentity {
                cert_pem: read("node.pem")?,
                key_pem: read("node.key")?,
            },
            gossip_key: GossipKey::from_hex(read("gossip.key")?.trim())
                .context("pki/gossip.key is unreadable")?,
            join_token,
            gossip_seeds: file.gossip_seeds,
        }))
    }

    /// Writes every file; the node certificate last. Secrets are 0600.
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let pki = pki_dir(data_dir);
        std::fs::create_dir_all(&pki)?;
        std::fs::create_dir_all(data_dir.join("tokens"))?;
        write_file(&pki.join("ca.pem"), &self.ca_cert_pem, 0o644)?;
        if let Some(key) = &self.ca_key_pem {
            write_file(&pki.join("ca.key"), key, 0o600)?;
        }
        write_file(&pki.join("gossip.key"), &self.gossip_key.to_hex(), 0o600)?;
        if let Some(token) = &self.join_token {
            write_file(&join_token_path(data_dir), &token.encode(), 0o600)?;
        }
        self.save_cluster_file(data_dir)?;
        write_file(&pki.join("node.key"), &self.node.key_pem, 0o600)?;
        write_file(&node_cert_path(data_dir), &self.node.cert_pem, 0o644)?;
        Ok(())
    }

    /// Rewrites `cluster.json` (e.g. with newly learned gossip peers).
    pub fn save_cluster_file(&self, data_dir: &Path) -> anyhow::Result<()> {
        let file = ClusterFile {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            voter: self.voter,
            gossip_seeds: self.gossip_seeds.clone(),
        };
        let json = serde_json::to_string_pretty(&file).expect("cluster file serializes");
        write_file(&data_dir.join("cluster.json"), &json, 0o644)
    }
}

/// A random, non-zero node id.
pub fn new_node_id<R: RngCore>(rng: &mut R) -> u64 {
    loop {
        // Below 2^53 so the id survives JSON numbers in any client.
        let id = rng.next_u64() & ((1 << 53) - 1);
        if id != 0 {
            return id;
        }
    }
}

/// A certificate-safe DNS label for a node name (names are free text; SANs are not).
pub fn cert_name(node_name: &str) -> String {
    let label: String = node_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "node".to_owned()
    } else {
        label.chars().take(63).collect()
    }
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename) with `mode`.
fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents.as_bytes())?;
    if !contents.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A new cluster's identity for tests: seed `name` on 127.0.0.1 (QUIC 7947, gossip 7946), its
/// join token issued at unix time 1000 for 60 s, everything drawn from `seed`.
#[cfg(test)]
pub(crate) fn identity_for_test(name: &str, seed: u64) -> Identity {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Identity::new_cluster(
        name,
        "127.0.0.1".parse().unwrap(),
        "127.0.0.1:7947",
        "127.0.0.1:7946",
        1_000,
        60,
        &mut rng,
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cluster_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let identity = identity_for_test("Seed One", 7);
        assert!(Identity::load(dir.path()).unwrap().is_none());
        identity.save(dir.path()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap().expect("saved");
        assert_eq!(loaded.node_id, identity.node_id);
        assert_eq!(loaded.cluster_id, identity.cluster_id);
        assert!(loaded.voter);
        assert_eq!(loaded.ca_cert_pem, identity.ca_cert_pem);
        assert_eq!(loaded.join_token, identity.join_token);
        assert_eq!(loaded.gossip_key.to_hex(), identity.gossip_key.to_hex());
        assert!(loaded.ca().unwrap().is_some());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("pki/ca.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn cert_names_are_dns_labels() {
        assert_eq!(cert_name("Seed One"), "seed-one");
        assert_eq!(cert_name("__"), "node");
        assert_eq!(cert_name("a.b"), "a-b");
    }
}
