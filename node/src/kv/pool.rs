//! One tier's fixed pool of blocks and the state of every block in it.
//!
//! A block is in exactly one state: `Free` (on the free list), `Owned` (referenced by one or more
//! sequences; `refs` counts the references) or `Cached` (referenced by nobody, kept for prefix
//! hits, evictable in LRU order).

use super::prefix::CacheKey;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Free,
    Owned { refs: u32 },
    Cached,
}

#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) state: SlotState,
    /// The prefix-cache key this block is indexed under, if any.
    pub(crate) key: Option<CacheKey>,
    /// LRU stamp while `Cached`.
    pub(crate) stamp: u64,
}

/// What a release left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Still referenced.
    Shared,
    /// Back on the free list.
    Freed,
    /// Kept as evictable cache.
    Cached,
}

#[derive(Debug, Clone)]
pub(crate) struct Pool {
    pub(crate) slots: Vec<Slot>,
    /// Free indices, lowest first: a layer's new blocks come out as consecutive runs where the
    /// pool allows, and an executor moves a run in one transfer.
    pub(crate) free: BinaryHeap<Reverse<u32>>,
    /// stamp → index, oldest first.
    pub(crate) lru: BTreeMap<u64, u32>,
}

impl Pool {
    pub(crate) fn new(capacity: usize) -> Self {
        Pool {
            slots: vec![
                Slot {
                    state: SlotState::Free,
                    key: None,
                    stamp: 0,
                };
                capacity
            ],
            free: (0..capacity as u32).map(Reverse).collect(),
            lru: BTreeMap::new(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    pub(crate) fn cached_count(&self) -> usize {
        self.lru.len()
    }

    /// Takes a free block as owned by one reference.
    pub(crate) fn take_free(&mut self) -> Option<u32> {
        let Reverse(i) = self.free.pop()?;
        let slot = &mut self.slots[i as usize];
        debug_assert_eq!(slot.state, SlotState::Free);
        slot.state = SlotState::Owned { refs: 1 };
        Some(i)
    }

    /// The least recently cached block.
    pub(crate) fn lru_oldest(&self) -> Option<u32> {
        self.lru.values().next().copied()
    }

    /// Adds a reference; a cached block becomes owned again.
    pub(crate) fn retain(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        match slot.state {
            SlotState::Owned { refs } => slot.state = SlotState::Owned { refs: refs + 1 },
            SlotState::Cached => {
                self.lru.remove(&slot.stamp);
                slot.state = SlotState::Owned { refs: 1 };
            }
            SlotState::Free => {
                debug_assert!(false, "retain of a free block {i}");
            }
        }
    }

    /// Drops a reference. At zero, a keyed block is cached (stamped `stamp`), others are freed.
    pub(crate) fn release(&mut self, i: u32, stamp: u64) -> Released {
        let slot = &mut self.slots[i as usize];
        let SlotState::Owned { refs } = slot.state else {
            debug_assert!(false, "release of a block that is not owned: {i}");
            return Released::Freed;
        };
        if refs > 1 {
            slot.state = SlotState::Owned { refs: refs - 1 };
            return Released::Shared;
        }
        if slot.key.is_some() {
            slot.state = SlotState::Cached;
            slot.stamp = stamp;
            self.lru.insert(stamp, i);
            Released::Cached
        } else {
            slot.state = SlotState::Free;
            self.free.push(Reverse(i));
            Released::Freed
        }
    }

    /// Turns a cached block into a free one; returns the key it held.
    pub(crate) fn drop_cached(&mut self, i: u32) -> Option<CacheKey> {
        let slot = &mut self.slots[i as usize];
        debug_assert_eq!(slot.state, SlotState::Cached);
        self.lru.remove(&slot.stamp);
        slot.state = SlotState::Free;
        self.free.push(Reverse(i));
        slot.key.take()
    }

    /// Makes a just-taken owned block a cached one holding `key` (a demotion's destination).
    pub(crate) fn owned_to_cached(&mut self, i: u32, key: CacheKey, stamp: u64) {
        let slot = &mut self.slots[i as usize];
        debug_assert_eq!(slot.state, SlotState::Owned { refs: 1 });
        slot.state = SlotState::Cached;
        slot.key = Some(key);
        slot.stamp = stamp;
        self.lru.insert(stamp, i);
    }

    pub(crate) fn refs(&self, i: u32) -> u32 {
        match self.slots[i as usize].state {
            SlotState::Owned { refs } => refs,
            _ => 0,
        }
    }
}
