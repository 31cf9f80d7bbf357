//! The cpu executor against an independent dense reference ([`reference`]).
//!
//! Plans are built by hand ([`harness`]). Every configuration runs a prefill and at least 20
//! greedy decode steps, feeding back the executor's token, and compares the last position's
//! logits with the reference at every step: ‖Δ‖/‖ref‖ < 1e-4.

#[path = "cpu_numerics/harness.rs"]
mod harness;
#[path = "cpu_numerics/reference.rs"]
mod reference;

use harness::{DECODE_STEPS, Harness, POOLS, Seq, prompt, run_plain, tiny_with};
use strata_node::exec::cpu::CpuExecutor;
use strata_node::exec::{ExecError, Executor};
use strata_node::kv::{BlockId, KvLayout, Tier};
use strata_node::model::{Arch, RopeScaling, Weights};
use strata_node::sched::plan::{CopyOp, Sampling, StepPlan, WorkItem};
use strata_transport::proto::RequestId;

#[test]
fn tiny_preset_gqa_4_2_tied() {
    run_plain(tiny_with(|_| {}), 16, 37);
}

#[test]
fn tiny_with_odd_block_tokens() {
    run_plain(tiny_with(|_| {}), 3, 29);
}

#[test]
fn gqa_8_2_llama3_rope_untied_head() {
    let cfg = tiny_with(|c| {
        c.num_layers = 3;
        c.num_heads = 8;
        c.num_kv_heads = 2;
        c.vocab_size = 300;
        c.intermediate_size = 96;
        c.rope_theta = 10_000.0;
        // A short original context, so all three llama3 bands occur among the frequencies.
        c.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32,
        });
        c.tie_word_embeddings = false;
    });
    run_plain(cfg, 16, 45);
}

#[test]
fn qwen2_attention_bias() {
    let cfg = tiny_with(|c| {
        c.arch = Arch::Qwen2;
        c.attention_bias = true;
        c.num_layers = 2;
        c.hidden_size = 48;
        c.num_heads = 6;
        c.num_kv_heads = 2;
        c.head_dim = 8;
        c.intermediate_size = 80;
        c.vocab_size = 200;
        c.rope_theta = 1_000_000.0;
        c.rms_norm_eps = 1e-6;
        c.tie_word_embeddings = false;
    });
    run_plain(cfg, 16, 33);
}

#[test]
fn linear_rope_scaling_odd_blocks() {
    let cfg = tiny_with(|c| {
        c.rope_theta = 10_000.0;
        c.rope_scaling = Some(RopeScaling::Linear { factor: 4.0 });
    });
    run_plain(cfg, 3, 40);
}

#[test]
fn staged_layers_from_host_and_offload_reload() {
    let mut h = Harness::new(tiny_with(|_| {}), 16);
    let mut seq = Seq::new(1, prompt(41, h.cfg.vocab_size, 2), h.cfg.num_layers);
    // Layers 1 and 3 live on the host tier from the start and run through staging.
    for l in [1, 3] {
        seq.tiers[l] = Tier::Host;
        seq.layers[l].staged = true;
    }
    // Layer 2 is staged although its blocks are on the GPU: allowed, and costs no crossing.
    seq.layers[2].staged = true;
    let item = seq.item(&mut h);
    let out = h.run(Vec::new(), vec![item]);
    // Prefill: each host layer stages 3 blocks in and writes all 3 back.
    assert_eq!(out.transfer_bytes, 2 * (3 + 3) * h.block_bytes);
    seq.accept(&h, &out);
    // Decode at positions 41..=47: 3 blocks in, the one with the new position back, per host
    // layer.
    for _ in 0..7 {
        let item = seq.item(&mut h);
        let out = h.run(Vec::new(), vec![item]);
        assert_eq!(out.transfer_bytes, 2 * (3 + 1) * h.block_bytes);
        seq.accept(&h, &out);
    }
    // Offload layer 0 to the host (one coalesced run) and stage it from there.
    let mut copies = Vec::new();
    for b in seq.layers[0].blocks.iter_mut() {
        let dst = h.alloc(Tier::Host);
        copies.push(CopyOp { src: *b, dst });
        *b = dst;
    }
    let moved = copies.len() as u64;
    seq.tiers[0] = Tier::Host;
    seq.layers[0].staged = true;
    // Position 48 opens a fourth block: three host layers stage 4 blocks in and 1 back.
    let item = seq.item(&mut h);
    assert_eq!(item.start_pos, 48);
    let out = h.run(copies, vec![item]);
    assert_eq!(out.transfer_bytes, (moved + 3 * (4 + 1)) * h.block_bytes);
    seq.accept(&h, &out);
    for _ in 0..6 {
        let item = seq.item(&mut h);
        let out = h.run(Vec::new(), vec![item]);
        seq.accept(&h, &out);
    }
    // Reload every host layer to the GPU: resident again, no staging.
    let mut copies = Vec::new();
    for (lk, tier) in seq.layers.iter_mut().zip(seq.tiers.iter_mut()) {
        for b in lk.blocks.iter_mut().filter(|b| b.tier == Tier::Host) {
            let dst = h.alloc(Tier::Gpu);
            copies.push(CopyOp { src: *b, dst });
            *b = dst;
        }
        lk.staged = false;
        *tier = Tier::Gpu;
    }
    let moved = copies.len() as u64;
    let item = seq.item(&mut h);
    let out = h.run(copies, vec![item]);
    assert_eq!(out.transfer_bytes, moved * h.block_bytes);
    seq.accept(&h, &out);
    seq.generate(&mut h, 8);
    assert!(seq.outputs > DECODE_STEPS);
}

#[test]
fn cached_prefix_and_mixed_batch() {
    let mut h = Harness::new(tiny_with(|_| {}), 16);
    let layers = h.cfg.num_layers;
    let mut a = Seq::new(1, prompt(40, h.cfg.vocab_size, 3), layers);
    a.generate(&mut h, 2);
    // B shares A's first 37 tokens: blocks 0 and 1 (positions 0..32) are shared as they are;
    // block 2 holds positions 32..37 that B reuses but must not write in A's copy, so the plan
    // copies it into a block of B's own (copy on write).
    let mut tokens = a.tokens[..37].to_vec();
    tokens.extend(prompt(9, h.cfg.vocab_size, 4));
    let mut b = Seq::new(2, tokens, layers);
    let mut copies = Vec::new();
    for (lb, la) in b.layers.iter_mut().zip(&a.layers) {
        let own = h.alloc(Tier::Gpu);
        copies.push(CopyOp {
            src: la.blocks[2],
            dst: own,
        });
        lb.blocks = vec![la.blocks[0], la.blocks[1], own];
    }
    b.done = 37;
    // One step: B prefills from position 37 while A decodes.
    let items = vec![a.item(&mut h), b.item(&mut h)];
    assert_eq!(items[1].start_pos, 37);
    let out = h.run(copies, items);
    assert_eq!(out.transfer_bytes, 0, "gpu to gpu copies cross no tier");
    a.accept(&h, &out);
    b.accept(&h, &out);
    for _ in 0..DECODE_STEPS {
        let items = vec![b.item(&mut h), a.item(&mut h)];
        let out = h.run(Vec::new(), items);
        assert_eq!(out.tokens.len(), 2);
        a.accept(&h, &out);
        b.accept(&h, &out);
    }
}

#[test]
fn sampled_tokens_are_reproducible() {
    let draw = |seed: u64| {
        let mut h = Harness::new(tiny_with(|_| {}), 16);
        let mut seq = Seq::new(5, prompt(20, h.cfg.vocab_size, 5), h.cfg.num_layers);
        let mut out_tokens = Vec::new();
        for _ in 0..12 {
            let mut item = seq.item(&mut h);
            item.sampling = Sampling {
                temperature: 1.5,
                top_p: 0.95,
                seed,
            };
            item.want_logits = false;
            let out = h.run(Vec::new(), vec![item]);
            assert!(out.logits.is_empty());
            let token = out.tokens[0].1;
            out_tokens.push(token);
            seq.done = seq.tokens.len();
            seq.tokens.push(token);
            seq.outputs += 1;
        }
        out_tokens
    };
    assert_eq!(draw(9), draw(9));
    assert_ne!(draw(9), draw(10));
}

// ---------------------------------------------------------------------------------------------
// Plans and models the executor must refuse without panicking.

fn refused(h: &mut Harness, plan: StepPlan, what: &str) {
    match h.exec.execute(&plan) {
        Err(ExecError::InvalidPlan(msg)) => assert!(!msg.is_empty()),
        other => panic!("{what}: expected InvalidPlan, got {other:?}"),
    }
}

#[test]
fn invalid_plans_are_refused() {
    let mut h = Harness::new(tiny_with(|_| {}), 16);
    let mut seq = Seq::new(1, prompt(20, h.cfg.vocab_size, 6), h.cfg.num_layers);
    let good = seq.item(&mut h);
    let plan = |item: WorkItem| StepPlan {
        copies: Vec::new(),
        items: vec![item],
    };
    let mut bad = good.clone();
    bad.layers[1].blocks[0] = BlockId::gpu(POOLS.gpu_blocks as u32);
    refused(&mut h, plan(bad), "block index past the pool");
    let mut bad = good.clone();
    bad.layers.pop();
    refused(&mut h, plan(bad), "a layer missing");
    let mut bad = good.clone();
    bad.layers[0].blocks[1] = BlockId::host(0);
    refused(&mut h, plan(bad), "host block in a resident layer");
    let mut bad = good.clone();
    bad.layers[2].blocks.pop();
    refused(&mut h, plan(bad), "too few blocks");
    let mut bad = good.clone();
    bad.tokens[3] = h.cfg.vocab_size as u32;
    refused(&mut h, plan(bad), "token outside the vocabulary");
    let mut bad = good.clone();
    bad.tokens.clear();
    refused(&mut h, plan(bad), "no tokens");
    let mut bad = good.clone();
    bad.start_pos = h.cfg.max_position_embeddings - 5;
    refused(&mut h, plan(bad), "positions past the model's");
    let mut bad = good.clone();
    bad.sampling.top_p = 0.0;
    refused(&mut h, plan(bad), "top_p 0");
    let mut bad = good.clone();
    bad.sampling.temperature = f32::NAN;
    refused(&mut h, plan(bad), "NaN temperature");
    // Staging: two items staging 2 blocks each of one layer fit 24 slots; 13 such items don't.
    let staged_item = |h: &mut Harness, id: u64| {
        let mut s = Seq::new(id, prompt(20, 512, id as u32), 4);
        s.layers[0].staged = true;
        s.item(h)
    };
    let items: Vec<WorkItem> = (10..23).map(|id| staged_item(&mut h, id)).collect();
    refused(
        &mut h,
        StepPlan {
            copies: Vec::new(),
            items,
        },
        "staging overflow",
    );
    // Two items writing the same block.
    let mut twin = good.clone();
    twin.seq = RequestId(99);
    let items = vec![good.clone(), twin];
    refused(
        &mut h,
        StepPlan {
            copies: Vec::new(),
            items,
        },
        "one block written twice",
    );
    let copies = vec![CopyOp {
        src: BlockId::host(POOLS.host_blocks as u32 + 3),
        dst: BlockId::gpu(0),
    }];
    refused(
        &mut h,
        StepPlan {
            copies,
            items: Vec::new(),
        },
        "copy from past the pool",
    );
    // The executor is unharmed: the good plan still runs and matches the reference.
    let out = h.run(Vec::new(), vec![good]);
    seq.accept(&h, &out);
}

#[test]
fn unusable_models_are_refused() {
    let cfg = tiny_with(|_| {});
    let weights = Weights::random(&cfg, 1, 0..cfg.num_layers).expect("weights");
    let layout = KvLayout::for_model(&cfg, 16, 4);
    let bf16 = KvLayout {
        dtype_bytes: 2,
        ..layout
    };
    assert!(CpuExecutor::new(&cfg, weights.clone(), bf16, POOLS).is_err());
    let wrong_heads = KvLayout {
        kv_heads: 4,
        ..layout
    };
    assert!(CpuExecutor::new(&cfg, weights.clone(), wrong_heads, POOLS).is_err());
    let stage = Weights::random(&cfg, 1, 0..2).expect("weights");
    assert!(CpuExecutor::new(&cfg, stage, layout, POOLS).is_err());
    let mut bad = weights.clone();
    bad.layers[1].wo.data.pop();
    assert!(CpuExecutor::new(&cfg, bad, layout, POOLS).is_err());
    let exec = CpuExecutor::new(&cfg, weights, layout, POOLS).expect("executor");
    assert_eq!(exec.name(), "cpu");
}
