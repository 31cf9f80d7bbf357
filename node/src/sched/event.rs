//! What the scheduler reports about sequences.

use super::plan::SeqId;
use super::request::FinishReason;
use std::time::Duration;

/// Something that happened to a sequence. Every accepted request ends with one `Finished`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The request left the queue; its prefill runs in this step.
    Admitted {
        seq: SeqId,
        at: Duration,
        /// Layers whose K/V went to the host tier during prefill.
        offloaded_layers: usize,
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
    },
    /// A token was generated (`index` 0 is the first token).
    Token {
        seq: SeqId,
        token: u32,
        index: usize,
        at: Duration,
        /// Logits of the sampled position, when the request asked for them.
        logits: Option<Vec<f32>>,
    },
    /// The sequence ended.
    Finished {
        seq: SeqId,
        reason: FinishReason,
        prompt_tokens: usize,
        output_tokens: usize,
        cached_tokens: usize,
        at: Duration,
    },
}
