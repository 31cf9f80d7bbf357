//! The messages of node ↔ router streams. Each stream carries length-prefixed frames of one
//! [`Message`] each (see [`frame`](crate::frame)).

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
    /// `(token, log-probability)` of the most likely tokens, when asked for.
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

/// Node → routers, periodically and on change: what placement needs to know.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct LoadReport {
    pub waiting: u32,
    pub running: u32,
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

/// Everything that crosses a node ↔ router stream.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub enum Message {
    Generate(GenerateRequest),
    Token(TokenEvent),
    Finish(FinishEvent),
    Cancel { request: RequestId },
    Load(LoadReport),
    KvEvents(Vec<WireKvEvent>),
}
