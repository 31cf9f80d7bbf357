//! Spare host blocks: a host layer that grows stays in few runs, and spares never cost an
//! allocation anything.

use super::*;
use crate::sched::plan::SeqId;
use strata_transport::proto::RequestId;

const LAYERS: usize = 2;
const BT: usize = 4;

fn manager(gpu: usize, host: usize) -> BlockManager {
    let layout = KvLayout {
        layers: LAYERS,
        block_tokens: BT,
        kv_heads: 1,
        head_dim: 2,
        dtype_bytes: 4,
    };
    BlockManager::new(layout, gpu, host)
}

fn id(n: u64) -> SeqId {
    RequestId(n)
}

/// Registers sequence `n`, expected to reach `tokens` tokens.
fn expecting(kv: &mut BlockManager, n: u64, tokens: usize) {
    kv.register(id(n), 0).unwrap();
    kv.expect_tokens(id(n), tokens).unwrap();
}

/// Runs of consecutive indices in a table.
fn runs(table: &[BlockId]) -> usize {
    1 + table
        .windows(2)
        .filter(|w| w[0].tier != w[1].tier || w[0].index + 1 != w[1].index)
        .count()
}

/// Two sequences with every layer on the host decode side by side, a token at a time.
fn decode_side_by_side(kv: &mut BlockManager, expect: usize) {
    for s in [1, 2] {
        expecting(kv, s, expect);
        for l in 0..LAYERS {
            kv.grow(id(s), l, 8, Tier::Host).unwrap();
        }
    }
    for tokens in 9..=24 {
        for s in [1, 2] {
            for l in 0..LAYERS {
                kv.grow(id(s), l, tokens, Tier::Host).unwrap();
            }
        }
        kv.validate().unwrap();
    }
}

#[test]
fn a_growing_host_layer_stays_one_run() {
    let mut kv = manager(8, 64);
    decode_side_by_side(&mut kv, 24);
    for s in [1, 2] {
        for l in 0..LAYERS {
            assert_eq!(kv.table(id(s), l).len(), 6);
            assert_eq!(runs(kv.table(id(s), l)), 1, "seq {s} layer {l}");
        }
    }
    // Grown to the expected length: nothing is left spare.
    assert_eq!(kv.spare_blocks(), 0);

    // Without an expected length each grown block lands behind the other sequences'.
    let mut kv = manager(8, 64);
    decode_side_by_side(&mut kv, 0);
    assert_eq!(runs(kv.table(id(1), 0)), 5);
}

#[test]
fn spares_count_as_available_and_are_taken_back() {
    let mut kv = manager(8, 12);
    expecting(&mut kv, 1, 100);
    kv.grow(id(1), 0, 4, Tier::Host).unwrap();
    // One block in the table, the other 11 spare: all of them still available.
    assert_eq!(kv.spare_blocks(), 11);
    assert_eq!(kv.free_blocks(Tier::Host), 0);
    assert_eq!(kv.available(Tier::Host), 11);
    kv.register(id(2), 0).unwrap();
    kv.grow(id(2), 0, 40, Tier::Host).unwrap();
    assert_eq!(kv.table(id(2), 0).len(), 10);
    assert_eq!(kv.spare_blocks(), 1);
    kv.validate().unwrap();
    // Sequence 1 grows into its last spare, then past it, as far as the pool goes.
    kv.grow(id(1), 0, 8, Tier::Host).unwrap();
    assert_eq!(kv.spare_blocks(), 0);
    assert_eq!(
        kv.grow(id(1), 0, 12, Tier::Host),
        Err(KvError::OutOfBlocks {
            tier: Tier::Host,
            needed: 1,
            available: 0
        })
    );
    kv.validate().unwrap();
    kv.free(id(2)).unwrap();
    kv.free(id(1)).unwrap();
    assert_eq!(kv.free_blocks(Tier::Host), 12);
    kv.validate().unwrap();
}

#[test]
fn spares_leave_with_their_layer() {
    let mut kv = manager(16, 16);
    expecting(&mut kv, 1, 32);
    kv.grow(id(1), 0, 8, Tier::Gpu).unwrap();
    kv.grow(id(1), 1, 8, Tier::Gpu).unwrap();
    // Offloading a layer takes its blocks and the growth behind them.
    assert_eq!(kv.move_layer(id(1), 0, Tier::Host).unwrap(), 2);
    assert_eq!(kv.spare_blocks(), 6);
    assert_eq!(kv.poll_copies().len(), 2);
    kv.grow(id(1), 0, 12, Tier::Host).unwrap();
    assert_eq!(runs(kv.table(id(1), 0)), 1);
    assert_eq!(kv.spare_blocks(), 5);
    // Reloading it gives the spares back.
    assert_eq!(kv.move_layer(id(1), 0, Tier::Gpu).unwrap(), 3);
    assert_eq!(kv.spare_blocks(), 0);
    assert_eq!(kv.free_blocks(Tier::Host), 16);
    kv.validate().unwrap();
}

#[test]
fn a_host_grow_that_cannot_be_had_changes_nothing() {
    let mut kv = manager(4, 6);
    expecting(&mut kv, 1, 24);
    kv.grow(id(1), 0, 4, Tier::Host).unwrap();
    assert_eq!(kv.spare_blocks(), 5);
    let before = format!("{kv:?}");
    assert_eq!(
        kv.grow(id(1), 1, 28, Tier::Host),
        Err(KvError::OutOfBlocks {
            tier: Tier::Host,
            needed: 7,
            available: 5
        })
    );
    // A layer's own spares are not there for a grow beyond them either.
    assert!(matches!(
        kv.grow(id(1), 0, 28, Tier::Host),
        Err(KvError::OutOfBlocks { .. })
    ));
    assert_eq!(before, format!("{kv:?}"));
    kv.validate().unwrap();
}
