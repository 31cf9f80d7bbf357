//! A running router: its Raft replica (the control endpoint), the QUIC client endpoint and
//! node links, the forwarder, and the HTTP server, stopped together by one
//! `CancellationToken`.
//!
//! The data plane follows the replica's applied state: a task keeps the model registry
//! (tokenizers) and the SLO table in line with the deployments and classes in it, and the
//! forwarder keeps its links and instances in line. No request waits on Raft.

use crate::config::RouterConfig;
use crate::forward::Forwarder;
use crate::http::{HttpLimits, HttpState, ModelEntry, ModelRegistry, SloTable, app};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use strata_raft::control::{Bootstrap, Replica, ReplicaConfig, ReplicaError};
use strata_raft::state::ClusterState;
use strata_transport::tls::Identity;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A router that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The router's certificate could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] strata_transport::tls::TlsError),
    /// The Raft replica could not start or enter the cluster.
    #[error("control plane: {0}")]
    Replica(#[from] ReplicaError),
    /// The HTTP settings are inconsistent.
    #[error("http: {0}")]
    Http(String),
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// See the module doc.
pub struct RunningRouter {
    /// Where the HTTP API listens (the bound port when the config asked for port 0).
    pub http_addr: SocketAddr,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    /// The Raft replica.
    pub replica: Replica,
    http: JoinHandle<()>,
    endpoint: quinn::Endpoint,
}

/// Starts a router; it runs until `shutdown` is cancelled, then [`RunningRouter::join`] waits
/// for in-flight responses to end.
pub async fn start(
    cfg: RouterConfig,
    bootstrap: Bootstrap,
    shutdown: CancellationToken,
) -> Result<RunningRouter, StartError> {
    let identity = Identity::load(&cfg.tls.dir, &cfg.tls.member)?;
    let mut replica_cfg = ReplicaConfig::new(
        cfg.raft.id,
        cfg.tls.member.clone(),
        cfg.raft.listen,
        cfg.raft.db.clone(),
    );
    replica_cfg.advertise = cfg.raft.advertise;
    replica_cfg.heartbeat_ms = cfg.raft.heartbeat_ms;
    replica_cfg.election_timeout_min_ms = cfg.raft.election_timeout_min_ms;
    replica_cfg.election_timeout_max_ms = cfg.raft.election_timeout_max_ms;
    replica_cfg.snapshot_every_logs = cfg.raft.snapshot_every_logs;
    let replica = Replica::start(replica_cfg, &identity, bootstrap).await?;

    // The cluster's tuned endpoint (GSO-capped socket, LAN windows), as a client only: the
    // data plane dials nodes and accepts no QUIC connections.
    let endpoint = identity.endpoint(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    endpoint.set_server_config(None);

    let metrics = Arc::new(Metrics::new());
    let forwarder = Forwarder::start(
        &cfg.id,
        &cfg.limits,
        endpoint.clone(),
        metrics.clone(),
        replica.applied(),
        shutdown.clone(),
    );
    replica.service().set_runtime(Arc::new(forwarder.clone()));
    let models = ModelRegistry::new();
    let slo = SloTable::default();
    slo.set_default_name(&cfg.default_slo);
    tokio::spawn(follow_catalog(
        replica.applied(),
        models.clone(),
        slo.clone(),
        shutdown.clone(),
    ));
    let mut state = HttpState::new(Arc::new(forwarder.clone()), models)
        .with_limits(HttpLimits {
            max_body_bytes: cfg.limits.max_body_bytes,
            max_prompt_tokens: cfg.limits.max_prompt_tokens,
            max_output_tokens: cfg.limits.max_tokens,
            default_max_tokens: cfg.limits.default_max_tokens,
        })
        .with_metrics(metrics.clone())
        .with_slo_table(slo);
    if !cfg.api_keys.is_empty() {
        state = state.with_api_keys(cfg.api_keys.clone());
    }
    state
        .validate()
        .map_err(|e| StartError::Http(e.to_string()))?;

    let listener = bind_shared(cfg.http).map_err(|source| StartError::Bind {
        addr: cfg.http,
        source,
    })?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.http,
        source,
    })?;
    let stop = shutdown.clone();
    let http = tokio::spawn(async move {
        let served = axum::serve(listener, app(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(router = %cfg.id, %http_addr, control = %replica.addr(), "router serving");
    Ok(RunningRouter {
        http_addr,
        forwarder,
        metrics,
        replica,
        http,
        endpoint,
    })
}

/// A TCP listener with `SO_REUSEPORT`, so the replicas on one machine share one HTTP port and
/// the kernel spreads connections among the live ones.
fn bind_shared(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Keeps the tokenizers and SLO classes in line with the applied state. A deployment's
/// `source` that is a directory here gives its tokenizer and chat template; otherwise (a
/// preset) the byte tokenizer serves it.
async fn follow_catalog(
    mut applied: watch::Receiver<Arc<ClusterState>>,
    models: ModelRegistry,
    slo: SloTable,
    shutdown: CancellationToken,
) {
    let mut loaded: std::collections::HashMap<String, String> = Default::default();
    loop {
        let state = applied.borrow_and_update().clone();
        slo.replace(state.slo.values().cloned());
        for name in models.names() {
            if !state.deployments.contains_key(&name) {
                models.remove(&name);
                loaded.remove(&name);
            }
        }
        for d in state.deployments.values() {
            if loaded.get(&d.model) == Some(&d.source) {
                continue;
            }
            let dir = Path::new(&d.source);
            let entry = if dir.is_dir() {
                match ModelEntry::load(dir) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(model = %d.model, source = %d.source, error = %e, "cannot load the model's tokenizer; not serving it");
                        continue;
                    }
                }
            } else {
                ModelEntry::bytes()
            };
            tracing::info!(model = %d.model, source = %d.source, "serving model");
            models.insert(d.model.clone(), entry);
            loaded.insert(d.model.clone(), d.source.clone());
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

impl RunningRouter {
    /// Waits for the HTTP server to drain after shutdown, then stops the replica and closes
    /// the node connections.
    pub async fn join(self) {
        let _ = self.http.await;
        self.replica.shutdown().await;
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"router stopping");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle())
            .await;
    }
}
