//! The results of `strata bench gpu`: what each point measured and derived, the JSON document,
//! and the table printed at the end.

use super::cost::{self, ModelCost};
use super::plans::Order;
use super::points::{Budget, Offload};
use serde::Serialize;

/// The device's measured ceilings (a copy of `cuda::Peaks`, which exists only with the `cuda`
/// feature).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Peaks {
    pub gemm_tflops: f64,
    pub device_copy_gbps: f64,
    pub h2d_gbps: f64,
    pub d2h_gbps: f64,
}

/// The GPU the run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// Median of the samples (the mean of the two middle ones for an even count); 0 for none.
pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrefillResult {
    pub tokens: usize,
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    pub tokens_per_s: f64,
    pub model_tflop: f64,
    pub achieved_tflops: f64,
    /// Model FLOP utilization against the measured GEMM peak.
    pub mfu: f64,
}

impl PrefillResult {
    pub fn new(cost: &ModelCost, peaks: &Peaks, tokens: usize, samples_ms: Vec<f64>) -> Self {
        let median_ms = median(&samples_ms);
        let s = (median_ms / 1e3).max(1e-12);
        let flop = cost.prefill_flops(tokens);
        PrefillResult {
            tokens,
            median_ms,
            tokens_per_s: tokens as f64 / s,
            model_tflop: flop / 1e12,
            achieved_tflops: flop / s / 1e12,
            mfu: flop / s / (peaks.gemm_tflops * 1e12).max(1.0),
            samples_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodeResult {
    pub batch: usize,
    pub ctx: usize,
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    pub tokens_per_s: f64,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub achieved_gbps: f64,
    /// Achieved GB/s over the measured device copy rate.
    pub fraction_of_device_copy: f64,
}

impl DecodeResult {
    pub fn new(
        cost: &ModelCost,
        peaks: &Peaks,
        batch: usize,
        ctx: usize,
        samples_ms: Vec<f64>,
    ) -> Self {
        let median_ms = median(&samples_ms);
        let s = (median_ms / 1e3).max(1e-12);
        let bytes = cost.decode_bytes(batch, ctx) as f64;
        let gbps = bytes / s / 1e9;
        DecodeResult {
            batch,
            ctx,
            median_ms,
            tokens_per_s: batch as f64 / s,
            weight_bytes: cost.weight_bytes(),
            kv_bytes: cost.decode_kv_bytes(batch, ctx),
            achieved_gbps: gbps,
            fraction_of_device_copy: gbps / peaks.device_copy_gbps.max(1e-9),
            samples_ms,
        }
    }
}

/// Offload is GPU → host, reload host → GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Offload,
    Reload,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferResult {
    pub direction: Direction,
    pub order: Order,
    pub blocks: usize,
    pub bytes: u64,
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    pub gbps: f64,
}

impl TransferResult {
    pub fn new(
        direction: Direction,
        order: Order,
        blocks: usize,
        block_bytes: u64,
        samples_ms: Vec<f64>,
    ) -> Self {
        let median_ms = median(&samples_ms);
        let bytes = blocks as u64 * block_bytes;
        TransferResult {
            direction,
            order,
            blocks,
            bytes,
            median_ms,
            gbps: bytes as f64 / (median_ms / 1e3).max(1e-12) / 1e9,
            samples_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffloadResult {
    pub offload: Offload,
    pub tokens: usize,
    pub staged_layers: Vec<usize>,
    /// Bytes of the staged layers' blocks (each written back to the host once).
    pub staged_bytes: u64,
    pub samples_ms: Vec<f64>,
    /// Including `synchronize()`: the offloads' tail counts.
    pub median_ms: f64,
    /// Median over the median of the all-resident case (`None` when that was skipped).
    pub ratio_to_none: Option<f64>,
}

/// A decode step with all but one layer streamed in from the host tier, beside the same step
/// with every layer resident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamedResult {
    pub batch: usize,
    pub ctx: usize,
    pub staged_layers: usize,
    /// Bytes the staged layers bring in from the host (the step's new token goes back out in one
    /// block per staged layer and sequence).
    pub bytes_in: u64,
    pub resident_samples_ms: Vec<f64>,
    pub resident_ms: f64,
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    /// `bytes_in` at the measured H2D peak.
    pub copy_in_ms: f64,
    /// Perfect overlap: the longer of the resident step and the copy-in.
    pub bound_ms: f64,
    /// No overlap at all: the resident step, then the copy-in.
    pub serial_ms: f64,
    /// `bound_ms / median_ms`: 1 when copies hide entirely behind compute or the reverse.
    pub overlap: f64,
}

impl StreamedResult {
    pub fn new(
        peaks: &Peaks,
        batch: usize,
        ctx: usize,
        staged_layers: usize,
        bytes_in: u64,
        resident_samples_ms: Vec<f64>,
        samples_ms: Vec<f64>,
    ) -> Self {
        let resident_ms = median(&resident_samples_ms);
        let median_ms = median(&samples_ms);
        let copy_in_ms = bytes_in as f64 / (peaks.h2d_gbps * 1e9).max(1.0) * 1e3;
        let bound_ms = resident_ms.max(copy_in_ms);
        StreamedResult {
            batch,
            ctx,
            staged_layers,
            bytes_in,
            resident_samples_ms,
            resident_ms,
            samples_ms,
            median_ms,
            copy_in_ms,
            bound_ms,
            serial_ms: resident_ms + copy_in_ms,
            overlap: bound_ms / median_ms.max(1e-9),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub point: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Formulas {
    pub prefill_flops: &'static str,
    pub decode_bytes: &'static str,
    pub utilization: &'static str,
}

impl Default for Formulas {
    fn default() -> Self {
        Formulas {
            prefill_flops: cost::PREFILL_FLOPS,
            decode_bytes: cost::DECODE_BYTES,
            utilization: cost::UTILIZATION,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pools {
    pub gpu_blocks: usize,
    pub host_blocks: usize,
    pub staging_blocks: usize,
    pub block_tokens: usize,
    pub block_bytes: u64,
}

/// Everything `--json` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub device: Device,
    pub model: String,
    pub cost: ModelCost,
    pub pools: Pools,
    pub budget: Budget,
    pub repeats: usize,
    pub seed: u64,
    pub formulas: Formulas,
    pub peaks: Peaks,
    pub prefill: Vec<PrefillResult>,
    pub decode: Vec<DecodeResult>,
    pub transfer: Vec<TransferResult>,
    pub offload: Vec<OffloadResult>,
    pub streamed: Vec<StreamedResult>,
    pub skipped: Vec<Skipped>,
}
