//! A running router: the QUIC client endpoint and node links, the forwarder, and the HTTP
//! server, stopped together by one `CancellationToken`.

use crate::config::RouterConfig;
use crate::forward::Forwarder;
use crate::http::{HttpLimits, HttpState, ModelEntry, ModelRegistry, app};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use strata_transport::tls::Identity;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A router that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The router's certificate could not be loaded or used.
    #[error(transparent)]
    Tls(#[from] strata_transport::tls::TlsError),
    /// A model's tokenizer or chat template could not be loaded.
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },
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
    http: JoinHandle<()>,
    endpoint: quinn::Endpoint,
}

/// Starts a router; it runs until `shutdown` is cancelled, then [`RunningRouter::join`] waits
/// for in-flight responses to end.
pub async fn start(
    cfg: RouterConfig,
    shutdown: CancellationToken,
) -> Result<RunningRouter, StartError> {
    let identity = Identity::load(&cfg.tls.dir, &cfg.tls.member)?;
    // The cluster's tuned endpoint (GSO-capped socket, LAN windows), as a client only: a
    // router dials nodes and accepts no QUIC connections.
    let endpoint = identity.endpoint(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    endpoint.set_server_config(None);

    let mut models = ModelRegistry::new();
    for m in &cfg.models {
        let entry = match &m.dir {
            Some(dir) => ModelEntry::load(dir).map_err(|e| StartError::Model {
                model: m.name.clone(),
                message: e.to_string(),
            })?,
            None => ModelEntry::bytes(),
        };
        models.insert(m.name.clone(), entry);
    }
    let metrics = Arc::new(Metrics::new());
    let forwarder = Forwarder::start(&cfg, endpoint.clone(), metrics.clone(), shutdown.clone());
    let mut state = HttpState::new(Arc::new(forwarder.clone()), models)
        .with_limits(HttpLimits {
            max_body_bytes: cfg.limits.max_body_bytes,
            max_prompt_tokens: cfg.limits.max_prompt_tokens,
            max_output_tokens: cfg.limits.max_tokens,
            default_max_tokens: cfg.limits.default_max_tokens,
        })
        .with_metrics(metrics.clone())
        .with_slo_classes(cfg.slo_classes(), &cfg.default_slo)
        .map_err(|e| StartError::Http(e.to_string()))?;
    if !cfg.api_keys.is_empty() {
        state = state.with_api_keys(cfg.api_keys.clone());
    }
    state
        .validate()
        .map_err(|e| StartError::Http(e.to_string()))?;

    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .map_err(|source| StartError::Bind {
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
    tracing::info!(router = %cfg.id, %http_addr, policy = ?cfg.policy, "router serving");
    Ok(RunningRouter {
        http_addr,
        forwarder,
        metrics,
        http,
        endpoint,
    })
}

impl RunningRouter {
    /// Waits for the HTTP server to drain after shutdown, then closes the node connections.
    pub async fn join(self) {
        let _ = self.http.await;
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"router stopping");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle())
            .await;
    }
}
