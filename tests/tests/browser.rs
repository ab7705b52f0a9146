//! A real browser against a real node: headless Chromium loads the example dashboard under the
//! path prefix (`/apps/dashboard/`, where Shoal rewrites the HTML's absolute links) and under
//! its own host (`dashboard.localhost`, served as is). The page's script writes
//! `ready rows:4 logo:ok css:ok` only when the data, the logo and the stylesheet all loaded.
//!
//! Needs `chromium` on PATH (`scripts/setup.sh` installs it). Without it the test is skipped
//! with a visible line, or fails when `CI=true`.

use std::cell::Cell;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_tests::{examples_dir, TestNode};

/// What the dashboard's `assets/app.js` writes into `<p id="status">` when everything loaded.
const READY: &str = "ready rows:4 logo:ok css:ok";

/// How long one Chromium run may take before it is killed.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn dashboard_loads_in_headless_chromium_by_prefix_and_by_host() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("node"));
    let app = examples_dir().join("dashboard");
    node.cli_ok(&["deploy", app.to_str().expect("utf-8 path")]);
    let port = node.http.port();

    let browser = Chromium {
        bin: chromium,
        work: dir.path().to_owned(),
        runs: Cell::new(0),
    };
    for url in [
        node.url("/apps/dashboard/"),
        format!("http://dashboard.localhost:{port}/"),
    ] {
        let dom = browser.dump_dom(&url);
        assert!(
            dom.contains(READY),
            "{url}: the page did not report `{READY}`; its status line: {:?}\nnode log:\n{}",
            status_line(&dom),
            node.log()
        );
    }

    let shot = dir.path().join("shot.png");
    browser.screenshot(&node.url("/apps/dashboard/"), &shot);
    let png = std::fs::read(&shot).expect("read the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    assert!(
        png.len() > 5 * 1024,
        "the screenshot is only {} bytes; a rendered dashboard is larger",
        png.len()
    );
}

/// `chromium` from PATH; `None` (after saying so) when it is missing, unless `CI=true`.
fn chromium_or_skip() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromium"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not installed; run scripts/setup.sh (as root) to install it"
        );
        // Straight to stderr, past the test harness's capture, so the skip shows in every run.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: chromium not installed (run scripts/setup.sh)"
        );
    }
    found
}

/// Runs headless Chromium, each run with its own profile under `work`.
struct Chromium {
    bin: PathBuf,
    work: PathBuf,
    runs: Cell<u32>,
}

impl Chromium {
    /// The DOM after the page's scripts ran (up to 5 s of virtual time).
    fn dump_dom(&self, url: &str) -> String {
        let out = self.run("dump-dom", &["--dump-dom", url]);
        String::from_utf8(out).expect("the DOM is utf-8")
    }

    /// Saves a 1000x700 screenshot of `url` to `png`.
    fn screenshot(&self, url: &str, png: &Path) {
        let shot = format!("--screenshot={}", png.display());
        self.run("screenshot", &[&shot, "--window-size=1000,700", url]);
        assert!(png.is_file(), "chromium wrote no screenshot for {url}");
    }

    /// Runs Chromium with `args` under a deadline and returns its stdout. Its stderr (noisy:
    /// D-Bus, GPU) is kept only to explain a failure.
    fn run(&self, name: &str, args: &[&str]) -> Vec<u8> {
        let run = self.runs.get() + 1;
        self.runs.set(run);
        let run_dir = self.work.join(format!("chromium-{run}-{name}"));
        std::fs::create_dir_all(&run_dir).expect("create the run dir");
        let stdout_path = run_dir.join("stdout");
        let stderr_path = run_dir.join("stderr");
        let stdout = std::fs::File::create(&stdout_path).expect("create stdout file");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let mut child = Command::new(&self.bin)
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            .args(["--no-first-run", "--no-default-browser-check"])
            .args(["--disable-dev-shm-usage", "--no-proxy-server"])
            .arg(format!(
                "--user-data-dir={}",
                run_dir.join("profile").display()
            ))
            .arg("--virtual-time-budget=5000")
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so a timeout kills the renderers too.
            .process_group(0)
            .spawn()
            .expect("spawn chromium");
        let deadline = Instant::now() + CHROMIUM_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll chromium") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr_tail = || {
            let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        match status {
            None => {
                // The whole group: the launcher and every process it started. (`--` is needed,
                // or procps's kill takes the negative group id for an option.)
                let _ = Command::new("kill")
                    .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium {args:?} did not finish within {CHROMIUM_DEADLINE:?}; stderr:\n{}",
                    stderr_tail()
                );
            }
            Some(status) => assert!(
                status.success(),
                "chromium {args:?} failed ({status}); stderr:\n{}",
                stderr_tail()
            ),
        }
        std::fs::read(&stdout_path).expect("read chromium's stdout")
    }
}

/// The `<p id="status">` element of a dumped DOM, for failure messages.
fn status_line(dom: &str) -> &str {
    dom.lines()
        .find(|line| line.contains("id=\"status\""))
        .map(str::trim)
        .unwrap_or("(no status element in the DOM)")
}
