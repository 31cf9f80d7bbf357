//! The points a calibration measured, each beside what the fitted profile predicts for it:
//! printed by `strata bench engine` and written to its JSON, so a fit can be checked.

use serde::Serialize;
use strata_node::engine::calibrate::Calibration;
use strata_transport::proto::CostProfile;

/// One point calibration measured, and what the fitted profile predicts for it.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum CalPoint {
    /// `n_new` tokens over `n_ctx` cached, in a model of `layers` layers.
    Prefill {
        layers: usize,
        n_new: usize,
        n_ctx: usize,
        measured_ms: f64,
        fitted_ms: f64,
    },
    /// One token for each of `batch` sequences holding `sum_ctx` positions in all.
    Decode {
        layers: usize,
        batch: usize,
        sum_ctx: usize,
        measured_ms: f64,
        fitted_ms: f64,
    },
    /// One copy of `bytes` between tiers.
    Transfer {
        bytes: u64,
        measured_ms: f64,
        fitted_ms: f64,
    },
}

impl CalPoint {
    /// Every sample of `cal` against `cost`.
    pub(super) fn all(cal: &Calibration, cost: &CostProfile) -> Vec<CalPoint> {
        let prefill = cal.prefill.iter().map(|p| CalPoint::Prefill {
            layers: p.layers,
            n_new: p.n_new,
            n_ctx: p.n_ctx,
            measured_ms: p.seconds * 1e3,
            fitted_ms: cost.prefill_s(p.n_new, p.n_ctx, p.layers) * 1e3,
        });
        let decode = cal.decode.iter().map(|d| CalPoint::Decode {
            layers: d.layers,
            batch: d.batch,
            sum_ctx: d.sum_ctx,
            measured_ms: d.seconds * 1e3,
            fitted_ms: cost.decode_s(d.batch, d.sum_ctx, d.layers) * 1e3,
        });
        let transfer = cal.transfer.iter().map(|t| CalPoint::Transfer {
            bytes: t.bytes,
            measured_ms: t.seconds * 1e3,
            fitted_ms: cost.transfer_s(t.bytes) * 1e3,
        });
        prefill.chain(decode).chain(transfer).collect()
    }
}

impl std::fmt::Display for CalPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, measured, fitted) = match self {
            CalPoint::Prefill {
                layers,
                n_new,
                n_ctx,
                measured_ms,
                fitted_ms,
            } => (
                format!("prefill {n_new} over {n_ctx}, {layers} layers"),
                measured_ms,
                fitted_ms,
            ),
            CalPoint::Decode {
                layers,
                batch,
                sum_ctx,
                measured_ms,
                fitted_ms,
            } => (
                format!("decode batch {batch}, Σctx {sum_ctx}, {layers} layers"),
                measured_ms,
                fitted_ms,
            ),
            CalPoint::Transfer {
                bytes,
                measured_ms,
                fitted_ms,
            } => (format!("transfer {bytes} bytes"), measured_ms, fitted_ms),
        };
        write!(
            f,
            "{what:<44} measured {measured:>9.3} ms, fitted {fitted:>9.3} ms ({:+.1}%)",
            100.0 * (fitted / measured - 1.0)
        )
    }
}
