//! The simulator's container runtime: instances that answer HTTP in memory.
//!
//! A node's real [`Worker`](shoal::worker::Worker) runs on it unchanged: its actors, its pool's
//! single-flight starts, its readiness wait and its leases. An instance is a record; starting
//! it gives it an address of its own and makes it accept connections [`START_DELAY`] later (an
//! app booting); a connection is an in-memory pipe served by hyper, answering every request
//! with `200` and the instance's id in the body. Pausing freezes it (connections refused until
//! it thaws). A crashed node's runtime goes with it, as a host's containers do when it reboots.
//!
//! Jobs do not run here: the simulator's stub workers take them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use shoal::runtime::{
    ContainerRuntime, InstanceInfo, InstanceSpec, InstanceState, JobOutcome, RuntimeError,
};
use shoal_proxy::forward::{Dial, InstanceIo};
use tokio::time::Instant;

use super::host::Shared;
use super::lock;
use crate::trace::{Event, NodeId};

/// How long a started instance takes to accept connections.
pub const START_DELAY: Duration = Duration::from_millis(400);
/// The response header naming the instance that answered.
pub const INSTANCE_HEADER: &str = "x-sim-instance";

/// One node's instances.
#[derive(Clone)]
pub struct SimRuntime {
    node: NodeId,
    shared: Shared,
    instances: Arc<Mutex<Instances>>,
}

#[derive(Default)]
struct Instances {
    created: u64,
    by_id: BTreeMap<String, Instance>,
}

struct Instance {
    spec_app: String,
    release: u64,
    digest: String,
    node: String,
    addr: SocketAddr,
    state: InstanceState,
    /// When a started instance accepts connections.
    ready_at: Instant,
}

impl SimRuntime {
    /// The runtime of node `node`; instances it starts are recorded in `shared`'s trace.
    pub fn new(node: NodeId, shared: Shared) -> Self {
        Self {
            node,
            shared,
            instances: Arc::default(),
        }
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Instance) -> T) -> Result<T, RuntimeError> {
        let mut instances = lock(&self.instances);
        let instance = instances
            .by_id
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        Ok(f(instance))
    }

    fn info(id: &str, instance: &Instance) -> InstanceInfo {
        InstanceInfo {
            id: id.to_owned(),
            app: instance.spec_app.clone(),
            release: instance.release,
            digest: instance.digest.clone(),
            node: instance.node.clone(),
            state: instance.state.clone(),
            addr: matches!(
                instance.state,
                InstanceState::Running | InstanceState::Paused
            )
            .then_some(instance.addr),
        }
    }
}

#[async_trait]
impl ContainerRuntime for SimRuntime {
    async fn create(&self, spec: &InstanceSpec) -> Result<String, RuntimeError> {
        let mut instances = lock(&self.instances);
        instances.created += 1;
        let n = instances.created;
        let id = format!("{:x}-{n}", self.node);
        // Every instance its own address: 10.<node>.<n>, the app's port.
        let [.., a, b] = self.node.to_be_bytes();
        let [.., c] = n.to_be_bytes();
        let ip = IpAddr::V4(Ipv4Addr::new(10, a, b, c));
        instances.by_id.insert(
            id.clone(),
            Instance {
                spec_app: spec.app.clone(),
                release: spec.release,
                digest: spec.digest.clone(),
                node: spec.node.clone(),
                addr: SocketAddr::new(ip, spec.port.unwrap_or(3000)),
                state: InstanceState::Created,
                ready_at: Instant::now(),
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<Option<SocketAddr>, RuntimeError> {
        let (app, addr) = self.with(id, |instance| {
            instance.state = InstanceState::Running;
            instance.ready_at = Instant::now() + START_DELAY;
            (instance.spec_app.clone(), instance.addr)
        })?;
        self.shared.record(Event::InstanceStarted {
            node: self.node,
            app,
            instance: id.to_owned(),
        });
        Ok(Some(addr))
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.with(id, |instance| instance.state = InstanceState::Paused)
    }

    async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        self.with(id, |instance| instance.state = InstanceState::Running)
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.with(id, |instance| {
            instance.state = InstanceState::Exited {
                exit_code: Some(0),
                oom_killed: false,
            }
        })
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        lock(&self.instances).by_id.remove(id);
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<InstanceInfo, RuntimeError> {
        self.with(id, |instance| Self::info(id, instance))
    }

    async fn list(&self, node: &str) -> Result<Vec<InstanceInfo>, RuntimeError> {
        let instances = lock(&self.instances);
        Ok(instances
            .by_id
            .iter()
            .filter(|(_, instance)| instance.node == node)
            .map(|(id, instance)| Self::info(id, instance))
            .collect())
    }

    async fn logs(
        &self,
        _id: &str,
        _tail: usize,
        _follow: bool,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, RuntimeError> {
        Ok(Box::pin(futures_util::stream::empty()))
    }

    async fn run_to_completion(
        &self,
        _spec: &InstanceSpec,
        _timeout: Duration,
    ) -> Result<JobOutcome, RuntimeError> {
        Err(RuntimeError::Unavailable(
            "the simulator runs jobs on its stub workers".into(),
        ))
    }

    fn dialer(&self) -> Option<Arc<dyn Dial>> {
        Some(Arc::new(self.clone()))
    }
}

impl Dial for SimRuntime {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<Box<dyn InstanceIo>>> {
        let accepting = {
            let instances = lock(&self.instances);
            instances
                .by_id
                .iter()
                .find(|(_, instance)| {
                    instance.addr == addr
                        && instance.state == InstanceState::Running
                        && instance.ready_at <= Instant::now()
                })
                .map(|(id, _)| id.clone())
        };
        Box::pin(async move {
            let Some(id) = accepting else {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            };
            let (client, server) = tokio::io::duplex(64 << 10);
            let service = hyper::service::service_fn(move |_request| {
                let id = id.clone();
                async move {
                    let response = http::Response::builder()
                        .header(INSTANCE_HEADER, id.as_str())
                        .body(Full::new(Bytes::from(id)))
                        .expect("a valid response");
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(server), service)
                    .await;
            });
            Ok(Box::new(client) as Box<dyn InstanceIo>)
        })
    }
}
