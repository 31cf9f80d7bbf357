//! The cpu and cuda executors on the same weights, running the same hand-built plans.
//!
//! The cpu executor (f32 math, KV in f32) leads and the cuda one (bf16 weights and KV, f32
//! accumulation) follows. One bump allocator of block indices per tier serves both, since their
//! pools have the same sizes. Every item asks for logits and the two rows are compared at every
//! step. Both are fed the cpu's greedy tokens (teacher forcing), so an argmax that differs within
//! bf16 noise cannot make the compared sequences diverge.

use strata_node::exec::cpu::CpuExecutor;
use strata_node::exec::cpu::sample::argmax;
use strata_node::exec::cuda::CudaExecutor;
use strata_node::exec::{Executor, PoolSizes, StepOutput};
use strata_node::kv::{BlockId, KvLayout, Tier};
use strata_node::model::rng::Rng;
use strata_node::model::{ModelConfig, Preset, Weights};
use strata_node::sched::plan::{CopyOp, LayerKv, Sampling, StepPlan, WorkItem, WorkKind};
use strata_transport::proto::RequestId;

/// The bound on ‖Δ‖/‖ref‖ between cuda and cpu logits.
pub const TOL: f64 = 2e-2;

/// Greedy decode steps after each prefill.
pub const DECODE_STEPS: usize = 20;

/// Pools large enough for every case here.
pub const POOLS: PoolSizes = PoolSizes {
    gpu_blocks: 1536,
    host_blocks: 512,
    staging_blocks: 64,
};

/// ‖got − want‖ / ‖want‖, in f64.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "logit rows of different lengths");
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// `len` tokens drawn uniformly from the vocabulary.
pub fn random_prompt(rng: &mut Rng, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|_| rng.range(0, vocab as u64 - 1) as u32)
        .collect()
}

/// The `tiny` preset with a RoPE table of 1024 positions, changed by `f`.
pub fn tiny_with(f: impl FnOnce(&mut ModelConfig)) -> ModelConfig {
    let mut cfg = Preset::Tiny.config();
    cfg.max_position_embeddings = 1024;
    f(&mut cfg);
    cfg
}

/// Both executors and the allocator of block indices.
pub struct Pair {
    pub cfg: ModelConfig,
    pub cpu: CpuExecutor,
    pub gpu: CudaExecutor,
    pub bt: usize,
    next: [u32; 2],
    /// The largest relative logits error seen so far, and where.
    worst: (f64, String),
}

impl Pair {
    /// Both executors on `weights`: KV in f32 for the cpu, in bf16 for cuda.
    pub fn new(cfg: &ModelConfig, weights: Weights, bt: usize) -> Pair {
        let cpu_layout = KvLayout::for_model(cfg, bt, 4);
        let gpu_layout = KvLayout::for_model(cfg, bt, 2);
        let cpu = CpuExecutor::new(cfg, weights.clone(), cpu_layout, POOLS).expect("cpu executor");
        let gpu = CudaExecutor::new(cfg, weights, gpu_layout, POOLS)
            .unwrap_or_else(|e| panic!("the cuda executor refused {cfg:?}: {e}"));
        Pair {
            cfg: cfg.clone(),
            cpu,
            gpu,
            bt,
            next: [0, 0],
            worst: (0.0, "every step matched exactly".into()),
        }
    }

    /// Both executors on seeded random weights for every layer of `cfg`.
    pub fn random(cfg: &ModelConfig, seed: u64, bt: usize) -> Pair {
        let weights = Weights::random(cfg, seed, 0..cfg.num_layers).expect("random weights");
        Pair::new(cfg, weights, bt)
    }

    pub fn alloc(&mut self, tier: Tier) -> BlockId {
        let index = self.next[tier.index()];
        let cap = match tier {
            Tier::Gpu => POOLS.gpu_blocks,
            Tier::Host => POOLS.host_blocks,
        };
        assert!((index as usize) < cap, "the test ran out of {tier} blocks");
        self.next[tier.index()] += 1;
        BlockId { tier, index }
    }

    /// Runs one plan on both executors and checks the cuda output against the cpu's, which
    /// is returned (its greedy tokens lead both). `what` names the step in messages.
    pub fn step(&mut self, copies: Vec<CopyOp>, items: Vec<WorkItem>, what: &str) -> StepOutput {
        let plan = StepPlan { copies, items };
        let want = self
            .cpu
            .execute(&plan)
            .unwrap_or_else(|e| panic!("{what}: the cpu executor refused the plan: {e}"));
        let got = self
            .gpu
            .execute(&plan)
            .unwrap_or_else(|e| panic!("{what}: cuda failed a plan the cpu ran: {e}"));
        let order: Vec<_> = plan.items.iter().map(|i| i.seq).collect();
        let seqs = |o: &StepOutput| o.tokens.iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(seqs(&want), order, "{what}: cpu tokens not in plan order");
        assert_eq!(seqs(&got), order, "{what}: cuda tokens not in plan order");
        for (item, &(seq, token)) in plan.items.iter().zip(&got.tokens) {
            if !item.want_logits {
                continue;
            }
            let row = |o: &StepOutput| {
                o.logits
                    .iter()
                    .find(|(s, _)| *s == seq)
                    .map(|(_, l)| l.clone())
                    .unwrap_or_else(|| panic!("{what}: no logits for {seq}"))
            };
            let (g, w) = (row(&got), row(&want));
            let pos = item.start_pos + item.tokens.len() - 1;
            let rel = rel_err(&g, &w);
            let place = format!("{what}: {seq} at position {pos}");
            assert!(
                rel < TOL,
                "{place}: cuda logits off the cpu's by ‖Δ‖/‖ref‖ = {rel:.3e} (limit {TOL:e})"
            );
            if rel > self.worst.0 {
                self.worst = (rel, place.clone());
            }
            if item.sampling.temperature <= 0.0 {
                assert_eq!(
                    token,
                    argmax(&g),
                    "{place}: the cuda greedy token is not the first largest of its logits"
                );
            }
        }
        // Both count the blocks they move; cuda's hold bf16 (half the cpu's f32 bytes) and it
        // stages in only blocks that hold earlier positions, where the cpu stages every block.
        assert!(
            2 * got.transfer_bytes <= want.transfer_bytes
                && (got.transfer_bytes > 0) == (want.transfer_bytes > 0),
            "{what}: cuda moved {} bytes between tiers, the cpu {} (f32)",
            got.transfer_bytes,
            want.transfer_bytes
        );
        want
    }

    /// Waits for the GPU's trailing copies (a failed one fails the test) and prints the largest
    /// error seen (run with `--nocapture` to read it).
    pub fn report(&mut self, test: &str) {
        self.gpu
            .synchronize()
            .unwrap_or_else(|e| panic!("{test}: the GPU's last copies failed: {e}"));
        eprintln!(
            "{test}: largest ‖Δ‖/‖ref‖ {:.3e} ({})",
            self.worst.0, self.worst.1
        );
    }
}

/// A sequence as the engine would track it.
pub struct Seq {
    pub id: RequestId,
    pub tokens: Vec<u32>,
    /// Positions whose K/V are in the blocks.
    pub done: usize,
    pub layers: Vec<LayerKv>,
    /// The tier each layer's new blocks come from.
    pub tiers: Vec<Tier>,
    pub outputs: usize,
    /// Where the item in flight ends.
    end: usize,
}

impl Seq {
    pub fn new(id: u64, prompt: Vec<u32>, layers: usize) -> Seq {
        let empty = LayerKv {
            blocks: Vec::new(),
            staged: false,
        };
        Seq {
            id: RequestId(id),
            tokens: prompt,
            done: 0,
            layers: vec![empty; layers],
            tiers: vec![Tier::Gpu; layers],
            outputs: 0,
            end: 0,
        }
    }

    /// The item for every token not yet in the blocks.
    pub fn item(&mut self, p: &mut Pair) -> WorkItem {
        self.chunk(p, usize::MAX)
    }

    /// The item for at most `max_tokens` of the tokens not yet in the blocks.
    pub fn chunk(&mut self, p: &mut Pair, max_tokens: usize) -> WorkItem {
        assert!(self.done < self.tokens.len(), "{}: nothing to run", self.id);
        self.end = self.tokens.len().min(self.done.saturating_add(max_tokens));
        let need = self.end.div_ceil(p.bt);
        for (lk, &tier) in self.layers.iter_mut().zip(&self.tiers) {
            while lk.blocks.len() < need {
                lk.blocks.push(p.alloc(tier));
            }
        }
        WorkItem {
            seq: self.id,
            kind: if self.done == 0 || self.end - self.done > 1 {
                WorkKind::Prefill
            } else {
                WorkKind::Decode
            },
            tokens: self.tokens[self.done..self.end].to_vec(),
            start_pos: self.done,
            layers: self.layers.clone(),
            sampling: Sampling::default(),
            output_index: self.outputs,
            want_logits: true,
        }
    }

    /// Records the item in flight as done; at the end of the known tokens, takes the leading
    /// (cpu) token from `out` as the next input.
    pub fn accept(&mut self, out: &StepOutput) {
        self.done = self.end;
        if self.done == self.tokens.len() {
            let (_, token) = *out
                .tokens
                .iter()
                .find(|(s, _)| *s == self.id)
                .expect("a token for every item");
            self.tokens.push(token);
            self.outputs += 1;
        }
    }
}

/// Runs every sequence's pending tokens in one step, then `steps` decode steps of all of them
/// together.
pub fn generate_together(p: &mut Pair, seqs: &mut [Seq], steps: usize, what: &str) {
    for step in 0..=steps {
        let items = seqs.iter_mut().map(|s| s.item(p)).collect();
        let label = if step == 0 {
            format!("{what}, prefill")
        } else {
            format!("{what}, decode step {step}")
        };
        let out = p.step(Vec::new(), items, &label);
        for s in seqs.iter_mut() {
            s.accept(&out);
        }
    }
}

/// Fresh random prompts of `lens` (ids from 1) on random weights, prefilled in one batch, then
/// decoded together.
pub fn run_batch(cfg: &ModelConfig, bt: usize, lens: &[usize], seed: u64, what: &str) {
    batch_on(&mut Pair::random(cfg, seed, bt), lens, seed, what);
}

/// [`run_batch`] on the executors of `p`.
pub fn batch_on(p: &mut Pair, lens: &[usize], seed: u64, what: &str) {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let (vocab, layers) = (p.cfg.vocab_size, p.cfg.num_layers);
    let mut seqs: Vec<Seq> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| Seq::new(i as u64 + 1, random_prompt(&mut rng, len, vocab), layers))
        .collect();
    generate_together(p, &mut seqs, DECODE_STEPS, what);
    p.report(what);
}
