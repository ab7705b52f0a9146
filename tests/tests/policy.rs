//! Per-app policy at the ingress, end to end against a real `shoal` node: one app per policy
//! kind, each with the request it lets in and the one it refuses, changed with `shoal policy`
//! without a redeploy; deploy tokens on the admin API; and a rate limit that holds for three
//! ingress nodes together.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use shoal_tests::cluster::TestCluster;
use shoal_tests::{http_client, TestNode};

/// A service app that answers every request with what it received: method, path, headers
/// and the body's length.
fn echo_app(dir: &Path, name: &str, policy: &str) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("server.js"),
        r#"const http = require("http");
http.createServer((request, response) => {
  let length = 0;
  request.on("data", (chunk) => { length += chunk.length; });
  request.on("end", () => {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ method: request.method, url: request.url, headers: request.headers, length }));
  });
}).listen(Number(process.env.PORT || 3000));
"#,
    )
    .unwrap();
    std::fs::write(
        app.join("shoal.toml"),
        format!(
            "name = \"{name}\"\nkind = \"service\"\ncommand = [\"node\", \"server.js\"]\nport = 3000\n{policy}"
        ),
    )
    .unwrap();
    app
}

/// A static app with one page.
fn static_app(dir: &Path, name: &str, policy: &str) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("index.html"), "<!doctype html><p>hello</p>\n").unwrap();
    std::fs::write(
        app.join("shoal.toml"),
        format!("name = \"{name}\"\nkind = \"static\"\n{policy}"),
    )
    .unwrap();
    app
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `shoal policy ... --json` and its answer.
fn policy(node: &TestNode, args: &[&str]) -> Value {
    let mut all = vec!["policy"];
    all.extend_from_slice(args);
    all.push("--json");
    json(&node.cli_ok(&all))
}

async fn status(
    request: reqwest::RequestBuilder,
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_policy_kind_lets_in_what_it_should_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(&dir.path().join("data"), &["--runtime", "process"]);
    let client = http_client();
    let url = |app: &str, path: &str| node.url(&format!("/apps/{app}{path}"));
    node.cli_ok(&["deploy", echo_app(dir.path(), "open", "").to_str().unwrap()]);

    // Public, with the default security headers; a client's X-Shoal-Auth is not believed.
    let (code, headers, body) = status(
        client
            .get(url("open", "/"))
            .header("x-shoal-auth", "token:admin"),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(headers["x-frame-options"], "SAMEORIGIN");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(
        headers["referrer-policy"],
        "strict-origin-when-cross-origin"
    );
    assert!(
        json(&body)["headers"].get("x-shoal-auth").is_none(),
        "{body}"
    );

    // Bearer tokens: made by `shoal policy`, which makes the app private; revocable.
    let made = policy(&node, &["open", "--add-token", "ci"]);
    let token = made["new_tokens"]["ci"].as_str().unwrap().to_owned();
    assert_eq!(made["policy"]["access"], "private");
    let (code, headers, _) = status(client.get(url("open", "/"))).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let (code, _, _) = status(client.get(url("open", "/")).bearer_auth("shoal_at_wrong")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _, body) = status(client.get(url("open", "/")).bearer_auth(&token)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let seen = json(&body);
    assert_eq!(seen["headers"]["x-shoal-auth"], "token:ci");
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the token reached the app"
    );
    policy(&node, &["open", "--revoke-token", "ci"]);
    let (code, _, _) = status(client.get(url("open", "/")).bearer_auth(&token)).await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "a revoked token still works"
    );

    // Basic auth: the password is hashed; a wrong one is refused with a Basic challenge.
    let added = node.cli_ok(&[
        "policy",
        "open",
        "--add-user",
        "alice",
        "--password",
        "correct horse",
    ]);
    assert!(added.contains("alice"), "{added}");
    let (code, _, body) = status(
        client
            .get(url("open", "/"))
            .basic_auth("alice", Some("correct horse")),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["headers"]["x-shoal-auth"], "user:alice");
    let (code, headers, _) = status(
        client
            .get(url("open", "/"))
            .basic_auth("alice", Some("battery")),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));

    // Share links: open the app, set a cookie for the page's other requests, and expire.
    let shared = json(&node.cli_ok(&["share", "open", "--ttl", "3s", "--json"]));
    let link = shared["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .find(|u| u.contains("/apps/open/"))
        .unwrap();
    let (code, headers, body) = status(client.get(&link)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let seen = json(&body);
    assert_eq!(seen["headers"]["x-shoal-auth"], "share");
    assert_eq!(seen["url"], "/", "the share token reached the app");
    let cookie = headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("Path=/apps/open/") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let (code, _, _) = status(
        client
            .get(url("open", "/data.json"))
            .header("cookie", &pair),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "the cookie did not carry the grant");
    let forged = link.replace("shoal_share=", "shoal_share=9");
    let (code, _, body) = status(client.get(&forged)).await;
    assert_eq!(
        (code, body.trim()),
        (StatusCode::UNAUTHORIZED, "invalid share link")
    );
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (code, _, body) = status(client.get(&link)).await;
    assert_eq!(
        (code, body.trim()),
        (StatusCode::UNAUTHORIZED, "share link expired")
    );
    // Rotating the key revokes every earlier link.
    let fresh = json(&node.cli_ok(&["share", "open", "--ttl", "1h", "--json"]));
    let fresh = fresh["urls"][1].as_str().unwrap().to_owned();
    assert_eq!(status(client.get(&fresh)).await.0, StatusCode::OK);
    policy(&node, &["open", "--rotate-share-key"]);
    assert_eq!(status(client.get(&fresh)).await.0, StatusCode::UNAUTHORIZED);

    // IP allowlist, with the client address from a trusted proxy's X-Forwarded-For only.
    policy(&node, &["open", "--public", "--allow-ip", "10.0.0.0/8"]);
    let (code, _, body) = status(client.get(url("open", "/"))).await;
    assert_eq!((code, body.trim()), (StatusCode::FORBIDDEN, "forbidden"));
    let spoofed = client
        .get(url("open", "/"))
        .header("x-forwarded-for", "10.1.2.3");
    assert_eq!(
        status(spoofed).await.0,
        StatusCode::FORBIDDEN,
        "an untrusted XFF was believed"
    );
    policy(&node, &["open", "--trusted-proxy", "127.0.0.1"]);
    let proxied = client
        .get(url("open", "/"))
        .header("x-forwarded-for", "10.1.2.3");
    let (code, _, body) = status(proxied).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let proxied = client
        .get(url("open", "/"))
        .header("x-forwarded-for", "192.0.2.1");
    assert_eq!(status(proxied).await.0, StatusCode::FORBIDDEN);
    policy(&node, &["open", "--any-ip", "--no-trusted-proxies"]);
    assert_eq!(status(client.get(url("open", "/"))).await.0, StatusCode::OK);

    // CORS: preflights answered at the ingress for the allowed origin only.
    policy(
        &node,
        &["open", "--cors-origin", "https://notebook.example"],
    );
    let preflight = |origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, url("open", "/"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
    };
    let (code, headers, _) = status(preflight("https://notebook.example")).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://notebook.example"
    );
    assert_eq!(
        status(preflight("https://evil.example")).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, headers, _) = status(
        client
            .get(url("open", "/"))
            .header("origin", "https://notebook.example"),
    )
    .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://notebook.example"
    );
    let (_, headers, _) = status(
        client
            .get(url("open", "/"))
            .header("origin", "https://evil.example"),
    )
    .await;
    assert!(headers.get("access-control-allow-origin").is_none());

    // Security headers replaced or turned off by the policy.
    policy(
        &node,
        &[
            "open",
            "--csp",
            "default-src 'self'",
            "--frame-options",
            "off",
        ],
    );
    let (_, headers, _) = status(client.get(url("open", "/"))).await;
    assert_eq!(headers["content-security-policy"], "default-src 'self'");
    assert!(headers.get("x-frame-options").is_none());

    // Body limit: declared or streamed, a body over it is refused with 413.
    policy(&node, &["open", "--max-body", "1KiB"]);
    let (code, _, body) = status(client.post(url("open", "/")).body(vec![b'x'; 500])).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(json(&body)["length"], 500);
    let (code, _, _) = status(client.post(url("open", "/")).body(vec![b'x'; 2_000])).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 512]))),
    );
    let streamed = client
        .post(url("open", "/"))
        .body(reqwest::Body::wrap_stream(chunks));
    assert_eq!(status(streamed).await.0, StatusCode::PAYLOAD_TOO_LARGE);

    // `[policy]` in shoal.toml at deploy: a static app private from its first release.
    // `[policy]` in shoal.toml at deploy: a static app private from its first release.
    node.cli_ok(&[
        "deploy",
        static_app(
            dir.path(),
            "dash",
            "[policy]\naccess = \"private\"\nallow_ips = [\"127.0.0.0/8\"]\n",
        )
        .to_str()
        .unwrap(),
    ]);
    assert_eq!(
        status(client.get(url("dash", "/"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    let made = policy(&node, &["dash", "--add-token", "viewer"]);
    let viewer = made["new_tokens"]["viewer"].as_str().unwrap().to_owned();
    let (code, _, body) = status(client.get(url("dash", "/")).bearer_auth(&viewer)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("hello"));
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_tokens_reach_one_app_and_stop_when_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(&dir.path().join("data"), &["--runtime", "process"]);
    let app = static_app(dir.path(), "notes", "");
    let other = static_app(dir.path(), "other", "");
    let made = json(&node.cli_ok(&["token", "create", "notes", "--name", "notebook", "--json"]));
    let token = made["token"].as_str().unwrap().to_owned();
    let id = made["deploy_token"]["id"].as_str().unwrap().to_owned();
    let as_token = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--token", token.as_str()]);
        node.cli(&all)
    };
    // The app need not exist before its token; the token deploys it and reads it.
    let deployed = as_token(&["deploy", app.to_str().unwrap()]);
    assert!(deployed.status.success(), "{deployed:?}");
    assert!(as_token(&["apps", "notes"]).status.success());
    assert!(as_token(&["policy", "notes", "--private"]).status.success());
    // Nothing else.
    for refused in [
        vec!["deploy", other.to_str().unwrap()],
        vec!["nodes"],
        vec!["token", "list"],
        vec!["policy", "other"],
    ] {
        let output = as_token(&refused);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{refused:?} was allowed");
        assert!(
            stderr.contains("403") || stderr.contains("404"),
            "{refused:?}: {stderr}"
        );
    }
    let deployed_other = as_token(&["deploy", other.to_str().unwrap(), "--name", "notes"]);
    assert!(
        deployed_other.status.success(),
        "--name of its own app is allowed"
    );
    let listed = json(&String::from_utf8_lossy(
        &as_token(&["apps", "--json"]).stdout,
    ));
    let names: Vec<&str> = listed["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["notes"], "a deploy token lists only its app");
    node.cli_ok(&["token", "revoke", &id]);
    let output = as_token(&["apps", "notes"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
}

/// Sends `per_second` requests a second for `seconds`, round robin over `urls`, and counts
/// the answers by status, from `count_after` on.
async fn hammer(
    urls: &[String],
    per_second: u32,
    seconds: u64,
    count_after: Duration,
) -> (u32, u32, u32) {
    let client = http_client();
    let began = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut tasks = Vec::new();
    let mut sent = 0usize;
    while began.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let request = client.get(&urls[sent % urls.len()]);
        let counted = began.elapsed() >= count_after;
        sent += 1;
        tasks.push(tokio::spawn(async move {
            let status = request.send().await.map(|r| r.status());
            (counted, status)
        }));
    }
    let (mut ok, mut limited, mut other) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (false, _) => {}
            (true, Ok(StatusCode::OK)) => ok += 1,
            (true, Ok(StatusCode::TOO_MANY_REQUESTS)) => limited += 1,
            (true, _) => other += 1,
        }
    }
    (ok, limited, other)
}

#[test]
fn a_rate_limit_holds_for_the_cluster_however_clients_spread() {
    let mut cluster = TestCluster::start(1, 2).unwrap();
    cluster.wait_formed(Duration::from_secs(30)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 100 requests per 10 s per client: 10/s, for the three nodes together.
    let app = static_app(
        dir.path(),
        "limited",
        "[policy]\nrate_limit = \"100/10s\"\n",
    );
    let output = cluster.cli(0, &["deploy", app.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");
    cluster
        .wait_served_everywhere("/apps/limited/", b"hello", Duration::from_secs(30))
        .unwrap();
    let urls: Vec<String> = (0..3)
        .map(|i| cluster.nodes[i].url("/apps/limited/"))
        .collect();
    // 30 requests/s, three times the limit, spread evenly over the three ingress nodes; the
    // first window's burst is left out of the count.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ok, limited, other) = runtime.block_on(hammer(&urls, 30, 30, Duration::from_secs(10)));
    let expected = 10.0 * 20.0;
    let ratio = f64::from(ok) / expected;
    println!("rate limit 10/s over 3 ingress nodes: {ok} admitted in 20 s ({ratio:.2} of the rate), {limited} refused, {other} other");
    assert_eq!(other, 0, "requests failed for other reasons");
    assert!(
        (0.8..=1.2).contains(&ratio),
        "{ok} admitted in 20 s against a rate of 10/s ({ratio:.2}x)"
    );
    // Without sharing counts, each node would admit the full rate: three times as many.
    assert!(
        limited > ok,
        "the limit did not hold: {ok} admitted, {limited} refused"
    );
}
