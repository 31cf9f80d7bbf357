//! The KV memory of the cpu executor: one f32 pool per tier and the staging area, with block
//! copies that coalesce runs of consecutive blocks into one `copy_from_slice`.

use crate::exec::PoolSizes;
use crate::kv::{BlockId, KvLayout, Tier};
use crate::sched::plan::CopyOp;

/// Block pools in RAM; the GPU tier is a pool like any other, limited by its block count.
#[derive(Debug)]
pub(crate) struct KvStore {
    block_elems: usize,
    block_bytes: u64,
    /// Indexed by `Tier::index()`.
    pools: [Vec<f32>; 2],
    staging: Vec<f32>,
}

impl KvStore {
    pub(crate) fn new(layout: &KvLayout, sizes: &PoolSizes) -> KvStore {
        let e = layout.block_elems();
        KvStore {
            block_elems: e,
            block_bytes: layout.block_bytes(),
            pools: [
                vec![0.0; sizes.gpu_blocks * e],
                vec![0.0; sizes.host_blocks * e],
            ],
            staging: vec![0.0; sizes.staging_blocks * e],
        }
    }

    fn range(&self, index: usize, n: usize) -> std::ops::Range<usize> {
        index * self.block_elems..(index + n) * self.block_elems
    }

    /// Bytes that `n` blocks moving from `src` to `dst` carry across tiers (the staging area
    /// counts as GPU memory).
    fn crossing(&self, src: Tier, dst: Tier, n: usize) -> u64 {
        if src == dst {
            0
        } else {
            n as u64 * self.block_bytes
        }
    }

    /// One block of a tier's pool.
    pub(crate) fn block(&self, id: BlockId) -> &[f32] {
        let r = self.range(id.index as usize, 1);
        &self.pools[id.tier.index()][r]
    }

    /// One block of a tier's pool, to write.
    pub(crate) fn block_mut(&mut self, id: BlockId) -> &mut [f32] {
        let r = self.range(id.index as usize, 1);
        &mut self.pools[id.tier.index()][r]
    }

    /// Staging slot `slot`.
    pub(crate) fn staged(&self, slot: usize) -> &[f32] {
        &self.staging[self.range(slot, 1)]
    }

    /// Staging slot `slot`, to write.
    pub(crate) fn staged_mut(&mut self, slot: usize) -> &mut [f32] {
        let r = self.range(slot, 1);
        &mut self.staging[r]
    }

    /// Copies `n` consecutive blocks from `src` to `dst`. Same-tier ranges may overlap only
    /// when `n == 1` (a block onto itself).
    fn copy_run(&mut self, src: BlockId, dst: BlockId, n: usize) {
        let (s, d) = (
            self.range(src.index as usize, n),
            self.range(dst.index as usize, n),
        );
        if src.tier == dst.tier {
            self.pools[src.tier.index()].copy_within(s, d.start);
        } else {
            let [gpu, host] = &mut self.pools;
            let (from, to) = match src.tier {
                Tier::Gpu => (&*gpu, host),
                Tier::Host => (&*host, gpu),
            };
            to[d].copy_from_slice(&from[s]);
        }
    }

    /// Runs `copies` with the effect of running them one by one in list order; returns the
    /// bytes that crossed tiers. Indices were validated against the pools.
    pub(crate) fn run_copies(&mut self, copies: &[CopyOp]) -> u64 {
        let mut bytes = 0;
        for (first, n) in crate::exec::copy_runs(copies) {
            self.copy_run(first.src, first.dst, n);
            bytes += self.crossing(first.src.tier, first.dst.tier, n);
        }
        bytes
    }

    /// Copies `blocks` into the staging slots `slot0..`; returns the bytes that crossed tiers.
    pub(crate) fn stage_in(&mut self, blocks: &[BlockId], slot0: usize) -> u64 {
        let mut bytes = 0;
        for (start, n) in runs(blocks) {
            let b = blocks[start];
            let s = self.range(b.index as usize, n);
            let d = self.range(slot0 + start, n);
            self.staging[d].copy_from_slice(&self.pools[b.tier.index()][s]);
            bytes += self.crossing(b.tier, Tier::Gpu, n);
        }
        bytes
    }

    /// Copies the staging slots `slot0..` back to `blocks`; returns the bytes that crossed tiers.
    pub(crate) fn stage_out(&mut self, slot0: usize, blocks: &[BlockId]) -> u64 {
        let mut bytes = 0;
        for (start, n) in runs(blocks) {
            let b = blocks[start];
            let s = self.range(slot0 + start, n);
            let d = self.range(b.index as usize, n);
            self.pools[b.tier.index()][d].copy_from_slice(&self.staging[s]);
            bytes += self.crossing(Tier::Gpu, b.tier, n);
        }
        bytes
    }
}

/// Runs of consecutive indices on one tier, as `(start, len)` positions in `blocks`.
fn runs(blocks: &[BlockId]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let first = *blocks.get(start)?;
        let n = blocks[start..]
            .iter()
            .enumerate()
            .take_while(|(k, b)| {
                b.tier == first.tier && b.index as usize == first.index as usize + k
            })
            .count();
        let run = (start, n);
        start += n;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KvStore {
        let layout = KvLayout {
            layers: 1,
            block_tokens: 1,
            kv_heads: 1,
            head_dim: 1,
            dtype_bytes: 4,
        };
        let sizes = PoolSizes {
            gpu_blocks: 6,
            host_blocks: 4,
            staging_blocks: 3,
        };
        let mut s = KvStore::new(&layout, &sizes);
        for i in 0..6 {
            s.block_mut(BlockId::gpu(i))
                .copy_from_slice(&[i as f32, 10.0 + i as f32]);
        }
        s
    }

    fn first(s: &KvStore, id: BlockId) -> f32 {
        s.block(id)[0]
    }

    #[test]
    fn copies_keep_list_order() {
        let mut s = store();
        // A chain on one tier: 0→1 then 1→2 leaves the old block 0 in both.
        let chain = [
            CopyOp {
                src: BlockId::gpu(0),
                dst: BlockId::gpu(1),
            },
            CopyOp {
                src: BlockId::gpu(1),
                dst: BlockId::gpu(2),
            },
        ];
        assert_eq!(s.run_copies(&chain), 0);
        assert_eq!(
            (first(&s, BlockId::gpu(1)), first(&s, BlockId::gpu(2))),
            (0.0, 0.0)
        );
        // A coalesced offload and reload: only crossings count.
        let off: Vec<_> = (3..6)
            .map(|i| CopyOp {
                src: BlockId::gpu(i),
                dst: BlockId::host(i - 3),
            })
            .collect();
        assert_eq!(s.run_copies(&off), 3 * 8);
        assert_eq!(s.block(BlockId::host(2)), &[5.0, 15.0]);
        let back = [CopyOp {
            src: BlockId::host(0),
            dst: BlockId::gpu(0),
        }];
        assert_eq!(s.run_copies(&back), 8);
        assert_eq!(first(&s, BlockId::gpu(0)), 3.0);
    }

    #[test]
    fn staging_round_trip() {
        let mut s = store();
        s.run_copies(&[CopyOp {
            src: BlockId::gpu(4),
            dst: BlockId::host(1),
        }]);
        let blocks = [BlockId::gpu(2), BlockId::gpu(3), BlockId::host(1)];
        assert_eq!(s.stage_in(&blocks, 0), 8);
        assert_eq!(s.staged(2), &[4.0, 14.0]);
        s.staged_mut(2)[0] = 99.0;
        assert_eq!(s.stage_out(2, &blocks[2..]), 8);
        assert_eq!(first(&s, BlockId::host(1)), 99.0);
        assert_eq!(runs(&blocks).collect::<Vec<_>>(), vec![(0, 2), (2, 1)]);
    }
}
