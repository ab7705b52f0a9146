//! The node's QUIC endpoint: one UDP socket that serves the cluster's mutually authenticated
//! peer connections (ALPN `shoal/1`) and join requests from nodes that have no certificate yet
//! (ALPN `shoal-join/1`), and dials peers over a pool of one connection per peer.
//!
//! Cluster traffic: the dialer opens a bidirectional stream and writes one byte, the stream's
//! *kind*; the accepting node hands the stream to its [`StreamHandler`] with the dialer's node
//! id, read from its certificate. [`PeerLink::call`] is request/response on one stream, in
//! [`write_frame`] framing; [`QuicNode::open`] gives the raw streams for anything longer.
//!
//! Security: TLS lets a client without a certificate finish the handshake (so that a joining
//! node can connect at all), so the accept side closes every `shoal/1` connection whose peer
//! presented no cluster certificate before it accepts a single stream. A `shoal-join/1`
//! connection carries exactly one request to the [`JoinHandler`] and nothing else. Dials name
//! the peer's node id as the TLS server name, so a node answering with another node's
//! certificate is refused by the handshake itself. No 0-RTT anywhere (it is replayable).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{
    ConnectionError, Endpoint, ReadError, ReadExactError, RecvStream, SendStream, TransportConfig,
    VarInt, WriteError,
};
use rustls::pki_types::CertificateDer;
use tracing::{debug, info, warn};

pub use crate::link::StreamHandler;
use crate::link::{LinkRecv, LinkSend, PeerLink};
use crate::pki::{self, NodeIdentity, PkiError, ALPN, JOIN_ALPN};

/// Default interval between keep-alive packets on an otherwise quiet connection.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Default time without any packet from a peer after which its connection is dead.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default bound on one dial (UDP handshake included).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default number of concurrent bidirectional streams a peer may open on one connection.
pub const DEFAULT_MAX_STREAMS: u32 = 1024;

/// The largest join request a node accepts.
pub const MAX_JOIN_REQUEST: usize = 64 * 1024;

/// The largest join answer `request_join` accepts.
pub const MAX_JOIN_RESPONSE: usize = 1024 * 1024;

/// The largest response [`PeerLink::call`] accepts; stream anything bigger over
/// [`QuicNode::open`].
pub const MAX_CALL_RESPONSE: usize = 16 * 1024 * 1024;

/// Application close code: the connection ended normally.
pub const CLOSE_DONE: u32 = 0;

/// Application close code: a `shoal/1` peer presented no cluster certificate.
pub const CLOSE_CERTIFICATE_REQUIRED: u32 = 1;

/// Application close code: the peer broke the protocol (unknown ALPN, a second join stream,
/// a join to a node that takes none, a malformed join request).
pub const CLOSE_PROTOCOL: u32 = 2;

/// Application close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 3;

/// The close reason a `shoal/1` peer without a cluster certificate receives.
pub const CERTIFICATE_REQUIRED: &str = "a cluster certificate is required";

/// How long an accepted stream may take to send its kind byte.
const KIND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a join connection may take from handshake to answer (the handler included).
const JOIN_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a join answer is given to reach the joining node before the connection closes.
const JOIN_LINGER: Duration = Duration::from_secs(2);

/// How long [`QuicNode::shutdown`] waits for closes to reach the peers.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// Flow-control window of a whole connection: bounds what one peer (a certificate-less joining
/// node included) can make this node buffer across all its streams.
const CONNECTION_RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;

/// The TLS server name a joining node dials the seed by; the pinned verifier ignores it.
const JOIN_SERVER_NAME: &str = "seed.shoal.internal";

/// Join answer status bytes: the payload is the handler's response, or its refusal message.
const JOIN_ACCEPTED: u8 = 0;
const JOIN_REFUSED: u8 = 1;

/// What went wrong on the QUIC layer; each message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// A peer could not be dialed: no answer, a failed handshake, or the wrong node answered.
    #[error("node {peer} at {addr} is unreachable: {reason}")]
    Unreachable {
        /// The node id that was dialed.
        peer: u64,
        /// The address it was dialed at.
        addr: SocketAddr,
        /// Why the dial failed.
        reason: String,
    },
    /// A joining node could not reach the seed, or the seed is not the cluster the token pins.
    #[error("could not join through the seed at {seed}: {reason}")]
    SeedUnreachable {
        /// The seed's address from the join token.
        seed: SocketAddr,
        /// Why the connection failed.
        reason: String,
    },
    /// The seed's join handler refused the request; the message says why.
    #[error("the join request was refused: {0}")]
    Refused(String),
    /// The connection or stream ended before the exchange finished.
    #[error("the peer connection or stream closed early: {0}")]
    Closed(String),
    /// The exchange did not finish in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A frame is over the size the reader allows.
    #[error("a frame of {len} bytes is larger than the {max} bytes allowed")]
    FrameTooLarge {
        /// The frame's announced length.
        len: usize,
        /// The most the reader accepts.
        max: usize,
    },
    /// The peer sent something the protocol does not allow.
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    /// The TLS configuration could not be built from the node's certificates.
    #[error("the node's TLS configuration is unusable: {0}")]
    Tls(#[from] PkiError),
    /// The node certificate does not carry the node id the node runs as.
    #[error("the node certificate is for node {found:?}, not node {expected}; join the cluster again to get a certificate for this node")]
    IdentityMismatch {
        /// The node id in the configuration.
        expected: u64,
        /// The node id the certificate carries, if any.
        found: Option<u64>,
    },
    /// The UDP socket could not be bound.
    #[error(
        "could not bind the QUIC socket on {addr}: {source}; is another process using this port?"
    )]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's answer.
        source: std::io::Error,
    },
    /// Another socket operation failed.
    #[error("a QUIC socket operation failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What a node's QUIC endpoint needs.
#[derive(Clone, Debug)]
pub struct QuicConfig {
    /// The UDP address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The cluster CA certificate.
    pub ca_cert: CertificateDer<'static>,
    /// This node's certificate and key.
    pub identity: NodeIdentity,
    /// This node's id; must be the id its certificate carries.
    pub node_id: u64,
    /// Interval between keep-alive packets; below `idle_timeout`.
    pub keep_alive: Duration,
    /// A connection with no packet for this long is dead.
    pub idle_timeout: Duration,
    /// Bound on one dial.
    pub connect_timeout: Duration,
    /// Concurrent bidirectional streams a peer may open on one connection.
    pub max_streams: u32,
}

impl QuicConfig {
    /// A config with the default timings (keep-alive 1 s, idle timeout 5 s, connect timeout
    /// 2 s) and 1024 concurrent streams per connection.
    pub fn new(
        listen: SocketAddr,
        ca_cert: CertificateDer<'static>,
        identity: NodeIdentity,
        node_id: u64,
    ) -> Self {
        Self {
            listen,
            ca_cert,
            identity,
            node_id,
            keep_alive: DEFAULT_KEEP_ALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

/// Answers join requests from nodes without a certificate (one request per connection).
#[async_trait]
pub trait JoinHandler: Send + Sync + 'static {
    /// The answer to one join request from `remote`; an `Err` is the refusal message the
    /// joining node shows its user, so it must not leak secrets.
    async fn join(&self, request: Vec<u8>, remote: SocketAddr) -> Result<Vec<u8>, String>;
}

/// The pooled connection to one peer, with the address it was dialed at.
struct Pooled {
    addr: SocketAddr,
    connection: quinn::Connection,
}

/// One peer's pool slot; the async lock makes concurrent dials to one peer share one.
type Slot = Arc<tokio::sync::Mutex<Option<Pooled>>>;

/// What the accept loop hands every incoming connection.
struct Services {
    streams: Arc<dyn StreamHandler>,
    join: Option<Arc<dyn JoinHandler>>,
}

/// A node's QUIC endpoint: serves peers and join requests, and dials peers.
pub struct QuicNode {
    endpoint: Endpoint,
    node_id: u64,
    local_addr: SocketAddr,
    connect_timeout: Duration,
    pool: Mutex<HashMap<u64, Slot>>,
    dials: AtomicU64,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for QuicNode {
    /// The node id and address; the pool and handlers say nothing useful in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicNode")
            .field("node_id", &self.node_id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl QuicNode {
    /// Binds the UDP socket and starts the accept loop (a tokio task).
    ///
    /// Must run inside a tokio runtime. Without a `join` handler, join connections are closed.
    pub fn bind(
        config: QuicConfig,
        streams: Arc<dyn StreamHandler>,
        join: Option<Arc<dyn JoinHandler>>,
    ) -> Result<Arc<Self>, QuicError> {
        let found = pki::node_id_of(&config.identity.cert_der()?);
        if found != Some(config.node_id) {
            return Err(QuicError::IdentityMismatch {
                expected: config.node_id,
                found,
            });
        }
        let server_tls = pki::cluster_server_config(&config.ca_cert, &config.identity)?;
        let mut server_config =
            quinn::ServerConfig::with_crypto(Arc::new(quic_server_config(server_tls)?));
        server_config.transport_config(Arc::new(transport(&config, config.max_streams)));
        let client_tls = pki::client_config(&config.ca_cert, &config.identity)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic_client_config(client_tls)?));
        // Nothing is ever served on a connection this node dialed.
        client_config.transport_config(Arc::new(transport(&config, 0)));

        let mut endpoint =
            Endpoint::server(server_config, config.listen).map_err(|source| QuicError::Bind {
                addr: config.listen,
                source,
            })?;
        endpoint.set_default_client_config(client_config);
        let local_addr = endpoint.local_addr()?;
        let services = Arc::new(Services { streams, join });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), services));
        info!(node = config.node_id, addr = %local_addr, "quic endpoint listening");
        Ok(Arc::new(Self {
            endpoint,
            node_id: config.node_id,
            local_addr,
            connect_timeout: config.connect_timeout,
            pool: Mutex::new(HashMap::new()),
            dials: AtomicU64::new(0),
            accept_task,
        }))
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// How many connections this node has dialed since it started (a metric: a count that
    /// keeps rising means connections keep dying).
    pub fn dials(&self) -> u64 {
        self.dials.load(Ordering::Relaxed)
    }

    /// Opens a bidi stream to `peer` at `addr` on the pooled connection (dialing, or redialing a
    /// closed one, as needed; concurrent callers share one dial), writes `kind` as the first byte.
    ///
    /// A pooled connection dialed at another address is replaced. Dropping the send half
    /// without an error finishes the stream cleanly, so a protocol that can be cut short must
    /// carry its own length (as [`write_frame`] does).
    pub async fn open(
        &self,
        peer: u64,
        addr: SocketAddr,
        kind: u8,
    ) -> Result<(LinkSend, LinkRecv), QuicError> {
        let (connection, fresh) = self.connection(peer, addr).await?;
        match open_stream(&connection, kind).await {
            // The pooled connection died after the check: one fresh dial, never more.
            Err(_) if !fresh && connection.close_reason().is_some() => {
                let (connection, _) = self.connection(peer, addr).await?;
                open_stream(&connection, kind).await
            }
            outcome => outcome,
        }
        .map(|(send, recv)| (LinkSend::Quic(send), LinkRecv::Quic(recv)))
    }

    /// Drops the pooled connection to `peer` (e.g. when its address changed).
    ///
    /// Streams already open on it run to their end; the next [`QuicNode::open`] dials anew.
    pub fn forget(&self, peer: u64) {
        self.pool.lock().expect("quic pool lock").remove(&peer);
    }

    /// Drops and closes the pooled connection to `peer` (it died or restarted): every stream
    /// still open on it fails at once instead of waiting for the idle timeout.
    pub fn close(&self, peer: u64) {
        let Some(slot) = self.pool.lock().expect("quic pool lock").remove(&peer) else {
            return;
        };
        // A dial in progress holds the lock: its connection is new, so nothing to close.
        let Ok(pooled) = slot.try_lock() else {
            return;
        };
        if let Some(live) = pooled.as_ref() {
            live.connection
                .close(quinn::VarInt::from_u32(0), b"peer is gone");
        }
    }

    /// Closes every connection and waits (bounded) for the endpoint to go idle.
    pub async fn shutdown(&self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        self.pool.lock().expect("quic pool lock").clear();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!(node = self.node_id, "quic endpoint did not go idle in time");
        }
        self.accept_task.abort();
    }

    /// The live pooled connection to `peer` at `addr`, dialing one if needed; `true` when it
    /// was dialed by this call.
    async fn connection(
        &self,
        peer: u64,
        addr: SocketAddr,
    ) -> Result<(quinn::Connection, bool), QuicError> {
        let slot = self
            .pool
            .lock()
            .expect("quic pool lock")
            .entry(peer)
            .or_default()
            .clone();
        let mut pooled = slot.lock().await;
        if let Some(live) = pooled.as_ref() {
            if live.addr == addr && live.connection.close_reason().is_none() {
                return Ok((live.connection.clone(), false));
            }
        }
        *pooled = None;
        let connection = self.dial(peer, addr).await?;
        *pooled = Some(Pooled {
            addr,
            connection: connection.clone(),
        });
        Ok((connection, true))
    }

    /// A new connection to `peer`; TLS checks that the server holds `peer`'s certificate.
    async fn dial(&self, peer: u64, addr: SocketAddr) -> Result<quinn::Connection, QuicError> {
        let unreachable = |reason: String| QuicError::Unreachable { peer, addr, reason };
        self.dials.fetch_add(1, Ordering::Relaxed);
        let connecting = self
            .endpoint
            .connect(addr, &pki::node_id_dns_name(peer))
            .map_err(|err| unreachable(err.to_string()))?;
        let connection = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| unreachable(format!("no handshake within {:?}", self.connect_timeout)))?
            .map_err(|err| unreachable(describe_connection_error(&err)))?;
        // TLS already matched the server name; this guards against a future config change.
        if peer_node_id(&connection) != Some(peer) {
            connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"wrong node");
            return Err(unreachable("another node answered".to_string()));
        }
        debug!(node = self.node_id, peer, %addr, "quic connection dialed");
        Ok(connection)
    }
}

#[async_trait]
impl PeerLink for QuicNode {
    fn node_id(&self) -> u64 {
        self.node_id
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn dials(&self) -> u64 {
        QuicNode::dials(self)
    }

    async fn open(
        &self,
        peer: u64,
        addr: SocketAddr,
        kind: u8,
    ) -> Result<(LinkSend, LinkRecv), QuicError> {
        QuicNode::open(self, peer, addr, kind).await
    }

    fn forget(&self, peer: u64) {
        QuicNode::forget(self, peer);
    }

    fn close(&self, peer: u64) {
        QuicNode::close(self, peer);
    }

    async fn shutdown(&self) {
        QuicNode::shutdown(self).await;
    }
}

impl Drop for QuicNode {
    /// Closes the endpoint so that its socket is released once the closes have been sent.
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"node shutting down");
        self.accept_task.abort();
    }
}

/// Writes a frame: the length as a big-endian u32, then the bytes.
pub async fn write_frame(send: &mut LinkSend, bytes: &[u8]) -> Result<(), QuicError> {
    let len = u32::try_from(bytes.len()).map_err(|_| QuicError::FrameTooLarge {
        len: bytes.len(),
        max: u32::MAX as usize,
    })?;
    match send {
        LinkSend::Quic(send) => {
            send.write_all(&len.to_be_bytes())
                .await
                .map_err(write_error)?;
            send.write_all(bytes).await.map_err(write_error)
        }
        LinkSend::Pipe(send) => {
            use tokio::io::AsyncWriteExt;
            send.write_all(&len.to_be_bytes())
                .await
                .map_err(pipe_error)?;
            send.write_all(bytes).await.map_err(pipe_error)
        }
    }
}

/// Reads one frame written by [`write_frame`]; refuses a frame over `max` bytes before
/// reading its body.
pub async fn read_frame(recv: &mut LinkRecv, max: usize) -> Result<Vec<u8>, QuicError> {
    match recv {
        LinkRecv::Quic(recv) => read_quic_frame(recv, max).await,
        LinkRecv::Pipe(recv) => read_pipe_frame(recv, max).await,
    }
}

async fn read_quic_frame(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, QuicError> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header)
        .await
        .map_err(|err| match err {
            ReadExactError::FinishedEarly(_) => {
                QuicError::Closed("the stream ended without a frame".to_string())
            }
            ReadExactError::ReadError(err) => read_error(err),
        })?;
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(QuicError::FrameTooLarge { len, max });
    }
    // Grow with what arrives rather than trusting the announced length up front.
    let mut frame = Vec::with_capacity(len.min(64 * 1024));
    while frame.len() < len {
        match recv
            .read_chunk(len - frame.len(), true)
            .await
            .map_err(read_error)?
        {
            Some(chunk) => frame.extend_from_slice(&chunk.bytes),
            None => return Err(cut_short(frame.len(), len)),
        }
    }
    Ok(frame)
}

async fn read_pipe_frame(
    recv: &mut Box<dyn crate::link::PipeRecv>,
    max: usize,
) -> Result<Vec<u8>, QuicError> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            QuicError::Closed("the stream ended without a frame".to_string())
        } else {
            pipe_error(err)
        }
    })?;
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(QuicError::FrameTooLarge { len, max });
    }
    let mut frame = Vec::with_capacity(len.min(64 * 1024));
    let mut chunk = [0u8; 16 * 1024];
    while frame.len() < len {
        let want = (len - frame.len()).min(chunk.len());
        match recv.read(&mut chunk[..want]).await.map_err(pipe_error)? {
            0 => return Err(cut_short(frame.len(), len)),
            read => frame.extend_from_slice(&chunk[..read]),
        }
    }
    Ok(frame)
}

fn cut_short(got: usize, len: usize) -> QuicError {
    QuicError::Closed(format!("the stream ended after {got} of {len} frame bytes"))
}

fn pipe_error(err: std::io::Error) -> QuicError {
    QuicError::Closed(err.to_string())
}

/// For a handler answering a [`PeerLink::call`]: reads the request frame (at most `max` bytes).
pub async fn read_request(recv: &mut LinkRecv, max: usize) -> Result<Vec<u8>, QuicError> {
    read_frame(recv, max).await
}

/// For a handler answering a [`PeerLink::call`]: writes the response frame and finishes the
/// stream (the bytes still reach the caller after `send` is dropped).
pub async fn respond(mut send: LinkSend, response: &[u8]) -> Result<(), QuicError> {
    write_frame(&mut send, response).await?;
    send.finish()
}

/// The `shoal join` side: dials `seed` trusting only the CA `fingerprint` (pinned_client_config), without a client cert, on ALPN shoal-join/1; sends `request`, returns the response or the server's refusal message.
///
/// The request is sent only after the seed proved it holds a certificate from the pinned CA.
/// A refusal is [`QuicError::Refused`] with the seed's message; a seed that is not the
/// pinned cluster is [`QuicError::SeedUnreachable`]. Everything is bounded by `timeout`.
pub async fn request_join(
    seed: SocketAddr,
    fingerprint: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, QuicError> {
    if request.len() > MAX_JOIN_REQUEST {
        return Err(QuicError::FrameTooLarge {
            len: request.len(),
            max: MAX_JOIN_REQUEST,
        });
    }
    let tls = quic_client_config(pki::pinned_client_config(fingerprint)?)?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(tls));
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    client_config.transport_config(Arc::new(transport));
    let any_port: SocketAddr = if seed.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = Endpoint::client(any_port)?;
    let outcome = tokio::time::timeout(
        timeout,
        join_exchange(&endpoint, client_config, seed, request),
    )
    .await
    .unwrap_or(Err(QuicError::Timeout(timeout)));
    endpoint.close(VarInt::from_u32(CLOSE_DONE), b"done");
    // Lets the close reach the seed so it need not wait out its linger.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    outcome
}

/// One join request on a fresh connection to `seed`.
async fn join_exchange(
    endpoint: &Endpoint,
    client_config: quinn::ClientConfig,
    seed: SocketAddr,
    request: &[u8],
) -> Result<Vec<u8>, QuicError> {
    let unreachable = |reason: String| QuicError::SeedUnreachable { seed, reason };
    let connection = endpoint
        .connect_with(client_config, seed, JOIN_SERVER_NAME)
        .map_err(|err| unreachable(err.to_string()))?
        .await
        .map_err(|err| unreachable(describe_seed_error(&err)))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|err| QuicError::Closed(describe_connection_error(&err)))?;
    let (mut send, mut recv) = (LinkSend::Quic(send), LinkRecv::Quic(recv));
    write_frame(&mut send, request).await?;
    send.finish()?;
    let answer = read_frame(&mut recv, MAX_JOIN_RESPONSE).await?;
    connection.close(VarInt::from_u32(CLOSE_DONE), b"done");
    match answer.split_first() {
        Some((&JOIN_ACCEPTED, response)) => Ok(response.to_vec()),
        Some((&JOIN_REFUSED, message)) => Err(QuicError::Refused(
            String::from_utf8_lossy(message).into_owned(),
        )),
        _ => Err(QuicError::Protocol(
            "the seed's join answer has no valid status byte".to_string(),
        )),
    }
}

/// Accepts connections until the endpoint closes; each is served on its own task.
async fn accept_loop(endpoint: Endpoint, services: Arc<Services>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, services.clone()));
    }
    debug!("quic accept loop ended");
}

/// Finishes the handshake, then serves the connection by its ALPN.
async fn serve_connection(incoming: quinn::Incoming, services: Arc<Services>) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(err) => {
            debug!(%remote, error = %describe_connection_error(&err), "quic handshake failed");
            return;
        }
    };
    let close =
        |code: u32, reason: &str| connection.close(VarInt::from_u32(code), reason.as_bytes());
    match negotiated_alpn(&connection).as_deref() {
        Some(ALPN) => match peer_node_id(&connection) {
            Some(peer) => serve_peer(connection, peer, services.streams.clone()).await,
            None => {
                warn!(%remote, "quic peer without a cluster certificate refused");
                close(CLOSE_CERTIFICATE_REQUIRED, CERTIFICATE_REQUIRED);
            }
        },
        Some(JOIN_ALPN) => match services.join.clone() {
            Some(handler) => serve_join(connection, handler).await,
            None => close(CLOSE_PROTOCOL, "this node does not accept join requests"),
        },
        _ => {
            warn!(%remote, "quic connection without a known protocol refused");
            close(CLOSE_PROTOCOL, "unknown protocol");
        }
    }
}

/// Hands every stream of an authenticated peer to the stream handler, each on its own task.
async fn serve_peer(connection: quinn::Connection, peer: u64, handler: Arc<dyn StreamHandler>) {
    debug!(peer, remote = %connection.remote_address(), "quic peer connected");
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(peer, send, recv, handler.clone()));
            }
            Err(err) => {
                debug!(peer, reason = %describe_connection_error(&err), "quic peer connection ended");
                return;
            }
        }
    }
}

/// Reads a stream's kind byte and hands it over.
async fn serve_stream(
    peer: u64,
    send: SendStream,
    mut recv: RecvStream,
    handler: Arc<dyn StreamHandler>,
) {
    let mut kind = [0u8; 1];
    match tokio::time::timeout(KIND_TIMEOUT, recv.read_exact(&mut kind)).await {
        Ok(Ok(())) => {
            handler
                .handle(peer, kind[0], LinkSend::Quic(send), LinkRecv::Quic(recv))
                .await
        }
        _ => debug!(peer, "quic stream sent no kind byte"),
    }
}

/// Serves the one join request of a connection from a node that may hold no certificate,
/// then lets the answer reach it and closes.
async fn serve_join(connection: quinn::Connection, handler: Arc<dyn JoinHandler>) {
    let remote = connection.remote_address();
    let exchange = async {
        let (send, recv) = connection
            .accept_bi()
            .await
            .map_err(|err| QuicError::Closed(describe_connection_error(&err)))?;
        let (mut send, mut recv) = (LinkSend::Quic(send), LinkRecv::Quic(recv));
        let request = read_frame(&mut recv, MAX_JOIN_REQUEST).await?;
        let answer = match handler.join(request, remote).await {
            Ok(response) => [&[JOIN_ACCEPTED][..], &response].concat(),
            Err(message) => {
                info!(%remote, reason = %message, "join request refused");
                [&[JOIN_REFUSED][..], message.as_bytes()].concat()
            }
        };
        write_frame(&mut send, &answer).await?;
        send.finish()
    };
    let outcome = tokio::time::timeout(JOIN_EXCHANGE_TIMEOUT, exchange).await;
    if let Err(err) = outcome.unwrap_or(Err(QuicError::Timeout(JOIN_EXCHANGE_TIMEOUT))) {
        debug!(%remote, error = %err, "join connection failed");
        connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"join request failed");
        return;
    }
    // `close` drops undelivered data: wait until the joining node has read the answer and
    // closed, but serve nothing more.
    tokio::select! {
        _ = connection.closed() => {}
        _ = connection.accept_bi() => {
            debug!(%remote, "second stream on a join connection refused");
            connection.close(
                VarInt::from_u32(CLOSE_PROTOCOL),
                b"a join connection carries one request",
            );
        }
        _ = tokio::time::sleep(JOIN_LINGER) => {}
    }
    connection.close(VarInt::from_u32(CLOSE_DONE), b"done");
}

/// Opens a stream on `connection` and writes its kind byte, which makes it visible to the peer.
async fn open_stream(
    connection: &quinn::Connection,
    kind: u8,
) -> Result<(SendStream, RecvStream), QuicError> {
    let (mut send, recv) = connection
        .open_bi()
        .await
        .map_err(|err| QuicError::Closed(describe_connection_error(&err)))?;
    send.write_all(&[kind]).await.map_err(write_error)?;
    Ok((send, recv))
}

/// The transport settings of both sides; `incoming_streams` is how many bidi streams the peer
/// may open (0 on connections this node dials: nothing is served on them).
fn transport(config: &QuicConfig, incoming_streams: u32) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .keep_alive_interval(Some(config.keep_alive))
        .max_idle_timeout(Some(
            config.idle_timeout.try_into().unwrap_or(VarInt::MAX.into()),
        ))
        .max_concurrent_bidi_streams(VarInt::from_u32(incoming_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .datagram_receive_buffer_size(None);
    transport
}

/// rustls's `max_early_data_size` stays 0 in the server config: no 0-RTT.
fn quic_server_config(tls: rustls::ServerConfig) -> Result<QuicServerConfig, QuicError> {
    QuicServerConfig::try_from(tls).map_err(|err| no_initial_suite(&err))
}

fn quic_client_config(tls: rustls::ClientConfig) -> Result<QuicClientConfig, QuicError> {
    QuicClientConfig::try_from(tls).map_err(|err| no_initial_suite(&err))
}

fn no_initial_suite(err: &dyn std::error::Error) -> QuicError {
    QuicError::Tls(PkiError::Tls(rustls::Error::General(err.to_string())))
}

/// The ALPN protocol the handshake settled on.
fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

/// The node id in the peer's verified certificate, if it presented one.
fn peer_node_id(connection: &quinn::Connection) -> Option<u64> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    pki::node_id_of(chain.first()?)
}

/// A connection error as one readable phrase, with the peer's close reason when it gave one.
fn describe_connection_error(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ApplicationClosed(close) if close.reason.is_empty() => {
            format!("the peer closed the connection (code {})", close.error_code)
        }
        ConnectionError::ApplicationClosed(close) => format!(
            "the peer closed the connection: {}",
            String::from_utf8_lossy(&close.reason)
        ),
        ConnectionError::LocallyClosed => "the connection was closed locally".to_string(),
        ConnectionError::TimedOut => "the peer stopped answering".to_string(),
        other => other.to_string(),
    }
}

/// Like [`describe_connection_error`], but names a pinned-fingerprint mismatch in words: rustls
/// hands the verifier's error to quinn only as its debug text.
fn describe_seed_error(err: &ConnectionError) -> String {
    let description = describe_connection_error(err);
    if description.contains("FingerprintMismatch") {
        PkiError::FingerprintMismatch.to_string()
    } else {
        description
    }
}

fn write_error(err: WriteError) -> QuicError {
    match err {
        WriteError::ConnectionLost(err) => QuicError::Closed(describe_connection_error(&err)),
        WriteError::Stopped(code) => {
            QuicError::Closed(format!("the peer stopped reading (code {code})"))
        }
        other => QuicError::Closed(other.to_string()),
    }
}

fn read_error(err: ReadError) -> QuicError {
    match err {
        ReadError::ConnectionLost(err) => QuicError::Closed(describe_connection_error(&err)),
        ReadError::Reset(code) => {
            QuicError::Closed(format!("the peer reset the stream (code {code})"))
        }
        other => QuicError::Closed(other.to_string()),
    }
}

#[cfg(test)]
#[path = "quic_tests.rs"]
mod tests;
