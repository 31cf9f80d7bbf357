//! A `StepPlan`: what one engine step does, as the scheduler decided it.
//!
//! The executor's contract, in order:
//! 1. Run `copies` in list order (a later copy may write a block an earlier one read).
//! 2. Compute every item of `items` layer by layer. For each layer of an item:
//!    - a **resident** layer's `blocks` are all on the GPU tier; the item's new K/V are written
//!      in place and attention reads them there;
//!    - a **staged** layer's `blocks` may lie on any tier: the executor copies them into its
//!      staging area, computes from staging, writes the new K/V there, and copies back every
//!      block that holds a new position. Per layer, the staged blocks of all items together
//!      never exceed the executor's `staging_blocks`.
//! 3. For each item, sample one token from the logits of its last position.

use crate::kv::BlockId;
use strata_transport::proto::RequestId;

/// A sequence is identified by the request that created it.
pub type SeqId = RequestId;

/// A whole-block copy between tiers (or within one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyOp {
    pub src: BlockId,
    pub dst: BlockId,
}

/// How an item reaches one layer's KV this step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerKv {
    /// Blocks covering positions `0 .. start_pos + tokens.len()` of this layer.
    pub blocks: Vec<BlockId>,
    /// `true`: go through staging (see the module doc); `false`: resident on the GPU.
    pub staged: bool,
}

/// Prefill or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    Prefill,
    Decode,
}

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// One sequence's work in a step: `tokens` at positions `start_pos ..`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub seq: SeqId,
    pub kind: WorkKind,
    pub tokens: Vec<u32>,
    /// Tokens whose K/V are already in the blocks (cached prefix or earlier steps).
    pub start_pos: usize,
    /// One entry per model layer.
    pub layers: Vec<LayerKv>,
    pub sampling: Sampling,
    /// Index of the token to be sampled among the sequence's outputs (seeds sampling).
    pub output_index: usize,
    /// Return the last position's logits too (tests and numerics checks).
    pub want_logits: bool,
}

/// Everything one engine step does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepPlan {
    pub copies: Vec<CopyOp>,
    pub items: Vec<WorkItem>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty() && self.items.is_empty()
    }
}
