//! Plans to and from their `proto::stage` form. What arrives is checked here for what the
//! conversion needs (known tiers, sane sizes); the stage's executor then validates the plan
//! against its pools and model, as for any plan.

use crate::kv::BlockId;
use crate::sched::plan::{CopyOp, LayerKv, Sampling, StepPlan, WorkItem, WorkKind};
use strata_transport::proto::{
    StageResult, StageStep, WireBlock, WireLayerKv, WireSampling, WireWorkItem,
};

fn block_to_wire(b: BlockId) -> WireBlock {
    WireBlock {
        tier: b.tier.index() as u8,
        index: b.index,
    }
}

fn block_from_wire(b: &WireBlock) -> Result<BlockId, String> {
    match b.tier {
        0 => Ok(BlockId::gpu(b.index)),
        1 => Ok(BlockId::host(b.index)),
        t => Err(format!(
            "block {} names tier {t}; tiers are 0 (gpu) and 1 (host)",
            b.index
        )),
    }
}

pub fn copies_to_wire(copies: &[CopyOp]) -> Vec<(WireBlock, WireBlock)> {
    copies
        .iter()
        .map(|c| (block_to_wire(c.src), block_to_wire(c.dst)))
        .collect()
}

pub fn item_to_wire(item: &WorkItem) -> WireWorkItem {
    WireWorkItem {
        seq: item.seq,
        prefill: item.kind == WorkKind::Prefill,
        tokens: item.tokens.clone(),
        start_pos: item.start_pos as u32,
        layers: item
            .layers
            .iter()
            .map(|l| WireLayerKv {
                blocks: l.blocks.iter().copied().map(block_to_wire).collect(),
                staged: l.staged,
            })
            .collect(),
        sampling: WireSampling {
            temperature: item.sampling.temperature,
            top_p: item.sampling.top_p,
            seed: item.sampling.seed,
        },
        output_index: item.output_index as u32,
        want_logits: item.want_logits,
    }
}

fn item_from_wire(w: &WireWorkItem) -> Result<WorkItem, String> {
    let layers = w
        .layers
        .iter()
        .map(|l| {
            Ok(LayerKv {
                blocks: l
                    .blocks
                    .iter()
                    .map(block_from_wire)
                    .collect::<Result<_, String>>()?,
                staged: l.staged,
            })
        })
        .collect::<Result<_, String>>()
        .map_err(|e| format!("{}: {e}", w.seq))?;
    Ok(WorkItem {
        seq: w.seq,
        kind: if w.prefill {
            WorkKind::Prefill
        } else {
            WorkKind::Decode
        },
        tokens: w.tokens.clone(),
        start_pos: w.start_pos as usize,
        layers,
        sampling: Sampling {
            temperature: w.sampling.temperature,
            top_p: w.sampling.top_p,
            seed: w.sampling.seed,
        },
        output_index: w.output_index as usize,
        want_logits: w.want_logits,
    })
}

/// The plan a received micro-batch describes.
pub fn plan_from_wire(
    copies: &[(WireBlock, WireBlock)],
    items: &[WireWorkItem],
) -> Result<StepPlan, String> {
    let copies = copies
        .iter()
        .map(|(s, d)| {
            Ok(CopyOp {
                src: block_from_wire(s)?,
                dst: block_from_wire(d)?,
            })
        })
        .collect::<Result<_, String>>()?;
    let items = items.iter().map(item_from_wire).collect::<Result<_, _>>()?;
    Ok(StepPlan { copies, items })
}

/// The answer to `step` when it cannot be computed: no tokens, and why.
pub fn failed(step: &StageStep, why: String) -> StageResult {
    StageResult {
        epoch: step.epoch,
        step: step.step,
        micro: step.micro,
        tokens: Vec::new(),
        logits: Vec::new(),
        transfer_bytes: 0,
        error: Some(why),
    }
}

/// Rows (tokens) of a micro-batch's items.
pub fn rows(items: &[WorkItem]) -> usize {
    items.iter().map(|i| i.tokens.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_transport::proto::RequestId;

    #[test]
    fn a_plan_survives_the_wire() {
        let item = WorkItem {
            seq: RequestId(7),
            kind: WorkKind::Decode,
            tokens: vec![3],
            start_pos: 40,
            layers: vec![
                LayerKv {
                    blocks: vec![BlockId::gpu(1), BlockId::gpu(9), BlockId::gpu(4)],
                    staged: false,
                },
                LayerKv {
                    blocks: vec![BlockId::host(2), BlockId::gpu(0), BlockId::host(5)],
                    staged: true,
                },
            ],
            sampling: Sampling {
                temperature: 0.7,
                top_p: 0.9,
                seed: 11,
            },
            output_index: 5,
            want_logits: true,
        };
        let copies = vec![CopyOp {
            src: BlockId::gpu(3),
            dst: BlockId::host(8),
        }];
        let back = plan_from_wire(&copies_to_wire(&copies), &[item_to_wire(&item)]).unwrap();
        assert_eq!(
            back,
            StepPlan {
                copies,
                items: vec![item]
            }
        );
    }

    #[test]
    fn an_unknown_tier_is_refused() {
        let bad = (
            WireBlock { tier: 2, index: 0 },
            WireBlock { tier: 0, index: 0 },
        );
        let err = plan_from_wire(&[bad], &[]).unwrap_err();
        assert!(err.contains("tier 2"), "{err}");
    }
}
