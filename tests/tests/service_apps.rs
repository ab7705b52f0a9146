//! Service apps in real Docker containers behind the ingress: cold start, pause, stop, wake,
//! single-flight under concurrency, and a redeploy that fails no request.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use shoal_tests::{container_states, docker_or_skip, examples_dir, http_client, TestNode};

/// The example API with its own name, version string and idle timers.
fn api_app(
    dir: &Path,
    name: &str,
    version: &str,
    pause_after: &str,
    idle_timeout: &str,
) -> PathBuf {
    let app = dir.join(format!("{name}-{version}"));
    std::fs::create_dir_all(&app).unwrap();
    let server = std::fs::read_to_string(examples_dir().join("api/server.js")).unwrap();
    let server = server.replace(
        "hello: name,",
        &format!("hello: name, version: \"{version}\","),
    );
    std::fs::write(app.join("server.js"), server).unwrap();
    std::fs::write(
        app.join("shoal.toml"),
        format!(
            "name = \"{name}\"\nkind = \"service\"\ncommand = [\"node\", \"server.js\"]\nport = 3000\n\
             [scale]\npause_after = \"{pause_after}\"\nidle_timeout = \"{idle_timeout}\"\n"
        ),
    )
    .unwrap();
    // The container runs as uid 65534: the release must be readable by anyone.
    app
}

fn wait_for_state(node: &TestNode, app: &str, state: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let states = container_states(&node.name, app);
        if states.iter().any(|s| s == state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{app} never became {state}: {states:?}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_starts_on_demand_pauses_stops_and_wakes() {
    if !docker_or_skip("a_service_starts_on_demand_pauses_stops_and_wakes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("data"));
    let app = api_app(dir.path(), "sleepy", "v1", "2s", "5s");
    node.cli_ok(&["deploy", app.to_str().unwrap()]);
    // Pre-created at deploy: the first request's wake is a start, not a create.
    wait_for_state(&node, "sleepy", "created", Duration::from_secs(60));

    let client = http_client();
    let response = client
        .get(node.url("/apps/sleepy/hello?name=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cold: u64 = response.headers()["x-shoal-cold-start-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cold > 0);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["hello"], "a");
    assert_eq!(container_states(&node.name, "sleepy"), ["running"]);

    let warm = client
        .get(node.url("/apps/sleepy/hello"))
        .send()
        .await
        .unwrap();
    assert!(
        warm.headers().get("x-shoal-cold-start-ms").is_none(),
        "a warm request waits for nothing"
    );

    wait_for_state(&node, "sleepy", "paused", Duration::from_secs(10));
    let thawed = client
        .get(node.url("/apps/sleepy/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(thawed.status(), StatusCode::OK);
    assert!(
        thawed.headers().contains_key("x-shoal-cold-start-ms"),
        "a wake from pause is a (short) cold start"
    );

    wait_for_state(&node, "sleepy", "paused", Duration::from_secs(10));
    wait_for_state(&node, "sleepy", "exited", Duration::from_secs(15));
    let woken = client
        .get(node.url("/"))
        .header("host", "sleepy.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(woken.status(), StatusCode::OK);
    assert!(woken.headers().contains_key("x-shoal-cold-start-ms"));
    assert_eq!(
        container_states(&node.name, "sleepy"),
        ["running"],
        "the same container woke"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_requests_to_a_cold_app_start_one_container() {
    if !docker_or_skip("fifty_concurrent_requests_to_a_cold_app_start_one_container") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&dir.path().join("data"));
    let app = api_app(dir.path(), "crowd", "v1", "60s", "10m");
    node.cli_ok(&["deploy", app.to_str().unwrap()]);
    wait_for_state(&node, "crowd", "created", Duration::from_secs(60));

    let client = http_client();
    let requests = (0..50).map(|i| {
        let client = client.clone();
        let url = node.url(&format!("/apps/crowd/hello?name={i}"));
        tokio::spawn(async move { client.get(url).send().await })
    });
    let mut cold = 0;
    for request in requests {
        let response = request.await.unwrap().expect("request answered");
        assert_eq!(response.status(), StatusCode::OK);
        cold += usize::from(response.headers().contains_key("x-shoal-cold-start-ms"));
    }
    assert!(cold >= 1, "the requests waited for the start");
    assert_eq!(
        container_states(&node.name, "crowd"),
        ["running"],
        "exactly one container"
    );

    let container = container_ids(&node.name, "crowd");

    // A restarted node adopts the running container: no new container, no cold start.
    node.remove_containers_on_drop = false;
    let status = node.terminate();
    assert!(status.success(), "{}", node.log());
    assert_eq!(
        container_states(&node.name, "crowd"),
        ["running"],
        "left for adoption"
    );
    let (data_dir, name) = (node.data_dir.clone(), node.name.clone());
    drop(node);
    // A container with this node's labels that no release names must go at the restart.
    let ghost = std::process::Command::new("docker")
        .args(["create", "--label", "io.shoal.managed=true"])
        .args([
            "--label",
            &format!("io.shoal.node={name}"),
            "--label",
            "io.shoal.app=ghost",
        ])
        .args([
            "--label",
            "io.shoal.release=1",
            "--label",
            "io.shoal.digest=00",
            "--label",
            "io.shoal.role=service",
        ])
        .args(["shoal-runtime:latest", "node", "-e", "0"])
        .output()
        .unwrap();
    assert!(
        ghost.status.success(),
        "{}",
        String::from_utf8_lossy(&ghost.stderr)
    );
    assert_eq!(container_states(&name, "ghost"), ["created"]);
    let node = TestNode::start_as(&data_dir, &name, &[]);
    let response = client
        .get(node.url("/apps/crowd/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", node.log());
    assert!(
        response.headers().get("x-shoal-cold-start-ms").is_none(),
        "the adopted instance was warm"
    );
    assert_eq!(
        container_ids(&node.name, "crowd"),
        container,
        "the same container serves"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !container_states(&node.name, "ghost").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stray container stayed\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn container_ids(node: &str, app: &str) -> Vec<String> {
    let output = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc"])
        .args(["--filter", &format!("label=io.shoal.node={node}")])
        .args(["--filter", &format!("label=io.shoal.app={app}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_under_load_fails_no_request() {
    if !docker_or_skip("a_redeploy_under_load_fails_no_request") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("data"));
    let v1 = api_app(dir.path(), "steady", "v1", "60s", "10m");
    node.cli_ok(&["deploy", v1.to_str().unwrap()]);
    let client = http_client();
    let first = client
        .get(node.url("/apps/steady/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        first.json::<serde_json::Value>().await.unwrap()["version"],
        "v1"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU32::new(0));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), node.url("/apps/steady/hello"));
            let (stop, failures) = (stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut versions = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(response) if response.status() == StatusCode::OK => {
                            let body: serde_json::Value = response.json().await.unwrap();
                            versions.push(body["version"].as_str().unwrap().to_owned());
                        }
                        Ok(response) => {
                            eprintln!(
                                "failed: {} {}",
                                response.status(),
                                response.text().await.unwrap_or_default()
                            );
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            eprintln!("failed: {error}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                versions
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v2 = api_app(dir.path(), "steady", "v2", "60s", "10m");
    let deploy_node_api = node.api.to_string();
    let token = node.token.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(shoal_tests::shoal_bin())
            .args([
                "deploy",
                v2.to_str().unwrap(),
                "--api",
                &deploy_node_api,
                "--token",
                &token,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Keep the load on until release 2 answers, and a while after.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body: serde_json::Value = client
            .get(node.url("/apps/steady/hello"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["version"] == "v2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "release 2 never took over\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for handle in loops {
        let versions = handle.await.unwrap();
        served += versions.len();
        assert_eq!(versions.last().map(String::as_str), Some("v2"));
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed across the redeploy"
    );
    assert!(served > 20, "the loop kept requests flowing: {served}");
    // The old release drains, stops and goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while container_states(&node.name, "steady").len() > 1 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            container_states(&node.name, "steady")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Opens a WebSocket through the ingress by hand and checks the app echoes a frame back.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_and_sse_work_through_the_ingress() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    if !docker_or_skip("websocket_and_sse_work_through_the_ingress") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("data"));
    node.cli_ok(&["deploy", examples_dir().join("api").to_str().unwrap()]);

    let mut stream = tokio::net::TcpStream::connect(node.http).await.unwrap();
    let handshake = "GET /apps/api/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    // A masked text frame "hello shoal", as a browser would send it.
    let payload = b"hello shoal";
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
    let mut echo = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(echo[0], 0x81);
    assert_eq!(echo[1] as usize, payload.len());
    assert_eq!(&echo[2..], payload);

    // Server-sent events stream through, each event as it is sent.
    let client = http_client();
    let mut events = client
        .get(node.url("/apps/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while let Some(chunk) = events.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(text, "data: tick 1\n\ndata: tick 2\n\ndata: tick 3\n\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_stream_and_a_crash_shows_why() {
    if !docker_or_skip("logs_stream_and_a_crash_shows_why") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("data"));
    node.cli_ok(&["deploy", examples_dir().join("api").to_str().unwrap()]);
    let client = http_client();
    assert_eq!(
        client
            .get(node.url("/apps/api/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let logs = node.cli_ok(&["logs", "api"]);
    assert!(logs.contains("api listening on 3000"), "{logs}");

    let crashy = dir.path().join("crashy");
    std::fs::create_dir(&crashy).unwrap();
    std::fs::write(
        crashy.join("server.js"),
        "console.log('boom: missing DATABASE_URL'); process.exit(3);\n",
    )
    .unwrap();
    std::fs::write(
        crashy.join("shoal.toml"),
        "name = \"crashy\"\nkind = \"service\"\ncommand = [\"node\", \"server.js\"]\nport = 3000\n",
    )
    .unwrap();
    node.cli_ok(&["deploy", crashy.to_str().unwrap()]);
    // Time the crash, not the runtime's first-use set-up: wait for the pre-created container.
    wait_for_state(&node, "crashy", "created", Duration::from_secs(60));
    let started = Instant::now();
    let response = client.get(node.url("/apps/crashy/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a crash fails fast, not at the readiness timeout ({:?})\n{}",
        started.elapsed(),
        node.log()
    );
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("DATABASE_URL"),
        "clients do not see the app's output: {body}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["apps", "crashy", "--json"])).unwrap();
    let instance = &shown["instances"][0];
    assert_eq!(instance["state"], "failed", "{shown}");
    let why = instance["last_failure"].as_str().unwrap();
    assert!(
        why.contains("exited with code 3") && why.contains("boom"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_killed_for_memory_says_so() {
    if !docker_or_skip("an_app_killed_for_memory_says_so") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("data"));
    let app = dir.path().join("hungry");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("server.js"),
        "const keep = [];\n\
         require('http').createServer((q, s) => {\n\
           if (q.url === '/eat') { for (;;) keep.push(Buffer.alloc(8 << 20, 1)); }\n\
           s.end('ok');\n\
         }).listen(process.env.PORT);\n",
    )
    .unwrap();
    std::fs::write(
        app.join("shoal.toml"),
        "name = \"hungry\"\nkind = \"service\"\ncommand = [\"node\", \"server.js\"]\nport = 3000\n\
         [resources]\nmemory = \"64MiB\"\n",
    )
    .unwrap();
    node.cli_ok(&["deploy", app.to_str().unwrap()]);
    let client = http_client();
    assert_eq!(
        client
            .get(node.url("/apps/hungry/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let eaten = client
        .get(node.url("/apps/hungry/eat"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        eaten.status(),
        StatusCode::BAD_GATEWAY,
        "the app died mid-request"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shown: serde_json::Value =
            serde_json::from_str(&node.cli_ok(&["apps", "hungry", "--json"])).unwrap();
        let why = shown["instances"][0]["last_failure"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if why.contains("out of memory") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the OOM kill never showed: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The next request restarts it (after the backoff), and it serves again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client.get(node.url("/apps/hungry/")).send().await.unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        assert!(Instant::now() < deadline, "the app never came back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
