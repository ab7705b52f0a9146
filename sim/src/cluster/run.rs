//! One seeded run of a whole cluster: the scenario the seed draws, the lockstep loop, the
//! observations, the checkers, and the trace hash.
//!
//! Everything the run does comes from the seed: the cluster's shape, each node's raft election
//! timeout, the network's latency and loss, the faults and the workload. Run it twice (each
//! in a fresh process, see `main.rs`) and the trace hash is the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use shoal::cluster::identity::Identity;
use shoal::cluster::RaftTiming;
use shoal::cron::{Schedule, Tick};
use shoal::manifest::Manifest;
use shoal::runs::RunState;
use shoal::state::{Applied, Command};
use shoal_mesh::gossip::GossipKey;
use shoal_mesh::pki::ClusterCa;

use super::gossip_net::GossipNet;
use super::host::{Host, Shared, EPOCH_MS};
use super::link::Switchboard;
use super::net::{Faults, Net};
use crate::check::{self, End, Params};
use crate::trace::{Event, FireRecord, NodeId, Violation};

/// One virtual step.
const STEP: Duration = Duration::from_millis(1);
/// The cron job every run deploys, and its schedule (every two seconds).
const CRON_APP: &str = "tick";
const CRON_SCHEDULE: &str = "*/2 * * * * *";
/// How long after the last fault the cluster is left alone before ticks are expected to fire:
/// an election, gossip convergence and a duty period, with room to spare.
const SETTLE: Duration = Duration::from_secs(6);
/// How often each node's gossip view is observed.
const MEMBERS_EVERY_MS: u64 = 10;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed.
    pub seed: u64,
    /// Virtual seconds.
    pub seconds: u64,
    /// Nodes (3 to 10), instead of the seed's draw (3 to 5).
    pub nodes: Option<usize>,
    /// Keep the trace text (for `--replay`).
    pub keep_trace: bool,
    /// Stop at the first violation.
    pub stop_at_violation: bool,
}

/// What a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// SHA-256 of the trace, hex.
    pub trace_hash: String,
    /// Nodes, and how many of them vote.
    pub nodes: usize,
    /// Voters.
    pub voters: usize,
    /// Virtual milliseconds simulated.
    pub simulated_ms: u64,
    /// Trace events.
    pub events: u64,
    /// Faults injected.
    pub faults: Vec<String>,
    /// Distinct terms with a leader seen.
    pub leader_terms: usize,
    /// Deploys acknowledged.
    pub deploys_acked: usize,
    /// Job runs workers accepted.
    pub runs_accepted: usize,
    /// Requests sent to services, and how many were answered `200`.
    pub requests: (usize, usize),
    /// Cron ticks that had to fire in the quiet tail.
    pub expected_ticks: usize,
    /// Messages the network delivered and lost.
    pub messages: (u64, u64),
    /// Broken invariants.
    #[serde(serialize_with = "violations_text")]
    pub violations: Vec<Violation>,
    /// The trace, when asked for.
    #[serde(skip)]
    pub trace: Option<String>,
}

fn violations_text<S: serde::Serializer>(v: &[Violation], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

/// Something the scenario does at a moment.
#[derive(Clone, Debug)]
enum Action {
    Crash(usize),
    /// Crash whichever voter leads at that moment; restart it `after_ms` later.
    CrashLeader {
        after_ms: u64,
    },
    Restart(usize),
    Partition {
        from: usize,
        to: usize,
    },
    Heal,
    /// A slow node: `extra_ms` more latency on its messages, and on each raft log flush.
    Slow(usize, u64),
    Deploy {
        app: String,
        spec: String,
        via: usize,
    },
    Delete {
        app: String,
        via: usize,
    },
    /// One request for `app` into each of these nodes' ingress, at the same instant.
    Requests {
        app: String,
        via: Vec<usize>,
    },
}

/// The cluster and the timeline a seed draws.
struct Scenario {
    nodes: usize,
    voters: usize,
    net_faults: Faults,
    timeline: BTreeMap<u64, Vec<Action>>,
    /// When the last fault ends.
    quiet_from_ms: u64,
    /// The app deployed in the quiet tail whose first requests come as one burst.
    cold_burst: Option<String>,
}

impl Scenario {
    fn draw(rng: &mut StdRng, end_ms: u64, nodes: Option<usize>) -> Self {
        let drawn = rng.gen_range(3..=5);
        let nodes = nodes.unwrap_or(drawn);
        let voters = 3;
        let net_faults = Faults {
            latency_ms: (1, rng.gen_range(2..=8)),
            datagram_loss: f64::from(rng.gen_range(0..=5u32)) / 100.0,
        };
        let mut timeline: BTreeMap<u64, Vec<Action>> = BTreeMap::new();
        let mut at = |ms: u64, action: Action| timeline.entry(ms).or_default().push(action);
        let cron = format!(
            "name = \"{CRON_APP}\"\nkind = \"cron\"\nschedule = \"{CRON_SCHEDULE}\"\n\
             command = [\"true\"]\n"
        );
        let service = |name: &str, generation: u32| {
            format!(
                "name = \"{name}\"\nkind = \"service\"\ncommand = [\"serve\", \"{generation}\"]\n\
                 port = 3000\n"
            )
        };
        at(
            3_000,
            Action::Deploy {
                app: CRON_APP.into(),
                spec: cron.clone(),
                via: rng.gen_range(0..nodes),
            },
        );
        // The workload: services deployed, redeployed and deleted at random moments.
        let fault_end = end_ms.saturating_sub(14_000).max(6_000);
        for generation in 0..rng.gen_range(2..6u32) {
            let app = format!("web-{}", rng.gen_range(0..3));
            at(
                rng.gen_range(3_000..fault_end),
                Action::Deploy {
                    spec: service(&app, generation),
                    app,
                    via: rng.gen_range(0..nodes),
                },
            );
        }
        if rng.gen_bool(0.5) && fault_end > 8_000 {
            at(
                rng.gen_range(8_000..fault_end),
                Action::Delete {
                    app: format!("web-{}", rng.gen_range(0..3)),
                    via: rng.gen_range(0..nodes),
                },
            );
        }
        // Requests to the services while faults happen: routing, retries, cold and warm.
        for _ in 0..rng.gen_range(2..6) {
            let via = (0..rng.gen_range(1..=4))
                .map(|_| rng.gen_range(0..nodes))
                .collect();
            at(
                rng.gen_range(3_000..end_ms.saturating_sub(2_000).max(3_001)),
                Action::Requests {
                    app: format!("web-{}", rng.gen_range(0..3)),
                    via,
                },
            );
        }
        // Faults from 6 s until 14 s before the end, mostly one at a time.
        let mut t = 6_000;
        let mut quiet_from_ms = 0;
        loop {
            t += rng.gen_range(1_000..4_000);
            let lasts = rng.gen_range(1_000..6_000);
            if t + lasts > fault_end {
                break;
            }
            let node = rng.gen_range(0..nodes);
            match rng.gen_range(0..5) {
                4 => at(t, Action::CrashLeader { after_ms: lasts }),
                0 => {
                    at(t, Action::Crash(node));
                    at(t + lasts, Action::Restart(node));
                }
                1 => {
                    for other in (0..nodes).filter(|&o| o != node) {
                        at(
                            t,
                            Action::Partition {
                                from: node,
                                to: other,
                            },
                        );
                        at(
                            t,
                            Action::Partition {
                                from: other,
                                to: node,
                            },
                        );
                    }
                    at(t + lasts, Action::Heal);
                }
                2 => {
                    let other = (node + rng.gen_range(1..nodes)) % nodes;
                    at(
                        t,
                        Action::Partition {
                            from: node,
                            to: other,
                        },
                    );
                    at(t + lasts, Action::Heal);
                }
                _ => {
                    at(t, Action::Slow(node, rng.gen_range(20..200)));
                    at(t + lasts, Action::Slow(node, 0));
                }
            }
            quiet_from_ms = quiet_from_ms.max(t + lasts);
            // Most faults come one after the other; some overlap the next (a crash during a
            // partition, two nodes down at once).
            if rng.gen_bool(0.7) {
                t += lasts;
            }
        }
        // Once quiet: a new app, and a burst of simultaneous first requests from several nodes.
        let deploy_at = quiet_from_ms.max(6_000) + SETTLE.as_millis() as u64;
        let burst_at = deploy_at + 3_000;
        let cold_burst = (burst_at + 4_000 <= end_ms).then(|| {
            let app = "cold".to_owned();
            at(
                deploy_at,
                Action::Deploy {
                    spec: service(&app, 0),
                    app: app.clone(),
                    via: rng.gen_range(0..nodes),
                },
            );
            let via = (0..rng.gen_range(3..=8))
                .map(|_| rng.gen_range(0..nodes))
                .collect();
            at(
                burst_at,
                Action::Requests {
                    app: app.clone(),
                    via,
                },
            );
            app
        });
        Self {
            nodes,
            voters,
            net_faults,
            timeline,
            quiet_from_ms,
            cold_burst,
        }
    }
}

/// Runs one seed.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let end_ms = options.seconds * 1000;
    let scenario = Scenario::draw(&mut rng, end_ms, options.nodes);
    let net = Net::new(rng.gen(), scenario.net_faults.clone());
    let shared = Shared {
        gossip: GossipNet::new(net.clone()),
        net: net.clone(),
        board: Switchboard::default(),
        outbox: Default::default(),
        token: format!("sim-admin-{:016x}", rng.gen::<u64>()),
        requests: Arc::default(),
    };
    let mut hosts = build_hosts(&mut rng, &scenario, &shared)?;
    let params = Params {
        gossip_interval_ms: 200,
        dead_after_ms: 2_000,
        // dead_after + 5 rounds. 200 seeds pass at 2.5 s; before the tick loop stopped
        // waiting on table fetches, a worker could see a dead leader live for 4.4 s.
        converge_ms: 3_000,
    };
    let mut checkers = check::all(&params);
    let mut trace = Trace::new(options.keep_trace);
    let mut violations = Vec::new();
    let mut observer = Observer::default();
    let mut faults = Vec::new();
    let mut stats = Stats::default();

    for (index, host) in hosts.iter_mut().enumerate() {
        host.start(&shared, index == 0, timing(&mut rng))
            .with_context(|| format!("cannot start {}", host.name))?;
    }
    let mut timeline = scenario.timeline.clone();
    let mut now = 0;
    while now < end_ms {
        now += 1;
        let mut events = Vec::new();
        for action in timeline.remove(&now).unwrap_or_default() {
            let later = match action {
                Action::CrashLeader { after_ms } => leader_of(&hosts).map(|index| {
                    let restart = (now + after_ms, Action::Restart(index));
                    (Action::Crash(index), Some(restart))
                }),
                action => Some((action, None)),
            };
            let Some((action, then)) = later else {
                continue;
            };
            if let Some((at, then)) = then {
                timeline.entry(at).or_default().push(then);
            }
            let event = act(&action, &mut hosts, &shared, &mut rng)?;
            if let Some(event) = event {
                if !matches!(event, Event::DeleteRequested { .. }) {
                    faults.push(format!("{now} ms: {event:?}"));
                }
                events.push(event);
            }
        }
        net.advance_to(now);
        for host in &hosts {
            host.step(STEP);
        }
        events.extend(shared.drain());
        observer.observe(&hosts, now, &mut events);
        stats.count(&events);
        trace.record(now, &events);
        for checker in &mut checkers {
            violations.extend(checker.step(now, &events));
        }
        if options.stop_at_violation && !violations.is_empty() {
            break;
        }
    }
    let end = End {
        expected_ticks: expected_ticks(&scenario, &stats, now),
        cold_bursts: scenario
            .cold_burst
            .iter()
            .filter(|app| stats.acked.contains(*app))
            .cloned()
            .collect(),
    };
    for checker in &mut checkers {
        violations.extend(checker.finish(now, &end));
    }
    for host in &mut hosts {
        host.crash(&shared);
    }
    let messages = net.stats();
    Ok(Report {
        seed: options.seed,
        trace_hash: trace.hash(),
        nodes: scenario.nodes,
        voters: scenario.voters,
        simulated_ms: now,
        events: trace.events,
        faults,
        leader_terms: stats.leader_terms.len(),
        deploys_acked: stats.deploys_acked,
        runs_accepted: stats.runs_accepted,
        requests: (stats.requests, stats.answered_ok),
        expected_ticks: end.expected_ticks.len(),
        messages: (messages.delivered, messages.lost),
        violations,
        trace: trace.text,
    })
}

/// The nodes, their ids and identities (one CA; certificates are never used: the simulated
/// network stands in for QUIC).
fn build_hosts(
    rng: &mut StdRng,
    scenario: &Scenario,
    shared: &Shared,
) -> anyhow::Result<Vec<Host>> {
    let cluster_id = format!("shoal-sim-{:08x}", rng.gen::<u32>());
    let ca = ClusterCa::generate(&cluster_id)?;
    let gossip_key = GossipKey::generate(rng);
    let mut ids = BTreeSet::new();
    while ids.len() < scenario.nodes {
        ids.insert(rng.gen_range(1..1u64 << 53));
    }
    let mut ids: Vec<NodeId> = ids.into_iter().collect();
    // The order of the ids is not the order of the roles.
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.gen_range(0..=i));
    }
    let seeds: Vec<String> = ids[..scenario.voters]
        .iter()
        .map(|&id| shared.gossip.addr(id).to_string())
        .collect();
    let mut hosts = Vec::new();
    for (index, &id) in ids.iter().enumerate() {
        let name = format!("n{index}");
        let voter = index < scenario.voters;
        let host_ip = shared.gossip.addr(id).ip();
        let identity = Identity {
            cluster_id: cluster_id.clone(),
            node_id: id,
            voter,
            ca_cert_pem: ca.cert_pem(),
            ca_key_pem: None,
            node: ca.issue_node_certificate(&name, id, &[host_ip])?,
            gossip_key: gossip_key.clone(),
            join_token: None,
            gossip_seeds: seeds.clone(),
        };
        hosts.push(Host::new(id, name, voter, identity)?);
    }
    Ok(hosts)
}

/// A node's raft timers for one incarnation: the election timeout is drawn here, from the
/// seed, and openraft's own draw is pinned by a range one millisecond wide.
fn timing(rng: &mut StdRng) -> RaftTiming {
    let election_min = 150 + 5 * rng.gen_range(0..40);
    RaftTiming {
        heartbeat: 50,
        election_min,
        election_max: election_min + 1,
    }
}

/// Carries out one scheduled action; returns the ground-truth event it makes, if any.
fn act(
    action: &Action,
    hosts: &mut [Host],
    shared: &Shared,
    rng: &mut StdRng,
) -> anyhow::Result<Option<Event>> {
    Ok(match action {
        Action::CrashLeader { .. } => None,
        // Overlapping faults may crash a node that is down, or restart one that is up.
        Action::Crash(index) if !hosts[*index].is_up() => None,
        Action::Restart(index) if hosts[*index].is_up() => None,
        Action::Crash(index) => {
            let host = &mut hosts[*index];
            host.crash(shared);
            Some(Event::Crash { node: host.id })
        }
        Action::Restart(index) => {
            let host = &mut hosts[*index];
            host.start(shared, false, timing(rng))
                .with_context(|| format!("cannot restart {}", host.name))?;
            Some(Event::Restart { node: host.id })
        }
        Action::Partition { from, to } => {
            let (from, to) = (hosts[*from].id, hosts[*to].id);
            shared.net.block(from, to);
            Some(Event::Partition { from, to })
        }
        Action::Heal => {
            shared.net.heal();
            Some(Event::Heal)
        }
        Action::Slow(index, extra_ms) => {
            shared.net.set_slow(hosts[*index].id, *extra_ms);
            hosts[*index].set_disk_delay(*extra_ms);
            Some(Event::Slow {
                node: hosts[*index].id,
                extra_ms: *extra_ms,
            })
        }
        Action::Deploy { app, spec, via } => {
            let spec = Manifest::parse(spec, "shoal.toml", None)
                .map_err(|error| anyhow::anyhow!("the scenario's manifest is invalid: {error}"))?;
            let digest = hex::encode(Sha256::digest(format!("{spec:?}").as_bytes()));
            let command = Command::Deploy {
                spec: Box::new(spec),
                digest,
                bundle_bytes: 1,
                at_unix_ms: EPOCH_MS + shared.net.now_ms(),
            };
            let recorder = shared.clone();
            let app = app.clone();
            live_host(hosts, *via).spawn(move |cluster| async move {
                if let Ok((index, Applied::Deployed { version, .. })) =
                    cluster.propose_indexed(command).await
                {
                    recorder.record(Event::DeployAcked {
                        app,
                        version,
                        index,
                    });
                }
            });
            None
        }
        Action::Requests { app, via } => {
            for &index in via {
                let host = live_host(hosts, index);
                let id = shared.next_request();
                shared.record(Event::RequestSent {
                    id,
                    ingress: host.id,
                    app: app.clone(),
                });
                host.request(shared, id, app);
            }
            None
        }
        Action::Delete { app, via } => {
            let command = Command::Delete { name: app.clone() };
            let recorder = shared.clone();
            let acked = app.clone();
            live_host(hosts, *via).spawn(move |cluster| async move {
                if let Ok((index, Applied::Deleted { .. })) = cluster.propose_indexed(command).await
                {
                    recorder.record(Event::DeleteAcked { app: acked, index });
                }
            });
            Some(Event::DeleteRequested { app: app.clone() })
        }
    })
}

/// The voter that leads now, if one does.
fn leader_of(hosts: &[Host]) -> Option<usize> {
    hosts.iter().position(|host| {
        host.cluster()
            .and_then(|cluster| cluster.raft_metrics())
            .is_some_and(|metrics| metrics.state == openraft::ServerState::Leader)
    })
}

/// The client's node, or the next one up (a client retries elsewhere).
fn live_host(hosts: &[Host], preferred: usize) -> &Host {
    (0..hosts.len())
        .map(|offset| &hosts[(preferred + offset) % hosts.len()])
        .find(|host| host.is_up())
        .unwrap_or(&hosts[preferred])
}

/// The cron ticks due in the quiet tail, when the job's deploy was acknowledged: after the
/// cluster settled, and early enough that the duty (every 200 ms) had its chance.
fn expected_ticks(scenario: &Scenario, stats: &Stats, end_ms: u64) -> Vec<(String, i64)> {
    if !stats.cron_acked {
        return Vec::new();
    }
    let Ok(schedule) = Schedule::parse(CRON_SCHEDULE, None) else {
        return Vec::new();
    };
    let from = EPOCH_MS + scenario.quiet_from_ms + SETTLE.as_millis() as u64;
    let until = EPOCH_MS + end_ms.saturating_sub(1_500);
    let mut ticks = Vec::new();
    let mut tick = Tick::from_unix_seconds((from / 1000) as i64);
    while let Some(next) = schedule.next_after(tick) {
        if next.unix_seconds() * 1000 > until as i64 {
            break;
        }
        ticks.push((CRON_APP.to_owned(), next.unix_seconds()));
        tick = next;
    }
    ticks
}

/// Counts for the report.
#[derive(Default)]
struct Stats {
    leader_terms: BTreeSet<u64>,
    deploys_acked: usize,
    runs_accepted: usize,
    cron_acked: bool,
    /// Apps with an acknowledged deploy.
    acked: BTreeSet<String>,
    requests: usize,
    answered_ok: usize,
}

impl Stats {
    fn count(&mut self, events: &[Event]) {
        for event in events {
            match event {
                Event::Raft {
                    term,
                    is_leader: true,
                    ..
                } => {
                    self.leader_terms.insert(*term);
                }
                Event::DeployAcked { app, .. } => {
                    self.deploys_acked += 1;
                    self.cron_acked |= app == CRON_APP;
                    self.acked.insert(app.clone());
                }
                Event::RequestSent { .. } => self.requests += 1,
                Event::Answered { status: 200, .. } => self.answered_ok += 1,
                Event::JobAccepted { .. } => self.runs_accepted += 1,
                _ => {}
            }
        }
    }
}

/// What each node last reported, so that only changes are recorded.
#[derive(Default)]
struct Observer {
    raft: BTreeMap<NodeId, Event>,
    tables: BTreeMap<NodeId, u64>,
    members: BTreeMap<NodeId, BTreeSet<NodeId>>,
}

impl Observer {
    fn observe(&mut self, hosts: &[Host], now: u64, events: &mut Vec<Event>) {
        for host in hosts {
            let Some(cluster) = host.cluster() else {
                self.raft.remove(&host.id);
                self.tables.remove(&host.id);
                self.members.remove(&host.id);
                continue;
            };
            if let Some(metrics) = cluster.raft_metrics() {
                let applied = metrics.last_applied.map_or(0, |log| log.index);
                let event = Event::Raft {
                    node: host.id,
                    term: metrics.current_term,
                    leader: metrics.current_leader,
                    is_leader: metrics.state == openraft::ServerState::Leader,
                    last_log: metrics.last_log_index.unwrap_or(0),
                    committed: applied,
                    applied,
                };
                if self.raft.get(&host.id) != Some(&event) {
                    self.raft.insert(host.id, event.clone());
                    events.push(event);
                }
            }
            let table = cluster.table();
            if self.tables.get(&host.id) != Some(&table.last_applied()) {
                self.tables.insert(host.id, table.last_applied());
                events.push(table_event(host.id, &table));
            }
            if now.is_multiple_of(MEMBERS_EVERY_MS) {
                let live: BTreeSet<NodeId> = cluster
                    .nodes()
                    .nodes
                    .iter()
                    .filter(|member| member.live)
                    .filter_map(|member| member.id.parse().ok())
                    .collect();
                if self.members.get(&host.id) != Some(&live) {
                    self.members.insert(host.id, live.clone());
                    events.push(Event::Members {
                        node: host.id,
                        live,
                    });
                }
            }
        }
    }
}

fn table_event(node: NodeId, table: &Arc<shoal::state::AppTable>) -> Event {
    let mut apps = BTreeMap::new();
    let mut fires = BTreeSet::new();
    for app in table.apps() {
        apps.insert(app.name.clone(), app.current().version);
        for run in &app.runs.runs {
            fires.insert(FireRecord {
                job: app.name.clone(),
                run_id: run.run_id.clone(),
                tick: run.tick,
                attempt: run.attempt,
                manual: run.manual,
                fence_term: run.fence.term,
                failed: matches!(
                    run.state,
                    RunState::Failed | RunState::TimedOut | RunState::Lost
                ),
            });
        }
    }
    Event::Table {
        node,
        applied: table.last_applied(),
        apps,
        fires,
    }
}

/// The run's trace: its hash always, its text when asked for.
struct Trace {
    hasher: Sha256,
    text: Option<String>,
    events: u64,
}

impl Trace {
    fn new(keep: bool) -> Self {
        Self {
            hasher: Sha256::new(),
            text: keep.then(String::new),
            events: 0,
        }
    }

    fn record(&mut self, now: u64, events: &[Event]) {
        for event in events {
            let line = format!("{now} {event:?}\n");
            self.hasher.update(line.as_bytes());
            if let Some(text) = &mut self.text {
                let _ = write!(text, "{line}");
            }
            self.events += 1;
        }
    }

    fn hash(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}
