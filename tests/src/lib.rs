//! `shoal-tests`: end-to-end tests against real `shoal` processes, and the benchmark suite.
//!
//! Layout:
//! - this file: the harness. [`shoal_bin`] builds the real binary once, [`TestNode`] starts
//!   `shoal seed` on free loopback ports in its own data dir and runs the real CLI against it.
//! - [`cluster`]: [`cluster::TestCluster`], a cluster of real `shoal seed` / `shoal join`
//!   processes on loopback that tests kill, restart and deploy through.
//! - [`html`]: pulls the URLs out of served HTML, as a browser would follow them.
//! - [`bench`]: what the benchmark scenarios share (wrk runs, the nginx baseline, result tables).
//! - `tests/*.rs`: the scenarios (static apps, hostile bundles, lifecycle, browser, cluster).
//! - `src/bin/bench.rs`: the benchmark scenarios, one subcommand each (see BENCHMARKS.md).

pub mod bench;
pub mod cluster;
pub mod html;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The example apps shipped with Shoal.
pub fn examples_dir() -> PathBuf {
    workspace_root().join("examples")
}

/// The real `shoal` binary, built with the running executable's own profile on first use (or
/// `SHOAL_BIN`).
pub fn shoal_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SHOAL_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("running executable's path");
        let profile_dir = profile_dir_of(&exe).expect("target dir layout");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => "dev",
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "shoal",
                "--bin",
                "shoal",
                "--profile",
                profile,
            ])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the shoal binary failed");
        profile_dir.join("shoal")
    })
}

/// `target/<profile>` for an executable cargo built: tests run from `target/<profile>/deps/`,
/// binaries such as `bench` from `target/<profile>/`, examples from `target/<profile>/examples/`.
fn profile_dir_of(exe: &Path) -> Option<&Path> {
    let dir = exe.parent()?;
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("deps" | "examples") => dir.parent(),
        _ => Some(dir),
    }
}

/// A node name no other test node uses, even in parallel test processes.
pub fn unique_node_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a Docker engine answers. Without one, tests that need it fail in CI (`CI=true`)
/// and skip elsewhere with a message saying why.
pub fn docker_or_skip(test: &str) -> bool {
    let answered = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    if answered {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: Docker is required in CI and no engine answers");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: docker not available");
    false
}

/// `docker ps -a` states of the containers of `app` made by `node`.
pub fn container_states(node: &str, app: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.State}}"])
        .args(["--filter", &format!("label=io.shoal.node={node}")])
        .args(["--filter", &format!("label=io.shoal.app={app}")])
        .output()
        .expect("run docker ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes every container labelled with `node` (test cleanup).
pub fn remove_containers(node: &str) {
    let output = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.shoal.node={node}"),
        ])
        .output();
    if let Ok(output) = output {
        let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A loopback UDP port nobody has bound right now, and that this process has not handed out
/// before (gossip and QUIC ports are UDP; two nodes of one test must never get the same one).
pub fn free_udp_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("bind an ephemeral UDP port")
            .port();
        let mut handed_out = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// A `shoal seed` process on loopback, stopped when dropped.
pub struct TestNode {
    child: Option<Child>,
    /// Ingress address.
    pub http: SocketAddr,
    /// Admin API address.
    pub api: SocketAddr,
    /// The node's data dir.
    pub data_dir: PathBuf,
    /// The admin token the node created.
    pub token: String,
    /// The node's name (unique per test node: containers are labelled with it).
    pub name: String,
    /// Whether dropping the node removes its containers (a restart test keeps them).
    pub remove_containers_on_drop: bool,
    log: PathBuf,
}

impl TestNode {
    /// Starts a node on fresh ports with its data in `data_dir` and waits until it answers.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Like [`TestNode::start`], with extra node flags.
    pub fn start_with(data_dir: &Path, extra_args: &[&str]) -> Self {
        Self::start_as(data_dir, &unique_node_name(), extra_args)
    }

    /// Starts a node with a given name (a restart of an earlier node keeps its name).
    pub fn start_as(data_dir: &Path, name: &str, extra_args: &[&str]) -> Self {
        Self::start_full(data_dir, name, extra_args, &[])
    }

    /// Like [`TestNode::start_with`], with extra environment variables for the node.
    pub fn start_with_env(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_full(data_dir, &unique_node_name(), extra_args, env)
    }

    fn start_full(data_dir: &Path, name: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut last_log = String::new();
        // A port picked free can be taken before the node binds it; try a few.
        for _ in 0..3 {
            let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            // Gossip and QUIC default to fixed ports on 0.0.0.0: nodes of tests running in
            // parallel would fight over them.
            let gossip = format!("127.0.0.1:{}", free_udp_port());
            let quic = format!("127.0.0.1:{}", free_udp_port());
            let log = data_dir.with_extension("log");
            let name = name.to_owned();
            let log_file = std::fs::File::create(&log).expect("create node log");
            let child = Command::new(shoal_bin())
                .arg("seed")
                .args(["--data-dir", data_dir.to_str().unwrap()])
                .args(["--http", &http.to_string(), "--api", &api.to_string()])
                .args([
                    "--gossip",
                    &gossip,
                    "--quic",
                    &quic,
                    "--advertise",
                    "127.0.0.1",
                ])
                .args(["--name", &name, "--drain-timeout", "20s"])
                .args(extra_args)
                .env("SHOAL_LOG", "info,openraft=warn")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .expect("spawn shoal seed");
            let mut node = Self {
                child: Some(child),
                http,
                api,
                data_dir: data_dir.to_owned(),
                token: String::new(),
                name,
                remove_containers_on_drop: true,
                log,
            };
            if node.wait_healthy(Duration::from_secs(30)) {
                node.token = std::fs::read_to_string(data_dir.join("tokens/admin"))
                    .expect("the node wrote its admin token")
                    .trim()
                    .to_owned();
                return node;
            }
            last_log = node.log();
            drop(node);
        }
        panic!("shoal seed did not become healthy; its log:\n{last_log}");
    }

    fn wait_healthy(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(self.http) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.write_all(
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                );
                let mut reply = String::new();
                let _ = stream.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.1 200") {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `http://127.0.0.1:<ingress port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `http://127.0.0.1:<admin port><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// Runs the real `shoal` CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(shoal_bin())
            .args(args)
            .env("SHOAL_API", self.api.to_string())
            .env("SHOAL_TOKEN", &self.token)
            .env_remove("SHOAL_DATA_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run the shoal CLI")
    }

    /// Runs the CLI and insists that it succeeds; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "`shoal {}` failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node still running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().expect("wait for shoal")
    }

    /// Waits up to `timeout` for the process to exit by itself (after a signal already sent);
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let child = self.child.as_mut().expect("node still running");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    /// Everything the node printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.remove_containers_on_drop {
            remove_containers(&self.name);
        }
    }
}

/// An HTTP client that never uses a proxy and resolves `*.localhost` to loopback.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// Builds a `tar.zst` bundle from `(path, contents)` pairs, as `shoal deploy` would.
pub fn bundle_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, *contents)
            .expect("append");
    }
    zstd::encode_all(&tar.into_inner().expect("finish tar")[..], 3).expect("zstd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_is_found_for_tests_bins_and_examples() {
        for exe in [
            "/w/target/release/deps/static_apps-0123abcd",
            "/w/target/release/bench",
            "/w/target/release/examples/demo",
        ] {
            assert_eq!(
                profile_dir_of(Path::new(exe)),
                Some(Path::new("/w/target/release")),
                "{exe}"
            );
        }
    }
}
