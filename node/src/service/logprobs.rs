//! Log-probabilities of a sampled token and of the most likely tokens, from raw logits
//! (log-softmax; the model's distribution before temperature or top-p).

/// `(log p(token), [(id, log p)] of the k most likely tokens, most likely first)`.
/// Non-finite logits count as impossible.
pub(crate) fn logprobs(logits: &[f32], token: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let finite = |x: f32| if x.is_finite() { x } else { f32::NEG_INFINITY };
    let max = logits
        .iter()
        .copied()
        .map(finite)
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return (f32::NEG_INFINITY, Vec::new());
    }
    let sum: f64 = logits
        .iter()
        .map(|&x| f64::from(finite(x) - max).exp())
        .sum();
    let lse = f64::from(max) + sum.ln();
    let lp = |x: f32| (f64::from(finite(x)) - lse) as f32;
    let of_token = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&x| lp(x));
    let k = k.min(logits.len());
    if k == 0 {
        return (of_token, Vec::new());
    }
    // Every id indexes `logits`: they are 0..len.
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    // Highest logit first; ties by lower id.
    let order = |a: &u32, b: &u32| {
        finite(logits[*b as usize])
            .total_cmp(&finite(logits[*a as usize]))
            .then(a.cmp(b))
    };
    ids.select_nth_unstable_by(k - 1, order);
    ids.truncate(k);
    ids.sort_unstable_by(order);
    let top = ids
        .into_iter()
        .map(|i| (i, lp(logits[i as usize])))
        .collect();
    (of_token, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_top_k() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, f32::NAN];
        let (lp, top) = logprobs(&logits, 2, 3);
        let z: f64 = [1.0f64, 3.0, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        assert!((f64::from(lp) - (2.0 - z.ln())).abs() < 1e-6, "{lp}");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 2]);
        assert!((top[0].1 - top[1].1).abs() < 1e-7);
        let p: f64 = top.iter().map(|t| f64::from(t.1).exp()).sum();
        assert!(p < 1.0 && p > 0.8, "{p}");
        let (nan_lp, _) = logprobs(&logits, 4, 0);
        assert_eq!(nan_lp, f32::NEG_INFINITY);
        assert_eq!(logprobs(&logits, 0, 99).1.len(), 5);
        assert_eq!(logprobs(&[], 0, 3), (f32::NEG_INFINITY, Vec::new()));
    }
}
