//! What the engine is asked to do, and how a request ends.

use super::plan::{Sampling, SeqId};
use std::time::Duration;
use strata_transport::proto::SloClass;

/// A generation request as the engine sees it: token ids in, token ids out.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    /// Output tokens to generate at most (≥ 1).
    pub max_tokens: usize,
    /// Tokens that end generation when sampled (EOS, stop ids). Empty: run to `max_tokens`.
    pub stop_tokens: Vec<u32>,
    pub sampling: Sampling,
    pub slo: SloClass,
    /// Separates tenants in the prefix cache.
    pub cache_salt: u64,
    /// Return the logits of every sampled position (tests and numerics checks).
    pub want_logits: bool,
    /// When the request reached the node (engine clock).
    pub arrival: Duration,
}

impl Request {
    /// A greedy request with the default SLO, arriving at time zero.
    pub fn new(id: SeqId, prompt: Vec<u32>, max_tokens: usize) -> Self {
        Request {
            id,
            prompt,
            max_tokens,
            stop_tokens: Vec::new(),
            sampling: Sampling::default(),
            slo: SloClass::default(),
            cache_salt: 0,
            want_logits: false,
            arrival: Duration::ZERO,
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` were generated.
    Length,
    /// A stop token was sampled.
    Stop,
    /// The client cancelled.
    Cancelled,
    /// The step that ran it failed.
    Error(String),
}

/// A request the engine refuses at submission. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The prompt is empty.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// `max_tokens` is zero.
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    /// Prompt plus output would pass the model's context.
    #[error(
        "prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context of {limit}"
    )]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    /// The sequence could never be held by this node's tiers.
    #[error(
        "a sequence of {tokens} tokens needs {needed} blocks per layer; this node can hold {limit}"
    )]
    TooLarge {
        tokens: usize,
        needed: usize,
        limit: usize,
    },
    /// The waiting queue is full.
    #[error("the waiting queue is full ({limit} requests)")]
    QueueFull { limit: usize },
    /// A request with this id is already in the engine.
    #[error("request {0} is already in the engine")]
    Duplicate(SeqId),
}
