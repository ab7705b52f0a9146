use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicUsize;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::RootCertStore;

use super::*;
use crate::link::{LinkRecv, LinkSend};
use crate::pki::{ClusterCa, NodeIdentity};

const SECOND: Duration = Duration::from_secs(1);

fn localhost() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

fn identity(ca: &ClusterCa, node_id: u64) -> NodeIdentity {
    ca.issue_node_certificate(&format!("node{node_id}"), node_id, &[])
        .unwrap()
}

/// Answers every call with `<peer>/<kind>/<request>` and counts the streams it was handed.
#[derive(Default)]
struct Echo {
    streams: AtomicUsize,
    max_request: Option<usize>,
    errors: Mutex<Vec<String>>,
}

impl Echo {
    fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StreamHandler for Echo {
    async fn handle(&self, peer: u64, kind: u8, send: LinkSend, mut recv: LinkRecv) {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let request = match read_request(&mut recv, self.max_request.unwrap_or(1 << 20)).await {
            Ok(request) => request,
            Err(err) => return self.errors.lock().unwrap().push(err.to_string()),
        };
        let mut reply = format!("{peer}/{kind}/").into_bytes();
        reply.extend_from_slice(&request);
        let _ = respond(send, &reply).await;
    }
}

/// Welcomes every join request except one starting with `bad`, and records them.
#[derive(Default)]
struct Doorman {
    requests: Mutex<Vec<(Vec<u8>, SocketAddr)>>,
}

impl Doorman {
    fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

#[async_trait]
impl JoinHandler for Doorman {
    async fn join(&self, request: Vec<u8>, remote: SocketAddr) -> Result<Vec<u8>, String> {
        self.requests
            .lock()
            .unwrap()
            .push((request.clone(), remote));
        if request.starts_with(b"bad") {
            return Err("the join token expired; ask for a fresh one".to_string());
        }
        Ok([&b"welcome "[..], &request].concat())
    }
}

fn try_node(
    ca: &ClusterCa,
    node_id: u64,
    listen: SocketAddr,
    streams: Arc<Echo>,
    join: Option<Arc<Doorman>>,
) -> Result<Arc<QuicNode>, QuicError> {
    let config = QuicConfig::new(listen, ca.cert_der(), identity(ca, node_id), node_id);
    QuicNode::bind(
        config,
        streams,
        join.map(|join| join as Arc<dyn JoinHandler>),
    )
}

fn node(ca: &ClusterCa, node_id: u64, streams: Arc<Echo>) -> Arc<QuicNode> {
    try_node(ca, node_id, localhost(), streams, None).unwrap()
}

fn seed(ca: &ClusterCa) -> (Arc<QuicNode>, Arc<Echo>, Arc<Doorman>) {
    let echo = Arc::new(Echo::default());
    let doorman = Arc::new(Doorman::default());
    let seed = try_node(ca, 1, localhost(), echo.clone(), Some(doorman.clone())).unwrap();
    (seed, echo, doorman)
}

/// A bare quinn endpoint dialing with `tls`, for clients `QuicNode` would never be.
async fn raw_connect(
    tls: rustls::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> (Endpoint, Result<quinn::Connection, ConnectionError>) {
    let endpoint = Endpoint::client(localhost()).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let connecting = endpoint.connect_with(config, addr, server_name).unwrap();
    let connection = tokio::time::timeout(5 * SECOND, connecting).await.unwrap();
    (endpoint, connection)
}

/// Tries a `call`-shaped exchange on a raw connection; true when an answer came back.
async fn raw_call(connection: &quinn::Connection, kind: u8, request: &[u8]) -> bool {
    let exchange = async {
        let (mut send, recv) = connection.open_bi().await.map_err(|_| ())?;
        send.write_all(&[kind]).await.map_err(|_| ())?;
        let (mut send, mut recv) = (LinkSend::Quic(send), LinkRecv::Quic(recv));
        write_frame(&mut send, request).await.map_err(|_| ())?;
        send.finish().map_err(|_| ())?;
        read_frame(&mut recv, 1 << 20).await.map_err(|_| ())
    };
    matches!(tokio::time::timeout(5 * SECOND, exchange).await, Ok(Ok(_)))
}

/// A TLS client that trusts `ca` and offers `shoal/1`, with `client_cert` if given.
fn raw_cluster_client(ca: &ClusterCa, client_cert: Option<&NodeIdentity>) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(identity) => builder
            .with_client_auth_cert(
                vec![identity.cert_der().unwrap()],
                identity.key_der().unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

#[tokio::test]
async fn call_round_trips_and_the_handler_sees_the_callers_node_id() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (echo_1, echo_2) = (Arc::new(Echo::default()), Arc::new(Echo::default()));
    let node_1 = node(&ca, 1, echo_1.clone());
    let node_2 = node(&ca, 2, echo_2.clone());
    assert_eq!(node_1.node_id(), 1);
    let reply = node_1
        .call(2, node_2.local_addr(), 7, b"ping", 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(reply, b"1/7/ping");
    let reply = node_2
        .call(1, node_1.local_addr(), 9, b"", 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(reply, b"2/9/");
    assert_eq!((echo_1.streams(), echo_2.streams()), (1, 1));
    node_1.shutdown().await;
    node_2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_calls_share_one_pooled_connection() {
    let ca = ClusterCa::generate("prod").unwrap();
    let echo = Arc::new(Echo::default());
    let client = node(&ca, 1, Arc::new(Echo::default()));
    let server = node(&ca, 2, echo.clone());
    let addr = server.local_addr();
    let calls: Vec<_> = (0..200u32)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let request = i.to_be_bytes();
                let reply = client.call(2, addr, 3, &request, 10 * SECOND).await?;
                Ok::<_, QuicError>((request, reply))
            })
        })
        .collect();
    for call in calls {
        let (request, reply) = call.await.unwrap().unwrap();
        assert_eq!(reply, [&b"1/3/"[..], &request].concat());
    }
    assert_eq!(echo.streams(), 200);
    assert_eq!(client.dials(), 1, "concurrent callers must share one dial");
}

#[tokio::test]
async fn call_reconnects_after_the_peer_restarts_on_the_same_address() {
    let ca = ClusterCa::generate("prod").unwrap();
    let client = node(&ca, 1, Arc::new(Echo::default()));
    let server = node(&ca, 2, Arc::new(Echo::default()));
    let addr = server.local_addr();
    client
        .call(2, addr, 1, b"before", 5 * SECOND)
        .await
        .unwrap();
    server.shutdown().await;
    drop(server);

    let echo = Arc::new(Echo::default());
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    let _restarted = loop {
        match try_node(&ca, 2, addr, echo.clone(), None) {
            Ok(node) => break node,
            Err(err) if tokio::time::Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("could not bind the old address again: {err}"),
        }
    };
    let reply = client.call(2, addr, 1, b"after", 5 * SECOND).await.unwrap();
    assert_eq!(reply, b"1/1/after");
    assert_eq!(echo.streams(), 1);
    assert_eq!(client.dials(), 2);
}

#[tokio::test]
async fn close_fails_the_streams_open_to_a_peer_at_once() {
    let ca = ClusterCa::generate("prod").unwrap();
    let client = node(&ca, 1, Arc::new(Echo::default()));
    let server = node(&ca, 2, Arc::new(Echo::default()));
    let (LinkSend::Quic(mut send), LinkRecv::Quic(mut recv)) =
        client.open(2, server.local_addr(), 1).await.unwrap()
    else {
        panic!("a QUIC node opens QUIC streams");
    };
    // Half a request: the peer waits for the rest, so no answer comes.
    send.write_all(&[0, 0, 0, 9, b'x']).await.unwrap();
    let waiting = tokio::spawn(async move { recv.read_to_end(1024).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "nothing answers a half request");
    client.close(2);
    let outcome = tokio::time::timeout(SECOND, waiting)
        .await
        .expect("the stream fails at once, not at the idle timeout")
        .unwrap();
    assert!(outcome.is_err(), "the stream failed: {outcome:?}");
    client
        .call(2, server.local_addr(), 1, b"again", 5 * SECOND)
        .await
        .expect("the next call dials anew");
    assert_eq!(client.dials(), 2);
}

#[tokio::test]
async fn forget_makes_the_next_call_dial_again() {
    let ca = ClusterCa::generate("prod").unwrap();
    let client = node(&ca, 1, Arc::new(Echo::default()));
    let server = node(&ca, 2, Arc::new(Echo::default()));
    let addr = server.local_addr();
    client.call(2, addr, 1, b"a", 5 * SECOND).await.unwrap();
    client.call(2, addr, 1, b"b", 5 * SECOND).await.unwrap();
    assert_eq!(client.dials(), 1);
    client.forget(2);
    client.call(2, addr, 1, b"c", 5 * SECOND).await.unwrap();
    assert_eq!(client.dials(), 2);
}

#[tokio::test]
async fn dialing_a_node_id_where_another_node_listens_is_unreachable() {
    let ca = ClusterCa::generate("prod").unwrap();
    let client = node(&ca, 1, Arc::new(Echo::default()));
    let echo = Arc::new(Echo::default());
    let other = node(&ca, 2, echo.clone());
    let err = client
        .call(3, other.local_addr(), 1, b"for node 3", 5 * SECOND)
        .await
        .unwrap_err();
    let QuicError::Unreachable { peer, addr, .. } = &err else {
        panic!("not unreachable: {err}");
    };
    assert_eq!((*peer, *addr), (3, other.local_addr()));
    assert!(err.to_string().contains("node 3"), "{err}");
    assert_eq!(echo.streams(), 0);
    // A failed dial is not cached: the right id at that address works.
    client
        .call(2, other.local_addr(), 1, b"x", 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(client.dials(), 2);
}

#[tokio::test]
async fn unreachable_address_is_reported_as_unreachable_within_the_connect_timeout() {
    let ca = ClusterCa::generate("prod").unwrap();
    let mut config = QuicConfig::new(localhost(), ca.cert_der(), identity(&ca, 1), 1);
    config.connect_timeout = Duration::from_millis(300);
    let client = QuicNode::bind(config, Arc::new(Echo::default()), None).unwrap();
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind(localhost()).unwrap();
    let started = std::time::Instant::now();
    let err = client
        .open(2, silent.local_addr().unwrap(), 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, QuicError::Unreachable { peer: 2, .. }),
        "{err}"
    );
    assert!(started.elapsed() < 3 * SECOND);
}

#[tokio::test]
async fn a_client_without_a_certificate_gets_no_stream_handled() {
    let ca = ClusterCa::generate("prod").unwrap();
    let echo = Arc::new(Echo::default());
    let server = node(&ca, 2, echo.clone());
    let (_endpoint, connection) = raw_connect(
        raw_cluster_client(&ca, None),
        server.local_addr(),
        &pki::node_id_dns_name(2),
    )
    .await;
    // TLS lets it in (a joining node must be able to connect); the endpoint closes it.
    let connection = connection.unwrap();
    assert!(!raw_call(&connection, 1, b"let me in").await);
    let ConnectionError::ApplicationClosed(close) = connection.closed().await else {
        panic!("not closed by the application");
    };
    assert_eq!(
        close.error_code,
        VarInt::from_u32(CLOSE_CERTIFICATE_REQUIRED)
    );
    assert_eq!(&close.reason[..], CERTIFICATE_REQUIRED.as_bytes());
    assert_eq!(echo.streams(), 0);
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_ca_fails_the_handshake() {
    let ca = ClusterCa::generate("prod").unwrap();
    let foreign = ClusterCa::generate("foreign").unwrap();
    let echo = Arc::new(Echo::default());
    let server = node(&ca, 2, echo.clone());
    // Trusts the server's CA, so only the server can refuse.
    let tls = raw_cluster_client(&ca, Some(&identity(&foreign, 1)));
    let (_endpoint, connection) =
        raw_connect(tls, server.local_addr(), &pki::node_id_dns_name(2)).await;
    // The client may consider its side done before the server has checked its certificate.
    let err = match connection {
        Err(err) => err,
        Ok(connection) => {
            assert!(!raw_call(&connection, 1, b"let me in").await);
            connection.closed().await
        }
    };
    assert!(
        matches!(err, ConnectionError::ConnectionClosed(_)),
        "not a handshake failure: {err:?}"
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(echo.streams(), 0);
}

#[tokio::test]
async fn request_join_reaches_the_join_handler_and_returns_its_answer() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (seed, echo, doorman) = seed(&ca);
    let answer = request_join(seed.local_addr(), &ca.fingerprint(), b"hello", 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(answer, b"welcome hello");
    let requests = doorman.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].0, b"hello");
    assert_eq!(requests[0].1.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(echo.streams(), 0);
}

#[tokio::test]
async fn a_refused_join_comes_back_with_the_seeds_message() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (seed, _, doorman) = seed(&ca);
    let err = request_join(
        seed.local_addr(),
        &ca.fingerprint(),
        b"bad token",
        5 * SECOND,
    )
    .await
    .unwrap_err();
    let QuicError::Refused(message) = &err else {
        panic!("not a refusal: {err}");
    };
    assert_eq!(message, "the join token expired; ask for a fresh one");
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(doorman.calls(), 1);
}

#[tokio::test]
async fn a_wrong_fingerprint_fails_before_the_request_is_sent() {
    let ca = ClusterCa::generate("prod").unwrap();
    let other = ClusterCa::generate("other").unwrap();
    let (seed, echo, doorman) = seed(&ca);
    let err = request_join(
        seed.local_addr(),
        &other.fingerprint(),
        b"secret",
        5 * SECOND,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, QuicError::SeedUnreachable { seed: addr, .. } if addr == seed.local_addr()),
        "{err}"
    );
    assert!(err.to_string().contains("fingerprint"), "{err}");
    assert_eq!(doorman.calls(), 0);
    assert_eq!(echo.streams(), 0);
    // A malformed fingerprint never touches the network.
    let err = request_join(seed.local_addr(), "nope", b"secret", 5 * SECOND)
        .await
        .unwrap_err();
    assert!(
        matches!(err, QuicError::Tls(PkiError::InvalidFingerprint(_))),
        "{err}"
    );
}

#[tokio::test]
async fn a_join_connection_serves_one_request_and_nothing_else() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (seed, echo, doorman) = seed(&ca);
    let tls = pki::pinned_client_config(&ca.fingerprint()).unwrap();
    let (_endpoint, connection) = raw_connect(tls, seed.local_addr(), "seed").await;
    let connection = connection.unwrap();

    let (send, recv) = connection.open_bi().await.unwrap();
    let (mut send, mut recv) = (LinkSend::Quic(send), LinkRecv::Quic(recv));
    write_frame(&mut send, b"hello").await.unwrap();
    send.finish().unwrap();
    let answer = read_frame(&mut recv, 1024).await.unwrap();
    assert_eq!(answer, [&[JOIN_ACCEPTED][..], b"welcome hello"].concat());

    // A second stream, even one shaped like a join request, gets nothing.
    let (send, recv) = connection.open_bi().await.unwrap();
    let (mut send, mut recv) = (LinkSend::Quic(send), LinkRecv::Quic(recv));
    let _ = write_frame(&mut send, b"hello again").await;
    let _ = send.finish();
    assert!(
        tokio::time::timeout(5 * SECOND, read_frame(&mut recv, 1024))
            .await
            .unwrap()
            .is_err()
    );
    let ConnectionError::ApplicationClosed(close) = connection.closed().await else {
        panic!("not closed by the seed");
    };
    assert_eq!(close.error_code, VarInt::from_u32(CLOSE_PROTOCOL));
    assert_eq!(doorman.calls(), 1);
    assert_eq!(echo.streams(), 0);
}

#[tokio::test]
async fn a_join_connection_speaking_the_cluster_protocol_gets_nothing() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (seed, echo, doorman) = seed(&ca);
    let tls = pki::pinned_client_config(&ca.fingerprint()).unwrap();
    let (_endpoint, connection) = raw_connect(tls, seed.local_addr(), "seed").await;
    let connection = connection.unwrap();
    assert!(!raw_call(&connection, 1, b"raft vote").await);
    assert!(!raw_call(&connection, 1, b"raft vote").await);
    assert_eq!(doorman.calls(), 0);
    assert_eq!(echo.streams(), 0);
}

#[tokio::test]
async fn a_node_without_a_join_handler_refuses_join_connections() {
    let ca = ClusterCa::generate("prod").unwrap();
    let server = node(&ca, 1, Arc::new(Echo::default()));
    let err = request_join(server.local_addr(), &ca.fingerprint(), b"hello", 5 * SECOND)
        .await
        .unwrap_err();
    assert!(matches!(err, QuicError::Closed(_)), "{err}");
    assert!(
        err.to_string().contains("does not accept join requests"),
        "{err}"
    );
}

#[tokio::test]
async fn read_frame_refuses_an_oversized_frame() {
    let ca = ClusterCa::generate("prod").unwrap();
    let echo = Arc::new(Echo {
        max_request: Some(16),
        ..Echo::default()
    });
    let client = node(&ca, 1, Arc::new(Echo::default()));
    let server = node(&ca, 2, echo.clone());
    let addr = server.local_addr();
    let reply = client
        .call(2, addr, 1, &[b'x'; 16], 5 * SECOND)
        .await
        .unwrap();
    assert_eq!(reply.len(), "1/1/".len() + 16);
    let err = client
        .call(2, addr, 1, &[b'x'; 17], 5 * SECOND)
        .await
        .unwrap_err();
    assert!(matches!(err, QuicError::Closed(_)), "{err}");
    let errors = echo.errors.lock().unwrap().clone();
    assert_eq!(
        errors,
        ["a frame of 17 bytes is larger than the 16 bytes allowed"]
    );
    let err = request_join(addr, &ca.fingerprint(), &[0; MAX_JOIN_REQUEST + 1], SECOND)
        .await
        .unwrap_err();
    assert!(matches!(err, QuicError::FrameTooLarge { .. }), "{err}");
}

#[tokio::test]
async fn bind_refuses_a_certificate_for_another_node() {
    let ca = ClusterCa::generate("prod").unwrap();
    let config = QuicConfig::new(localhost(), ca.cert_der(), identity(&ca, 1), 5);
    let err = QuicNode::bind(config, Arc::new(Echo::default()), None).unwrap_err();
    assert!(
        matches!(
            err,
            QuicError::IdentityMismatch {
                expected: 5,
                found: Some(1)
            }
        ),
        "{err}"
    );
    let first = node(&ca, 1, Arc::new(Echo::default()));
    let err = try_node(&ca, 1, first.local_addr(), Arc::new(Echo::default()), None).unwrap_err();
    assert!(matches!(err, QuicError::Bind { .. }), "{err}");
}
