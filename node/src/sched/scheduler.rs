//! The SLO-aware scheduler: `(queue, running set, KV state, CostProfile, now) → StepPlan`.
//!
//! Sans-IO. Call [`Scheduler::handle_submit`] for new requests, [`Scheduler::poll_plan`] once per
//! step, hand the plan to an executor, then [`Scheduler::handle_output`] with what it returned.
//!
//! A step is planned in three passes:
//! 1. **Growth** — every running sequence gets room for its next token, in priority order. When
//!    the GPU is short, the lowest-priority running sequence loses layers to the host tier
//!    (layer-wise swap; `baseline` swaps the whole sequence), never recomputation.
//! 2. **Offloaded layers** — a sequence with layers on the host either *streams* them through
//!    staging (when the cost model says the transfer hides under a decode layer's compute and
//!    staging has room; `layerwise` only) or *reloads* them when GPU blocks are available;
//!    otherwise it waits this step.
//! 3. **Admission** — waiting requests in priority then arrival order. `baseline` admits only
//!    when every layer fits on the GPU. `layerwise` keeps resident as many layers as free blocks
//!    allow, spreads the rest (see [`residency`](super::residency)) to the host, bounded by
//!    staging, host room and offload time ≤ prefill compute, and admits only while every running
//!    decode keeps its TPOT SLO with the added step time.

use super::config::{Mode, SchedulerConfig};

mod admission;
mod budget;

use budget::StepBudget;

use super::event::Event;
use super::plan::{LayerKv, SeqId, StepPlan, WorkItem, WorkKind};
use super::request::{FinishReason, Request, SubmitError};
use crate::exec::StepOutput;
use crate::kv::{BlockManager, KvLayout, Tier};
pub use admission::AdmissionStops;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use strata_transport::proto::CostProfile;

#[derive(Debug, Clone)]
struct Seq {
    req: Request,
    output: Vec<u32>,
    first_token_at: Option<Duration>,
    /// Prompt tokens served from the prefix cache at admission.
    cached_tokens: usize,
    /// Prompt tokens whose K/V are computed (cached ones included); below the prompt's length
    /// while a chunked prefill is under way.
    prefilled: usize,
}

impl Seq {
    fn prefilling(&self) -> bool {
        self.prefilled < self.req.prompt.len()
    }
}

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    cost: CostProfile,
    layout: KvLayout,
    gpu_capacity: usize,
    host_capacity: usize,
    /// Σ worst-case footprints (every layer, prompt + max_tokens) of the running sequences.
    committed_blocks: usize,
    stops: AdmissionStops,
    /// Offloaded layers may stream during decode (policy resolved against the executor).
    stream: bool,
    /// When the last planned step started.
    planned_at: Duration,
    /// Observed seconds per decode step (EWMA), prefills interleaved included.
    token_interval_s: Option<f64>,
    /// Waiting requests in admission order.
    waiting: Vec<SeqId>,
    /// Admitted sequences in priority order.
    running: Vec<SeqId>,
    seqs: HashMap<SeqId, Seq>,
    events: Vec<Event>,
}

impl Scheduler {
    pub fn new(
        cfg: SchedulerConfig,
        cost: CostProfile,
        layout: KvLayout,
        gpu_capacity: usize,
        host_capacity: usize,
    ) -> Self {
        Scheduler {
            stream: cfg.stream_decode.enabled(true),
            cfg,
            cost,
            layout,
            gpu_capacity,
            host_capacity,
            committed_blocks: 0,
            stops: AdmissionStops::default(),
            planned_at: Duration::ZERO,
            token_interval_s: None,
            waiting: Vec::new(),
            running: Vec::new(),
            seqs: HashMap::new(),
            events: Vec::new(),
        }
    }

    /// Sets whether offloaded layers may stream during decode (the engine resolves
    /// [`StreamDecode`](super::config::StreamDecode) against its executor).
    pub fn with_streaming(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn cost(&self) -> &CostProfile {
        &self.cost
    }

    /// Why admission stopped, since the start.
    pub fn admission_stops(&self) -> AdmissionStops {
        self.stops
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Prompt tokens not yet prefilled, one entry per request that has some: the waiting
    /// requests, then running sequences whose chunked prefill is under way.
    pub fn pending_prefill_tokens(&self) -> impl Iterator<Item = usize> + '_ {
        self.waiting
            .iter()
            .chain(&self.running)
            .filter_map(|id| self.seqs.get(id))
            .map(|s| s.req.prompt.len().saturating_sub(s.prefilled))
            .filter(|&n| n > 0)
    }

    fn order_key(&self, id: SeqId) -> (std::cmp::Reverse<u8>, Duration, SeqId) {
        let r = &self.seqs[&id].req;
        (std::cmp::Reverse(r.slo.priority), r.arrival, id)
    }

    /// Queues a request, or refuses it with the reason.
    pub fn handle_submit(&mut self, req: Request) -> Result<(), SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::ZeroMaxTokens);
        }
        let total = req.prompt.len() + req.max_tokens;
        if total > self.cfg.max_seq_tokens {
            return Err(SubmitError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                limit: self.cfg.max_seq_tokens,
            });
        }
        // Every layer must fit on the GPU at once for the sequence to decode to its end.
        let needed = self.layout.blocks_for(total);
        let limit =
            self.gpu_capacity.saturating_sub(self.cfg.watermark_blocks) / self.layout.layers;
        if needed > limit {
            return Err(SubmitError::TooLarge {
                tokens: total,
                needed,
                limit,
            });
        }
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(SubmitError::QueueFull {
                limit: self.cfg.max_waiting,
            });
        }
        if self.seqs.contains_key(&req.id) {
            return Err(SubmitError::Duplicate(req.id));
        }
        let id = req.id;
        self.seqs.insert(
            id,
            Seq {
                req,
                output: Vec::new(),
                first_token_at: None,
                cached_tokens: 0,
                prefilled: 0,
            },
        );
        let key = self.order_key(id);
        let at = self.waiting.partition_point(|&w| self.order_key(w) <= key);
        self.waiting.insert(at, id);
        Ok(())
    }

    /// Cancels a request wherever it is; its blocks are released.
    pub fn handle_cancel(&mut self, id: SeqId, kv: &mut BlockManager, now: Duration) -> bool {
        self.finish(id, FinishReason::Cancelled, kv, now)
    }

    fn finish(
        &mut self,
        id: SeqId,
        reason: FinishReason,
        kv: &mut BlockManager,
        now: Duration,
    ) -> bool {
        let Some(seq) = self.seqs.remove(&id) else {
            return false;
        };
        self.waiting.retain(|&w| w != id);
        if self.running.contains(&id) {
            self.running.retain(|&r| r != id);
            self.committed_blocks -= self.footprint(&seq.req);
        }
        if kv.contains(id) {
            // The sequence is known to the manager: freeing cannot fail.
            let _ = kv.free(id);
        }
        self.events.push(Event::Finished {
            seq: id,
            reason,
            prompt_tokens: seq.req.prompt.len(),
            output_tokens: seq.output.len(),
            cached_tokens: seq.cached_tokens,
            at: now,
        });
        true
    }

    /// Drains the events of admissions and finishes decided outside `handle_output`.
    pub fn poll_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn layer_bytes(&self, blocks: usize) -> u64 {
        blocks as u64 * self.layout.block_bytes()
    }

    /// Moves layers of `victim` to the host until the GPU has `target` available blocks
    /// (`layerwise`), or the whole sequence (`baseline`). Returns whether anything moved.
    fn swap_out(&self, kv: &mut BlockManager, victim: SeqId, target: usize) -> bool {
        let resident: Vec<usize> = (0..self.layout.layers)
            .rev()
            .filter(|&l| kv.blocks_off(victim, l, Tier::Host) > 0)
            .collect();
        if self.cfg.mode == Mode::Baseline {
            let need: usize = resident
                .iter()
                .map(|&l| kv.blocks_off(victim, l, Tier::Host))
                .sum();
            if need == 0 || kv.available(Tier::Host) < need {
                return false;
            }
            for l in resident {
                let _ = kv.move_layer(victim, l, Tier::Host);
            }
            return true;
        }
        let mut moved = false;
        for l in resident {
            if kv.available(Tier::Gpu) >= target {
                break;
            }
            if kv.move_layer(victim, l, Tier::Host).is_err() {
                break;
            }
            moved = true;
        }
        moved
    }

    /// Plans the next step. Blocks are allocated and moves recorded in `kv` as it decides.
    pub fn poll_plan(&mut self, kv: &mut BlockManager, now: Duration) -> StepPlan {
        self.planned_at = now;
        let layers = self.layout.layers;
        let mut keys: Vec<_> = self
            .running
            .iter()
            .map(|&r| (self.order_key(r), r))
            .collect();
        keys.sort();
        self.running = keys.into_iter().map(|(_, r)| r).collect();
        let running = self.running.clone();

        // Pass 1: growth.
        let mut swapped = HashSet::new();
        let mut growing = Vec::new();
        for (i, &s) in running.iter().enumerate() {
            if growing.len() >= self.cfg.max_batch_seqs {
                break;
            }
            if self.seqs[&s].prefilling() {
                continue;
            }
            let pos = kv.seq_tokens(s);
            let gpu_need = |kv: &BlockManager| {
                (0..layers)
                    .filter(|&l| kv.is_resident(s, l))
                    .map(|l| kv.blocks_to_grow(s, l, pos + 1))
                    .sum::<usize>()
            };
            while kv.available(Tier::Gpu) < gpu_need(kv) {
                let victim = running[i + 1..]
                    .iter()
                    .rev()
                    .copied()
                    .find(|&v| {
                        // A sequence mid-prefill keeps its layers: it decodes within a few
                        // steps, and its staged chunks must fit staging.
                        !self.seqs[&v].prefilling()
                            && (0..layers).any(|l| kv.blocks_off(v, l, Tier::Host) > 0)
                    })
                    .unwrap_or(s);
                if !self.swap_out(kv, victim, gpu_need(kv)) {
                    break;
                }
                swapped.insert(victim);
            }
            let host_need: usize = (0..layers)
                .filter(|&l| !kv.is_resident(s, l))
                .map(|l| kv.blocks_to_grow(s, l, pos + 1))
                .sum();
            if kv.available(Tier::Gpu) < gpu_need(kv) || kv.available(Tier::Host) < host_need {
                continue;
            }
            for l in 0..layers {
                let tier = if kv.is_resident(s, l) {
                    Tier::Gpu
                } else {
                    Tier::Host
                };
                // Availability was checked above for both tiers.
                let _ = kv.grow(s, l, pos + 1, tier);
            }
            growing.push(s);
        }

        // Pass 2: offloaded layers — stream, reload, or wait. Streams must hide under the
        // compute of the sequences that decode from the GPU.
        let (mut decoding, offloaded): (Vec<SeqId>, Vec<SeqId>) = growing
            .iter()
            .partition(|&&s| kv.offloaded_layers(s).is_empty());
        let ctx_of = |kv: &BlockManager, seqs: &[SeqId]| -> usize {
            seqs.iter().map(|&s| kv.seq_tokens(s) + 1).sum()
        };
        let decode_layer_s = self
            .cost
            .decode_layer_s(decoding.len(), ctx_of(kv, &decoding));
        // Staged prefills have first claim on staging: streams may only use what the head of
        // the queue would leave.
        let prefill_reserve = self
            .waiting
            .first()
            .map_or(0, |w| self.layout.blocks_for(self.seqs[w].req.prompt.len()));
        let stream_limit = self.cfg.staging_blocks.saturating_sub(prefill_reserve);
        let mut budget =
            StepBudget::new(layers, self.cfg.max_prefill_tokens, self.cfg.staging_blocks);
        let mut stream_bytes = vec![0u64; layers];
        let mut parked_need = 0usize;
        let mut gathering = false;
        for s in offloaded {
            let off = kv.offloaded_layers(s);
            let blocks = self.layout.blocks_for(kv.seq_tokens(s) + 1);
            let bytes = self.layer_bytes(blocks);
            let can_stream = self.cfg.mode == Mode::Layerwise
                && self.stream
                && budget.fits_staging(&off, blocks, stream_limit)
                && off
                    .iter()
                    .all(|&l| self.cost.transfer_s(stream_bytes[l] + bytes) <= decode_layer_s);
            if can_stream {
                budget.take_staging(&off, blocks);
                for &l in &off {
                    stream_bytes[l] += bytes;
                }
                decoding.push(s);
                continue;
            }
            if swapped.contains(&s) {
                continue;
            }
            let need: usize = off.iter().map(|&l| kv.blocks_off(s, l, Tier::Gpu)).sum();
            // A sequence that cannot come back whole this step waits. Only the first such one
            // (the highest priority) gathers layers as blocks free, so that reloads converge on
            // one sequence instead of leaving many half-resident and none decoding.
            if kv.available(Tier::Gpu) < need && (self.cfg.mode == Mode::Baseline || gathering) {
                parked_need += need;
                continue;
            }
            if kv.available(Tier::Gpu) < need {
                gathering = true;
                // The gathering sequence takes GPU layers from lower-priority sequences that
                // are not decoding this step; otherwise many half-resident sequences could
                // hold the GPU with none able to come back whole.
                let victims: Vec<SeqId> = self
                    .running
                    .iter()
                    .rev()
                    .copied()
                    .take_while(|&v| v != s)
                    .filter(|v| !decoding.contains(v) && !self.seqs[v].prefilling())
                    .collect();
                for v in victims {
                    if kv.available(Tier::Gpu) >= need {
                        break;
                    }
                    self.swap_out(kv, v, need);
                }
            }
            for &l in &off {
                // Layer-wise reloads move only what hides under this step's compute (at least
                // one layer a step, so the sequence progresses); the rest follows next step.
                let moved = kv.pending_copies() as u64 * self.layout.block_bytes();
                let over_budget = self.cfg.mode == Mode::Layerwise
                    && moved > 0
                    && self.cost.transfer_s(moved + self.layer_bytes(blocks))
                        > decode_layer_s * layers as f64;
                if over_budget
                    || kv.available(Tier::Gpu) < kv.blocks_off(s, l, Tier::Gpu)
                    || kv.move_layer(s, l, Tier::Gpu).is_err()
                {
                    break;
                }
            }
            let left: usize = (0..layers).map(|l| kv.blocks_off(s, l, Tier::Gpu)).sum();
            if left == 0 {
                decoding.push(s);
            } else {
                parked_need += left;
            }
        }

        // Pass 3: admission.
        // (sequence, first prompt position, end) of this step's prefill chunks.
        let mut prefills: Vec<(SeqId, usize, usize)> = Vec::new();
        // The modelled decode step: what each further token costs if no more prefills join.
        let decode_step_s = self
            .cost
            .decode_s(decoding.len(), ctx_of(kv, &decoding), layers);
        budget.seconds = decode_step_s;
        // Chunked prefills under way continue before anything new starts.
        let under_way: Vec<SeqId> = running
            .iter()
            .copied()
            .filter(|r| self.seqs[r].prefilling())
            .collect();
        for s in under_way {
            let seq = &self.seqs[&s];
            let start = seq.prefilled;
            let end = self.chunk_end(start, seq.req.prompt.len());
            let n = end - start;
            let staged: Vec<usize> = (0..layers).filter(|&l| !kv.is_resident(s, l)).collect();
            let blocks = self.layout.blocks_for(end);
            if !budget.fits_tokens(n)
                || !budget.fits_staging(&staged, blocks, budget.staging_limit())
                || decoding.len() + prefills.len() >= self.cfg.max_batch_seqs
            {
                continue;
            }
            budget.take_staging(&staged, blocks);
            budget.add_prefill(n, self.cost.prefill_s(n, start, layers));
            prefills.push((s, start, end));
        }
        while let Some(&s) = self.waiting.first() {
            if decoding.len() + prefills.len() >= self.cfg.max_batch_seqs {
                self.stops.step_budget += 1;
                break;
            }
            let Some(mask) =
                self.plan_admission(kv, s, now, parked_need, &mut budget, decode_step_s)
            else {
                break;
            };
            let seq = &self.seqs[&s];
            let (prompt, salt) = (seq.req.prompt.clone(), seq.req.cache_salt);
            if let Some(hit) = self.admit(kv, s, &prompt, salt, &mask) {
                self.waiting.remove(0);
                self.running.push(s);
                self.committed_blocks += self.footprint(&self.seqs[&s].req);
                let offloaded = mask.iter().filter(|&&m| m).count();
                if let Some(seq) = self.seqs.get_mut(&s) {
                    seq.cached_tokens = hit;
                    seq.prefilled = hit;
                }
                self.events.push(Event::Admitted {
                    seq: s,
                    at: now,
                    offloaded_layers: offloaded,
                    cached_tokens: hit,
                });
                prefills.push((s, hit, self.chunk_end(hit, prompt.len())));
            } else {
                break;
            }
        }

        let mut plan = StepPlan {
            copies: kv.poll_copies(),
            items: Vec::with_capacity(prefills.len() + decoding.len()),
        };
        for (s, start, end) in prefills {
            let seq = &self.seqs[&s];
            plan.items.push(WorkItem {
                seq: s,
                kind: WorkKind::Prefill,
                tokens: seq.req.prompt[start..end].to_vec(),
                start_pos: start,
                // A layer is staged while any of its blocks is off the GPU: offloaded at
                // admission, or swapped out between chunks.
                layers: self.layer_tables(kv, s, end),
                sampling: seq.req.sampling,
                output_index: 0,
                want_logits: seq.req.want_logits && end == seq.req.prompt.len(),
            });
        }
        for s in decoding {
            let seq = &self.seqs[&s];
            let pos = kv.seq_tokens(s);
            let Some(&last) = seq.output.last() else {
                debug_assert!(false, "a running sequence without output");
                continue;
            };
            plan.items.push(WorkItem {
                seq: s,
                kind: WorkKind::Decode,
                tokens: vec![last],
                start_pos: pos,
                layers: self.layer_tables(kv, s, pos + 1),
                sampling: seq.req.sampling,
                output_index: seq.output.len(),
                want_logits: seq.req.want_logits,
            });
        }
        plan
    }

    /// End of the prefill chunk that starts at `start` of a `len`-token prompt.
    pub(super) fn chunk_end(&self, start: usize, len: usize) -> usize {
        match self.cfg.prefill_chunk_tokens {
            0 => len,
            chunk => (start + chunk).min(len),
        }
    }

    fn layer_tables(&self, kv: &BlockManager, s: SeqId, tokens: usize) -> Vec<LayerKv> {
        let blocks = self.layout.blocks_for(tokens);
        (0..self.layout.layers)
            .map(|l| {
                let table = kv.table(s, l);
                LayerKv {
                    blocks: table[..blocks.min(table.len())].to_vec(),
                    staged: !kv.is_resident(s, l),
                }
            })
            .collect()
    }

    /// Takes what the executor returned for `plan`: commits K/V, records tokens, finishes
    /// sequences. `end` is the time the step finished.
    pub fn handle_output(
        &mut self,
        plan: &StepPlan,
        out: &StepOutput,
        kv: &mut BlockManager,
        end: Duration,
    ) -> Vec<Event> {
        if plan.items.iter().any(|i| i.kind == WorkKind::Decode) {
            let dt = end.saturating_sub(self.planned_at).as_secs_f64();
            self.token_interval_s = Some(match self.token_interval_s {
                Some(avg) => 0.9 * avg + 0.1 * dt,
                None => dt,
            });
        }
        let mut logits: HashMap<SeqId, &Vec<f32>> =
            out.logits.iter().map(|(s, l)| (*s, l)).collect();
        for (item, &(seq_id, token)) in plan.items.iter().zip(&out.tokens) {
            debug_assert_eq!(item.seq, seq_id);
            if kv.commit(seq_id, &item.tokens).is_err() {
                continue;
            }
            let Some(seq) = self.seqs.get_mut(&seq_id) else {
                continue;
            };
            if item.kind == WorkKind::Prefill {
                seq.prefilled = item.start_pos + item.tokens.len();
                if seq.prefilling() {
                    // An intermediate chunk: its K/V are in, its sampled token means nothing.
                    continue;
                }
            }
            let index = seq.output.len();
            seq.output.push(token);
            seq.first_token_at.get_or_insert(end);
            self.events.push(Event::Token {
                seq: seq_id,
                token,
                index,
                at: end,
                logits: logits.remove(&seq_id).cloned(),
            });
            let reason = if seq.req.stop_tokens.contains(&token) {
                Some(FinishReason::Stop)
            } else if seq.output.len() >= seq.req.max_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.finish(seq_id, reason, kv, end);
            }
        }
        self.poll_events()
    }

    /// Fails every sequence that holds KV (the running set): the executor lost the memory
    /// behind its blocks. Waiting requests stay queued.
    pub fn handle_kv_lost(
        &mut self,
        error: &str,
        kv: &mut BlockManager,
        now: Duration,
    ) -> Vec<Event> {
        for seq in self.running.clone() {
            self.finish(seq, FinishReason::Error(error.to_string()), kv, now);
        }
        self.poll_events()
    }

    /// Fails every sequence of a step that could not run.
    pub fn handle_failure(
        &mut self,
        plan: &StepPlan,
        error: &str,
        kv: &mut BlockManager,
        end: Duration,
    ) -> Vec<Event> {
        for item in &plan.items {
            self.finish(item.seq, FinishReason::Error(error.to_string()), kv, end);
        }
        self.poll_events()
    }
}
