//! Per-client rate limits that hold for the cluster as a whole.
//!
//! Each node counts the requests it lets through per (app, client) in a sliding window (the
//! usual two-window approximation: the previous window's count, weighted by how much of it
//! still overlaps, plus the current one). It publishes its busiest counts through gossip, and
//! admits a request only if its own count plus what the other nodes last published stays
//! under the limit. However DNS spreads a client over the nodes, the sum is the cluster's
//! count, late by at most a gossip round or two.
//!
//! The limiter is a plain state machine: the caller passes the time in, and nothing here
//! reads a clock or iterates a hash map in an order that matters.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::policy::{canonical, RateLimit};

/// Most (app, client) entries one node publishes (the busiest first).
pub const PUBLISHED_ENTRIES: usize = 32;
/// Entries above this many are dropped, oldest window first.
const MAX_ENTRIES: usize = 100_000;

/// The key a client is counted under: its IPv4 address, or its IPv6 /64 (one host usually
/// holds a whole /64).
pub fn client_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", std::net::Ipv6Addr::from(bits))
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    period_ms: u64,
    count: u32,
    index: u64,
    previous: u32,
    current: u32,
}

impl Window {
    fn roll(&mut self, now_ms: u64) {
        let index = now_ms / self.period_ms;
        if index == self.index + 1 {
            self.previous = self.current;
            self.current = 0;
        } else if index > self.index + 1 {
            self.previous = 0;
            self.current = 0;
        }
        self.index = self.index.max(index);
    }

    /// Requests in the sliding window ending now.
    fn estimate(&self, now_ms: u64) -> f64 {
        let into = (now_ms % self.period_ms) as f64 / self.period_ms as f64;
        f64::from(self.previous) * (1.0 - into) + f64::from(self.current)
    }
}

/// What the other nodes last published: (app, client key) -> their summed counts.
pub type RemoteCounts = BTreeMap<(String, String), f64>;

/// One node's rate limiter for every app.
#[derive(Debug, Default)]
pub struct RateLimiter {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    windows: HashMap<(String, String), Window>,
    remote: RemoteCounts,
}

impl RateLimiter {
    /// Counts a request of `client` to `app` if the cluster-wide count stays within `limit`;
    /// otherwise says how long to wait.
    pub fn check(
        &self,
        app: &str,
        client: IpAddr,
        limit: RateLimit,
        now_ms: u64,
    ) -> Result<(), Duration> {
        let period_ms = limit.period.as_millis().max(1) as u64;
        let key = (app.to_owned(), client_key(client));
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let remote = inner.remote.get(&key).copied().unwrap_or(0.0);
        if inner.windows.len() >= MAX_ENTRIES && !inner.windows.contains_key(&key) {
            inner.evict(now_ms);
        }
        let window = inner.windows.entry(key).or_insert(Window {
            period_ms,
            count: limit.count,
            index: now_ms / period_ms,
            previous: 0,
            current: 0,
        });
        if window.period_ms != period_ms {
            // The limit changed: start counting afresh.
            *window = Window {
                period_ms,
                count: limit.count,
                index: now_ms / period_ms,
                previous: 0,
                current: 0,
            };
        }
        window.count = limit.count;
        window.roll(now_ms);
        if window.estimate(now_ms) + remote + 1.0 > f64::from(limit.count) {
            // Wait for about one request's share of the window.
            let wait = (period_ms / u64::from(limit.count)).max(1000);
            return Err(Duration::from_millis(wait));
        }
        window.current = window.current.saturating_add(1);
        Ok(())
    }

    /// This node's busiest counts, for gossip: `app client count` lines joined by `;`, the
    /// highest share of its limit first, at most `max` of them. Forgets windows that ended.
    pub fn publish(&self, now_ms: u64, max: usize) -> String {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.windows.retain(|_, window| {
            window.roll(now_ms);
            window.previous > 0 || window.current > 0
        });
        let mut busiest: Vec<(f64, &(String, String), f64)> = inner
            .windows
            .iter()
            .map(|(key, window)| {
                let estimate = window.estimate(now_ms);
                (estimate / f64::from(window.count.max(1)), key, estimate)
            })
            .filter(|(_, _, estimate)| *estimate >= 0.5)
            .collect();
        busiest.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        busiest
            .iter()
            .take(max)
            .map(|(_, (app, client), estimate)| format!("{app} {client} {estimate:.1}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Replaces what the other nodes published (the sum over them).
    pub fn set_remote(&self, remote: RemoteCounts) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remote = remote;
    }
}

impl Inner {
    /// Drops the tenth of the entries whose windows are oldest.
    fn evict(&mut self, now_ms: u64) {
        let mut ages: Vec<(u64, (String, String))> = self
            .windows
            .iter()
            .map(|(key, window)| {
                let age = (now_ms / window.period_ms).saturating_sub(window.index);
                (age, key.clone())
            })
            .collect();
        ages.sort_by(|a, b| b.cmp(a));
        for (_, key) in ages.into_iter().take(MAX_ENTRIES / 10) {
            self.windows.remove(&key);
        }
    }
}

/// Sums what several nodes published (each the text [`RateLimiter::publish`] made);
/// malformed entries are skipped.
pub fn sum_published<'a>(published: impl IntoIterator<Item = &'a str>) -> RemoteCounts {
    let mut sum = RemoteCounts::new();
    for text in published {
        for entry in text.split(';') {
            let mut fields = entry.split(' ');
            let (Some(app), Some(client), Some(count), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(count) = count.parse::<f64>() else {
                continue;
            };
            if count.is_finite() && count >= 0.0 {
                *sum.entry((app.to_owned(), client.to_owned())).or_default() += count;
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str) -> RateLimit {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_lone_node_admits_the_limit_per_window_and_no_more() {
        let limiter = RateLimiter::default();
        let client = ip("192.0.2.1");
        let admitted = (0..50)
            .filter(|i| limiter.check("api", client, limit("10/s"), *i).is_ok())
            .count();
        assert_eq!(admitted, 10);
        // Another client and another app have their own counts.
        assert!(limiter
            .check("api", ip("192.0.2.2"), limit("10/s"), 50)
            .is_ok());
        assert!(limiter.check("web", client, limit("10/s"), 50).is_ok());
        // Two windows later the client is welcome again.
        assert!(limiter.check("api", client, limit("10/s"), 2_100).is_ok());
    }

    #[test]
    fn the_sliding_window_admits_the_rate_over_a_long_run() {
        let limiter = RateLimiter::default();
        let client = ip("192.0.2.1");
        // 100 attempts per second for 20 s against 10/s.
        let admitted = (0..2_000u64)
            .filter(|i| limiter.check("api", client, limit("10/s"), i * 10).is_ok())
            .count();
        // The two-window estimate is conservative under steady overload (it admits about 9 in
        // 10 here); never more than the rate.
        assert!((170..=200).contains(&admitted), "{admitted}");
    }

    #[test]
    fn counts_published_by_other_nodes_share_the_limit() {
        // 100 requests/s for 30 s against 20/s, round robin over three nodes that see what
        // the others published 200 ms ago.
        let admitted = cluster_admits(30, "20/s", 200, |step| (step % 3) as usize);
        let expected = 20 * 30;
        assert!(
            (admitted as f64 - expected as f64).abs() <= expected as f64 * 0.2,
            "admitted {admitted}, expected about {expected}"
        );
        // Without sharing, the cluster would admit three times the rate.
        assert!(admitted < expected * 2);
    }

    /// Three nodes sharing counts every `gossip_ms`; `node_of(step)` says which node gets the
    /// step's request (10 ms apart). Returns the requests admitted.
    fn cluster_admits(
        seconds: u64,
        rate: &str,
        gossip_ms: u64,
        node_of: impl Fn(u64) -> usize,
    ) -> usize {
        let nodes: Vec<RateLimiter> = (0..3).map(|_| RateLimiter::default()).collect();
        let client = ip("198.51.100.7");
        let mut published = vec![String::new(); 3];
        let mut admitted = 0;
        for step in 0..seconds * 100 {
            let now = step * 10;
            if now % gossip_ms == 0 {
                for (i, node) in nodes.iter().enumerate() {
                    published[i] = node.publish(now, PUBLISHED_ENTRIES);
                }
                for (i, node) in nodes.iter().enumerate() {
                    let others = published
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, text)| text.as_str());
                    node.set_remote(sum_published(others));
                }
            }
            if nodes[node_of(step)]
                .check("api", client, limit(rate), now)
                .is_ok()
            {
                admitted += 1;
            }
        }
        admitted
    }

    #[test]
    fn however_the_client_spreads_the_cluster_admits_the_rate_within_a_fifth() {
        let expected = 20.0 * 30.0;
        type Spread = fn(u64) -> usize;
        let spreads: [(&str, Spread); 3] = [
            ("all on one node", |_| 0),
            ("70/20/10", |step| match step % 10 {
                0..=6 => 0,
                7 | 8 => 1,
                _ => 2,
            }),
            ("switching node every second", |step| {
                ((step / 100) % 3) as usize
            }),
        ];
        for (name, spread) in spreads {
            let admitted = cluster_admits(30, "20/s", 250, spread) as f64;
            assert!(
                (admitted - expected).abs() <= expected * 0.2,
                "{name}: admitted {admitted}, expected about {expected}"
            );
        }
    }

    #[test]
    fn published_text_is_bounded_ordered_and_parses_back() {
        let limiter = RateLimiter::default();
        for i in 0..100u8 {
            for _ in 0..=i % 5 {
                let _ = limiter.check("api", IpAddr::from([10, 0, 0, i]), limit("10/s"), 0);
            }
        }
        let text = limiter.publish(0, 8);
        let sum = sum_published([text.as_str(), text.as_str(), "garbage;a b nan;x y -1"]);
        assert_eq!(sum.len(), 8);
        assert!(sum.values().all(|count| *count == 10.0), "{sum:?}");
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), "2001:db8:1:2::/64");
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
    }
}
