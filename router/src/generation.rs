//! The seam between the HTTP front end and the forwarder: a [`Generation`] goes in, a
//! [`GenStream`] of token events comes out.
//!
//! The HTTP layer tokenizes, validates and renders; the [`Backend`] places the request on an
//! instance, forwards it, and fails over. Dropping a `GenStream` cancels the work on the node.

use futures_util::future::BoxFuture;
use std::time::Duration;
use strata_transport::proto::{SloClass, WireSampling};
use tokio::sync::mpsc;

/// A tokenized request, ready to place.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The model name as the client gave it (known to the backend).
    pub model: String,
    pub prompt: Vec<u32>,
    /// Output tokens to generate at most (≥ 1).
    pub max_tokens: u32,
    /// Token ids that end generation besides the model's end-of-sequence ids.
    pub stop_tokens: Vec<u32>,
    pub sampling: WireSampling,
    pub slo: SloClass,
    /// Top log-probabilities to return with each token (0: none).
    pub logprobs: u8,
    /// Separates tenants in the prefix cache (a hash of the OpenAI `user`, 0 without one).
    pub cache_salt: u64,
    /// Generate past the model's end-of-sequence tokens (to `max_tokens`).
    pub ignore_eos: bool,
}

/// One event of a generation, in order: tokens, then exactly one `Finish` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Token {
        /// 0 for the first output token; continuous across failover.
        index: u32,
        token: u32,
        /// Log-probability of `token` (0.0 when logprobs were not asked for).
        logprob: f32,
        /// `(token, log-probability)` of the most likely tokens, when asked for.
        top_logprobs: Vec<(u32, f32)>,
    },
    Finish {
        reason: FinishReason,
        usage: Usage,
    },
    /// The generation could not complete (every instance failed, or a node error).
    Failed {
        message: String,
    },
}

/// Why a generation ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` were generated.
    Length,
    /// An end-of-sequence or stop token was sampled.
    Stop,
}

/// Token counts of a finished generation, as OpenAI's `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens the node served from its prefix cache.
    pub cached_tokens: u32,
}

/// A placed, running generation. Dropping it cancels the work on the node.
#[derive(Debug)]
pub struct GenStream {
    /// The instance serving it (for a single-node instance, the node id); the value of the
    /// `x-strata-instance` response header. After a failover, later events come from another
    /// instance; this names the first.
    pub instance: String,
    /// Time from `GenRequestStart` (the HTTP request's arrival) to the `Generate` frame being
    /// written to the node's stream.
    pub routing: Duration,
    pub events: mpsc::Receiver<GenEvent>,
}

/// Why a generation could not be started. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenError {
    /// No deployment serves this model (404).
    #[error("the model `{model}` does not exist")]
    UnknownModel { model: String },
    /// The prompt plus `max_tokens` exceed the model's context (400).
    #[error(
        "this model's maximum context length is {limit} tokens; the prompt has {prompt} and max_tokens is {max_tokens}"
    )]
    ContextTooLong {
        prompt: u32,
        max_tokens: u32,
        limit: u32,
    },
    /// No instance can meet the request's TTFT SLO now (429 with `Retry-After`).
    #[error(
        "no instance can meet the {slo} TTFT SLO of {ttft_ms:.0} ms (best predicted {predicted_ms:.0} ms); retry after {}s",
        retry_after.as_secs().max(1)
    )]
    Overloaded {
        slo: String,
        ttft_ms: f64,
        predicted_ms: f64,
        retry_after: Duration,
    },
    /// No healthy instance of the model exists (503).
    #[error("no healthy instance serves `{model}`")]
    Unavailable { model: String },
}

/// Information about one model, for `GET /v1/models` and for validating requests.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    pub name: String,
    /// Prompt plus output tokens, as the model's instances report it (`None` before any has).
    pub max_context: Option<u32>,
    /// The model's end-of-sequence ids (from its instances).
    pub eos_tokens: Vec<u32>,
}

/// What the HTTP front end needs from the rest of the router.
pub trait Backend: Send + Sync + 'static {
    /// Places and starts a generation. `arrival` is when the HTTP request arrived, for the
    /// routing-overhead measurement.
    fn generate(
        &self,
        request: Generation,
        arrival: std::time::Instant,
    ) -> BoxFuture<'_, Result<GenStream, GenError>>;

    /// The models deployed.
    fn models(&self) -> Vec<ModelCard>;

    /// One model's card (every request asks; a backend may answer without listing them all).
    fn model(&self, name: &str) -> Option<ModelCard> {
        self.models().into_iter().find(|c| c.name == name)
    }

    /// Whether a request could be served now (some instance of some model is healthy).
    fn ready(&self) -> bool;
}
