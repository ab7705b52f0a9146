//! `--runtime process`: service apps as plain child processes, for machines without Docker.

use reqwest::StatusCode;
use shoal_tests::{examples_dir, http_client, TestNode};

#[tokio::test(flavor = "multi_thread")]
async fn the_example_api_runs_as_a_plain_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start_with(&dir.path().join("data"), &["--runtime", "process"]);
    node.cli_ok(&["deploy", examples_dir().join("api").to_str().unwrap()]);
    let client = http_client();
    let response = client
        .get(node.url("/apps/api/hello?name=p"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", node.log());
    assert!(response.headers().contains_key("x-shoal-cold-start-ms"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["hello"], "p");
    assert!(
        node.log().contains("NOT isolated"),
        "the node warns loudly: {}",
        node.log()
    );
    let logs = node.cli_ok(&["logs", "api"]);
    assert!(logs.contains("api listening on"), "{logs}");
    let shown: serde_json::Value =
        serde_json::from_str(&node.cli_ok(&["apps", "api", "--json"])).unwrap();
    assert_eq!(shown["instances"][0]["state"], "running");
    let status = node.terminate();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_docker_the_node_falls_back_to_processes_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with_env(
        &dir.path().join("data"),
        &[],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    node.cli_ok(&["deploy", examples_dir().join("api").to_str().unwrap()]);
    let response = http_client()
        .get(node.url("/apps/api/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", node.log());
    assert!(
        node.log().contains("NO DOCKER ENGINE ANSWERS"),
        "{}",
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_docker_refuses_to_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with_env(
        &dir.path().join("data"),
        &["--runtime", "docker"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    node.cli_ok(&["deploy", examples_dir().join("api").to_str().unwrap()]);
    let response = http_client()
        .get(node.url("/apps/api/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
}
