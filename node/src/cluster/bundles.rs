//! Bundles between nodes: a deploy pushes its bundle to a majority of voters before the
//! release naming it is proposed; every node pulls the bundles its table names and lacks.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use shoal_mesh::quic::{read_frame, write_frame};
use tokio::io::AsyncReadExt;
use tracing::{debug, info, warn};

use super::rpc::{BundleHeader, KIND_BUNDLE_GET, KIND_BUNDLE_PUT};
use super::{member_id, member_quic, Cluster, ClusterError, RPC_TIMEOUT};
use crate::raft::NodeId;

impl Cluster {
    /// Pushes the stored bundle `digest` to voters until a majority holds it.
    pub async fn replicate_bundle(&self, digest: &str) -> Result<(), ClusterError> {
        let voters = self.voters();
        let needed = voters.len() / 2 + 1;
        let mut held = 0;
        let mut pushes = futures_util::stream::FuturesUnordered::new();
        for (id, addr) in voters {
            if id == self.identity.node_id {
                if self.bundles.contains(digest) {
                    held += 1;
                }
                continue;
            }
            pushes.push(async move {
                let mut outcome = self.push_bundle(id, addr, digest).await;
                if outcome.is_err() {
                    // The pooled connection may belong to a process that has since restarted.
                    self.quic.forget(id);
                    outcome = self.push_bundle(id, addr, digest).await;
                }
                (id, outcome)
            });
        }
        let mut reason = String::from("no voter answered");
        while held < needed {
            let Some((id, outcome)) = pushes.next().await else {
                return Err(ClusterError::BundleNotReplicated {
                    held,
                    needed,
                    reason,
                });
            };
            match outcome {
                Ok(()) => held += 1,
                Err(error) => {
                    warn!(voter = id, %error, "could not push a bundle to a voter");
                    reason = error.to_string();
                }
            }
        }
        // The rest of the voters get it in the background (or pull it when they see the deploy).
        Ok(())
    }

    async fn push_bundle(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        digest: &str,
    ) -> anyhow::Result<()> {
        let path = self.bundles.blob_path(digest);
        let mut file = tokio::fs::File::open(&path).await?;
        let size = file.metadata().await?.len();
        let (mut send, mut recv) = self.quic.open(peer, addr, KIND_BUNDLE_PUT).await?;
        let header = BundleHeader {
            digest: digest.to_owned(),
            size,
        };
        write_frame(&mut send, &serde_json::to_vec(&header)?).await?;
        let answer = tokio::time::timeout(RPC_TIMEOUT, read_frame(&mut recv, 64)).await??;
        if answer == b"have" {
            return Ok(());
        }
        tokio::io::copy(&mut file, &mut send).await?;
        send.finish()?;
        let reply =
            tokio::time::timeout(Duration::from_secs(60), read_frame(&mut recv, 4096)).await??;
        let reply: Result<(), String> = serde_json::from_slice(&reply)?;
        reply.map_err(|message| anyhow::anyhow!("voter {peer} refused the bundle: {message}"))
    }

    /// Stores a blob of `size` bytes read from `recv`, checking it hashes to `digest` and
    /// unpacking it under the same rules as an upload.
    pub(crate) async fn store_bundle_from(
        &self,
        digest: &str,
        size: u64,
        recv: &mut shoal_mesh::link::LinkRecv,
    ) -> anyhow::Result<()> {
        if size > self.bundles.limits().max_compressed_bytes {
            anyhow::bail!("the bundle is larger than this node's --bundle-max-bytes");
        }
        let reader = recv.take(size);
        let mut stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
        let staged = self.bundles.stage(&mut stream).await?;
        if staged.digest() != digest || staged.size() != size {
            anyhow::bail!("the bytes received do not hash to {digest}");
        }
        let bundles = self.bundles.clone();
        tokio::task::spawn_blocking(move || {
            let unpacked = bundles.unpack(&staged)?;
            bundles.commit(staged, unpacked)?;
            Ok::<_, anyhow::Error>(())
        })
        .await??;
        Ok(())
    }

    async fn pull_bundle(&self, digest: &str) -> anyhow::Result<()> {
        let mut last_error = anyhow::anyhow!("no live peer to pull bundle {digest} from");
        for (peer, addr) in self.bundle_sources() {
            match self.pull_bundle_from(peer, addr, digest).await {
                Ok(()) => return Ok(()),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn pull_bundle_from(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        digest: &str,
    ) -> anyhow::Result<()> {
        let (mut send, mut recv) = self.quic.open(peer, addr, KIND_BUNDLE_GET).await?;
        write_frame(&mut send, digest.as_bytes()).await?;
        send.finish()?;
        let header = tokio::time::timeout(RPC_TIMEOUT, read_frame(&mut recv, 4096)).await??;
        let size: Result<u64, String> = serde_json::from_slice(&header)?;
        let size = size.map_err(|message| anyhow::anyhow!(message))?;
        self.store_bundle_from(digest, size, &mut recv).await
    }

    /// Voters first (they hold every committed bundle's majority), then everyone else.
    fn bundle_sources(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut sources = self.voters();
        let members = self.members.lock().expect("members").clone();
        for member in members.iter().filter(|m| m.live) {
            if let (Some(id), Some(addr)) = (member_id(member), member_quic(member)) {
                if !sources.iter().any(|(known, _)| *known == id) {
                    sources.push((id, addr));
                }
            }
        }
        sources.retain(|(id, _)| *id != self.identity.node_id);
        sources
    }

    /// Pulls every bundle a current release names that this node lacks.
    pub(super) async fn bundle_loop(self: Arc<Self>) {
        let mut changes = self.replica.subscribe();
        loop {
            let table = self.replica.table();
            let mut missing: BTreeSet<String> = BTreeSet::new();
            for app in table.apps() {
                let digest = &app.current().digest;
                if !self.bundles.contains(digest) {
                    missing.insert(digest.clone());
                }
            }
            for digest in missing {
                match self.pull_bundle(&digest).await {
                    Ok(()) => {
                        info!(%digest, "pulled a bundle");
                        self.bundle_arrived.notify_one();
                    }
                    Err(error) => debug!(%digest, %error, "could not pull a bundle yet"),
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
