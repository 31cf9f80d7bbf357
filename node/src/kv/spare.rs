//! Spare host blocks: room held after a host layer's table for the blocks it will grow into.
//!
//! A layer that lives on the host grows by one block every `block_tokens` decoded tokens. Taken
//! one at a time, each grown block lands wherever the pool has a free one, and a staged layer
//! then streams in as one transfer for its prompt's blocks plus one transfer per grown block:
//! in the engine bench on Llama-3-8B (`--executor sim`), 85% of the transfers that staged
//! layers issued were single 64 KiB blocks, the size that copies worst.
//!
//! So when a layer takes host blocks for the end of its table, it also takes the blocks its
//! sequence is expected to grow into (up to [`MAX_SPARE_BLOCKS`], from free blocks only), in
//! index order right behind them, and grows into those first. Spare blocks are owned by their
//! sequence but in no table. They still count as available: an allocation that finds no free
//! or evictable block takes them back, so spares never make an allocation fail. Demotions of
//! GPU cache to the host do not take them back (cache is kept where there is room, not made).

use super::layout::{BlockId, Tier};
use super::manager::{BlockManager, KvError};
use super::pool::Released;
use crate::sched::plan::SeqId;

/// The most spare blocks one layer of a sequence holds (4 MiB of Llama-3-8B's 64 KiB blocks).
pub const MAX_SPARE_BLOCKS: usize = 64;

impl BlockManager {
    /// Tells the manager how many tokens the sequence is expected to reach (its prompt plus its
    /// most output tokens): host layers hold spare blocks for the growth that leaves.
    pub fn expect_tokens(&mut self, seq: SeqId, tokens: usize) -> Result<(), KvError> {
        self.seqs
            .get_mut(&seq)
            .ok_or(KvError::UnknownSeq(seq))?
            .expect_tokens = tokens;
        Ok(())
    }

    /// Spare host blocks held over all sequences.
    pub fn spare_blocks(&self) -> usize {
        self.spare_count
    }

    /// `n` host blocks for `layer`'s table: its spare blocks first, then blocks from the pool
    /// with a new set of spares behind them. `grows`: the blocks are added to the table (else
    /// they replace blocks that move to the host). Nothing changes on error.
    pub(crate) fn take_host_tail(
        &mut self,
        seq: SeqId,
        layer: usize,
        n: usize,
        grows: bool,
    ) -> Result<Vec<BlockId>, KvError> {
        let s = self.seqs.get(&seq).ok_or(KvError::UnknownSeq(seq))?;
        let held = s.spare[layer].len().min(n);
        let short = n - held;
        if short > 0 {
            // The layer's own spares are not there for the rest: they are being used.
            let others = self.spare_count - s.spare[layer].len();
            let available = self.unheld(Tier::Host) + others;
            if short > available {
                return Err(KvError::OutOfBlocks {
                    tier: Tier::Host,
                    needed: n,
                    available: available + s.spare[layer].len(),
                });
            }
        }
        let want = self
            .layout
            .blocks_for(s.expect_tokens)
            .saturating_sub(s.tables[layer].len() + if grows { n } else { 0 })
            .min(MAX_SPARE_BLOCKS);
        let s = self.seqs.get_mut(&seq).ok_or(KvError::UnknownSeq(seq))?;
        let mut got: Vec<BlockId> = s.spare[layer]
            .drain(..held)
            .map(|index| BlockId {
                tier: Tier::Host,
                index,
            })
            .collect();
        self.spare_count -= held;
        if short > 0 {
            // Spares come only from free blocks: they never evict cache or take back others'.
            let extra = want.min(self.free_blocks(Tier::Host).saturating_sub(short));
            let taken = self.take_many(Tier::Host, short + extra)?;
            let (tail, spare) = taken.split_at(short);
            got.extend_from_slice(tail);
            if let Some(s) = self.seqs.get_mut(&seq) {
                s.spare[layer].extend(spare.iter().map(|b| b.index));
                self.spare_count += spare.len();
            }
        }
        Ok(got)
    }

    /// Frees the spare blocks of one layer of a sequence (a layer that leaves the host).
    pub(crate) fn release_spare(&mut self, seq: SeqId, layer: usize) {
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        for index in std::mem::take(&mut s.spare[layer]) {
            self.free_spare_block(index);
        }
    }

    /// Returns one spare block, already out of its layer's list, to the pool's free blocks.
    fn free_spare_block(&mut self, index: u32) {
        self.spare_count -= 1;
        let stamp = self.next_stamp();
        let released = self.pools[Tier::Host.index()].release(index, stamp);
        debug_assert_eq!(released, Released::Freed, "a spare block is unkeyed");
    }

    /// Frees up to `n` spare blocks, each layer's highest first, from the highest sequence id
    /// down (any fixed order would do: runs must not depend on the map's); returns how many.
    pub(crate) fn reclaim_spares(&mut self, n: usize) -> usize {
        let mut holders: Vec<(SeqId, usize)> = self
            .seqs
            .iter()
            .flat_map(|(&id, s)| {
                s.spare
                    .iter()
                    .enumerate()
                    .filter(|(_, sp)| !sp.is_empty())
                    .map(move |(l, _)| (id, l))
            })
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        let mut done = 0;
        for (id, l) in holders {
            while done < n {
                let Some(index) = self.seqs.get_mut(&id).and_then(|s| s.spare[l].pop()) else {
                    break;
                };
                self.free_spare_block(index);
                done += 1;
            }
        }
        done
    }
}
