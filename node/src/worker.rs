//! The worker: runs service apps' instances on this node.
//!
//! One actor task per app owns that app's [`Pool`] (the pure state machine of
//! [`crate::instances`]) and is the only place its state changes. Requests ask the actor for
//! a lease; the actor feeds events in, carries the resulting actions out against the
//! [`ContainerRuntime`] in spawned tasks, and their outcomes come back as events. The actor
//! reads the clock and passes it in; the pool never does.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use shoal_proxy::forward::Dial;
use shoal_proxy::ingress::{Lease, Rejection};
use tokio::sync::{mpsc, oneshot, OnceCell};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::instances::{Action, Event, InstanceId, Phase, Pool, PoolConfig, RequestId};
use crate::manifest::AppSpec;
use crate::node::RuntimeKind;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::image::{connect_docker, ensure_runtime_image};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{ContainerRuntime, InstanceSpec, InstanceState, JobOutcome, RuntimeError};

/// How long a started instance has to accept connections on its port.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle timers, deadlines and crashed instances are checked.
const TICK: Duration = Duration::from_millis(500);
/// Longest wait for one readiness connect attempt.
const CONNECT_ATTEMPT: Duration = Duration::from_millis(250);
/// Grace between SIGTERM and SIGKILL when an instance stops.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs service apps on this node.
pub struct Worker {
    node: String,
    preference: Option<RuntimeKind>,
    runtime: OnceCell<Result<Arc<dyn ContainerRuntime>, String>>,
    apps: Mutex<HashMap<String, AppActor>>,
    actors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The handle of one app's actor: what the ingress holds as the app's backend.
#[derive(Clone)]
pub struct AppActor {
    app: String,
    release: u64,
    tx: mpsc::UnboundedSender<Message>,
}

impl std::fmt::Debug for AppActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppActor({} r{})", self.app, self.release)
    }
}

enum Message {
    Acquire(oneshot::Sender<Result<Lease, Rejection>>),
    Status(oneshot::Sender<Vec<InstanceView>>),
    Deploy(Box<InstanceSpec>, PoolConfig),
    Event(Event),
    ContainerCreated {
        instance: InstanceId,
        container: String,
    },
    /// The app is gone: remove its containers and end.
    Shutdown,
    /// The node is stopping: end, leaving the containers for the next run to adopt.
    Detach,
}

impl Worker {
    /// A worker for node `node`; the container runtime is chosen and connected on first use
    /// (`preference` None: Docker if it answers, else plain processes with a loud warning).
    pub fn new(node: String, preference: Option<RuntimeKind>) -> Arc<Self> {
        Arc::new(Self {
            node,
            preference,
            runtime: OnceCell::new(),
            apps: Mutex::new(HashMap::new()),
            actors: Mutex::new(Vec::new()),
        })
    }

    /// A worker for node `node` whose apps run on `runtime` (the simulator's).
    pub fn with_runtime(node: String, runtime: Arc<dyn ContainerRuntime>) -> Arc<Self> {
        Arc::new(Self {
            node,
            preference: None,
            runtime: OnceCell::new_with(Some(Ok(runtime))),
            apps: Mutex::new(HashMap::new()),
            actors: Mutex::new(Vec::new()),
        })
    }

    /// How leases reach instances when TCP does not (see [`ContainerRuntime::dialer`]).
    fn dialer(&self) -> Option<Arc<dyn Dial>> {
        self.runtime.get()?.as_ref().ok()?.dialer()
    }

    /// The runtime, chosen, connected (and the image ensured) on first call.
    pub async fn runtime(&self) -> Result<Arc<dyn ContainerRuntime>, String> {
        self.runtime
            .get_or_init(|| self.choose_runtime())
            .await
            .clone()
    }

    /// Why the runtime could not be set up, once that is known (then no app runs here).
    pub fn runtime_failed(&self) -> Option<String> {
        self.runtime.get()?.as_ref().err().cloned()
    }

    async fn choose_runtime(&self) -> Result<Arc<dyn ContainerRuntime>, String> {
        if self.preference == Some(RuntimeKind::Process) {
            warn!("runtime: plain processes (--runtime process): apps are NOT isolated");
            return process_runtime(&self.node);
        }
        let docker = async {
            let docker = connect_docker().await?;
            let image = ensure_runtime_image(&docker).await?;
            info!(image = %image.reference, "runtime: docker");
            let runtime = DockerRuntime::new(docker, image.reference).await?;
            // Containers of apps this node no longer runs go; each app's actor adopts its own.
            let running: Vec<String> = self.apps();
            remove_leftovers(&runtime, &self.node, &running).await;
            Ok::<_, RuntimeError>(Arc::new(runtime) as Arc<dyn ContainerRuntime>)
        };
        match docker.await {
            Ok(runtime) => Ok(runtime),
            Err(error) if self.preference == Some(RuntimeKind::Docker) => {
                warn!(%error, "--runtime docker: no container runtime, service apps cannot run");
                Err(format!("this node has no container runtime ({error})"))
            }
            Err(error) => {
                warn!(
                    %error,
                    "NO DOCKER ENGINE ANSWERS: running apps as plain processes, NOT ISOLATED; \
                     install Docker or pass --runtime docker to refuse this"
                );
                process_runtime(&self.node)
            }
        }
    }

    /// The backend for the current release of a service app, starting its actor if needed.
    pub fn backend(
        self: &Arc<Self>,
        spec: &AppSpec,
        release: u64,
        release_dir: PathBuf,
        digest: &str,
    ) -> AppActor {
        let instance_spec = self.instance_spec(spec, release, release_dir, digest);
        let config = pool_config(spec);
        let mut apps = self.apps.lock().expect("apps lock");
        let actor = apps.entry(spec.name.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let worker = self.clone();
            let app = spec.name.clone();
            let handle = tokio::spawn(run_actor(
                worker,
                app.clone(),
                config.clone(),
                tx.clone(),
                rx,
            ));
            self.actors.lock().expect("actors lock").push(handle);
            AppActor {
                app,
                release: 0,
                tx,
            }
        });
        if actor.release != release {
            actor.release = release;
            let _ = actor
                .tx
                .send(Message::Deploy(Box::new(instance_spec), config));
        }
        actor.clone()
    }

    /// What an instance (or a job's run) of `spec`'s release runs as on this node.
    fn instance_spec(
        &self,
        spec: &AppSpec,
        release: u64,
        release_dir: PathBuf,
        digest: &str,
    ) -> InstanceSpec {
        InstanceSpec {
            app: spec.name.clone(),
            release,
            digest: digest.to_owned(),
            node: self.node.clone(),
            release_dir,
            command: spec.command.clone(),
            port: spec.port,
            env: spec.env.clone(),
            memory_bytes: spec.resources.memory_bytes,
            cpus: spec.resources.cpus,
            pids: spec.resources.pids,
            tmp_bytes: 64 * 1024 * 1024,
        }
    }

    /// Runs one run of a cron job to completion, killed at `timeout`; `run_env` is added to
    /// the job's environment (the run's id and tick).
    pub async fn run_job(
        &self,
        spec: &AppSpec,
        release: u64,
        release_dir: PathBuf,
        digest: &str,
        timeout: Duration,
        run_env: BTreeMap<String, String>,
    ) -> Result<JobOutcome, String> {
        let runtime = self.runtime().await?;
        let mut instance = self.instance_spec(spec, release, release_dir, digest);
        instance.env.extend(run_env);
        runtime
            .run_to_completion(&instance, timeout)
            .await
            .map_err(|error| error.to_string())
    }

    /// Kills and removes every run of cron job `job` on this node (a cron app has no other
    /// instances): a run stopped for a newer one (`overlap = "replace"`).
    pub async fn stop_job_runs(&self, job: &str) -> Result<usize, String> {
        let runtime = self.runtime().await?;
        let instances = runtime
            .list(&self.node)
            .await
            .map_err(|error| error.to_string())?;
        let mut stopped = 0;
        for instance in instances.into_iter().filter(|i| i.app == job) {
            runtime
                .remove(&instance.id)
                .await
                .map_err(|error| error.to_string())?;
            stopped += 1;
        }
        Ok(stopped)
    }

    /// Stops and removes an app's instances (the app was deleted or is no longer a service).
    pub fn retire(&self, app: &str) {
        if let Some(actor) = self.apps.lock().expect("apps lock").remove(app) {
            let _ = actor.tx.send(Message::Shutdown);
        }
    }

    /// Ends every app's actor at node shutdown. Containers stay as they are (running, paused
    /// or stopped): the node's next run adopts them, so a restart does not make apps cold.
    pub async fn shutdown(&self, grace: Duration) {
        let actors: Vec<AppActor> = self
            .apps
            .lock()
            .expect("apps lock")
            .drain()
            .map(|(_, a)| a)
            .collect();
        for actor in &actors {
            let _ = actor.tx.send(Message::Detach);
        }
        let handles: Vec<_> = self.actors.lock().expect("actors lock").drain(..).collect();
        if tokio::time::timeout(grace, futures_util::future::join_all(handles))
            .await
            .is_err()
        {
            warn!("some app actors were still busy at shutdown");
        }
    }

    /// The instances of `app` on this node (empty if it has none).
    pub async fn status(&self, app: &str) -> Vec<InstanceView> {
        let Some(actor) = self.apps.lock().expect("apps lock").get(app).cloned() else {
            return Vec::new();
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if actor.tx.send(Message::Status(reply_tx)).is_err() {
            return Vec::new();
        }
        reply_rx.await.unwrap_or_default()
    }

    /// The output of `app`'s newest instance: the last `tail` lines, then new ones if `follow`.
    pub async fn logs(
        &self,
        app: &str,
        tail: usize,
        follow: bool,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, String> {
        let views = self.status(app).await;
        let newest = views
            .iter()
            .rev()
            .find(|v| v.state == "running")
            .or_else(|| views.iter().rev().find(|v| v.container.is_some()))
            .and_then(|v| v.container.clone())
            .ok_or_else(|| {
                format!("`{app}` has no instance on this node yet: send it a request first")
            })?;
        let runtime = self.runtime().await?;
        runtime
            .logs(&newest, tail, follow)
            .await
            .map_err(|error| error.to_string())
    }

    /// Apps with an actor.
    pub fn apps(&self) -> Vec<String> {
        self.apps
            .lock()
            .expect("apps lock")
            .keys()
            .cloned()
            .collect()
    }
}

impl AppActor {
    /// A warm instance for one request, starting one if needed (the wait is bounded).
    pub fn acquire(&self) -> BoxFuture<'static, Result<Lease, Rejection>> {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (reply_tx, reply_rx) = oneshot::channel();
            let gone = || Rejection {
                reason: "the app is being replaced; try again".to_owned(),
                retry_after: Duration::from_secs(1),
            };
            tx.send(Message::Acquire(reply_tx)).map_err(|_| gone())?;
            reply_rx.await.map_err(|_| gone())?
        })
    }
}

/// The plain-process runtime: apps run as child processes of the node, not isolated.
fn process_runtime(node: &str) -> Result<Arc<dyn ContainerRuntime>, String> {
    Ok(Arc::new(ProcessRuntime::new(node.to_owned())))
}

/// Removes the containers a previous run of this node left for apps it no longer runs.
async fn remove_leftovers(runtime: &dyn ContainerRuntime, node: &str, keep_apps: &[String]) {
    match runtime.list(node).await {
        Ok(leftovers) => {
            for instance in leftovers
                .into_iter()
                .filter(|i| !keep_apps.contains(&i.app))
            {
                info!(container = %instance.id, app = %instance.app, "removing a leftover container");
                if let Err(error) = runtime.remove(&instance.id).await {
                    warn!(container = %instance.id, %error, "could not remove a leftover container");
                }
            }
        }
        Err(error) => warn!(%error, "could not list leftover containers"),
    }
}

fn pool_config(spec: &AppSpec) -> PoolConfig {
    PoolConfig {
        min: spec.scale.min,
        max: spec.scale.max,
        concurrency_target: spec.scale.concurrency_target,
        pause_after: spec.scale.pause_after,
        idle_timeout: spec.scale.idle_timeout,
        queue_limit: 1000,
        queue_deadline: Duration::from_secs(30),
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
    }
}

/// The state an app's actor keeps beside its pool.
struct Actor {
    app: String,
    worker: Arc<Worker>,
    tx: mpsc::UnboundedSender<Message>,
    pool: Pool,
    specs: BTreeMap<u64, InstanceSpec>,
    containers: HashMap<InstanceId, String>,
    addrs: HashMap<InstanceId, SocketAddr>,
    waiting: HashMap<RequestId, oneshot::Sender<Result<Lease, Rejection>>>,
    next_request: RequestId,
}

async fn run_actor(
    worker: Arc<Worker>,
    app: String,
    config: PoolConfig,
    tx: mpsc::UnboundedSender<Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    let mut actor = Actor {
        app,
        worker,
        tx,
        pool: Pool::new(config),
        specs: BTreeMap::new(),
        containers: HashMap::new(),
        addrs: HashMap::new(),
        waiting: HashMap::new(),
        next_request: 1,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        let event = tokio::select! {
            message = rx.recv() => match message {
                None | Some(Message::Detach) => return,
                Some(Message::Shutdown) => break,
                Some(Message::Deploy(spec, config)) if actor.specs.is_empty() => {
                    actor.adopt_leftovers(&spec).await;
                    actor.receive(Message::Deploy(spec, config))
                }
                Some(message) => actor.receive(message),
            },
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(4) {
                    actor.check_for_exits();
                }
                Some(Event::Tick)
            }
        };
        if let Some(event) = event {
            let actions = actor.pool.handle(Instant::now(), event);
            actor.execute(actions);
        }
    }
    actor.remove_everything().await;
}

impl Actor {
    fn receive(&mut self, message: Message) -> Option<Event> {
        match message {
            Message::Acquire(reply) => {
                let request = self.next_request;
                self.next_request += 1;
                self.waiting.insert(request, reply);
                Some(Event::Request { request })
            }
            Message::Status(reply) => {
                let _ = reply.send(self.views());
                None
            }
            Message::Deploy(spec, config) => {
                let release = spec.release;
                self.specs.insert(release, *spec);
                self.pool.set_config(config);
                Some(Event::Deployed { release })
            }
            Message::ContainerCreated {
                instance,
                container,
            } => {
                self.containers.insert(instance, container);
                Some(Event::Created { instance })
            }
            Message::Event(event) => {
                if let Event::Ready { instance, addr } = &event {
                    self.addrs.insert(*instance, *addr);
                }
                if let Event::Removed { instance } = &event {
                    self.containers.remove(instance);
                    self.addrs.remove(instance);
                }
                Some(event)
            }
            Message::Shutdown | Message::Detach => None,
        }
    }

    /// Takes over the containers a previous run left for this app: those of the release being
    /// deployed are adopted in their state, the others removed.
    async fn adopt_leftovers(&mut self, spec: &InstanceSpec) {
        let Ok(runtime) = self.worker.runtime().await else {
            return;
        };
        let Ok(found) = runtime.list(&self.worker.node).await else {
            return;
        };
        for info in found.into_iter().filter(|info| info.app == self.app) {
            let same_release = info.release == spec.release && info.digest == spec.digest;
            let phase = match (&info.state, info.addr) {
                _ if !same_release => None,
                (InstanceState::Running, Some(addr)) => Some(Phase::Ready { addr }),
                (InstanceState::Paused, Some(addr)) => Some(Phase::Paused { addr }),
                (InstanceState::Created | InstanceState::Exited { .. }, _) => Some(Phase::Stopped),
                _ => None,
            };
            let Some(phase) = phase else {
                info!(app = %self.app, container = %info.id, "removing a container of an old release");
                let _ = runtime.remove(&info.id).await;
                continue;
            };
            let instance = self.pool.adopt(Instant::now(), spec.release, phase.clone());
            if let Phase::Ready { addr } | Phase::Paused { addr } = phase {
                self.addrs.insert(instance, addr);
            }
            info!(app = %self.app, container = %info.id, state = ?info.state, "adopted a container");
            self.containers.insert(instance, info.id);
        }
    }

    fn views(&self) -> Vec<InstanceView> {
        self.pool
            .instances()
            .map(|i| InstanceView {
                release: i.release,
                state: phase_name(&i.phase).to_owned(),
                in_flight: i.in_flight,
                container: self.containers.get(&i.id).cloned(),
                failures: i.failures,
                last_failure: i.last_failure.clone(),
            })
            .collect()
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Forward {
                    request,
                    instance,
                    addr,
                    waited,
                } => self.grant(request, instance, addr, waited),
                Action::Reject {
                    request,
                    reason,
                    retry_after,
                } => {
                    if let Some(reply) = self.waiting.remove(&request) {
                        let _ = reply.send(Err(Rejection {
                            reason,
                            retry_after,
                        }));
                    }
                }
                action => self.spawn_runtime_action(action),
            }
        }
    }

    fn grant(
        &mut self,
        request: RequestId,
        instance: InstanceId,
        addr: SocketAddr,
        waited: Option<Duration>,
    ) {
        let Some(reply) = self.waiting.remove(&request) else {
            // The client went away while waiting: the pool counted it in flight, so undo that.
            let _ = self
                .tx
                .send(Message::Event(Event::RequestDone { instance }));
            return;
        };
        let done_tx = self.tx.clone();
        let stream_tx = self.tx.clone();
        let lease = Lease {
            addr,
            waited,
            on_stream: Some(Box::new(move |opened| {
                let event = if opened {
                    Event::StreamOpened { instance }
                } else {
                    Event::StreamClosed { instance }
                };
                let _ = stream_tx.send(Message::Event(event));
            })),
            guard: Box::new(DoneGuard {
                tx: done_tx,
                instance,
            }),
            dial: self.worker.dialer(),
        };
        // If the client went away, the lease comes back and its guard marks the request done.
        let _ = reply.send(Ok(lease));
    }

    fn spawn_runtime_action(&self, action: Action) {
        let worker = self.worker.clone();
        let tx = self.tx.clone();
        let app = self.app.clone();
        let container = |instance: InstanceId| self.containers.get(&instance).cloned();
        let (instance, job): (InstanceId, RuntimeJob) = match action {
            Action::Create { instance, release } => match self.specs.get(&release) {
                Some(spec) => (instance, RuntimeJob::Create(Box::new(spec.clone()))),
                None => return,
            },
            Action::Start { instance } => (instance, RuntimeJob::Start(container(instance))),
            Action::Unpause { instance } => (
                instance,
                RuntimeJob::Unpause(container(instance), self.addrs.get(&instance).copied()),
            ),
            Action::Pause { instance } => (instance, RuntimeJob::Pause(container(instance))),
            Action::Stop { instance } => (instance, RuntimeJob::Stop(container(instance))),
            Action::Remove { instance } => (instance, RuntimeJob::Remove(container(instance))),
            Action::Forward { .. } | Action::Reject { .. } => return,
        };
        tokio::spawn(async move {
            let message = match worker.runtime().await {
                Ok(runtime) => job.run(runtime.as_ref(), instance).await,
                Err(reason) => Message::Event(Event::Failed { instance, reason }),
            };
            if let Message::Event(Event::Failed { reason, .. }) = &message {
                warn!(%app, instance, %reason, "instance action failed");
            }
            let _ = tx.send(message);
        });
    }

    /// Instances that died on their own (crash, out of memory) become failures with a reason.
    fn check_for_exits(&self) {
        let ready: Vec<(InstanceId, String)> = self
            .pool
            .instances()
            .filter(|i| matches!(i.phase, crate::instances::Phase::Ready { .. }))
            .filter_map(|i| Some((i.id, self.containers.get(&i.id)?.clone())))
            .collect();
        if ready.is_empty() {
            return;
        }
        let worker = self.worker.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let Ok(runtime) = worker.runtime().await else {
                return;
            };
            for (instance, container) in ready {
                if let Ok(info) = runtime.inspect(&container).await {
                    if let InstanceState::Exited {
                        exit_code,
                        oom_killed,
                    } = info.state
                    {
                        let reason = exit_reason(exit_code, oom_killed);
                        let _ = tx.send(Message::Event(Event::Failed { instance, reason }));
                    }
                }
            }
        });
    }

    async fn remove_everything(&self) {
        let Ok(runtime) = self.worker.runtime().await else {
            return;
        };
        for container in self.containers.values() {
            if let Err(error) = runtime.remove(container).await {
                warn!(app = %self.app, %container, %error, "could not remove a container");
            }
        }
    }
}

/// One instance as `shoal apps NAME` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceView {
    /// Release it runs.
    pub release: u64,
    /// Where it is in its life.
    pub state: String,
    /// Requests in flight.
    pub in_flight: u32,
    /// The container (or process) id.
    pub container: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
    /// Why it last failed.
    pub last_failure: Option<String>,
}

fn phase_name(phase: &crate::instances::Phase) -> &'static str {
    use crate::instances::Phase;
    match phase {
        Phase::Creating => "creating",
        Phase::Stopped => "stopped",
        Phase::Starting => "starting",
        Phase::Ready { .. } => "running",
        Phase::Pausing { .. } => "pausing",
        Phase::Paused { .. } => "paused",
        Phase::Waking => "waking",
        Phase::Stopping => "stopping",
        Phase::Removing => "removing",
        Phase::Failed { .. } => "failed",
    }
}

fn exit_reason(exit_code: Option<i64>, oom_killed: bool) -> String {
    if oom_killed {
        return "killed: out of memory (raise resources.memory)".to_owned();
    }
    match exit_code {
        Some(code) => format!("exited with code {code}"),
        None => "exited".to_owned(),
    }
}

/// Marks a request done when dropped (its response finished or was abandoned).
struct DoneGuard {
    tx: mpsc::UnboundedSender<Message>,
    instance: InstanceId,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Message::Event(Event::RequestDone {
            instance: self.instance,
        }));
    }
}

/// One runtime call on behalf of the pool, and the event its outcome becomes.
enum RuntimeJob {
    Create(Box<InstanceSpec>),
    Start(Option<String>),
    Unpause(Option<String>, Option<SocketAddr>),
    Pause(Option<String>),
    Stop(Option<String>),
    Remove(Option<String>),
}

impl RuntimeJob {
    async fn run(self, runtime: &dyn ContainerRuntime, instance: InstanceId) -> Message {
        let failed = |reason: String| Message::Event(Event::Failed { instance, reason });
        let missing = || failed("the instance has no container".to_owned());
        match self {
            RuntimeJob::Create(spec) => match runtime.create(&spec).await {
                Ok(container) => Message::ContainerCreated {
                    instance,
                    container,
                },
                Err(error) => failed(error.to_string()),
            },
            RuntimeJob::Start(None) | RuntimeJob::Unpause(None, _) | RuntimeJob::Pause(None) => {
                missing()
            }
            RuntimeJob::Start(Some(container)) => match runtime.start(&container).await {
                Ok(Some(addr)) => match wait_for_port(runtime, &container, addr).await {
                    Ok(()) => Message::Event(Event::Ready { instance, addr }),
                    Err(reason) => {
                        // Read why before stopping it: the stop would replace a crash's exit
                        // code with the kill's.
                        let why = startup_failure(runtime, &container, reason).await;
                        let _ = runtime.stop(&container, Duration::ZERO).await;
                        failed(why)
                    }
                },
                Ok(None) => failed("the app has no port".to_owned()),
                Err(error) => failed(error.to_string()),
            },
            RuntimeJob::Unpause(Some(container), addr) => {
                match (runtime.unpause(&container).await, addr) {
                    (Ok(()), Some(addr)) => Message::Event(Event::Ready { instance, addr }),
                    (Ok(()), None) => failed("the paused instance's address is unknown".to_owned()),
                    (Err(error), _) => failed(error.to_string()),
                }
            }
            RuntimeJob::Pause(Some(container)) => match runtime.pause(&container).await {
                Ok(()) => Message::Event(Event::Paused { instance }),
                Err(error) => failed(error.to_string()),
            },
            RuntimeJob::Stop(container) => {
                if let Some(container) = container {
                    if let Err(error) = runtime.stop(&container, STOP_GRACE).await {
                        return failed(error.to_string());
                    }
                }
                Message::Event(Event::Stopped { instance })
            }
            RuntimeJob::Remove(container) => {
                if let Some(container) = container {
                    if let Err(error) = runtime.remove(&container).await {
                        warn!(%container, %error, "could not remove a container");
                    }
                }
                Message::Event(Event::Removed { instance })
            }
        }
    }
}

/// Waits until the app accepts connections on its port, giving up early if it exits.
async fn wait_for_port(
    runtime: &dyn ContainerRuntime,
    container: &str,
    addr: SocketAddr,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut delay = Duration::from_millis(2);
    let mut next_state_check = Instant::now() + Duration::from_millis(200);
    loop {
        // Bounded: once a container exits its address vanishes from the bridge, and a connect
        // to it hangs on ARP instead of being refused.
        let attempt = async {
            match runtime.dialer() {
                Some(dial) => dial.dial(addr).await.map(drop),
                None => tokio::net::TcpStream::connect(addr).await.map(drop),
            }
        };
        if let Ok(Ok(())) = tokio::time::timeout(CONNECT_ATTEMPT, attempt).await {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_state_check {
            next_state_check = now + Duration::from_millis(200);
            if let Ok(info) = runtime.inspect(container).await {
                if let InstanceState::Exited {
                    exit_code,
                    oom_killed,
                } = info.state
                {
                    return Err(exit_reason(exit_code, oom_killed));
                }
            }
        }
        if now >= deadline {
            return Err(format!(
                "did not accept connections on port {} within {}s",
                addr.port(),
                READY_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// Why a start failed: the exit status if the process died, with the last lines it printed.
async fn startup_failure(
    runtime: &dyn ContainerRuntime,
    container: &str,
    fallback: String,
) -> String {
    let state = runtime.inspect(container).await.ok().map(|info| info.state);
    let reason = match state {
        Some(InstanceState::Exited {
            exit_code,
            oom_killed,
        }) => exit_reason(exit_code, oom_killed),
        _ => fallback,
    };
    let mut tail = String::new();
    if let Ok(mut logs) = runtime.logs(container, 5, false).await {
        use futures_util::StreamExt;
        while let Some(Ok(chunk)) = logs.next().await {
            tail.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    // A crash's last line is often a trailer (`Node.js v20.1.0`): keep the last few lines.
    let lines: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        reason
    } else {
        let last = &lines[lines.len().saturating_sub(3)..];
        format!("{reason}; last output: {}", last.join(" | "))
    }
}
