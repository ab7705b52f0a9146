//! chitchat's [`Transport`] over the simulated [`Net`]: gossip datagrams travel as
//! [`Class::Datagram`] messages, handed over as decoded objects (no bytes, no seal).
//!
//! Each node id has a fixed fake address, `[fd00::<id as 64 bits>]:7946`: derived from the id
//! alone, so it never collides, never depends on the order nodes were created in, and stays the
//! same across restarts. A datagram is routed by its destination address to that node's inbox
//! at delivery time; an address with no open socket (a node that never opened one, or whose
//! runtime is gone) swallows it, as UDP would.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context};
use async_trait::async_trait;
use shoal_mesh::gossip::{ChitchatEnvelope, RecvOutcome, SendOutcome, Socket, Transport};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::net::{Class, Net, NodeId};

/// The port of every fake gossip address (chitchat's usual one).
pub const GOSSIP_PORT: u16 = 7946;

/// The first 64 bits of every fake gossip address (a unique local IPv6 prefix).
const PREFIX: [u16; 4] = [0xfd00, 0, 0, 0];

/// Gossip addresses of simulated nodes: each node id gets a fixed fake address, and datagrams
/// travel through [`Net`] as [`Class::Datagram`]. Clones share the same inboxes.
#[derive(Clone)]
pub struct GossipNet {
    net: Net,
    inboxes: Arc<Mutex<Inboxes>>,
}

/// The open sockets, by node.
#[derive(Default)]
struct Inboxes {
    by_node: BTreeMap<NodeId, Inbox>,
    /// Tells a socket of an earlier incarnation from the current one.
    next_generation: u64,
}

struct Inbox {
    generation: u64,
    inbox_tx: UnboundedSender<RecvOutcome>,
}

impl GossipNet {
    /// Gossip over `net`.
    pub fn new(net: Net) -> Self {
        Self {
            net,
            inboxes: Arc::default(),
        }
    }

    /// The fake gossip address of `node`: `[fd00::<node as 64 bits>]:7946`.
    pub fn addr(&self, node: NodeId) -> SocketAddr {
        gossip_addr(node)
    }

    /// The node whose fake gossip address is `addr`, if it is one (e.g. a gossip member's).
    pub fn node(&self, addr: SocketAddr) -> Option<NodeId> {
        node_of(addr)
    }

    /// A chitchat transport for `node`. It opens only on [`GossipNet::addr`]`(node)`, and
    /// opening it (again, after a restart) replaces the node's inbox: the earlier socket's
    /// `recv` then fails, which stops the chitchat server that owned it. Datagrams to an
    /// address with no open socket are lost.
    ///
    /// An `Arc` so that callers can keep it and pass `&*transport` to
    /// `Gossip::start_with_transport` at each restart.
    pub fn transport(&self, node: NodeId) -> Arc<dyn Transport> {
        Arc::new(NodeTransport {
            gossip_net: self.clone(),
            node,
        })
    }

    fn inboxes(&self) -> MutexGuard<'_, Inboxes> {
        super::lock(&self.inboxes)
    }

    /// Registers a fresh inbox for `node`, replacing any earlier one.
    fn open_inbox(&self, node: NodeId) -> (u64, UnboundedReceiver<RecvOutcome>) {
        let (inbox_tx, inbox_rx) = unbounded_channel();
        let mut inboxes = self.inboxes();
        let generation = inboxes.next_generation;
        inboxes.next_generation += 1;
        inboxes.by_node.insert(
            node,
            Inbox {
                generation,
                inbox_tx,
            },
        );
        (generation, inbox_rx)
    }

    /// Removes `node`'s inbox if it is still the one of `generation`.
    fn close_inbox(&self, node: NodeId, generation: u64) {
        let mut inboxes = self.inboxes();
        if inboxes
            .by_node
            .get(&node)
            .is_some_and(|inbox| inbox.generation == generation)
        {
            inboxes.by_node.remove(&node);
        }
    }

    /// Hands `datagram` to `node`'s open socket, if any; runs when the Net delivers it.
    fn deliver(&self, node: NodeId, datagram: RecvOutcome) {
        if let Some(inbox) = self.inboxes().by_node.get(&node) {
            // A closed inbox is a socket dropped without closing (its runtime is gone):
            // the datagram is lost, as it would be on a dead host.
            let _ = inbox.inbox_tx.send(datagram);
        }
    }
}

/// `[fd00::<node>]:7946`.
fn gossip_addr(node: NodeId) -> SocketAddr {
    let [a, b, c, d] = PREFIX;
    let low = |shift: u32| (node >> shift) as u16;
    let ip = Ipv6Addr::new(a, b, c, d, low(48), low(32), low(16), low(0));
    SocketAddr::new(ip.into(), GOSSIP_PORT)
}

/// The node whose fake gossip address is `addr`, if it is one.
fn node_of(addr: SocketAddr) -> Option<NodeId> {
    let SocketAddr::V6(addr) = addr else {
        return None;
    };
    let segments = addr.ip().segments();
    if segments[..4] != PREFIX || addr.port() != GOSSIP_PORT {
        return None;
    }
    Some(
        segments[4..]
            .iter()
            .fold(0, |node, segment| node << 16 | NodeId::from(*segment)),
    )
}

/// One node's transport.
struct NodeTransport {
    gossip_net: GossipNet,
    node: NodeId,
}

#[async_trait]
impl Transport for NodeTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let local_addr = gossip_addr(self.node);
        if listen_addr != local_addr {
            bail!(
                "simulated node {} gossips on {local_addr}, not {listen_addr}; pass \
                 GossipNet::addr as the local address",
                self.node
            );
        }
        let (generation, inbox_rx) = self.gossip_net.open_inbox(self.node);
        Ok(Box::new(NodeSocket {
            gossip_net: self.gossip_net.clone(),
            node: self.node,
            local_addr,
            generation,
            inbox_rx,
        }))
    }
}

/// One node's open socket; dropping it closes the inbox (unless a newer socket replaced it).
struct NodeSocket {
    gossip_net: GossipNet,
    node: NodeId,
    local_addr: SocketAddr,
    generation: u64,
    inbox_rx: UnboundedReceiver<RecvOutcome>,
}

#[async_trait]
impl Socket for NodeSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    /// Posts `envelope` to the Net; a destination that is no simulated node's address is
    /// dropped at once (nothing could ever receive it).
    ///
    /// Byte counts are 0 in both directions: chitchat's codec is private to it and it only
    /// reports them, never uses them.
    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = SendOutcome { num_bytes_sent: 0 };
        let Some(to_node) = node_of(to) else {
            return Ok(outcome);
        };
        let datagram = RecvOutcome {
            from_addr: self.local_addr,
            envelope,
            num_bytes_received: 0,
        };
        let gossip_net = self.gossip_net.clone();
        let deliver = move |arrived: bool| {
            if arrived {
                gossip_net.deliver(to_node, datagram);
            }
        };
        self.gossip_net
            .net
            .send(self.node, to_node, Class::Datagram, Box::new(deliver));
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inbox_rx.recv().await.with_context(|| {
            format!(
                "the gossip socket of simulated node {} was replaced by a newer one",
                self.node
            )
        })
    }
}

impl Drop for NodeSocket {
    fn drop(&mut self) {
        self.gossip_net.close_inbox(self.node, self.generation);
    }
}
