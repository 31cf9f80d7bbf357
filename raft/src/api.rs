//! The control API: what `strata admin`, a joining replica and a forwarding follower ask of a
//! replica, and what it answers. Serde JSON in a `Message::Raft` frame of kind
//! [`RpcKind::Control`](crate::network::RpcKind::Control), one request and one answer per
//! stream.
//!
//! Writes and linearizable reads need the leader: a follower forwards them (once: a forwarded
//! request is never forwarded again, so a stale leader hint cannot loop), and says
//! [`ControlError::NoLeader`] while the cluster has none.

use crate::state::{ClusterState, Command, Member, MemberId, Node, Rejected};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A request with its routing flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Set by a follower that forwards to the leader; the leader answers it itself or fails.
    pub forwarded: bool,
    pub request: ControlRequest,
}

/// See the module doc. Every variant but `Status { local: true }` runs on the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Apply one command to the replicated state.
    Write { command: Command },
    /// The applied state, read linearizably.
    State,
    /// Raft progress, members and nodes with their health. `local`: this replica's own view,
    /// without asking the leader (what an operator wants when the leader is unreachable).
    Status { local: bool },
    /// A replica asks to become a voter (`strata router --join`): added as a learner, caught
    /// up, promoted, and recorded as a member.
    Join { member: Member },
    /// Add a replica as a learner (it replicates but does not vote) and record it.
    AddLearner { member: Member },
    /// Make a learner a voter.
    Promote { id: MemberId },
    /// Remove a replica from the voters and learners, and forget its record.
    RemoveMember { id: MemberId },
    /// Hand leadership to another voter.
    TransferLeader { to: MemberId },
    /// Build a snapshot now on the leader (the log behind it is purged by policy).
    Snapshot,
    /// Replica to replica, from a leader handing over: start an election now.
    Campaign,
}

impl ControlRequest {
    /// The time limit of a request that may legitimately take long (a learner catching up,
    /// a transfer, a snapshot); `None` for the quick ones.
    pub fn slow_limit(&self) -> Option<std::time::Duration> {
        match self {
            ControlRequest::Write { .. }
            | ControlRequest::State
            | ControlRequest::Status { .. }
            | ControlRequest::Campaign => None,
            _ => Some(std::time::Duration::from_secs(90)),
        }
    }

    /// Whether the request changes anything (and so needs the admin role).
    pub fn is_write(&self) -> bool {
        !matches!(self, ControlRequest::State | ControlRequest::Status { .. })
    }
}

/// A successful answer. Externally tagged: the state inside has integer map keys, which
/// serde's internally tagged enums cannot read back from JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlReply {
    /// A command was applied: the state's version after it, and its log index.
    Written {
        version: u64,
        log_index: u64,
    },
    /// The applied state, as of log index `applied_index` on replica `by`.
    State {
        by: MemberId,
        applied_index: u64,
        state: Box<ClusterState>,
    },
    Status(Box<Status>),
    /// A membership change or a transfer took effect; the log index of the change.
    Done {
        log_index: u64,
    },
    /// A snapshot was built, covering the log up to `index`.
    Snapshot {
        index: u64,
    },
}

/// Why a control request failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum ControlError {
    /// The caller's certificate lacks the role the request needs.
    #[error("refused: {what} needs a certificate with the {need} role; {have}")]
    Unauthorized {
        what: String,
        need: String,
        have: String,
    },
    /// No leader is known (an election is running); try again shortly.
    #[error("no leader is known yet (an election may be running); retry shortly")]
    NoLeader,
    /// The leader could not be reached from this replica.
    #[error("leader {leader} at {addr} is unreachable from this replica: {reason}")]
    LeaderUnreachable {
        leader: MemberId,
        addr: String,
        reason: String,
    },
    /// A forwarded request reached a replica that is no longer the leader.
    #[error("replica {id} is not the leader (leader: {leader:?})")]
    NotLeader {
        id: MemberId,
        leader: Option<MemberId>,
    },
    /// The state machine rejected the command; nothing changed.
    #[error("rejected: {0}")]
    Rejected(Rejected),
    /// A membership request that cannot be done as asked.
    #[error("membership: {0}")]
    Membership(String),
    /// The request does not decode or names something invalid.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Raft failed (shut down, storage error).
    #[error("raft: {0}")]
    Raft(String),
    /// The request did not finish within its time limit; it may still take effect.
    #[error("timed out after {after_ms} ms; the request may still take effect")]
    Timeout { after_ms: u64 },
}

impl ControlError {
    /// Whether the same request may succeed if sent again shortly (to this or another replica).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ControlError::NoLeader
                | ControlError::LeaderUnreachable { .. }
                | ControlError::NotLeader { .. }
                | ControlError::Timeout { .. }
        )
    }
}

/// What one request gets back.
pub type ControlAnswer = Result<ControlReply, ControlError>;

/// Raft progress and the cluster's members and nodes, from one replica's point of view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The replica that answered.
    pub by: MemberId,
    /// Its role: `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// The leader's Raft id, when one is known.
    pub leader: Option<MemberId>,
    pub term: u64,
    /// The highest log index known committed (the answering replica's applied index).
    pub commit_index: u64,
    pub last_log_index: u64,
    /// The last log index covered by a snapshot.
    pub snapshot_index: Option<u64>,
    /// The log is purged up to here.
    pub purged_index: Option<u64>,
    /// The state's version.
    pub version: u64,
    pub policy: String,
    pub members: Vec<MemberStatus>,
    pub nodes: Vec<NodeStatus>,
    /// Model name → instance count.
    pub deployments: Vec<(String, usize)>,
}

/// One replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: MemberId,
    pub name: String,
    pub raft_addr: String,
    pub admin_addr: Option<SocketAddr>,
    /// `voter` or `learner`.
    pub kind: String,
    /// The leader's replication progress for this replica (on the leader only).
    pub matched_index: Option<u64>,
}

/// One node: its record and what the answering router sees of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub record: Node,
    /// Models with a stage on this node.
    pub models: Vec<String>,
    /// `None`: the router has no link to it yet.
    pub runtime: Option<NodeRuntime>,
}

/// A node as the router's link sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRuntime {
    /// Connected and reporting.
    pub healthy: bool,
    pub waiting: u32,
    pub running: u32,
    pub gpu_free_blocks: u64,
    pub gpu_blocks: u64,
    pub host_free_blocks: u64,
    pub host_blocks: u64,
    /// Milliseconds since its last load report.
    pub report_age_ms: Option<u64>,
}

/// What a router supplies that Raft does not know: the runtime side of each node.
pub trait NodeRuntimeSource: Send + Sync {
    /// The runtime view of node `id`, if this router has one.
    fn node_runtime(&self, id: &str) -> Option<NodeRuntime>;
}
