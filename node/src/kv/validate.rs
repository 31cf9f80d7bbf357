//! The block manager's invariants, written down as code. Called from tests, property tests and
//! `debug_assert!` in the engine.

use super::layout::{BlockId, Tier};
use super::manager::BlockManager;
use super::pool::SlotState;
use std::collections::HashMap;

/// An invariant that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// free + owned + cached ≠ capacity, or the free list / LRU disagree with block states.
    #[error("{tier} pool accounting: {detail}")]
    Accounting { tier: Tier, detail: String },
    /// A block's reference count differs from the tables that name it.
    #[error("block {block}: refcount {refs} but {uses} table entries")]
    Refcount {
        block: BlockId,
        refs: u32,
        uses: u32,
    },
    /// The prefix index and the blocks' keys disagree.
    #[error("prefix index: {0}")]
    Index(String),
    /// A sequence's tables are malformed.
    #[error("sequence {seq}: {detail}")]
    Seq { seq: String, detail: String },
}

impl BlockManager {
    /// Checks every invariant of the pools, the tables and the prefix index.
    pub fn validate(&self) -> Result<(), InvariantError> {
        let mut uses: HashMap<BlockId, u32> = HashMap::new();
        let bt = self.layout.block_tokens;
        for (id, s) in &self.seqs {
            if s.tables.len() != self.layout.layers {
                return Err(InvariantError::Seq {
                    seq: id.to_string(),
                    detail: format!(
                        "{} tables for {} layers",
                        s.tables.len(),
                        self.layout.layers
                    ),
                });
            }
            if s.hashes.len() != s.tokens.len() / bt {
                return Err(InvariantError::Seq {
                    seq: id.to_string(),
                    detail: format!("{} hashes for {} tokens", s.hashes.len(), s.tokens.len()),
                });
            }
            for (layer, t) in s.tables.iter().enumerate() {
                if t.len() < self.layout.blocks_for(s.tokens.len()) {
                    return Err(InvariantError::Seq {
                        seq: id.to_string(),
                        detail: format!(
                            "layer {layer} has {} blocks for {} tokens",
                            t.len(),
                            s.tokens.len()
                        ),
                    });
                }
                for b in t {
                    *uses.entry(*b).or_default() += 1;
                }
            }
            for (layer, spare) in s.spare.iter().enumerate() {
                if spare.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(InvariantError::Seq {
                        seq: id.to_string(),
                        detail: format!("layer {layer}'s spare blocks are not in index order"),
                    });
                }
                for &index in spare {
                    let b = BlockId {
                        tier: Tier::Host,
                        index,
                    };
                    *uses.entry(b).or_default() += 1;
                }
            }
        }
        let spares: usize = self
            .seqs
            .values()
            .flat_map(|s| &s.spare)
            .map(Vec::len)
            .sum();
        if spares != self.spare_count {
            return Err(InvariantError::Accounting {
                tier: Tier::Host,
                detail: format!("{spares} spare blocks held, {} counted", self.spare_count),
            });
        }
        for tier in Tier::ALL {
            let pool = &self.pools[tier.index()];
            let (mut free, mut owned, mut cached) = (0usize, 0usize, 0usize);
            for (i, slot) in pool.slots.iter().enumerate() {
                let block = BlockId {
                    tier,
                    index: i as u32,
                };
                let n = uses.get(&block).copied().unwrap_or(0);
                match slot.state {
                    SlotState::Free => {
                        free += 1;
                        if slot.key.is_some() || n != 0 {
                            return Err(InvariantError::Refcount {
                                block,
                                refs: 0,
                                uses: n,
                            });
                        }
                    }
                    SlotState::Owned { refs } => {
                        owned += 1;
                        if refs != n || refs == 0 {
                            return Err(InvariantError::Refcount {
                                block,
                                refs,
                                uses: n,
                            });
                        }
                    }
                    SlotState::Cached => {
                        cached += 1;
                        if n != 0
                            || slot.key.is_none()
                            || pool.lru.get(&slot.stamp) != Some(&(i as u32))
                        {
                            return Err(InvariantError::Accounting {
                                tier,
                                detail: format!(
                                    "cached block {i} is referenced, unkeyed or not in the LRU"
                                ),
                            });
                        }
                    }
                }
                if let Some(key) = slot.key
                    && self.index.get(&key) != Some(&block)
                {
                    return Err(InvariantError::Index(format!(
                        "block {block} holds key {key:?} that indexes {:?}",
                        self.index.get(&key)
                    )));
                }
            }
            if free + owned + cached != pool.capacity() {
                return Err(InvariantError::Accounting {
                    tier,
                    detail: format!(
                        "free {free} + owned {owned} + cached {cached} ≠ capacity {}",
                        pool.capacity()
                    ),
                });
            }
            let mut listed: Vec<u32> = pool.free.iter().map(|r| r.0).collect();
            listed.sort_unstable();
            listed.dedup();
            if listed.len() != pool.free.len() || listed.len() != free {
                return Err(InvariantError::Accounting {
                    tier,
                    detail: format!(
                        "free list has {} entries ({} distinct) for {free} free blocks",
                        pool.free.len(),
                        listed.len()
                    ),
                });
            }
            if pool.lru.len() != cached {
                return Err(InvariantError::Accounting {
                    tier,
                    detail: format!(
                        "LRU has {} entries for {cached} cached blocks",
                        pool.lru.len()
                    ),
                });
            }
        }
        for (key, block) in &self.index {
            let slot = &self.pools[block.tier.index()].slots[block.index as usize];
            if slot.key != Some(*key) || slot.state == SlotState::Free {
                return Err(InvariantError::Index(format!(
                    "{key:?} → {block} but the block holds {:?} ({:?})",
                    slot.key, slot.state
                )));
            }
            if key.layer as usize >= self.layout.layers {
                return Err(InvariantError::Index(format!(
                    "{key:?} names a layer past the model"
                )));
            }
        }
        Ok(())
    }
}
