//! Node-to-node streams through the simulated network: a [`PeerLink`] whose streams are
//! in-memory pipes, each write one ordered [`Class::Stream`] message of [`Net`].
//!
//! What QUIC would do, approximately:
//! - a dial to a node that is down or cut off fails after [`CONNECT_TIMEOUT`];
//! - bytes arrive in order after the network's latency;
//! - a write lost to a partition or a crash kills the stream once QUIC's idle timeout
//!   ([`IDLE_TIMEOUT`]) has passed: then the reader gets an error and the writer's next write
//!   fails (QUIC would also lose a connection that a partition cut for that long; a shorter
//!   partition it would ride out, which the simulator does not model);
//! - a peer that vanishes leaves the caller waiting for its own timeout or the idle timeout.
//!
//! The node at the other end is found in the [`Switchboard`], where a node registers the handler
//! of its streams and the runtime they run on when it starts, and from which a crash removes it.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use shoal_mesh::link::{LinkRecv, LinkSend, PeerLink, PipeRecv, PipeSend, StreamHandler};
use shoal_mesh::quic::QuicError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::net::{Class, Net};
use crate::trace::NodeId;

/// How long a dial to an unreachable node takes to fail (QUIC's connect timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after a loss a stream dies (the QUIC idle timeout of `cluster/mod.rs`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A running node's stream handler and the runtime its streams are served on.
#[derive(Clone)]
struct Endpoint {
    handler: Arc<dyn StreamHandler>,
    runtime: tokio::runtime::Handle,
}

/// Where each running node takes its incoming streams.
#[derive(Clone, Default)]
pub struct Switchboard {
    endpoints: Arc<Mutex<BTreeMap<NodeId, Endpoint>>>,
}

impl Switchboard {
    /// `node` is up: streams to it are served by `handler` on `runtime`.
    pub fn register(
        &self,
        node: NodeId,
        handler: Arc<dyn StreamHandler>,
        runtime: tokio::runtime::Handle,
    ) {
        self.lock().insert(node, Endpoint { handler, runtime });
    }

    /// `node` is down.
    pub fn unregister(&self, node: NodeId) {
        self.lock().remove(&node);
    }

    fn endpoint(&self, node: NodeId) -> Option<Endpoint> {
        self.lock().get(&node).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Endpoint>> {
        super::lock(&self.endpoints)
    }
}

/// Told of every stream a node opens: (from, to, kind).
pub type OpenHook = Arc<dyn Fn(NodeId, NodeId, u8) + Send + Sync>;

/// One node's [`PeerLink`] over the simulated network.
pub struct SimLink {
    node: NodeId,
    addr: SocketAddr,
    net: Net,
    board: Switchboard,
    dials: AtomicU64,
    on_open: Option<OpenHook>,
}

impl SimLink {
    /// The link of `node`, which peers know at `addr`.
    pub fn new(node: NodeId, addr: SocketAddr, net: Net, board: Switchboard) -> Self {
        Self {
            node,
            addr,
            net,
            board,
            dials: AtomicU64::new(0),
            on_open: None,
        }
    }

    /// Calls `hook` with every stream this node opens, before it is dialed.
    pub fn on_open(mut self, hook: OpenHook) -> Self {
        self.on_open = Some(hook);
        self
    }
}

#[async_trait]
impl PeerLink for SimLink {
    fn node_id(&self) -> u64 {
        self.node
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn dials(&self) -> u64 {
        self.dials.load(Ordering::Relaxed)
    }

    async fn open(
        &self,
        peer: u64,
        addr: SocketAddr,
        kind: u8,
    ) -> Result<(LinkSend, LinkRecv), QuicError> {
        self.dials.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.on_open {
            hook(self.node, peer, kind);
        }
        let reachable = self.board.endpoint(peer).is_some()
            && !self.net.blocked(self.node, peer)
            && !self.net.blocked(peer, self.node);
        if !reachable {
            tokio::time::sleep(CONNECT_TIMEOUT).await;
            return Err(QuicError::Unreachable {
                peer,
                addr,
                reason: format!("no handshake within {CONNECT_TIMEOUT:?}"),
            });
        }
        let (to_peer, peer_reads) = pipe(&self.net, self.node, peer);
        let (to_us, we_read) = pipe(&self.net, peer, self.node);
        let board = self.board.clone();
        let from = self.node;
        let ours = to_peer.state.clone();
        let net = self.net.clone();
        // The open travels ahead of the bytes on the same ordered path.
        self.net.send(
            from,
            peer,
            Class::Stream,
            Box::new(move |delivered| {
                let endpoint = board.endpoint(peer).filter(|_| delivered);
                match endpoint {
                    Some(Endpoint { handler, runtime }) => {
                        let send = LinkSend::Pipe(Box::new(to_us));
                        let recv = LinkRecv::Pipe(Box::new(peer_reads));
                        runtime.spawn(async move { handler.handle(from, kind, send, recv).await });
                    }
                    None => {
                        // Never opened: the stream dies at the idle timeout, like the rest.
                        ours.dying.store(true, Ordering::Relaxed);
                        drop(peer_reads);
                        let mut to_us = to_us;
                        net.after(
                            IDLE_TIMEOUT.as_millis() as u64,
                            Box::new(move |_| {
                                ours.broken.store(true, Ordering::Relaxed);
                                to_us.reset_now(0);
                            }),
                        );
                    }
                }
            }),
        );
        Ok((
            LinkSend::Pipe(Box::new(to_peer)),
            LinkRecv::Pipe(Box::new(we_read)),
        ))
    }

    fn forget(&self, _peer: u64) {}

    fn close(&self, _peer: u64) {}

    async fn shutdown(&self) {}
}

/// What travels on a pipe.
enum Chunk {
    Data(Vec<u8>),
    End,
    Reset(u32),
}

/// Shared between a pipe's writer and the closures carrying its bytes.
struct PipeState {
    /// A chunk was lost: nothing more is delivered, and the stream dies after the timeout.
    dying: AtomicBool,
    /// The stream is dead: writes fail.
    broken: AtomicBool,
}

/// The writing end of a one-way pipe from `from` to `to`.
struct PipeWriter {
    net: Net,
    from: NodeId,
    to: NodeId,
    queue: mpsc::UnboundedSender<Chunk>,
    state: Arc<PipeState>,
    done: bool,
}

/// The reading end of a one-way pipe.
struct PipeReader {
    queue: mpsc::UnboundedReceiver<Chunk>,
    pending: VecDeque<u8>,
    ended: bool,
}

fn pipe(net: &Net, from: NodeId, to: NodeId) -> (PipeWriter, PipeReader) {
    let (queue, incoming) = mpsc::unbounded_channel();
    (
        PipeWriter {
            net: net.clone(),
            from,
            to,
            queue,
            state: Arc::new(PipeState {
                dying: AtomicBool::new(false),
                broken: AtomicBool::new(false),
            }),
            done: false,
        },
        PipeReader {
            queue: incoming,
            pending: VecDeque::new(),
            ended: false,
        },
    )
}

impl PipeWriter {
    /// Sends `chunk` through the network; a loss kills the stream after the idle timeout.
    fn post(&self, chunk: Chunk) {
        let queue = self.queue.clone();
        let state = self.state.clone();
        let net = self.net.clone();
        self.net.send(
            self.from,
            self.to,
            Class::Stream,
            Box::new(move |delivered| {
                if state.dying.load(Ordering::Relaxed) {
                    return;
                }
                if delivered {
                    let _ = queue.send(chunk);
                    return;
                }
                // Nothing after a lost chunk may reach the reader: the stream is dying.
                state.dying.store(true, Ordering::Relaxed);
                net.after(
                    IDLE_TIMEOUT.as_millis() as u64,
                    Box::new(move |_| {
                        state.broken.store(true, Ordering::Relaxed);
                        let _ = queue.send(Chunk::Reset(0));
                    }),
                );
            }),
        );
    }

    /// Resets the reader at once (the peer was never reached).
    fn reset_now(&mut self, code: u32) {
        self.done = true;
        let _ = self.queue.send(Chunk::Reset(code));
    }
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.done || self.state.broken.load(Ordering::Relaxed) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was reset",
            )));
        }
        self.post(Chunk::Data(buf.to_vec()));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().finish();
        Poll::Ready(Ok(()))
    }
}

impl PipeSend for PipeWriter {
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.post(Chunk::End);
        }
    }

    fn reset(&mut self, code: u32) {
        if !self.done {
            self.done = true;
            self.post(Chunk::Reset(code));
        }
    }
}

impl Drop for PipeWriter {
    /// Like a QUIC send stream, dropping the writer finishes the stream.
    fn drop(&mut self) {
        self.finish();
    }
}

impl AsyncRead for PipeReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let take = this.pending.len().min(buf.remaining());
                let bytes: Vec<u8> = this.pending.drain(..take).collect();
                buf.put_slice(&bytes);
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match this.queue.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Chunk::Data(bytes))) => this.pending.extend(bytes),
                Poll::Ready(Some(Chunk::End)) | Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Chunk::Reset(code))) => {
                    this.ended = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("the peer reset the stream (code {code})"),
                    )));
                }
            }
        }
    }
}

impl PipeRecv for PipeReader {}
