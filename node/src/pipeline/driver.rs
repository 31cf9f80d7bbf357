//! [`PipelineExecutor`]: the driver's `Executor`. It computes stage 0's layers of each
//! micro-batch, sends the micro-batch with its activations down the chain, and gathers the
//! sampled tokens the last stage sends back.

use super::link::{ChainState, DriverLink, LinkEvent};
use super::wire;
use crate::exec::{ExecError, Executor, StageExecutor, StageInput, StageOutput, StepOutput};
use crate::sched::plan::{StepPlan, WorkItem};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use strata_transport::proto::{StageResult, StageStep};

/// Most micro-batches one step is cut into.
pub const MAX_MICRO_BATCHES: usize = 16;
/// Bytes a micro-batch's frame carries beyond its activations (items, tables), estimated per
/// item, to keep frames under the stream's limit.
const ITEM_FRAME_BYTES: usize = 64 << 10;

/// See the module doc.
pub struct PipelineExecutor {
    local: Box<dyn StageExecutor>,
    link: DriverLink,
    micro_batches: usize,
    max_frame_bytes: usize,
    result_timeout: Duration,
    /// The chain the previous step ran on.
    epoch: u64,
    step: u64,
    kv_lost: Option<String>,
}

fn device(msg: String) -> ExecError {
    ExecError::Device(format!("pipeline: {msg}"))
}

impl PipelineExecutor {
    /// `local` computes stage 0's layers; `link` reaches the rest of the chain. Steps are cut
    /// into at most `micro_batches` micro-batches, each small enough for `max_frame_bytes`;
    /// a stage that does not answer within `result_timeout` fails the step and the chain.
    pub fn new(
        local: Box<dyn StageExecutor>,
        link: DriverLink,
        micro_batches: usize,
        max_frame_bytes: usize,
        result_timeout: Duration,
    ) -> Self {
        PipelineExecutor {
            local,
            link,
            micro_batches: micro_batches.clamp(1, MAX_MICRO_BATCHES),
            max_frame_bytes,
            result_timeout,
            epoch: 0,
            step: 0,
            kv_lost: None,
        }
    }

    /// The chain's epoch now, or why it is down.
    fn chain(&self) -> Result<u64, ExecError> {
        match &*self.link.state.borrow() {
            ChainState::Up { epoch, .. } => Ok(*epoch),
            ChainState::Connecting { last_error, .. } => Err(device(format!(
                "the chain of stages is down: {}",
                last_error.as_deref().unwrap_or("not open yet")
            ))),
        }
    }

    /// Cuts `items` into groups of about equal tokens, at most `micro_batches` of them, each
    /// within the frame limit.
    fn micro_batches<'a>(&self, items: &'a [WorkItem]) -> Result<Vec<&'a [WorkItem]>, ExecError> {
        let row_bytes = 4 * self.local.hidden_size();
        let rows = wire::rows(items);
        let groups = self.micro_batches.min(items.len()).max(1);
        let target = rows.div_ceil(groups).max(1);
        let fits =
            |rows: usize, n: usize| rows * row_bytes + n * ITEM_FRAME_BYTES <= self.max_frame_bytes;
        let mut out = Vec::new();
        let (mut start, mut acc) = (0, 0);
        for (i, item) in items.iter().enumerate() {
            let n = item.tokens.len();
            if !fits(n, 1) {
                return Err(device(format!(
                    "{}: {n} tokens send {} MiB of activations, more than a stage frame holds \
                     ({} MiB); lower scheduler.prefill_chunk_tokens or raise \
                     limits.max_stage_frame_bytes",
                    item.seq,
                    (n * row_bytes) >> 20,
                    self.max_frame_bytes >> 20
                )));
            }
            if i > start && (acc >= target || !fits(acc + n, i - start + 1)) {
                out.push(&items[start..i]);
                (start, acc) = (i, 0);
            }
            acc += n;
        }
        out.push(&items[start..]);
        Ok(out)
    }

    /// Waits for the results of micro-batches `0..n` of this step.
    fn gather(&mut self, epoch: u64, n: usize) -> Result<Vec<StageResult>, ExecError> {
        let mut got: BTreeMap<u32, StageResult> = BTreeMap::new();
        let deadline = Instant::now() + self.result_timeout;
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.link.results.recv_timeout(left) {
                Ok(LinkEvent::Result(r)) if r.epoch == epoch && r.step == self.step => {
                    if let Some(why) = &r.error {
                        // The stages below the failed one did not run the step's copies:
                        // their blocks no longer match the driver's accounting.
                        self.kv_lost = Some(format!("a pipeline stage failed a step: {why}"));
                        return Err(device(why.clone()));
                    }
                    got.insert(r.micro, r);
                }
                // Left over from a step that failed or a chain that is gone.
                Ok(LinkEvent::Result(_)) => {}
                Ok(LinkEvent::Lost { epoch: e, why }) if e == epoch => {
                    self.kv_lost = Some(format!("pipeline chain lost: {why}"));
                    return Err(device(format!("the chain of stages broke: {why}")));
                }
                Ok(LinkEvent::Lost { .. }) => {}
                Err(_) => {
                    // A stage stopped answering: its KV can no longer be trusted.
                    self.link.reset.notify_one();
                    self.kv_lost = Some("pipeline chain reset: a stage stopped answering".into());
                    return Err(device(format!(
                        "{} of {n} micro-batches unanswered after {:?}",
                        n - got.len(),
                        self.result_timeout
                    )));
                }
            }
        }
        Ok(got.into_values().collect())
    }
}

impl Executor for PipelineExecutor {
    fn name(&self) -> &'static str {
        self.local.name()
    }

    fn copies_overlap_compute(&self) -> bool {
        self.local.copies_overlap_compute()
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<StepOutput, ExecError> {
        let started = Instant::now();
        let epoch = self.chain()?;
        if self.epoch != epoch {
            let first = self.epoch == 0;
            self.epoch = epoch;
            if !first {
                // A fresh chain has fresh (empty) KV on every stage but this one.
                self.kv_lost = Some("pipeline chain reopened: the stages' KV was lost".into());
                return Err(device("the chain of stages was reopened".into()));
            }
        }
        self.step += 1;
        let groups = if plan.items.is_empty() {
            vec![&plan.items[..]]
        } else {
            self.micro_batches(&plan.items)?
        };
        let mut transfer_bytes = 0;
        for (k, items) in groups.iter().enumerate() {
            let sub = StepPlan {
                copies: if k == 0 {
                    plan.copies.clone()
                } else {
                    Vec::new()
                },
                items: items.to_vec(),
            };
            let (out, bytes) = self.local.run_stage(&sub, StageInput::Tokens)?;
            transfer_bytes += bytes;
            let StageOutput::Hidden(hidden) = out else {
                return Err(device(
                    "stage 0 sampled: a chain needs at least two stages".into(),
                ));
            };
            let step = StageStep {
                epoch,
                step: self.step,
                micro: k as u32,
                copies: wire::copies_to_wire(&sub.copies),
                items: items.iter().map(wire::item_to_wire).collect(),
                hidden,
            };
            if self.link.steps.blocking_send(step).is_err() {
                return Err(device("the link task has stopped".into()));
            }
        }
        let results = self.gather(epoch, groups.len())?;
        let mut out = StepOutput::default();
        for r in results {
            transfer_bytes += r.transfer_bytes;
            out.tokens.extend(r.tokens);
            out.logits.extend(r.logits);
        }
        if out.tokens.len() != plan.items.len()
            || out
                .tokens
                .iter()
                .zip(&plan.items)
                .any(|((s, _), i)| *s != i.seq)
        {
            self.kv_lost = Some("the last pipeline stage answered out of order".into());
            return Err(device(format!(
                "the last stage returned {} tokens for {} items, or out of order",
                out.tokens.len(),
                plan.items.len()
            )));
        }
        out.transfer_bytes = transfer_bytes;
        out.elapsed = started.elapsed();
        Ok(out)
    }

    fn take_kv_lost(&mut self) -> Option<String> {
        self.kv_lost.take()
    }
}
