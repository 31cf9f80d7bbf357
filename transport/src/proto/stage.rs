//! The messages of a pipeline's `Stage` stream: the driver (stage 0) opens one stream to stage 1,
//! stage 1 one to stage 2, and so on down the chain.
//!
//! - The opener sends [`StageOpen`]; each stage opens its own downstream stream first, then
//!   answers [`StageReady`] with its layer range prepended to the ranges below it (or an
//!   error), so the driver learns the whole chain's layout and checks that it tiles the model.
//! - Then the opener sends [`StageStep`]s (one per micro-batch); each stage computes its
//!   layers and passes the activations on. The last stage samples and answers a
//!   [`StageResult`], which every stage relays back up, adding its own transfer bytes.
//! - A stage that fails a micro-batch answers its `StageResult` with `error` set instead of
//!   passing it on. A broken stream ends the chain: the driver opens a fresh one.

use super::ids::RequestId;
use super::msg::WireSampling;
use rkyv::{Archive, Deserialize, Serialize};

/// The driver's terms for a chain: the model and the KV pools every stage allocates (block
/// indices are shared, so every stage has pools of the same sizes).
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct StageOpen {
    /// The model name requests use (every stage must serve the same one).
    pub model: String,
    /// The model's transformer layers.
    pub model_layers: u32,
    /// Tokens per KV block.
    pub block_tokens: u32,
    pub gpu_blocks: u64,
    pub host_blocks: u64,
    pub staging_blocks: u64,
    /// Increases with every chain the driver opens; results name it.
    pub epoch: u64,
}

/// A stage's answer to [`StageOpen`].
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct StageReady {
    /// `(first layer, end layer)` of this stage and of every stage below it, in chain order;
    /// empty on error.
    pub stages: Vec<(u32, u32)>,
    /// Why the chain cannot be served (the stage that refused names itself).
    pub error: Option<String>,
}

/// A KV block reference: tier (0 GPU, 1 host) and index in that tier's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct WireBlock {
    pub tier: u8,
    pub index: u32,
}

/// One layer slot of an item: its blocks, and whether it goes through staging.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct WireLayerKv {
    pub blocks: Vec<WireBlock>,
    pub staged: bool,
}

/// One sequence's work in a micro-batch (the scheduler's `WorkItem`).
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct WireWorkItem {
    pub seq: RequestId,
    /// `true` for a prefill, `false` for a decode.
    pub prefill: bool,
    pub tokens: Vec<u32>,
    pub start_pos: u32,
    /// Layer slot `j` is layer `first + j` of each stage (see the pipeline module).
    pub layers: Vec<WireLayerKv>,
    pub sampling: WireSampling,
    pub output_index: u32,
    pub want_logits: bool,
}

/// One micro-batch of one step, with the activations that enter the receiving stage.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct StageStep {
    pub epoch: u64,
    pub step: u64,
    pub micro: u32,
    /// Block copies `(src, dst)` to run before any item of the step: sent with micro-batch 0.
    pub copies: Vec<(WireBlock, WireBlock)>,
    pub items: Vec<WireWorkItem>,
    /// `[rows, hidden]` f32, rows in item order (every token of every item).
    pub hidden: Vec<f32>,
}

/// The last stage's answer for one micro-batch, relayed up the chain.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct StageResult {
    pub epoch: u64,
    pub step: u64,
    pub micro: u32,
    /// One sampled token per item, in item order.
    pub tokens: Vec<(RequestId, u32)>,
    /// Last-position logits of the items that asked for them.
    pub logits: Vec<(RequestId, Vec<f32>)>,
    /// Bytes the stages below the receiver moved between their tiers for this micro-batch.
    pub transfer_bytes: u64,
    /// The stage that failed the micro-batch, and why.
    pub error: Option<String>,
}
