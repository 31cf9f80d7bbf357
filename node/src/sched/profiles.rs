//! Cost profiles fitted on real GPUs and kept in the repository (`profiles/`), so the scheduler,
//! the router's predictor (through the profile a node reports) and the `sim` executor use
//! measured coefficients rather than the analytic roofline where one exists.

use strata_transport::proto::CostProfile;

/// `(model preset, TOML)` of every fitted profile. Coefficients are per layer: the 70B one was
/// fitted on the model cut to 8 (and 4) layers and holds for its 80 and for any stage of them.
const FITTED: &[(&str, &str)] = &[
    (
        "llama-3-8b",
        include_str!("../../../profiles/h200-llama-3-8b.toml"),
    ),
    (
        "llama-3-70b",
        include_str!("../../../profiles/h200-llama-3-70b.toml"),
    ),
];

/// The profile fitted on an H200 for `model` (a preset name), if there is one.
pub fn h200(model: &str) -> Option<CostProfile> {
    FITTED
        .iter()
        .find(|(name, _)| *name == model)
        .map(|(_, text)| toml::from_str(text).expect("the fitted profiles in profiles/ parse"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;
    use crate::sched::roofline;

    #[test]
    fn the_fitted_h200_profile_parses_and_is_near_the_roofline() {
        let fitted = h200("llama-3-8b").expect("fitted profile");
        let cfg = Preset::Llama3_8b.config();
        let analytic = roofline::profile(&cfg, &roofline::H200, 2);
        // A 4k prefill and a batch-1 decode step at 4k context: measured and analytic agree
        // within a factor of two (the fit is real data, the roofline an ideal).
        let (p_fit, p_roof) = (
            fitted.prefill_s(4096, 0, cfg.num_layers),
            analytic.prefill_s(4096, 0, cfg.num_layers),
        );
        let (d_fit, d_roof) = (
            fitted.decode_s(1, 4096, cfg.num_layers),
            analytic.decode_s(1, 4096, cfg.num_layers),
        );
        assert!(
            p_fit > p_roof * 0.5 && p_fit < p_roof * 2.0,
            "{p_fit} vs {p_roof}"
        );
        assert!(
            d_fit > d_roof * 0.5 && d_fit < d_roof * 2.5,
            "{d_fit} vs {d_roof}"
        );
        assert!(h200("tiny").is_none());
    }

    /// Model FLOPs of an `n`-token prefill of `cfg` (as `strata bench gpu` counts them): the
    /// layers' matrices, causal attention, one lm_head row.
    fn prefill_flops(cfg: &crate::model::ModelConfig, n: usize) -> f64 {
        let (h, q, kv, ff) = (
            cfg.hidden_size as f64,
            cfg.q_dim() as f64,
            cfg.kv_dim() as f64,
            cfg.intermediate_size as f64,
        );
        let (l, n) = (cfg.num_layers as f64, n as f64);
        let layer = h * (q + 2.0 * kv) + q * h + 3.0 * h * ff;
        2.0 * n * l * layer + 2.0 * cfg.vocab_size as f64 * h + 4.0 * l * q * n * (n + 1.0) / 2.0
    }

    /// Bytes a batch-1 decode step at `ctx` reads: every bf16 weight once, and K and V.
    fn decode_bytes(cfg: &crate::model::ModelConfig, ctx: usize) -> f64 {
        let (h, q, kv, ff) = (
            cfg.hidden_size as f64,
            cfg.q_dim() as f64,
            cfg.kv_dim() as f64,
            cfg.intermediate_size as f64,
        );
        let l = cfg.num_layers as f64;
        let layer = h * (q + 2.0 * kv) + q * h + 3.0 * h * ff;
        2.0 * (l * layer + cfg.vocab_size as f64 * h) + (ctx as f64 + 1.0) * l * 2.0 * kv * 2.0
    }

    #[test]
    fn the_70b_profile_predicts_the_whole_model_in_scale_with_the_8b_one() {
        let p = h200("llama-3-70b").expect("fitted 70B profile");
        let coeffs = [
            p.prefill.a0,
            p.prefill.a1,
            p.prefill.a2,
            p.decode.d0,
            p.decode.d1,
            p.decode.d2,
            p.transfer.t0,
            p.step_overhead_s,
        ];
        assert!(
            coeffs.iter().all(|c| c.is_finite() && *c >= 0.0),
            "{coeffs:?}"
        );
        // Time grows with tokens, a decode step reads the weights, copies have a bandwidth,
        // and two calibration depths gave a step cost of its own.
        assert!(p.prefill.a1 > 0.0 && p.decode.d0 > 0.0 && p.step_overhead_s > 0.0);
        assert!(p.transfer.bw_bytes_per_s.is_finite() && p.transfer.bw_bytes_per_s > 0.0);

        // The whole 80-layer model against the 8B profile scaled by work: model FLOPs for a 4k
        // prefill (×9.5), bytes read for a batch-1 decode step at 4k (×9.0). Both profiles
        // were fitted on the same executor and GPU, but efficiency differs with shape (the
        // 70B's larger GEMMs and GEMVs run nearer the peaks), so only a factor of two either
        // way is asserted: a profile divided by the wrong layer count (80 for 8, or 8 for 80)
        // is off tenfold.
        let (big, small) = (Preset::Llama3_70b.config(), Preset::Llama3_8b.config());
        let eight = h200("llama-3-8b").expect("fitted 8B profile");
        let flops = prefill_flops(&big, 4096) / prefill_flops(&small, 4096);
        let expected = eight.prefill_s(4096, 0, small.num_layers) * flops;
        let got = p.prefill_s(4096, 0, big.num_layers);
        assert!(
            (0.5..2.0).contains(&(got / expected)),
            "70B 4k prefill {got} s vs {expected} s from the 8B profile"
        );
        let bytes = decode_bytes(&big, 4096) / decode_bytes(&small, 4096);
        let expected = eight.decode_s(1, 4097, small.num_layers) * bytes;
        let got = p.decode_s(1, 4097, big.num_layers);
        assert!(
            (0.5..2.0).contains(&(got / expected)),
            "70B decode step {got} s vs {expected} s from the 8B profile"
        );
    }
}
