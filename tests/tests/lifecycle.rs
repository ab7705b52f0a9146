//! The node's process lifecycle: graceful shutdown lets in-flight requests finish.

use std::time::Duration;

use shoal_tests::{http_client, TestNode};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_download_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = TestNode::start(&dir.path().join("data"));
    let app = dir.path().join("big");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("shoal.toml"),
        "name = \"big\"\nkind = \"static\"\n",
    )
    .unwrap();
    let size = 24 * 1024 * 1024;
    let contents: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    std::fs::write(app.join("blob.bin"), &contents).unwrap();
    node.cli_ok(&["deploy", app.to_str().unwrap()]);

    let client = http_client();
    let mut response = client
        .get(node.url("/apps/big/blob.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = response.chunk().await.unwrap().unwrap().to_vec();

    // The download is in flight, with most of the file still to send: stop the node.
    let pid = node.pid();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused while the old one drains.
    assert!(
        client.get(node.url("/healthz")).send().await.is_err(),
        "listener closed at shutdown"
    );
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
        // Read slowly so the transfer outlasts the signal by a good margin.
        if received.len() % (4 * 1024 * 1024) < chunk.len() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        received.len(),
        contents.len(),
        "the in-flight download finished"
    );
    assert!(received == contents, "the bytes arrived intact");
    let status = node.terminate();
    assert!(
        status.success(),
        "shoal exits 0 after draining: {status:?}\n{}",
        node.log()
    );
    assert!(node.log().contains("shutting down"), "{}", node.log());
}
