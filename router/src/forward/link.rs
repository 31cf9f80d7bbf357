//! A link to one node: its QUIC connection, kept up by a task that subscribes to the node's load
//! reports and KV events and feeds them to the cluster view.
//!
//! A node is *down* when its connection fails or its reports stop for `silence`; the link then
//! marks it disconnected in the view, bumps its epoch (so request tasks on that node fail over
//! at once rather than waiting for QUIC's idle timeout) and reconnects with bounded backoff.

use crate::view::ClusterView;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_transport::frame::{self, FrameError};
use strata_transport::proto::Message;
use strata_transport::tls::SERVER_NAME;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Frames on a subscription are small; anything larger is a broken peer.
pub const MAX_SUBSCRIPTION_FRAME: usize = 16 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The shared end of a link: the live connection, if any, and the epoch that changes whenever
/// the node goes down.
#[derive(Debug)]
pub struct NodeLink {
    pub node: String,
    pub addr: SocketAddr,
    conn: Mutex<Option<quinn::Connection>>,
    epoch: watch::Sender<u64>,
}

/// Why one subscription ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("no report for {0:?}")]
    Silent(Duration),
    #[error("the node ended the subscription")]
    Ended,
    #[error("unexpected first message on a subscription")]
    NoHello,
}

impl NodeLink {
    pub fn new(node: String, addr: SocketAddr) -> Arc<Self> {
        Arc::new(NodeLink {
            node,
            addr,
            conn: Mutex::new(None),
            epoch: watch::channel(0).0,
        })
    }

    /// The live connection, when the node is up.
    pub fn connection(&self) -> Option<quinn::Connection> {
        lock(&self.conn).clone()
    }

    /// Changes whenever the node goes down.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    fn down(&self, view: &Mutex<ClusterView>) {
        if let Some(c) = lock(&self.conn).take() {
            c.close(quinn::VarInt::from_u32(1), b"node silent");
        }
        lock(view).handle_disconnect(&self.node);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Keeps the link up until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        view: Arc<Mutex<ClusterView>>,
        router: String,
        silence: Duration,
        connect_timeout: Duration,
        shutdown: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.subscribe(&endpoint, &view, &router, silence, connect_timeout) => r,
                () = shutdown.cancelled() => return,
            };
            if let Err(e) = result {
                tracing::debug!(node = %self.node, error = %e, "link down");
            }
            self.down(&view);
            if started.elapsed() > 2 * BACKOFF_MAX {
                backoff = BACKOFF_MIN; // it was up for a while: retry promptly
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn subscribe(
        &self,
        endpoint: &quinn::Endpoint,
        view: &Mutex<ClusterView>,
        router: &str,
        silence: Duration,
        connect_timeout: Duration,
    ) -> Result<(), LinkError> {
        let connecting = endpoint
            .connect(self.addr, SERVER_NAME)
            .map_err(|e| LinkError::Connect(e.to_string()))?;
        let conn = tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|_| LinkError::Connect(format!("timed out after {connect_timeout:?}")))??;
        let (mut send, mut recv) = conn.open_bi().await?;
        frame::write_frame(
            &mut send,
            &Message::Subscribe {
                router: router.to_string(),
            },
        )
        .await?;
        let first = tokio::time::timeout(
            silence,
            frame::read_frame(&mut recv, MAX_SUBSCRIPTION_FRAME),
        )
        .await
        .map_err(|_| LinkError::Silent(silence))??;
        let Some(Message::Hello(info)) = first else {
            return Err(LinkError::NoHello);
        };
        tracing::info!(node = %self.node, model = %info.model, executor = %info.executor, "node linked");
        lock(view).handle_hello(&self.node, info);
        *lock(&self.conn) = Some(conn.clone());
        loop {
            let msg = tokio::time::timeout(
                silence,
                frame::read_frame(&mut recv, MAX_SUBSCRIPTION_FRAME),
            )
            .await
            .map_err(|_| LinkError::Silent(silence))??;
            match msg {
                Some(Message::Load(report)) => {
                    lock(view).handle_load(&self.node, report, Instant::now(), conn.rtt());
                }
                Some(Message::KvEvents(events)) => lock(view).handle_kv_events(&self.node, &events),
                Some(other) => {
                    tracing::warn!(node = %self.node, "ignoring {} on a subscription", other.kind());
                }
                None => return Err(LinkError::Ended),
            }
        }
    }
}

/// Locks a mutex, recovering from poisoning: the guarded state (a view, a connection handle)
/// is valid after any panic in a holder because every update is a single assignment.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
