//! The executor end to end on the `tiny` model against the cpu executor on the same weights and
//! plans: logits within bf16 tolerance, at prefill and decode, resident and staged layers.

use super::CudaExecutor;
use crate::exec::cpu::CpuExecutor;
use crate::exec::{Executor, PoolSizes};
use crate::kv::{BlockId, KvLayout};
use crate::model::{Preset, Weights};
use crate::sched::plan::{LayerKv, Sampling, StepPlan, WorkItem, WorkKind};
use strata_transport::proto::RequestId;

const POOLS: PoolSizes = PoolSizes {
    gpu_blocks: 256,
    host_blocks: 256,
    staging_blocks: 64,
};

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let e: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (e / n).sqrt()
}

#[test]
fn tiny_logits_match_the_cpu_executor_resident_and_staged() {
    if let Err(e) = super::probe(0) {
        eprintln!("skipping: {e}");
        return;
    }
    let cfg = Preset::Tiny.config();
    let w = Weights::random(&cfg, 3, 0..cfg.num_layers).unwrap();
    let bt = 16;
    let mut cpu =
        CpuExecutor::new(&cfg, w.clone(), KvLayout::for_model(&cfg, bt, 4), POOLS).unwrap();
    let mut gpu = CudaExecutor::new(&cfg, w, KvLayout::for_model(&cfg, bt, 2), POOLS).unwrap();
    let layers = cfg.num_layers;
    // Sequence A: resident on GPU blocks 0..; B: every other layer staged from host blocks.
    let mut seqs: Vec<(u64, Vec<u32>, usize, Vec<LayerKv>)> = vec![
        (
            1,
            (0..40)
                .map(|i| (i * 13 + 5) % cfg.vocab_size as u32)
                .collect(),
            0,
            Vec::new(),
        ),
        (
            2,
            (0..7)
                .map(|i| (i * 7 + 1) % cfg.vocab_size as u32)
                .collect(),
            0,
            Vec::new(),
        ),
    ];
    let (mut next_gpu, mut next_host) = (0u32, 0u32);
    for step in 0..5 {
        let mut items = Vec::new();
        for (id, toks, done, lks) in seqs.iter_mut() {
            let need = toks.len().div_ceil(bt);
            if lks.is_empty() {
                *lks = (0..layers)
                    .map(|l| LayerKv {
                        blocks: Vec::new(),
                        staged: *id == 2 && l % 2 == 1,
                    })
                    .collect();
            }
            for lk in lks.iter_mut() {
                while lk.blocks.len() < need {
                    lk.blocks.push(if lk.staged {
                        next_host += 1;
                        BlockId::host(next_host - 1)
                    } else {
                        next_gpu += 1;
                        BlockId::gpu(next_gpu - 1)
                    });
                }
            }
            items.push(WorkItem {
                seq: RequestId(*id),
                kind: if *done == 0 {
                    WorkKind::Prefill
                } else {
                    WorkKind::Decode
                },
                tokens: toks[*done..].to_vec(),
                start_pos: *done,
                layers: lks.clone(),
                sampling: Sampling::default(),
                output_index: step,
                want_logits: true,
            });
        }
        let plan = StepPlan {
            copies: Vec::new(),
            items,
        };
        let a = cpu.execute(&plan).unwrap();
        let b = gpu.execute(&plan).unwrap();
        for ((sa, la), (sb, lb)) in a.logits.iter().zip(&b.logits) {
            assert_eq!(sa, sb);
            let err = rel(lb, la);
            assert!(
                err < 2e-2,
                "step {step} {sa}: relative logits error {err:e}"
            );
            eprintln!("step {step} {sa}: relative logits error {err:.2e}");
        }
        // Teacher forcing: both continue with the cpu's tokens.
        for ((_, toks, done, _), &(_, t)) in seqs.iter_mut().zip(&a.tokens) {
            *done = toks.len();
            toks.push(t);
        }
    }
}
