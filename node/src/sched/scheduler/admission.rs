//! Admission: whether the head of the queue starts this step, and with which layers offloaded.
//!
//! Checks, in order: the liveness bound on committed footprints, the step's token budget, then
//! per mode — `baseline`: every layer on the GPU, swapped sequences first; `layerwise`: the
//! resident layers that free blocks allow, offload time within prefill compute, staging and host
//! room, the request's own TPOT if it would wait for its layers, and every running sequence's
//! TPOT with the added step time.

use super::super::request::Request;
use super::super::residency;
use super::{Mode, Scheduler, StepBudget};
use crate::kv::{BlockManager, Tier};
use crate::sched::plan::SeqId;
use std::time::Duration;

/// Why admission stopped, counted per step in which it stopped for that reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionStops {
    /// The step's prefill-token or batch budget was used.
    pub step_budget: usize,
    /// Worst-case footprints of the running set would not fit GPU + host (liveness bound).
    pub committed: usize,
    /// Too few GPU blocks (baseline: for every layer; layerwise: for the layers that must stay).
    pub gpu: usize,
    /// Swapped-out sequences wait to come back first (baseline).
    pub swapped_first: usize,
    /// Too few host blocks for the offloaded layers.
    pub host: usize,
    /// The staging area cannot take another staged prefill this step.
    pub staging: usize,
    /// Offloading would take longer than the prefill computes.
    pub offload_time: usize,
    /// A running decode would miss its TPOT SLO.
    pub tpot: usize,
    /// Admitted now, the request would wait for its layers past its own TPOT SLO, while
    /// waiting in the queue still meets its TTFT SLO.
    pub own_tpot: usize,
}

impl Scheduler {
    /// Blocks a request holds at most: every layer, prompt plus all its output.
    pub(super) fn footprint(&self, req: &Request) -> usize {
        self.layout.layers * self.layout.blocks_for(req.prompt.len() + req.max_tokens)
    }

    /// Liveness: with the running set's worst-case footprints within GPU + host capacity less
    /// the largest one, a full GPU implies host room for any whole sequence, so a swap-out
    /// always succeeds and the highest-priority sequence can always make progress.
    fn fits_committed(&self, req: &Request) -> bool {
        let fp = self.footprint(req);
        let largest = self
            .running
            .iter()
            .map(|r| self.footprint(&self.seqs[r].req))
            .chain([fp])
            .max()
            .unwrap_or(fp);
        self.committed_blocks + fp + largest <= self.gpu_capacity + self.host_capacity
            || self.running.is_empty()
    }

    /// Decides whether the head of the queue can start now, and which layers it offloads.
    pub(super) fn plan_admission(
        &mut self,
        kv: &BlockManager,
        s: SeqId,
        now: Duration,
        parked_need: usize,
        budget: &mut StepBudget,
        decode_step_s: f64,
    ) -> Option<Vec<bool>> {
        let layers = self.layout.layers;
        let req = self.seqs[&s].req.clone();
        if !self.fits_committed(&req) {
            self.stops.committed += 1;
            return None;
        }
        let hit = kv.peek_prefix(&req.prompt, req.cache_salt);
        let hit_tokens = hit.blocks() * self.layout.block_tokens;
        let n_new = req.prompt.len() - hit_tokens;
        // This step runs the first chunk (the whole prompt when chunking is off).
        let chunk_end = self.chunk_end(hit_tokens, req.prompt.len());
        let n_first = chunk_end - hit_tokens;
        if !budget.fits_tokens(n_first) {
            self.stops.step_budget += 1;
            return None;
        }
        let b_total = self.layout.blocks_for(req.prompt.len());
        let b_new = b_total - hit.blocks();
        let host_hits = |l: usize| {
            hit.tables[l]
                .iter()
                .filter(|b| b.tier == Tier::Host)
                .count()
        };
        let prefill_s = self.cost.prefill_s(n_first, hit_tokens, layers);
        let whole_prefill_s = self.cost.prefill_s(n_new, hit_tokens, layers);
        // Staged layers of the first chunk hold its blocks in staging.
        let staged_blocks = self.layout.blocks_for(chunk_end);
        let chunk_blocks = staged_blocks - hit.blocks();
        // Attaching the hit pins its unheld blocks, which `available` counts as evictable.
        let free = kv
            .available(Tier::Gpu)
            .saturating_sub(self.cfg.watermark_blocks + hit.unheld[Tier::Gpu.index()]);
        let host_free = kv
            .available(Tier::Host)
            .saturating_sub(hit.unheld[Tier::Host.index()]);
        let mask = match self.cfg.mode {
            Mode::Baseline => {
                let need: usize = (0..layers).map(|l| b_new + host_hits(l)).sum();
                if parked_need > 0 {
                    self.stops.swapped_first += 1;
                    return None;
                }
                if need > free {
                    self.stops.gpu += 1;
                    return None;
                }
                vec![false; layers]
            }
            Mode::Layerwise => {
                let free = free.saturating_sub(parked_need);
                let per_layer = b_new + (0..layers).map(host_hits).max().unwrap_or(0);
                let resident = (free / per_layer.max(1)).min(layers);
                let transfer_s = self.cost.transfer_s(self.layer_bytes(chunk_blocks));
                if resident < residency::min_resident(layers, transfer_s, prefill_s) {
                    self.stops.offload_time += 1;
                    return None;
                }
                let mask = residency::spread(layers, layers - resident);
                let offloaded = layers - resident;
                if offloaded > 0 {
                    // Each chunk of a staged layer stages the layer's blocks so far: the whole
                    // prompt must fit staging on its own, and the first chunk beside this
                    // step's other staged work.
                    let staged: Vec<usize> = (0..layers).filter(|&l| mask[l]).collect();
                    let staging_ok = b_total <= budget.staging_limit()
                        && budget.fits_staging(&staged, staged_blocks, budget.staging_limit());
                    if !staging_ok {
                        self.stops.staging += 1;
                        return None;
                    }
                    if host_free < offloaded * b_new {
                        self.stops.host += 1;
                        return None;
                    }
                    // Waits are priced at the observed token interval: prefills keep joining.
                    let interval_s = decode_step_s.max(self.token_interval_s.unwrap_or(0.0));
                    if self.better_to_wait(kv, &req, now, free, whole_prefill_s, interval_s) {
                        self.stops.own_tpot += 1;
                        return None;
                    }
                }
                if !self.decodes_keep_tpot(now, budget.seconds + prefill_s, decode_step_s) {
                    self.stops.tpot += 1;
                    return None;
                }
                let staged: Vec<usize> = (0..layers).filter(|&l| mask[l]).collect();
                budget.take_staging(&staged, staged_blocks);
                mask
            }
        };
        budget.add_prefill(n_first, prefill_s);
        Some(mask)
    }

    /// Seconds until `need` GPU blocks could be had, beyond `free` ones, as running sequences
    /// finish in order of their remaining tokens (each decode step taking `decode_step_s`).
    fn wait_for_blocks_s(
        &self,
        kv: &BlockManager,
        need: usize,
        free: usize,
        decode_step_s: f64,
    ) -> f64 {
        if free >= need {
            return 0.0;
        }
        let mut releases: Vec<(usize, usize)> = self
            .running
            .iter()
            .map(|r| {
                let seq = &self.seqs[r];
                let held: usize = (0..self.layout.layers)
                    .map(|l| kv.table(*r, l).len() - kv.blocks_off(*r, l, Tier::Gpu))
                    .sum();
                (seq.req.max_tokens.saturating_sub(seq.output.len()), held)
            })
            .collect();
        releases.sort_unstable();
        let mut have = free;
        for (remaining, held) in releases {
            have += held;
            if have >= need {
                return remaining as f64 * decode_step_s;
            }
        }
        f64::INFINITY
    }

    /// `true` when admitting `req` now would leave it waiting for its layers past its own TPOT
    /// SLO, while waiting in the queue for GPU room would still meet its TTFT SLO. Moving queuing
    /// from before the first token to after it only pays while the TPOT budget has slack.
    fn better_to_wait(
        &self,
        kv: &BlockManager,
        req: &Request,
        now: Duration,
        free: usize,
        prefill_s: f64,
        decode_step_s: f64,
    ) -> bool {
        let need = self.footprint(req);
        let wait_s = self.wait_for_blocks_s(kv, need, free, decode_step_s);
        let out = req.max_tokens as f64;
        let tpot_if_admitted = (wait_s + out * decode_step_s) / (out - 1.0).max(1.0);
        let ttft_if_waiting = now.saturating_sub(req.arrival).as_secs_f64() + wait_s + prefill_s;
        tpot_if_admitted * 1e3 > req.slo.tpot_ms && ttft_if_waiting * 1e3 <= req.slo.ttft_ms
    }

    /// `true` when no running sequence newly misses its TPOT SLO if this step takes `step_s`,
    /// each further token costing `decode_step_s` (the modelled step without prefills: the
    /// question is whether this prefill is the one that breaks the SLO).
    fn decodes_keep_tpot(&self, now: Duration, step_s: f64, decode_step_s: f64) -> bool {
        // Every running sequence past its first token counts, whether it decodes this step or
        // waits for its layers: a longer step delays both.
        self.running.iter().all(|d| {
            let seq = &self.seqs[d];
            let Some(first) = seq.first_token_at else {
                return true;
            };
            let intervals = (seq.req.max_tokens.max(2) - 1) as f64;
            let remaining = seq.req.max_tokens.saturating_sub(seq.output.len() + 1) as f64;
            let elapsed = now.saturating_sub(first).as_secs_f64();
            let slo_s = seq.req.slo.tpot_ms / 1e3;
            let with = (elapsed + step_s + remaining * decode_step_s) / intervals;
            let without = (elapsed + decode_step_s * (remaining + 1.0)) / intervals;
            // A sequence already past its SLO cannot be saved by waiting; do not let it block.
            with <= slo_s || without > slo_s
        })
    }

    /// Registers the sequence, attaches its cached prefix and allocates its layers. Returns the
    /// cached tokens, or `None` (with nothing held) if the blocks could not be had.
    pub(super) fn admit(
        &self,
        kv: &mut BlockManager,
        s: SeqId,
        prompt: &[u32],
        salt: u64,
        offloaded: &[bool],
    ) -> Option<usize> {
        kv.register(s, salt).ok()?;
        let result = (|| {
            // Host layers hold spare blocks for the tokens the request may still produce.
            kv.expect_tokens(s, prompt.len() + self.seqs[&s].req.max_tokens)?;
            let hit = kv.attach_prefix(s, prompt)?;
            for (l, &off) in offloaded.iter().enumerate() {
                if off {
                    kv.grow(s, l, prompt.len(), Tier::Host)?;
                } else {
                    kv.move_layer(s, l, Tier::Gpu)?;
                    kv.grow(s, l, prompt.len(), Tier::Gpu)?;
                }
            }
            Ok::<usize, crate::kv::KvError>(hit)
        })();
        match result {
            Ok(hit) => Some(hit),
            Err(_) => {
                debug_assert!(false, "admission failed after its checks passed");
                let _ = kv.free(s);
                None
            }
        }
    }
}
