//! The data plane end to end: any node's ingress forwards a service app's requests over QUIC to
//! the worker placement chose. Real `shoal seed` / `shoal join` processes on loopback, one
//! cluster at a time; `--runtime process` unless a test needs Docker. Every answer names the
//! node whose worker ran it (`x-shoal-node`) and the node that received it (`x-shoal-ingress`).
//!
//! 1. load on a service spreads over several workers, sent to every ingress, with one body;
//! 2. 100 concurrent requests to a cold app from three ingress nodes start one container
//!    (Docker) and all succeed;
//! 3. the worker holding the only instance is SIGKILLed: requests fail fast or succeed, then
//!    the other worker serves, with no manual step;
//! 4. a WebSocket opened on a `--no-worker` voter echoes through the worker running the app.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_tests::cluster::{
    http, ClusterLock, ClusterOptions, Deployed, Reply, Role, Runtime, TestCluster,
};
use shoal_tests::{bundle_of, container_states, docker_or_skip, examples_dir, shoal_bin};

/// How long every node may take to show a deploy.
const SHOWN_WITHIN: Duration = Duration::from_secs(15);
/// How long a request may wait for an instance to start (a debug build on 2 busy cores).
const COLD_WITHIN: Duration = Duration::from_secs(60);
/// How long a request to a dead worker may take to fail (fail fast, not hang).
const FAIL_FAST: Duration = Duration::from_secs(5);
/// How long after a worker's kill the other worker must serve.
const SERVED_AGAIN_WITHIN: Duration = Duration::from_secs(15);
/// The client's own timeout in the failover test: past [`FAIL_FAST`], so a hang is measured.
const HANG_LIMIT: Duration = Duration::from_secs(10);
/// The body every instance of the test service answers with.
const BODY: &str = "the same answer from every instance\n";
/// The test service: [`BODY`] after `?delay_ms=N`, with headers that name the instance (pid
/// and a random id) and where it runs (its working directory: the release, under the data dir
/// of the node that runs it with `--runtime process`).
const SERVER_JS: &str = r#"const http = require("http");
const crypto = require("crypto");
const instance = `${process.pid}-${crypto.randomBytes(4).toString("hex")}`;
const server = http.createServer((request, response) => {
  const url = new URL(request.url, "http://localhost");
  const delay = Number(url.searchParams.get("delay_ms") || 0);
  setTimeout(() => {
    response.writeHead(200, {
      "content-type": "text/plain",
      "x-app-instance": instance,
      "x-app-dir": process.cwd(),
    });
    response.end(BODY);
  }, delay);
});
server.listen(Number(process.env.PORT || 3000));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
"#;

/// A `tar.zst` bundle of the test service `name` with `scale` as its `[scale]` table's lines.
fn service_bundle(name: &str, scale: &str) -> Vec<u8> {
    let manifest = format!(
        "name = \"{name}\"\nkind = \"service\"\ncommand = [\"node\", \"server.js\"]\n\
         port = 3000\n[scale]\n{scale}\n"
    );
    let server = SERVER_JS.replace("BODY", &format!("{BODY:?}"));
    bundle_of(&[
        ("shoal.toml", manifest.as_bytes()),
        ("server.js", server.as_bytes()),
    ])
}

/// Deploys the test service `name` through node `via` and waits until every node lists it.
fn deploy_service(
    cluster: &mut TestCluster,
    via: usize,
    name: &str,
    scale: &str,
) -> Result<Deployed> {
    let deployed = cluster
        .deploy(via, &service_bundle(name, scale), Duration::from_secs(30))
        .map_err(|error| cluster.failure(format!("deploying {name}: {error:#}")))?;
    let expected = BTreeMap::from([(deployed.app.clone(), deployed.release.clone())]);
    cluster.wait_apps_everywhere(&expected, SHOWN_WITHIN)?;
    Ok(deployed)
}

/// `--no-worker` for the seed and the voters: they route and vote, the workers run the apps.
fn no_worker_voters(_index: usize, role: Role) -> Vec<String> {
    match role {
        Role::Seed | Role::Voter => vec!["--no-worker".to_owned()],
        Role::Worker => Vec::new(),
    }
}

/// GETs `path` through node `via` until it answers 200 (the first request waits for a cold
/// start); returns that answer.
fn get_until_ok(cluster: &TestCluster, via: usize, path: &str) -> Result<Reply> {
    let what = format!("{path} through {} to answer 200", cluster.nodes[via].name);
    cluster.wait_for(&what, COLD_WITHIN, || {
        match http::get(&cluster.nodes[via].url(path), COLD_WITHIN) {
            Ok(reply) if reply.status == 200 => Ok(reply),
            Ok(reply) => Err(format!("{} {}", reply.status, reply.text())),
            Err(error) => Err(format!("{error:#}")),
        }
    })
}

/// One answer to a request sent to node `ingress`.
struct Answer {
    ingress: usize,
    took: Duration,
    reply: Result<Reply>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.reply.as_ref().ok()?.header(name)
    }
}

/// `count` GETs of `path` sent at once, to the nodes in `ingresses` in turn.
fn send_at_once(
    cluster: &TestCluster,
    ingresses: &[usize],
    path: &str,
    count: usize,
) -> Vec<Answer> {
    let targets: Vec<usize> = (0..count).map(|i| ingresses[i % ingresses.len()]).collect();
    let urls: Vec<String> = targets
        .iter()
        .map(|&index| cluster.nodes[index].url(path))
        .collect();
    http::get_all_at_once(&urls, COLD_WITHIN)
        .into_iter()
        .zip(targets)
        .map(|((took, reply), ingress)| Answer {
            ingress,
            took,
            reply,
        })
        .collect()
}

/// How many answers each (ingress, status, serving node) got, for messages.
fn tally(cluster: &TestCluster, answers: &[Answer]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for answer in answers {
        let outcome = match &answer.reply {
            Ok(reply) => format!(
                "{} served by {}",
                reply.status,
                reply.header("x-shoal-node").unwrap_or("(no x-shoal-node)")
            ),
            Err(error) => format!("error {error:#}"),
        };
        let key = format!("via {}: {outcome}", cluster.nodes[answer.ingress].name);
        *counts.entry(key).or_default() += 1;
    }
    let lines: Vec<String> = counts
        .iter()
        .map(|(key, count)| format!("  {count:>3} x {key}"))
        .collect();
    lines.join("\n")
}

/// Every answer is a 200 with [`BODY`], received by the node it was sent to, and served by a
/// node of the cluster.
fn check_answered_ok(cluster: &TestCluster, answers: &[Answer]) -> Result<()> {
    let names: BTreeSet<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    for answer in answers {
        let sent_to = &cluster.nodes[answer.ingress].name;
        let problem = match &answer.reply {
            Err(error) => Some(format!("failed after {:?}: {error:#}", answer.took)),
            Ok(reply) if reply.status != 200 || reply.body != BODY.as_bytes() => {
                Some(format!("answered {}: {:?}", reply.status, reply.text()))
            }
            Ok(reply) if reply.header("x-shoal-ingress") != Some(sent_to.as_str()) => Some(
                format!("x-shoal-ingress is {:?}", reply.header("x-shoal-ingress")),
            ),
            Ok(reply) => match reply.header("x-shoal-node") {
                Some(node) if names.contains(node) => None,
                other => Some(format!("x-shoal-node is {other:?}")),
            },
        };
        if let Some(problem) = problem {
            return Err(cluster.failure(format!(
                "a request sent to {sent_to} {problem}; all answers:\n{}",
                tally(cluster, answers)
            )));
        }
    }
    Ok(())
}

#[test]
fn load_on_a_service_spreads_over_workers_and_every_ingress_answers_the_same() -> Result<()> {
    let _one = ClusterLock::acquire();
    let mut cluster = TestCluster::start_with(ClusterOptions::new(3, 2))?;
    let max_holders = 3;
    let scale = format!(
        "max = {max_holders}\nconcurrency_target = 2\npause_after = \"5m\"\nidle_timeout = \"10m\""
    );
    deploy_service(&mut cluster, 1, "spread", &scale)?;
    get_until_ok(&cluster, 0, "/apps/spread/")?;

    // Each request holds its instance for 300 ms, so 40 at once are far over the target of 2
    // in flight per instance: placement has to add holders.
    let everyone: Vec<usize> = (0..cluster.nodes.len()).collect();
    let mut answers = Vec::new();
    for _wave in 0..3 {
        answers.extend(send_at_once(
            &cluster,
            &everyone,
            "/apps/spread/?delay_ms=300",
            40,
        ));
    }
    let instances: BTreeSet<&str> = answers
        .iter()
        .filter_map(|answer| answer.header("x-app-instance"))
        .collect();
    eprintln!(
        "answers, from {} instances:\n{}",
        instances.len(),
        tally(&cluster, &answers)
    );
    check_answered_ok(&cluster, &answers)?;

    // `x-shoal-node` tells the truth: the instance's working directory is that node's release.
    for answer in &answers {
        let node = answer.header("x-shoal-node").context("checked above")?;
        let index = cluster.index_of(node).context("checked above")?;
        let dir = answer.header("x-app-dir").unwrap_or("(no x-app-dir)");
        let data_dir = &cluster.nodes[index].data_dir;
        let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.clone());
        cluster.check(
            std::path::Path::new(dir).starts_with(&data_dir),
            format!("an answer says x-shoal-node: {node}, but its instance runs in {dir}"),
        )?;
    }
    let holders: BTreeSet<&str> = answers
        .iter()
        .filter_map(|answer| answer.header("x-shoal-node"))
        .collect();
    cluster.check(
        holders.len() >= 2 && holders.len() <= max_holders,
        format!(
            "the answers name {} serving nodes {holders:?}; want 2 to {max_holders} (scale.max)",
            holders.len()
        ),
    )?;
    // At most 3 holders among 5 ingress nodes: some requests must have crossed to another node.
    let forwarded = answers
        .iter()
        .filter(|answer| answer.header("x-shoal-node") != answer.header("x-shoal-ingress"))
        .count();
    cluster.check(
        forwarded > 0,
        format!(
            "no answer was served by another node than its ingress:\n{}",
            tally(&cluster, &answers)
        ),
    )
}

/// Builds the `shoal-runtime` image once for the whole machine (`shoal runtime build`) if no
/// image of it exists, so that the cold start under test is a container start, not a build.
fn ensure_runtime_image() -> Result<()> {
    let images = std::process::Command::new("docker")
        .args(["images", "-q", "shoal-runtime"])
        .output()
        .context("run docker images")?;
    if !String::from_utf8_lossy(&images.stdout).trim().is_empty() {
        return Ok(());
    }
    let built = std::process::Command::new(shoal_bin())
        .args(["runtime", "build"])
        .output()
        .context("run shoal runtime build")?;
    anyhow::ensure!(
        built.status.success(),
        "`shoal runtime build` failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    Ok(())
}

#[test]
fn a_hundred_concurrent_requests_to_a_cold_app_from_three_ingress_nodes_start_one_container(
) -> Result<()> {
    let test =
        "a_hundred_concurrent_requests_to_a_cold_app_from_three_ingress_nodes_start_one_container";
    if !docker_or_skip(test) {
        return Ok(());
    }
    let _one = ClusterLock::acquire();
    ensure_runtime_image()?;
    let options = ClusterOptions::new(3, 0).runtime(Runtime::Docker);
    let mut cluster = TestCluster::start_with(options)?;
    deploy_service(&mut cluster, 0, "crowd", "pause_after = \"5m\"")?;

    let answers = send_at_once(&cluster, &[0, 1, 2], "/apps/crowd/", 100);
    eprintln!("answers:\n{}", tally(&cluster, &answers));
    check_answered_ok(&cluster, &answers)?;
    let holders: BTreeSet<&str> = answers
        .iter()
        .filter_map(|answer| answer.header("x-shoal-node"))
        .collect();
    let [holder] = holders.iter().copied().collect::<Vec<_>>()[..] else {
        return Err(cluster.failure(format!(
            "scale.max is 1, yet the answers name the serving nodes {holders:?}"
        )));
    };
    let waited_across_a_hop = answers.iter().any(|answer| {
        answer.header("x-shoal-node") != answer.header("x-shoal-ingress")
            && answer.header("x-shoal-cold-start-ms").is_some()
    });
    cluster.check(
        waited_across_a_hop,
        "no forwarded answer carries x-shoal-cold-start-ms, though the app was cold",
    )?;

    // Containers made a moment late would still be extra ones.
    std::thread::sleep(Duration::from_secs(2));
    let states: BTreeMap<&str, Vec<String>> = cluster
        .nodes
        .iter()
        .map(|node| (node.name.as_str(), container_states(&node.name, "crowd")))
        .collect();
    let started: Vec<(&str, &str)> = states
        .iter()
        .flat_map(|(node, states)| states.iter().map(move |state| (*node, state.as_str())))
        .filter(|(_, state)| *state != "created")
        .collect();
    cluster.check(
        started == [(holder, "running")],
        format!("want one running container, on {holder}; containers by node: {states:?}"),
    )?;
    let total: usize = states.values().map(Vec::len).sum();
    cluster.check(
        total == 1,
        format!("{total} containers of the app exist, want 1; by node: {states:?}"),
    )
}

/// One request of the failover test's load.
#[derive(Clone, Debug)]
struct Sample {
    ingress: String,
    started: Instant,
    took: Duration,
    /// The status and `x-shoal-node`, or the transport error.
    outcome: Result<(u16, Option<String>), String>,
}

impl Sample {
    fn served_by(&self, node: &str) -> bool {
        matches!(&self.outcome, Ok((200, Some(by))) if by == node)
    }

    fn ended(&self) -> Instant {
        self.started + self.took
    }
}

/// Threads that GET `path` back to back through the given ingress addresses in turn until
/// stopped, each request with [`HANG_LIMIT`] as its timeout.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(threads: usize, ingresses: Vec<(String, String)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|thread| {
                let (stop, samples, ingresses) = (stop.clone(), samples.clone(), ingresses.clone());
                std::thread::spawn(move || {
                    let mut turn = thread;
                    while !stop.load(Ordering::Relaxed) {
                        let (name, url) = &ingresses[turn % ingresses.len()];
                        turn += 1;
                        let started = Instant::now();
                        let outcome = http::get(url, HANG_LIMIT)
                            .map(|reply| {
                                let node = reply.header("x-shoal-node").map(str::to_owned);
                                (reply.status, node)
                            })
                            .map_err(|error| format!("{error:#}"));
                        let sample = Sample {
                            ingress: name.clone(),
                            started,
                            took: started.elapsed(),
                            outcome,
                        };
                        samples.lock().expect("samples lock").push(sample);
                    }
                })
            })
            .collect();
        Self {
            stop,
            samples,
            threads,
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples lock").clone()
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a load thread panicked");
        }
        let samples = self.samples.lock().expect("samples lock");
        samples.clone()
    }
}

/// The samples, one a line, timed from the kill.
fn timeline(samples: &[Sample], killed_at: Instant) -> String {
    let at = |instant: Instant| -> String {
        match instant.checked_duration_since(killed_at) {
            Some(after) => format!("+{}ms", after.as_millis()),
            None => format!("-{}ms", (killed_at - instant).as_millis()),
        }
    };
    let lines: Vec<String> = samples
        .iter()
        .map(|sample| {
            let outcome = match &sample.outcome {
                Ok((status, node)) => format!("{status} from {node:?}"),
                Err(error) => format!("error: {error}"),
            };
            format!(
                "  {} took {}ms via {}: {outcome}",
                at(sample.started),
                sample.took.as_millis(),
                sample.ingress
            )
        })
        .collect();
    lines.join("\n")
}

/// What is wrong with one request around the kill of `holder`, if anything: it answered
/// within [`FAIL_FAST`] with 200, 502 or 503; what ended before the kill was served by
/// `holder`; what `holder` served began before the kill; nothing else served.
fn sample_problem(
    sample: &Sample,
    killed_at: Instant,
    holder: &str,
    survivor: &str,
) -> Option<String> {
    let served_by = match &sample.outcome {
        _ if sample.took > FAIL_FAST => return Some(format!("took over {FAIL_FAST:?}")),
        Err(_) => return Some("got no answer".to_owned()),
        Ok((502 | 503, _)) => None,
        Ok((200, node)) => node.as_deref(),
        Ok((status, _)) => return Some(format!("answered {status}")),
    };
    if sample.ended() < killed_at && !sample.served_by(holder) {
        return Some(format!("ended before the kill, not served by {holder}"));
    }
    if sample.served_by(holder) && sample.started > killed_at {
        return Some(format!("began after the kill and was served by {holder}"));
    }
    match served_by {
        Some(node) if node != holder && node != survivor => {
            Some(format!("was served by {node}, not a worker"))
        }
        Some(_) => None,
        None if sample
            .outcome
            .as_ref()
            .is_ok_and(|(status, _)| *status == 200) =>
        {
            Some("has no x-shoal-node".to_owned())
        }
        None => None,
    }
}

/// What is wrong with the load around the kill of `holder`, if anything: a request with a
/// [`sample_problem`]; `survivor` serving no request ended within [`SERVED_AGAIN_WITHIN`] of
/// the kill; a request sent after `survivor` first served that it did not serve.
fn failover_problem(
    samples: &[Sample],
    killed_at: Instant,
    holder: &str,
    survivor: &str,
) -> Option<String> {
    for sample in samples {
        if let Some(problem) = sample_problem(sample, killed_at, holder, survivor) {
            return Some(format!(
                "a request sent via {} {problem}: {sample:?}",
                sample.ingress
            ));
        }
    }
    let Some(first_again) = samples
        .iter()
        .filter(|sample| sample.served_by(survivor) && sample.ended() > killed_at)
        .map(Sample::ended)
        .min()
    else {
        return Some(format!("{survivor} never served after the kill"));
    };
    if first_again - killed_at > SERVED_AGAIN_WITHIN {
        return Some(format!(
            "{survivor} first served {:?} after the kill, over {SERVED_AGAIN_WITHIN:?}",
            first_again - killed_at
        ));
    }
    let after: Vec<&Sample> = samples
        .iter()
        .filter(|sample| sample.started > first_again)
        .collect();
    if after.len() < 10 {
        return Some(format!(
            "only {} requests were sent after {survivor} first served",
            after.len()
        ));
    }
    after
        .iter()
        .find(|sample| !sample.served_by(survivor))
        .map(|sample| {
            format!("a request sent after {survivor} first served was not served by it: {sample:?}")
        })
}

#[test]
fn when_the_worker_holding_the_only_instance_dies_the_other_worker_takes_over() -> Result<()> {
    let _one = ClusterLock::acquire();
    let options = ClusterOptions::new(3, 2).extra_flags(no_worker_voters);
    let mut cluster = TestCluster::start_with(options)?;
    deploy_service(&mut cluster, 0, "failover", "pause_after = \"5m\"")?;
    let voters: Vec<usize> = (0..3).collect();
    let warm = get_until_ok(&cluster, 0, "/apps/failover/")?;
    let holder = warm
        .header("x-shoal-node")
        .context("the warm-up answer has no x-shoal-node")?
        .to_owned();
    let holder_index = cluster.index_of(&holder).context("an unknown holder")?;
    cluster.check(
        cluster.nodes[holder_index].role == Role::Worker,
        format!("{holder} runs the app, but voters run with --no-worker"),
    )?;
    let survivor_index = (3..5)
        .find(|&index| index != holder_index)
        .context("2 workers")?;
    let survivor = cluster.nodes[survivor_index].name.clone();
    eprintln!("{holder} holds the instance; {survivor} is the other worker");

    let ingresses = voters
        .iter()
        .map(|&index| {
            let node = &cluster.nodes[index];
            (node.name.clone(), node.url("/apps/failover/?delay_ms=200"))
        })
        .collect();
    let load = Load::start(2, ingresses);
    std::thread::sleep(Duration::from_secs(1));
    cluster.kill(holder_index);
    let killed_at = Instant::now();
    // Wait for the survivor's first answer (or the bound), then keep the load on a while.
    while killed_at.elapsed() < SERVED_AGAIN_WITHIN + FAIL_FAST
        && !load
            .samples()
            .iter()
            .any(|sample| sample.served_by(&survivor) && sample.ended() > killed_at)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    let samples = load.finish();
    let timeline = timeline(&samples, killed_at);
    match failover_problem(&samples, killed_at, &holder, &survivor) {
        None => {
            eprintln!("requests around the kill of {holder}:\n{timeline}");
            Ok(())
        }
        Some(problem) => Err(cluster.failure(format!(
            "{problem}\nrequests timed from the kill of {holder}:\n{timeline}"
        ))),
    }
}

/// The head of an HTTP answer read from `stream`: the status line and the lowercased headers.
fn read_head(stream: &mut TcpStream) -> Result<(String, BTreeMap<String, String>)> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .with_context(|| format!("reading the head after {:?}", head))?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

/// A masked client frame (FIN set) with `opcode` and `payload` (under 64 KiB).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x81];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// One server frame: its first byte (FIN and opcode) and its payload; servers do not mask.
fn read_server_frame(stream: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
    let mut start = [0u8; 2];
    stream.read_exact(&mut start).context("reading a frame")?;
    anyhow::ensure!(start[1] & 0x80 == 0, "the server masked its frame");
    let len = match start[1] & 0x7f {
        126 => {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            usize::from(u16::from_be_bytes(len))
        }
        127 => anyhow::bail!("an echo over 64 KiB"),
        len => usize::from(len),
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((start[0], payload))
}

#[test]
fn a_websocket_opened_on_a_routing_voter_echoes_through_the_worker_running_the_app() -> Result<()> {
    let _one = ClusterLock::acquire();
    let options = ClusterOptions::new(1, 1).extra_flags(no_worker_voters);
    let cluster = TestCluster::start_with(options)?;
    let (voter, worker) = (0, 1);
    let (voter_name, worker_name) = (
        cluster.nodes[voter].name.clone(),
        cluster.nodes[worker].name.clone(),
    );
    let example = examples_dir().join("api");
    let output = cluster.cli(voter, &["deploy", example.to_str().context("utf-8")?]);
    cluster.check(
        output.status.success(),
        format!(
            "`shoal deploy` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    )?;
    cluster.wait_for("every node to list the api app", SHOWN_WITHIN, || {
        for index in [voter, worker] {
            let apps = cluster
                .apps_on(index)
                .map_err(|error| format!("{error:#}"))?;
            if !apps.contains_key("api") {
                return Err(format!("{} lists {apps:?}", cluster.nodes[index].name));
            }
        }
        Ok(())
    })?;
    let hello = get_until_ok(&cluster, voter, "/apps/api/hello?name=ws")?;
    let routed = (
        hello.header("x-shoal-ingress"),
        hello.header("x-shoal-node"),
    );
    cluster.check(
        routed == (Some(voter_name.as_str()), Some(worker_name.as_str())),
        format!("GET /hello through {voter_name} answered with (ingress, node) {routed:?}"),
    )?;

    let mut stream = TcpStream::connect(cluster.nodes[voter].http)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(
        b"GET /apps/api/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )?;
    let (status, headers) = read_head(&mut stream)
        .map_err(|error| cluster.failure(format!("the handshake: {error:#}")))?;
    cluster.check(
        status.starts_with("HTTP/1.1 101")
            && headers.get("sec-websocket-accept").map(String::as_str)
                == Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            && headers.get("x-shoal-ingress") == Some(&voter_name)
            && headers.get("x-shoal-node") == Some(&worker_name),
        format!(
            "the handshake through {voter_name} (app on {worker_name}) answered {status} \
             {headers:?}"
        ),
    )?;

    let long = "0123456789".repeat(30);
    for (pause, message) in [(0, "hello shoal"), (0, long.as_str()), (1500, "still open")] {
        std::thread::sleep(Duration::from_millis(pause));
        stream.write_all(&client_frame(0x1, message.as_bytes()))?;
        let echo = read_server_frame(&mut stream);
        let ok = matches!(&echo, Ok((0x81, payload)) if payload == message.as_bytes());
        cluster.check(
            ok,
            format!(
                "sent a {}-byte text frame, got back {echo:?}",
                message.len()
            ),
        )?;
    }
    stream.write_all(&client_frame(0x8, &[]))?;
    let closed = read_server_frame(&mut stream);
    cluster.check(
        matches!(closed, Ok((0x88, _))),
        format!("sent a close frame, got back {closed:?}"),
    )?;

    // The instance is the worker's: the voter runs none.
    let running = |index: usize| -> Result<usize> {
        let shown = cluster.app_on(index, "api")?.context("api is listed")?;
        let instances = shown["instances"].as_array().cloned().unwrap_or_default();
        Ok(instances
            .iter()
            .filter(|instance| instance["state"] == "running")
            .count())
    };
    let (on_voter, on_worker) = (running(voter)?, running(worker)?);
    cluster.check(
        on_voter == 0 && on_worker == 1,
        format!(
            "{on_voter} instances run on {voter_name} (--no-worker), {on_worker} on {worker_name}"
        ),
    )
}
