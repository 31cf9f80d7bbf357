//! cuda logits against the cpu's when layers live on the host tier and run through staging,
//! and across offloads and reloads by plan copies (host ↔ device transfers).

use super::gpu::gpu;
use super::pair::{DECODE_STEPS, Pair, Seq, generate_together, random_prompt, tiny_with};
use strata_node::kv::Tier;
use strata_node::model::rng::Rng;
use strata_node::sched::plan::CopyOp;

/// Moves `seq`'s blocks of `layer` to `to` by copies, and sets whether it is staged.
fn move_layer(p: &mut Pair, seq: &mut Seq, layer: usize, to: Tier, copies: &mut Vec<CopyOp>) {
    for b in seq.layers[layer].blocks.iter_mut().filter(|b| b.tier != to) {
        let dst = p.alloc(to);
        copies.push(CopyOp { src: *b, dst });
        *b = dst;
    }
    seq.tiers[layer] = to;
    seq.layers[layer].staged = to == Tier::Host;
}

#[test]
fn staged_layers_offload_and_reload() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|c| c.num_layers = 6);
    let layers = cfg.num_layers;
    let mut p = Pair::random(&cfg, 201, 16);
    let mut rng = Rng::new(202);
    // A: layers 1 and 3 on the host from the start, layer 2 staged although resident.
    let mut a = Seq::new(1, random_prompt(&mut rng, 41, cfg.vocab_size), layers);
    for l in [1, 3] {
        a.tiers[l] = Tier::Host;
        a.layers[l].staged = true;
    }
    a.layers[2].staged = true;
    // B: layers 0, 3 and 5 on the host, so two items share layer 3's staging buffer.
    let mut b = Seq::new(2, random_prompt(&mut rng, 100, cfg.vocab_size), layers);
    for l in [0, 3, 5] {
        b.tiers[l] = Tier::Host;
        b.layers[l].staged = true;
    }
    let mut seqs = [a, b];
    generate_together(&mut p, &mut seqs, 7, "staged from the host");
    let [mut a, mut b] = seqs;

    // Offload A's layer 0 and B's layer 2 to the host and stage them from there.
    let mut copies = Vec::new();
    move_layer(&mut p, &mut a, 0, Tier::Host, &mut copies);
    move_layer(&mut p, &mut b, 2, Tier::Host, &mut copies);
    let items = vec![a.item(&mut p), b.item(&mut p)];
    let out = p.step(copies, items, "offload by copies, then stage");
    assert!(out.transfer_bytes > 0, "the offload moved nothing");
    a.accept(&out);
    b.accept(&out);
    let mut seqs = [a, b];
    generate_together(&mut p, &mut seqs, 6, "after the offload");
    let [mut a, mut b] = seqs;

    // Reload every host layer of both: resident again, nothing staged.
    let mut copies = Vec::new();
    for l in 0..layers {
        move_layer(&mut p, &mut a, l, Tier::Gpu, &mut copies);
        move_layer(&mut p, &mut b, l, Tier::Gpu, &mut copies);
    }
    let items = vec![b.item(&mut p), a.item(&mut p)];
    let out = p.step(copies, items, "reload by copies");
    assert!(out.transfer_bytes > 0, "the reload moved nothing");
    a.accept(&out);
    b.accept(&out);
    let mut seqs = [a, b];
    generate_together(&mut p, &mut seqs, DECODE_STEPS, "after the reload");
    p.report("staged_layers_offload_and_reload");
}
