//! The simulated streams against what QUIC does: calls, order, the end of a stream, resets,
//! unreachable peers, and losses that kill a stream only after the idle timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shoal_mesh::link::{LinkRecv, LinkSend, PeerLink, StreamHandler};
use shoal_mesh::quic::{read_frame, read_request, respond, write_frame, QuicError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use super::link::{SimLink, Switchboard, CONNECT_TIMEOUT, IDLE_TIMEOUT};
use super::net::{Faults, Net};

/// Answers a call with `echo:` and the request; streams of kind 2 are read to their end and
/// the byte count (or the error) is sent back.
struct Echo;

#[async_trait]
impl StreamHandler for Echo {
    async fn handle(&self, _peer: u64, kind: u8, mut send: LinkSend, mut recv: LinkRecv) {
        if kind == 2 {
            let mut bytes = Vec::new();
            let outcome = match recv.read_to_end(&mut bytes).await {
                Ok(count) => format!("read {count}"),
                Err(error) => format!("error {error}"),
            };
            let _ = write_frame(&mut send, outcome.as_bytes()).await;
            let _ = send.finish();
            return;
        }
        let Ok(request) = read_request(&mut recv, 1 << 20).await else {
            return;
        };
        let _ = respond(send, &[b"echo:".as_slice(), &request].concat()).await;
    }
}

struct World {
    runtime: Runtime,
    net: Net,
    board: Switchboard,
}

impl World {
    /// Nodes 1 and 2 on one paused runtime, 5 ms apart.
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let net = Net::new(
            1,
            Faults {
                latency_ms: (5, 5),
                datagram_loss: 0.0,
            },
        );
        let board = Switchboard::default();
        for node in [1, 2] {
            board.register(node, Arc::new(Echo), runtime.handle().clone());
        }
        Self {
            runtime,
            net,
            board,
        }
    }

    fn link(&self, node: u64) -> SimLink {
        SimLink::new(node, addr(node), self.net.clone(), self.board.clone())
    }

    /// Runs `future`, moving the network along with the runtime's clock, 1 ms at a time.
    fn drive<F: Future>(&self, future: F) -> F::Output {
        let net = self.net.clone();
        self.runtime.block_on(async move {
            tokio::pin!(future);
            loop {
                tokio::select! {
                    biased;
                    output = &mut future => return output,
                    () = tokio::time::sleep(Duration::from_millis(1)) => {
                        net.advance_to(net.now_ms() + 1);
                    }
                }
            }
        })
    }
}

fn addr(node: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, node as u8], 7001))
}

#[test]
fn a_call_goes_there_and_back_in_two_latencies() {
    let world = World::new();
    let link = world.link(1);
    let reply = world.drive(async {
        let started = tokio::time::Instant::now();
        let reply = link
            .call(2, addr(2), 1, b"hi", Duration::from_secs(1))
            .await;
        (reply, started.elapsed())
    });
    assert_eq!(reply.0.unwrap(), b"echo:hi");
    assert!(reply.1 >= Duration::from_millis(10), "{:?}", reply.1);
    assert!(reply.1 < Duration::from_millis(30), "{:?}", reply.1);
}

#[test]
fn bytes_arrive_in_order_and_dropping_the_writer_ends_the_stream() {
    let world = World::new();
    let link = world.link(1);
    let outcome = world.drive(async {
        let (mut send, mut recv) = link.open(2, addr(2), 2).await.unwrap();
        for chunk in 0..50u8 {
            send.write_all(&[chunk; 100]).await.unwrap();
        }
        drop(send);
        read_frame(&mut recv, 1024).await
    });
    assert_eq!(outcome.unwrap(), b"read 5000");
}

#[test]
fn a_reset_reaches_the_reader_as_an_error() {
    let world = World::new();
    let link = world.link(1);
    let outcome = world.drive(async {
        let (mut send, mut recv) = link.open(2, addr(2), 2).await.unwrap();
        send.write_all(b"part").await.unwrap();
        send.reset(7);
        read_frame(&mut recv, 1024).await
    });
    let text = String::from_utf8(outcome.unwrap()).unwrap();
    assert!(
        text.starts_with("error") && text.contains("code 7"),
        "{text}"
    );
}

#[test]
fn an_unreachable_peer_fails_the_dial_after_the_connect_timeout() {
    let world = World::new();
    let link = world.link(1);
    let (outcome, took) = world.drive(async {
        let started = tokio::time::Instant::now();
        let outcome = link.open(3, addr(3), 1).await;
        (outcome, started.elapsed())
    });
    assert!(
        matches!(outcome, Err(QuicError::Unreachable { peer: 3, .. })),
        "{outcome:?}"
    );
    assert!(took >= CONNECT_TIMEOUT, "{took:?}");

    world.net.block(1, 2);
    let outcome = world.drive(link.open(2, addr(2), 1));
    assert!(matches!(
        outcome,
        Err(QuicError::Unreachable { peer: 2, .. })
    ));
}

#[test]
fn a_partition_mid_stream_kills_it_only_after_the_idle_timeout() {
    let world = World::new();
    let link = world.link(1);
    let (outcome, took) = world.drive(async {
        let (mut send, mut recv) = link.open(2, addr(2), 2).await.unwrap();
        send.write_all(b"before").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        world.net.block(1, 2);
        let cut_at = tokio::time::Instant::now();
        send.write_all(b"lost").await.unwrap();
        drop(send);
        // The peer's answer (its read failing) comes back once the stream has died.
        let outcome = read_frame(&mut recv, 1024).await;
        (outcome, cut_at.elapsed())
    });
    let text = String::from_utf8(outcome.unwrap()).unwrap();
    assert!(text.starts_with("error"), "{text}");
    assert!(took >= IDLE_TIMEOUT, "the stream died after {took:?}");
    assert!(took < IDLE_TIMEOUT + Duration::from_millis(100), "{took:?}");
}

#[test]
fn a_crashed_writer_leaves_the_reader_waiting_for_the_idle_timeout() {
    let world = World::new();
    let link = world.link(1);
    let (outcome, took) = world.drive(async {
        let (mut send, mut recv) = link.open(2, addr(2), 2).await.unwrap();
        send.write_all(b"half").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Node 1's process dies: what it sent already arrived; its streams end unfinished.
        world.net.set_down(1, true);
        let crashed_at = tokio::time::Instant::now();
        drop(send);
        world.net.set_down(1, false);
        let outcome = read_frame(&mut recv, 1024).await;
        (outcome, crashed_at.elapsed())
    });
    let text = String::from_utf8(outcome.unwrap()).unwrap();
    assert!(text.starts_with("error"), "{text}");
    assert!(took >= IDLE_TIMEOUT, "{took:?}");
}
