//! Plans built by hand: a bump allocator of block indices per tier, and sequences tracked the
//! way the engine would, checked against the reference at every step.

use super::reference::reference_logits;
use strata_node::exec::cpu::CpuExecutor;
use strata_node::exec::{Executor, PoolSizes, StepOutput};
use strata_node::kv::{BlockId, KvLayout, Tier};
use strata_node::model::{ModelConfig, Preset, Weights};
use strata_node::sched::plan::{CopyOp, LayerKv, Sampling, StepPlan, WorkItem, WorkKind};
use strata_transport::proto::RequestId;

/// Steps of greedy decode after each prefill.
pub const DECODE_STEPS: usize = 22;

/// An executor, the weights it was given (for the reference), and a bump allocator of blocks.
pub struct Harness {
    pub cfg: ModelConfig,
    pub weights: Weights,
    pub exec: CpuExecutor,
    pub bt: usize,
    pub block_bytes: u64,
    /// The next free index per tier.
    next: [u32; 2],
}

/// Pools large enough for every case; staging holds 24 blocks.
pub const POOLS: PoolSizes = PoolSizes {
    gpu_blocks: 1024,
    host_blocks: 512,
    staging_blocks: 24,
};

impl Harness {
    pub fn new(cfg: ModelConfig, bt: usize) -> Harness {
        let weights = Weights::random(&cfg, 7, 0..cfg.num_layers).expect("weights");
        let layout = KvLayout {
            layers: cfg.num_layers,
            block_tokens: bt,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            dtype_bytes: 4,
        };
        let exec = CpuExecutor::new(&cfg, weights.clone(), layout, POOLS).expect("executor");
        Harness {
            cfg,
            weights,
            exec,
            bt,
            block_bytes: layout.block_bytes(),
            next: [0, 0],
        }
    }

    pub fn alloc(&mut self, tier: Tier) -> BlockId {
        let index = self.next[tier.index()];
        self.next[tier.index()] += 1;
        BlockId { tier, index }
    }

    pub fn run(&mut self, copies: Vec<CopyOp>, items: Vec<WorkItem>) -> StepOutput {
        self.exec
            .execute(&StepPlan { copies, items })
            .expect("valid plan")
    }
}

/// A sequence as the engine would track it.
pub struct Seq {
    pub id: RequestId,
    pub tokens: Vec<u32>,
    /// Positions whose K/V are in the blocks.
    pub done: usize,
    pub layers: Vec<LayerKv>,
    /// The tier each layer's new blocks go to.
    pub tiers: Vec<Tier>,
    pub outputs: usize,
}

impl Seq {
    pub fn new(id: u64, prompt: Vec<u32>, layers: usize) -> Seq {
        Seq {
            id: RequestId(id),
            tokens: prompt,
            done: 0,
            layers: vec![
                LayerKv {
                    blocks: Vec::new(),
                    staged: false,
                };
                layers
            ],
            tiers: vec![Tier::Gpu; layers],
            outputs: 0,
        }
    }

    /// The work item for the tokens not yet in the blocks; blocks come from `h`.
    pub fn item(&mut self, h: &mut Harness) -> WorkItem {
        let need = self.tokens.len().div_ceil(h.bt);
        for (lk, &tier) in self.layers.iter_mut().zip(&self.tiers) {
            while lk.blocks.len() < need {
                lk.blocks.push(h.alloc(tier));
            }
        }
        WorkItem {
            seq: self.id,
            kind: if self.done == 0 || self.tokens.len() - self.done > 1 {
                WorkKind::Prefill
            } else {
                WorkKind::Decode
            },
            tokens: self.tokens[self.done..].to_vec(),
            start_pos: self.done,
            layers: self.layers.clone(),
            sampling: Sampling::default(),
            output_index: self.outputs,
            want_logits: true,
        }
    }

    /// Checks this sequence's logits in `out` against the reference and takes its token.
    pub fn accept(&mut self, h: &Harness, out: &StepOutput) {
        let (_, logits) = out
            .logits
            .iter()
            .find(|(s, _)| *s == self.id)
            .expect("logits");
        let want = reference_logits(&h.cfg, &h.weights, &self.tokens);
        let err: f64 = logits
            .iter()
            .zip(&want)
            .map(|(&g, w)| (g as f64 - w).powi(2))
            .sum();
        let norm: f64 = want.iter().map(|w| w * w).sum();
        let rel = (err / norm).sqrt();
        assert!(
            rel < 1e-4,
            "{} at {} tokens: relative logits error {rel:e}",
            self.id,
            self.tokens.len()
        );
        let (_, token) = *out
            .tokens
            .iter()
            .find(|(s, _)| *s == self.id)
            .expect("token");
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        assert_eq!(token as usize, best, "greedy picks the first largest logit");
        self.done = self.tokens.len();
        self.tokens.push(token);
        self.outputs += 1;
    }

    /// Prefill (whatever is not in the blocks yet), then `steps` decode steps, one item a step.
    pub fn generate(&mut self, h: &mut Harness, steps: usize) {
        for _ in 0..=steps {
            let item = self.item(h);
            let out = h.run(Vec::new(), vec![item]);
            self.accept(h, &out);
        }
    }
}

pub fn prompt(len: usize, vocab: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 31 + salt * 17 + 3) % vocab as u32)
        .collect()
}

pub fn tiny_with(f: impl FnOnce(&mut ModelConfig)) -> ModelConfig {
    let mut cfg = Preset::Tiny.config();
    cfg.max_position_embeddings = 1024;
    f(&mut cfg);
    cfg
}

pub fn run_plain(cfg: ModelConfig, bt: usize, prompt_len: usize) {
    let mut h = Harness::new(cfg, bt);
    let mut seq = Seq::new(1, prompt(prompt_len, h.cfg.vocab_size, 1), h.cfg.num_layers);
    seq.generate(&mut h, DECODE_STEPS);
}
