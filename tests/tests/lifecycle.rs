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
    // It leaves the cluster (gossip, raft, QUIC) after draining: give it time, no new signal.
    let status = node
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("shoal exits after draining\n{}", node.log()));
    assert!(
        status.success(),
        "shoal exits 0 after draining: {status:?}\n{}",
        node.log()
    );
    assert!(node.log().contains("shutting down"), "{}", node.log());
}

/// `shoal seed | tee log`, then Ctrl-C kills `tee`: the node's stdout and stderr are closed
/// pipes, and SIGTERM must still shut it down (it once panicked in its signal handler).
#[test]
fn sigterm_works_when_stdout_is_a_closed_pipe() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", shoal_tests::free_port());
    let api = format!("127.0.0.1:{}", shoal_tests::free_port());
    let mut child = Command::new(shoal_tests::shoal_bin())
        .args(["seed", "--http", &http, "--api", &api])
        .args([
            "--gossip",
            &format!("127.0.0.1:{}", shoal_tests::free_udp_port()),
        ])
        .args([
            "--quic",
            &format!("127.0.0.1:{}", shoal_tests::free_udp_port()),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("is up"), "{line}");
    drop(stdout);
    drop(child.stderr.take());

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("shoal ignored SIGTERM with its output pipes closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
