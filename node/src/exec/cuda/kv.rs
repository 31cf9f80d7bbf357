//! KV memory of the cuda executor: the GPU tier (device memory), the host tier (pinned, CPU
//! readable), and two staging buffers used by alternate layers so that one layer's offload
//! overlaps the next layer's compute. Block copies are coalesced: a run of consecutive blocks
//! on both sides is one transfer (16 KiB copies run at a tenth of the rate of 2 MiB ones).

use super::driver::{DeviceBuf, PinnedBuf, Stream};
use crate::exec::{ExecError, PoolSizes};
use crate::kv::{BlockId, KvLayout, Tier};
use crate::sched::plan::CopyOp;

/// One contiguous transfer: `blocks` blocks from `src` to `dst` (addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) src: u64,
    pub(crate) dst: u64,
    pub(crate) bytes: usize,
    /// Whether the copy crosses between host and device.
    pub(crate) crossing: bool,
    /// Which copy stream takes it: device → host goes on the offload stream, the rest on reload.
    pub(crate) offload: bool,
}

pub(crate) struct KvMemory {
    pub(crate) block_bytes: usize,
    pub(crate) pool: DeviceBuf,
    pub(crate) host: PinnedBuf,
    /// Staging buffers; layer `l` uses `staging[l % 2]`.
    pub(crate) staging: [DeviceBuf; 2],
    /// Transfers issued, and their bytes (for reports: the mean transfer size).
    pub(crate) transfers: u64,
    pub(crate) transfer_bytes: u64,
}

impl KvMemory {
    pub(crate) fn new(layout: &KvLayout, pools: &PoolSizes) -> Result<KvMemory, ExecError> {
        let bb = layout.block_bytes() as usize;
        Ok(KvMemory {
            block_bytes: bb,
            pool: DeviceBuf::new(pools.gpu_blocks * bb, "the GPU KV tier")?,
            host: PinnedBuf::new(pools.host_blocks * bb, "the host KV tier")?,
            staging: [
                DeviceBuf::new(pools.staging_blocks * bb, "KV staging")?,
                DeviceBuf::new(pools.staging_blocks * bb, "KV staging")?,
            ],
            transfers: 0,
            transfer_bytes: 0,
        })
    }

    /// The address of a block of a tier.
    pub(crate) fn addr(&self, id: BlockId) -> u64 {
        let off = id.index as u64 * self.block_bytes as u64;
        match id.tier {
            Tier::Gpu => self.pool.ptr() + off,
            Tier::Host => self.host.addr() + off,
        }
    }

    /// The address of staging slot `slot` of layer `layer`'s buffer.
    pub(crate) fn slot(&self, layer: usize, slot: usize) -> u64 {
        self.staging[layer % 2].at(slot * self.block_bytes)
    }

    /// The plan's copies as coalesced runs with the effect of running them one by one in list
    /// order: a run never reads a block an earlier copy of the same run wrote.
    pub(crate) fn copy_runs(&self, copies: &[CopyOp]) -> Vec<Run> {
        crate::exec::copy_runs(copies)
            .into_iter()
            .map(|(first, n)| Run {
                src: self.addr(first.src),
                dst: self.addr(first.dst),
                bytes: n * self.block_bytes,
                crossing: first.src.tier != first.dst.tier,
                offload: first.src.tier == Tier::Gpu && first.dst.tier == Tier::Host,
            })
            .collect()
    }

    /// Runs moving `blocks` (any tier) into consecutive staging slots from `slot0` of `layer`'s
    /// buffer (`out == false`), or back from them (`out == true`).
    pub(crate) fn staging_runs(
        &self,
        layer: usize,
        slot0: usize,
        blocks: &[BlockId],
        out: bool,
    ) -> Vec<Run> {
        let mut runs = Vec::new();
        let mut start = 0;
        while start < blocks.len() {
            let b = blocks[start];
            let n = 1 + blocks[start + 1..]
                .iter()
                .zip(1..)
                .take_while(|(x, k)| x.tier == b.tier && x.index == b.index + k)
                .count();
            let (blk, slot) = (self.addr(b), self.slot(layer, slot0 + start));
            let crossing = b.tier == Tier::Host;
            runs.push(Run {
                src: if out { slot } else { blk },
                dst: if out { blk } else { slot },
                bytes: n * self.block_bytes,
                crossing,
                offload: out && crossing,
            });
            start += n;
        }
        runs
    }

    /// Issues `runs` on `stream`; returns the bytes that crossed between host and device.
    pub(crate) fn issue(&mut self, stream: &Stream, runs: &[Run]) -> Result<u64, ExecError> {
        let mut crossed = 0;
        for r in runs {
            stream.copy(r.dst, r.src, r.bytes)?;
            self.transfers += 1;
            self.transfer_bytes += r.bytes as u64;
            if r.crossing {
                crossed += r.bytes as u64;
            }
        }
        Ok(crossed)
    }
}
