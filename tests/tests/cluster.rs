//! The cluster end to end: real `shoal seed` and `shoal join` processes on loopback, with
//! `--runtime process` and static apps only (no Docker). Each test starts its own cluster;
//! they run one at a time (five processes each on a 2-core machine), and every wait is
//! bounded and prints the nodes' logs when it runs out.
//!
//! 1. five nodes form one cluster and serve a deploy made through a non-leader;
//! 2. killing the leader elects another, deploys go on, the killed node rejoins;
//! 3. twenty leader kills in the middle of a stream of deploys lose no acknowledged deploy;
//! 4. a join token with a wrong secret is refused and leaves nothing behind;
//! 5. the whole cluster stops (SIGTERM) and comes back with every app;
//! 6. forged gossip datagrams are dropped, counted, and change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_tests::cluster::{
    deploy_bundle, static_bundle, tamper_join_token, AppVersion, ClusterLock, Deployed, Role,
    SmallRng, TestCluster, FORMED_WITHIN,
};
use shoal_tests::examples_dir;

/// How long every node may take to show a deploy (the contract says about 10 s).
const SHOWN_WITHIN: Duration = Duration::from_secs(15);
/// How long a new leader may take to be elected and agreed on.
const ELECTED_WITHIN: Duration = Duration::from_secs(20);
/// How long deploys through a survivor are retried after a leader is killed.
const DEPLOY_AFTER_KILL_WITHIN: Duration = Duration::from_secs(15);
/// How long a killed node may stay `live` in the survivors' eyes (the contract says ~3 s).
const DEAD_WITHIN: Duration = Duration::from_secs(6);
/// How long a node stopped with SIGTERM may stay `live` (it leaves at once).
const LEFT_WITHIN: Duration = Duration::from_secs(2);
/// How long `shoal join` with a wrong token may take to give up (the contract says ~10 s).
const REFUSED_WITHIN: Duration = Duration::from_secs(15);
/// The forged gossip counter.
const DROPPED: &str = "shoal_gossip_datagrams_dropped_total";

/// One cluster at a time, in this binary and across test binaries: each is five processes on
/// a 2-core machine.
fn one_cluster_at_a_time() -> ClusterLock {
    ClusterLock::acquire()
}

/// The indexes of the nodes with `role`.
fn with_role(cluster: &TestCluster, role: Role) -> Vec<usize> {
    (0..cluster.nodes.len())
        .filter(|&index| cluster.nodes[index].role == role)
        .collect()
}

/// Deploys a fresh static app `name` through node `via`, which must acknowledge it at once.
fn deploy_static(cluster: &TestCluster, via: usize, name: &str) -> Result<Deployed> {
    let bundle = static_bundle(name, &marker(name));
    cluster
        .deploy(via, &bundle, Duration::from_secs(30))
        .map_err(|error| cluster.failure(format!("deploying {name}: {error:#}")))
}

/// The string the index page of the static app `name` holds.
fn marker(name: &str) -> String {
    format!("marker-of-{name}")
}

fn expect(deploys: &[&Deployed]) -> BTreeMap<String, AppVersion> {
    deploys
        .iter()
        .map(|deployed| (deployed.app.clone(), deployed.release.clone()))
        .collect()
}

/// Every running node serves each static app in `apps` with its own marker.
fn wait_markers_served(cluster: &mut TestCluster, apps: &[&str]) -> Result<()> {
    for app in apps {
        let path = format!("/apps/{app}/");
        cluster.wait_served_everywhere(&path, marker(app).as_bytes(), SHOWN_WITHIN)?;
    }
    Ok(())
}

#[test]
fn five_nodes_form_one_cluster_and_serve_a_deploy_made_through_a_non_leader() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let mut cluster = TestCluster::start(3, 2)?;
    let seed = cluster.seed();
    let join_line = format!(
        "join with: shoal join --seed {} --token {}",
        seed.quic, cluster.join_token
    );
    cluster.check(
        seed.log().contains(&join_line),
        format!("the seed did not print `{join_line}`"),
    )?;
    cluster.check(
        cluster.join_token.starts_with("shoal-join-v1."),
        format!("the join token is `{}`", cluster.join_token),
    )?;
    for node in &cluster.nodes {
        cluster.check(
            node.admin_token_file().as_deref() == Some(cluster.admin_token.as_str()),
            format!("{} holds another admin token than the seed", node.name),
        )?;
    }

    let view = cluster.nodes_view(0)?;
    let names: Vec<&str> = view
        .nodes
        .iter()
        .map(|member| member.name.as_str())
        .collect();
    let mut sorted: Vec<&str> = cluster
        .nodes
        .iter()
        .map(|node| node.name.as_str())
        .collect();
    sorted.sort();
    cluster.check(
        names == sorted,
        format!("/v1/nodes lists {names:?}, not {sorted:?}"),
    )?;
    let leader_name = view.leader_name().context("no leader")?.to_owned();
    let ids: BTreeSet<&str> = view.nodes.iter().map(|member| member.id.as_str()).collect();
    cluster.check(
        ids.len() == 5,
        format!("node ids are not distinct: {view:?}"),
    )?;
    for node in &cluster.nodes {
        let member = view.member(&node.name).context("listed above")?;
        let raft_ok = match (node.role.is_voter(), node.name == leader_name) {
            (true, true) => member.raft == "leader",
            (true, false) => member.raft == "follower",
            (false, _) => member.raft == "learner" || member.raft == "none",
        };
        cluster.check(
            member.live && member.voter == node.role.is_voter() && raft_ok,
            format!("{} ({:?}) is listed as {member:?}", node.name, node.role),
        )?;
        let addresses = (
            member.api.as_str(),
            member.http.as_str(),
            member.quic.as_str(),
        );
        cluster.check(
            addresses
                == (
                    node.api.to_string().as_str(),
                    node.http.to_string().as_str(),
                    node.quic.to_string().as_str(),
                ),
            format!("{} advertises {addresses:?}", node.name),
        )?;
    }

    // The dashboard, with the CLI, through a worker; a generated app through a follower.
    let leader = cluster
        .index_of(&leader_name)
        .context("the leader is ours")?;
    let worker = with_role(&cluster, Role::Worker)[0];
    let follower = (0..3).find(|&index| index != leader).context("3 voters")?;
    let dashboard = examples_dir().join("dashboard");
    let output = cluster.cli(
        worker,
        &[
            "deploy",
            dashboard.to_str().context("utf-8 path")?,
            "--json",
        ],
    );
    cluster.check(
        output.status.success(),
        format!(
            "`shoal deploy` through the worker failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    )?;
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let dashboard_release = AppVersion {
        version: answer["version"].as_u64().context("a version")?,
        digest: answer["digest"].as_str().context("a digest")?.to_owned(),
    };
    let generated = deploy_static(&cluster, follower, "generated")?;

    for (app, release) in [
        ("dashboard", &dashboard_release),
        ("generated", &generated.release),
    ] {
        cluster.wait_for(&format!("every node to show {app}"), SHOWN_WITHIN, || {
            for index in 0..cluster.nodes.len() {
                let shown = cluster
                    .app_on(index, app)
                    .map_err(|error| format!("{error:#}"))?
                    .ok_or(format!("{} has no {app}", cluster.nodes[index].name))?;
                let current = &shown["app"];
                let newest = &shown["releases"][0];
                if current["version"].as_u64() != Some(release.version)
                    || current["digest"].as_str() != Some(release.digest.as_str())
                    || newest["digest"].as_str() != Some(release.digest.as_str())
                {
                    return Err(format!("{} shows {shown}", cluster.nodes[index].name));
                }
            }
            Ok(())
        })?;
    }
    let stylesheet = std::fs::read(dashboard.join("assets/style.css"))?;
    cluster.wait_served_everywhere(
        "/apps/dashboard/assets/style.css",
        &stylesheet,
        SHOWN_WITHIN,
    )?;
    cluster.wait_served_everywhere(
        "/apps/dashboard/",
        b"/apps/dashboard/assets/style.css",
        SHOWN_WITHIN,
    )?;
    wait_markers_served(&mut cluster, &["generated"])?;

    // `shoal nodes`: every name, and the leader marked.
    let output = cluster.cli(worker, &["nodes"]);
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    cluster.check(
        output.status.success(),
        format!("`shoal nodes` failed: {output:?}"),
    )?;
    for node in &cluster.nodes {
        let lines: Vec<&str> = table.lines().filter(|l| l.contains(&node.name)).collect();
        let marked = lines.iter().any(|line| line.contains("LEADER"));
        cluster.check(
            lines.len() == 1 && marked == (node.name == leader_name),
            format!("`shoal nodes` shows {} wrongly:\n{table}", node.name),
        )?;
    }
    let output = cluster.cli(follower, &["nodes", "--json"]);
    let listed = shoal_tests::cluster::NodesView::parse(&serde_json::from_slice(&output.stdout)?)?;
    cluster.check(
        listed.leader_name() == Some(leader_name.as_str()) && listed.nodes.len() == 5,
        format!("`shoal nodes --json` says {listed:?}"),
    )
}

#[test]
fn killing_the_leader_elects_another_and_the_killed_node_rejoins() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let mut cluster = TestCluster::start(3, 2)?;
    let before = deploy_static(&cluster, 0, "before")?;
    cluster.wait_apps_everywhere(&expect(&[&before]), SHOWN_WITHIN)?;

    let old = cluster.leader(ELECTED_WITHIN)?;
    let old_view = cluster.nodes_view(old)?;
    let old_name = cluster.nodes[old].name.clone();
    let old_id = old_view.member(&old_name).context("listed")?.id.clone();
    cluster.kill(old);
    let killed_at = Instant::now();

    let survivors = cluster.running();
    cluster.wait_for(
        &format!("the survivors to see {old_name} dead"),
        DEAD_WITHIN,
        || {
            for &index in &survivors {
                let view = cluster
                    .nodes_view(index)
                    .map_err(|error| format!("{error:#}"))?;
                if view.member(&old_name).is_some_and(|member| member.live) {
                    return Err(format!("{} still sees it live", cluster.nodes[index].name));
                }
            }
            Ok(())
        },
    )?;
    eprintln!(
        "survivors saw the killed leader dead after {:?}",
        killed_at.elapsed()
    );

    let new = cluster.leader(ELECTED_WITHIN)?;
    let new_view = cluster.nodes_view(new)?;
    let new_member = new_view
        .member(&cluster.nodes[new].name)
        .context("listed")?;
    cluster.check(
        new != old && new_member.id != old_id && cluster.nodes[new].role.is_voter(),
        format!("the new leader is {new_member:?}, the old one was {old_name} ({old_id})"),
    )?;
    cluster.check(
        new_view.term > old_view.term,
        format!(
            "term {} after the election, {} before",
            new_view.term, old_view.term
        ),
    )?;
    eprintln!(
        "a new leader was agreed on {:?} after the kill",
        killed_at.elapsed()
    );

    let via = with_role(&cluster, Role::Worker)[0];
    let bundle = static_bundle("during", &marker("during"));
    let (during, took, attempts) =
        cluster.deploy_until_acknowledged(via, &bundle, DEPLOY_AFTER_KILL_WITHIN)?;
    eprintln!(
        "a deploy through a worker was acknowledged {:?} after the kill ({took:?} of retries, \
         {attempts} attempts)",
        killed_at.elapsed()
    );
    let apps = expect(&[&before, &during]);
    cluster.wait_apps_everywhere(&apps, SHOWN_WITHIN)?;

    cluster.restart(old)?;
    cluster.wait_formed(FORMED_WITHIN)?;
    cluster.wait_apps_everywhere(&apps, SHOWN_WITHIN)?;
    wait_markers_served(&mut cluster, &["before", "during"])
}

/// A stream of deploys from a background thread, each a new app through a random running node.
struct Deployer {
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    up: Arc<Vec<AtomicBool>>,
    thread: JoinHandle<Vec<Attempt>>,
}

/// One deploy the deployer tried.
struct Attempt {
    app: String,
    via: usize,
    outcome: Result<Deployed, String>,
}

impl Deployer {
    fn start(cluster: &TestCluster, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let up: Arc<Vec<AtomicBool>> = Arc::new(
            cluster
                .nodes
                .iter()
                .map(|_| AtomicBool::new(true))
                .collect(),
        );
        let apis: Vec<SocketAddr> = cluster.nodes.iter().map(|node| node.api).collect();
        let token = cluster.admin_token.clone();
        let (thread_stop, thread_in_flight, thread_up) =
            (stop.clone(), in_flight.clone(), up.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = SmallRng::new(seed);
            let mut attempts = Vec::new();
            while !thread_stop.load(Ordering::Relaxed) {
                let live: Vec<usize> = (0..apis.len())
                    .filter(|&index| thread_up[index].load(Ordering::Relaxed))
                    .collect();
                let via = live[rng.below(live.len() as u64) as usize];
                let app = format!("f{}", attempts.len());
                let bundle = static_bundle(&app, &marker(&app));
                thread_in_flight.fetch_add(1, Ordering::SeqCst);
                let outcome = deploy_bundle(apis[via], &token, &bundle, Duration::from_secs(10))
                    .map_err(|error| format!("{error:#}"));
                thread_in_flight.fetch_sub(1, Ordering::SeqCst);
                attempts.push(Attempt { app, via, outcome });
                std::thread::sleep(Duration::from_millis(100));
            }
            attempts
        });
        Self {
            stop,
            in_flight,
            up,
            thread,
        }
    }

    /// Waits (up to `within`) until a deploy is in flight; whether one was.
    fn wait_in_flight(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.in_flight.load(Ordering::SeqCst) == 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the deployer thread panicked")
    }
}

#[test]
fn acknowledged_deploys_survive_leader_kills_in_the_middle_of_a_stream() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let rounds: usize = std::env::var("SHOAL_FAILOVER_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(20);
    let seed = SmallRng::seed_from_clock();
    eprintln!("{rounds} rounds, seed {seed}");
    let began = Instant::now();
    let mut cluster = TestCluster::start(3, 2)?;
    let mut rng = SmallRng::new(seed);
    let deployer = Deployer::start(&cluster, seed ^ 0xdead);
    let mut in_flight_at_kill = 0;
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(200 + rng.below(400)));
        let leader = cluster.leader(ELECTED_WITHIN)?;
        in_flight_at_kill += usize::from(deployer.wait_in_flight(Duration::from_secs(3)));
        deployer.up[leader].store(false, Ordering::Relaxed);
        cluster.kill(leader);
        let killed_at = Instant::now();
        let new = cluster.leader(ELECTED_WITHIN)?;
        cluster.check(new != leader, "the killed leader is still the leader")?;
        let elected = killed_at.elapsed();
        cluster.restart(leader)?;
        deployer.up[leader].store(true, Ordering::Relaxed);
        cluster.wait_formed(FORMED_WITHIN)?;
        eprintln!(
            "round {}/{rounds}: killed {}, {} leads after {elected:?}, whole again after {:?}",
            round + 1,
            cluster.nodes[leader].name,
            cluster.nodes[new].name,
            killed_at.elapsed()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let attempts = deployer.finish();

    // The cluster takes writes at the end, through any node.
    let via = rng.below(cluster.nodes.len() as u64) as usize;
    let last = static_bundle("last", &marker("last"));
    let (last, _, _) = cluster.deploy_until_acknowledged(via, &last, DEPLOY_AFTER_KILL_WITHIN)?;

    let acknowledged: Vec<&Deployed> = attempts
        .iter()
        .filter_map(|attempt| attempt.outcome.as_ref().ok())
        .chain([&last])
        .collect();
    let refused: Vec<String> = attempts
        .iter()
        .filter_map(|attempt| {
            let error = attempt.outcome.as_ref().err()?;
            Some(format!(
                "{} via {}: {error}",
                attempt.app, cluster.nodes[attempt.via].name
            ))
        })
        .collect();
    eprintln!(
        "{} deploys tried, {} acknowledged, {in_flight_at_kill}/{rounds} kills with one in \
         flight; refused or lost (fine, never acknowledged):\n{}",
        attempts.len(),
        acknowledged.len() - 1,
        refused
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    cluster.check(
        acknowledged.len() > rounds,
        format!(
            "only {} deploys were acknowledged in {rounds} rounds",
            acknowledged.len()
        ),
    )?;
    cluster.check(
        acknowledged
            .iter()
            .all(|deployed| deployed.release.version == 1),
        "a fresh app's first acknowledged release is not version 1",
    )?;
    cluster.wait_apps_everywhere(&expect(&acknowledged), Duration::from_secs(60))?;
    // Their bundles too: a sample of the acknowledged apps is served by every node.
    let step = (acknowledged.len() / 30).max(1);
    let sample: Vec<&str> = acknowledged
        .iter()
        .step_by(step)
        .chain([&&last])
        .map(|deployed| deployed.app.as_str())
        .collect();
    wait_markers_served(&mut cluster, &sample)?;
    eprintln!("the whole test took {:?}", began.elapsed());
    Ok(())
}

#[test]
fn a_join_token_with_a_wrong_secret_is_refused() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let mut cluster = TestCluster::start(1, 1)?;
    let tampered = tamper_join_token(&cluster.join_token)?;
    for (attempt, voter) in [false, true].into_iter().enumerate() {
        let name = format!("{}-intruder{attempt}", cluster.seed().name);
        let flags = cluster.node_flags(&name);
        let mut args: Vec<String> = vec![
            "join".into(),
            "--seed".into(),
            cluster.seed().quic.to_string(),
            "--token".into(),
            tampered.clone(),
        ];
        args.extend(flags.args());
        if voter {
            args.push("--voter".into());
        }
        let (status, _, stderr) = cluster.run_to_exit(&name, &args, REFUSED_WITHIN)?;
        cluster.check(
            !status.success() && stderr.contains("refused"),
            format!("`shoal join` with a wrong token exited with {status}; stderr:\n{stderr}"),
        )?;
        for left_behind in ["pki/node.pem", "tokens/admin"] {
            cluster.check(
                !flags.data_dir.join(left_behind).exists(),
                format!("the refused node kept {left_behind}"),
            )?;
        }
    }
    // Long enough for a member that had slipped in to show up in gossip.
    std::thread::sleep(Duration::from_secs(3));
    for index in 0..cluster.nodes.len() {
        let view = cluster.nodes_view(index)?;
        let names: Vec<&str> = view.nodes.iter().map(|m| m.name.as_str()).collect();
        cluster.check(
            names.len() == 2 && !names.iter().any(|name| name.contains("intruder")),
            format!("{} lists {names:?}", cluster.nodes[index].name),
        )?;
    }
    cluster.wait_formed(FORMED_WITHIN).map(drop)
}

#[test]
fn the_whole_cluster_restarts_with_every_app() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let mut cluster = TestCluster::start(3, 2)?;
    let workers = with_role(&cluster, Role::Worker);
    let first = deploy_static(&cluster, 0, "first")?;
    let second = deploy_static(&cluster, workers[0], "second")?;
    let apps = expect(&[&first, &second]);
    cluster.wait_apps_everywhere(&apps, SHOWN_WITHIN)?;

    // One worker leaves gracefully: the others stop counting it at once.
    let leaving = workers[1];
    let leaving_name = cluster.nodes[leaving].name.clone();
    let status = cluster.terminate(&[leaving])?[0];
    cluster.check(
        status.success(),
        format!("{leaving_name} exited with {status}"),
    )?;
    let stopped_at = Instant::now();
    let others = cluster.running();
    cluster.wait_for(&format!("{leaving_name} to be gone"), LEFT_WITHIN, || {
        for &index in &others {
            let view = cluster
                .nodes_view(index)
                .map_err(|error| format!("{error:#}"))?;
            if view.member(&leaving_name).is_some_and(|member| member.live) {
                return Err(format!("{} still sees it live", cluster.nodes[index].name));
            }
        }
        Ok(())
    })?;
    eprintln!(
        "{leaving_name} was gone {:?} after its exit",
        stopped_at.elapsed()
    );

    let rest = cluster.running();
    for (index, status) in rest.iter().zip(cluster.terminate(&rest)?) {
        let name = &cluster.nodes[*index].name;
        cluster.check(status.success(), format!("{name} exited with {status}"))?;
    }
    cluster.restart_stopped()?;
    cluster.wait_formed(FORMED_WITHIN)?;
    cluster.wait_apps_everywhere(&apps, SHOWN_WITHIN)?;
    wait_markers_served(&mut cluster, &["first", "second"])?;

    let bundle = static_bundle("third", &marker("third"));
    let (third, _, _) =
        cluster.deploy_until_acknowledged(workers[1], &bundle, DEPLOY_AFTER_KILL_WITHIN)?;
    cluster.wait_apps_everywhere(&expect(&[&first, &second, &third]), SHOWN_WITHIN)?;
    wait_markers_served(&mut cluster, &["third"])
}

#[test]
fn forged_gossip_datagrams_are_dropped_counted_and_change_nothing() -> Result<()> {
    let _one = one_cluster_at_a_time();
    let mut cluster = TestCluster::start(3, 1)?;
    let target = 1;
    let memberships_before: Vec<_> = (0..cluster.nodes.len())
        .map(|index| cluster.nodes_view(index).map(|view| view.membership()))
        .collect::<Result<_>>()?;
    let forged =
        |cluster: &TestCluster| cluster.metric(target, DROPPED, Some(("reason", "forged")));
    let dropped = |cluster: &TestCluster| cluster.metric(target, DROPPED, None);
    let (forged_before, dropped_before) = (forged(&cluster)?, dropped(&cluster)?);

    let mut rng = SmallRng::new(SmallRng::seed_from_clock());
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let gossip = cluster.nodes[target].gossip;
    let random_count = 20;
    for _ in 0..random_count {
        let len = 1 + rng.below(1200) as usize;
        socket.send_to(&rng.bytes(len), gossip)?;
    }
    // What a sealed datagram might look like: a version, a nonce, a fresh timestamp, then
    // ciphertext and a tag that no key made.
    let envelope_count = 10;
    for _ in 0..envelope_count {
        let mut datagram = vec![1u8];
        datagram.extend(rng.bytes(24));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        datagram.extend(now_ms.to_be_bytes());
        let ciphertext_len = 64 + rng.below(500) as usize;
        datagram.extend(rng.bytes(ciphertext_len));
        datagram.extend(rng.bytes(16));
        socket.send_to(&datagram, gossip)?;
    }

    cluster.wait_for(
        "the forged datagrams to be counted",
        Duration::from_secs(10),
        || {
            let forged = forged(&cluster).map_err(|error| format!("{error:#}"))? - forged_before;
            let dropped = dropped(&cluster).map_err(|error| format!("{error:#}"))? - dropped_before;
            if forged >= f64::from(random_count)
                && dropped >= f64::from(random_count + envelope_count)
            {
                Ok(())
            } else {
                Err(format!(
                    "{forged} more forged, {dropped} more dropped in all"
                ))
            }
        },
    )?;
    // A few gossip rounds for any effect to show.
    std::thread::sleep(Duration::from_secs(2));
    for (index, before) in memberships_before.iter().enumerate() {
        let after = cluster.nodes_view(index)?.membership();
        cluster.check(
            &after == before,
            format!(
                "{}'s view moved: {before:?} -> {after:?}",
                cluster.nodes[index].name
            ),
        )?;
    }
    cluster.wait_formed(FORMED_WITHIN).map(drop)
}
