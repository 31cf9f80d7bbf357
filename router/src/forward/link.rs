//! A link to one node: its QUIC connection, kept up by a task that subscribes to the node's load
//! reports and KV events and feeds them to the cluster view.
//!
//! A node is *down* when its connection fails or its reports stop for `silence`; the link then
//! marks it disconnected in the view, bumps its epoch (so request tasks on that node fail over
//! at once rather than waiting for QUIC's idle timeout) and reconnects with bounded backoff.
//!
//! Every registered node has a link, pipeline workers included: their `Hello`s and reports
//! keep the instances they are a stage of healthy in the view. Requests go only to drivers; a
//! worker that dies makes its driver fail the requests in flight, which then fail over.

use crate::metrics::{InstanceGauges, Metrics};
use crate::view::ClusterView;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_transport::frame::{self, FrameError};
use strata_transport::proto::{LoadReport, Message, NodeInfo};
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
    /// The node's `Hello` and its last load report with when it came, while linked.
    seen: Mutex<Seen>,
}

/// What the link has heard from the node on its current subscription.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub info: Option<NodeInfo>,
    pub load: Option<(LoadReport, Instant)>,
}

/// What every link of a router shares.
pub struct LinkEnv {
    /// The router's client endpoint (its identity).
    pub endpoint: quinn::Endpoint,
    pub view: Arc<Mutex<ClusterView>>,
    pub metrics: Arc<Metrics>,
    /// The router's name, sent when subscribing.
    pub router: String,
    /// A node whose reports stop for this long is down.
    pub silence: Duration,
    pub connect_timeout: Duration,
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
            seen: Mutex::new(Seen::default()),
        })
    }

    /// The live connection, when the node is up.
    pub fn connection(&self) -> Option<quinn::Connection> {
        lock(&self.conn).clone()
    }

    /// The node's `Hello` and last report, while linked.
    pub fn seen(&self) -> Seen {
        lock(&self.seen).clone()
    }

    /// Changes whenever the node goes down.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    fn down(&self, view: &Mutex<ClusterView>, metrics: &Metrics, silence: Duration) {
        *lock(&self.seen) = Seen::default();
        if let Some(c) = lock(&self.conn).take() {
            c.close(quinn::VarInt::from_u32(1), b"node silent");
        }
        let mut view = lock(view);
        view.handle_disconnect(&self.node);
        self.publish(&view, metrics, silence);
        drop(view);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Copies what the view knows of the instances this node is a stage of (driver or
    /// worker) into the metrics gauges.
    fn publish(&self, view: &ClusterView, metrics: &Metrics, silence: Duration) {
        let now = Instant::now();
        for inst in view.instances_of(&self.node) {
            let load = inst.load.as_ref();
            metrics.set_instance(
                &inst.id,
                InstanceGauges {
                    healthy: inst.healthy(now, silence),
                    waiting: load.map_or(0, |l| l.waiting),
                    running: load.map_or(0, |l| l.running),
                    correction: inst.correction,
                },
            );
        }
    }

    /// Keeps the link up until `shutdown`.
    pub async fn run(self: Arc<Self>, env: Arc<LinkEnv>, shutdown: CancellationToken) {
        let LinkEnv {
            endpoint,
            view,
            metrics,
            router,
            silence,
            connect_timeout,
        } = &*env;
        let (silence, connect_timeout) = (*silence, *connect_timeout);
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                r = self.subscribe(endpoint, view, metrics, router, silence, connect_timeout) => r,
                () = shutdown.cancelled() => return,
            };
            if let Err(e) = result {
                tracing::debug!(node = %self.node, error = %e, "link down");
            }
            self.down(view, metrics, silence);
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
        metrics: &Metrics,
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
        lock(&self.seen).info = Some(info.clone());
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
                    lock(&self.seen).load = Some((report.clone(), Instant::now()));
                    let mut view = lock(view);
                    view.handle_load(&self.node, report, Instant::now(), conn.rtt());
                    self.publish(&view, metrics, silence);
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
