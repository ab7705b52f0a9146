//! What an ingress adds to gossip: its own requests in flight on other workers.
//!
//! A model of `node/src/dataplane/mod.rs`: `DataPlane::outstanding` counts, per (worker, app),
//! the requests this node forwarded and that have not answered yet (the `Outstanding` guard is
//! taken in `forward_to`, so requests served locally are not counted), and `with_outstanding`
//! raises each gossip `warm:` entry to at least that count and adds an entry for a worker the
//! node sent requests to that gossip does not show yet.

use std::collections::BTreeMap;

use shoal_mesh::placement::Warm;

use super::gossip::RELEASE;

/// Every ingress's forwarded requests in flight, by (app, worker).
#[derive(Clone, Debug, Default)]
pub struct Outstanding {
    by_ingress: Vec<BTreeMap<(u32, u32), u64>>,
}

impl Outstanding {
    /// No requests in flight on `nodes` ingresses.
    pub fn new(nodes: usize) -> Self {
        Self {
            by_ingress: vec![BTreeMap::new(); nodes],
        }
    }

    /// `ingress` forwarded a request of `app` to `worker`.
    pub fn enter(&mut self, ingress: u32, app: u32, worker: u32) {
        *self.by_ingress[ingress as usize]
            .entry((app, worker))
            .or_default() += 1;
    }

    /// That request answered (or was refused).
    pub fn leave(&mut self, ingress: u32, app: u32, worker: u32) {
        let map = &mut self.by_ingress[ingress as usize];
        if let Some(count) = map.get_mut(&(app, worker)) {
            *count -= 1;
            if *count == 0 {
                map.remove(&(app, worker));
            }
        }
    }

    /// `with_outstanding`: `warm` holds `ingress`'s gossip entries of `app` (one per instance),
    /// sorted by node; a worker's first entry is raised to this ingress's own count there
    /// (`place` reads a worker's largest), and workers gossip does not show yet are added with
    /// one entry. The result stays sorted by node.
    pub fn apply(&self, ingress: u32, app: u32, warm: &mut Vec<Warm>) {
        let own = self.by_ingress[ingress as usize].range((app, 0)..=(app, u32::MAX));
        let gossip_len = warm.len();
        let mut added = false;
        for (&(_, worker), &count) in own {
            let node = u64::from(worker);
            let first = warm[..gossip_len].partition_point(|w| w.node < node);
            match warm[first..gossip_len].first_mut() {
                Some(entry) if entry.node == node => entry.in_flight = entry.in_flight.max(count),
                _ => {
                    warm.push(Warm {
                        node,
                        release: RELEASE,
                        in_flight: count,
                    });
                    added = true;
                }
            }
        }
        if added {
            warm.sort_unstable_by_key(|w| w.node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warm(node: u64, in_flight: u64) -> Warm {
        Warm {
            node,
            release: RELEASE,
            in_flight,
        }
    }

    #[test]
    fn own_requests_raise_and_extend_the_gossip_entries() {
        let mut outstanding = Outstanding::new(2);
        for _ in 0..3 {
            outstanding.enter(0, 7, 4);
        }
        outstanding.enter(0, 7, 1);
        outstanding.enter(0, 8, 2);
        outstanding.enter(1, 7, 9);
        let mut entries = vec![warm(1, 5), warm(4, 1), warm(4, 1), warm(6, 0)];
        outstanding.apply(0, 7, &mut entries);
        assert_eq!(
            entries,
            [warm(1, 5), warm(4, 3), warm(4, 1), warm(6, 0)],
            "a worker's first entry raised to at least its own count, never lowered"
        );
        let mut cold = Vec::new();
        outstanding.apply(0, 8, &mut cold);
        assert_eq!(cold, [warm(2, 1)], "a worker gossip does not show yet");
        for _ in 0..3 {
            outstanding.leave(0, 7, 4);
        }
        let mut entries = vec![warm(4, 0)];
        outstanding.apply(0, 7, &mut entries);
        assert_eq!(entries, [warm(1, 1), warm(4, 0)]);
    }
}
