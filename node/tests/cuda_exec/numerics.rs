//! cuda logits against the cpu executor's on the same random weights and the same tokens:
//! ‖Δ‖/‖ref‖ < 2e-2 at every prefill (or prefill chunk) and every decode step.

use super::gpu::gpu;
use super::pair::{
    DECODE_STEPS, Pair, Seq, generate_together, random_prompt, run_batch, tiny_with,
};
use strata_node::kv::Tier;
use strata_node::model::rng::Rng;
use strata_node::model::{Arch, RopeScaling};
use strata_node::sched::plan::CopyOp;

/// Prompt lengths: one token, under a block, several blocks, many blocks.
const LENS: [usize; 4] = [1, 17, 100, 300];

#[test]
fn tiny_prompts_one_at_a_time() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|_| {});
    let mut p = Pair::random(&cfg, 101, 16);
    let mut rng = Rng::new(102);
    for (i, len) in LENS.into_iter().enumerate() {
        let prompt = random_prompt(&mut rng, len, cfg.vocab_size);
        let mut seq = [Seq::new(i as u64 + 1, prompt, cfg.num_layers)];
        generate_together(
            &mut p,
            &mut seq,
            DECODE_STEPS,
            &format!("{len}-token prompt"),
        );
    }
    p.report("tiny_prompts_one_at_a_time");
}

#[test]
fn tiny_batch_of_mixed_lengths() {
    if !gpu() {
        return;
    }
    run_batch(&tiny_with(|_| {}), 16, &LENS, 103, "tiny, batch of 4");
}

#[test]
fn cached_prefix_beside_a_decode() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|_| {});
    let layers = cfg.num_layers;
    let mut p = Pair::random(&cfg, 104, 16);
    let mut rng = Rng::new(105);
    let mut a = Seq::new(1, random_prompt(&mut rng, 40, cfg.vocab_size), layers);
    generate_together(&mut p, std::slice::from_mut(&mut a), 1, "prefix owner");
    // B reuses A's first 37 tokens: blocks 0 and 1 as they are, and a copy of block 2 of its
    // own (copy on write) where it writes from position 37 on.
    let mut b_tokens = a.tokens[..37].to_vec();
    b_tokens.extend(random_prompt(&mut rng, 9, cfg.vocab_size));
    let mut b = Seq::new(2, b_tokens, layers);
    // C reuses exactly A's first two blocks and starts at a block boundary.
    let mut c_tokens = a.tokens[..32].to_vec();
    c_tokens.extend(random_prompt(&mut rng, 50, cfg.vocab_size));
    let mut c = Seq::new(3, c_tokens, layers);
    let mut copies = Vec::new();
    for l in 0..layers {
        let own = p.alloc(Tier::Gpu);
        let shared = &a.layers[l].blocks;
        copies.push(CopyOp {
            src: shared[2],
            dst: own,
        });
        b.layers[l].blocks = vec![shared[0], shared[1], own];
        c.layers[l].blocks = vec![shared[0], shared[1]];
    }
    b.done = 37;
    c.done = 32;
    // One step: A decodes while B and C prefill from their cached prefixes.
    let items = vec![a.item(&mut p), b.item(&mut p), c.item(&mut p)];
    assert_eq!((items[1].start_pos, items[2].start_pos), (37, 32));
    let out = p.step(copies, items, "prefill on cached prefixes beside a decode");
    assert_eq!(out.transfer_bytes, 0, "gpu to gpu copies cross no tier");
    let mut seqs = [a, b, c];
    for s in &mut seqs {
        s.accept(&out);
    }
    generate_together(&mut p, &mut seqs, DECODE_STEPS - 1, "after cached prefixes");
    p.report("cached_prefix_beside_a_decode");
}

#[test]
fn chunked_prefill_beside_a_decode() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|_| {});
    let layers = cfg.num_layers;
    let mut p = Pair::random(&cfg, 106, 16);
    let mut rng = Rng::new(107);
    let mut d = Seq::new(1, random_prompt(&mut rng, 23, cfg.vocab_size), layers);
    generate_together(&mut p, std::slice::from_mut(&mut d), 0, "decoder");
    // Chunks of 4 blocks, and of 50 tokens (ending mid-block): each chunk after the first is
    // a prefill with start_pos > 0, compared at its last position.
    for (id, chunk) in [(2, 64), (3, 50)] {
        let mut s = Seq::new(id, random_prompt(&mut rng, 300, cfg.vocab_size), layers);
        while s.outputs == 0 {
            let items = vec![d.item(&mut p), s.chunk(&mut p, chunk)];
            let what = format!("chunk of {chunk} from {}", s.done);
            let out = p.step(Vec::new(), items, &what);
            d.accept(&out);
            s.accept(&out);
        }
        let mut pair = [s];
        generate_together(
            &mut p,
            &mut pair,
            DECODE_STEPS,
            &format!("after chunks of {chunk}"),
        );
    }
    p.report("chunked_prefill_beside_a_decode");
}

#[test]
fn gqa_8_2_head_dim_16() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|c| {
        c.num_heads = 8;
        c.num_kv_heads = 2;
    });
    run_batch(&cfg, 16, &LENS, 108, "gqa 8:2, head_dim 16");
}

#[test]
fn head_dim_32_gqa_4_2() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|c| c.head_dim = 32);
    run_batch(&cfg, 16, &LENS, 109, "head_dim 32, gqa 4:2");
}

#[test]
fn head_dim_64_gqa_2_1() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|c| {
        c.num_heads = 2;
        c.num_kv_heads = 1;
        c.head_dim = 64;
    });
    run_batch(&cfg, 16, &LENS, 110, "head_dim 64, gqa 2:1");
}

#[test]
fn head_dim_128_no_gqa() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|c| {
        c.hidden_size = 128;
        c.num_heads = 2;
        c.num_kv_heads = 2;
        c.head_dim = 128;
    });
    run_batch(&cfg, 16, &LENS, 111, "head_dim 128, 2 kv heads of 2");
}

#[test]
fn llama3_rope_scaling_untied_head() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|c| {
        c.num_heads = 8;
        c.num_kv_heads = 2;
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
    run_batch(&cfg, 16, &LENS, 112, "llama3 rope scaling");
}

#[test]
fn qwen2_attention_bias() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|c| {
        c.arch = Arch::Qwen2;
        c.attention_bias = true;
        c.num_heads = 4;
        c.num_kv_heads = 2;
        c.rope_theta = 1_000_000.0;
        c.rms_norm_eps = 1e-6;
        c.tie_word_embeddings = false;
    });
    run_batch(&cfg, 16, &LENS, 113, "qwen2 attention bias");
}

#[test]
fn odd_and_large_block_tokens() {
    if !gpu() {
        return;
    }
    for bt in [5, 32] {
        run_batch(
            &tiny_with(|_| {}),
            bt,
            &LENS,
            114,
            &format!("block_tokens {bt}"),
        );
    }
}
