//! The baseline: a throwaway nginx serving a directory on a free loopback port, as one
//! foreground process (no master, one worker) with its own config, logs and temp dirs in a
//! work dir. It never touches the system nginx's config or port 80.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::free_port;

/// Where Debian puts nginx; root's PATH has it, other users' often do not.
const DEBIAN_NGINX: &str = "/usr/sbin/nginx";

/// An nginx process, stopped when dropped.
pub struct Nginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx serving `root` with its files in `work_dir` and waits until it accepts
    /// connections.
    pub fn start(work_dir: &Path, root: &Path) -> Result<Self> {
        std::fs::create_dir_all(work_dir)?;
        let error_log = work_dir.join("error.log");
        // A port picked free can be taken before nginx binds it; try a few.
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let config = work_dir.join("nginx.conf");
            std::fs::write(&config, config_text(work_dir, root, addr))?;
            let child = Command::new(program())
                .arg("-p")
                .arg(work_dir)
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(&error_log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start nginx (scripts/setup.sh installs it)")?;
            let mut nginx = Self { child, addr };
            if nginx.wait_listening(Duration::from_secs(10)) {
                return Ok(nginx);
            }
        }
        let log = std::fs::read_to_string(&error_log).unwrap_or_default();
        bail!("nginx did not start; its error log:\n{log}")
    }

    fn wait_listening(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(self.addr).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id; with no master process this is the process that serves.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nginx version: nginx/1.22.1` reduced to `nginx/1.22.1`.
pub fn version() -> Result<String> {
    let output = Command::new(program())
        .arg("-v")
        .output()
        .context("run nginx -v")?;
    // nginx prints its version on stderr.
    let text = String::from_utf8_lossy(&output.stderr);
    let line = text.lines().next().unwrap_or_default().trim();
    Ok(line
        .strip_prefix("nginx version: ")
        .unwrap_or(line)
        .to_owned())
}

fn program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("nginx").is_file()))
        .unwrap_or(false);
    if on_path {
        PathBuf::from("nginx")
    } else {
        PathBuf::from(DEBIAN_NGINX)
    }
}

/// A minimal static-file config: one worker, no access log, sendfile, the content types the
/// example apps use. Temp dirs live in `work_dir` so nothing outside it is written.
fn config_text(work_dir: &Path, root: &Path, addr: SocketAddr) -> String {
    let work = work_dir.display();
    let root = root.display();
    format!(
        r#"# Written by the shoal benchmark harness; see BENCHMARKS.md.
daemon off;
master_process off;
worker_processes 1;
pid "{work}/nginx.pid";
error_log "{work}/error.log" warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    sendfile on;
    client_body_temp_path "{work}/client_body";
    proxy_temp_path "{work}/proxy";
    fastcgi_temp_path "{work}/fastcgi";
    uwsgi_temp_path "{work}/uwsgi";
    scgi_temp_path "{work}/scgi";

    types {{
        text/html html htm;
        text/css css;
        text/javascript js;
        application/json json;
        image/svg+xml svg;
    }}
    default_type application/octet-stream;

    server {{
        listen {addr};
        root "{root}";
        index index.html;
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_serves_the_root_on_the_address_with_one_worker_and_no_access_log() {
        let text = config_text(
            Path::new("/tmp/work"),
            Path::new("/srv/app"),
            "127.0.0.1:4321".parse().unwrap(),
        );
        for line in [
            "daemon off;",
            "master_process off;",
            "worker_processes 1;",
            "access_log off;",
            "sendfile on;",
            "listen 127.0.0.1:4321;",
            "root \"/srv/app\";",
            "pid \"/tmp/work/nginx.pid\";",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }
}
