//! One step on the GPU: the plan's copies, then the batch's forward pass layer by layer, then
//! sampling.
//!
//! Five streams. `compute` runs kernels and GEMMs. The plan's own copies (demotions, swaps,
//! reloads) go on `offload` (device → host) and `reload` (the rest); staged layers move on
//! `stage_in` and `stage_out`, so that a layer's staging never queues behind plan copies it
//! does not need. A staged layer `l` uses staging buffer `l % 2`:
//! - its stage-in (blocks holding positions before `start_pos`) runs on `stage_in`, after the
//!   stage-out of layer `l − 2` (same buffer) finished, and records `ev_in[l]`;
//! - compute waits `ev_in[l]` (or that stage-out, when nothing comes in) before writing K/V;
//! - after attention compute records `ev_attn[l]`; `stage_out` waits for it and copies the
//!   blocks with new positions back, recording `ev_out[l]`.
//!
//! So a layer's offload overlaps the next layers' compute, and the step's tokens are ready
//! before the last offloads finish. Compute and a layer's stage-in wait for the plan's copies
//! layer by layer, only where a copy touches a block (of either tier) the layer uses
//! (`run_copies`); the other copies run beside the step, as the scheduler's cost model
//! assumes. Across steps: the plan copies keep their order on their two streams and follow
//! the last step's staging (`tail_stage`); compute and staging wait for earlier plan copies
//! (`tail_off`, `tail_rel`) only when the step uses a block one of them touches, and for the
//! last step's staging only when they use staging.

use super::driver::{DeviceBuf, Event, PinnedBuf, Stream, dev};
use super::gemm::{Blas, Out};
use super::kernels::{DECODE_TILE, ItemMeta, Kernels, PREFILL_ROWS, STAGED};
use super::kv::KvMemory;
use super::trace::StepTrace;
use super::weights::DeviceWeights;
use super::workspace::Workspace;
use crate::exec::{ExecError, StepOutput};
use crate::kv::BlockId;
use crate::model::rng::Rng;
use crate::sched::plan::{StepPlan, WorkItem};
use std::collections::{HashMap, HashSet};

/// Model sizes the step needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) hidden: usize,
    pub(crate) ff: usize,
    pub(crate) vocab: usize,
    pub(crate) layers: usize,
    pub(crate) eps: f32,
    pub(crate) block_tokens: usize,
}

/// Per-layer events and the tails of the copy streams.
pub(crate) struct Events {
    pub(crate) input: Vec<Event>,
    pub(crate) attn: Vec<Event>,
    pub(crate) out: Vec<Event>,
    pub(crate) copies_off: Event,
    pub(crate) copies_rel: Event,
    /// Per layer: recorded after the last plan copy that touches the layer's blocks.
    pub(crate) copied: Vec<Event>,
    pub(crate) tail_off: Event,
    pub(crate) tail_rel: Event,
    /// The last stage-in of a step, and the step's staging as a whole (on `stage_out`, after
    /// that stage-in and every stage-out).
    pub(crate) tail_in: Event,
    pub(crate) tail_stage: Event,
}

impl Events {
    pub(crate) fn new(layers: usize) -> Result<Events, ExecError> {
        let v = || {
            (0..layers)
                .map(|_| Event::new(false))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Events {
            input: v()?,
            attn: v()?,
            out: v()?,
            copies_off: Event::new(false)?,
            copies_rel: Event::new(false)?,
            copied: v()?,
            tail_off: Event::new(false)?,
            tail_rel: Event::new(false)?,
            tail_in: Event::new(false)?,
            tail_stage: Event::new(false)?,
        })
    }
}

/// The step's metadata, packed for one upload: sections at 16-byte aligned offsets.
#[derive(Default)]
struct Meta {
    bytes: Vec<u8>,
}

impl Meta {
    fn push<T: Copy>(&mut self, data: &[T]) -> usize {
        let off = self.bytes.len().next_multiple_of(16);
        self.bytes.resize(off, 0);
        // SAFETY: `T` is a plain-old-data type here (integers, floats, #[repr(C)] ItemMeta).
        let raw = unsafe {
            std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data))
        };
        self.bytes.extend_from_slice(raw);
        off
    }
}

/// Everything the executor holds on the device.
pub(crate) struct Gpu {
    pub(crate) k: Kernels,
    pub(crate) blas: Blas,
    pub(crate) compute: Stream,
    pub(crate) offload: Stream,
    pub(crate) reload: Stream,
    pub(crate) stage_in: Stream,
    pub(crate) stage_out: Stream,
    pub(crate) w: DeviceWeights,
    pub(crate) kv: KvMemory,
    pub(crate) cos: DeviceBuf,
    pub(crate) sin: DeviceBuf,
    pub(crate) ws: Workspace,
    pub(crate) meta_host: PinnedBuf,
    pub(crate) meta_dev: DeviceBuf,
    pub(crate) ev: Events,
    /// Per layer: compute and the layer's stage-in wait `ev.copied[l]` before touching the
    /// layer's blocks this step.
    pub(crate) copy_wait: Vec<bool>,
    /// Blocks (either tier) that plan copies of earlier steps read or write and that compute
    /// and staging have not yet been ordered after (see `step`).
    pub(crate) in_flight: HashSet<BlockId>,
    pub(crate) dims: Dims,
    /// When the current step began (`STRATA_CUDA_TRACE` reports host enqueue time against it).
    pub(crate) step_started: std::time::Instant,
    /// `STRATA_CUDA_TRACE` was set at start: timing events, and one line a step on stderr.
    pub(crate) trace: Option<StepTrace>,
    /// A pipeline stage that does not start at layer 0 takes activations, not token ids.
    pub(crate) embeds: bool,
    /// A pipeline stage that does not end at the last layer returns activations, not tokens.
    pub(crate) samples: bool,
}

/// Positions `start_pos .. start_pos + tokens` need this many blocks.
fn need(item: &WorkItem, bt: usize) -> usize {
    (item.start_pos + item.tokens.len()).div_ceil(bt)
}

/// Keys per decode-attention partition: about four CTAs per SM over the step's keys (each CTA
/// has two tiles of keys in flight; up to six fit an SM), whole tiles, at most 2048 keys.
fn partition_keys(total_keys: usize, kv_heads: usize, sms: usize) -> usize {
    let per_cta = (total_keys * kv_heads).div_ceil(4 * sms);
    per_cta
        .next_multiple_of(DECODE_TILE)
        .clamp(DECODE_TILE, 2048)
}

impl Gpu {
    /// `y (+)= x · wᵀ` (see [`Blas::linear`]): a bandwidth-bound GEMV kernel for a few rows
    /// (decode reads every weight once per step), cuBLAS otherwise.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        y: u64,
        out: Out,
        x: u64,
        w: u64,
        rows: usize,
        m: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<(), ExecError> {
        if self.k.gemv_fits(rows, k) {
            self.k.gemv_bf16(
                &self.compute,
                y,
                x,
                w,
                rows,
                m,
                k,
                out == Out::Bf16,
                accumulate,
            )
        } else {
            self.blas.linear(y, out, x, w, rows, m, k, accumulate)
        }
    }

    /// `y = rms_norm(x) · wᵀ` from the f32 residual `x`: one fused kernel for decode-sized
    /// steps (the same bits as the two steps), else the norm into `normed`, then [`Gpu::linear`].
    #[allow(clippy::too_many_arguments)]
    fn norm_linear(
        &self,
        y: u64,
        out: Out,
        x: u64,
        norm_w: u64,
        w: u64,
        rows: usize,
        m: usize,
    ) -> Result<(), ExecError> {
        let k = self.dims.hidden;
        if self.k.norm_gemv_fits(rows, k) {
            let eps = self.dims.eps;
            let bf16_out = out == Out::Bf16;
            self.k
                .gemv_rms(&self.compute, y, x, 0, norm_w, w, rows, m, k, eps, bf16_out)
        } else {
            let normed = self.ws.normed.ptr();
            self.k.rms_norm(
                &self.compute,
                normed,
                x,
                norm_w,
                rows,
                k as i32,
                self.dims.eps,
            )?;
            self.linear(y, out, normed, w, rows, m, k, false)
        }
    }

    /// `act = silu(g) · u` for `[g | u] = rms_norm(x) · w_gate_upᵀ`: one fused kernel for
    /// decode-sized steps (the same bits as the three steps), else the norm, [`Gpu::linear`]
    /// into `gu` and `silu_mul`.
    fn norm_gate_up(
        &self,
        x: u64,
        norm_w: u64,
        w_gate_up: u64,
        rows: usize,
    ) -> Result<(), ExecError> {
        let (k, ff, eps) = (self.dims.hidden, self.dims.ff, self.dims.eps);
        let (act, gu) = (self.ws.act.ptr(), self.ws.gu.ptr());
        if self.k.norm_gemv_fits(rows, k) {
            self.k
                .gemv_rms_swiglu(&self.compute, act, x, norm_w, w_gate_up, rows, ff, k, eps)
        } else {
            self.norm_linear(gu, Out::Bf16, x, norm_w, w_gate_up, rows, 2 * ff)?;
            self.k.silu_mul(&self.compute, act, gu, ff as i32, rows)
        }
    }

    /// Runs the plan's copies across the two copy streams in list order. Returns the bytes
    /// that crossed host ↔ device.
    ///
    /// Compute and staging wait only for what they need, layer by layer: before layer `l`
    /// touches its blocks (or stages them in) they wait for the last copy that reads or writes
    /// a block, of either tier, the step's items use in layer `l` (a demoted cache block the
    /// step reuses, a reloaded layer that decodes now, a layer swapped out that streams now).
    /// Copies of other blocks (reloads of parked sequences, swaps of idle ones) run beside the
    /// whole step, as the scheduler's cost model assumes; so does a layer's copy beside the
    /// layers before it.
    fn run_copies(&mut self, plan: &StepPlan) -> Result<u64, ExecError> {
        self.copy_wait.iter_mut().for_each(|w| *w = false);
        if plan.copies.is_empty() {
            return Ok(0);
        }
        // The layer in which this step's items use each block (a block holds one layer).
        let mut layer_of: HashMap<BlockId, usize> = HashMap::new();
        for item in &plan.items {
            for (l, lk) in item.layers.iter().enumerate() {
                for &b in &lk.blocks {
                    layer_of.insert(b, l);
                }
            }
        }
        let groups = crate::exec::copy_runs(&plan.copies);
        let runs = self.kv.copy_runs(&plan.copies);
        debug_assert_eq!(groups.len(), runs.len());
        // Per layer, the index of the last run that touches one of its blocks.
        let mut last: Vec<Option<usize>> = vec![None; self.dims.layers];
        for (i, (first, n)) in groups.iter().enumerate() {
            for side in [first.src, first.dst] {
                for k in 0..*n as u32 {
                    let b = BlockId {
                        index: side.index + k,
                        ..side
                    };
                    if let Some(&l) = layer_of.get(&b) {
                        last[l] = Some(i);
                    }
                }
            }
        }
        let mut crossed = 0;
        let mut prev: Option<bool> = None;
        let mut i = 0;
        while i < runs.len() {
            let off = runs[i].offload;
            let n = runs[i..].iter().take_while(|r| r.offload == off).count();
            let (stream, other, mark) = if off {
                (&self.offload, &self.reload, &self.ev.copies_rel)
            } else {
                (&self.reload, &self.offload, &self.ev.copies_off)
            };
            if prev.is_some() {
                // The direction changed: keep list order across the two streams.
                mark.record(other)?;
                stream.wait(mark)?;
            }
            // Issue the group a run at a time where a layer's last copy ends, recording the
            // layer's event there: it then covers every earlier run of both streams (a change
            // of direction waits for the other stream's runs).
            let mut j = i;
            while j < i + n {
                let end = (j..i + n)
                    .find(|&k| last.contains(&Some(k)))
                    .map_or(i + n, |k| k + 1);
                crossed += self.kv.issue(stream, &runs[j..end])?;
                for (l, _) in last
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| **x == Some(end - 1))
                {
                    self.ev.copied[l].record(stream)?;
                    self.copy_wait[l] = true;
                }
                j = end;
            }
            prev = Some(off);
            i += n;
        }
        Ok(crossed)
    }

    /// Marks the ends of the step's work on the copy streams for the next step (see `step`).
    fn record_tails(&self) -> Result<(), ExecError> {
        self.ev.tail_off.record(&self.offload)?;
        self.ev.tail_rel.record(&self.reload)?;
        self.ev.tail_in.record(&self.stage_in)?;
        self.stage_out.wait(&self.ev.tail_in)?;
        self.ev.tail_stage.record(&self.stage_out)
    }

    /// Runs a validated plan from token ids (`hidden` is `None`) or, on a later pipeline stage,
    /// from the previous stage's `[rows, hidden]` activations. Tokens are in plan order; a
    /// stage that does not sample returns its activations instead.
    pub(crate) fn step(
        &mut self,
        plan: &StepPlan,
        hidden: Option<&[f32]>,
    ) -> Result<(StepOutput, Option<Vec<f32>>), ExecError> {
        self.step_started = std::time::Instant::now();
        if let Some(t) = self.trace.as_mut() {
            t.step_begins(&self.compute)?;
        }
        let d = self.dims;
        let bt = d.block_tokens;
        // The plan copies keep their order across steps, after the last step's staging (its
        // stage-outs write host blocks a copy may read). Compute and staging wait for earlier
        // plan copies only where they could meet them: a block one of them reads or writes.
        for s in [&self.reload, &self.offload] {
            s.wait(&self.ev.tail_stage)?;
        }
        self.reload.wait(&self.ev.tail_off)?;
        self.offload.wait(&self.ev.tail_rel)?;
        if !self.in_flight.is_empty() && self.ev.tail_off.done()? && self.ev.tail_rel.done()? {
            self.in_flight.clear();
        }
        let meets = plan.items.iter().any(|item| {
            item.layers
                .iter()
                .any(|lk| lk.blocks.iter().any(|b| self.in_flight.contains(b)))
        });
        if meets {
            for s in [&self.compute, &self.stage_in] {
                s.wait(&self.ev.tail_off)?;
                s.wait(&self.ev.tail_rel)?;
            }
            self.in_flight.clear();
        }
        // The staging buffers: the last step's stage-outs read them.
        if plan
            .items
            .iter()
            .any(|i| i.layers.iter().any(|lk| lk.staged))
        {
            self.compute.wait(&self.ev.tail_stage)?;
            self.stage_in.wait(&self.ev.tail_stage)?;
        }
        if let Some(t) = &self.trace {
            t.entry_passed(&self.compute)?;
        }
        let mut out = StepOutput {
            transfer_bytes: self.run_copies(plan)?,
            ..StepOutput::default()
        };
        self.in_flight
            .extend(plan.copies.iter().flat_map(|c| [c.src, c.dst]));
        let items = &plan.items;
        if items.is_empty() {
            // A step of copies alone takes as long as the copies: wait for them, so that its
            // elapsed time (what the engine's clock and calibration see) is the transfer's.
            self.offload.sync("copying KV blocks")?;
            self.reload.sync("copying KV blocks")?;
            return Ok((out, (!self.samples).then(Vec::new)));
        }

        // Rows, tables, attention work lists.
        let rows: usize = items.iter().map(|i| i.tokens.len()).sum();
        let per_layer: usize = items.iter().map(|i| need(i, bt)).sum();
        let mut metas = Vec::with_capacity(items.len());
        let (mut tokens, mut positions, mut row_item) = (
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
            Vec::with_capacity(rows),
        );
        let (mut tiles, mut decode_ids, mut last_rows) = (Vec::new(), Vec::new(), Vec::new());
        let (mut row0, mut toff, mut total_keys, mut max_keys) = (0usize, 0usize, 0usize, 0usize);
        for (n, item) in items.iter().enumerate() {
            let r = item.tokens.len();
            metas.push(ItemMeta {
                row0: row0 as i32,
                rows: r as i32,
                start_pos: item.start_pos as i32,
                toff: toff as i32,
            });
            for (j, &t) in item.tokens.iter().enumerate() {
                tokens.push(t);
                positions.push((item.start_pos + j) as i32);
                row_item.push(n as i32);
            }
            if r == 1 {
                decode_ids.push(n as i32);
                total_keys += item.start_pos + 1;
                max_keys = max_keys.max(item.start_pos + 1);
            } else {
                for first in (0..r).step_by(PREFILL_ROWS) {
                    tiles.push([n as i32, first as i32]);
                }
            }
            last_rows.push((row0 + r - 1) as i32);
            row0 += r;
            toff += need(item, bt);
        }
        // Per layer: table entries, and each staged item's staging slots (in item order).
        let mut table = Vec::with_capacity(d.layers * per_layer);
        let mut slots: Vec<Vec<Option<usize>>> = Vec::with_capacity(d.layers);
        for l in 0..d.layers {
            let mut next = 0;
            let mut layer_slots = Vec::with_capacity(items.len());
            for item in items {
                let lk = &item.layers[l];
                let n = need(item, bt);
                if lk.staged {
                    table.extend((0..n).map(|b| STAGED | (next + b) as u32));
                    layer_slots.push(Some(next));
                    next += n;
                } else {
                    table.extend(lk.blocks[..n].iter().map(|id| id.index));
                    layer_slots.push(None);
                }
            }
            slots.push(layer_slots);
        }
        let part_keys = partition_keys(total_keys, self.k.shape.kv_heads, self.k.sms);
        let parts = max_keys.div_ceil(part_keys);
        let sampled: Vec<usize> = (0..items.len())
            .filter(|&n| items[n].sampling.temperature > 0.0)
            .collect();
        let (mut temps, mut top_ps, mut us) = (Vec::new(), Vec::new(), Vec::new());
        if !sampled.is_empty() {
            for item in items {
                let s = item.sampling;
                let greedy = s.temperature <= 0.0;
                temps.push(if greedy { 1.0 } else { s.temperature });
                top_ps.push(if greedy { 1.0 } else { s.top_p });
                let u = Rng::derive(s.seed, item.output_index as u64).next_f64();
                us.push((u as f32).min(1.0 - f32::EPSILON));
            }
        }

        let mut meta = Meta::default();
        let o_tokens = meta.push(&tokens);
        let o_pos = meta.push(&positions);
        let o_row_item = meta.push(&row_item);
        let o_items = meta.push(&metas);
        let o_table = meta.push(&table);
        let o_tiles = meta.push(&tiles);
        let o_decode = meta.push(&decode_ids);
        let o_last = meta.push(&last_rows);
        let o_temps = meta.push(&temps);
        let o_top_ps = meta.push(&top_ps);
        let o_us = meta.push(&us);
        self.upload_meta(&meta.bytes)?;
        let m = |off: usize| self.meta_dev.ptr() + off as u64;
        let partials = decode_ids.len() * self.k.shape.kv_heads * parts;
        self.ws.ensure(rows, items.len(), partials)?;

        let (k, ws, w, sh) = (&self.k, &self.ws, &self.w, self.k.shape);
        let c = &self.compute;
        let (h, ff) = (d.hidden, d.ff);
        let scale_log2 = std::f32::consts::LOG2_E / (sh.head_dim as f32).sqrt();
        match (hidden, self.embeds) {
            (None, true) => {
                k.embed_gather(c, ws.x.ptr(), w.embed.ptr(), m(o_tokens), rows, h as i32)?
            }
            (Some(x), false) if x.len() == rows * h => {
                // The previous step ended with a sync: nothing on the GPU reads `x` now.
                ws.x.upload(x, "stage activations")?
            }
            (Some(x), false) => {
                return Err(ExecError::InvalidPlan(format!(
                    "{} activation values for {rows} rows of {h}",
                    x.len()
                )));
            }
            (None, false) => {
                return Err(ExecError::InvalidPlan(
                    "a later pipeline stage needs the previous stage's activations".into(),
                ));
            }
            (Some(_), true) => {
                return Err(ExecError::InvalidPlan(
                    "the first stage embeds token ids; it takes no activations".into(),
                ));
            }
        }
        let mut staged_layers = vec![false; d.layers];
        let mut stage_in_runs = 0usize;
        for l in 0..d.layers {
            let lw = &w.layers[l];
            self.norm_linear(
                ws.qkv.ptr(),
                Out::F32,
                ws.x.ptr(),
                lw.attn_norm.ptr(),
                lw.wqkv.ptr(),
                rows,
                sh.qkv_width(),
            )?;

            let staged = slots[l].iter().any(Option::is_some);
            staged_layers[l] = staged;
            let traced_wait = staged || self.copy_wait[l];
            if let Some(t) = self.trace.as_mut().filter(|_| traced_wait) {
                t.layer_waits(l, c)?;
            }
            if staged {
                let mut ins = Vec::new();
                for (item, slot) in items.iter().zip(&slots[l]) {
                    if let Some(s0) = slot {
                        let n_in = item.start_pos.div_ceil(bt);
                        ins.extend(self.kv.staging_runs(
                            l,
                            *s0,
                            &item.layers[l].blocks[..n_in],
                            false,
                        ));
                    }
                }
                if l >= 2 && staged_layers[l - 2] {
                    self.stage_in.wait(&self.ev.out[l - 2])?;
                    c.wait(&self.ev.out[l - 2])?;
                }
                if !ins.is_empty() {
                    if self.copy_wait[l] {
                        self.stage_in.wait(&self.ev.copied[l])?;
                    }
                    stage_in_runs += ins.len();
                    if let Some(t) = self.trace.as_mut() {
                        t.stage_in_starts(l, &self.stage_in)?;
                    }
                    let bytes = self.kv.issue(&self.stage_in, &ins)?;
                    out.transfer_bytes += bytes;
                    if let Some(t) = self.trace.as_mut() {
                        t.stage_in_issued(l, &self.stage_in, bytes)?;
                    }
                    self.ev.input[l].record(&self.stage_in)?;
                    c.wait(&self.ev.input[l])?;
                }
            }
            if self.copy_wait[l] {
                // A plan copy reads or writes one of this layer's blocks (see run_copies).
                c.wait(&self.ev.copied[l])?;
            }
            if let Some(t) = self.trace.as_ref().filter(|_| traced_wait) {
                t.layer_waited(l, c)?;
            }
            let table_l = m(o_table) + (l * per_layer * 4) as u64;
            let staging = self.kv.staging[l % 2].ptr();
            let bias = lw.bqkv.as_ref().map_or(0, |b| b.ptr());
            k.rope_kv_write(
                c,
                ws.qkv.ptr(),
                bias,
                m(o_pos),
                self.cos.ptr(),
                self.sin.ptr(),
                ws.q.ptr(),
                m(o_row_item),
                m(o_items),
                table_l,
                self.kv.pool.ptr(),
                staging,
                rows,
            )?;
            if !tiles.is_empty() {
                k.attn_prefill(
                    c,
                    ws.att.ptr(),
                    ws.q.ptr(),
                    m(o_tiles),
                    tiles.len(),
                    m(o_items),
                    table_l,
                    self.kv.pool.ptr(),
                    staging,
                    scale_log2,
                )?;
            }
            if !decode_ids.is_empty() {
                k.attn_decode(
                    c,
                    ws.att.ptr(),
                    ws.part_o.ptr(),
                    ws.part_ml.ptr(),
                    ws.counters.ptr(),
                    ws.q.ptr(),
                    m(o_decode),
                    decode_ids.len(),
                    m(o_items),
                    table_l,
                    self.kv.pool.ptr(),
                    staging,
                    part_keys as i32,
                    parts as i32,
                    scale_log2,
                )?;
            }
            if staged {
                self.ev.attn[l].record(c)?;
                self.stage_out.wait(&self.ev.attn[l])?;
                let mut outs = Vec::new();
                for (item, slot) in items.iter().zip(&slots[l]) {
                    if let Some(s0) = slot {
                        let first = item.start_pos / bt;
                        let blocks: &[BlockId] = &item.layers[l].blocks[first..need(item, bt)];
                        outs.extend(self.kv.staging_runs(l, s0 + first, blocks, true));
                    }
                }
                if let Some(t) = self.trace.as_mut() {
                    t.stage_out_starts(l, &self.stage_out)?;
                }
                out.transfer_bytes += self.kv.issue(&self.stage_out, &outs)?;
                if let Some(t) = &self.trace {
                    t.stage_out_issued(l, &self.stage_out)?;
                }
                self.ev.out[l].record(&self.stage_out)?;
            }
            self.linear(
                ws.x.ptr(),
                Out::F32,
                ws.att.ptr(),
                lw.wo.ptr(),
                rows,
                h,
                sh.q_dim(),
                true,
            )?;
            self.norm_gate_up(ws.x.ptr(), lw.mlp_norm.ptr(), lw.w_gate_up.ptr(), rows)?;
            self.linear(
                ws.x.ptr(),
                Out::F32,
                ws.act.ptr(),
                lw.w_down.ptr(),
                rows,
                h,
                ff,
                true,
            )?;
        }
        let n = items.len();
        if !self.samples {
            self.record_tails()?;
            c.sync("running the stage")?;
            let mut x = vec![0f32; rows * h];
            ws.x.download(&mut x, "stage activations")?;
            return Ok((out, Some(x)));
        }
        if k.norm_gemv_fits(n, h) {
            // Each item's last row, normalized, times the lm_head: one kernel.
            let (logits, head) = (ws.logits.ptr(), w.lm_head());
            let (x, norm) = (ws.x.ptr(), w.final_norm.ptr());
            k.gemv_rms(
                c,
                logits,
                x,
                m(o_last),
                norm,
                head,
                n,
                d.vocab,
                h,
                d.eps,
                false,
            )?;
        } else {
            k.gather_rows(c, ws.last.ptr(), ws.x.ptr(), m(o_last), n, h as i32)?;
            self.norm_linear(
                ws.logits.ptr(),
                Out::F32,
                ws.last.ptr(),
                w.final_norm.ptr(),
                w.lm_head(),
                n,
                d.vocab,
            )?;
        }
        k.argmax_rows(c, ws.tokens.ptr(), ws.logits.ptr(), n, d.vocab as i32)?;
        if !sampled.is_empty() {
            k.sample_top_p(
                c,
                ws.sampled.ptr(),
                ws.logits.ptr(),
                n,
                d.vocab as i32,
                m(o_temps),
                m(o_top_ps),
                m(o_us),
            )?;
        }
        self.record_tails()?;
        let queued = std::time::Instant::now();
        c.sync("running the step")?;
        if let Some(t) = &self.trace {
            // One line a step (see `trace`): the host's time to queue the step and how much
            // longer the GPU took, then what the timing events measured, in microseconds.
            let gpu_us = queued.elapsed().as_micros();
            let f = t.figures()?;
            eprintln!(
                "cuda step: rows={rows} items={} staged_layers={} stage_in_runs={stage_in_runs} \
                 plan_copies={} queued_us={} gpu_us={gpu_us} entry_wait_us={:.0} \
                 stall_us={:.0} in_busy_us={:.0} in_span_us={:.0} in_bytes={} out_busy_us={:.0}",
                items.len(),
                staged_layers.iter().filter(|&&s| s).count(),
                plan.copies.len(),
                (queued - self.step_started).as_micros(),
                f.entry_wait_us,
                f.stall_us,
                f.in_busy_us,
                f.in_span_us,
                f.in_bytes,
                f.out_busy_us,
            );
        }

        let mut greedy = vec![0u32; n];
        ws.tokens.download(&mut greedy, "tokens")?;
        let mut drawn = vec![0u32; if sampled.is_empty() { 0 } else { n }];
        if !sampled.is_empty() {
            ws.sampled.download(&mut drawn, "sampled tokens")?;
        }
        let mut logits = Vec::new();
        if items.iter().any(|i| i.want_logits) {
            logits = vec![0f32; n * d.vocab];
            ws.logits.download(&mut logits, "logits")?;
        }
        for (i, item) in items.iter().enumerate() {
            let t = if item.sampling.temperature > 0.0 {
                drawn[i]
            } else {
                greedy[i]
            };
            out.tokens.push((item.seq, t));
            if item.want_logits {
                out.logits
                    .push((item.seq, logits[i * d.vocab..(i + 1) * d.vocab].to_vec()));
            }
        }
        Ok((out, None))
    }

    fn upload_meta(&mut self, bytes: &[u8]) -> Result<(), ExecError> {
        if bytes.len() > self.meta_host.bytes() {
            let cap = bytes.len().next_power_of_two();
            self.meta_host = PinnedBuf::new(cap, "step metadata")?;
        }
        if bytes.len() > self.meta_dev.bytes() {
            let cap = bytes.len().next_power_of_two();
            self.meta_dev = DeviceBuf::new(cap, "step metadata")?;
        }
        self.meta_host.as_mut_slice::<u8>()[..bytes.len()].copy_from_slice(bytes);
        self.compute
            .copy(self.meta_dev.ptr(), self.meta_host.addr(), bytes.len())
            .map_err(|e| dev("uploading step metadata", e))
    }
}
