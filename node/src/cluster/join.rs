//! Joining a cluster: `shoal join` dials a voter on its QUIC port trusting only the CA
//! fingerprint inside the join token, presents the token, and receives its node certificate and
//! the cluster's shared secrets. The voter side is [`JoinService`].
//!
//! A refused node learns nothing: the refusal is one sentence, and the voter checks the token
//! before it looks at anything else in the request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shoal_mesh::gossip::GossipKey;
use shoal_mesh::pki::{ClusterCa, JoinToken, NodeIdentity};
use shoal_mesh::quic::{request_join, JoinHandler, QuicError};
use tracing::{info, warn};

use super::identity::{cert_name, new_node_id, Identity};

/// How long `shoal join` waits for the voter's answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a joining node sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The join token, as `shoal seed` printed it.
    pub token: String,
    /// The node's name.
    pub name: String,
    /// Whether it joins as a voter.
    pub voter: bool,
    /// The address its certificate should name.
    pub advertise: IpAddr,
}

/// What an admitted node receives.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinResponse {
    cluster_id: String,
    node_id: u64,
    ca_cert_pem: String,
    ca_key_pem: Option<String>,
    node_cert_pem: String,
    node_key_pem: String,
    gossip_key: String,
    admin_token: String,
    join_token: Option<String>,
    gossip_seeds: Vec<String>,
}

/// Admits joining nodes on a voter that holds the CA.
pub struct JoinService {
    ca: ClusterCa,
    identity: Identity,
    admin_token: String,
    /// Gossip addresses of the members, for the new node to contact.
    seeds: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Unix seconds now.
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl JoinService {
    /// A join service for `identity` (which must hold the CA key and the join token).
    pub fn new(
        identity: Identity,
        admin_token: String,
        seeds: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(ca) = identity.ca()? else {
            return Ok(None);
        };
        if identity.join_token.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            ca,
            identity,
            admin_token,
            seeds,
            clock,
        }))
    }

    fn admit(&self, request: &[u8], remote: SocketAddr) -> Result<Vec<u8>, String> {
        let request: JoinRequest = serde_json::from_slice(request)
            .map_err(|_| "the join request is malformed".to_owned())?;
        let issued = self
            .identity
            .join_token
            .as_ref()
            .ok_or("this node does not admit new nodes")?;
        let presented = JoinToken::decode(&request.token).map_err(|error| error.to_string())?;
        if let Err(error) = issued.verify(&presented, (self.clock)()) {
            warn!(%remote, "refused a join: {error}");
            return Err(error.to_string());
        }
        let node_id = new_node_id(&mut rand::rngs::OsRng);
        let node = self
            .ca
            .issue_node_certificate(&cert_name(&request.name), node_id, &[request.advertise])
            .map_err(|error| format!("could not issue a certificate: {error}"))?;
        info!(%remote, name = %request.name, node_id, voter = request.voter, "admitted a node");
        let response = JoinResponse {
            cluster_id: self.identity.cluster_id.clone(),
            node_id,
            ca_cert_pem: self.identity.ca_cert_pem.clone(),
            ca_key_pem: request.voter.then(|| self.ca.key_pem()),
            node_cert_pem: node.cert_pem,
            node_key_pem: node.key_pem,
            gossip_key: self.identity.gossip_key.to_hex(),
            admin_token: self.admin_token.clone(),
            join_token: request.voter.then(|| issued.encode()),
            gossip_seeds: (self.seeds)(),
        };
        Ok(serde_json::to_vec(&response).expect("join responses serialize"))
    }
}

#[async_trait::async_trait]
impl JoinHandler for JoinService {
    async fn join(&self, request: Vec<u8>, remote: SocketAddr) -> Result<Vec<u8>, String> {
        self.admit(&request, remote)
    }
}

/// Dials `seed`, presents `token`, and returns the new identity and the admin token.
pub async fn join(
    seed: &str,
    token: &str,
    name: &str,
    voter: bool,
    advertise: IpAddr,
) -> anyhow::Result<(Identity, String)> {
    let parsed = JoinToken::decode(token).context("the join token is not usable")?;
    let seed_addr = tokio::net::lookup_host(seed)
        .await
        .with_context(|| format!("cannot resolve the seed address `{seed}`"))?
        .next()
        .with_context(|| format!("the seed address `{seed}` resolves to nothing"))?;
    let request = JoinRequest {
        token: token.trim().to_owned(),
        name: name.to_owned(),
        voter,
        advertise,
    };
    let body = serde_json::to_vec(&request).expect("join requests serialize");
    let reply = request_join(seed_addr, &parsed.ca_fingerprint, &body, JOIN_TIMEOUT)
        .await
        .map_err(|error| match error {
            QuicError::Refused(reason) => {
                anyhow::anyhow!("the cluster refused to let this node join: {reason}")
            }
            other => anyhow::anyhow!("cannot join through {seed}: {other}"),
        })?;
    let response: JoinResponse =
        serde_json::from_slice(&reply).context("the seed sent an unreadable join answer")?;
    let identity = Identity {
        cluster_id: response.cluster_id,
        node_id: response.node_id,
        voter,
        ca_cert_pem: response.ca_cert_pem,
        ca_key_pem: response.ca_key_pem,
        node: NodeIdentity {
            cert_pem: response.node_cert_pem,
            key_pem: response.node_key_pem,
        },
        gossip_key: GossipKey::from_hex(&response.gossip_key)
            .context("the seed sent an unreadable gossip key")?,
        join_token: response
            .join_token
            .map(|text| JoinToken::decode(&text))
            .transpose()
            .context("the seed sent an unreadable join token")?,
        gossip_seeds: response.gossip_seeds,
    };
    Ok((identity, response.admin_token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::identity::identity_for_test;

    fn service(now_unix: u64) -> JoinService {
        JoinService::new(
            identity_for_test("seed", 1),
            "shoal_admin".into(),
            Arc::new(|| vec!["127.0.0.1:7946".into()]),
            Arc::new(move || now_unix),
        )
        .unwrap()
        .expect("a seed admits nodes")
    }

    fn request(token: String, voter: bool) -> Vec<u8> {
        serde_json::to_vec(&JoinRequest {
            token,
            name: "w1".into(),
            voter,
            advertise: "127.0.0.1".parse().unwrap(),
        })
        .unwrap()
    }

    fn remote() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    #[test]
    fn a_valid_token_admits_a_worker_without_the_ca_key_and_a_voter_with_it() {
        let service = service(1_010);
        let token = service.identity.join_token.clone().unwrap().encode();
        let worker: JoinResponse = serde_json::from_slice(
            &service
                .admit(&request(token.clone(), false), remote())
                .unwrap(),
        )
        .unwrap();
        assert!(worker.ca_key_pem.is_none() && worker.join_token.is_none());
        assert_eq!(worker.admin_token, "shoal_admin");
        assert_ne!(worker.node_id, service.identity.node_id);
        let voter: JoinResponse =
            serde_json::from_slice(&service.admit(&request(token, true), remote()).unwrap())
                .unwrap();
        assert!(voter.ca_key_pem.is_some() && voter.join_token.is_some());
        assert_ne!(voter.node_id, worker.node_id);
    }

    #[test]
    fn a_wrong_or_expired_token_is_refused_and_reveals_nothing() {
        let service = service(1_010);
        let mut wrong = service.identity.join_token.clone().unwrap();
        wrong.secret = "AAAA".repeat(10);
        let refusal = service
            .admit(&request(wrong.encode(), true), remote())
            .unwrap_err();
        assert!(!refusal.contains("shoal_admin") && !refusal.contains("BEGIN"));
        let expired = service_at_expiry();
        let token = expired.identity.join_token.clone().unwrap().encode();
        let refusal = expired.admit(&request(token, false), remote()).unwrap_err();
        assert!(refusal.to_lowercase().contains("expired"), "{refusal}");
        let garbage = service.admit(b"not json", remote()).unwrap_err();
        assert!(garbage.contains("malformed"), "{garbage}");
    }

    fn service_at_expiry() -> JoinService {
        // Issued at 1000 with a 60 s lifetime.
        service(1_061)
    }
}
