//! Cluster membership end to end, on real `shoal seed` / `shoal join` processes on loopback
//! (the harness is `shoal_tests::cluster`; static apps and `--runtime process` only):
//!
//! 1. a dead voter removed with `shoal nodes --remove` stops voting for good: restarted, it is
//!    not promoted again, and the two voters left carry on; removing an unknown id fails;
//! 2. a join token past its `--join-token-ttl` is refused and leaves nothing behind;
//! 3. `?consistent=true` reads see an acknowledged deploy at once, on every node;
//! 4. `shoal nodes` prints a table a person can read, and `--json` matches `/v1/nodes`.
//!
//! Every test takes the [`ClusterLock`] first: one cluster at a time, across test binaries too.
//! Every wait is bounded and prints every node's log when it runs out.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use shoal_tests::cluster::{static_bundle, ClusterLock, Deployed, NodesView, Role, TestCluster};

/// How long a new leader may take to be elected and agreed on.
const ELECTED_WITHIN: Duration = Duration::from_secs(20);
/// How long every survivor may take to list a removed node as removed.
const REMOVED_WITHIN: Duration = Duration::from_secs(15);
/// How long a restarted node may take to be live again in the others' eyes.
const LIVE_WITHIN: Duration = Duration::from_secs(15);
/// How long deploys through a node are retried after a membership change.
const DEPLOY_WITHIN: Duration = Duration::from_secs(15);
/// How long every node may take to show a deploy (the contract says about 10 s).
const SHOWN_WITHIN: Duration = Duration::from_secs(15);
/// How long a client command (`shoal nodes ...`) may run.
const CLI_WITHIN: Duration = Duration::from_secs(30);
/// How long `shoal join` with an expired token may take to give up.
const REFUSED_WITHIN: Duration = Duration::from_secs(15);

/// The indexes of the nodes with `role`.
fn with_role(cluster: &TestCluster, role: Role) -> Vec<usize> {
    (0..cluster.nodes.len())
        .filter(|&index| cluster.nodes[index].role == role)
        .collect()
}

/// `shoal <args> --api <node index's API> --token <admin token>`, run to its exit (bounded):
/// its exit status, stdout and stderr.
fn shoal_cli(
    cluster: &TestCluster,
    index: usize,
    label: &str,
    args: &[&str],
) -> Result<(std::process::ExitStatus, String, String)> {
    let mut command: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    command.extend([
        "--api".to_owned(),
        cluster.nodes[index].api.to_string(),
        "--token".to_owned(),
        cluster.admin_token.clone(),
    ]);
    cluster.run_to_exit(label, &command, CLI_WITHIN)
}

/// Waits until every node in `observers` lists `name` with `voter: false`, `raft: "removed"`
/// and, if given, that liveness.
fn wait_listed_removed(
    cluster: &TestCluster,
    observers: &[usize],
    name: &str,
    live: Option<bool>,
) -> Result<()> {
    let what = format!("every observer to list {name} as removed (live: {live:?})");
    cluster.wait_for(&what, REMOVED_WITHIN, || {
        for &index in observers {
            let view = cluster
                .nodes_view(index)
                .map_err(|error| format!("{error:#}"))?;
            match view.member(name) {
                Some(member)
                    if !member.voter
                        && member.raft == "removed"
                        && live.is_none_or(|live| member.live == live) => {}
                other => {
                    return Err(format!(
                        "{} lists it as {other:?}",
                        cluster.nodes[index].name
                    ))
                }
            }
        }
        Ok(())
    })
}

/// Deploys a fresh static app `app` through node `via`, retrying until it is acknowledged,
/// then waits until every node in `observers` lists it.
fn deploy_and_see(
    cluster: &TestCluster,
    via: usize,
    app: &str,
    observers: &[usize],
) -> Result<Deployed> {
    let bundle = static_bundle(app, &format!("marker-of-{app}"));
    let (deployed, took, attempts) =
        cluster.deploy_until_acknowledged(via, &bundle, DEPLOY_WITHIN)?;
    eprintln!(
        "{app} through {} acknowledged after {took:?} ({attempts} attempts)",
        cluster.nodes[via].name
    );
    cluster.wait_for(
        &format!("the observers to list {app}"),
        SHOWN_WITHIN,
        || {
            for &index in observers {
                let apps = cluster
                    .apps_on(index)
                    .map_err(|error| format!("{error:#}"))?;
                if apps.get(app) != Some(&deployed.release) {
                    return Err(format!(
                        "{} lists {:?}",
                        cluster.nodes[index].name,
                        apps.get(app)
                    ));
                }
            }
            Ok(())
        },
    )?;
    Ok(deployed)
}

/// The leader every node in `observers` names, which must be one of `voters`.
fn leader_among(cluster: &TestCluster, observers: &[usize], voters: &[usize]) -> Result<usize> {
    cluster.wait_for("the observers to agree on a leader", ELECTED_WITHIN, || {
        let mut leaders = BTreeSet::new();
        for &index in observers {
            let view = cluster
                .nodes_view(index)
                .map_err(|error| format!("{error:#}"))?;
            leaders.insert(view.leader_name().unwrap_or("(none)").to_owned());
        }
        match leaders.iter().collect::<Vec<_>>()[..] {
            [leader] => match cluster.index_of(leader) {
                Some(index) if voters.contains(&index) => Ok(index),
                _ => Err(format!("they name {leader}, not one of the voters left")),
            },
            _ => Err(format!("they name {leaders:?}")),
        }
    })
}

/// Removing a voter for good: a killed voter removed with `shoal nodes --remove` through a
/// worker is listed as a non-voter, `raft: "removed"`, by every survivor; the two voters left
/// take deploys on their own; restarted with its old command line, the removed node is live
/// again but not promoted back, and deploys still work with neither remaining voter killed.
/// Removing an id that is no member fails with a message.
#[test]
fn a_removed_voter_stops_voting_and_is_not_promoted_again_when_it_returns() -> Result<()> {
    let _one = ClusterLock::acquire();
    let began = Instant::now();
    let mut cluster = TestCluster::start(3, 1)?;
    let leader = cluster.leader(ELECTED_WITHIN)?;
    let removed = (1..3)
        .find(|&index| index != leader)
        .context("two joined voters")?;
    let removed_name = cluster.nodes[removed].name.clone();
    let removed_id = cluster
        .nodes_view(leader)?
        .member(&removed_name)
        .context("the leader lists every node")?
        .id
        .clone();
    let worker = with_role(&cluster, Role::Worker)[0];
    let voters_left: Vec<usize> = (0..3).filter(|&index| index != removed).collect();

    cluster.kill(removed);
    let survivors = cluster.running();
    let (status, stdout, stderr) = shoal_cli(
        &cluster,
        worker,
        "remove-voter",
        &["nodes", "--remove", &removed_id],
    )?;
    cluster.check(
        status.success(),
        format!("`shoal nodes --remove {removed_id}` exited with {status}; stderr:\n{stderr}"),
    )?;
    eprintln!(
        "`shoal nodes --remove {removed_id}` said: {}",
        stdout.trim()
    );
    wait_listed_removed(&cluster, &survivors, &removed_name, None)?;
    eprintln!(
        "every survivor lists {removed_name} removed {:?} into the test",
        began.elapsed()
    );
    deploy_and_see(&cluster, voters_left[1], "after-remove", &survivors)?;
    deploy_and_see(&cluster, worker, "after-remove-w", &survivors)?;
    let term_before = cluster.nodes_view(leader)?.term;

    // Back with its old command line (it still believes it votes): live, not a voter again.
    cluster.restart(removed)?;
    std::thread::sleep(Duration::from_secs(5));
    cluster.wait_for(
        &format!("the survivors to see {removed_name} live again"),
        LIVE_WITHIN,
        || {
            for &index in &survivors {
                let view = cluster
                    .nodes_view(index)
                    .map_err(|error| format!("{error:#}"))?;
                if !view.member(&removed_name).is_some_and(|member| member.live) {
                    return Err(format!("{} sees it dead", cluster.nodes[index].name));
                }
            }
            Ok(())
        },
    )?;
    wait_listed_removed(&cluster, &survivors, &removed_name, Some(true))?;
    // It learns from the leader that it was removed, stops campaigning and serves as a worker.
    wait_listed_removed(&cluster, &[removed], &removed_name, Some(true))?;

    let new_leader = leader_among(&cluster, &survivors, &voters_left)?;
    deploy_and_see(&cluster, worker, "after-return", &survivors)?;
    deploy_and_see(&cluster, voters_left[0], "after-return-v", &survivors)?;
    let term_after = cluster.nodes_view(new_leader)?.term;
    eprintln!(
        "term {term_before} before the removed node returned, {term_after} after; leader {}",
        cluster.nodes[new_leader].name
    );
    // Still not promoted, after the deploys.
    wait_listed_removed(&cluster, &survivors, &removed_name, Some(true))?;

    let (status, _, stderr) = shoal_cli(
        &cluster,
        voters_left[0],
        "remove-unknown",
        &["nodes", "--remove", "12345"],
    )?;
    cluster.check(
        !status.success() && stderr.contains("12345"),
        format!("`shoal nodes --remove 12345` exited with {status}; stderr:\n{stderr}"),
    )?;
    eprintln!(
        "`shoal nodes --remove 12345` said: {}; the test took {:?}",
        stderr.trim(),
        began.elapsed()
    );
    Ok(())
}

/// A join token is refused once its TTL is over: with `shoal seed --join-token-ttl 1s`, a
/// `shoal join` two seconds later with the right token exits non-zero saying the token
/// expired, keeps no node certificate, and never shows up in the cluster.
#[test]
fn an_expired_join_token_is_refused_and_leaves_nothing_behind() -> Result<()> {
    let _one = ClusterLock::acquire();
    let mut cluster = TestCluster::start_with_seed_flags(1, 0, &["--join-token-ttl", "1s"])?;
    std::thread::sleep(Duration::from_secs(2));
    for (attempt, voter) in [false, true].into_iter().enumerate() {
        let name = format!("{}-late{attempt}", cluster.seed().name);
        let flags = cluster.node_flags(&name);
        let mut args = vec![
            "join".to_owned(),
            "--seed".to_owned(),
            cluster.seed().quic.to_string(),
            "--token".to_owned(),
            cluster.join_token.clone(),
        ];
        if voter {
            args.push("--voter".to_owned());
        }
        args.extend(flags.args());
        let began = Instant::now();
        let (status, _, stderr) = cluster.run_to_exit(&name, &args, REFUSED_WITHIN)?;
        eprintln!(
            "`shoal join` (voter: {voter}) with an expired token exited with {status} after \
             {:?}: {}",
            began.elapsed(),
            stderr.trim()
        );
        cluster.check(
            !status.success() && stderr.to_lowercase().contains("expired"),
            format!("`shoal join` with an expired token exited with {status}; stderr:\n{stderr}"),
        )?;
        cluster.check(
            !flags.data_dir.join("pki/node.pem").exists(),
            format!("the refused node {name} kept pki/node.pem"),
        )?;
    }
    // Long enough for a member that had slipped in to show up in gossip.
    std::thread::sleep(Duration::from_secs(2));
    let view = cluster.nodes_view(0)?;
    let names: Vec<&str> = view.nodes.iter().map(|m| m.name.as_str()).collect();
    cluster.check(
        names == [cluster.seed().name.as_str()],
        format!("the seed lists {names:?}"),
    )?;
    cluster.wait_formed(Duration::from_secs(30)).map(drop)
}

/// The digest of `app` in a `GET /v1/apps/NAME` answer, and in a `GET /v1/apps` answer.
fn shown_digest(shown: &Value) -> Option<&str> {
    shown["app"]["digest"].as_str()
}

fn listed_digest<'a>(list: &'a Value, app: &str) -> Option<&'a str> {
    list["apps"]
        .as_array()?
        .iter()
        .find(|listed| listed["name"].as_str() == Some(app))?["digest"]
        .as_str()
}

/// What `?consistent=true` reads on node `index` say of `app` right now, with no retry: an
/// error for each read that does not show `deployed`'s digest.
fn consistent_reads(cluster: &TestCluster, index: usize, deployed: &Deployed) -> Vec<String> {
    let (app, digest) = (&deployed.app, deployed.release.digest.as_str());
    let name = &cluster.nodes[index].name;
    let mut wrong = Vec::new();
    match cluster.api_get(index, &format!("/v1/apps/{app}?consistent=true")) {
        Ok(reply) if reply.status == 200 => {
            let seen = reply.json().ok();
            if seen.as_ref().and_then(shown_digest) != Some(digest) {
                wrong.push(format!("{name}: /v1/apps/{app} shows {}", reply.text()));
            }
        }
        Ok(reply) => wrong.push(format!(
            "{name}: /v1/apps/{app} answered {}: {}",
            reply.status,
            reply.text()
        )),
        Err(error) => wrong.push(format!("{name}: /v1/apps/{app}: {error:#}")),
    }
    match cluster.api_get(index, "/v1/apps?consistent=true") {
        Ok(reply) if reply.status == 200 => {
            let seen = reply.json().ok();
            if seen.as_ref().and_then(|list| listed_digest(list, app)) != Some(digest) {
                wrong.push(format!("{name}: /v1/apps lists {}", reply.text()));
            }
        }
        Ok(reply) => wrong.push(format!(
            "{name}: /v1/apps answered {}: {}",
            reply.status,
            reply.text()
        )),
        Err(error) => wrong.push(format!("{name}: /v1/apps: {error:#}")),
    }
    wrong
}

/// Linearizable reads: right after a deploy through a voter is acknowledged, with no polling,
/// `?consistent=true` reads of the app and of the app list on every other node (the worker
/// first, then the voters) show the acknowledged digest, for new apps and for a new release
/// of an existing one, whichever voter took the deploy.
#[test]
fn consistent_reads_show_an_acknowledged_deploy_at_once_on_every_node() -> Result<()> {
    let _one = ClusterLock::acquire();
    let cluster = TestCluster::start(3, 1)?;
    let worker = with_role(&cluster, Role::Worker)[0];
    let voters: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&index| cluster.nodes[index].role.is_voter())
        .collect();
    let mut wrong = Vec::new();
    let rounds = 9;
    for round in 0..rounds {
        let via = voters[round % voters.len()];
        // Rounds 0..3 make new apps; the later ones new releases of those.
        let app = format!("read{}", round % 3);
        let bundle = static_bundle(&app, &format!("round {round}"));
        let deployed = cluster
            .deploy(via, &bundle, Duration::from_secs(30))
            .map_err(|error| cluster.failure(format!("deploying {app}: {error:#}")))?;
        let readers = std::iter::once(worker).chain(voters.iter().copied().filter(|&v| v != via));
        for index in readers {
            wrong.extend(consistent_reads(&cluster, index, &deployed));
        }
        eprintln!(
            "round {round}: {app} v{} through {}; {} wrong reads so far",
            deployed.release.version,
            cluster.nodes[via].name,
            wrong.len()
        );
    }
    cluster.check(
        wrong.is_empty(),
        format!(
            "{} consistent reads right after an acknowledged deploy missed it:\n{}",
            wrong.len(),
            wrong.join("\n")
        ),
    )
}

/// `shoal nodes` for a person and for a program: the text output has a header naming the
/// NAME, ROLE, RAFT and LIVE columns and one line per node with its role, the leader's line
/// (only) saying LEADER; `shoal nodes --json` parses and lists what `GET /v1/nodes` lists.
#[test]
fn shoal_nodes_prints_a_table_and_json_that_match_the_api() -> Result<()> {
    let _one = ClusterLock::acquire();
    let mut cluster = TestCluster::start(3, 1)?;
    let leader = cluster.leader(ELECTED_WITHIN)?;
    let leader_name = cluster.nodes[leader].name.clone();
    let worker = with_role(&cluster, Role::Worker)[0];

    let (status, table, stderr) = shoal_cli(&cluster, worker, "nodes-text", &["nodes"])?;
    cluster.check(
        status.success(),
        format!("`shoal nodes` exited with {status}; stderr:\n{stderr}"),
    )?;
    eprintln!("`shoal nodes`:\n{table}");
    let header = table.lines().find(|line| !line.trim().is_empty());
    let columns: Vec<&str> = header.unwrap_or_default().split_whitespace().collect();
    cluster.check(
        ["NAME", "ROLE", "RAFT", "LIVE"]
            .iter()
            .all(|column| columns.contains(column)),
        format!("`shoal nodes` has no NAME, ROLE, RAFT, LIVE header:\n{table}"),
    )?;
    for node in &cluster.nodes {
        let lines: Vec<&str> = table
            .lines()
            .filter(|line| line.split_whitespace().any(|word| word == node.name))
            .collect();
        let words: Vec<String> = lines
            .first()
            .map(|line| line.split_whitespace().map(str::to_lowercase).collect())
            .unwrap_or_default();
        let role = if node.role.is_voter() {
            "voter"
        } else {
            "worker"
        };
        let is_leader = node.name == leader_name;
        cluster.check(
            lines.len() == 1
                && words.iter().any(|word| word == role)
                && lines[0].contains("LEADER") == is_leader,
            format!(
                "`shoal nodes` shows {} (a {role}, leader: {is_leader}) wrongly:\n{table}",
                node.name
            ),
        )?;
    }
    let leader_lines = table.lines().filter(|line| line.contains("LEADER")).count();
    cluster.check(
        leader_lines == 1,
        format!("{leader_lines} lines say LEADER:\n{table}"),
    )?;

    for via in [worker, leader] {
        let (status, json, stderr) = shoal_cli(&cluster, via, "nodes-json", &["nodes", "--json"])?;
        cluster.check(
            status.success(),
            format!("`shoal nodes --json` exited with {status}; stderr:\n{stderr}"),
        )?;
        let printed: Value = serde_json::from_str(&json)
            .map_err(|error| cluster.failure(format!("`shoal nodes --json`: {error}: {json}")))?;
        let printed = NodesView::parse(&printed)?;
        let answered = cluster.nodes_view(via)?;
        let names: BTreeSet<&str> = printed.nodes.iter().map(|m| m.name.as_str()).collect();
        let ours: BTreeSet<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        cluster.check(
            printed.membership() == answered.membership()
                && names == ours
                && printed.leader_name() == Some(leader_name.as_str()),
            format!(
                "`shoal nodes --json` through {} prints {printed:?}\nGET /v1/nodes answers \
                 {answered:?}",
                cluster.nodes[via].name
            ),
        )?;
    }
    Ok(())
}
