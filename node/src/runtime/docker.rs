//! [`ContainerRuntime`] on the Docker Engine API (bollard).
//!
//! Every instance is a hardened container (DESIGN.md §5): read-only rootfs, the release
//! mounted read-only at `/app`, a capped `noexec` tmpfs at `/tmp`, uid 65534, no capabilities,
//! `no-new-privileges`, Docker's default seccomp profile, memory/CPU/pids limits and `tini` as
//! PID 1. Containers sit on the `shoal-apps` bridge network with inter-container traffic
//! disabled and publish no ports: the node reaches an app at the container's own IP on that
//! network. All state Shoal needs after a restart (app, release, node, port) lives in labels.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    EndpointSettings, HostConfig, HostConfigLogConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use tokio::time::Instant;

use super::{
    labels, tail_text, ContainerRuntime, InstanceInfo, InstanceSpec, InstanceState, JobOutcome,
    RuntimeError,
};

/// The bridge network every app container joins.
const NETWORK: &str = "shoal-apps";
/// The label holding the app's port, so a restarted node can rebuild addresses.
const PORT_LABEL: &str = "io.shoal.port";
/// Docker's bridge driver option that turns inter-container traffic off.
const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";
/// The uid:gid every app runs as (`nobody`).
const APP_USER: &str = "65534:65534";
/// How much of a job's output `run_to_completion` keeps.
const LOG_TAIL_BYTES: usize = 4096;
/// How many lines to ask Docker for when collecting a job's log tail.
const LOG_TAIL_LINES: &str = "200";
/// How long to wait for a killed job to be reported as exited.
const KILL_SETTLE: Duration = Duration::from_secs(10);

/// Whether a container serves requests or runs to completion (the `role` label).
#[derive(Clone, Copy)]
enum Role {
    Service,
    Job,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Service => "service",
            Role::Job => "job",
        }
    }
}

/// Runs instances as hardened Docker containers.
pub struct DockerRuntime {
    docker: Docker,
    image: String,
    network: String,
    /// Ports of the instances this runtime created; the port label is the fallback.
    ports: Mutex<HashMap<String, u16>>,
    /// Container names must be unique across node restarts, so the suffix mixes a
    /// per-process random seed with a counter.
    name_seed: RandomState,
    name_counter: AtomicU64,
}

impl DockerRuntime {
    /// `image`: the runtime image reference. Creates (if missing) the bridge network
    /// `shoal-apps` with inter-container communication disabled, labelled managed.
    pub async fn new(docker: Docker, image: String) -> Result<Self, RuntimeError> {
        ensure_network(&docker, NETWORK).await?;
        Ok(Self {
            docker,
            image,
            network: NETWORK.to_string(),
            ports: Mutex::new(HashMap::new()),
            name_seed: RandomState::new(),
            name_counter: AtomicU64::new(0),
        })
    }

    /// The network's name (for tests and diagnostics).
    pub fn network(&self) -> &str {
        &self.network
    }

    fn container_name(&self, spec: &InstanceSpec) -> String {
        let count = self.name_counter.fetch_add(1, Ordering::Relaxed);
        let suffix = self.name_seed.hash_one(count) as u32;
        format!(
            "shoal-{}-{}-r{}-{suffix:08x}",
            sanitize_name_part(&spec.node),
            sanitize_name_part(&spec.app),
            spec.release
        )
    }

    async fn create_with_role(
        &self,
        spec: &InstanceSpec,
        role: Role,
    ) -> Result<String, RuntimeError> {
        let body = self.create_body(spec, role)?;
        let name = self.container_name(spec);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|err| create_error(&self.image, err))?;
        if let Some(port) = spec.port {
            self.ports_map().insert(created.id.clone(), port);
        }
        let role = role.label();
        tracing::debug!(container = %name, id = %created.id, role, "container created");
        Ok(created.id)
    }

    fn create_body(
        &self,
        spec: &InstanceSpec,
        role: Role,
    ) -> Result<ContainerCreateBody, RuntimeError> {
        let mut env = Vec::with_capacity(spec.env.len() + 1);
        for (key, value) in &spec.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(RuntimeError::Engine(format!(
                    "environment variable `{key}` is not valid: a name cannot be empty or hold \
                     `=`, and neither a name nor a value can hold a NUL byte"
                )));
            }
            // PORT belongs to the runtime when the app has a port; the app's own would lie.
            if spec.port.is_none() || key != "PORT" {
                env.push(format!("{key}={value}"));
            }
        }
        if let Some(port) = spec.port {
            env.push(format!("PORT={port}"));
        }
        let mut endpoints = HashMap::new();
        endpoints.insert(self.network.clone(), EndpointSettings::default());
        Ok(ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(spec.command.clone()),
            env: Some(env),
            user: Some(APP_USER.to_string()),
            working_dir: Some("/app".to_string()),
            labels: Some(instance_labels(spec, role)),
            host_config: Some(self.host_config(spec)?),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(endpoints),
            }),
            ..Default::default()
        })
    }

    fn host_config(&self, spec: &InstanceSpec) -> Result<HostConfig, RuntimeError> {
        let release_dir = spec.release_dir.to_str().ok_or_else(|| {
            RuntimeError::Engine(format!(
                "release directory {} is not valid UTF-8",
                spec.release_dir.display()
            ))
        })?;
        let memory = i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX);
        let mut tmpfs = HashMap::new();
        // mode=1777: the app runs as uid 65534 and must be able to write its scratch files.
        tmpfs.insert(
            "/tmp".to_string(),
            format!("rw,noexec,nosuid,nodev,mode=1777,size={}", spec.tmp_bytes),
        );
        let mut log_options = HashMap::new();
        log_options.insert("max-size".to_string(), "10m".to_string());
        log_options.insert("max-file".to_string(), "2".to_string());
        Ok(HostConfig {
            // A mount (not a `binds` string) so a path with `:` or `,` cannot change the
            // options, and a missing directory is an error instead of an empty new one.
            mounts: Some(vec![Mount {
                typ: Some(MountType::BIND),
                source: Some(release_dir.to_string()),
                target: Some("/app".to_string()),
                read_only: Some(true),
                ..Default::default()
            }]),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges:true".to_string()]),
            privileged: Some(false),
            memory: Some(memory),
            memory_swap: Some(memory),
            nano_cpus: Some((spec.cpus * 1e9).round() as i64),
            pids_limit: Some(i64::from(spec.pids)),
            init: Some(true),
            network_mode: Some(self.network.clone()),
            ipc_mode: Some("private".to_string()),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(log_options),
            }),
            ..Default::default()
        })
    }

    fn ports_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, u16>> {
        // A poisoned map only ever held plain numbers; keep using it.
        self.ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn inspect_raw(&self, id: &str) -> Result<ContainerInspectResponse, RuntimeError> {
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(|err| engine_error(id, err))
    }

    /// The app's port: remembered since create, or read back from the label after a restart.
    fn known_port(&self, inspected: &ContainerInspectResponse) -> Option<u16> {
        let remembered = inspected
            .id
            .as_ref()
            .and_then(|id| self.ports_map().get(id).copied());
        remembered.or_else(|| {
            inspected
                .config
                .as_ref()?
                .labels
                .as_ref()?
                .get(PORT_LABEL)?
                .parse()
                .ok()
        })
    }

    fn info_from_inspect(&self, id: &str, inspected: ContainerInspectResponse) -> InstanceInfo {
        let labels = inspected
            .config
            .as_ref()
            .and_then(|config| config.labels.clone())
            .unwrap_or_default();
        let full_id = inspected.id.clone().unwrap_or_else(|| id.to_string());
        let port = self.known_port(&inspected);
        let addr = port.and_then(|port| {
            container_ip(&inspected, &self.network).map(|ip| SocketAddr::new(ip, port))
        });
        let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
        InstanceInfo {
            id: full_id,
            app: label(labels::APP),
            release: labels
                .get(labels::RELEASE)
                .and_then(|release| release.parse().ok())
                .unwrap_or(0),
            digest: label(labels::DIGEST),
            node: label(labels::NODE),
            state: instance_state(inspected.state.as_ref()),
            addr,
        }
    }

    /// Starts the job and waits for it to exit, killing it at `timeout`.
    async fn run_started_job(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<JobOutcome, RuntimeError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|err| engine_error(id, err))?;
        let started = Instant::now();
        let (exit_code, timed_out) = match tokio::time::timeout(timeout, self.wait_exit(id)).await {
            Ok(code) => (Some(code?), false),
            Err(_elapsed) => {
                self.kill(id).await?;
                // The tail and the OOM flag are only final once Docker reports the exit.
                let _ = tokio::time::timeout(KILL_SETTLE, self.wait_exit(id)).await;
                (None, true)
            }
        };
        let duration = started.elapsed();
        let oom_killed = self
            .inspect_raw(id)
            .await?
            .state
            .and_then(|state| state.oom_killed)
            .unwrap_or(false);
        let log_tail = self.log_tail(id).await?;
        Ok(JobOutcome {
            exit_code,
            timed_out,
            oom_killed,
            duration,
            log_tail,
        })
    }

    /// Waits until the container is not running; returns its exit code.
    async fn wait_exit(&self, id: &str) -> Result<i64, RuntimeError> {
        let mut waits = Box::pin(self.docker.wait_container(id, None));
        match waits.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error; for a job it is an ordinary end.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(err)) => Err(engine_error(id, err)),
            None => Err(RuntimeError::Engine(format!(
                "the engine ended the wait for `{id}` without an exit code"
            ))),
        }
    }

    async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self.docker.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 409: it exited on its own between the timeout and the kill.
            Err(err) if status_code(&err) == Some(409) => Ok(()),
            Err(err) => Err(engine_error(id, err)),
        }
    }

    /// The last [`LOG_TAIL_BYTES`] of the container's output, starting at a line boundary.
    async fn log_tail(&self, id: &str) -> Result<String, RuntimeError> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(LOG_TAIL_LINES)
            .build();
        let mut frames = Box::pin(self.docker.logs(id, Some(options)));
        let mut buffer = Vec::new();
        while let Some(frame) = frames.next().await {
            buffer.extend_from_slice(&frame.map_err(|err| engine_error(id, err))?.into_bytes());
            // Bound memory on chatty jobs: only the end is kept.
            if buffer.len() > 16 * LOG_TAIL_BYTES {
                buffer.drain(..buffer.len() - LOG_TAIL_BYTES);
            }
        }
        Ok(tail_text(&buffer, LOG_TAIL_BYTES))
    }

    /// Passes `result` on, except that a 409 is fine when the container is already `wanted`.
    async fn tolerate_state(
        &self,
        id: &str,
        result: Result<(), DockerError>,
        wanted: InstanceState,
    ) -> Result<(), RuntimeError> {
        match result {
            Ok(()) => Ok(()),
            Err(err) if is_state_conflict(&err) => {
                let inspected = self.inspect_raw(id).await?;
                if instance_state(inspected.state.as_ref()) == wanted {
                    Ok(())
                } else {
                    Err(engine_error(id, err))
                }
            }
            Err(err) => Err(engine_error(id, err)),
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn create(&self, spec: &InstanceSpec) -> Result<String, RuntimeError> {
        self.create_with_role(spec, Role::Service).await
    }

    async fn start(&self, id: &str) -> Result<Option<SocketAddr>, RuntimeError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => {}
            // Docker refuses to start a paused container; after a crash the caller may not
            // know it is paused, and a thaw is what it wants.
            Err(err) if status_code(&err) == Some(409) => {
                if self.unpause(id).await.is_err() {
                    return Err(engine_error(id, err));
                }
            }
            Err(err) => return Err(engine_error(id, err)),
        }
        let inspected = self.inspect_raw(id).await?;
        let port = self.known_port(&inspected);
        let info = self.info_from_inspect(id, inspected);
        match (port, info.addr) {
            (None, _) => Ok(None),
            (Some(_), Some(addr)) => Ok(Some(addr)),
            (Some(_), None) => Err(RuntimeError::Engine(format!(
                "container `{id}` has no address on {} (state: {:?}); it probably exited at once",
                self.network, info.state
            ))),
        }
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let paused = self.docker.pause_container(id).await;
        self.tolerate_state(id, paused, InstanceState::Paused).await
    }

    async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        let unpaused = self.docker.unpause_container(id).await;
        self.tolerate_state(id, unpaused, InstanceState::Running)
            .await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // A frozen process cannot see SIGTERM, so thaw it first and give it its grace.
        match self.docker.unpause_container(id).await {
            Ok(()) => {}
            Err(err) if is_state_conflict(&err) => {}
            Err(err) => return Err(engine_error(id, err)),
        }
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptionsBuilder::new()
            .t(i32::try_from(seconds).unwrap_or(i32::MAX))
            .build();
        self.docker
            .stop_container(id, Some(options))
            .await
            .map_err(|err| engine_error(id, err))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        let removed = self.docker.remove_container(id, Some(options)).await;
        self.ports_map().remove(id);
        match removed {
            Ok(()) => Ok(()),
            Err(err) if status_code(&err) == Some(404) => Ok(()),
            // "removal already in progress": someone else is doing the same thing.
            Err(err) if status_code(&err) == Some(409) && is_removal_in_progress(&err) => Ok(()),
            Err(err) => Err(engine_error(id, err)),
        }
    }

    async fn inspect(&self, id: &str) -> Result<InstanceInfo, RuntimeError> {
        let inspected = self.inspect_raw(id).await?;
        Ok(self.info_from_inspect(id, inspected))
    }

    async fn list(&self, node: &str) -> Result<Vec<InstanceInfo>, RuntimeError> {
        let mut filters = HashMap::new();
        filters.insert(
            "label",
            vec![
                format!("{}=true", labels::MANAGED),
                format!("{}={node}", labels::NODE),
            ],
        );
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|err| engine_error(node, err))?;
        // The list omits the exit code and the OOM flag, so each container is inspected.
        let ids = summaries.into_iter().filter_map(|summary| summary.id);
        let inspections =
            futures_util::future::join_all(ids.map(|id| async move { self.inspect(&id).await }))
                .await;
        let mut infos = Vec::new();
        for inspected in inspections {
            match inspected {
                Ok(info) => infos.push(info),
                // Removed between the list and the inspect.
                Err(RuntimeError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(infos)
    }

    async fn logs(
        &self,
        id: &str,
        tail: usize,
        follow: bool,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, RuntimeError> {
        // Checked up front: a followed stream may yield nothing for a long time.
        self.inspect_raw(id).await?;
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail.to_string())
            .build();
        let owned_id = id.to_string();
        let frames = self.docker.logs(id, Some(options)).map(move |frame| {
            frame
                .map(|output| output.into_bytes())
                .map_err(|err| engine_error(&owned_id, err))
        });
        Ok(frames.boxed())
    }

    async fn run_to_completion(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
    ) -> Result<JobOutcome, RuntimeError> {
        let id = self.create_with_role(spec, Role::Job).await?;
        let outcome = self.run_started_job(&id, timeout).await;
        let removed = self.remove(&id).await;
        if let Err(err) = &removed {
            tracing::warn!(container = %id, error = %err, "job container not removed");
        }
        let outcome = outcome?;
        removed?;
        Ok(outcome)
    }
}

/// Creates the apps network unless it exists; refuses one that lets apps talk to each other.
async fn ensure_network(docker: &Docker, name: &str) -> Result<(), RuntimeError> {
    // Runtimes made at once in one process (tests, several nodes) take turns.
    static CREATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = CREATE_LOCK.lock().await;
    match docker.inspect_network(name, None).await {
        Ok(existing) => {
            let icc = existing
                .options
                .as_ref()
                .and_then(|options| options.get(ICC_OPTION))
                .map(String::as_str);
            if icc == Some("false") {
                Ok(())
            } else {
                Err(RuntimeError::Engine(format!(
                    "network `{name}` exists but allows traffic between containers; \
                     remove it (`docker network rm {name}`) so Shoal can recreate it"
                )))
            }
        }
        Err(err) if status_code(&err) == Some(404) => {
            let request = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".to_string()),
                options: Some(HashMap::from([(
                    ICC_OPTION.to_string(),
                    "false".to_string(),
                )])),
                labels: Some(HashMap::from([(
                    labels::MANAGED.to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            };
            let created = docker
                .create_network(request)
                .await
                .map_err(|err| engine_error(name, err))?;
            tracing::info!(network = name, id = %created.id, "apps network created");
            drop_duplicate_network(docker, name, &created.id).await
        }
        Err(err) => Err(engine_error(name, err)),
    }
}

/// API 1.41 lets two racing creators make two networks of one name, after which the name is
/// ambiguous; every racer keeps the lowest id and removes its own if that is not it.
async fn drop_duplicate_network(
    docker: &Docker,
    name: &str,
    created_id: &str,
) -> Result<(), RuntimeError> {
    let filters = HashMap::from([("name", vec![name.to_string()])]);
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    let networks = docker
        .list_networks(Some(options))
        .await
        .map_err(|err| engine_error(name, err))?;
    // The name filter matches substrings.
    let keeper = networks
        .iter()
        .filter(|network| network.name.as_deref() == Some(name))
        .filter_map(|network| network.id.as_deref())
        .min();
    if keeper.is_some_and(|keeper| keeper != created_id) {
        tracing::info!(network = name, id = %created_id, "duplicate apps network removed");
        docker
            .remove_network(created_id)
            .await
            .map_err(|err| engine_error(name, err))?;
    }
    Ok(())
}

fn instance_labels(spec: &InstanceSpec, role: Role) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::APP.to_string(), spec.app.clone()),
        (labels::RELEASE.to_string(), spec.release.to_string()),
        (labels::DIGEST.to_string(), spec.digest.clone()),
        (labels::NODE.to_string(), spec.node.clone()),
        (labels::ROLE.to_string(), role.label().to_string()),
    ]);
    if let Some(port) = spec.port {
        labels.insert(PORT_LABEL.to_string(), port.to_string());
    }
    labels
}

/// Keeps the characters Docker allows in names (`[a-zA-Z0-9_.-]`), bounded in length.
fn sanitize_name_part(part: &str) -> String {
    let cleaned: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if cleaned.is_empty() {
        "x".to_string()
    } else {
        cleaned
    }
}

fn container_ip(inspected: &ContainerInspectResponse, network: &str) -> Option<IpAddr> {
    inspected
        .network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get(network)?
        .ip_address
        .as_deref()?
        .parse()
        .ok()
}

fn instance_state(state: Option<&ContainerState>) -> InstanceState {
    let Some(state) = state else {
        return InstanceState::Other("unknown".to_string());
    };
    match state.status {
        Some(ContainerStateStatusEnum::CREATED) => InstanceState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => InstanceState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => InstanceState::Paused,
        Some(ContainerStateStatusEnum::EXITED) => InstanceState::Exited {
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
        },
        Some(other) => InstanceState::Other(other.to_string()),
        None => InstanceState::Other("unknown".to_string()),
    }
}

fn status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Docker refused because of the container's state: 409, except that Docker 20.10 answers an
/// unpause of a container that is not paused with a plain 500.
fn is_state_conflict(err: &DockerError) -> bool {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => *status_code == 409 || message.contains("is not paused"),
        _ => false,
    }
}

fn is_removal_in_progress(err: &DockerError) -> bool {
    matches!(err, DockerError::DockerResponseServerError { message, .. }
        if message.contains("already in progress"))
}

/// 404 means the container; connection failures mean the engine is down.
fn engine_error(id: &str, err: DockerError) -> RuntimeError {
    match err {
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => RuntimeError::NotFound(id.to_string()),
        DockerError::DockerResponseServerError { message, .. } => RuntimeError::Engine(message),
        DockerError::HyperLegacyError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::IOError { .. }
        | DockerError::SocketNotFoundError(_)
        | DockerError::RequestTimeoutError
        | DockerError::UnsupportedURISchemeError { .. } => {
            RuntimeError::Unavailable(err.to_string())
        }
        other => RuntimeError::Engine(other.to_string()),
    }
}

/// On create a 404 names the image (or the network), not a container.
fn create_error(image: &str, err: DockerError) -> RuntimeError {
    match err {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.contains("image") => RuntimeError::Image(format!("{image}: {message}")),
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::Engine(message),
        other => engine_error(image, other),
    }
}

#[cfg(test)]
#[path = "docker_tests.rs"]
mod tests;
