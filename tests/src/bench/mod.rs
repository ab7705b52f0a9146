//! What the benchmark scenarios (`src/bin/bench.rs`) share. Every figure is recorded with the
//! conditions it was measured under; BENCHMARKS.md explains how to read them.
//!
//! Layout:
//! - [`wrk`]: load runs with `wrk`, interleaved across targets, and reading its report.
//! - [`nginx`]: the baseline, a throwaway nginx serving a directory on a free loopback port.
//! - [`report`]: medians, the markdown table and the JSON rows.
//! - [`failover`]: the `failover` scenario, the raft leader killed and the time until a
//!   survivor acknowledges a deploy.
//! - [`forwarding`]: the `forwarding` scenario, a service app reached directly, through the
//!   local and a remote ingress (the QUIC hop), and through nginx `proxy_pass`.
//! - [`wake`]: the `wake` scenario, service apps woken from paused and stopped next to a bare
//!   `docker start`.
//! - this file: the conditions of a run, a process's resident memory and CPU time, one-off
//!   requests that check a target serves what it should before it is loaded.

pub mod failover;
pub mod forwarding;
pub mod nginx;
pub mod report;
pub mod wake;
pub mod wrk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::{http_client, workspace_root};

/// Where results are written (`bench-results/` in the workspace; git ignores it).
pub fn results_dir() -> PathBuf {
    workspace_root().join("bench-results")
}

/// Writes `value` as pretty JSON to `bench-results/<name>.json`; returns the path.
pub fn write_results(name: &str, value: &Value) -> Result<PathBuf> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// The machine and build a run happened on.
#[derive(Clone, Debug)]
pub struct Conditions {
    /// `date -u`, as `2025-01-31T12:00:00Z`.
    pub date_utc: String,
    /// `nproc`.
    pub nproc: String,
    /// The first `model name` in /proc/cpuinfo.
    pub cpu_model: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// `PRETTY_NAME` from /etc/os-release.
    pub os: String,
    /// The cargo profile the `shoal` binary was built with.
    pub build_profile: String,
    /// `git describe --always --dirty` of the workspace.
    pub commit: String,
    /// /proc/loadavg when the conditions were gathered: other work on a shared machine shows here.
    pub load_average: String,
}

impl Conditions {
    /// Reads the conditions now; a figure that cannot be read is recorded as `unknown`.
    pub fn gather(build_profile: &str) -> Self {
        Self {
            date_utc: command_line_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            nproc: command_line_output("nproc", &[]),
            cpu_model: cpu_model(),
            kernel: command_line_output("uname", &["-r"]),
            os: os_name(),
            build_profile: build_profile.to_owned(),
            commit: git_describe(),
            load_average: load_average(),
        }
    }

    /// The conditions as a JSON object, for scenarios to add their own fields to.
    pub fn to_json(&self) -> Map<String, Value> {
        let value = json!({
            "date_utc": self.date_utc,
            "nproc": self.nproc,
            "cpu_model": self.cpu_model,
            "kernel": self.kernel,
            "os": self.os,
            "build_profile": self.build_profile,
            "commit": self.commit,
            "load_average_at_start": self.load_average,
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal"),
        }
    }

    /// One line for a results section, e.g. `2025-01-31T12:00:00Z, 2 x Intel ..., ...`.
    pub fn summary_line(&self) -> String {
        format!(
            "{}; {} CPUs ({}); {}; kernel {}; shoal {} build at {}",
            self.date_utc,
            self.nproc,
            self.cpu_model,
            self.os,
            self.kernel,
            self.build_profile,
            self.commit
        )
    }
}

/// /proc/loadavg's first three fields.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The resident memory (VmRSS) of process `pid`, in KiB.
pub fn resident_memory_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_vm_rss_kib(&status).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    // "VmRSS:	   12345 kB"
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU time (user and system, all threads) process `pid` has used so far. Read around a
/// run, it tells what each request cost the server, which a busy shared machine disturbs far
/// less than requests/s.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("no utime/stime in {path}"))?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_sec() as f64,
    ))
}

/// utime + stime, fields 14 and 15 of /proc/<pid>/stat. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn clock_ticks_per_sec() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // 100 on every Linux build in practice; asked anyway, as procfs(5) says to.
        command_line_output("getconf", &["CLK_TCK"])
            .parse()
            .unwrap_or(100)
    })
}

/// What a target must answer before it is loaded, so a benchmark never measures 404s or the
/// wrong body.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Status 200 and exactly these bytes.
    Bytes(Vec<u8>),
    /// Status 200, a body other than `original`, containing `needle` (HTML rewritten under a
    /// path prefix).
    RewrittenFrom {
        /// The file as it is on disk.
        original: Vec<u8>,
        /// A string only the rewritten body holds, e.g. `/apps/dashboard/assets/`.
        needle: String,
    },
}

/// GETs `target` once and checks the answer against `expect`.
pub fn check_target(target: &wrk::Target, expect: &Expect) -> Result<()> {
    let (status, body) = get_once(&target.url, target.host.as_deref())?;
    if status != 200 {
        bail!("{}: {} answered status {status}", target.label, target.url);
    }
    let fits = match expect {
        Expect::Bytes(bytes) => body == *bytes,
        Expect::RewrittenFrom { original, needle } => {
            body != *original && String::from_utf8_lossy(&body).contains(needle.as_str())
        }
    };
    if !fits {
        bail!(
            "{}: {} did not answer the expected body; it answered:\n{}",
            target.label,
            target.url,
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

fn get_once(url: &str, host: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut request = http_client().get(url);
        if let Some(host) = host {
            request = request.header(reqwest::header::HOST, host);
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response.bytes().await?.to_vec();
        Ok((status, body))
    })
}

/// A file of the example apps, read whole (they are small).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

fn command_line_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("PRETTY_NAME="))
                .map(|name| name.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn git_describe() -> String {
    let root = workspace_root();
    let root = root.to_string_lossy();
    command_line_output(
        "git",
        &[
            "-C",
            &root,
            "describe",
            "--always",
            "--dirty",
            "--abbrev=12",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tshoal\nVmPeak:\t  300000 kB\nVmRSS:\t   12345 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (w) 1) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 70 0 0 20 0 5";
        assert_eq!(parse_cpu_ticks(stat), Some(320));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let before = cpu_time(std::process::id()).unwrap();
        let spin_until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < spin_until {}
        assert!(cpu_time(std::process::id()).unwrap() > before);
    }

    #[test]
    fn own_resident_memory_is_readable() {
        let kib = resident_memory_kib(std::process::id()).unwrap();
        assert!(kib > 0);
    }
}
