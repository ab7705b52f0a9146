//! The node-to-node stream seam: what the control and data planes open, serve and call.
//!
//! In production every stream is a QUIC bidirectional stream of [`crate::quic::QuicNode`]. The
//! simulator (`shoal-sim`) runs whole clusters in one process and supplies its own
//! [`PeerLink`] whose streams are in-memory pipes through its simulated network. Code above
//! this seam (raft's network, proposals, bundles, jobs, forwarding) cannot tell them apart.
//!
//! [`LinkSend`] and [`LinkRecv`] are enums rather than trait objects so that the QUIC path keeps
//! quinn's own error reporting and costs one `match` per poll.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::quic::{read_frame, write_frame, QuicError, MAX_CALL_RESPONSE};

/// The send half of a simulated stream.
pub trait PipeSend: AsyncWrite + Send + Sync + Unpin + 'static {
    /// Ends the stream cleanly: the reader sees the end once it has read everything sent.
    fn finish(&mut self);
    /// Abandons the stream: the reader gets an error instead of the rest.
    fn reset(&mut self, code: u32);
}

/// The receive half of a simulated stream.
pub trait PipeRecv: AsyncRead + Send + Sync + Unpin + 'static {}

/// The sending half of a stream to a peer.
pub enum LinkSend {
    /// A QUIC stream.
    Quic(quinn::SendStream),
    /// A simulated stream.
    Pipe(Box<dyn PipeSend>),
}

/// The receiving half of a stream from a peer.
pub enum LinkRecv {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// A simulated stream.
    Pipe(Box<dyn PipeRecv>),
}

impl std::fmt::Debug for LinkSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Quic(_) => "LinkSend::Quic",
            Self::Pipe(_) => "LinkSend::Pipe",
        })
    }
}

impl std::fmt::Debug for LinkRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Quic(_) => "LinkRecv::Quic",
            Self::Pipe(_) => "LinkRecv::Pipe",
        })
    }
}

impl LinkSend {
    /// Ends the stream cleanly (what was written still reaches the peer).
    pub fn finish(&mut self) -> Result<(), QuicError> {
        match self {
            Self::Quic(send) => send
                .finish()
                .map_err(|_| QuicError::Closed("the stream was already closed".into())),
            Self::Pipe(send) => {
                send.finish();
                Ok(())
            }
        }
    }

    /// Abandons the stream with an application error `code`.
    pub fn reset(&mut self, code: u32) {
        match self {
            Self::Quic(send) => {
                let _ = send.reset(quinn::VarInt::from_u32(code));
            }
            Self::Pipe(send) => send.reset(code),
        }
    }

    /// Waits until the peer has read everything or stopped reading (QUIC); a simulated stream
    /// delivers in order, so there is nothing to wait for.
    pub async fn stopped(&mut self) {
        if let Self::Quic(send) = self {
            let _ = send.stopped().await;
        }
    }
}

impl AsyncWrite for LinkSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Quic(send) => AsyncWrite::poll_write(Pin::new(send), cx, buf),
            Self::Pipe(send) => AsyncWrite::poll_write(Pin::new(send), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
            Self::Pipe(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(send) => AsyncWrite::poll_shutdown(Pin::new(send), cx),
            Self::Pipe(send) => AsyncWrite::poll_shutdown(Pin::new(send), cx),
        }
    }
}

impl AsyncRead for LinkRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(recv) => AsyncRead::poll_read(Pin::new(recv), cx, buf),
            Self::Pipe(recv) => AsyncRead::poll_read(Pin::new(recv), cx, buf),
        }
    }
}

/// A node's connections to its peers: QUIC in production, the simulated network in `sim`.
#[async_trait]
pub trait PeerLink: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> u64;

    /// The address peers reach this node at.
    fn local_addr(&self) -> SocketAddr;

    /// How many connections this node has dialed (a metric).
    fn dials(&self) -> u64;

    /// Opens a stream to `peer` at `addr`, announced to it as `kind`.
    async fn open(
        &self,
        peer: u64,
        addr: SocketAddr,
        kind: u8,
    ) -> Result<(LinkSend, LinkRecv), QuicError>;

    /// Request/response on one stream: one frame each way, bounded by `timeout`. Not retried:
    /// the peer may have acted on a request whose answer was lost.
    async fn call(
        &self,
        peer: u64,
        addr: SocketAddr,
        kind: u8,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, QuicError> {
        let exchange = async {
            let (mut send, mut recv) = self.open(peer, addr, kind).await?;
            write_frame(&mut send, request).await?;
            send.finish()?;
            read_frame(&mut recv, MAX_CALL_RESPONSE).await
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(QuicError::Timeout(timeout)))
    }

    /// Drops the pooled connection to `peer`; streams on it run to their end.
    fn forget(&self, peer: u64);

    /// Drops and closes the connection to `peer` (it died or restarted).
    fn close(&self, peer: u64);

    /// Closes every connection.
    async fn shutdown(&self);
}

/// Serves the streams peers open to this node.
#[async_trait]
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream from node `peer` (its id comes from its verified certificate, or the
    /// simulator's ground truth); runs on its own task. A [`PeerLink::call`] expects
    /// [`crate::quic::read_request`] then [`crate::quic::respond`].
    async fn handle(&self, peer: u64, kind: u8, send: LinkSend, recv: LinkRecv);
}
