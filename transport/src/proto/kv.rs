//! Prefix-cache addressing, shared by nodes (which store blocks under these hashes) and routers
//! (which hash prompts to find the instance holding their prefix): a full block of tokens is
//! named by `hash(parent_hash, its token ids)`, a chain rooted in the tenant salt.

/// The content hash of a full block of tokens (and of everything before it).
pub type BlockHash = u64;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The root of a chain: distinct per tenant salt, so tenants never share cache entries.
pub fn chain_root(salt: u64) -> BlockHash {
    mix(salt ^ 0x5354_5241_5441_0001)
}

/// The hash of a block given its parent's hash. Stable across processes and platforms.
pub fn block_hash(parent: BlockHash, tokens: &[u32]) -> BlockHash {
    let mut h = mix(parent ^ 0x9E37_79B9_7F4A_7C15);
    for &t in tokens {
        h = mix(h ^ u64::from(t).wrapping_mul(0xFF51_AFD7_ED55_8CCD));
    }
    mix(h ^ tokens.len() as u64)
}

/// Hashes of the full blocks of `tokens`, at most `max_blocks` of them.
pub fn chain(salt: u64, tokens: &[u32], block_tokens: usize, max_blocks: usize) -> Vec<BlockHash> {
    let mut parent = chain_root(salt);
    tokens
        .chunks_exact(block_tokens)
        .take(max_blocks)
        .map(|block| {
            parent = block_hash(parent, block);
            parent
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_prefix_salt_and_content() {
        let a: Vec<u32> = (0..64).collect();
        let mut b = a.clone();
        b[40] = 999;
        let ca = chain(0, &a, 16, usize::MAX);
        let cb = chain(0, &b, 16, usize::MAX);
        assert_eq!(ca.len(), 4);
        assert_eq!(ca[..2], cb[..2]);
        assert_ne!(ca[2], cb[2]);
        // A change early changes every later hash.
        assert_ne!(ca[3], cb[3]);
        assert_ne!(chain(1, &a, 16, 1), chain(0, &a, 16, 1));
        assert_eq!(chain(0, &a[..20], 16, usize::MAX).len(), 1);
    }
}
