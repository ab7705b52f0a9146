//! A user deploys the example dashboard with the real CLI and browses it through both routing
//! modes, across a restart of the node.

use std::collections::{BTreeSet, VecDeque};

use reqwest::{StatusCode, Url};
use shoal_tests::html::{base_href, links};
use shoal_tests::{examples_dir, http_client, TestNode};

/// Follows every same-origin link from `start`, asserting each answers 200, and returns the
/// pages and assets visited. `must_start_with` is the path every absolute link must stay under.
async fn crawl(client: &reqwest::Client, start: Url, must_start_with: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([start.clone()]);
    while let Some(url) = queue.pop_front() {
        let mut url = url;
        url.set_query(None);
        url.set_fragment(None);
        if !seen.insert(url.path().to_owned()) {
            continue;
        }
        let response = client.get(url.clone()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        let is_html = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html"));
        if !is_html {
            continue;
        }
        let html = response.text().await.unwrap();
        let base = match base_href(&html) {
            Some(base) => url.join(&base).unwrap(),
            None => url.clone(),
        };
        for link in links(&html) {
            if link.starts_with('/') {
                assert!(
                    link.starts_with(must_start_with),
                    "{url} links to `{link}`, outside {must_start_with}"
                );
            }
            let target = base.join(&link).unwrap();
            if target.origin() == start.origin() {
                queue.push_back(target);
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_under_both_routing_modes_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut node = TestNode::start(&data_dir);
    let dashboard = examples_dir().join("dashboard");
    let out = node.cli_ok(&["deploy", dashboard.to_str().unwrap()]);
    assert!(out.contains("deployed dashboard release 1"), "{out}");
    assert!(
        out.contains("/apps/dashboard/"),
        "deploy prints the app's URLs: {out}"
    );

    let client = http_client();
    let prefix_start = Url::parse(&node.url("/apps/dashboard/")).unwrap();
    let visited = crawl(&client, prefix_start.clone(), "/apps/dashboard/").await;
    for expected in [
        "/apps/dashboard/",
        "/apps/dashboard/reports/",
        "/apps/dashboard/reports/q3.html",
        "/apps/dashboard/assets/style.css",
        "/apps/dashboard/assets/app.js",
        "/apps/dashboard/assets/logo.svg",
        "/apps/dashboard/assets/data.json",
    ] {
        assert!(
            visited.contains(expected),
            "{expected} not reached: {visited:?}"
        );
    }

    // Host routing: the app owns the whole path space and nothing is rewritten.
    let host_client = reqwest::Client::builder()
        .no_proxy()
        .resolve("dashboard.localhost", node.http)
        .build()
        .unwrap();
    let host_start =
        Url::parse(&format!("http://dashboard.localhost:{}/", node.http.port())).unwrap();
    let host_visited = crawl(&host_client, host_start.clone(), "/").await;
    assert!(
        host_visited.contains("/reports/q3.html"),
        "{host_visited:?}"
    );
    let host_html = host_client
        .get(host_start)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        host_html.contains("href=\"/assets/style.css\""),
        "host mode is not rewritten"
    );

    let before = client
        .get(prefix_start.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let status = node.terminate();
    assert!(
        status.success(),
        "shoal exits cleanly on SIGTERM: {status:?}\n{}",
        node.log()
    );

    let node = TestNode::start(&data_dir);
    let after = client
        .get(node.url("/apps/dashboard/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(before, after, "the same page is served after a restart");
    let apps: serde_json::Value = serde_json::from_str(&node.cli_ok(&["apps", "--json"])).unwrap();
    assert_eq!(apps["apps"][0]["name"], "dashboard");
    assert_eq!(apps["apps"][0]["version"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn etags_unknown_apps_and_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("data"));
    node.cli_ok(&["deploy", examples_dir().join("dashboard").to_str().unwrap()]);
    let client = http_client();

    let response = client
        .get(node.url("/apps/dashboard/assets/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].clone();
    let response = client
        .get(node.url("/apps/dashboard/assets/style.css"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers()["etag"], etag);
    assert!(response.bytes().await.unwrap().is_empty());

    for path in [
        "/apps/nope/",
        "/apps/nope/index.html",
        "/apps/dashboard/missing.txt",
        "/",
    ] {
        let response = client.get(node.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "GET {path}");
    }
    let response = client
        .get(node.url("/"))
        .header("host", "nope.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let response = client
        .get(node.url("/apps/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(response.headers()["location"], "/apps/dashboard/");
    // A directory without its slash redirects inside the prefix, not to the host's root.
    let response = client
        .get(node.url("/apps/dashboard/reports"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_redirection());
    assert_eq!(response.headers()["location"], "/apps/dashboard/reports/");

    let response = client
        .get(node.url("/apps/dashboard/assets/data.json"))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"{\"sales\": ");

    assert_eq!(
        client
            .get(node.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        client
            .get(node.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_demands_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("data"));
    let client = http_client();
    let bundle = shoal_tests::bundle_of(&[
        ("shoal.toml", b"name = \"x\"\nkind = \"static\"\n"),
        ("index.html", b"hi"),
    ]);

    for token in [None, Some("wrong"), Some("")] {
        let calls = [
            client.get(node.api_url("/v1/apps")),
            client.get(node.api_url("/v1/apps/x")),
            client.delete(node.api_url("/v1/apps/x")),
            client.post(node.api_url("/v1/apps")).body(bundle.clone()),
        ];
        for call in calls {
            let call = match token {
                Some(token) => call.bearer_auth(token),
                None => call,
            };
            let response = call.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("admin token"));
        }
    }
    // Nothing was deployed by the refused calls.
    let response = client
        .get(node.api_url("/v1/apps"))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["apps"],
        serde_json::json!([])
    );
    let response = client.get(node.url("/apps/x/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // The CLI says what is wrong, and exits non-zero.
    let output = std::process::Command::new(shoal_tests::shoal_bin())
        .args(["apps", "--api", &node.api.to_string(), "--token", "wrong"])
        .env_remove("SHOAL_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("admin token") && stderr.contains("401"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redeploy_show_delete_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(&dir.path().join("data"));
    let app_dir = dir.path().join("site");
    std::fs::create_dir(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("shoal.toml"),
        "name = \"site\"\nkind = \"static\"\n[static]\nspa_fallback = \"index.html\"\n",
    )
    .unwrap();
    std::fs::write(app_dir.join("index.html"), "<a href=\"/one\">v1</a>").unwrap();
    let site = app_dir.to_str().unwrap();

    let first: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["deploy", site, "--json"])).unwrap();
    assert_eq!(first["version"], 1);
    assert_eq!(first["created"], true);
    let again: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["deploy", site, "--json"])).unwrap();
    assert_eq!(
        again["created"], false,
        "the same content makes no new release"
    );
    assert_eq!(again["version"], 1);
    std::fs::write(app_dir.join("index.html"), "<a href=\"/two\">v2</a>").unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["deploy", site, "--json"])).unwrap();
    assert_eq!(second["version"], 2);
    assert_ne!(second["digest"], first["digest"]);
    // The same directory under another name is another app.
    node.cli_ok(&["deploy", site, "--name", "copy"]);

    let client = http_client();
    // SPA fallback: any unknown path serves index.html, rewritten under the prefix.
    let page = client
        .get(node.url("/apps/site/deep/link"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.text().await.unwrap(),
        "<a href=\"/apps/site/two\">v2</a>"
    );

    let shown: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["apps", "site", "--json"])).unwrap();
    let releases = shown["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[0]["version"], 2, "newest release first");
    let text = node.cli_ok(&["apps"]);
    assert!(
        text.contains("site") && text.contains("copy") && text.contains("static"),
        "{text}"
    );

    let metrics = client
        .get(node.api_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("shoal_http_requests_total{app=\"site\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_http_request_duration_seconds_count{app=\"site\"} 1"),
        "{metrics}"
    );
    let stored = metric_value(&metrics, "shoal_bundle_bytes_stored");
    assert!(stored > 0.0, "{metrics}");

    let removed: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["rm", "site", "--json"])).unwrap();
    assert_eq!(removed["deleted"], "site");
    assert_eq!(
        client
            .get(node.url("/apps/site/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let output = node.cli(&["rm", "site"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no app named `site`"));
    // `copy` shares the v2 bundle: it must still be served after `site` and its v1 are gone.
    assert_eq!(
        client
            .get(node.url("/apps/copy/"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let metrics = client
        .get(node.api_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_value(&metrics, "shoal_bundle_bytes_stored") < stored,
        "v1 was collected: {metrics}"
    );
    let blobs = std::fs::read_dir(node.data_dir.join("bundles/blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1, "only the bundle `copy` uses is kept");
}

fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
}
