//! The points of a run, the blocks each needs, and whether it fits in the GPU's free memory
//! beside what the executor reserves for itself.

use super::plans::{self, Need, Order};
use serde::Serialize;
use std::fmt;
use strata_node::exec::PoolSizes;
use strata_node::kv::KvLayout;

/// How many layers of the offload prefill are staged through the host tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Offload {
    /// Every layer resident: the reference.
    None,
    /// Every other layer staged (the odd ones).
    Half,
    /// Every layer but layer 0 staged.
    AllButOne,
}

impl Offload {
    pub const ALL: [Offload; 3] = [Offload::None, Offload::Half, Offload::AllButOne];

    pub fn name(self) -> &'static str {
        match self {
            Offload::None => "none",
            Offload::Half => "half",
            Offload::AllButOne => "all-but-one",
        }
    }

    /// Staged layers out of `layers`.
    pub fn staged_count(self, layers: usize) -> usize {
        match self {
            Offload::None => 0,
            Offload::Half => layers / 2,
            Offload::AllButOne => layers.saturating_sub(1),
        }
    }

    /// Which layers are staged (see [`plans::spread`]).
    pub fn staged(self, layers: usize) -> Vec<bool> {
        plans::spread(layers, self.staged_count(layers))
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Prefill {
        tokens: usize,
    },
    Decode {
        batch: usize,
        ctx: usize,
    },
    Transfer {
        blocks: usize,
        order: Order,
    },
    Offload {
        tokens: usize,
        offload: Offload,
    },
    /// A decode step with all but one layer streamed from the host, beside the same step with
    /// every layer resident.
    Streamed {
        batch: usize,
        ctx: usize,
    },
}

impl Point {
    pub fn need(&self, layout: &KvLayout) -> Need {
        match *self {
            Point::Prefill { tokens } => plans::prefill_need(layout, tokens),
            Point::Decode { batch, ctx } => plans::decode_need(layout, batch, ctx),
            Point::Transfer { blocks, .. } => plans::transfer_need(blocks),
            Point::Offload { tokens, offload } => {
                plans::staged_need(layout, tokens, &offload.staged(layout.layers))
            }
            Point::Streamed { batch, ctx } => plans::streamed_need(
                layout,
                batch,
                ctx,
                &Offload::AllButOne.staged(layout.layers),
            ),
        }
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Prefill { tokens } => write!(f, "prefill {tokens}"),
            Point::Decode { batch, ctx } => write!(f, "decode batch {batch} at ctx {ctx}"),
            Point::Transfer { blocks, order } => {
                write!(f, "transfer {blocks} blocks {}", order.name())
            }
            Point::Offload { tokens, offload } => {
                write!(f, "prefill {tokens} offload {}", offload.name())
            }
            Point::Streamed { batch, ctx } => {
                write!(f, "streamed decode batch {batch} at ctx {ctx}")
            }
        }
    }
}

/// Device memory a run can give its KV pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// Free device bytes before the executor starts.
    pub free_bytes: u64,
    /// What the executor takes beside its pools: weights, RoPE tables, workspace.
    pub reserved_bytes: u64,
    /// Left free for the CUDA context, cuBLAS and allocator slack.
    pub headroom_bytes: u64,
    pub block_bytes: u64,
    /// Blocks of the staging area, counted twice (it is double-buffered).
    pub staging_blocks: usize,
}

/// A point whose blocks do not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct NoRoom {
    pub need_gib: f64,
    pub room_gib: f64,
}

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "needs {:.1} GiB of GPU KV blocks; {:.1} GiB are free beside the weights, \
             workspace, staging and headroom",
            self.need_gib, self.room_gib
        )
    }
}

const GIB: f64 = (1u64 << 30) as f64;

impl Budget {
    /// GPU-tier blocks that fit.
    pub fn gpu_blocks(&self) -> usize {
        let staging = 2 * self.staging_blocks as u64 * self.block_bytes;
        let fixed = self.reserved_bytes + self.headroom_bytes + staging;
        let room = self.free_bytes.saturating_sub(fixed) / self.block_bytes.max(1);
        usize::try_from(room.min(u32::MAX as u64)).unwrap_or(u32::MAX as usize)
    }

    /// Whether `need` fits.
    pub fn check(&self, need: &Need) -> Result<(), NoRoom> {
        let room = self.gpu_blocks();
        if need.gpu <= room {
            return Ok(());
        }
        Err(NoRoom {
            need_gib: (need.gpu as u64 * self.block_bytes) as f64 / GIB,
            room_gib: (room as u64 * self.block_bytes) as f64 / GIB,
        })
    }
}

/// The pools for every point that fits (the largest need of each pool), and the points that
/// do not, each with why.
pub fn size_pools(
    points: &[Point],
    layout: &KvLayout,
    budget: &Budget,
) -> (PoolSizes, Vec<(Point, NoRoom)>) {
    let mut need = Need::default();
    let mut skipped = Vec::new();
    for p in points {
        let n = p.need(layout);
        match budget.check(&n) {
            Ok(()) => need = need.max(n),
            Err(e) => skipped.push((*p, e)),
        }
    }
    let pools = PoolSizes {
        gpu_blocks: need.gpu,
        host_blocks: need.host,
        staging_blocks: budget.staging_blocks.max(need.staging),
    };
    (pools, skipped)
}
