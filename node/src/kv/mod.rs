//! The layer-wise KV cache.
//!
//! - [`layout`] — tiers, block ids and block geometry.
//! - [`pool`] — one tier's fixed pool and the state of every block (free, owned, cached).
//! - [`prefix`] — prefix-cache addressing: hash chains over full blocks, salted per tenant.
//! - [`manager`] — the [`BlockManager`]: per-sequence per-layer tables, moves between tiers,
//!   the prefix cache with LRU eviction that demotes GPU → host before dropping.
//! - [`spare`] — host blocks held behind a host layer's table for the blocks it grows into, so
//!   that a staged layer streams in as few, large transfers.
//! - [`validate`] — the invariants, as code.

pub mod layout;
pub mod manager;
pub(crate) mod pool;
pub mod prefix;
pub mod spare;
pub mod validate;

#[cfg(test)]
mod spare_tests;
#[cfg(test)]
mod tests;

pub use layout::{BlockId, KvLayout, Tier};
pub use manager::{BlockManager, KvError, KvEvent, PrefixHit};
pub use prefix::{BlockHash, CacheKey};
pub use validate::InvariantError;
