//! An analytic `CostProfile` from a model's shape and a machine's measured ceilings, for the
//! simulator where no fitted profile exists yet. It is a floor (perfect kernels), not a fit.

use crate::model::ModelConfig;
use strata_transport::proto::{CostProfile, DecodeCoeffs, PrefillCoeffs, TransferCoeffs};

/// Measured ceilings of a machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceilings {
    /// Dense matrix rate in the serving dtype, FLOP/s.
    pub matmul_flops: f64,
    /// Device memory bandwidth, bytes/s.
    pub mem_bytes_per_s: f64,
    /// Host↔device copy bandwidth, bytes/s.
    pub link_bytes_per_s: f64,
    /// Fixed cost of one copy, seconds.
    pub link_t0_s: f64,
}

/// The H200 of this project's device machine (DESIGN.md): bf16 GEMM 650–780 TFLOP/s, device
/// copy 4.2 TB/s, pinned copies 55 GB/s, 2 MiB copies 52 GB/s.
pub const H200: Ceilings = Ceilings {
    matmul_flops: 700e12,
    mem_bytes_per_s: 4.2e12,
    link_bytes_per_s: 52e9,
    link_t0_s: 10e-6,
};

/// Per-layer costs of `cfg` at the ceilings `hw`, weights and KV in `dtype_bytes`.
pub fn profile(cfg: &ModelConfig, hw: &Ceilings, dtype_bytes: usize) -> CostProfile {
    let (h, q, kv, ff) = (
        cfg.hidden_size as f64,
        cfg.q_dim() as f64,
        cfg.kv_dim() as f64,
        cfg.intermediate_size as f64,
    );
    let params = h * (q + 2.0 * kv) + q * h + 3.0 * h * ff;
    let b = dtype_bytes as f64;
    CostProfile {
        prefill: PrefillCoeffs {
            a0: params * b / hw.mem_bytes_per_s,
            a1: 2.0 * params / hw.matmul_flops,
            // QKᵀ and PV over a causal window: ≈ 2·2·q·n·(c + n/2) FLOPs.
            a2: 3.0 * q / hw.matmul_flops,
        },
        decode: DecodeCoeffs {
            d0: params * b / hw.mem_bytes_per_s,
            d1: 2.0 * params / hw.matmul_flops,
            d2: 2.0 * kv * b / hw.mem_bytes_per_s,
        },
        decode_wide: None,
        transfer: TransferCoeffs {
            t0: hw.link_t0_s,
            bw_bytes_per_s: hw.link_bytes_per_s,
        },
        step_overhead_s: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    #[test]
    fn llama_3_8b_on_h200_is_in_the_known_range() {
        let cfg = Preset::Llama3_8b.config();
        let p = profile(&cfg, &H200, 2);
        // A decode step reads ~14 GB of layer weights: a few milliseconds.
        let step = p.decode_s(1, 4096, cfg.num_layers);
        assert!((0.002..0.006).contains(&step), "{step}");
        // A 4k prefill: ~60 TFLOP of GEMMs, ~0.1 s at 700 TFLOP/s.
        let pre = p.prefill_s(4096, 0, cfg.num_layers);
        assert!((0.05..0.2).contains(&pre), "{pre}");
    }
}
