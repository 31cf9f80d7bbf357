//! Prefix-cache addressing: a full block is named by `hash(parent_hash, its token ids)`, a chain
//! rooted in the tenant salt (the functions live in `strata_transport::proto::kv`, because routers
//! hash prompts the same way). The layer is part of the storage key, not of the hash, so every
//! layer of one block of tokens shares a hash.

pub use strata_transport::proto::kv::{BlockHash, block_hash, chain, chain_root};

/// Where a cached block is indexed: its hash and its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    pub hash: BlockHash,
    pub layer: u32,
}
