//! Block manager tests: unit cases and a property test that follows block *contents* through
//! every recorded copy, so moves and demotions are checked for data, not only for accounting.

use super::*;
use crate::sched::plan::SeqId;
use proptest::prelude::*;
use std::collections::HashMap;
use strata_transport::proto::RequestId;

const LAYERS: usize = 3;
const BT: usize = 4;

fn layout() -> KvLayout {
    KvLayout {
        layers: LAYERS,
        block_tokens: BT,
        kv_heads: 1,
        head_dim: 2,
        dtype_bytes: 4,
    }
}

fn id(n: u64) -> SeqId {
    RequestId(n)
}

/// What a block must hold: a digest of (layer, the tokens up to the end of its filled part).
fn tag(layer: usize, tokens: &[u32]) -> u64 {
    prefix::block_hash(layer as u64 + 1, tokens)
}

/// A model of block contents driven by the manager's copies and by commits.
#[derive(Default)]
struct Shadow {
    data: HashMap<BlockId, u64>,
}

impl Shadow {
    fn apply(&mut self, copies: &[sched_copy::CopyOp]) {
        for c in copies {
            let v = self.data.get(&c.src).copied().unwrap_or(0);
            self.data.insert(c.dst, v);
        }
    }

    /// Writes what a step computing positions `from..to` of `seq` stores.
    fn write(&mut self, kv: &BlockManager, seq: SeqId, all: &[u32], from: usize) {
        for layer in 0..LAYERS {
            let table = kv.table(seq, layer);
            for pos in from..all.len() {
                let b = pos / BT;
                let end = ((b + 1) * BT).min(all.len());
                self.data.insert(table[b], tag(layer, &all[..end]));
            }
        }
    }

    fn check(&self, kv: &BlockManager, seq: SeqId, all: &[u32]) {
        for layer in 0..LAYERS {
            for (b, block) in kv.table(seq, layer).iter().enumerate() {
                if b * BT >= all.len() {
                    break;
                }
                let end = ((b + 1) * BT).min(all.len());
                assert_eq!(
                    self.data.get(block).copied(),
                    Some(tag(layer, &all[..end])),
                    "seq {seq} layer {layer} block {b} at {block} holds the wrong data"
                );
            }
        }
    }
}

mod sched_copy {
    pub use crate::sched::plan::CopyOp;
}

/// Registers `seq`, attaches its cached prefix and allocates + writes the rest of `prompt`,
/// each layer on `tier_of(layer)`. `growth`: the tokens it is expected to add after the prompt.
fn prefill(
    kv: &mut BlockManager,
    sh: &mut Shadow,
    seq: SeqId,
    prompt: &[u32],
    growth: usize,
    tier_of: impl Fn(usize) -> Tier,
) -> Result<usize, KvError> {
    kv.register(seq, 0)?;
    kv.expect_tokens(seq, prompt.len() + growth)?;
    let hit = kv.attach_prefix(seq, prompt)?;
    sh.apply(&kv.poll_copies());
    for layer in 0..LAYERS {
        if let Err(e) = kv.grow(seq, layer, prompt.len(), tier_of(layer)) {
            kv.free(seq)?;
            sh.apply(&kv.poll_copies());
            return Err(e);
        }
        sh.apply(&kv.poll_copies());
    }
    sh.write(kv, seq, prompt, hit);
    kv.commit(seq, &prompt[hit..])?;
    Ok(hit)
}

#[test]
fn prefix_hit_shares_blocks_and_survives_free() {
    let mut kv = BlockManager::new(layout(), 64, 64);
    let mut sh = Shadow::default();
    let prompt: Vec<u32> = (0..10).collect();
    assert_eq!(
        prefill(&mut kv, &mut sh, id(1), &prompt, 0, |_| Tier::Gpu),
        Ok(0)
    );
    kv.validate().unwrap();
    kv.free(id(1)).unwrap();
    // Two full blocks of 4 stay cached on every layer; the partial third is freed.
    assert_eq!(kv.cached_blocks(Tier::Gpu), 2 * LAYERS);
    kv.validate().unwrap();
    let hit = prefill(&mut kv, &mut sh, id(2), &prompt, 0, |_| Tier::Gpu).unwrap();
    assert_eq!(hit, 8);
    assert_eq!(kv.cached_blocks(Tier::Gpu), 0);
    sh.check(&kv, id(2), &prompt);
    // A third sequence shares the same blocks.
    let hit3 = prefill(&mut kv, &mut sh, id(3), &prompt, 0, |_| Tier::Gpu).unwrap();
    assert_eq!(hit3, 8);
    assert_eq!(kv.block_refs(kv.table(id(3), 0)[0]), 2);
    kv.validate().unwrap();
    // A different salt misses.
    kv.register(id(4), 99).unwrap();
    assert_eq!(kv.attach_prefix(id(4), &prompt), Ok(0));
    kv.validate().unwrap();
}

#[test]
fn eviction_demotes_gpu_cache_to_host_then_drops() {
    let mut kv = BlockManager::new(layout(), 2 * LAYERS, LAYERS);
    let mut sh = Shadow::default();
    let a: Vec<u32> = (0..8).collect();
    prefill(&mut kv, &mut sh, id(1), &a, 0, |_| Tier::Gpu).unwrap();
    kv.free(id(1)).unwrap();
    assert_eq!(kv.cached_blocks(Tier::Gpu), 2 * LAYERS);
    // A new prompt needs every GPU block: the cache is demoted to the host while it has room.
    let b: Vec<u32> = (100..108).collect();
    prefill(&mut kv, &mut sh, id(2), &b, 0, |_| Tier::Gpu).unwrap();
    kv.validate().unwrap();
    assert_eq!(kv.cached_blocks(Tier::Gpu), 0);
    assert_eq!(kv.cached_blocks(Tier::Host), LAYERS);
    let events = kv.poll_events();
    assert!(events.iter().any(|e| matches!(
        e,
        KvEvent::Stored {
            tier: Tier::Host,
            ..
        }
    )));
    // The demoted blocks still hit, now on the host, with the right data.
    let hit = kv.peek_prefix(&a, 0);
    assert_eq!(hit.blocks(), 1);
    assert_eq!(hit.count_on(Tier::Host), LAYERS);
    kv.register(id(3), 0).unwrap();
    kv.attach_prefix(id(3), &a).unwrap();
    sh.check(&kv, id(3), &a[..4]);
}

#[test]
fn evicted_neighbours_are_demoted_as_one_copy_run() {
    // One sequence fills the GPU with 8 blocks per layer; once freed, its blocks are cache.
    let mut kv = BlockManager::new(layout(), 8 * LAYERS, 8 * LAYERS);
    let mut sh = Shadow::default();
    let a: Vec<u32> = (0..32).collect();
    prefill(&mut kv, &mut sh, id(1), &a, 0, |_| Tier::Gpu).unwrap();
    kv.free(id(1)).unwrap();
    // Layer 0 of a new sequence takes the 8 least recently cached: the last positions of
    // every layer (LRU evicts chain tails on every layer first). Taken as one batch and in
    // index order, each layer's neighbours move to neighbouring host blocks in one run.
    kv.register(id(2), 0).unwrap();
    kv.grow(id(2), 0, 32, Tier::Gpu).unwrap();
    let copies = kv.poll_copies();
    assert_eq!(copies.len(), 8, "every victim is demoted");
    let runs = crate::exec::copy_runs(&copies);
    assert_eq!(
        runs.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        vec![3, 3, 2],
        "positions 5..8 of layers 0 and 1, 6..8 of layer 2: {copies:?}"
    );
    let table = kv.table(id(2), 0).to_vec();
    assert!(table.windows(2).all(|w| w[0].index < w[1].index));
    sh.apply(&copies);
    kv.validate().unwrap();
    // Nothing was dropped: the chain still hits (all but the last block, which a prompt
    // always computes), its demoted blocks now on the host, every block with the right data.
    let hit = kv.peek_prefix(&a, 0);
    assert_eq!(hit.blocks(), 7);
    assert_eq!(
        hit.count_on(Tier::Host),
        5,
        "positions 5 and 6 of layers 0, 1; 6 of 2"
    );
    kv.register(id(3), 0).unwrap();
    assert_eq!(kv.attach_prefix(id(3), &a), Ok(28));
    sh.check(&kv, id(3), &a[..28]);
}

#[test]
fn a_lost_cache_is_dropped_without_demotion() {
    let mut kv = BlockManager::new(layout(), 64, 64);
    let mut sh = Shadow::default();
    let a: Vec<u32> = (0..8).collect();
    prefill(&mut kv, &mut sh, id(1), &a, 0, |_| Tier::Gpu).unwrap();
    prefill(
        &mut kv,
        &mut sh,
        id(2),
        &(50..58).collect::<Vec<_>>(),
        0,
        |l| {
            if l == 1 { Tier::Host } else { Tier::Gpu }
        },
    )
    .unwrap();
    kv.free(id(1)).unwrap();
    kv.free(id(2)).unwrap();
    kv.poll_events();
    let cached = kv.cached_blocks(Tier::Gpu) + kv.cached_blocks(Tier::Host);
    assert_eq!(cached, 4 * LAYERS);
    assert_eq!(kv.drop_cache(), cached);
    kv.validate().unwrap();
    assert_eq!(kv.free_blocks(Tier::Gpu), 64);
    assert_eq!(kv.free_blocks(Tier::Host), 64);
    assert!(kv.poll_copies().is_empty(), "nothing is demoted");
    let removed = kv.poll_events();
    assert_eq!(removed.len(), cached);
    assert!(removed.iter().all(|e| matches!(e, KvEvent::Removed { .. })));
    assert_eq!(kv.peek_prefix(&a, 0).blocks(), 0);
}

#[test]
fn offload_and_reload_move_data_and_keys() {
    let mut kv = BlockManager::new(layout(), 16, 16);
    let mut sh = Shadow::default();
    let p: Vec<u32> = (0..9).collect();
    prefill(&mut kv, &mut sh, id(1), &p, 0, |_| Tier::Gpu).unwrap();
    assert_eq!(kv.move_layer(id(1), 1, Tier::Host), Ok(3));
    sh.apply(&kv.poll_copies());
    assert!(!kv.is_resident(id(1), 1));
    assert_eq!(kv.offloaded_layers(id(1)), vec![1]);
    kv.validate().unwrap();
    sh.check(&kv, id(1), &p);
    assert_eq!(kv.move_layer(id(1), 1, Tier::Gpu), Ok(3));
    sh.apply(&kv.poll_copies());
    assert!(kv.is_resident(id(1), 1));
    kv.validate().unwrap();
    sh.check(&kv, id(1), &p);
}

#[test]
fn failed_requests_change_nothing() {
    let mut kv = BlockManager::new(layout(), 4, 2);
    kv.register(id(1), 0).unwrap();
    let before = format!("{:?}", kv.free_blocks(Tier::Gpu));
    assert!(matches!(
        kv.grow(id(1), 0, 100, Tier::Gpu),
        Err(KvError::OutOfBlocks {
            tier: Tier::Gpu,
            ..
        })
    ));
    assert_eq!(before, format!("{:?}", kv.free_blocks(Tier::Gpu)));
    kv.grow(id(1), 0, 16, Tier::Gpu).unwrap();
    assert!(matches!(
        kv.move_layer(id(1), 0, Tier::Host),
        Err(KvError::OutOfBlocks { .. })
    ));
    assert!(kv.is_resident(id(1), 0));
    assert_eq!(
        kv.grow(id(1), 7, 1, Tier::Gpu),
        Err(KvError::BadLayer {
            layer: 7,
            layers: LAYERS
        })
    );
    assert_eq!(kv.register(id(1), 0), Err(KvError::DuplicateSeq(id(1))));
    assert_eq!(kv.free(id(9)), Err(KvError::UnknownSeq(id(9))));
    kv.validate().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Admit {
        seq: u64,
        shared: usize,
        tail: Vec<u32>,
        host_mask: u8,
        growth: usize,
    },
    Append {
        seq: u64,
        n: usize,
    },
    Offload {
        seq: u64,
        layer: usize,
    },
    Reload {
        seq: u64,
        layer: usize,
    },
    Free {
        seq: u64,
    },
    Evict {
        host: bool,
        n: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u64..6,
            0usize..14,
            prop::collection::vec(0u32..4, 0..9),
            any::<u8>(),
            0usize..12,
        )
            .prop_map(|(seq, shared, tail, host_mask, growth)| Op::Admit {
                seq,
                shared,
                tail,
                host_mask,
                growth,
            }),
        (0u64..6, 1usize..7).prop_map(|(seq, n)| Op::Append { seq, n }),
        (0u64..6, 0usize..LAYERS).prop_map(|(seq, layer)| Op::Offload { seq, layer }),
        (0u64..6, 0usize..LAYERS).prop_map(|(seq, layer)| Op::Reload { seq, layer }),
        (0u64..6).prop_map(|seq| Op::Free { seq }),
        (any::<bool>(), 1usize..5).prop_map(|(host, n)| Op::Evict { host, n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_and_data_follows_blocks(ops in prop::collection::vec(op(), 1..60)) {
        let mut kv = BlockManager::new(layout(), 20, 14);
        let mut sh = Shadow::default();
        let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
        // A common prefix so that admissions hit the cache.
        let common: Vec<u32> = (1000..1014).collect();
        for op in ops {
            match op {
                Op::Admit { seq, shared, tail, host_mask, growth } => {
                    if tokens.contains_key(&seq) { continue; }
                    let mut p = common[..shared].to_vec();
                    p.extend(tail);
                    if p.is_empty() { p.push(7); }
                    if prefill(&mut kv, &mut sh, id(seq), &p, growth, |l| {
                        if host_mask >> l & 1 == 1 { Tier::Host } else { Tier::Gpu }
                    }).is_ok() {
                        tokens.insert(seq, p);
                    }
                }
                Op::Append { seq, n } => {
                    let Some(all) = tokens.get_mut(&seq) else { continue };
                    let from = all.len();
                    let new: Vec<u32> = (0..n as u32).map(|i| (from as u32 + i) % 5).collect();
                    let target = from + n;
                    let mut ok = true;
                    for layer in 0..LAYERS {
                        let tier = if kv.is_resident(id(seq), layer) { Tier::Gpu } else { Tier::Host };
                        if kv.grow(id(seq), layer, target, tier).is_err() { ok = false; }
                        sh.apply(&kv.poll_copies());
                    }
                    if ok {
                        all.extend(&new);
                        sh.write(&kv, id(seq), all, from);
                        kv.commit(id(seq), &new).unwrap();
                    }
                }
                Op::Offload { seq, layer } | Op::Reload { seq, layer } => {
                    if !tokens.contains_key(&seq) { continue; }
                    let to = if matches!(op, Op::Offload { .. }) { Tier::Host } else { Tier::Gpu };
                    let before = kv.blocks_off(id(seq), layer, to);
                    match kv.move_layer(id(seq), layer, to) {
                        Ok(n) => {
                            prop_assert_eq!(n, before);
                            prop_assert_eq!(kv.blocks_off(id(seq), layer, to), 0);
                        }
                        Err(KvError::OutOfBlocks { .. }) => {
                            prop_assert_eq!(kv.blocks_off(id(seq), layer, to), before);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                    sh.apply(&kv.poll_copies());
                }
                Op::Free { seq } => {
                    if tokens.remove(&seq).is_some() {
                        kv.free(id(seq)).unwrap();
                        sh.apply(&kv.poll_copies());
                    }
                }
                Op::Evict { host, n } => {
                    kv.evict(if host { Tier::Host } else { Tier::Gpu }, n);
                    sh.apply(&kv.poll_copies());
                }
            }
            if let Err(e) = kv.validate() {
                prop_assert!(false, "invariant broken: {e}");
            }
            for (seq, all) in &tokens {
                sh.check(&kv, id(*seq), all);
            }
        }
    }
}
