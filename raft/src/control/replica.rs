//! [`Replica`]: see the module doc of [`crate::control`].

use super::{CallError, ControlClient, ControlService};
use crate::api::{ControlReply, ControlRequest};
use crate::network::{NetworkConfig, QuicNetworkFactory, serve_raft};
use crate::state::{ClusterState, Member, MemberId};
use crate::store::{self, NodeId, StoreError, TypeConfig};
use openraft::{BasicNode, Raft, SnapshotPolicy};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_transport::tls::Identity;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a replica enters the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Resume from the redb file (a replica that is already a member).
    Resume,
    /// Start a new cluster with this replica as its only voter (`strata router --init`).
    /// Harmless on a replica that already belongs to a cluster.
    Init,
    /// Ask the replica at this control address to add this one as a voter
    /// (`strata router --join ADDR`). Skipped when the redb file says it is already a voter.
    Join(SocketAddr),
}

/// A replica's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaConfig {
    /// Raft id, unique in the cluster and never reused.
    pub id: MemberId,
    /// Its certificate's member name.
    pub name: String,
    /// Where the control endpoint (Raft RPCs, control API, registration) listens.
    pub listen: SocketAddr,
    /// The address others dial; default: the bound address.
    pub advertise: Option<SocketAddr>,
    /// The redb file.
    pub db: PathBuf,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every_logs: u64,
    /// Log entries kept behind the last snapshot (so a briefly lagging follower needs none).
    pub keep_logs: u64,
    /// Time limit of one quick forwarded request (a write, a read), connecting included. A
    /// leader that does not answer within it is reported unreachable, and the caller retries.
    pub request_timeout_ms: u64,
    /// How long `Join` keeps trying.
    pub join_timeout_ms: u64,
}

impl ReplicaConfig {
    /// Defaults tuned for a LAN: heartbeats every 50 ms, elections after 250–500 ms of silence
    /// (plus the leader lease), a snapshot every 1000 entries keeping 200 behind it.
    pub fn new(id: MemberId, name: impl Into<String>, listen: SocketAddr, db: PathBuf) -> Self {
        ReplicaConfig {
            id,
            name: name.into(),
            listen,
            advertise: None,
            db,
            heartbeat_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_every_logs: 1000,
            keep_logs: 200,
            request_timeout_ms: 1000,
            join_timeout_ms: 60_000,
        }
    }
}

/// A replica that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("storage {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Tls(#[from] strata_transport::tls::TlsError),
    #[error("raft config: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    /// The advertised address is not one others can dial.
    #[error("advertised address {addr} is unspecified; set an address peers can reach")]
    Unroutable { addr: SocketAddr },
    #[error("joining through {addr}: {source}")]
    Join {
        addr: SocketAddr,
        #[source]
        source: CallError,
    },
    #[error("initializing: {0}")]
    Init(String),
}

/// See the module doc of [`crate::control`].
pub struct Replica {
    pub id: MemberId,
    raft: Raft<TypeConfig>,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    service: Arc<ControlService>,
    applied: watch::Receiver<Arc<ClusterState>>,
    stop: CancellationToken,
    server: JoinHandle<()>,
}

impl Replica {
    /// Opens the store, starts Raft and the control endpoint, and enters the cluster as
    /// `bootstrap` says. Returns once serving (and, for `Init` and `Join`, once a member).
    pub async fn start(
        cfg: ReplicaConfig,
        identity: &Identity,
        bootstrap: Bootstrap,
    ) -> Result<Replica, ReplicaError> {
        let (log, sm) = store::open(&cfg.db).map_err(|source| ReplicaError::Store {
            path: cfg.db.clone(),
            source,
        })?;
        let applied = sm.subscribe();
        let endpoint = identity.endpoint(cfg.listen)?;
        let bound = endpoint
            .local_addr()
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let addr = cfg.advertise.unwrap_or(bound);
        if addr.ip().is_unspecified() {
            return Err(ReplicaError::Unroutable { addr });
        }
        let config = openraft::Config {
            cluster_name: "strata".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_logs),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Config(e.to_string()))?;
        let network = QuicNetworkFactory::new(endpoint.clone(), &NetworkConfig::default())
            .map_err(|e| ReplicaError::Config(e.to_string()))?;
        let raft = Raft::new(cfg.id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ReplicaError::Raft(e.to_string()))?;
        let client = ControlClient::new(
            endpoint.clone(),
            Duration::from_millis(cfg.request_timeout_ms),
        )
        .map_err(|e| ReplicaError::Config(e.to_string()))?;
        let service = Arc::new(ControlService::new(
            cfg.id,
            raft.clone(),
            applied.clone(),
            client.clone(),
        ));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_raft(
            endpoint.clone(),
            raft.clone(),
            service.clone(),
            stop.clone().cancelled_owned(),
        ));
        let replica = Replica {
            id: cfg.id,
            raft,
            endpoint,
            addr,
            service,
            applied,
            stop,
            server,
        };
        let me = Member {
            id: cfg.id,
            name: cfg.name.clone(),
            raft_addr: addr,
            admin_addr: addr,
        };
        let entered = match bootstrap {
            Bootstrap::Resume => Ok(()),
            Bootstrap::Init => replica.init(me).await,
            Bootstrap::Join(target) => {
                replica
                    .join(
                        me,
                        target,
                        &client,
                        Duration::from_millis(cfg.join_timeout_ms),
                    )
                    .await
            }
        };
        if let Err(e) = entered {
            replica.shutdown().await;
            return Err(e);
        }
        Ok(replica)
    }

    async fn init(&self, me: Member) -> Result<(), ReplicaError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ReplicaError::Init(e.to_string()))?;
        if !initialized {
            let nodes = BTreeMap::from([(me.id, BasicNode::new(me.raft_addr.to_string()))]);
            self.raft
                .initialize(nodes)
                .await
                .map_err(|e| ReplicaError::Init(e.to_string()))?;
        }
        // Record this replica once it leads (a fresh single-voter cluster elects itself).
        let recorded = self.applied.borrow().members.get(&me.id) == Some(&me);
        if !initialized && !recorded {
            self.raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(
                    |m| m.current_leader == Some(me.id),
                    "leading the new cluster",
                )
                .await
                .map_err(|e| ReplicaError::Init(e.to_string()))?;
            let request = ControlRequest::Join { member: me };
            let envelope = crate::api::Envelope {
                forwarded: false,
                request,
            };
            self.service
                .route(envelope)
                .await
                .map_err(|e| ReplicaError::Init(e.to_string()))?;
        }
        Ok(())
    }

    async fn join(
        &self,
        me: Member,
        target: SocketAddr,
        client: &ControlClient,
        limit: Duration,
    ) -> Result<(), ReplicaError> {
        let already = {
            let m = self.raft.metrics().borrow().clone();
            m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == me.id)
        };
        if already {
            return Ok(());
        }
        let deadline = Instant::now() + limit;
        let mut backoff = Duration::from_millis(50);
        loop {
            match client
                .request(target, ControlRequest::Join { member: me.clone() })
                .await
            {
                Ok(ControlReply::Done { .. }) | Ok(_) => return Ok(()),
                Err(e) if e.is_transient() && Instant::now() + backoff < deadline => {
                    tracing::warn!(%target, error = %e, "join: retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(source) => {
                    return Err(ReplicaError::Join {
                        addr: target,
                        source,
                    });
                }
            }
        }
    }

    /// The applied state, updated after every applied batch; the data plane reads this and
    /// never waits on Raft.
    pub fn applied(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.applied.clone()
    }

    /// The control endpoint's address (as advertised).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    pub fn service(&self) -> &Arc<ControlService> {
        &self.service
    }

    /// The leader this replica knows, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Stops Raft, then the endpoint.
    pub async fn shutdown(self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        self.endpoint.close(0u32.into(), b"replica stopping");
    }
}
