//! Temperature and top-p sampling on the GPU: a tiny top-p gives greedy's token; the same seed
//! and output index give the same token every time; draws over many output indices spread over
//! more than one token and stay in the nucleus of the GPU's own logits.

use super::gpu::gpu;
use super::pair::{Pair, Seq, random_prompt, tiny_with};
use std::collections::BTreeSet;
use strata_node::exec::Executor;
use strata_node::model::rng::Rng;
use strata_node::sched::plan::{Sampling, StepPlan, WorkItem};

/// Output indices drawn per sequence.
const DRAWS: usize = 64;

/// The smallest set of most likely tokens whose softmax mass at temperature `t` reaches
/// `top_p + slack`.
fn nucleus(logits: &[f32], t: f64, top_p: f64, slack: f64) -> BTreeSet<u32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = BTreeSet::new();
    let mut mass = 0.0;
    for (id, p) in probs {
        kept.insert(id);
        mass += p / total;
        if mass >= top_p + slack {
            break;
        }
    }
    kept
}

/// Runs `items` on the GPU alone; returns its tokens and logits in plan order.
fn gpu_step(p: &mut Pair, items: &[WorkItem]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let plan = StepPlan {
        copies: Vec::new(),
        items: items.to_vec(),
    };
    let out = p.gpu.execute(&plan).expect("cuda runs the decode");
    let tokens = out.tokens.iter().map(|t| t.1).collect();
    let logits = out.logits.into_iter().map(|l| l.1).collect();
    (tokens, logits)
}

/// `items` with `sampling` (seed offset per item) at output index `index`.
fn with(items: &[WorkItem], sampling: Sampling, index: usize) -> Vec<WorkItem> {
    let mut items = items.to_vec();
    for (n, item) in items.iter_mut().enumerate() {
        item.sampling = Sampling {
            seed: sampling.seed + n as u64,
            ..sampling
        };
        item.output_index = index;
    }
    items
}

#[test]
fn top_p_sampling_is_seeded_and_spreads() {
    if !gpu() {
        return;
    }
    let cfg = tiny_with(|_| {});
    let mut p = Pair::random(&cfg, 501, 16);
    let mut rng = Rng::new(502);
    let mut seqs: Vec<Seq> = [5, 30, 64, 120]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let prompt = random_prompt(&mut rng, len, cfg.vocab_size);
            Seq::new(i as u64 + 1, prompt, cfg.num_layers)
        })
        .collect();
    // Prefill on both executors (compared as everywhere), then one decode position, run again
    // and again on the GPU: rewriting the same position's K/V leaves the cache as it was.
    let items: Vec<WorkItem> = seqs.iter_mut().map(|s| s.item(&mut p)).collect();
    let out = p.step(Vec::new(), items, "prefill before sampling");
    seqs.iter_mut().for_each(|s| s.accept(&out));
    let decode: Vec<WorkItem> = seqs.iter_mut().map(|s| s.item(&mut p)).collect();
    let (greedy, logits) = gpu_step(&mut p, &decode);
    assert_eq!(logits.len(), decode.len(), "logits for every item");

    for temperature in [1.0, 1.5] {
        let tiny = Sampling {
            temperature,
            top_p: 1e-6,
            seed: 7,
        };
        for index in 0..8 {
            let (drawn, _) = gpu_step(&mut p, &with(&decode, tiny, index));
            assert_eq!(
                drawn, greedy,
                "temperature {temperature}, top_p 1e-6, output index {index}: not greedy's tokens"
            );
        }
    }

    // top_p 0.9 keeps most of this near-flat vocabulary; 0.03 keeps a handful of tokens, so
    // that staying inside the nucleus means something.
    for top_p in [0.9, 0.03] {
        let sampling = Sampling {
            temperature: 1.0,
            top_p,
            seed: 42,
        };
        let seen = draw_many(&mut p, &decode, &logits, sampling);
        let other = draw_many(
            &mut p,
            &decode,
            &logits,
            Sampling {
                seed: 4242,
                ..sampling
            },
        );
        assert_ne!(
            seen, other,
            "top_p {top_p}: seeds 42 and 4242 drew the same tokens"
        );
        for (n, tokens) in seen.iter().enumerate() {
            let distinct: BTreeSet<u32> = tokens.iter().copied().collect();
            let kept = nucleus(&logits[n], 1.0, top_p as f64, 0.0).len();
            eprintln!(
                "top_p {top_p}, item {n}: {} distinct tokens in {DRAWS} draws, nucleus of {kept}",
                distinct.len()
            );
            assert!(
                distinct.len() > 1,
                "top_p {top_p}, item {n}: {DRAWS} draws from a nucleus of {kept} tokens all \
                 gave {distinct:?}"
            );
        }
    }
    p.report("top_p_sampling_is_seeded_and_spreads");
}

/// Draws at output indices `0..DRAWS` with `sampling` (twice each: the same token both times,
/// inside the nucleus of the GPU's own logits). Returns each item's draws.
fn draw_many(
    p: &mut Pair,
    decode: &[WorkItem],
    logits: &[Vec<f32>],
    sampling: Sampling,
) -> Vec<Vec<u32>> {
    let t = sampling.temperature as f64;
    let kept: Vec<BTreeSet<u32>> = logits
        .iter()
        .map(|l| nucleus(l, t, sampling.top_p as f64, 1e-3))
        .collect();
    let mut seen = vec![Vec::with_capacity(DRAWS); decode.len()];
    for index in 0..DRAWS {
        let items = with(decode, sampling, index);
        let (first, again) = (gpu_step(p, &items).0, gpu_step(p, &items).0);
        assert_eq!(
            first, again,
            "{sampling:?}, output index {index}: one seed, two different draws"
        );
        for (n, &token) in first.iter().enumerate() {
            assert!(
                kept[n].contains(&token),
                "{sampling:?}, item {n}, output index {index}: token {token} outside the \
                 nucleus ({} tokens with the slack)",
                kept[n].len()
            );
            seen[n].push(token);
        }
    }
    seen
}
