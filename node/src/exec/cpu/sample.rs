//! Picking the next token from a row of logits: greedy, or temperature with nucleus (top-p)
//! sampling seeded per output position, so a replayed request draws the same tokens.

use crate::model::rng::Rng;
use crate::sched::plan::Sampling;

/// The token with the highest logit; ties go to the lowest id, NaN never wins (all NaN gives 0).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_logit {
            best = i;
            best_logit = l;
        }
    }
    best as u32
}

/// The next token for `sampling`: greedy when `temperature` is 0; otherwise the softmax of
/// `logits / temperature` cut to the smallest set of most likely tokens whose mass reaches
/// `top_p` (ties by lowest id), drawn with `Rng::derive(seed, output_index)`.
pub fn sample(logits: &[f32], sampling: &Sampling, output_index: usize) -> u32 {
    if sampling.temperature <= 0.0 || logits.is_empty() {
        return argmax(logits);
    }
    let t = sampling.temperature as f64;
    let max = logits[argmax(logits) as usize] as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let p = ((l as f64 - max) / t).exp();
            (i as u32, if p.is_nan() { 0.0 } else { p })
        })
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let want = sampling.top_p.clamp(0.0, 1.0) as f64 * total;
    let mut kept = 0;
    let mut mass = 0.0;
    for &(_, p) in &probs {
        kept += 1;
        mass += p;
        if mass >= want {
            break;
        }
    }
    let mut u = Rng::derive(sampling.seed, output_index as u64).next_f64() * mass;
    for &(id, p) in &probs[..kept] {
        if u < p {
            return id;
        }
        u -= p;
    }
    // Rounding left `u` just past the last kept token.
    probs[kept - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(temperature: f32, top_p: f32, seed: u64) -> Sampling {
        Sampling {
            temperature,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_ties_go_to_the_lowest_id() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(sample(&[1.0, 3.0, 3.0], &Sampling::default(), 9), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let logits = [0.1, 0.9, 0.3, 0.9, -2.0];
        for seed in 0..50 {
            assert_eq!(sample(&logits, &with(1.5, 1e-6, seed), seed as usize), 1);
        }
    }

    #[test]
    fn same_seed_same_token_and_draws_spread() {
        let logits: Vec<f32> = (0..32).map(|i| (i % 5) as f32 * 0.3).collect();
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let s = with(1.0, 0.9, 42);
            let a = sample(&logits, &s, i);
            assert_eq!(a, sample(&logits, &s, i));
            seen.insert(a);
        }
        assert!(seen.len() > 5, "sampling should spread: {seen:?}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Token 0 carries almost all mass; top_p 0.5 keeps only it.
        let logits = [10.0, 0.0, 0.0, 0.0];
        for i in 0..100 {
            assert_eq!(sample(&logits, &with(1.0, 0.5, 3), i), 0);
        }
    }
}
