use std::future::Future;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};

use super::*;
use crate::seal::{seal, Opener, Rejection, ENVELOPE_OVERHEAD, ENVELOPE_VERSION, HEADER_LEN};

const FRESHNESS_MS: u64 = 30_000;
/// Any instant will do for the pure tests.
const NOW_MS: u64 = 1_700_000_000_000;

fn key(seed: u64) -> GossipKey {
    GossipKey::generate(&mut StdRng::seed_from_u64(seed))
}

fn opener(key: &GossipKey) -> Opener {
    Opener::new(key, Duration::from_millis(FRESHNESS_MS))
}

fn nonce(byte: u8) -> [u8; 12] {
    [byte; 12]
}

fn wall_clock() -> Clock {
    Arc::new(|| {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        u64::try_from(since_epoch.as_millis()).unwrap()
    })
}

fn now_ms() -> u64 {
    wall_clock()()
}

// ---- keys ----

#[test]
fn gossip_key_round_trips_through_hex_and_never_prints() {
    let key = key(1);
    let hex = key.to_hex();
    assert_eq!(hex.len(), 64);
    assert_eq!(GossipKey::from_hex(&hex).unwrap(), key);
    assert_eq!(GossipKey::from_hex(&format!("  {hex}\n")).unwrap(), key);
    assert_ne!(GossipKey::generate(&mut OsRng), key);
    let debug = format!("{key:?}");
    assert_eq!(debug, "GossipKey(<redacted>)");
    assert!(!debug.contains(&hex[..8]));
}

#[test]
fn gossip_key_from_hex_explains_what_is_wrong() {
    let short = GossipKey::from_hex("abcd").unwrap_err().to_string();
    assert!(
        short.contains("64 hex characters") && short.contains("has 4"),
        "{short}"
    );
    let not_hex = GossipKey::from_hex(&"g".repeat(64))
        .unwrap_err()
        .to_string();
    assert!(not_hex.contains("only hex digits"), "{not_hex}");
}

// ---- seal and open ----

#[test]
fn seal_then_open_round_trips_with_the_documented_layout() {
    let key = key(1);
    let datagram = seal(&key, NOW_MS, nonce(7), b"chitchat bytes");
    assert_eq!(datagram.len(), b"chitchat bytes".len() + ENVELOPE_OVERHEAD);
    assert_eq!(datagram[0], ENVELOPE_VERSION);
    assert_eq!(datagram[1..9], NOW_MS.to_be_bytes());
    assert_eq!(datagram[9..HEADER_LEN], nonce(7));
    assert!(
        !datagram.windows(8).any(|w| w == b"chitchat"),
        "plaintext leaked"
    );
    let plaintext = opener(&key).open(NOW_MS + 1, &datagram).unwrap();
    assert_eq!(plaintext, b"chitchat bytes");
}

#[test]
fn open_counts_anything_unauthenticated_as_forged() {
    let key = key(1);
    let genuine = seal(&key, NOW_MS, nonce(1), b"hello gossip");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        (
            "shorter than the envelope",
            genuine[..ENVELOPE_OVERHEAD - 1].to_vec(),
        ),
        (
            "other key",
            seal(&self::key(2), NOW_MS, nonce(1), b"hello gossip"),
        ),
    ];
    let mut wrong_version = genuine.clone();
    wrong_version[0] = ENVELOPE_VERSION + 1;
    cases.push(("wrong version", wrong_version));
    // One flipped bit in the timestamp, the nonce, the ciphertext and the tag.
    for (what, index) in [
        ("timestamp", 4),
        ("nonce", 12),
        ("ciphertext", HEADER_LEN + 3),
        ("tag", genuine.len() - 1),
    ] {
        let mut flipped = genuine.clone();
        flipped[index] ^= 0x01;
        cases.push((what, flipped));
    }
    let mut opener = opener(&key);
    for (what, datagram) in cases {
        assert_eq!(
            opener.open(NOW_MS, &datagram),
            Err(Rejection::Forged),
            "{what}"
        );
    }
    assert!(
        opener.open(NOW_MS, &genuine).is_ok(),
        "rejections poisoned the opener"
    );
}

#[test]
fn open_refuses_timestamps_outside_the_freshness_window() {
    let key = key(1);
    let mut opener = opener(&key);
    let too_old = seal(&key, NOW_MS - FRESHNESS_MS - 1, nonce(1), b"x");
    let too_new = seal(&key, NOW_MS + FRESHNESS_MS + 1, nonce(2), b"x");
    let oldest_fresh = seal(&key, NOW_MS - FRESHNESS_MS, nonce(3), b"x");
    let newest_fresh = seal(&key, NOW_MS + FRESHNESS_MS, nonce(4), b"x");
    assert_eq!(opener.open(NOW_MS, &too_old), Err(Rejection::Stale));
    assert_eq!(opener.open(NOW_MS, &too_new), Err(Rejection::Stale));
    assert!(opener.open(NOW_MS, &oldest_fresh).is_ok());
    assert!(opener.open(NOW_MS, &newest_fresh).is_ok());
}

#[test]
fn open_refuses_a_replay_while_it_is_fresh_and_as_stale_after() {
    let key = key(1);
    let mut opener = opener(&key);
    let datagram = seal(&key, NOW_MS, nonce(1), b"x");
    assert!(opener.open(NOW_MS, &datagram).is_ok());
    assert_eq!(
        opener.open(NOW_MS + 10, &datagram),
        Err(Rejection::Replayed)
    );
    assert_eq!(
        opener.open(NOW_MS + FRESHNESS_MS, &datagram),
        Err(Rejection::Replayed)
    );
    // Once the window has passed, the nonce is forgotten and freshness refuses it instead.
    let later = NOW_MS + FRESHNESS_MS + 1;
    assert_eq!(opener.open(later, &datagram), Err(Rejection::Stale));
    assert!(opener
        .open(later, &seal(&key, later, nonce(2), b"x"))
        .is_ok());
    assert_eq!(opener.cached_nonces(), 1, "expired nonces were not evicted");
}

#[test]
fn replay_cache_stays_bounded_and_still_refuses_every_replay() {
    let key = key(1);
    let mut opener = Opener::with_replay_capacity(&key, Duration::from_millis(FRESHNESS_MS), 4);
    let datagrams: Vec<Vec<u8>> = (0..10u8)
        .map(|i| seal(&key, NOW_MS + u64::from(i), nonce(i), b"x"))
        .collect();
    for datagram in &datagrams {
        assert!(opener.open(NOW_MS + 20, datagram).is_ok());
    }
    assert_eq!(opener.cached_nonces(), 4);
    for datagram in &datagrams {
        assert!(
            opener.open(NOW_MS + 20, datagram).is_err(),
            "a replay was accepted"
        );
    }
    // A genuine datagram newer than everything evicted is still welcome.
    assert!(opener
        .open(NOW_MS + 20, &seal(&key, NOW_MS + 20, nonce(99), b"x"))
        .is_ok());
}

// ---- settings ----

#[test]
fn failure_detector_timeout_fits_within_dead_after() {
    for (interval_ms, dead_after_ms) in [(200, 2_000), (100, 1_000), (500, 10_000), (200, 1_000)] {
        let interval = Duration::from_millis(interval_ms);
        let dead_after = Duration::from_millis(dead_after_ms);
        let config = failure_detector_config(interval, dead_after);
        let round = interval.as_secs_f64();
        // The smoothed mean interval lies within [5/6, 7/6] of a round (see the doc).
        let shortest_timeout = config.phi_threshold * round * 5.0 / 6.0;
        let longest_timeout = config.phi_threshold * round * 7.0 / 6.0;
        assert!(longest_timeout + round <= dead_after.as_secs_f64() + 1e-9);
        // Even the tightest allowed setting waits for several missed rounds.
        assert!(
            shortest_timeout >= 2.5 * round,
            "{interval_ms}/{dead_after_ms} would flap"
        );
        assert_eq!(config.sampling_window_size, 1);
        assert_eq!(config.initial_interval, interval);
        assert_eq!(config.max_interval, interval * 2);
        assert_eq!(config.dead_node_grace_period, DEAD_NODE_GRACE_PERIOD);
    }
}

#[test]
fn config_validation_names_the_bad_setting() {
    let good = GossipConfig::for_test("node-1", key(1));
    assert!(good.validate().is_ok());
    let mut cases: Vec<(GossipConfig, &str)> = Vec::new();
    let mut config = good.clone();
    config.dead_after = config.interval * 4;
    cases.push((config, "dead_after"));
    let mut config = good.clone();
    config.node_id.clear();
    cases.push((config, "node id"));
    let mut config = good.clone();
    config.cluster_id.clear();
    cases.push((config, "cluster id"));
    let mut config = good.clone();
    config.freshness = Duration::from_millis(10);
    cases.push((config, "freshness"));
    let mut config = good.clone();
    config.advertise = "0.0.0.0:7946".parse().unwrap();
    cases.push((config, "advertise"));
    for (config, word) in cases {
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains(word), "{message}");
    }
}

// ---- real nodes on loopback ----

async fn start_node(node_id: &str, key: &GossipKey, seeds: &[SocketAddr]) -> Gossip {
    let mut config = GossipConfig::for_test(node_id, key.clone());
    config.seeds = seeds.iter().map(ToString::to_string).collect();
    config.initial = vec![("name".to_owned(), node_id.to_owned())];
    Gossip::start(config, wall_clock()).await.unwrap()
}

/// Polls `check` every 20 ms until it holds; false if `limit` passes first.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn find<'a>(members: &'a [Member], node_id: &str) -> Option<&'a Member> {
    members.iter().find(|member| member.node_id == node_id)
}

async fn sees_live(observer: &Gossip, node_ids: &[&str]) -> bool {
    let members = observer.members().await;
    node_ids
        .iter()
        .all(|id| find(&members, id).is_some_and(|member| member.live))
}

async fn sees_dead(observer: &Gossip, node_id: &str) -> bool {
    let members = observer.members().await;
    find(&members, node_id).is_none_or(|member| !member.live)
}

/// Three nodes seeded through `a`, converged.
async fn three_nodes(key: &GossipKey) -> (Gossip, Gossip, Gossip) {
    let a = start_node("node-a", key, &[]).await;
    let b = start_node("node-b", key, &[a.local_addr()]).await;
    let c = start_node("node-c", key, &[a.local_addr()]).await;
    let all = ["node-a", "node-b", "node-c"];
    for node in [&a, &b, &c] {
        assert!(
            eventually(Duration::from_secs(5), || sees_live(node, &all)).await,
            "no convergence: {:?}",
            node.members().await
        );
    }
    (a, b, c)
}

/// The view a test compares before and after an attack.
async fn view(node: &Gossip) -> Vec<(String, bool, BTreeMap<String, String>)> {
    let members = node.members().await;
    members
        .into_iter()
        .map(|member| (member.node_id, member.live, member.keys))
        .collect()
}

/// A plain socket listed as a seed, so a lone node gossips to it every round.
async fn capture_datagram(sniffer: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (len, _) = tokio::time::timeout(Duration::from_secs(3), sniffer.recv_from(&mut buf))
        .await
        .expect("the node never gossiped to its seed")
        .unwrap();
    buf.truncate(len);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_three_nodes_converge_and_spread_keys() {
    let key = key(10);
    let (a, b, c) = three_nodes(&key).await;
    let members = b.members().await;
    let ids: Vec<&str> = members.iter().map(|m| m.node_id.as_str()).collect();
    assert_eq!(ids, ["node-a", "node-b", "node-c"]);
    assert_eq!(
        members[2].keys.get("name").map(String::as_str),
        Some("node-c")
    );
    assert_eq!(members[2].gossip_addr, c.local_addr());

    let mut b_changes = b.changes();
    b_changes.borrow_and_update();
    a.set("applied", "42").await;
    for node in [&b, &c] {
        let arrived = eventually(Duration::from_secs(2), || async {
            let members = node.members().await;
            find(&members, "node-a").unwrap().keys.get("applied") == Some(&"42".to_owned())
        })
        .await;
        assert!(arrived, "a's key did not reach {:?}", node.local_addr());
    }
    tokio::time::timeout(Duration::from_secs(2), b_changes.changed())
        .await
        .expect("changes() did not tick for a key change")
        .unwrap();

    a.delete("applied").await;
    let deleted = eventually(Duration::from_secs(2), || async {
        let members = c.members().await;
        !find(&members, "node-a")
            .unwrap()
            .keys
            .contains_key("applied")
    })
    .await;
    assert!(deleted, "a deleted key is still visible");
    for node in [&a, &b, &c] {
        let stats = node.stats().snapshot();
        assert!(stats.sent > 0 && stats.received > 0, "{stats:?}");
        assert_eq!((stats.forged, stats.stale, stats.replayed), (0, 0, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_converged_cluster_does_not_flap() {
    let key = key(11);
    let (a, b, c) = three_nodes(&key).await;
    let all = ["node-a", "node-b", "node-c"];
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        for node in [&a, &b, &c] {
            assert!(
                sees_live(node, &all).await,
                "flap: {:?}",
                node.members().await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_killed_node_is_dead_everywhere_within_three_seconds() {
    let key = key(12);
    let (a, b, c) = three_nodes(&key).await;
    let mut a_changes = a.changes();
    a_changes.borrow_and_update();
    let killed_at = Instant::now();
    drop(c);
    let detected = eventually(Duration::from_secs(5), || async {
        sees_dead(&a, "node-c").await && sees_dead(&b, "node-c").await
    })
    .await;
    let elapsed = killed_at.elapsed();
    eprintln!("killed node detected by every peer after {elapsed:?}");
    assert!(
        detected && elapsed < Duration::from_secs(3),
        "took {elapsed:?}"
    );
    // The change watcher looks once per round, so it may notice a round later.
    tokio::time::timeout(Duration::from_secs(1), a_changes.changed())
        .await
        .expect("changes() missed a death")
        .unwrap();
    assert!(sees_live(&a, &["node-a", "node-b"]).await);
    assert!(sees_live(&b, &["node-a", "node-b"]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_leaving_node_is_gone_at_once() {
    let key = key(13);
    let (a, b, c) = three_nodes(&key).await;
    let started = Instant::now();
    let leaving = tokio::spawn(c.leave());
    let gone = eventually(Duration::from_secs(3), || async {
        sees_dead(&a, "node-c").await && sees_dead(&b, "node-c").await
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!("leaving node reported dead by every peer after {elapsed:?}");
    assert!(gone && elapsed < Duration::from_secs(1), "took {elapsed:?}");
    leaving.await.unwrap();
    let members = a.members().await;
    let c_member = find(&members, "node-c").expect("c forgotten too early");
    assert_eq!(
        c_member.keys.get(STATUS_KEY).map(String::as_str),
        Some(STATUS_LEAVING)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_restarted_node_replaces_its_old_generation() {
    let key = key(14);
    let a = start_node("node-a", &key, &[]).await;
    let b = start_node("node-b", &key, &[a.local_addr()]).await;
    assert!(eventually(Duration::from_secs(5), || sees_live(&a, &["node-b"])).await);
    b.leave().await;
    let mut config = GossipConfig::for_test("node-b", key.clone());
    config.generation = 2;
    config.seeds = vec![a.local_addr().to_string()];
    let b2 = Gossip::start(config, wall_clock()).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || sees_live(&a, &["node-b"])).await);
    let members = a.members().await;
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(
        find(&members, "node-b").unwrap().gossip_addr,
        b2.local_addr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_forged_datagrams_change_nothing_and_are_counted() {
    let key = key(15);
    let sniffer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = start_node("node-a", &key, &[sniffer.local_addr().unwrap()]).await;
    let b = start_node("node-b", &key, &[a.local_addr()]).await;
    for node in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(5), || sees_live(
                node,
                &["node-a", "node-b"]
            ))
            .await
        );
    }
    let captured = capture_datagram(&sniffer).await;
    let plaintext = opener(&key).open(now_ms(), &captured).unwrap();
    let before = (view(&a).await, view(&b).await);
    let b_before = b.stats().snapshot();

    // A whole node gossiping real chitchat messages under another key.
    let rogue = start_node("node-rogue", &self::key(16), &[a.local_addr()]).await;
    let mut random = vec![0u8; 300];
    OsRng.fill_bytes(&mut random);
    let other_key = seal(&self::key(16), now_ms(), nonce(3), &plaintext);
    let mut flipped = captured.clone();
    flipped[HEADER_LEN + 2] ^= 0x40;
    for datagram in [&random, &other_key, &flipped] {
        sniffer.send_to(datagram, b.local_addr()).await.unwrap();
    }
    let counted = eventually(Duration::from_secs(2), || async {
        b.stats().snapshot().forged == b_before.forged + 3
    })
    .await;
    assert!(counted, "b counted {:?}", b.stats().snapshot());
    assert!(
        eventually(Duration::from_secs(2), || async {
            a.stats().snapshot().forged > 0
        })
        .await,
        "a never counted the rogue's datagrams"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!((view(&a).await, view(&b).await), before);
    let rogue_view = rogue.members().await;
    assert_eq!(
        rogue_view.len(),
        1,
        "the rogue learned about the cluster: {rogue_view:?}"
    );
    let b_after = b.stats().snapshot();
    assert_eq!(b_after.forged, b_before.forged + 3, "{b_after:?}");
    assert_eq!((b_after.stale, b_after.replayed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_replayed_and_stale_datagrams_are_dropped_and_counted() {
    let key = key(17);
    let sniffer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = start_node("node-a", &key, &[sniffer.local_addr().unwrap()]).await;
    let b = start_node("node-b", &key, &[]).await;
    let captured = capture_datagram(&sniffer).await;
    // Gone, so that nothing but the test's datagrams ever reaches b.
    drop(a);
    let stats = || b.stats().snapshot();
    assert_eq!(stats(), SealStatsSnapshot::default());

    // The first copy is genuine and fresh: b accepts it and learns about a from it.
    sniffer.send_to(&captured, b.local_addr()).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || async { stats().received == 1 }).await);
    assert!(find(&b.members().await, "node-a").is_some());

    for replays in 1..=2 {
        sniffer.send_to(&captured, b.local_addr()).await.unwrap();
        assert!(
            eventually(Duration::from_secs(2), || async {
                stats().replayed == replays
            })
            .await,
            "{:?}",
            stats()
        );
    }
    let plaintext = opener(&key).open(now_ms(), &captured).unwrap();
    let freshness_ms = u64::try_from(DEFAULT_FRESHNESS.as_millis()).unwrap();
    let mut fresh_nonce = [0u8; 12];
    for timestamp in [now_ms() - 2 * freshness_ms, now_ms() + 2 * freshness_ms] {
        OsRng.fill_bytes(&mut fresh_nonce);
        let stale = seal(&key, timestamp, fresh_nonce, &plaintext);
        sniffer.send_to(&stale, b.local_addr()).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(2), || async { stats().stale == 2 }).await);
    let last = stats();
    assert_eq!(
        (last.received, last.forged, last.replayed),
        (1, 0, 2),
        "{last:?}"
    );
}

/// Far more state than one datagram holds reaches a newcomer in several sealed deltas, none
/// of them too large once sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_state_larger_than_a_datagram_reaches_a_newcomer() {
    let key = key(18);
    let a = start_node("node-a", &key, &[]).await;
    let pairs: Vec<(String, String)> = (0..2_000)
        .map(|i| {
            let mut value = [0u8; 48];
            OsRng.fill_bytes(&mut value);
            (format!("k{i:04}"), hex::encode(value))
        })
        .collect();
    a.set_many(&pairs).await;
    let b = start_node("node-b", &key, &[a.local_addr()]).await;
    let caught_up = eventually(Duration::from_secs(8), || async {
        let members = b.members().await;
        find(&members, "node-a").is_some_and(|m| m.keys.len() == pairs.len() + 1)
    })
    .await;
    assert!(caught_up, "b never caught up with a's state");
    assert_eq!(a.stats().snapshot().oversized, 0);
}
