//! The messages of node ↔ router streams. Each stream carries length-prefixed frames of one
//! [`Message`] each (see [`frame`](crate::frame)).
//!
//! Streams, each a QUIC bidirectional stream opened by the router:
//! - **request**: router sends `Generate`; node answers `Token`… then `Finish`, or `Reject`
//!   before any token. The router keeps its send side open while it waits; a `Cancel` frame, a
//!   reset or a finished send side all cancel the request on the node.
//! - **subscription**: router sends `Subscribe`; node answers `Hello` once, then `Load` every
//!   report interval and on change, and `KvEvents` as its prefix cache changes.
//! - **raft** (router ↔ router, on the control-plane endpoint): the caller sends one `Raft`
//!   request; the callee answers one `Raft` response with the same `kind`, then both finish.
//!   The body is serde JSON of openraft's types, which are not rkyv types; the outer frame is
//!   still an rkyv archive, validated before use.
//! - **registration** (node → router, on the router's control endpoint): the node sends one
//!   `Register` and finishes its send side; the router answers one `Registered`, then
//!   finishes. The router knows who is calling from the node's certificate, not from the
//!   message.
//! - **stage** (node → node, down a pipeline's chain): see [`stage`](super::stage).

use super::cost::CostProfile;
use super::ids::RequestId;
use super::slo::SloClass;
use rkyv::{Archive, Deserialize, Serialize};

/// How to pick tokens (greedy when `temperature` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Archive, Serialize, Deserialize)]
pub struct WireSampling {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

/// Router → node: generate for a prompt of token ids.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub request: RequestId,
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    pub stop_tokens: Vec<u32>,
    pub sampling: WireSampling,
    pub slo: SloClass,
    /// Separates tenants in the prefix cache.
    pub cache_salt: u64,
    /// Top log-probabilities to return with each token (0: none).
    pub logprobs: u8,
}

/// Node → router: one generated token.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct TokenEvent {
    pub request: RequestId,
    /// 0 for the first token.
    pub index: u32,
    pub token: u32,
    /// Node clock, microseconds, when the token was produced.
    pub at_us: u64,
    /// Log-probability of `token` under the model (0.0 when logprobs were not asked for).
    pub logprob: f32,
    /// `(token, log-probability)` of the most likely tokens, most likely first, when asked for.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum WireFinishReason {
    Length,
    Stop,
    Cancelled,
    Error(String),
}

/// Node → router: the generation ended.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct FinishEvent {
    pub request: RequestId,
    pub reason: WireFinishReason,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub cached_tokens: u32,
}

/// Why a node refused a request before running it. Nothing was queued; the router may place
/// the request elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum RejectReason {
    /// The node's waiting queue is full.
    QueueFull,
    /// Prompt plus `max_tokens` pass the model's context.
    TooLong,
    /// The sequence could never fit this node's tiers.
    TooLarge,
    /// The request is malformed (empty prompt, zero `max_tokens`, duplicate id).
    Invalid,
    /// The node is shutting down.
    ShuttingDown,
}

/// Node → router: the request was refused (see [`RejectReason`]).
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct RejectEvent {
    pub request: RequestId,
    pub reason: RejectReason,
    pub message: String,
}

/// What a node serves and how its KV cache is shaped: sent once per subscription.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id in the cluster (as in `cluster.json`).
    pub node: String,
    /// The model name requests use.
    pub model: String,
    /// `cpu`, `cuda` or `sim`.
    pub executor: String,
    pub vocab_size: u32,
    pub num_layers: u32,
    /// Prompt plus output tokens a sequence may hold.
    pub max_seq_tokens: u32,
    /// Tokens per KV block (the prefix hash granularity).
    pub block_tokens: u32,
    /// Bytes of one block of one layer.
    pub block_bytes: u64,
    pub gpu_blocks: u64,
    pub host_blocks: u64,
    /// Token ids that end generation (the model's end-of-sequence ids).
    pub eos_tokens: Vec<u32>,
}

/// Node → routers, periodically and on change: what placement needs to know.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct LoadReport {
    /// Increases with every report of a subscription.
    pub seq: u64,
    /// Node clock, microseconds.
    pub at_us: u64,
    pub waiting: u32,
    pub running: u32,
    /// Prompt tokens of the waiting requests, not yet prefilled.
    pub waiting_prefill_tokens: u64,
    pub gpu_free_blocks: u64,
    pub host_free_blocks: u64,
    /// The node's own prediction of how long a new request would wait, microseconds.
    pub predicted_queue_wait_us: u64,
    pub cost: CostProfile,
}

/// A change to the prefix cache of a node, per tier (0 = GPU, 1 = host).
#[derive(Debug, Clone, Copy, PartialEq, Archive, Serialize, Deserialize)]
pub enum WireKvEvent {
    Stored { tier: u8, hash: u64, layer: u32 },
    Removed { tier: u8, hash: u64, layer: u32 },
}

/// Node → router (control endpoint): register me, or update my record after a restart.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct Registration {
    /// The node's id in the cluster.
    pub node: String,
    /// The address routers dial (a `SocketAddr` as text).
    pub addr: String,
    /// `cpu`, `cuda` or `sim`.
    pub executor: String,
    pub devices: u32,
    pub device_memory_bytes: u64,
    pub host_memory_bytes: u64,
}

/// Router → node: the answer to a [`Registration`].
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct RegisterAnswer {
    pub accepted: bool,
    /// ClusterState version after the write (0 when refused).
    pub version: u64,
    /// A refusal that may succeed later (no leader yet, leader unreachable).
    pub retry: bool,
    pub message: String,
}

/// Everything that crosses a node ↔ router stream (see the module doc for which stream carries
/// which).
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum Message {
    Generate(GenerateRequest),
    Token(TokenEvent),
    Finish(FinishEvent),
    Reject(RejectEvent),
    Cancel {
        request: RequestId,
    },
    Subscribe {
        /// The subscriber's name, for the node's logs.
        router: String,
    },
    Hello(NodeInfo),
    Load(LoadReport),
    KvEvents(Vec<WireKvEvent>),
    /// One Raft RPC or its answer: `kind` names the RPC (the raft crate's numbering), `body`
    /// is its serde encoding, opaque to the transport.
    Raft {
        kind: u8,
        body: Vec<u8>,
    },
    Register(Registration),
    Registered(RegisterAnswer),
    /// Pipeline `Stage` stream (see [`stage`](super::stage)).
    StageOpen(super::stage::StageOpen),
    StageReady(super::stage::StageReady),
    StageStep(super::stage::StageStep),
    StageResult(super::stage::StageResult),
}

impl Message {
    /// The variant's name, for logs and errors (never the payload, which may be large).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Generate(_) => "Generate",
            Message::Token(_) => "Token",
            Message::Finish(_) => "Finish",
            Message::Reject(_) => "Reject",
            Message::Cancel { .. } => "Cancel",
            Message::Subscribe { .. } => "Subscribe",
            Message::Hello(_) => "Hello",
            Message::Load(_) => "Load",
            Message::KvEvents(_) => "KvEvents",
            Message::Raft { .. } => "Raft",
            Message::Register(_) => "Register",
            Message::Registered(_) => "Registered",
            Message::StageOpen(_) => "StageOpen",
            Message::StageReady(_) => "StageReady",
            Message::StageStep(_) => "StageStep",
            Message::StageResult(_) => "StageResult",
        }
    }
}
