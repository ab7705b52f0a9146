//! The placement view: what gossip says about workers, parsed once per gossip round so that a
//! request only clones an `Arc`.
//!
//! Keys read (DESIGN §3): `worker` ("1": runs apps), `quic` (address), `in_flight`,
//! `instances`, `cpus`, `mem_available_mib`, and `warm:<app>` =
//! `"<release>,<in_flight>,<instances>"` (or `"<release>,<in_flight>"` from an older node: one
//! instance), which becomes one placement entry per instance (`WarmValue::entries`).
//! A member without a parsable node id or QUIC address is left out: nothing could reach it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use shoal_mesh::gossip::Member;
use shoal_mesh::placement::{parse_warm, Warm, WorkerLoad};

/// Gossip key: "1" when the node runs app instances.
pub const WORKER_KEY: &str = "worker";
/// Gossip key prefix of a warm app: `warm:<app>`.
pub const WARM_PREFIX: &str = "warm:";

/// Every member's load and warm apps, as one gossip round showed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlacementView {
    /// One entry per member, sorted by node id.
    pub workers: Vec<WorkerLoad>,
    /// Warm entries by app, one per warm instance, each list sorted by node id.
    pub warm: BTreeMap<String, Vec<Warm>>,
    /// Where each member's QUIC endpoint listens.
    pub quic: BTreeMap<u64, SocketAddr>,
    /// What each live member published of its per-client request counts (`rate`).
    pub rates: Vec<(u64, String)>,
}

/// The gossip key of a node's busiest per-client request counts (see
/// `shoal_proxy::ratelimit`).
pub const RATE_KEY: &str = "rate";

impl PlacementView {
    /// Parses gossip members (`node-<id>` names).
    pub fn from_members(members: &[Member]) -> Self {
        let mut view = Self::default();
        for member in members {
            let Some(node) = member
                .node_id
                .strip_prefix("node-")
                .and_then(|id| id.parse::<u64>().ok())
            else {
                continue;
            };
            let Some(quic) = member.keys.get("quic").and_then(|a| a.parse().ok()) else {
                continue;
            };
            let number = |key: &str| {
                member
                    .keys
                    .get(key)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            view.quic.insert(node, quic);
            if let Some(rates) = member.keys.get(RATE_KEY).filter(|_| member.live) {
                view.rates.push((node, rates.clone()));
            }
            view.workers.push(WorkerLoad {
                node,
                live: member.live,
                runs_apps: member.keys.get(WORKER_KEY).is_some_and(|v| v == "1"),
                in_flight: number("in_flight"),
                instances: number("instances"),
                cpus: u32::try_from(number("cpus")).unwrap_or(u32::MAX),
                mem_available_mib: number("mem_available_mib"),
            });
            for (key, value) in member.keys.range(WARM_PREFIX.to_owned()..) {
                let Some(app) = key.strip_prefix(WARM_PREFIX) else {
                    break;
                };
                if let Some(warm) = parse_warm(value) {
                    view.warm
                        .entry(app.to_owned())
                        .or_default()
                        .extend(warm.entries(node));
                }
            }
        }
        view.workers.sort_by_key(|w| w.node);
        for entries in view.warm.values_mut() {
            entries.sort_by_key(|w| w.node);
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, live: bool, keys: &[(&str, &str)]) -> Member {
        Member {
            node_id: id.to_owned(),
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            live,
            keys: keys
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn members_become_loads_warm_entries_and_addresses() {
        let members = [
            member(
                "node-7",
                true,
                &[
                    ("quic", "10.0.0.7:7947"),
                    ("worker", "1"),
                    ("in_flight", "3"),
                    ("instances", "2"),
                    ("cpus", "4"),
                    ("mem_available_mib", "900"),
                    ("warm:api", "5,3"),
                    ("warm:notebook", "5,6,3"),
                    ("warm:broken", "x"),
                    ("warmth", "ignored"),
                ],
            ),
            member(
                "node-2",
                false,
                &[("quic", "10.0.0.2:7947"), ("warm:api", "4,0")],
            ),
            member("node-9", true, &[("worker", "1")]),
            member("stranger", true, &[("quic", "10.0.0.3:7947")]),
        ];
        let view = PlacementView::from_members(&members);
        assert_eq!(
            view.workers,
            vec![
                WorkerLoad {
                    node: 2,
                    live: false,
                    runs_apps: false,
                    in_flight: 0,
                    instances: 0,
                    cpus: 0,
                    mem_available_mib: 0,
                },
                WorkerLoad {
                    node: 7,
                    live: true,
                    runs_apps: true,
                    in_flight: 3,
                    instances: 2,
                    cpus: 4,
                    mem_available_mib: 900,
                },
            ],
            "node-9 has no QUIC address and `stranger` no node id"
        );
        assert_eq!(
            view.warm["api"],
            vec![
                Warm {
                    node: 2,
                    release: 4,
                    in_flight: 0
                },
                Warm {
                    node: 7,
                    release: 5,
                    in_flight: 3
                },
            ],
            "the two-field form of older nodes: one instance"
        );
        let notebook = Warm {
            node: 7,
            release: 5,
            in_flight: 6,
        };
        assert_eq!(
            view.warm["notebook"], [notebook; 3],
            "three instances, one entry each"
        );
        assert!(!view.warm.contains_key("broken"));
        assert_eq!(view.quic[&7], "10.0.0.7:7947".parse().unwrap());
    }
}
