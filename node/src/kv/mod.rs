//! The layer-wise KV cache.
//!
//! - [`layout`] — tiers, block ids and block geometry.
//! - [`pool`] — one tier's fixed pool and the state of every block (free, owned, cached).
//! - [`prefix`] — prefix-cache addressing: hash chains over full blocks, salted per tenant.
//! - [`manager`] — the [`BlockManager`]: per-sequence per-layer tables, moves between tiers,
//!   the prefix cache with LRU eviction that demotes GPU → host before dropping.
//! - [`validate`] — the invariants, as code.

pub mod layout;
pub mod manager;
pub(crate) mod pool;
pub mod prefix;
pub mod validate;

#[cfg(test)]
mod tests;

pub use layout::{BlockId, KvLayout, Tier};
pub use manager::{BlockManager, KvError, KvEvent, PrefixHit};
pub use prefix::{BlockHash, CacheKey};
pub use validate::InvariantError;
