//! Checking a plan against the executor before anything runs, so that a bad plan is an
//! `InvalidPlan` error and never an index panic halfway through a step.

use crate::exec::{ExecError, PoolSizes};
use crate::kv::{BlockId, Tier};
use crate::sched::plan::{StepPlan, WorkItem};
use std::collections::HashSet;

/// What a plan is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Layer entries an item must have: exactly this many, or (a pipeline stage, whose items
    /// carry the chain's layer slots) at least this many.
    pub(crate) layers: usize,
    pub(crate) exact_layers: bool,
    pub(crate) vocab: usize,
    /// A sequence holds at most this many positions.
    pub(crate) max_pos: usize,
    pub(crate) block_tokens: usize,
    pub(crate) pools: PoolSizes,
}

fn invalid(msg: String) -> ExecError {
    ExecError::InvalidPlan(msg)
}

impl Limits {
    fn in_pool(&self, id: BlockId) -> bool {
        let blocks = match id.tier {
            Tier::Gpu => self.pools.gpu_blocks,
            Tier::Host => self.pools.host_blocks,
        };
        (id.index as usize) < blocks
    }

    fn pool_msg(&self, id: BlockId) -> String {
        let (tier, blocks) = match id.tier {
            Tier::Gpu => ("gpu", self.pools.gpu_blocks),
            Tier::Host => ("host", self.pools.host_blocks),
        };
        format!("block {id} is outside the {tier} pool of {blocks} blocks")
    }
}

/// Checks every rule of the plan contract that the executor relies on.
pub(crate) fn validate(plan: &StepPlan, lim: &Limits) -> Result<(), ExecError> {
    for (k, c) in plan.copies.iter().enumerate() {
        for id in [c.src, c.dst] {
            if !lim.in_pool(id) {
                return Err(invalid(format!("copy {k}: {}", lim.pool_msg(id))));
            }
        }
    }
    let mut staged = vec![0usize; lim.layers];
    let mut written = HashSet::new();
    for item in &plan.items {
        validate_item(item, lim, &mut staged, &mut written)?;
    }
    for (l, &n) in staged.iter().enumerate() {
        if n > lim.pools.staging_blocks {
            return Err(invalid(format!(
                "layer {l}: items stage {n} blocks, the staging area holds {}",
                lim.pools.staging_blocks
            )));
        }
    }
    Ok(())
}

fn validate_item(
    item: &WorkItem,
    lim: &Limits,
    staged: &mut [usize],
    written: &mut HashSet<BlockId>,
) -> Result<(), ExecError> {
    let seq = item.seq;
    let n = item.tokens.len();
    if n == 0 {
        return Err(invalid(format!("{seq}: no tokens")));
    }
    if let Some(&t) = item.tokens.iter().find(|&&t| t as usize >= lim.vocab) {
        return Err(invalid(format!(
            "{seq}: token {t} is outside the vocabulary of {}",
            lim.vocab
        )));
    }
    let end = item.start_pos.saturating_add(n);
    if end > lim.max_pos {
        return Err(invalid(format!(
            "{seq}: positions {}..{end} go past the model's {} positions",
            item.start_pos, lim.max_pos
        )));
    }
    let s = item.sampling;
    if !(s.temperature >= 0.0 && s.temperature.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(invalid(format!(
            "{seq}: sampling needs temperature ≥ 0 and top_p in (0, 1], got {} and {}",
            s.temperature, s.top_p
        )));
    }
    let entries_ok = match lim.exact_layers {
        true => item.layers.len() == lim.layers,
        false => item.layers.len() >= lim.layers,
    };
    if !entries_ok {
        return Err(invalid(format!(
            "{seq}: {} layer entries for {} layers",
            item.layers.len(),
            lim.layers
        )));
    }
    let need = end.div_ceil(lim.block_tokens);
    let first_new = item.start_pos / lim.block_tokens;
    for (l, lk) in item.layers.iter().enumerate() {
        if lk.blocks.len() < need {
            return Err(invalid(format!(
                "{seq} layer {l}: {} blocks cannot hold {end} positions ({need} needed)",
                lk.blocks.len()
            )));
        }
        for &id in &lk.blocks {
            if !lim.in_pool(id) {
                return Err(invalid(format!("{seq} layer {l}: {}", lim.pool_msg(id))));
            }
            if !lk.staged && id.tier != Tier::Gpu {
                return Err(invalid(format!(
                    "{seq} layer {l}: resident layer has block {id} off the gpu tier"
                )));
            }
        }
        if lk.staged && l < staged.len() {
            staged[l] += need;
        }
        for &id in &lk.blocks[first_new..need] {
            if !written.insert(id) {
                return Err(invalid(format!(
                    "{seq} layer {l}: block {id} gets new positions twice in one step"
                )));
            }
        }
    }
    Ok(())
}
