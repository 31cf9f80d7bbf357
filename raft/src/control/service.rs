//! The callee side of the control API: who may ask what, and where each request runs.
//!
//! Requests that need the leader run locally when this replica leads; otherwise they are
//! forwarded once to the leader openraft names. Reads come back linearizable: the leader
//! confirms its leadership with a quorum (`ensure_linearizable`) and waits until its state
//! machine has applied everything committed before answering.

use super::client::{CallError, ControlClient};
use super::membership;
use crate::api::{
    ControlAnswer, ControlError, ControlReply, ControlRequest, Envelope, MemberStatus,
    NodeRuntimeSource, NodeStatus, Status,
};
use crate::state::{ClusterState, Command, Hardware};
use crate::store::{NodeId, TypeConfig};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use strata_transport::proto::{RegisterAnswer, Registration};
use strata_transport::tls::{PeerIdentity, Role};
use tokio::sync::watch;

/// Where a request that needs the leader must go instead.
pub(crate) enum Redirect {
    /// To this leader.
    Leader { id: NodeId, addr: String },
    /// It failed here.
    Failed(ControlError),
}

impl From<ControlError> for Redirect {
    fn from(e: ControlError) -> Self {
        Redirect::Failed(e)
    }
}

/// What `raft` calls returned when they could not run here.
pub(crate) fn redirect<E>(e: RaftError<NodeId, E>) -> Redirect
where
    E: std::error::Error + TryAsRef<ForwardToLeader<NodeId, BasicNode>>,
{
    match &e {
        RaftError::APIError(api) => match api.try_as_ref() {
            Some(f) => match (f.leader_id, &f.leader_node) {
                (Some(id), Some(node)) => Redirect::Leader {
                    id,
                    addr: node.addr.clone(),
                },
                _ => Redirect::Failed(ControlError::NoLeader),
            },
            None => Redirect::Failed(ControlError::Membership(api.to_string())),
        },
        RaftError::Fatal(f) => Redirect::Failed(ControlError::Raft(f.to_string())),
    }
}

/// Errors that may carry a "the leader is elsewhere" answer.
pub(crate) trait TryAsRef<T> {
    fn try_as_ref(&self) -> Option<&T>;
}

impl TryAsRef<ForwardToLeader<NodeId, BasicNode>> for ClientWriteError<NodeId, BasicNode> {
    fn try_as_ref(&self) -> Option<&ForwardToLeader<NodeId, BasicNode>> {
        match self {
            ClientWriteError::ForwardToLeader(f) => Some(f),
            ClientWriteError::ChangeMembershipError(_) => None,
        }
    }
}

impl TryAsRef<ForwardToLeader<NodeId, BasicNode>>
    for openraft::error::CheckIsLeaderError<NodeId, BasicNode>
{
    fn try_as_ref(&self) -> Option<&ForwardToLeader<NodeId, BasicNode>> {
        match self {
            openraft::error::CheckIsLeaderError::ForwardToLeader(f) => Some(f),
            openraft::error::CheckIsLeaderError::QuorumNotEnough(_) => None,
        }
    }
}

/// See the module doc. Shared by every connection of the replica's control endpoint.
pub struct ControlService {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) applied: watch::Receiver<Arc<ClusterState>>,
    pub(crate) client: ControlClient,
    runtime: RwLock<Option<Arc<dyn NodeRuntimeSource>>>,
}

impl ControlService {
    /// A service for replica `id`; `client` calls other replicas with this replica's identity.
    pub fn new(
        id: NodeId,
        raft: Raft<TypeConfig>,
        applied: watch::Receiver<Arc<ClusterState>>,
        client: ControlClient,
    ) -> Self {
        ControlService {
            id,
            raft,
            applied,
            client,
            runtime: RwLock::new(None),
        }
    }

    /// Where `status` finds node health and load (the router's cluster view).
    pub fn set_runtime(&self, source: Arc<dyn NodeRuntimeSource>) {
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Answers one control request from `peer`.
    pub async fn handle(&self, peer: Option<&PeerIdentity>, envelope: Envelope) -> ControlAnswer {
        authorize(peer, &envelope)?;
        self.route(envelope).await
    }

    /// Runs `envelope` here, or forwards it once to the leader.
    pub(crate) async fn route(&self, envelope: Envelope) -> ControlAnswer {
        let redirect = match self.run(&envelope.request).await {
            Ok(reply) => return Ok(reply),
            Err(r) => r,
        };
        let (leader, addr) = match redirect {
            Redirect::Failed(e) => return Err(e),
            Redirect::Leader { id, addr } => (id, addr),
        };
        if envelope.forwarded || leader == self.id {
            return Err(ControlError::NotLeader {
                id: self.id,
                leader: Some(leader),
            });
        }
        let unreachable = |reason: String| ControlError::LeaderUnreachable {
            leader,
            addr: addr.clone(),
            reason,
        };
        let target: SocketAddr = addr
            .parse()
            .map_err(|_| unreachable("not a socket address".into()))?;
        let forwarded = Envelope {
            forwarded: true,
            request: envelope.request,
        };
        let limit = forwarded
            .request
            .slow_limit()
            .unwrap_or_else(|| self.client.timeout());
        // A leader that dies leaves the forwarded request unanswered until the time limit;
        // its followers notice sooner, when they start electing a successor. Give up then, so
        // the caller retries at once and reaches the new leader.
        let mut metrics = self.raft.metrics();
        let moved = async move {
            let _ = metrics.wait_for(|m| m.current_leader != Some(leader)).await;
        };
        tokio::select! {
            answer = self.client.call_within(target, &forwarded, limit) => match answer {
                Ok(answer) => answer,
                Err(CallError::Control(e)) => Err(e),
                Err(e @ CallError::Wire { .. }) => Err(unreachable(e.to_string())),
            },
            () = moved => Err(unreachable(
                "it lost leadership while the request waited (it may still take effect)".into(),
            )),
        }
    }

    /// Runs a request on this replica.
    async fn run(&self, request: &ControlRequest) -> Result<ControlReply, Redirect> {
        match request {
            ControlRequest::Write { command } => self.write(command.clone()).await,
            ControlRequest::State => {
                self.raft.ensure_linearizable().await.map_err(redirect)?;
                let applied_index = self.metrics().last_applied.map_or(0, |l| l.index);
                Ok(ControlReply::State {
                    by: self.id,
                    applied_index,
                    state: Box::new((**self.applied.borrow()).clone()),
                })
            }
            ControlRequest::Status { local } => {
                if !*local {
                    self.raft.ensure_linearizable().await.map_err(redirect)?;
                }
                Ok(ControlReply::Status(Box::new(self.status())))
            }
            ControlRequest::Join { member } => membership::join(self, member).await,
            ControlRequest::AddLearner { member } => membership::add_learner(self, member).await,
            ControlRequest::Promote { id } => membership::promote(self, *id).await,
            ControlRequest::RemoveMember { id } => membership::remove(self, *id).await,
            ControlRequest::TransferLeader { to } => membership::transfer(self, *to).await,
            ControlRequest::Campaign => membership::campaign(self).await,
            ControlRequest::Snapshot => membership::snapshot(self).await,
        }
    }

    /// Proposes one command; answers once it is committed and applied here.
    pub(crate) async fn write(&self, command: Command) -> Result<ControlReply, Redirect> {
        let resp = self.raft.client_write(command).await.map_err(redirect)?;
        match resp.data {
            Ok(applied) => Ok(ControlReply::Written {
                version: applied.version,
                log_index: resp.log_id.index,
            }),
            Err(rejected) => Err(ControlError::Rejected(rejected).into()),
        }
    }

    pub(crate) fn metrics(&self) -> openraft::RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// This replica's view of Raft, members and nodes.
    pub fn status(&self) -> Status {
        let m = self.metrics();
        let state = self.applied.borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let record = state.members.get(id);
                MemberStatus {
                    id: *id,
                    name: record.map_or_else(String::new, |r| r.name.clone()),
                    raft_addr: node.addr.clone(),
                    admin_addr: record.map(|r| r.admin_addr),
                    kind: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .into(),
                    matched_index: m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id))
                        .and_then(|l| l.map(|l| l.index))
                        .or((*id == m.id).then_some(m.last_log_index).flatten()),
                }
            })
            .collect();
        let runtime = self
            .runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let nodes = state
            .nodes
            .values()
            .map(|n| NodeStatus {
                record: n.clone(),
                models: state.deployments_on(&n.id).map(str::to_owned).collect(),
                runtime: runtime.as_ref().and_then(|r| r.node_runtime(&n.id)),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        Status {
            by: self.id,
            role: role.into(),
            leader: m.current_leader,
            term: m.current_term,
            commit_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            version: state.version,
            policy: state.policy.to_string(),
            members,
            nodes,
            deployments: state
                .deployments
                .values()
                .map(|d| (d.model.clone(), d.instances.len()))
                .collect(),
        }
    }

    /// Registers the calling node: its id is its certificate's member name, and its
    /// certificate's fingerprint is recorded.
    pub async fn register(&self, peer: Option<&PeerIdentity>, reg: Registration) -> RegisterAnswer {
        let refuse = |message: String| RegisterAnswer {
            accepted: false,
            version: 0,
            retry: false,
            message,
        };
        let Some(peer) = peer.filter(|p| p.role == Some(Role::Node)) else {
            return refuse(format!(
                "registration needs a certificate with the node role; {}",
                describe(peer)
            ));
        };
        if peer.member != reg.node {
            return refuse(format!(
                "node `{}` presented the certificate of `{}`",
                reg.node, peer.member
            ));
        }
        let Ok(addr) = reg.addr.parse::<SocketAddr>() else {
            return refuse(format!("address {:?} is not a socket address", reg.addr));
        };
        let command = Command::RegisterNode {
            id: reg.node,
            addr,
            cert_fingerprint: peer.fingerprint.clone(),
            hardware: Hardware {
                executor: reg.executor,
                devices: reg.devices,
                device_memory_bytes: reg.device_memory_bytes,
                host_memory_bytes: reg.host_memory_bytes,
            },
        };
        let envelope = Envelope {
            forwarded: false,
            request: ControlRequest::Write { command },
        };
        match self.route(envelope).await {
            Ok(ControlReply::Written { version, .. }) => RegisterAnswer {
                accepted: true,
                version,
                retry: false,
                message: String::new(),
            },
            Ok(other) => refuse(format!("unexpected reply {other:?}")),
            Err(e) => RegisterAnswer {
                accepted: false,
                version: 0,
                retry: e.is_transient(),
                message: e.to_string(),
            },
        }
    }
}

/// Who may ask what: Raft's own traffic and forwarded requests come from replicas (router
/// role), a replica joins with its own certificate, reads need the admin or router role, and
/// everything else the admin role.
fn authorize(peer: Option<&PeerIdentity>, envelope: &Envelope) -> Result<(), ControlError> {
    let role = peer.and_then(|p| p.role);
    let refuse = |what: &str, need: &str| {
        Err(ControlError::Unauthorized {
            what: what.into(),
            need: need.into(),
            have: describe(peer),
        })
    };
    let request = &envelope.request;
    if envelope.forwarded || matches!(request, ControlRequest::Campaign) {
        return match role {
            Some(Role::Router) => Ok(()),
            _ => refuse("a replica-to-replica request", "router"),
        };
    }
    if let ControlRequest::Join { member } = request {
        return match peer {
            Some(p) if p.role == Some(Role::Router) && p.member == member.name => Ok(()),
            Some(p) if p.role == Some(Role::Router) => Err(ControlError::Unauthorized {
                what: format!("joining as `{}`", member.name),
                need: "router".into(),
                have: format!("the certificate names `{}`", p.member),
            }),
            _ => refuse("joining the cluster", "router"),
        };
    }
    match (request.is_write(), role) {
        (_, Some(Role::Admin)) | (false, Some(Role::Router)) => Ok(()),
        (true, _) => refuse("changing the cluster", "admin"),
        (false, _) => refuse("reading the cluster's state", "admin"),
    }
}

fn describe(peer: Option<&PeerIdentity>) -> String {
    match peer {
        None => "the connection presented no certificate".into(),
        Some(p) => match p.role {
            Some(role) => format!("the certificate of `{}` has the {role} role", p.member),
            None => format!("the certificate of `{}` has no role", p.member),
        },
    }
}
