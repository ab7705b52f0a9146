//! [`ContainerRuntime`] as plain child processes of the node, for machines without Docker.
//!
//! **This runtime does not isolate anything.** An instance is an ordinary process running as
//! the node's own user, with the node's filesystem, network and privileges: it can read and
//! write whatever the node can, reach every other app and the node's admin and cluster ports,
//! and listen on any interface (an app that binds `0.0.0.0` is reachable from the network,
//! not only through the node). Memory, CPU, pids and `/tmp` limits in [`InstanceSpec`] are
//! not enforced, and `oom_killed` is always false. It exists so Shoal's quick start works
//! anywhere; run only code you trust with it. Production nodes use [`super::docker`].
//!
//! It mirrors the Docker runtime so the worker above cannot tell the difference:
//! - `create` records the spec under a new id `proc-<n>`; nothing runs yet.
//! - `start` spawns `spec.command` (`argv[0]` looked up on the node's `PATH`) in
//!   `spec.release_dir`, in a process group of its own, with a clean environment: the node's
//!   `PATH`, `HOME` at the temporary directory, `spec.env`, and, for an app with a port, `PORT`
//!   set to a loopback port that was free when the instance started. Stdout and stderr go to
//!   an in-memory ring of the last [`LOG_LINES`] lines.
//! - `pause`/`unpause` send SIGSTOP/SIGCONT to the group; `stop` sends SIGTERM, then SIGKILL
//!   after the grace. When the group's leader exits, whatever it left in its group is killed,
//!   as when a container's PID 1 exits.
//! - Nothing survives the node: instances live in memory only, dropping the runtime kills every
//!   process it started, and after a restart [`ContainerRuntime::list`] is empty.
//!
//! Signals reach a whole group through the `kill` program on the node's `PATH` (procps,
//! util-linux or busybox), which keeps libc out of the dependencies.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    tail_text, ContainerRuntime, InstanceInfo, InstanceSpec, InstanceState, JobOutcome,
    RuntimeError,
};

/// How many lines of output each instance keeps.
pub const LOG_LINES: usize = 1000;
/// Longer lines are split, so one endless line cannot take the node's memory.
const MAX_LINE_BYTES: usize = 8 * 1024;
/// How much of a job's output `run_to_completion` keeps.
const LOG_TAIL_BYTES: usize = 4096;
/// How long `remove` lets a running instance shut down before killing it.
const REMOVE_GRACE: Duration = Duration::from_secs(1);
/// How long to wait for a killed process to be reported as exited.
const KILL_SETTLE: Duration = Duration::from_secs(10);
/// How long a finished job's output may take to drain from its pipes.
const LOG_DRAIN: Duration = Duration::from_secs(2);

/// Runs instances as plain child processes of the node. No isolation: for machines without Docker.
pub struct ProcessRuntime {
    node: String,
    next_id: AtomicU64,
    entries: Mutex<HashMap<String, Entry>>,
}

/// One instance: its spec, its output, and its process once started.
struct Entry {
    /// Creation order, so `list` is stable.
    seq: u64,
    spec: InstanceSpec,
    logs: Arc<Mutex<LogRing>>,
    run: Option<Run>,
}

/// The latest process of an instance.
struct Run {
    /// The child's pid, which is also its process group id.
    pgid: u32,
    addr: Option<SocketAddr>,
    paused: bool,
    /// Set once, when the group leader has exited and its group has been killed.
    exit_rx: watch::Receiver<Option<Exit>>,
    /// Owns the [`Child`]; aborting it kills the child (`kill_on_drop`).
    waiter: JoinHandle<()>,
}

/// How a process ended.
#[derive(Clone, Copy, Debug)]
struct Exit {
    /// The exit code, or 128 + the signal that killed it (as Docker reports it).
    code: Option<i64>,
}

/// What the async methods need from a started instance, copied out under the lock.
struct RunHandle {
    pgid: u32,
    paused: bool,
    exit_rx: watch::Receiver<Option<Exit>>,
}

impl RunHandle {
    fn exited(&self) -> bool {
        self.exit_rx.borrow().is_some()
    }
}

/// The last [`LOG_LINES`] lines of an instance's output, and a feed of new ones.
#[derive(Default)]
struct LogRing {
    /// Each line ends in `\n`.
    lines: VecDeque<Bytes>,
    /// The feed of the current process; it closes when both of its pipes have closed.
    live: Option<broadcast::WeakSender<Bytes>>,
}

impl LogRing {
    fn push(&mut self, line: Bytes, line_tx: &broadcast::Sender<Bytes>) {
        if self.lines.len() == LOG_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.clone());
        // No follower is not an error.
        let _ = line_tx.send(line);
    }

    fn tail(&self, count: usize) -> Vec<Bytes> {
        let skip = self.lines.len().saturating_sub(count);
        self.lines.iter().skip(skip).cloned().collect()
    }

    /// New lines from now on, or `None` when no process is writing any more.
    fn subscribe(&self) -> Option<broadcast::Receiver<Bytes>> {
        Some(self.live.as_ref()?.upgrade()?.subscribe())
    }
}

impl ProcessRuntime {
    /// A runtime for node `node`; every instance it makes belongs to that node.
    pub fn new(node: String) -> Self {
        Self {
            node,
            next_id: AtomicU64::new(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.entries)
    }

    /// The current process of `id`, or `None` when it was never started.
    fn run_handle(&self, id: &str) -> Result<Option<RunHandle>, RuntimeError> {
        let entries = self.entries();
        let entry = entries.get(id).ok_or_else(|| not_found(id))?;
        Ok(entry.run.as_ref().map(|run| RunHandle {
            pgid: run.pgid,
            paused: run.paused,
            exit_rx: run.exit_rx.clone(),
        }))
    }

    /// The process of `id` if it is running or paused; an error naming `action` otherwise.
    fn live_run(&self, id: &str, action: &str) -> Result<RunHandle, RuntimeError> {
        match self.run_handle(id)? {
            Some(run) if !run.exited() => Ok(run),
            _ => Err(not_running(id, action)),
        }
    }

    /// Records a pause or thaw, unless the instance has been restarted since.
    fn set_paused(&self, id: &str, pgid: u32, paused: bool) {
        let mut entries = self.entries();
        if let Some(run) = entries.get_mut(id).and_then(|entry| entry.run.as_mut()) {
            if run.pgid == pgid {
                run.paused = paused;
            }
        }
    }

    fn log_ring(&self, id: &str) -> Result<Arc<Mutex<LogRing>>, RuntimeError> {
        let entries = self.entries();
        let entry = entries.get(id).ok_or_else(|| not_found(id))?;
        Ok(entry.logs.clone())
    }

    fn info(&self, id: &str, entry: &Entry) -> InstanceInfo {
        let state = match &entry.run {
            None => InstanceState::Created,
            Some(run) => match *run.exit_rx.borrow() {
                Some(exit) => InstanceState::Exited {
                    exit_code: exit.code,
                    oom_killed: false,
                },
                None if run.paused => InstanceState::Paused,
                None => InstanceState::Running,
            },
        };
        let addr = match state {
            InstanceState::Running | InstanceState::Paused => {
                entry.run.as_ref().and_then(|run| run.addr)
            }
            _ => None,
        };
        InstanceInfo {
            id: id.to_string(),
            app: entry.spec.app.clone(),
            release: entry.spec.release,
            digest: entry.spec.digest.clone(),
            node: self.node.clone(),
            state,
            addr,
        }
    }

    /// Starts the job and waits for it to exit, killing its group at `timeout`.
    async fn run_started_job(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<JobOutcome, RuntimeError> {
        self.start(id).await?;
        let started = Instant::now();
        let run = self
            .run_handle(id)?
            .ok_or_else(|| not_running(id, "wait for"))?;
        let mut exit_rx = run.exit_rx.clone();
        let finished = tokio::time::timeout(timeout, exit_rx.wait_for(Option::is_some))
            .await
            .is_ok();
        let (exit_code, timed_out) = if finished {
            let exit = *exit_rx.borrow();
            (exit.and_then(|exit| exit.code), false)
        } else {
            signal_group(run.pgid, "KILL").await?;
            // The output is only complete once the group is gone.
            let _ = tokio::time::timeout(KILL_SETTLE, exit_rx.wait_for(Option::is_some)).await;
            (None, true)
        };
        let duration = started.elapsed();
        let log_tail = self.output_tail(id).await?;
        Ok(JobOutcome {
            exit_code,
            timed_out,
            oom_killed: false,
            duration,
            log_tail,
        })
    }

    /// The last [`LOG_TAIL_BYTES`] of the output, once the pipes have closed (or soon after).
    async fn output_tail(&self, id: &str) -> Result<String, RuntimeError> {
        let ring = self.log_ring(id)?;
        let line_rx = lock(&ring).subscribe();
        if let Some(mut line_rx) = line_rx {
            let drained =
                async { while !matches!(line_rx.recv().await, Err(RecvError::Closed)) {} };
            let _ = tokio::time::timeout(LOG_DRAIN, drained).await;
        }
        let ring = lock(&ring);
        let mut kept = Vec::new();
        let mut size = 0;
        for line in ring.lines.iter().rev() {
            if size >= LOG_TAIL_BYTES {
                break;
            }
            size += line.len();
            kept.push(line);
        }
        let output: Vec<u8> = kept
            .into_iter()
            .rev()
            .flat_map(|line| line.iter().copied())
            .collect();
        Ok(tail_text(&output, LOG_TAIL_BYTES))
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        let entries = self
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for run in entries.values().filter_map(|entry| entry.run.as_ref()) {
            if run.exit_rx.borrow().is_none() {
                kill_group_now(run.pgid);
                run.waiter.abort();
            }
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for ProcessRuntime {
    async fn create(&self, spec: &InstanceSpec) -> Result<String, RuntimeError> {
        validate_spec(spec)?;
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("proc-{seq}");
        let entry = Entry {
            seq,
            spec: spec.clone(),
            logs: Arc::default(),
            run: None,
        };
        self.entries().insert(id.clone(), entry);
        tracing::debug!(instance = %id, app = %spec.app, release = spec.release, "process instance created");
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<Option<SocketAddr>, RuntimeError> {
        let thaw = {
            let mut entries = self.entries();
            let entry = entries.get_mut(id).ok_or_else(|| not_found(id))?;
            match &entry.run {
                Some(run) if run.exit_rx.borrow().is_none() && run.paused => run.addr,
                Some(run) if run.exit_rx.borrow().is_none() => return Ok(run.addr),
                // Spawned under the lock so two racing starts cannot both spawn.
                _ => {
                    let run = spawn_run(&entry.spec, &entry.logs)?;
                    let addr = run.addr;
                    tracing::debug!(instance = %id, pid = run.pgid, addr = ?addr, "process started");
                    entry.run = Some(run);
                    return Ok(addr);
                }
            }
        };
        // Starting a paused instance thaws it, as the Docker runtime does.
        self.unpause(id).await?;
        Ok(thaw)
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let run = self.live_run(id, "pause")?;
        if run.paused {
            return Ok(());
        }
        if !signal_group(run.pgid, "STOP").await? {
            return Err(not_running(id, "pause"));
        }
        self.set_paused(id, run.pgid, true);
        Ok(())
    }

    async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        let run = self.live_run(id, "unpause")?;
        if !run.paused {
            return Ok(());
        }
        if !signal_group(run.pgid, "CONT").await? {
            return Err(not_running(id, "unpause"));
        }
        self.set_paused(id, run.pgid, false);
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let run = match self.run_handle(id)? {
            Some(run) if !run.exited() => run,
            // Never started, or already exited: nothing to stop.
            _ => return Ok(()),
        };
        // A stopped process would not act on SIGTERM, and deserves its grace.
        if run.paused {
            signal_group(run.pgid, "CONT").await?;
        }
        signal_group(run.pgid, "TERM").await?;
        let mut exit_rx = run.exit_rx.clone();
        let exited = tokio::time::timeout(grace, exit_rx.wait_for(Option::is_some))
            .await
            .is_ok();
        if !exited {
            signal_group(run.pgid, "KILL").await?;
            let killed = tokio::time::timeout(KILL_SETTLE, exit_rx.wait_for(Option::is_some)).await;
            if killed.is_err() {
                return Err(RuntimeError::Engine(format!(
                    "process instance `{id}` (pid {}) did not exit after SIGKILL",
                    run.pgid
                )));
            }
        }
        self.set_paused(id, run.pgid, false);
        tracing::debug!(instance = %id, pid = run.pgid, "process stopped");
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        match self.stop(id, REMOVE_GRACE).await {
            Ok(()) => {}
            Err(RuntimeError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        }
        self.entries().remove(id);
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<InstanceInfo, RuntimeError> {
        let entries = self.entries();
        let entry = entries.get(id).ok_or_else(|| not_found(id))?;
        Ok(self.info(id, entry))
    }

    async fn list(&self, node: &str) -> Result<Vec<InstanceInfo>, RuntimeError> {
        if node != self.node {
            return Ok(Vec::new());
        }
        let entries = self.entries();
        let mut ordered: Vec<_> = entries.iter().collect();
        ordered.sort_by_key(|(_, entry)| entry.seq);
        Ok(ordered
            .into_iter()
            .map(|(id, entry)| self.info(id, entry))
            .collect())
    }

    async fn logs(
        &self,
        id: &str,
        tail: usize,
        follow: bool,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, RuntimeError> {
        let ring = self.log_ring(id)?;
        // Taken together, so no line is both in the backlog and in the feed, or in neither.
        let (backlog, line_rx) = {
            let ring = lock(&ring);
            (
                ring.tail(tail),
                if follow { ring.subscribe() } else { None },
            )
        };
        let backlog = stream::iter(backlog.into_iter().map(Ok));
        let Some(line_rx) = line_rx else {
            return Ok(backlog.boxed());
        };
        let feed = stream::unfold(line_rx, |mut line_rx| async move {
            loop {
                match line_rx.recv().await {
                    Ok(line) => return Some((Ok(line), line_rx)),
                    // A follower that falls behind misses lines rather than slowing the app.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        Ok(backlog.chain(feed).boxed())
    }

    async fn run_to_completion(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<JobOutcome, RuntimeError> {
        let id = self.create(spec).await?;
        let outcome = self.run_started_job(&id, timeout).await;
        let removed = self.remove(&id).await;
        if let Err(err) = &removed {
            tracing::warn!(instance = %id, error = %err, "job process not removed");
        }
        let outcome = outcome?;
        removed?;
        Ok(outcome)
    }
}

/// What Docker would refuse at create: a bad environment, no command, no release directory.
fn validate_spec(spec: &InstanceSpec) -> Result<(), RuntimeError> {
    if spec.command.is_empty() {
        return Err(RuntimeError::Engine(format!(
            "app `{}` has no command to run",
            spec.app
        )));
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(RuntimeError::Engine(format!(
                "environment variable name `{key}` is not valid"
            )));
        }
    }
    if !spec.release_dir.is_dir() {
        return Err(RuntimeError::Engine(format!(
            "release directory {} does not exist",
            spec.release_dir.display()
        )));
    }
    Ok(())
}

/// Spawns the instance's process with its output pumped into `logs`. Needs a Tokio runtime.
fn spawn_run(spec: &InstanceSpec, logs: &Arc<Mutex<LogRing>>) -> Result<Run, RuntimeError> {
    validate_spec(spec)?;
    let port = spec.port.map(|_| free_loopback_port()).transpose()?;
    let mut child = command(spec, port)
        .spawn()
        .map_err(|err| spawn_error(&spec.command[0], &err))?;
    let pgid = child.id().ok_or_else(|| {
        RuntimeError::Engine(format!("`{}` exited before it had a pid", spec.command[0]))
    })?;
    let (line_tx, _) = broadcast::channel(LOG_LINES);
    lock(logs).live = Some(line_tx.downgrade());
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump_lines(stdout, logs.clone(), line_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump_lines(stderr, logs.clone(), line_tx));
    }
    let (exit_tx, exit_rx) = watch::channel(None);
    let waiter = tokio::spawn(wait_for_exit(child, pgid, exit_tx));
    Ok(Run {
        pgid,
        addr: port.map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        paused: false,
        exit_rx,
        waiter,
    })
}

fn command(spec: &InstanceSpec, port: Option<u16>) -> Command {
    let (program, args) = spec.command.split_first().expect("validated: a command");
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&spec.release_dir)
        .env_clear();
    // Setting PATH here also makes it the one `program` is looked up on.
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.env("HOME", std::env::temp_dir());
    command.envs(&spec.env);
    // Set last, so it replaces the app's own PORT: the runtime chose the port.
    if let Some(port) = port {
        command.env("PORT", port.to_string());
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own group, so signals reach whatever it starts too.
        .process_group(0);
    command
}

/// A loopback port free right now. Another process may take it before the app binds it; the
/// app then fails to listen and exits, which the worker handles as any crash.
fn free_loopback_port() -> Result<u16, RuntimeError> {
    let unavailable = |err: io::Error| {
        RuntimeError::Engine(format!(
            "cannot find a free port on 127.0.0.1: {}",
            io_message(&err)
        ))
    };
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(unavailable)?;
    Ok(listener.local_addr().map_err(unavailable)?.port())
}

/// Copies one pipe into the ring line by line until it closes.
async fn pump_lines(
    pipe: impl AsyncRead + Unpin,
    logs: Arc<Mutex<LogRing>>,
    line_tx: broadcast::Sender<Bytes>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) => break,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                lock(&logs).push(Bytes::copy_from_slice(&line), &line_tx);
            }
            Err(error) => {
                tracing::debug!(%error, "instance output unreadable");
                break;
            }
        }
    }
}

/// Reaps the group leader, kills what it left behind, then reports the exit.
async fn wait_for_exit(mut child: Child, pgid: u32, exit_tx: watch::Sender<Option<Exit>>) {
    let code = match child.wait().await {
        Ok(status) => exit_code(status),
        Err(error) => {
            tracing::warn!(pid = pgid, %error, "cannot wait for an instance process");
            None
        }
    };
    // As when a container's PID 1 exits, nothing it started outlives it. The group id cannot
    // have been reused while any member lives; once none does, the kill finds no one.
    if let Err(error) = signal_group(pgid, "KILL").await {
        tracing::warn!(pid = pgid, %error, "cannot kill what an instance left behind");
    }
    exit_tx.send_replace(Some(Exit { code }));
}

/// The exit code, or 128 + the signal number for a process killed by a signal (as Docker).
fn exit_code(status: ExitStatus) -> Option<i64> {
    status
        .code()
        .map(i64::from)
        .or_else(|| status.signal().map(|signal| 128 + i64::from(signal)))
}

/// Sends `signal` (`STOP`, `TERM`...) to process group `pgid`; false when no process got it.
async fn signal_group(pgid: u32, signal: &str) -> Result<bool, RuntimeError> {
    // `kill -- -1` would signal every process the node may signal.
    if pgid <= 1 {
        return Ok(false);
    }
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|err| {
            RuntimeError::Engine(format!(
                "cannot run `kill` to signal an instance: {}",
                io_message(&err)
            ))
        })?;
    Ok(status.success())
}

/// SIGKILL to group `pgid` without a Tokio runtime (for `Drop`).
fn kill_group_now(pgid: u32) {
    if pgid <= 1 {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn spawn_error(program: &str, err: &io::Error) -> RuntimeError {
    let hint = if err.kind() == io::ErrorKind::NotFound {
        " (is it installed and on the node's PATH?)"
    } else {
        ""
    };
    RuntimeError::Engine(format!("cannot run `{program}`: {}{hint}", io_message(err)))
}

/// The OS's description of `err`, without Rust's ` (os error N)` suffix.
fn io_message(err: &io::Error) -> String {
    let text = err.to_string();
    match text.split_once(" (os error ") {
        Some((message, _)) => message.to_string(),
        None => text,
    }
}

fn not_found(id: &str) -> RuntimeError {
    RuntimeError::NotFound(id.to_string())
}

fn not_running(id: &str, action: &str) -> RuntimeError {
    RuntimeError::Engine(format!(
        "cannot {action} process instance `{id}`: it is not running"
    ))
}

/// Locks `mutex`, recovering from poison: the guarded data stays consistent at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
