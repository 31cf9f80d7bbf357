//! Where a block lives and how large it is.

use std::fmt;

/// A memory tier of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Device memory: the only tier compute reads.
    Gpu = 0,
    /// Host memory (pinned on a GPU node).
    Host = 1,
}

impl Tier {
    pub const ALL: [Tier; 2] = [Tier::Gpu, Tier::Host];

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Gpu => "gpu",
            Tier::Host => "host",
        })
    }
}

/// A physical block slot: a tier and an index into that tier's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    pub tier: Tier,
    pub index: u32,
}

impl BlockId {
    pub fn gpu(index: u32) -> Self {
        BlockId {
            tier: Tier::Gpu,
            index,
        }
    }

    pub fn host(index: u32) -> Self {
        BlockId {
            tier: Tier::Host,
            index,
        }
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tier, self.index)
    }
}

/// The geometry of KV blocks: a block holds K and V of `block_tokens` tokens of one layer.
///
/// In memory a block is `[K | V]`, each `[block_tokens, kv_heads, head_dim]` row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub layers: usize,
    pub block_tokens: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub dtype_bytes: usize,
}

impl KvLayout {
    /// The layout of a model's KV cache: every layer, its KV heads and head size.
    pub fn for_model(
        cfg: &crate::model::ModelConfig,
        block_tokens: usize,
        dtype_bytes: usize,
    ) -> Self {
        KvLayout {
            layers: cfg.num_layers,
            block_tokens,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            dtype_bytes,
        }
    }

    /// Elements of K (or of V) in one block.
    pub fn half_block_elems(&self) -> usize {
        self.block_tokens * self.kv_heads * self.head_dim
    }

    /// Elements of K and V in one block.
    pub fn block_elems(&self) -> usize {
        2 * self.half_block_elems()
    }

    /// `2 · block_tokens · kv_heads · head_dim · dtype_bytes`.
    pub fn block_bytes(&self) -> u64 {
        (self.block_elems() * self.dtype_bytes) as u64
    }

    /// Blocks one layer needs to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_geometry() {
        let l = KvLayout {
            layers: 32,
            block_tokens: 16,
            kv_heads: 8,
            head_dim: 128,
            dtype_bytes: 2,
        };
        assert_eq!(l.block_bytes(), 2 * 16 * 8 * 128 * 2);
        assert_eq!(l.blocks_for(0), 0);
        assert_eq!(l.blocks_for(16), 1);
        assert_eq!(l.blocks_for(17), 2);
    }
}
