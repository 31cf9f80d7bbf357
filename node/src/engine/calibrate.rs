//! Measures an executor and fits its [`CostProfile`]: prefills of several lengths (with and
//! without a cached prefix), decode steps of several batch sizes and contexts, and tier copies
//! of several sizes. Each point runs `repeats` times; the median is kept.

use crate::exec::{ExecError, Executor};
use crate::kv::{BlockManager, KvError, KvLayout, Tier};
use crate::sched::fit::{self, DecodeSample, FitError, PrefillSample, TransferSample};
use crate::sched::{LayerKv, Sampling, SeqId, StepPlan, WorkItem, WorkKind};
use strata_transport::proto::{CostProfile, RequestId};

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationPlan {
    /// `(n_new, n_ctx)` prefill points.
    pub prefill: Vec<(usize, usize)>,
    /// `(batch, ctx per sequence)` decode points.
    pub decode: Vec<(usize, usize)>,
    /// Blocks per copy.
    pub transfer_blocks: Vec<usize>,
    pub repeats: usize,
}

impl CalibrationPlan {
    /// Points spread over prompts up to `max_prompt` tokens.
    pub fn for_prompts(max_prompt: usize) -> Self {
        let m = max_prompt.max(64);
        CalibrationPlan {
            prefill: vec![
                (m / 16, 0),
                (m / 4, 0),
                (m / 2, m / 2),
                (m, 0),
                (m / 8, m / 2),
            ],
            // Batches 1, 2, 4, 8, 16 and 32, so that an executor whose kernels change at
            // some width has a per-row cost measured on each side where it can (the cuda
            // executor's change is at 2 rows by default, at 5 or 9 with STRATA_GEMV_ROWS).
            // The total context varies fourfold on each side apart from the batch: it is a
            // few percent of a narrow step, and the per-token term it gives is shared.
            decode: vec![
                (1, m / 8),
                (1, m),
                (2, m / 8),
                (4, m),
                (8, m / 2),
                (16, m / 16),
                (32, m / 8),
            ],
            transfer_blocks: vec![8, 64, 256, 1024],
            repeats: 3,
        }
    }

    /// GPU blocks the largest point needs (the pool to calibrate with).
    pub fn gpu_blocks_needed(&self, layout: &KvLayout) -> usize {
        let prefill = self.prefill.iter().map(|&(n, c)| layout.blocks_for(n + c));
        let decode = self
            .decode
            .iter()
            .map(|&(b, c)| b * layout.blocks_for(c + 1));
        let copy = self.transfer_blocks.iter().copied();
        layout.layers * prefill.chain(decode).max().unwrap_or(0) + copy.max().unwrap_or(0)
    }

    /// Host blocks the largest copy needs.
    pub fn host_blocks_needed(&self) -> usize {
        self.transfer_blocks.iter().copied().max().unwrap_or(0)
    }
}

/// Calibration that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The executor failed a measurement step.
    #[error("calibration step failed: {0}")]
    Exec(#[from] ExecError),
    /// The pools are too small for the requested points.
    #[error("calibration needs more blocks: {0}")]
    Kv(#[from] KvError),
    /// The measurements could not be fitted.
    #[error(transparent)]
    Fit(#[from] FitError),
}

/// The measurements behind a fitted profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    pub prefill: Vec<PrefillSample>,
    pub decode: Vec<DecodeSample>,
    pub transfer: Vec<TransferSample>,
    /// The executor's [`Executor::decode_wide_from`], which the fit splits decode at.
    pub decode_wide_from: Option<usize>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn resident_tables(kv: &BlockManager, seq: SeqId, tokens: usize) -> Vec<LayerKv> {
    let n = kv.layout().blocks_for(tokens);
    (0..kv.layout().layers)
        .map(|l| LayerKv {
            blocks: kv.table(seq, l)[..n].to_vec(),
            staged: false,
        })
        .collect()
}

fn item(kv: &BlockManager, seq: SeqId, kind: WorkKind, start: usize, n: usize) -> WorkItem {
    WorkItem {
        seq,
        kind,
        tokens: (0..n as u32).map(|t| 3 + t % 200).collect(),
        start_pos: start,
        layers: resident_tables(kv, seq, start + n),
        sampling: Sampling::default(),
        output_index: 0,
        want_logits: false,
    }
}

/// Allocates `count` sequences of `tokens` tokens on the GPU; ids start at `first`.
fn alloc(
    kv: &mut BlockManager,
    first: u64,
    count: usize,
    tokens: usize,
) -> Result<Vec<SeqId>, KvError> {
    let mut ids = Vec::new();
    for i in 0..count as u64 {
        let id = RequestId(first + i);
        kv.register(id, 0)?;
        ids.push(id);
        for l in 0..kv.layout().layers {
            if let Err(e) = kv.grow(id, l, tokens, Tier::Gpu) {
                for id in &ids {
                    let _ = kv.free(*id);
                }
                return Err(e);
            }
        }
    }
    Ok(ids)
}

fn time(exec: &mut dyn Executor, plan: &StepPlan, repeats: usize) -> Result<f64, ExecError> {
    // One unmeasured run warms caches and allocators.
    exec.execute(plan)?;
    let mut t = Vec::new();
    for _ in 0..repeats.max(1) {
        t.push(exec.execute(plan)?.elapsed.as_secs_f64());
    }
    Ok(median(t))
}

/// Measures `exec` over pools of `gpu_blocks` and `host_blocks` and fits a profile.
/// `progress` is called with (points done, points in all).
pub fn calibrate(
    exec: &mut dyn Executor,
    layout: KvLayout,
    gpu_blocks: usize,
    host_blocks: usize,
    plan: &CalibrationPlan,
    mut progress: impl FnMut(usize, usize),
) -> Result<(CostProfile, Calibration), CalibrateError> {
    let mut kv = BlockManager::new(layout, gpu_blocks, host_blocks);
    let mut cal = Calibration {
        decode_wide_from: exec.decode_wide_from(),
        ..Calibration::default()
    };
    let total = plan.prefill.len() + plan.decode.len() + plan.transfer_blocks.len();
    let mut done = 0;
    let layers = layout.layers;
    for &(n_new, n_ctx) in &plan.prefill {
        let ids = alloc(&mut kv, 1, 1, n_new + n_ctx)?;
        let step = StepPlan {
            copies: Vec::new(),
            items: vec![item(&kv, ids[0], WorkKind::Prefill, n_ctx, n_new)],
        };
        let seconds = time(exec, &step, plan.repeats)?;
        cal.prefill.push(PrefillSample {
            n_new,
            n_ctx,
            layers,
            seconds,
        });
        kv.free(ids[0])?;
        done += 1;
        progress(done, total);
    }
    for &(batch, ctx) in &plan.decode {
        let ids = alloc(&mut kv, 100, batch, ctx + 1)?;
        let step = StepPlan {
            copies: Vec::new(),
            items: ids
                .iter()
                .map(|&id| item(&kv, id, WorkKind::Decode, ctx, 1))
                .collect(),
        };
        let seconds = time(exec, &step, plan.repeats)?;
        cal.decode.push(DecodeSample {
            batch,
            sum_ctx: batch * (ctx + 1),
            layers,
            seconds,
        });
        for id in ids {
            kv.free(id)?;
        }
        done += 1;
        progress(done, total);
    }
    for &blocks in &plan.transfer_blocks {
        let tokens = blocks * layout.block_tokens;
        let id = RequestId(10_000);
        kv.register(id, 0)?;
        kv.grow(id, 0, tokens, Tier::Gpu)?;
        kv.move_layer(id, 0, Tier::Host)?;
        let step = StepPlan {
            copies: kv.poll_copies(),
            items: Vec::new(),
        };
        let seconds = time(exec, &step, plan.repeats)?;
        cal.transfer.push(TransferSample {
            bytes: blocks as u64 * layout.block_bytes(),
            seconds,
        });
        kv.free(id)?;
        done += 1;
        progress(done, total);
    }
    let profile = fit::fit_profile(
        &cal.prefill,
        &cal.decode,
        &cal.transfer,
        cal.decode_wide_from,
    )?;
    Ok((profile, cal))
}
