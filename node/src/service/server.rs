//! The QUIC server and the running [`NodeService`].
//!
//! Connections beyond `limits.max_connections` are refused; a peer may open at most
//! `limits.max_streams_per_connection` streams at once (QUIC flow control enforces it). Each
//! stream must send its first frame within `limits.first_frame_timeout_ms`; frames are read up
//! to `limits.max_frame_bytes`.
//!
//! Shutdown, when the token is cancelled, in phases: stop accepting connections and reject new
//! `Generate`s with `ShuttingDown`; let in-flight requests run up to `limits.shutdown_grace_ms`;
//! cancel what is left; wait (bounded) for request streams to flush their last frames; close
//! the endpoint with [`codes::SHUTDOWN`]; join the engine thread.

use super::config::Limits;
use super::engine_loop::{self, EngineHandle};
use super::register::{Registrar, RegistrationState};
use super::setup::{Prepared, Role};
use super::stage_server::StageShared;
use super::{ServiceError, codes, report, request};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_transport::frame::{self, FrameError};
use strata_transport::proto::{CostProfile, Message, NodeInfo, Registration};
use strata_transport::tls;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for request streams to flush after their requests ended, and for
/// peers to acknowledge the endpoint's close.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// A service's streams: what the accept loop hands each new stream to.
pub(crate) trait Serve: Send + Sync + 'static {
    fn limits(&self) -> &Limits;
    fn shutdown(&self) -> &CancellationToken;
    /// Serves one bidirectional stream of a connection from `peer`.
    fn serve_stream(
        self: Arc<Self>,
        send: SendStream,
        recv: RecvStream,
        peer: Option<tls::PeerIdentity>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// What every stream task needs.
pub(crate) struct Shared {
    pub info: NodeInfo,
    pub cost: CostProfile,
    pub limits: Limits,
    pub load_report_ms: u64,
    pub engine: EngineHandle,
    pub shutdown: CancellationToken,
    /// Request streams (`Generate`), waited for on shutdown.
    pub requests: TaskTracker,
}

/// A running node service. Dropping it does not stop the service: cancel its token (or call
/// [`NodeService::shutdown`]) and await [`NodeService::wait`].
pub struct NodeService {
    addr: SocketAddr,
    info: NodeInfo,
    registration: watch::Receiver<RegistrationState>,
    shutdown: CancellationToken,
    done: JoinHandle<Result<(), ServiceError>>,
}

impl NodeService {
    /// Builds the engine (off the async threads) and starts serving; must run inside a tokio
    /// runtime. Cancelling `shutdown` starts a clean shutdown.
    pub async fn start(
        cfg: super::NodeConfig,
        shutdown: CancellationToken,
    ) -> Result<NodeService, ServiceError> {
        let prepared =
            tokio::task::spawn_blocking(move || super::prepare(cfg, |msg| tracing::info!("{msg}")))
                .await
                .map_err(|e| ServiceError::EngineThread(format!("preparing the engine: {e}")))??;
        prepared.serve(shutdown).await
    }

    /// The address the endpoint is bound to (the real port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the node announces to subscribers.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// Where the node's registration with the control plane stands (see
    /// [`register`](super::register)).
    pub fn registration(&self) -> watch::Receiver<RegistrationState> {
        self.registration.clone()
    }

    /// The token whose cancellation shuts the service down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the service has shut down (after its token was cancelled).
    pub async fn wait(self) -> Result<(), ServiceError> {
        self.done
            .await
            .map_err(|e| ServiceError::EngineThread(format!("service task: {e}")))?
    }

    /// Cancels the token and waits for the clean shutdown.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        self.shutdown.cancel();
        self.wait().await
    }
}

fn server_config(p: &Prepared) -> Result<quinn::ServerConfig, ServiceError> {
    let limits = &p.config.limits;
    let mut cfg = p.identity.server_config()?;
    match Arc::try_unwrap(tls::transport_config()) {
        Ok(mut transport) => {
            transport
                .max_concurrent_bidi_streams(VarInt::from_u32(limits.max_streams_per_connection))
                .max_concurrent_uni_streams(VarInt::from_u32(0));
            cfg.transport_config(Arc::new(transport));
        }
        Err(_) => tracing::warn!("transport config is shared; keeping its stream limits"),
    }
    cfg.max_incoming(limits.max_connections);
    Ok(cfg)
}

impl Prepared {
    /// Binds the endpoint, starts the engine thread (or, on a pipeline stage worker, the
    /// stage service) and serves until `shutdown` is cancelled. Must run inside a tokio
    /// runtime.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<NodeService, ServiceError> {
        let addr = self.config.listen;
        let bind = |e: &dyn std::fmt::Display| ServiceError::Bind {
            addr,
            reason: e.to_string(),
        };
        let mut endpoint = Endpoint::server(server_config(&self)?, addr).map_err(|e| bind(&e))?;
        endpoint.set_default_client_config(self.identity.client_config()?);
        let local = endpoint.local_addr().map_err(|e| bind(&e))?;
        let registration = registration(&self, local);
        let registrar = Registrar {
            endpoint: endpoint.clone(),
            routers: self.config.routers.clone(),
            registration,
            max_frame_bytes: self.config.limits.max_frame_bytes,
        };
        let realtime = self.config.executor == super::ExecutorKind::Sim;
        let engine = match self.role {
            Role::Engine(engine) => *engine,
            Role::Stage(worker) => {
                let shared = Arc::new(StageShared {
                    info: self.info.clone(),
                    limits: self.config.limits.clone(),
                    load_report_ms: self.config.load_report_ms,
                    worker,
                    shutdown: shutdown.clone(),
                    started: std::time::Instant::now(),
                });
                tracing::info!(node = %self.info.node, model = %self.info.model, %local, "serving a pipeline stage");
                let (registration, registering) = registrar.spawn(shutdown.clone());
                let done = tokio::spawn(run_stage(endpoint, shared, registering));
                return Ok(NodeService {
                    addr: local,
                    info: self.info,
                    registration,
                    shutdown,
                    done,
                });
            }
        };
        let (engine, thread) = engine_loop::spawn(engine, realtime, &self.config.id)
            .map_err(|e| ServiceError::EngineThread(e.to_string()))?;
        let shared = Arc::new(Shared {
            info: self.info.clone(),
            cost: self.cost,
            limits: self.config.limits.clone(),
            load_report_ms: self.config.load_report_ms,
            engine,
            shutdown: shutdown.clone(),
            requests: TaskTracker::new(),
        });
        tracing::info!(node = %self.info.node, model = %self.info.model, %local, "serving");
        let (registration, registering) = registrar.spawn(shutdown.clone());
        let done = tokio::spawn(run(endpoint, shared, thread, registering));
        Ok(NodeService {
            addr: local,
            info: self.info,
            registration,
            shutdown,
            done,
        })
    }
}

/// What the node registers: its id, the address routers dial (`advertise`, else the bound
/// address) and its hardware. The cpu and sim executors drive no device; sim reports its GPU
/// budget as device memory, since it stands in for a GPU; cuda reports its GPU.
fn registration(p: &Prepared, local: SocketAddr) -> Registration {
    let (devices, device_memory_bytes) = match (p.config.executor, &p.gpu) {
        (super::ExecutorKind::Sim, _) => (0, p.gpu_mib << 20),
        (_, Some(gpu)) => (1, gpu.total_bytes),
        (_, None) => (0, 0),
    };
    Registration {
        node: p.config.id.clone(),
        addr: p.config.advertise.unwrap_or(local).to_string(),
        executor: p.config.executor.name().into(),
        devices,
        device_memory_bytes,
        host_memory_bytes: p.host_mib << 20,
    }
}

async fn run(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    thread: std::thread::JoinHandle<()>,
    registering: Option<JoinHandle<()>>,
) -> Result<(), ServiceError> {
    let connections = TaskTracker::new();
    accept_loop(&endpoint, &shared, &connections).await;

    // Phase 1: no new connections; new Generates are rejected (they see the token); the
    // registration task (which also sees it) stops before the endpoint closes.
    endpoint.set_server_config(None);
    if let Some(task) = registering
        && let Err(e) = task.await
    {
        tracing::warn!("registration task: {e}");
    }
    tracing::info!("shutting down: draining in-flight requests");
    // Phase 2: let in-flight requests finish, within the grace period.
    let grace = Duration::from_millis(shared.limits.shutdown_grace_ms);
    let mut stats = shared.engine.stats();
    let idle = stats.wait_for(|s| s.waiting == 0 && s.running == 0);
    if tokio::time::timeout(grace, idle).await.is_err() {
        tracing::info!("grace period over: cancelling the requests left");
    }
    // Phase 3: the engine cancels what is left and stops; request streams write their ends.
    shared.engine.shutdown().await;
    shared.requests.close();
    if tokio::time::timeout(SHUTDOWN_FLUSH, shared.requests.wait())
        .await
        .is_err()
    {
        tracing::warn!("request streams did not flush in time");
    }
    // Phase 4: close every connection and wait (bounded) for peers to hear it.
    endpoint.close(VarInt::from_u32(codes::SHUTDOWN), b"node shutting down");
    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, endpoint.wait_idle()).await;
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, connections.wait()).await;
    // Phase 5: join the engine thread.
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| ServiceError::EngineThread(e.to_string()))?
        .map_err(|_| ServiceError::EngineThread("the engine thread panicked".into()))?;
    tracing::info!("shut down");
    Ok(())
}

/// A stage worker's service until `shutdown`: no new connections, registration stopped, the
/// endpoint closed (chains and subscriptions end with it).
async fn run_stage(
    endpoint: Endpoint,
    shared: Arc<StageShared>,
    registering: Option<JoinHandle<()>>,
) -> Result<(), ServiceError> {
    let connections = TaskTracker::new();
    accept_loop(&endpoint, &shared, &connections).await;
    endpoint.set_server_config(None);
    if let Some(task) = registering
        && let Err(e) = task.await
    {
        tracing::warn!("registration task: {e}");
    }
    endpoint.close(VarInt::from_u32(codes::SHUTDOWN), b"node shutting down");
    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, endpoint.wait_idle()).await;
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, connections.wait()).await;
    tracing::info!("shut down");
    Ok(())
}

impl Serve for Shared {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    async fn serve_stream(
        self: Arc<Self>,
        send: SendStream,
        recv: RecvStream,
        _peer: Option<tls::PeerIdentity>,
    ) {
        stream(send, recv, self).await
    }
}

async fn accept_loop<S: Serve>(endpoint: &Endpoint, shared: &Arc<S>, connections: &TaskTracker) {
    let slots = Arc::new(Semaphore::new(shared.limits().max_connections));
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown().cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => return,
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                peer = %incoming.remote_address(),
                limit = shared.limits().max_connections,
                "connection limit reached; refusing"
            );
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let peer = incoming.remote_address();
            match incoming.await {
                Ok(conn) => connection(conn, shared).await,
                Err(e) => tracing::info!(%peer, "handshake failed: {e}"),
            }
            drop(permit);
        });
    }
}

async fn connection<S: Serve>(conn: Connection, shared: Arc<S>) {
    let peer = conn.remote_address();
    let identity = tls::peer_identity(&conn);
    tracing::debug!(%peer, "connected");
    let streams = TaskTracker::new();
    let why = loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let shared = shared.clone();
                streams.spawn(shared.serve_stream(send, recv, identity.clone()));
            }
            Err(e) => break e,
        }
    };
    tracing::debug!(%peer, "connection ended: {why}");
    streams.close();
    streams.wait().await;
}

/// Closes a stream that misbehaved before its kind was known.
fn refuse(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    let code = VarInt::from_u32(code);
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

async fn stream(mut send: SendStream, mut recv: RecvStream, shared: Arc<Shared>) {
    let limits = &shared.limits;
    let first = tokio::time::timeout(
        Duration::from_millis(limits.first_frame_timeout_ms),
        frame::read_frame(&mut recv, limits.max_frame_bytes),
    )
    .await;
    let id = send.id();
    match first {
        Ok(Ok(Some(Message::Generate(g)))) => {
            // Tracked so that shutdown waits for its last frames.
            let tracked = shared.clone();
            shared
                .requests
                .track_future(async move { request::serve(&tracked, g, send, recv).await })
                .await
        }
        Ok(Ok(Some(Message::Subscribe { router }))) => {
            report::serve(&shared, router, send, recv).await
        }
        Ok(Ok(Some(other))) => {
            tracing::warn!(stream = %id, "unexpected {} as a first frame; closing the stream", other.kind());
            refuse(&mut send, &mut recv, codes::UNEXPECTED);
        }
        Ok(Ok(None)) => {
            let _ = send.finish();
        }
        Ok(Err(FrameError::Io(e))) => tracing::debug!(stream = %id, "stream lost: {e}"),
        Ok(Err(e)) => {
            tracing::warn!(stream = %id, "bad first frame: {e}; closing the stream");
            refuse(&mut send, &mut recv, codes::BAD_FRAME);
        }
        Err(_) => {
            tracing::warn!(stream = %id, "no first frame in time; closing the stream");
            refuse(&mut send, &mut recv, codes::TIMEOUT);
        }
    }
}
