//! The `BlockManager`: layer-wise block bookkeeping over a GPU and a host pool.
//!
//! Sans-IO: it decides which physical blocks hold what and records the copies that make it so.
//! Every state change that moves data pushes a [`CopyOp`] to an outbox that the caller drains
//! with [`BlockManager::poll_copies`] and hands to the executor, **in order**: a later copy may
//! write a block that an earlier one read. Prefix-cache changes push [`KvEvent`]s, drained with
//! [`BlockManager::poll_events`].

use super::layout::{BlockId, KvLayout, Tier};
use super::pool::{Pool, Released};
use super::prefix::{self, BlockHash, CacheKey};
use crate::sched::plan::{CopyOp, SeqId};
use std::collections::HashMap;

/// A change to what the prefix cache holds, per tier (published to routers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvEvent {
    Stored {
        tier: Tier,
        hash: BlockHash,
        layer: u32,
    },
    Removed {
        tier: Tier,
        hash: BlockHash,
        layer: u32,
    },
}

/// A request the block manager cannot carry out. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The tier has too few free or evictable blocks.
    #[error("{tier} tier has {available} free or evictable blocks, {needed} needed")]
    OutOfBlocks {
        tier: Tier,
        needed: usize,
        available: usize,
    },
    /// The sequence is not known.
    #[error("unknown sequence {0}")]
    UnknownSeq(SeqId),
    /// The sequence is already registered.
    #[error("sequence {0} is already registered")]
    DuplicateSeq(SeqId),
    /// The layer index is out of range.
    #[error("layer {layer} out of range (model has {layers})")]
    BadLayer { layer: usize, layers: usize },
}

/// A prefix-cache hit: the first `blocks` full blocks of a prompt, on every layer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrefixHit {
    pub hashes: Vec<BlockHash>,
    /// `tables[layer][i]`: where block `i` of that layer is cached.
    pub tables: Vec<Vec<BlockId>>,
    /// Hit blocks per tier that nobody holds (counted in `available`): attaching the hit
    /// pins them, so they are not there for the request's new blocks.
    pub unheld: [usize; 2],
}

impl PrefixHit {
    pub fn blocks(&self) -> usize {
        self.hashes.len()
    }

    /// Hit blocks on `tier`, over all layers.
    pub fn count_on(&self, tier: Tier) -> usize {
        self.tables
            .iter()
            .flatten()
            .filter(|b| b.tier == tier)
            .count()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SeqKv {
    pub(crate) salt: u64,
    /// Tokens whose K/V are written, in order.
    pub(crate) tokens: Vec<u32>,
    /// Hashes of the full blocks of `tokens`.
    pub(crate) hashes: Vec<BlockHash>,
    /// Per layer, the blocks holding it (may run ahead of `tokens`).
    pub(crate) tables: Vec<Vec<BlockId>>,
    /// Per layer, host block indices held for the table to grow into, lowest first (see
    /// [`super::spare`]).
    pub(crate) spare: Vec<Vec<u32>>,
    /// Tokens the sequence is expected to reach; 0 when unknown (no spares).
    pub(crate) expect_tokens: usize,
}

/// Layer-wise KV block bookkeeping. See the module doc.
#[derive(Debug, Clone)]
pub struct BlockManager {
    pub(crate) layout: KvLayout,
    pub(crate) pools: [Pool; 2],
    pub(crate) seqs: HashMap<SeqId, SeqKv>,
    pub(crate) index: HashMap<CacheKey, BlockId>,
    /// Spare host blocks over all sequences.
    pub(crate) spare_count: usize,
    stamp: u64,
    copies: Vec<CopyOp>,
    events: Vec<KvEvent>,
}

impl BlockManager {
    pub fn new(layout: KvLayout, gpu_blocks: usize, host_blocks: usize) -> Self {
        BlockManager {
            layout,
            pools: [Pool::new(gpu_blocks), Pool::new(host_blocks)],
            seqs: HashMap::new(),
            index: HashMap::new(),
            spare_count: 0,
            stamp: 0,
            copies: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    pub fn capacity(&self, tier: Tier) -> usize {
        self.pools[tier.index()].capacity()
    }

    pub fn free_blocks(&self, tier: Tier) -> usize {
        self.pools[tier.index()].free_count()
    }

    pub fn cached_blocks(&self, tier: Tier) -> usize {
        self.pools[tier.index()].cached_count()
    }

    /// Blocks an allocation on `tier` can take: free, evictable cache, and spare host blocks.
    pub fn available(&self, tier: Tier) -> usize {
        match tier {
            Tier::Gpu => self.unheld(tier),
            Tier::Host => self.unheld(tier) + self.spare_count,
        }
    }

    /// Free plus evictable cache: what an allocation takes before any spare block.
    pub(crate) fn unheld(&self, tier: Tier) -> usize {
        let p = &self.pools[tier.index()];
        p.free_count() + p.cached_count()
    }

    /// Copies decided and not yet drained.
    pub fn pending_copies(&self) -> usize {
        self.copies.len()
    }

    /// Drains the copies decided since the last call, in the order they must run.
    pub fn poll_copies(&mut self) -> Vec<CopyOp> {
        std::mem::take(&mut self.copies)
    }

    /// Drains the prefix-cache events since the last call.
    pub fn poll_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    pub(crate) fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    // ---- sequences ------------------------------------------------------------------------

    /// Registers an empty sequence. `salt` separates tenants in the prefix cache.
    pub fn register(&mut self, seq: SeqId, salt: u64) -> Result<(), KvError> {
        if self.seqs.contains_key(&seq) {
            return Err(KvError::DuplicateSeq(seq));
        }
        self.seqs.insert(
            seq,
            SeqKv {
                salt,
                tokens: Vec::new(),
                hashes: Vec::new(),
                tables: vec![Vec::new(); self.layout.layers],
                spare: vec![Vec::new(); self.layout.layers],
                expect_tokens: 0,
            },
        );
        Ok(())
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.seqs.contains_key(&seq)
    }

    /// Tokens whose K/V the sequence holds.
    pub fn seq_tokens(&self, seq: SeqId) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.tokens.len())
    }

    /// The blocks of one layer of a sequence.
    pub fn table(&self, seq: SeqId, layer: usize) -> &[BlockId] {
        self.seqs
            .get(&seq)
            .and_then(|s| s.tables.get(layer))
            .map_or(&[], |t| t.as_slice())
    }

    /// `true` when every block of the layer is on the GPU (an empty layer is resident).
    pub fn is_resident(&self, seq: SeqId, layer: usize) -> bool {
        self.table(seq, layer).iter().all(|b| b.tier == Tier::Gpu)
    }

    /// Layers of the sequence that are not resident.
    pub fn offloaded_layers(&self, seq: SeqId) -> Vec<usize> {
        (0..self.layout.layers)
            .filter(|&l| !self.is_resident(seq, l))
            .collect()
    }

    /// Blocks of a layer that are not on `tier`.
    pub fn blocks_off(&self, seq: SeqId, layer: usize, tier: Tier) -> usize {
        self.table(seq, layer)
            .iter()
            .filter(|b| b.tier != tier)
            .count()
    }

    // ---- prefix cache ---------------------------------------------------------------------

    /// The longest cached prefix of `tokens` present on every layer, leaving at least one token
    /// to compute. Reads only.
    pub fn peek_prefix(&self, tokens: &[u32], salt: u64) -> PrefixHit {
        let bt = self.layout.block_tokens;
        let max_blocks = tokens.len().saturating_sub(1) / bt;
        let mut hit = PrefixHit {
            hashes: Vec::new(),
            tables: vec![Vec::new(); self.layout.layers],
            unheld: [0; 2],
        };
        for hash in prefix::chain(salt, tokens, bt, max_blocks) {
            let found: Option<Vec<BlockId>> = (0..self.layout.layers as u32)
                .map(|layer| self.index.get(&CacheKey { hash, layer }).copied())
                .collect();
            let Some(blocks) = found else { break };
            hit.hashes.push(hash);
            for (table, b) in hit.tables.iter_mut().zip(blocks) {
                if self.block_refs(b) == 0 {
                    hit.unheld[b.tier.index()] += 1;
                }
                table.push(b);
            }
        }
        hit
    }

    /// Gives an empty sequence the cached prefix of `tokens`; returns the tokens it covers.
    pub fn attach_prefix(&mut self, seq: SeqId, tokens: &[u32]) -> Result<usize, KvError> {
        let salt = self.seqs.get(&seq).ok_or(KvError::UnknownSeq(seq))?.salt;
        let hit = self.peek_prefix(tokens, salt);
        let n = hit.blocks() * self.layout.block_tokens;
        for b in hit.tables.iter().flatten() {
            self.pools[b.tier.index()].retain(b.index);
        }
        let s = self.seqs.get_mut(&seq).ok_or(KvError::UnknownSeq(seq))?;
        debug_assert!(s.tokens.is_empty(), "attach_prefix on a non-empty sequence");
        s.tokens = tokens[..n].to_vec();
        s.hashes = hit.hashes;
        s.tables = hit.tables;
        Ok(n)
    }

    // ---- allocation -----------------------------------------------------------------------

    /// Takes `n` blocks on `tier` at once, in index order: free blocks first (lowest index
    /// first), then the least recently cached, then (on the host) spare blocks. GPU victims are
    /// demoted to host blocks taken together, both sides in index order, so victims that were
    /// neighbours (a finished sequence's layer) move as one copy run instead of one copy per
    /// block. Nothing is taken when fewer than `n` are available.
    pub(crate) fn take_many(&mut self, tier: Tier, n: usize) -> Result<Vec<BlockId>, KvError> {
        self.check_available(tier, n)?;
        let pool = &mut self.pools[tier.index()];
        let mut taken: Vec<u32> = Vec::with_capacity(n);
        while taken.len() < n {
            match pool.take_free() {
                Some(i) => taken.push(i),
                None => break,
            }
        }
        // Least recently cached first: a demoted block keeps its place in the LRU order.
        let mut victims: Vec<u32> = pool.lru.values().take(n - taken.len()).copied().collect();
        let mut demote = Vec::new();
        for &v in &victims {
            if let Some(key) = self.pools[tier.index()].drop_cached(v) {
                self.index.remove(&key);
                self.events.push(KvEvent::Removed {
                    tier,
                    hash: key.hash,
                    layer: key.layer,
                });
                demote.push((v, key));
            }
        }
        victims.sort_unstable();
        if tier == Tier::Gpu && !demote.is_empty() {
            // The host keeps the most recently cached when it cannot take them all.
            let room = demote.len().min(self.unheld(Tier::Host));
            let demote = &demote[demote.len() - room..];
            // Stamps in LRU order, then both sides in index order.
            let mut ranked: Vec<(u32, CacheKey, u64)> = demote
                .iter()
                .map(|&(v, key)| (v, key, self.next_stamp()))
                .collect();
            ranked.sort_unstable_by_key(|&(v, _, _)| v);
            let dsts = self.take_many(Tier::Host, room)?;
            for ((v, key, stamp), dst) in ranked.into_iter().zip(dsts) {
                self.pools[Tier::Host.index()].owned_to_cached(dst.index, key, stamp);
                self.index.insert(key, dst);
                self.copies.push(CopyOp {
                    src: BlockId { tier, index: v },
                    dst,
                });
                self.events.push(KvEvent::Stored {
                    tier: Tier::Host,
                    hash: key.hash,
                    layer: key.layer,
                });
            }
        }
        // The victims are now the pool's only free blocks: popping them returns them in order.
        let pool = &mut self.pools[tier.index()];
        for &v in &victims {
            let i = pool.take_free();
            debug_assert_eq!(i, Some(v), "an evicted block is the next free one");
            taken.extend(i);
        }
        if tier == Tier::Host && taken.len() < n {
            // Spare blocks, freed, are now the only free ones.
            let short = n - taken.len();
            let reclaimed = self.reclaim_spares(short);
            debug_assert_eq!(reclaimed, short, "available counted the spares");
            let pool = &mut self.pools[tier.index()];
            taken.extend((0..reclaimed).filter_map(|_| pool.take_free()));
        }
        taken.sort_unstable();
        Ok(taken
            .into_iter()
            .map(|index| BlockId { tier, index })
            .collect())
    }

    fn check_available(&self, tier: Tier, needed: usize) -> Result<(), KvError> {
        let available = self.available(tier);
        if needed > available {
            return Err(KvError::OutOfBlocks {
                tier,
                needed,
                available,
            });
        }
        Ok(())
    }

    fn check_layer(&self, layer: usize) -> Result<(), KvError> {
        if layer >= self.layout.layers {
            return Err(KvError::BadLayer {
                layer,
                layers: self.layout.layers,
            });
        }
        Ok(())
    }

    /// Blocks layer `layer` of `seq` must add to hold `tokens` tokens.
    pub fn blocks_to_grow(&self, seq: SeqId, layer: usize, tokens: usize) -> usize {
        self.layout
            .blocks_for(tokens)
            .saturating_sub(self.table(seq, layer).len())
    }

    /// Grows one layer's table to hold `tokens` tokens, with new blocks on `tier`.
    pub fn grow(
        &mut self,
        seq: SeqId,
        layer: usize,
        tokens: usize,
        tier: Tier,
    ) -> Result<(), KvError> {
        self.check_layer(layer)?;
        if !self.seqs.contains_key(&seq) {
            return Err(KvError::UnknownSeq(seq));
        }
        let n = self.blocks_to_grow(seq, layer, tokens);
        let blocks = match tier {
            Tier::Gpu => self.take_many(tier, n)?,
            Tier::Host => self.take_host_tail(seq, layer, n, true)?,
        };
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.tables[layer].extend(blocks);
        }
        Ok(())
    }

    /// Moves every block of one layer that is not on `to` there (offload or reload), recording
    /// the copies. A block shared with other sequences is copied and the share kept; a block
    /// owned alone moves, with its prefix-cache key. Returns the blocks moved.
    pub fn move_layer(&mut self, seq: SeqId, layer: usize, to: Tier) -> Result<usize, KvError> {
        self.check_layer(layer)?;
        let table = self.seqs.get(&seq).ok_or(KvError::UnknownSeq(seq))?.tables[layer].clone();
        let moving: Vec<(usize, BlockId)> = table
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, b)| b.tier != to)
            .collect();
        let dsts = match to {
            Tier::Gpu => self.take_many(to, moving.len())?,
            Tier::Host => self.take_host_tail(seq, layer, moving.len(), false)?,
        };
        for ((pos, src), dst) in moving.iter().zip(dsts) {
            self.copies.push(CopyOp { src: *src, dst });
            let src_pool = &self.pools[src.tier.index()];
            let sole_owner = src_pool.refs(src.index) == 1;
            let key = src_pool.slots[src.index as usize].key;
            if sole_owner && let Some(key) = key {
                // The key travels with the data.
                self.pools[src.tier.index()].slots[src.index as usize].key = None;
                self.pools[to.index()].slots[dst.index as usize].key = Some(key);
                self.index.insert(key, dst);
                self.events.push(KvEvent::Removed {
                    tier: src.tier,
                    hash: key.hash,
                    layer: key.layer,
                });
                self.events.push(KvEvent::Stored {
                    tier: to,
                    hash: key.hash,
                    layer: key.layer,
                });
            }
            let stamp = self.next_stamp();
            self.pools[src.tier.index()].release(src.index, stamp);
            if let Some(s) = self.seqs.get_mut(&seq) {
                s.tables[layer][*pos] = dst;
            }
        }
        if to == Tier::Gpu {
            self.release_spare(seq, layer);
        }
        Ok(moving.len())
    }

    /// Records that the K/V of `new_tokens` are now written after the sequence's current tokens,
    /// and indexes every block that became full in the prefix cache.
    pub fn commit(&mut self, seq: SeqId, new_tokens: &[u32]) -> Result<(), KvError> {
        let bt = self.layout.block_tokens;
        let s = self.seqs.get_mut(&seq).ok_or(KvError::UnknownSeq(seq))?;
        s.tokens.extend_from_slice(new_tokens);
        debug_assert!(
            s.tables.iter().all(|t| t.len() * bt >= s.tokens.len()),
            "commit beyond allocated blocks"
        );
        let mut parent = s
            .hashes
            .last()
            .copied()
            .unwrap_or(prefix::chain_root(s.salt));
        let mut newly_full = Vec::new();
        while (s.hashes.len() + 1) * bt <= s.tokens.len() {
            let b = s.hashes.len();
            parent = prefix::block_hash(parent, &s.tokens[b * bt..(b + 1) * bt]);
            s.hashes.push(parent);
            newly_full.push(b);
        }
        let tables: Vec<(usize, BlockHash, Vec<BlockId>)> = newly_full
            .into_iter()
            .map(|b| (b, s.hashes[b], s.tables.iter().map(|t| t[b]).collect()))
            .collect();
        for (_, hash, blocks) in tables {
            for (layer, block) in blocks.into_iter().enumerate() {
                let key = CacheKey {
                    hash,
                    layer: layer as u32,
                };
                if self.index.contains_key(&key) {
                    continue;
                }
                self.index.insert(key, block);
                self.pools[block.tier.index()].slots[block.index as usize].key = Some(key);
                self.events.push(KvEvent::Stored {
                    tier: block.tier,
                    hash,
                    layer: key.layer,
                });
            }
        }
        Ok(())
    }

    /// Releases every block of the sequence: full blocks stay as evictable cache.
    pub fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        for layer in 0..self.layout.layers {
            self.release_spare(seq, layer);
        }
        let s = self.seqs.remove(&seq).ok_or(KvError::UnknownSeq(seq))?;
        // Release position-major, deepest first, so that LRU evicts chain tails on every layer
        // before any layer loses a head block: a prefix hit needs its blocks on all layers.
        let depth = s.tables.iter().map(Vec::len).max().unwrap_or(0);
        for pos in (0..depth).rev() {
            for table in &s.tables {
                if let Some(b) = table.get(pos) {
                    let stamp = self.next_stamp();
                    self.pools[b.tier.index()].release(b.index, stamp);
                }
            }
        }
        Ok(())
    }

    /// Evicts up to `n` cached blocks from `tier` (demoting GPU cache to the host where it
    /// fits); returns how many were evicted.
    pub fn evict(&mut self, tier: Tier, n: usize) -> usize {
        let mut done = 0;
        while done < n && self.pools[tier.index()].cached_count() > 0 {
            let Ok(taken) = self.take_many(tier, 1) else {
                break;
            };
            for b in taken {
                let stamp = self.next_stamp();
                let released = self.pools[tier.index()].release(b.index, stamp);
                debug_assert_eq!(released, Released::Freed);
                done += 1;
            }
        }
        done
    }

    /// Forgets every cached block on every tier without demoting any: the memory behind them
    /// was lost (a pipeline stage restarted). Returns how many blocks were dropped.
    pub fn drop_cache(&mut self) -> usize {
        let mut dropped = 0;
        for tier in [Tier::Gpu, Tier::Host] {
            while let Some(victim) = self.pools[tier.index()].lru_oldest() {
                if let Some(key) = self.pools[tier.index()].drop_cached(victim) {
                    self.index.remove(&key);
                    self.events.push(KvEvent::Removed {
                        tier,
                        hash: key.hash,
                        layer: key.layer,
                    });
                }
                dropped += 1;
            }
        }
        dropped
    }

    /// The state of a block, for tests and reports.
    pub fn block_refs(&self, b: BlockId) -> u32 {
        self.pools[b.tier.index()].refs(b.index)
    }
}
