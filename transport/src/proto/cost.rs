//! The cost model a node fits from its own measurements and reports to routers.
//!
//! Per layer:
//! - prefill of `n_new` tokens over `n_ctx` cached ones: `a0 + a1·n_new + a2·n_new·(n_ctx + n_new)`;
//! - a decode step of `batch` sequences with `sum_ctx` context tokens: `d0 + d1·batch + d2·sum_ctx`,
//!   with their own `d0` and `d1` from [`WideDecode::from_batch`] rows on where the executor
//!   computes wide batches with other kernels than narrow ones;
//! - a transfer of `bytes` between tiers: `t0 + bytes / bw`.
//!
//! All times are in seconds.

use serde::{Deserialize, Serialize};

/// Prefill coefficients of one layer, seconds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PrefillCoeffs {
    pub a0: f64,
    pub a1: f64,
    pub a2: f64,
}

/// Decode coefficients of one layer, seconds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct DecodeCoeffs {
    pub d0: f64,
    pub d1: f64,
    pub d2: f64,
}

/// Decode of wide batches, for an executor that computes narrow and wide decode steps with
/// different kernels: the cuda executor multiplies steps of a few rows by the weights with its
/// own GEMV kernels and wider ones through cuBLAS, which start at different costs and grow at
/// different rates per row. One line through both misprices one side (fitted to batches 1, 4,
/// 16 and 32 on an H100, with the CUDA-core GEMVs taking up to 4 rows, it priced 4 sequences of
/// 4096 tokens 28–30% under their measured 12.0 ms). From `from_batch` rows on, a step's constant
/// and per-row terms are `d0` and `d1` here; the per-context-token term (attention, the same
/// kernel at every width) stays [`DecodeCoeffs::d2`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct WideDecode {
    /// The narrowest batch the wide kernels compute.
    pub from_batch: u32,
    pub d0: f64,
    pub d1: f64,
}

/// Tier-to-tier transfer: fixed cost and bandwidth.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TransferCoeffs {
    /// Fixed cost of one transfer, seconds.
    pub t0: f64,
    /// Sustained bandwidth, bytes per second.
    pub bw_bytes_per_s: f64,
}

impl Default for TransferCoeffs {
    fn default() -> Self {
        TransferCoeffs {
            t0: 0.0,
            bw_bytes_per_s: f64::INFINITY,
        }
    }
}

/// A node's fitted cost model. Layer costs are the same for every layer of a model.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct CostProfile {
    pub prefill: PrefillCoeffs,
    pub decode: DecodeCoeffs,
    /// Where wide decode steps cost differently (see [`WideDecode`]); `None`: `decode` prices
    /// every batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_wide: Option<WideDecode>,
    pub transfer: TransferCoeffs,
    /// Fixed cost of one engine step outside the layers (embedding, sampling, launch), seconds.
    pub step_overhead_s: f64,
}

impl CostProfile {
    /// Seconds to prefill `n_new` tokens over `n_ctx` cached ones, for one layer.
    pub fn prefill_layer_s(&self, n_new: usize, n_ctx: usize) -> f64 {
        if n_new == 0 {
            return 0.0;
        }
        let (n, c) = (n_new as f64, n_ctx as f64);
        let p = self.prefill;
        (p.a0 + p.a1 * n + p.a2 * n * (c + n)).max(0.0)
    }

    /// Seconds to prefill over `layers` layers, step overhead included.
    pub fn prefill_s(&self, n_new: usize, n_ctx: usize, layers: usize) -> f64 {
        self.step_overhead_s + layers as f64 * self.prefill_layer_s(n_new, n_ctx)
    }

    /// Seconds of one decode step of one layer.
    pub fn decode_layer_s(&self, batch: usize, sum_ctx: usize) -> f64 {
        if batch == 0 {
            return 0.0;
        }
        let d = self.decode;
        let (d0, d1) = match self.decode_wide {
            Some(w) if batch >= w.from_batch as usize => (w.d0, w.d1),
            _ => (d.d0, d.d1),
        };
        (d0 + d1 * batch as f64 + d.d2 * sum_ctx as f64).max(0.0)
    }

    /// Seconds of one decode step over `layers` layers, step overhead included.
    pub fn decode_s(&self, batch: usize, sum_ctx: usize, layers: usize) -> f64 {
        self.step_overhead_s + layers as f64 * self.decode_layer_s(batch, sum_ctx)
    }

    /// Seconds to move `bytes` between tiers in one transfer.
    pub fn transfer_s(&self, bytes: u64) -> f64 {
        if bytes == 0 {
            return 0.0;
        }
        self.transfer.t0 + bytes as f64 / self.transfer.bw_bytes_per_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_each_term() {
        let p = CostProfile {
            prefill: PrefillCoeffs {
                a0: 1.0,
                a1: 0.5,
                a2: 0.25,
            },
            decode: DecodeCoeffs {
                d0: 2.0,
                d1: 1.0,
                d2: 0.5,
            },
            transfer: TransferCoeffs {
                t0: 0.1,
                bw_bytes_per_s: 10.0,
            },
            decode_wide: None,
            step_overhead_s: 3.0,
        };
        // 1 + 0.5·2 + 0.25·2·(4+2) = 5
        assert_eq!(p.prefill_layer_s(2, 4), 5.0);
        assert_eq!(p.prefill_s(2, 4, 2), 13.0);
        assert_eq!(p.prefill_s(0, 4, 2), 3.0);
        // 2 + 1·3 + 0.5·10 = 10
        assert_eq!(p.decode_layer_s(3, 10), 10.0);
        assert_eq!(p.decode_s(3, 10, 3), 33.0);
        assert!((p.transfer_s(20) - 2.1).abs() < 1e-12);
        assert_eq!(p.transfer_s(0), 0.0);
    }

    #[test]
    fn wide_batches_take_the_wide_terms() {
        let narrow = DecodeCoeffs {
            d0: 2.0,
            d1: 1.0,
            d2: 0.5,
        };
        let p = CostProfile {
            decode: narrow,
            decode_wide: Some(WideDecode {
                from_batch: 5,
                d0: 6.0,
                d1: 0.25,
            }),
            ..CostProfile::default()
        };
        // Below from_batch, the narrow terms: 2 + 1·4 + 0.5·10 = 11.
        assert_eq!(p.decode_layer_s(4, 10), 11.0);
        // From it on, the wide ones and the same d2: 6 + 0.25·8 + 0.5·10 = 13.
        assert_eq!(p.decode_layer_s(5, 10), 6.0 + 1.25 + 5.0);
        assert_eq!(p.decode_layer_s(8, 10), 13.0);
        assert_eq!(p.decode_layer_s(0, 10), 0.0);
    }

    #[test]
    fn a_profile_without_wide_terms_reads_and_writes_as_before() {
        let text = "step_overhead_s = 0.0\n[prefill]\na0 = 1.0\na1 = 0.0\na2 = 0.0\n\
                    [decode]\nd0 = 2.0\nd1 = 0.0\nd2 = 0.0\n[transfer]\nt0 = 0.0\nbw_bytes_per_s = 1.0\n";
        let p: CostProfile = toml::from_str(text).expect("parses");
        assert_eq!(p.decode_wide, None);
        assert!(!toml::to_string(&p).unwrap().contains("decode_wide"));
        let wide = CostProfile {
            decode_wide: Some(WideDecode {
                from_batch: 5,
                d0: 3.0,
                d1: 0.5,
            }),
            ..p
        };
        let back: CostProfile = toml::from_str(&toml::to_string(&wide).unwrap()).unwrap();
        assert_eq!(back, wide);
    }
}
