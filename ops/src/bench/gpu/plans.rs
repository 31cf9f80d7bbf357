//! The step plans the GPU benchmark runs, built without a GPU: prefills with every layer
//! resident, decode batches, copy-only plans, and prefills whose staged layers live on the host.
//!
//! Block placement is fixed and simple: each point starts from block 0 of each pool (points run
//! one after another, so they reuse the same blocks), and the KV contents are whatever the pools
//! hold.

use strata_node::kv::{BlockId, KvLayout};
use strata_node::model::rng::Rng;
use strata_node::sched::{CopyOp, LayerKv, Sampling, SeqId, StepPlan, WorkItem, WorkKind};
use strata_transport::proto::RequestId;

/// Blocks of each pool a point needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    pub gpu: usize,
    pub host: usize,
    pub staging: usize,
}

impl Need {
    /// The larger of two needs in every pool (points run one at a time).
    pub fn max(self, o: Need) -> Need {
        Need {
            gpu: self.gpu.max(o.gpu),
            host: self.host.max(o.host),
            staging: self.staging.max(o.staging),
        }
    }
}

/// The order of the blocks of a copy-only plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Block `i` of one pool goes to block `i` of the other: runs the executor can coalesce.
    Consecutive,
    /// Source and destination indices each in a seeded random order: no runs to coalesce.
    Shuffled,
}

impl Order {
    pub fn name(self) -> &'static str {
        match self {
            Order::Consecutive => "consecutive",
            Order::Shuffled => "shuffled",
        }
    }
}

fn seq(i: usize) -> SeqId {
    RequestId(i as u64 + 1)
}

fn block_id(make: fn(u32) -> BlockId, index: usize) -> BlockId {
    // Pools stay below u32::MAX blocks (`Budget::gpu_blocks` caps the GPU pool; the host pool
    // holds at most `MAX_TRANSFER_MIB` or one prompt's layers); an index past a pool would be
    // refused by the executor as an invalid plan, never used.
    make(u32::try_from(index).unwrap_or(u32::MAX))
}

/// Blocks `first .. first + count` of a pool.
fn run(make: fn(u32) -> BlockId, first: usize, count: usize) -> Vec<BlockId> {
    (first..first + count).map(|i| block_id(make, i)).collect()
}

/// Token `t` of a fixed pattern inside the vocabulary (the values do not matter).
fn token(t: usize, vocab: usize) -> u32 {
    let span = vocab.saturating_sub(3).max(1);
    (3 + (t * 7919) % span) as u32
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|t| token(t, vocab)).collect()
}

fn work(
    seq: SeqId,
    kind: WorkKind,
    tokens: Vec<u32>,
    start: usize,
    layers: Vec<LayerKv>,
) -> WorkItem {
    WorkItem {
        seq,
        kind,
        tokens,
        start_pos: start,
        layers,
        sampling: Sampling::default(),
        output_index: 0,
        want_logits: false,
    }
}

/// Which of `layers` layers are staged when `count` of them are: spread evenly (Bresenham),
/// so half stages every odd layer and all-but-one keeps only layer 0 resident.
pub fn spread(layers: usize, count: usize) -> Vec<bool> {
    let count = count.min(layers);
    (0..layers)
        .map(|l| (l + 1) * count / layers > l * count / layers)
        .collect()
}

/// A prefill of `n` tokens from position 0 with every layer resident: layer `l` on GPU blocks
/// `l·B .. (l+1)·B`, `B` the blocks of `n` tokens.
pub fn prefill(layout: &KvLayout, vocab: usize, n: usize) -> StepPlan {
    staged_prefill(layout, vocab, n, &vec![false; layout.layers])
}

/// What [`prefill`] needs.
pub fn prefill_need(layout: &KvLayout, n: usize) -> Need {
    Need {
        gpu: layout.layers * layout.blocks_for(n),
        ..Need::default()
    }
}

/// A prefill of `n` tokens from position 0 whose layers marked in `staged` go through the
/// staging area with their blocks on the host tier (the `j`-th staged layer on host blocks
/// `j·B ..`); the other layers are resident on GPU blocks `l·B ..`.
pub fn staged_prefill(layout: &KvLayout, vocab: usize, n: usize, staged: &[bool]) -> StepPlan {
    let b = layout.blocks_for(n);
    let mut host_next = 0;
    let layers = (0..layout.layers)
        .map(|l| {
            if staged.get(l).copied().unwrap_or(false) {
                let blocks = run(BlockId::host, host_next * b, b);
                host_next += 1;
                LayerKv {
                    blocks,
                    staged: true,
                }
            } else {
                LayerKv {
                    blocks: run(BlockId::gpu, l * b, b),
                    staged: false,
                }
            }
        })
        .collect();
    StepPlan {
        copies: Vec::new(),
        items: vec![work(seq(0), WorkKind::Prefill, tokens(n, vocab), 0, layers)],
    }
}

/// What [`staged_prefill`] needs: the GPU blocks are laid out by layer index, so a staged
/// layer's GPU range is left unused (the pool is sized for the all-resident case anyway).
pub fn staged_need(layout: &KvLayout, n: usize, staged: &[bool]) -> Need {
    let b = layout.blocks_for(n);
    let count = staged.iter().filter(|&&s| s).count();
    Need {
        gpu: layout.layers * b,
        host: count * b,
        staging: if count > 0 { b } else { 0 },
    }
}

/// One decode step of `batch` sequences with `ctx` tokens of context each: one token at
/// position `ctx`, every layer resident on `blocks_for(ctx + 1)` GPU blocks of its own.
pub fn decode(layout: &KvLayout, vocab: usize, batch: usize, ctx: usize) -> StepPlan {
    let b = layout.blocks_for(ctx + 1);
    let items = (0..batch)
        .map(|i| {
            let layers = (0..layout.layers)
                .map(|l| LayerKv {
                    blocks: run(BlockId::gpu, (i * layout.layers + l) * b, b),
                    staged: false,
                })
                .collect();
            work(seq(i), WorkKind::Decode, vec![token(i, vocab)], ctx, layers)
        })
        .collect();
    StepPlan {
        copies: Vec::new(),
        items,
    }
}

/// What [`decode`] needs.
pub fn decode_need(layout: &KvLayout, batch: usize, ctx: usize) -> Need {
    Need {
        gpu: batch * layout.layers * layout.blocks_for(ctx + 1),
        ..Need::default()
    }
}

/// One decode step like [`decode`] whose layers marked in `staged` stream in from the host
/// tier: item `i`'s `j`-th staged layer on host blocks `(i·S + j)·B ..` (`S` the staged count),
/// the other layers on the GPU blocks [`decode`] gives them. This is what the engine's
/// layer-wise mode runs once a sequence's layers are offloaded.
pub fn streamed_decode(
    layout: &KvLayout,
    vocab: usize,
    batch: usize,
    ctx: usize,
    staged: &[bool],
) -> StepPlan {
    let b = layout.blocks_for(ctx + 1);
    let count = staged.iter().filter(|&&s| s).count();
    let mut plan = decode(layout, vocab, batch, ctx);
    for (i, item) in plan.items.iter_mut().enumerate() {
        let mut j = 0;
        for (l, kv) in item.layers.iter_mut().enumerate() {
            if staged.get(l).copied().unwrap_or(false) {
                *kv = LayerKv {
                    blocks: run(BlockId::host, (i * count + j) * b, b),
                    staged: true,
                };
                j += 1;
            }
        }
    }
    plan
}

/// What [`streamed_decode`] needs, with room for the all-resident [`decode`] it is compared to.
pub fn streamed_need(layout: &KvLayout, batch: usize, ctx: usize, staged: &[bool]) -> Need {
    let b = layout.blocks_for(ctx + 1);
    let count = staged.iter().filter(|&&s| s).count();
    Need {
        host: batch * count * b,
        staging: if count > 0 { batch * b } else { 0 },
        ..decode_need(layout, batch, ctx)
    }
}

/// Copy-only plans moving `blocks` blocks GPU → host (offload) and back (reload), in `order`.
pub fn transfer(blocks: usize, order: Order, seed: u64) -> (StepPlan, StepPlan) {
    let (gpu, host) = match order {
        Order::Consecutive => ((0..blocks).collect(), (0..blocks).collect()),
        Order::Shuffled => (
            shuffled(blocks, Rng::derive(seed, 1)),
            shuffled(blocks, Rng::derive(seed, 2)),
        ),
    };
    let pairs = gpu.iter().zip(&host);
    let offload = pairs
        .clone()
        .map(|(&g, &h)| CopyOp {
            src: block_id(BlockId::gpu, g),
            dst: block_id(BlockId::host, h),
        })
        .collect();
    let reload = pairs
        .map(|(&g, &h)| CopyOp {
            src: block_id(BlockId::host, h),
            dst: block_id(BlockId::gpu, g),
        })
        .collect();
    (
        StepPlan {
            copies: offload,
            items: Vec::new(),
        },
        StepPlan {
            copies: reload,
            items: Vec::new(),
        },
    )
}

/// What [`transfer`] needs.
pub fn transfer_need(blocks: usize) -> Need {
    Need {
        gpu: blocks,
        host: blocks,
        staging: 0,
    }
}

/// `0 .. n` in a seeded random order (Fisher–Yates).
fn shuffled(n: usize, mut rng: Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.range(0, i as u64) as usize;
        v.swap(i, j);
    }
    v
}
