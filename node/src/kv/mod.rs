//! The layer-wise KV cache.

pub mod layout;

pub use layout::{BlockId, KvLayout, Tier};
