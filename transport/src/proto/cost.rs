//! The cost model a node fits from its own measurements and reports to routers.
//!
//! Per layer:
//! - prefill of `n_new` tokens over `n_ctx` cached ones: `a0 + a1·n_new + a2·n_new·(n_ctx + n_new)`;
//! - a decode step of `batch` sequences with `sum_ctx` context tokens: `d0 + d1·batch + d2·sum_ctx`;
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
        (d.d0 + d.d1 * batch as f64 + d.d2 * sum_ctx as f64).max(0.0)
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
}
