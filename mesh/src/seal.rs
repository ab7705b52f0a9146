//! Sealed gossip datagrams: the gossip key, the envelope format, the freshness and replay
//! checks, and the chitchat [`Transport`] that seals everything chitchat sends.
//!
//! An envelope is `version (1) | sender unix ms (8, big endian) | nonce (12) | ciphertext`,
//! where the ciphertext is chitchat's own wire encoding sealed with ChaCha20-Poly1305 under the
//! cluster's [`GossipKey`] and the 21-byte header as associated data. A receiver drops (and
//! counts in [`SealStats`]) anything that fails authentication (`forged`), carries a timestamp
//! outside its freshness window (`stale`), or repeats a nonce it accepted within that window
//! (`replayed`).
//!
//! chitchat 0.13 keeps its message encoding crate-private: the only public code that turns a
//! [`ChitchatEnvelope`] into bytes and back is its own UDP socket. [`SealedTransport`] therefore
//! runs two private chitchat sockets on loopback as an encoder and a decoder, and only the real
//! socket, bound to the gossip address, ever carries sealed bytes. See `Encoder` and
//! `Decoder` for how a datagram is matched to its sender.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, Tag};
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as CodecSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use rand::rngs::OsRng;
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::gossip::GossipError;

/// The envelope format this code writes and the only one it accepts.
pub const ENVELOPE_VERSION: u8 = 1;

/// Nonce length of ChaCha20-Poly1305 (96 bits).
pub const NONCE_LEN: usize = 12;

/// Envelope header: version, sender timestamp, nonce. It is the AEAD's associated data.
pub const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;

/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;

/// Bytes the envelope adds to chitchat's message.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// The largest UDP payload over IPv4, which is also the size chitchat fills its messages to.
pub const MAX_DATAGRAM_LEN: usize = 65_507;

/// The largest chitchat message that still fits in one sealed datagram. chitchat has no
/// setting for its message size, so a larger message is dropped with a warning.
pub const MAX_PLAINTEXT_LEN: usize = MAX_DATAGRAM_LEN - ENVELOPE_OVERHEAD;

/// How many accepted nonces the replay cache holds at most (about 3 MiB). Past that, the
/// oldest are forgotten and anything at least as old is refused, so memory stays bounded and a
/// replay is still never accepted.
pub const REPLAY_CACHE_CAPACITY: usize = 65_536;

/// How long the loopback encoder or decoder may take before a datagram is given up.
const CODEC_TIMEOUT: Duration = Duration::from_secs(1);

/// Decoded datagrams waiting for chitchat's server loop.
const INCOMING_QUEUE: usize = 128;

/// The cluster id of the decoder's end-of-datagram marker; no real cluster may use it.
pub(crate) const SENTINEL_CLUSTER_ID: &str = "\u{0}shoal-seal-sentinel";

/// Unix time in milliseconds, supplied by the caller so that tests and the simulator control
/// it (the transport never reads the system clock).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The symmetric key every gossip datagram of a cluster is sealed with: 32 random bytes.
#[derive(Clone)]
pub struct GossipKey([u8; 32]);

impl GossipKey {
    /// Draws a new key from `rng`, which must be cryptographically secure (e.g. `OsRng`).
    pub fn generate(rng: &mut impl RngCore) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The key as 64 lowercase hex characters, for the node's key file and join responses.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads a key written by [`GossipKey::to_hex`]; surrounding whitespace is ignored.
    pub fn from_hex(text: &str) -> Result<Self, GossipError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(GossipError::KeyLength { found: text.len() });
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| GossipError::KeyDigits)?;
        Ok(Self(bytes))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0.into())
    }
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(<redacted>)")
    }
}

impl PartialEq for GossipKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for GossipKey {}

/// Seals `plaintext` into an envelope stamped with `timestamp_ms` and `nonce`.
///
/// A nonce must never be used twice under one key: callers draw it from the OS RNG.
pub fn seal(
    key: &GossipKey,
    timestamp_ms: u64,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    seal_with(&key.cipher(), timestamp_ms, nonce, plaintext)
}

fn seal_with(
    cipher: &ChaCha20Poly1305,
    timestamp_ms: u64,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut envelope = Vec::with_capacity(ENVELOPE_OVERHEAD + plaintext.len());
    envelope.push(ENVELOPE_VERSION);
    envelope.extend_from_slice(&timestamp_ms.to_be_bytes());
    envelope.extend_from_slice(&nonce);
    envelope.extend_from_slice(plaintext);
    let (header, body) = envelope.split_at_mut(HEADER_LEN);
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), header, body)
        .expect("chacha20poly1305 seals any message shorter than 256 GiB");
    envelope.extend_from_slice(&tag);
    envelope
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Too short, an unknown version, or it failed authentication.
    #[error("forged")]
    Forged,
    /// Its timestamp is outside the freshness window of the receiver's clock.
    #[error("stale")]
    Stale,
    /// Its nonce was already accepted within the freshness window.
    #[error("replayed")]
    Replayed,
}

/// Opens envelopes: authenticates them, then checks freshness and replays.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    freshness_ms: u64,
    replays: ReplayCache,
}

impl Opener {
    /// An opener accepting timestamps within `freshness` of the receiver's clock.
    pub fn new(key: &GossipKey, freshness: Duration) -> Self {
        Self::with_replay_capacity(key, freshness, REPLAY_CACHE_CAPACITY)
    }

    /// Like [`Opener::new`] with a replay cache holding at most `capacity` nonces.
    pub fn with_replay_capacity(key: &GossipKey, freshness: Duration, capacity: usize) -> Self {
        Self {
            cipher: key.cipher(),
            freshness_ms: u64::try_from(freshness.as_millis()).unwrap_or(u64::MAX),
            replays: ReplayCache::new(capacity.max(1)),
        }
    }

    /// Returns the plaintext of `datagram` received at `now_ms`, or why it must be dropped.
    ///
    /// Authentication comes first, so a forger cannot make anything count as stale or
    /// replayed, and only genuine datagrams ever enter the replay cache.
    pub fn open(&mut self, now_ms: u64, datagram: &[u8]) -> Result<Vec<u8>, Rejection> {
        if datagram.len() < ENVELOPE_OVERHEAD || datagram[0] != ENVELOPE_VERSION {
            return Err(Rejection::Forged);
        }
        let (header, rest) = datagram.split_at(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let timestamp_ms = u64::from_be_bytes(header[1..9].try_into().expect("8 bytes"));
        let nonce: [u8; NONCE_LEN] = header[9..].try_into().expect("12 bytes");
        let mut plaintext = ciphertext.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                header,
                &mut plaintext,
                Tag::from_slice(tag),
            )
            .map_err(|_| Rejection::Forged)?;
        if timestamp_ms.abs_diff(now_ms) > self.freshness_ms {
            return Err(Rejection::Stale);
        }
        self.replays
            .admit(now_ms, self.freshness_ms, timestamp_ms, nonce)?;
        Ok(plaintext)
    }

    /// How many nonces the replay cache holds.
    #[cfg(test)]
    pub(crate) fn cached_nonces(&self) -> usize {
        self.replays.seen.len()
    }
}

/// The nonces accepted within the freshness window, ordered by sender timestamp so that expiry
/// pops from the front. A replay carries the same timestamp as the original, since the header
/// is authenticated.
struct ReplayCache {
    seen: BTreeSet<(u64, [u8; NONCE_LEN])>,
    capacity: usize,
    /// Timestamps at or below this were forgotten early to respect `capacity`: refused.
    floor: Option<u64>,
}

impl ReplayCache {
    fn new(capacity: usize) -> Self {
        Self {
            seen: BTreeSet::new(),
            capacity,
            floor: None,
        }
    }

    fn admit(
        &mut self,
        now_ms: u64,
        window_ms: u64,
        timestamp_ms: u64,
        nonce: [u8; NONCE_LEN],
    ) -> Result<(), Rejection> {
        // An entry can be dropped once its timestamp fails the freshness check anyway.
        while let Some(&(oldest, _)) = self.seen.first() {
            if oldest.saturating_add(window_ms) >= now_ms {
                break;
            }
            self.seen.pop_first();
        }
        if self.floor.is_some_and(|floor| timestamp_ms <= floor) {
            return Err(Rejection::Stale);
        }
        if !self.seen.insert((timestamp_ms, nonce)) {
            return Err(Rejection::Replayed);
        }
        if self.seen.len() > self.capacity {
            if let Some((evicted, _)) = self.seen.pop_first() {
                self.floor = Some(self.floor.map_or(evicted, |floor| floor.max(evicted)));
            }
        }
        Ok(())
    }
}

/// Datagram counters of one gossip node, shared with whoever exports them.
#[derive(Debug, Default)]
pub struct SealStats {
    /// Sealed datagrams sent.
    pub sent: AtomicU64,
    /// Datagrams that passed every check and went to chitchat.
    pub received: AtomicU64,
    /// Datagrams dropped as too short, of an unknown version, or failing authentication.
    pub forged: AtomicU64,
    /// Datagrams dropped because their timestamp was outside the freshness window.
    pub stale: AtomicU64,
    /// Datagrams dropped because their nonce was already accepted.
    pub replayed: AtomicU64,
    /// Outgoing chitchat messages dropped because, sealed, they would not fit in a datagram.
    pub oversized: AtomicU64,
}

/// A copy of [`SealStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealStatsSnapshot {
    /// Sealed datagrams sent.
    pub sent: u64,
    /// Datagrams accepted.
    pub received: u64,
    /// Datagrams dropped as forged.
    pub forged: u64,
    /// Datagrams dropped as stale.
    pub stale: u64,
    /// Datagrams dropped as replayed.
    pub replayed: u64,
    /// Outgoing messages dropped as too large.
    pub oversized: u64,
}

impl SealStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> SealStatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SealStatsSnapshot {
            sent: read(&self.sent),
            received: read(&self.received),
            forged: read(&self.forged),
            stale: read(&self.stale),
            replayed: read(&self.replayed),
            oversized: read(&self.oversized),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn count_rejection(&self, rejection: Rejection) {
        Self::count(match rejection {
            Rejection::Forged => &self.forged,
            Rejection::Stale => &self.stale,
            Rejection::Replayed => &self.replayed,
        });
    }
}

/// A chitchat [`Transport`] whose datagrams are sealed under a [`GossipKey`].
pub struct SealedTransport {
    key: GossipKey,
    freshness: Duration,
    clock: Clock,
    stats: Arc<SealStats>,
    bound: std::sync::Mutex<Option<UdpSocket>>,
}

impl SealedTransport {
    /// A transport sealing with `key`, accepting timestamps within `freshness` of `clock`, and
    /// counting into `stats`.
    pub fn new(key: GossipKey, freshness: Duration, clock: Clock, stats: Arc<SealStats>) -> Self {
        Self {
            key,
            freshness,
            clock,
            stats,
            bound: std::sync::Mutex::new(None),
        }
    }

    /// Hands over an already bound socket: the next `open` of its address (or of port 0) uses
    /// it instead of binding, so the caller can bind port 0 and learn the port first.
    pub fn with_socket(self, socket: UdpSocket) -> Self {
        *self.bound.lock().expect("bound socket lock") = Some(socket);
        self
    }

    async fn wire_socket(&self, listen_addr: SocketAddr) -> anyhow::Result<UdpSocket> {
        let bound = self.bound.lock().expect("bound socket lock").take();
        if let Some(socket) = bound {
            if listen_addr.port() == 0 || socket.local_addr()? == listen_addr {
                return Ok(socket);
            }
        }
        UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("cannot bind the gossip socket on {listen_addr}/udp"))
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let wire = Arc::new(self.wire_socket(listen_addr).await?);
        let local_addr = wire.local_addr()?;
        let mut encoder = Encoder::open().await?;
        let sentinel = encoder.encode(sentinel_envelope()).await?;
        let decoder = Decoder::open(sentinel).await?;
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let receiver = Receiver {
            wire: wire.clone(),
            opener: Opener::new(&self.key, self.freshness),
            decoder,
            clock: self.clock.clone(),
            stats: self.stats.clone(),
            incoming_tx,
        };
        Ok(Box::new(SealedSocket {
            wire,
            local_addr,
            encoder,
            cipher: self.key.cipher(),
            clock: self.clock.clone(),
            stats: self.stats.clone(),
            incoming_rx,
            receive_task: tokio::spawn(receiver.run()),
        }))
    }
}

/// One open sealed socket. Receiving happens in a task of its own so that chitchat may cancel
/// `recv` at any point without losing a datagram halfway through the decoder.
struct SealedSocket {
    wire: Arc<UdpSocket>,
    local_addr: SocketAddr,
    encoder: Encoder,
    cipher: ChaCha20Poly1305,
    clock: Clock,
    stats: Arc<SealStats>,
    incoming_rx: mpsc::Receiver<RecvOutcome>,
    receive_task: JoinHandle<()>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.receive_task.abort();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let nothing_sent = SendOutcome { num_bytes_sent: 0 };
        let plaintext = match self.encoder.encode(envelope).await {
            Ok(plaintext) => plaintext,
            Err(error) => {
                warn!(peer = %to, error = %format!("{error:#}"), "gossip message not encoded");
                return Ok(nothing_sent);
            }
        };
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            SealStats::count(&self.stats.oversized);
            warn!(
                peer = %to,
                len = plaintext.len(),
                max = MAX_PLAINTEXT_LEN,
                "gossip message too large to seal; keep node state small"
            );
            return Ok(nothing_sent);
        }
        // Nonces come from the OS so that no two nodes (or restarts) can ever share a stream.
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let datagram = seal_with(&self.cipher, (self.clock)(), nonce, &plaintext);
        let num_bytes_sent = self
            .wire
            .send_to(&datagram, to)
            .await
            .with_context(|| format!("cannot send a gossip datagram to {to}"))?;
        SealStats::count(&self.stats.sent);
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.incoming_rx
            .recv()
            .await
            .ok_or_else(|| anyhow!("the gossip socket stopped receiving"))
    }
}

/// The receiving half: opens datagrams from the wire and decodes them for chitchat.
struct Receiver {
    wire: Arc<UdpSocket>,
    opener: Opener,
    decoder: Decoder,
    clock: Clock,
    stats: Arc<SealStats>,
    incoming_tx: mpsc::Sender<RecvOutcome>,
}

impl Receiver {
    async fn run(mut self) {
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let (len, from) = match self.wire.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(error) if is_transient(&error) => continue,
                Err(error) => {
                    warn!(error = %error, "gossip socket failed; receiving stops");
                    return;
                }
            };
            let plaintext = match self.opener.open((self.clock)(), &buf[..len]) {
                Ok(plaintext) => plaintext,
                Err(rejection) => {
                    // Per-datagram logs stay at debug: a flood must not flood the logs too.
                    self.stats.count_rejection(rejection);
                    debug!(peer = %from, reason = %rejection, "gossip datagram rejected");
                    continue;
                }
            };
            let envelope = match self.decoder.decode(&plaintext).await {
                Ok(Some(envelope)) => envelope,
                Ok(None) => {
                    warn!(peer = %from, "sealed gossip datagram holds no chitchat message");
                    continue;
                }
                Err(error) => {
                    warn!(peer = %from, error = %format!("{error:#}"), "gossip datagram not decoded");
                    continue;
                }
            };
            SealStats::count(&self.stats.received);
            let outcome = RecvOutcome {
                from_addr: from,
                envelope,
                num_bytes_received: len,
            };
            if self.incoming_tx.send(outcome).await.is_err() {
                return;
            }
        }
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::Interrupted
    )
}

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// A message no real peer sends (its cluster id is refused by config validation), used to mark
/// the end of a datagram fed to the decoder.
fn sentinel_envelope() -> ChitchatEnvelope {
    ChitchatEnvelope {
        version: ProtocolVersion::V0,
        message: ChitchatMessage::Syn {
            cluster_id: SENTINEL_CLUSTER_ID.to_owned(),
            digest: Default::default(),
        },
    }
}

fn is_sentinel(envelope: &ChitchatEnvelope) -> bool {
    matches!(
        &envelope.message,
        ChitchatMessage::Syn { cluster_id, .. } if cluster_id == SENTINEL_CLUSTER_ID
    )
}

/// Encodes envelopes with chitchat's UDP socket: it sends each one to a fresh loopback socket
/// connected to it, so the kernel delivers nothing else there, and that socket hands back the
/// bytes.
struct Encoder {
    codec: CodecSocket,
    codec_addr: SocketAddr,
    buf: Vec<u8>,
}

impl Encoder {
    async fn open() -> anyhow::Result<Self> {
        let codec = CodecSocket::open(loopback()).await?;
        let codec_addr = codec.local_addr()?;
        Ok(Self {
            codec,
            codec_addr,
            buf: vec![0u8; usize::from(u16::MAX)],
        })
    }

    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        let tap = UdpSocket::bind(loopback()).await?;
        tap.connect(self.codec_addr).await?;
        self.codec.send(tap.local_addr()?, envelope).await?;
        let len = timeout(CODEC_TIMEOUT, tap.recv(&mut self.buf))
            .await
            .context("the loopback encoder timed out")??;
        Ok(self.buf[..len].to_vec())
    }
}

/// Decodes plaintexts with chitchat's UDP socket. Each plaintext goes out from a fresh
/// loopback socket followed by the sentinel; the decoder reads until that socket's sentinel
/// and keeps what came before it from the same socket. Datagrams from anywhere else (another
/// local process) are ignored, and a plaintext chitchat cannot read yields nothing instead of
/// stalling, since chitchat skips it and the sentinel still arrives.
struct Decoder {
    codec: CodecSocket,
    codec_addr: SocketAddr,
    sentinel: Vec<u8>,
}

impl Decoder {
    async fn open(sentinel: Vec<u8>) -> anyhow::Result<Self> {
        let codec = CodecSocket::open(loopback()).await?;
        let codec_addr = codec.local_addr()?;
        Ok(Self {
            codec,
            codec_addr,
            sentinel,
        })
    }

    async fn decode(&mut self, plaintext: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        let tap = UdpSocket::bind(loopback()).await?;
        tap.connect(self.codec_addr).await?;
        let tap_addr = tap.local_addr()?;
        tap.send(plaintext).await?;
        tap.send(&self.sentinel).await?;
        let codec = &mut self.codec;
        let read = async move {
            let mut message = None;
            loop {
                let outcome = codec.recv().await?;
                if outcome.from_addr != tap_addr {
                    continue;
                }
                if is_sentinel(&outcome.envelope) {
                    return anyhow::Ok(message);
                }
                message = Some(outcome.envelope);
            }
        };
        timeout(CODEC_TIMEOUT, read)
            .await
            .context("the loopback decoder timed out")?
    }
}
