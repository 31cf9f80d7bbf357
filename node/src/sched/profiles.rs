//! Cost profiles fitted on real GPUs and kept in the repository (`profiles/`), so the scheduler,
//! the router's predictor (through the profile a node reports) and the `sim` executor use
//! measured coefficients rather than the analytic roofline where one exists.

use strata_transport::proto::CostProfile;

/// `(model preset, TOML)` of every fitted profile.
const FITTED: &[(&str, &str)] = &[(
    "llama-3-8b",
    include_str!("../../../profiles/h200-llama-3-8b.toml"),
)];

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
}
