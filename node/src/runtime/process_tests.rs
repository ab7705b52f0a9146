//! The process runtime against real child processes (Node.js on the `PATH`; no Docker).

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::*;

const NODE: &str = "node-a";

const SERVER_JS: &str = r#"
const http = require("http");
console.log("listening on " + process.env.PORT);
console.error("pid " + process.pid);
http.createServer((req, res) => {
  console.log("served " + req.url);
  res.end("ok\n");
}).listen(Number(process.env.PORT));
"#;

const EXIT_JS: &str = r#"
console.log("working");
console.error("oops");
process.exit(3);
"#;

const SLEEP_JS: &str = r#"
console.log("pid " + process.pid);
setInterval(() => {}, 1000);
"#;

const STUBBORN_JS: &str = r#"
process.on("SIGTERM", () => console.log("ignoring SIGTERM"));
console.log("pid " + process.pid);
setInterval(() => {}, 1000);
"#;

/// A parent that dies on SIGTERM and a child that ignores it, in the same group.
const FAMILY_JS: &str = r#"
const { spawn } = require("child_process");
const child = spawn(process.execPath,
  ["-e", "process.on('SIGTERM', () => {}); setInterval(() => {}, 1000)"], { stdio: "ignore" });
child.on("spawn", () => console.log("pids " + process.pid + " " + child.pid));
setInterval(() => {}, 1000);
"#;

const ENV_JS: &str = r#"
console.log(JSON.stringify({
  port: process.env.PORT || null,
  greeting: process.env.GREETING || null,
  home: process.env.HOME || null,
  cargo: process.env.CARGO_PKG_NAME || null,
  cwd: process.cwd(),
}));
"#;

const CHATTY_JS: &str = r#"
for (let i = 0; i < 3000; i++) console.log("line " + i);
"#;

/// A release directory holding every script above.
fn release() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, script) in [
        ("server.js", SERVER_JS),
        ("exit.js", EXIT_JS),
        ("sleep.js", SLEEP_JS),
        ("stubborn.js", STUBBORN_JS),
        ("family.js", FAMILY_JS),
        ("env.js", ENV_JS),
        ("chatty.js", CHATTY_JS),
    ] {
        fs::write(dir.path().join(name), script).expect("write script");
    }
    dir
}

fn spec(dir: &Path, script: &str, port: Option<u16>) -> InstanceSpec {
    InstanceSpec {
        app: "demo".to_string(),
        release: 7,
        digest: "sha256:test".to_string(),
        node: NODE.to_string(),
        release_dir: dir.to_path_buf(),
        command: vec!["node".to_string(), script.to_string()],
        port,
        env: BTreeMap::new(),
        memory_bytes: 256 << 20,
        cpus: 1.0,
        pids: 128,
        tmp_bytes: 16 << 20,
    }
}

/// One HTTP/1.1 GET; the whole response, or why there was none within `limit`.
async fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// Retries [`http_get`] until the app answers (it needs a moment to listen).
async fn wait_for_http(addr: SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get(addr, path, Duration::from_secs(2)).await {
            Ok(response) => return response,
            Err(error) if Instant::now() > deadline => panic!("{addr} never answered: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The next item of a followed log, within 5 s.
async fn next_line(follow: &mut BoxStream<'static, Result<Bytes, RuntimeError>>) -> Option<Bytes> {
    tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await
        .expect("a log item in time")
        .map(|line| line.expect("log line"))
}

async fn all_logs(runtime: &ProcessRuntime, id: &str, tail: usize) -> String {
    let chunks: Vec<Bytes> = runtime
        .logs(id, tail, false)
        .await
        .expect("logs")
        .map(|chunk| chunk.expect("log chunk"))
        .collect()
        .await;
    chunks
        .iter()
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect()
}

/// Waits for a line starting with `prefix` in the instance's output; returns the rest.
async fn wait_for_line(runtime: &ProcessRuntime, id: &str, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = all_logs(runtime, id, LOG_LINES).await;
        if let Some(line) = output.lines().find_map(|line| line.strip_prefix(prefix)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no `{prefix}` line in: {output}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `pid` is a live process. A zombie counts as gone: it answers `kill -0`, but only
/// waits for a parent (here perhaps a PID 1 that never reaps) to collect it.
fn process_alive(pid: u32) -> bool {
    let answers = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    });
    answers && !zombie
}

async fn assert_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_exited(info: &InstanceInfo) -> Option<i64> {
    match info.state {
        InstanceState::Exited {
            exit_code,
            oom_killed: false,
        } => exit_code,
        ref other => panic!("expected an exit, got {other:?}"),
    }
}

#[tokio::test]
async fn a_service_starts_pauses_stops_and_is_removed() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let mut service = spec(dir.path(), "server.js", Some(8080));
    // The runtime's PORT wins over the app's own.
    service.env.insert("PORT".to_string(), "1".to_string());
    let id = runtime.create(&service).await.expect("create");
    assert!(id.starts_with("proc-"), "{id}");
    assert_eq!(
        runtime.inspect(&id).await.unwrap().state,
        InstanceState::Created
    );

    let addr = runtime
        .start(&id)
        .await
        .expect("start")
        .expect("an address");
    assert!(addr.ip().is_loopback(), "{addr}");
    assert!(wait_for_http(addr, "/").await.ends_with("ok\n"));
    let info = runtime.inspect(&id).await.unwrap();
    assert_eq!(
        (info.state, info.addr),
        (InstanceState::Running, Some(addr))
    );
    assert_eq!((info.app.as_str(), info.release), ("demo", 7));
    assert_eq!(
        runtime.start(&id).await.unwrap(),
        Some(addr),
        "start is idempotent"
    );

    runtime.pause(&id).await.expect("pause");
    runtime.pause(&id).await.expect("pause again");
    assert_eq!(
        runtime.inspect(&id).await.unwrap().state,
        InstanceState::Paused
    );
    let frozen = http_get(addr, "/", Duration::from_millis(300)).await;
    assert!(frozen.is_err(), "a paused app answered: {frozen:?}");
    runtime.unpause(&id).await.expect("unpause");
    assert_eq!(
        runtime.inspect(&id).await.unwrap().state,
        InstanceState::Running
    );
    assert!(http_get(addr, "/", Duration::from_secs(5))
        .await
        .unwrap()
        .ends_with("ok\n"));

    runtime.pause(&id).await.expect("pause before stop");
    runtime
        .stop(&id, Duration::from_secs(5))
        .await
        .expect("stop");
    let stopped = runtime.inspect(&id).await.unwrap();
    assert_eq!(assert_exited(&stopped), Some(128 + 15), "SIGTERM ended it");
    assert_eq!(stopped.addr, None);
    runtime
        .stop(&id, Duration::from_secs(5))
        .await
        .expect("stop again");
    assert!(
        runtime.unpause(&id).await.is_err(),
        "an exited instance cannot thaw"
    );

    let again = runtime
        .start(&id)
        .await
        .expect("restart")
        .expect("an address");
    assert!(wait_for_http(again, "/").await.ends_with("ok\n"));
    runtime.remove(&id).await.expect("remove");
    assert!(matches!(
        runtime.inspect(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
    runtime.remove(&id).await.expect("remove is idempotent");
}

#[tokio::test]
async fn list_shows_this_nodes_instances_in_creation_order() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let first = runtime
        .create(&spec(dir.path(), "sleep.js", None))
        .await
        .unwrap();
    let second = runtime
        .create(&spec(dir.path(), "sleep.js", None))
        .await
        .unwrap();
    runtime.start(&second).await.unwrap();
    let listed = runtime.list(NODE).await.unwrap();
    let summary: Vec<_> = listed
        .iter()
        .map(|info| (info.id.clone(), info.node.clone(), info.state.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (first.clone(), NODE.to_string(), InstanceState::Created),
            (second.clone(), NODE.to_string(), InstanceState::Running),
        ]
    );
    assert!(runtime.list("node-b").await.unwrap().is_empty());
    runtime.remove(&second).await.unwrap();
    runtime.remove(&first).await.unwrap();
    assert!(runtime.list(NODE).await.unwrap().is_empty());
}

#[tokio::test]
async fn logs_hold_what_the_app_printed_and_follow_new_lines() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let id = runtime
        .create(&spec(dir.path(), "server.js", Some(80)))
        .await
        .unwrap();
    let addr = runtime.start(&id).await.unwrap().unwrap();
    // Stdout and stderr are read apart, so their relative order is only known across a wait.
    let pid: u32 = wait_for_line(&runtime, &id, "pid ").await.parse().unwrap();
    wait_for_http(addr, "/first").await;
    // The app logs after it answers, and the log reader runs on its own: the response can
    // come back before the line is collected.
    wait_for_line(&runtime, &id, "served /first").await;
    let output = all_logs(&runtime, &id, 100).await;
    for line in [
        format!("listening on {}", addr.port()),
        format!("pid {pid}"),
    ] {
        assert!(
            output.lines().any(|seen| seen == line),
            "no `{line}` in: {output}"
        );
    }
    assert_eq!(all_logs(&runtime, &id, 1).await, "served /first\n");
    assert_eq!(all_logs(&runtime, &id, 0).await, "");

    let mut follow = runtime.logs(&id, 1, true).await.unwrap();
    assert_eq!(
        next_line(&mut follow).await,
        Some(Bytes::from("served /first\n"))
    );
    wait_for_http(addr, "/second").await;
    // On a loaded machine a request can time out after the app served it, and be sent again:
    // a repeated first line may come before the second.
    loop {
        match next_line(&mut follow).await {
            Some(line) if line == "served /first\n" => continue,
            line => {
                assert_eq!(line, Some(Bytes::from("served /second\n")));
                break;
            }
        }
    }
    runtime.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        next_line(&mut follow).await,
        None,
        "the feed ends with the process"
    );
    assert_gone(pid).await;
    runtime.remove(&id).await.unwrap();
}

#[tokio::test]
async fn the_log_ring_keeps_the_last_lines() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let id = runtime
        .create(&spec(dir.path(), "chatty.js", None))
        .await
        .unwrap();
    runtime.start(&id).await.unwrap();
    wait_for_line(&runtime, &id, "line 2999").await;
    let output = all_logs(&runtime, &id, usize::MAX).await;
    let lines: Vec<_> = output.lines().collect();
    assert_eq!(lines.len(), LOG_LINES);
    assert_eq!((lines[0], lines[LOG_LINES - 1]), ("line 2000", "line 2999"));
    runtime.remove(&id).await.unwrap();
}

#[tokio::test]
async fn a_job_reports_its_exit_code_and_output() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let job = spec(dir.path(), "exit.js", None);
    let outcome = runtime
        .run_to_completion(&job, Duration::from_secs(30))
        .await
        .expect("run");
    assert_eq!(outcome.exit_code, Some(3));
    assert!(!outcome.timed_out && !outcome.oom_killed);
    assert!(
        outcome.duration < Duration::from_secs(30),
        "{:?}",
        outcome.duration
    );
    for line in ["working", "oops"] {
        assert!(
            outcome.log_tail.lines().any(|seen| seen == line),
            "{:?}",
            outcome.log_tail
        );
    }
    assert!(
        runtime.list(NODE).await.unwrap().is_empty(),
        "the job was removed"
    );
}

#[tokio::test]
async fn a_job_past_its_time_is_killed() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let job = spec(dir.path(), "sleep.js", None);
    let outcome = runtime
        .run_to_completion(&job, Duration::from_millis(700))
        .await
        .expect("run");
    assert!(outcome.timed_out);
    assert_eq!(outcome.exit_code, None);
    assert!(
        outcome.duration >= Duration::from_millis(700),
        "{:?}",
        outcome.duration
    );
    assert!(
        outcome.duration < Duration::from_secs(10),
        "{:?}",
        outcome.duration
    );
    let pid: u32 = outcome
        .log_tail
        .trim()
        .strip_prefix("pid ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", outcome.log_tail));
    assert_gone(pid).await;
    assert!(runtime.list(NODE).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_job_long_output_is_cut_to_a_few_kib_at_a_line() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let job = spec(dir.path(), "chatty.js", None);
    let outcome = runtime
        .run_to_completion(&job, Duration::from_secs(30))
        .await
        .expect("run");
    assert_eq!(outcome.exit_code, Some(0));
    assert!(
        outcome.log_tail.len() <= LOG_TAIL_BYTES,
        "{}",
        outcome.log_tail.len()
    );
    assert!(
        outcome.log_tail.len() > LOG_TAIL_BYTES / 2,
        "{}",
        outcome.log_tail.len()
    );
    assert!(
        outcome.log_tail.starts_with("line "),
        "{:?}",
        &outcome.log_tail[..20]
    );
    assert!(outcome.log_tail.ends_with("line 2999\n"));
}

#[tokio::test]
async fn the_environment_is_clean_and_runs_in_the_release() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let mut job = spec(dir.path(), "env.js", None);
    job.env.insert("GREETING".to_string(), "hello".to_string());
    // Without a port the runtime does not own PORT, as in the Docker runtime.
    job.env.insert("PORT".to_string(), "1234".to_string());
    let outcome = runtime
        .run_to_completion(&job, Duration::from_secs(30))
        .await
        .expect("run");
    assert_eq!(outcome.exit_code, Some(0), "{}", outcome.log_tail);
    let seen: Value = serde_json::from_str(outcome.log_tail.trim()).expect("json");
    assert_eq!(seen["greeting"], "hello");
    assert_eq!(seen["port"], "1234");
    assert_eq!(seen["cargo"], Value::Null, "the node's environment leaked");
    assert_eq!(seen["home"], std::env::temp_dir().to_str().unwrap());
    let cwd = fs::canonicalize(dir.path()).unwrap();
    assert_eq!(seen["cwd"], cwd.to_str().unwrap());
}

#[tokio::test]
async fn a_missing_command_is_one_clear_error() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let mut broken = spec(dir.path(), "server.js", Some(80));
    broken.command = vec!["shoal-no-such-command".to_string()];
    let id = runtime
        .create(&broken)
        .await
        .expect("create does not run it");
    let error = runtime.start(&id).await.expect_err("start");
    let RuntimeError::Engine(message) = &error else {
        panic!("expected an engine error, got {error:?}");
    };
    assert!(
        message.starts_with("cannot run `shoal-no-such-command`: No such file or directory"),
        "{message}"
    );
    assert!(!message.contains("os error"), "{message}");
    assert_eq!(
        runtime.inspect(&id).await.unwrap().state,
        InstanceState::Created
    );
    runtime.remove(&id).await.unwrap();

    let failed = runtime
        .run_to_completion(&broken, Duration::from_secs(5))
        .await;
    assert!(matches!(failed, Err(RuntimeError::Engine(_))), "{failed:?}");
    assert!(runtime.list(NODE).await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_specs_and_unknown_ids_are_refused() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let mut bad_env = spec(dir.path(), "server.js", None);
    bad_env.env.insert("A=B".to_string(), "x".to_string());
    assert!(matches!(
        runtime.create(&bad_env).await,
        Err(RuntimeError::Engine(_))
    ));
    let missing_dir = spec(&dir.path().join("missing"), "server.js", None);
    assert!(matches!(
        runtime.create(&missing_dir).await,
        Err(RuntimeError::Engine(_))
    ));
    let mut no_command = spec(dir.path(), "server.js", None);
    no_command.command.clear();
    assert!(matches!(
        runtime.create(&no_command).await,
        Err(RuntimeError::Engine(_))
    ));

    assert!(matches!(
        runtime.start("proc-99").await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        runtime.pause("proc-99").await,
        Err(RuntimeError::NotFound(_))
    ));
    assert!(matches!(
        runtime.logs("proc-99", 10, false).await,
        Err(RuntimeError::NotFound(_))
    ));
    runtime
        .remove("proc-99")
        .await
        .expect("removing nothing is fine");

    let id = runtime
        .create(&spec(dir.path(), "sleep.js", None))
        .await
        .unwrap();
    let error = runtime
        .pause(&id)
        .await
        .expect_err("pause a created instance");
    assert!(error.to_string().contains("not running"), "{error}");
    runtime
        .stop(&id, Duration::from_secs(1))
        .await
        .expect("stop a created instance");
}

#[tokio::test]
async fn stop_kills_a_process_that_ignores_sigterm_after_the_grace() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let id = runtime
        .create(&spec(dir.path(), "stubborn.js", None))
        .await
        .unwrap();
    assert_eq!(
        runtime.start(&id).await.unwrap(),
        None,
        "no port, no address"
    );
    let pid: u32 = wait_for_line(&runtime, &id, "pid ").await.parse().unwrap();
    let started = Instant::now();
    runtime
        .stop(&id, Duration::from_millis(300))
        .await
        .expect("stop");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        assert_exited(&runtime.inspect(&id).await.unwrap()),
        Some(128 + 9)
    );
    assert!(all_logs(&runtime, &id, 10)
        .await
        .contains("ignoring SIGTERM"));
    assert_gone(pid).await;
    runtime.remove(&id).await.unwrap();
}

#[tokio::test]
async fn stop_kills_the_whole_process_group() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let id = runtime
        .create(&spec(dir.path(), "family.js", None))
        .await
        .unwrap();
    runtime.start(&id).await.unwrap();
    let pids: Vec<u32> = wait_for_line(&runtime, &id, "pids ")
        .await
        .split(' ')
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert!(pids.iter().all(|&pid| process_alive(pid)), "{pids:?}");
    runtime
        .stop(&id, Duration::from_secs(5))
        .await
        .expect("stop");
    for pid in pids {
        assert_gone(pid).await;
    }
    runtime.remove(&id).await.unwrap();
}

#[tokio::test]
async fn an_exit_by_itself_is_reported_and_takes_its_children_along() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let id = runtime
        .create(&spec(dir.path(), "family.js", None))
        .await
        .unwrap();
    runtime.start(&id).await.unwrap();
    let pids: Vec<u32> = wait_for_line(&runtime, &id, "pids ")
        .await
        .split(' ')
        .map(|pid| pid.parse().unwrap())
        .collect();
    // Killed from outside, the way a crash looks to the runtime.
    std::process::Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while runtime.inspect(&id).await.unwrap().state == InstanceState::Running {
        assert!(Instant::now() < deadline, "the exit was never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        assert_exited(&runtime.inspect(&id).await.unwrap()),
        Some(128 + 9)
    );
    assert_gone(pids[1]).await;
    runtime.remove(&id).await.unwrap();
}

#[tokio::test]
async fn dropping_the_runtime_kills_its_processes() {
    let dir = release();
    let runtime = ProcessRuntime::new(NODE.to_string());
    let id = runtime
        .create(&spec(dir.path(), "family.js", None))
        .await
        .unwrap();
    runtime.start(&id).await.unwrap();
    let pids: Vec<u32> = wait_for_line(&runtime, &id, "pids ")
        .await
        .split(' ')
        .map(|pid| pid.parse().unwrap())
        .collect();
    drop(runtime);
    for pid in pids {
        assert_gone(pid).await;
    }
}
