//! `STRATA_CUDA_TRACE`: one line a step on stderr, in `key=value` fields a script can read
//! (`scripts/device/trace-engine.sh` sums them by kind of step).
//!
//! Besides the host's time to queue the step and the GPU's remaining time, timing events say
//! where a streamed step's GPU time goes:
//! - `entry_wait_us`: compute held at the step's start for earlier steps' copies or staging;
//! - `stall_us`: compute held inside the step, layer by layer, for the layer's stage-in, the
//!   staging buffer's last stage-out, or a plan copy of the layer's blocks;
//! - `in_busy_us`, `in_span_us`, `in_bytes`: the stage-ins' summed copy time, the time from
//!   the first stage-in's start to the last one's end, and their bytes (so `in_bytes /
//!   in_busy_us` is the stage-in rate, and `in_span_us − in_busy_us` the time the stage-in
//!   stream sat idle between the step's first and last stage-in);
//! - `out_busy_us`: the stage-outs' summed time from passing their wait for the layer's
//!   attention to the end of their copies. They move one block per item and layer, so much
//!   more than that block's copy time means they queued behind other device → host copies
//!   (the plan's demotions) on the copy engine; a late stage-out holds the next stage-in of
//!   its staging buffer, and compute with it.
//!
//! Timing events cost a little on every record, so they exist only when the variable is set.

use super::driver::{Event, Stream};
use crate::exec::ExecError;

/// The timing events of one step (see the module doc).
pub(crate) struct StepTrace {
    entry: [Event; 2],
    /// Per layer: compute reaches the layer's waits, and passes them.
    wait: [Vec<Event>; 2],
    /// Per layer: the stage-in starts (its own waits passed), and ends.
    stage: [Vec<Event>; 2],
    /// Per layer: the stage-out starts (its wait passed), and ends.
    out: [Vec<Event>; 2],
    waited: Vec<bool>,
    staged: Vec<bool>,
    outs: Vec<bool>,
    in_bytes: u64,
}

/// What a step's timing events measured, in microseconds and bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct TraceFigures {
    pub(crate) entry_wait_us: f64,
    pub(crate) stall_us: f64,
    pub(crate) in_busy_us: f64,
    pub(crate) in_span_us: f64,
    pub(crate) in_bytes: u64,
    pub(crate) out_busy_us: f64,
}

impl StepTrace {
    /// Timing events for `layers` layers when `STRATA_CUDA_TRACE` is set; `None` otherwise.
    pub(crate) fn from_env(layers: usize) -> Result<Option<StepTrace>, ExecError> {
        if std::env::var_os("STRATA_CUDA_TRACE").is_none() {
            return Ok(None);
        }
        let v = || {
            (0..layers)
                .map(|_| Event::new(true))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Some(StepTrace {
            entry: [Event::new(true)?, Event::new(true)?],
            wait: [v()?, v()?],
            stage: [v()?, v()?],
            out: [v()?, v()?],
            waited: vec![false; layers],
            staged: vec![false; layers],
            outs: vec![false; layers],
            in_bytes: 0,
        }))
    }

    /// Compute reaches the step's entry waits (call before them, on the compute stream).
    pub(crate) fn step_begins(&mut self, compute: &Stream) -> Result<(), ExecError> {
        self.waited.iter_mut().for_each(|w| *w = false);
        self.staged.iter_mut().for_each(|s| *s = false);
        self.outs.iter_mut().for_each(|s| *s = false);
        self.in_bytes = 0;
        self.entry[0].record(compute)
    }

    /// Compute has passed the step's entry waits.
    pub(crate) fn entry_passed(&mut self, compute: &Stream) -> Result<(), ExecError> {
        self.entry[1].record(compute)
    }

    /// Compute reaches layer `l`'s waits (`passed` is false) or passes them (`passed` true).
    pub(crate) fn layer_wait(
        &mut self,
        l: usize,
        compute: &Stream,
        passed: bool,
    ) -> Result<(), ExecError> {
        self.waited[l] = true;
        self.wait[usize::from(passed)][l].record(compute)
    }

    /// Layer `l`'s stage-in starts on `stream` (`bytes` is `None`) or has been issued there,
    /// moving `bytes`.
    pub(crate) fn stage_in(
        &mut self,
        l: usize,
        stream: &Stream,
        bytes: Option<u64>,
    ) -> Result<(), ExecError> {
        self.staged[l] = true;
        self.in_bytes += bytes.unwrap_or(0);
        self.stage[usize::from(bytes.is_some())][l].record(stream)
    }

    /// Layer `l`'s stage-out starts on `stream` (`done` is false) or has been issued there.
    pub(crate) fn stage_out(
        &mut self,
        l: usize,
        stream: &Stream,
        done: bool,
    ) -> Result<(), ExecError> {
        self.outs[l] = true;
        self.out[usize::from(done)][l].record(stream)
    }

    /// Reads the step's events. Call after compute has synchronized: compute waited for every
    /// stage-in, so all their events have completed; this waits for the last stage-outs.
    pub(crate) fn figures(&self) -> Result<TraceFigures, ExecError> {
        let us = |end: &Event, start: &Event| end.since(start).map(|ms| f64::from(ms) * 1e3);
        let mut f = TraceFigures {
            entry_wait_us: us(&self.entry[1], &self.entry[0])?,
            in_bytes: self.in_bytes,
            ..TraceFigures::default()
        };
        for l in (0..self.waited.len()).filter(|&l| self.waited[l]) {
            f.stall_us += us(&self.wait[1][l], &self.wait[0][l])?;
        }
        let staged: Vec<usize> = (0..self.staged.len()).filter(|&l| self.staged[l]).collect();
        for &l in &staged {
            f.in_busy_us += us(&self.stage[1][l], &self.stage[0][l])?;
        }
        if let (Some(&first), Some(&last)) = (staged.first(), staged.last()) {
            f.in_span_us = us(&self.stage[1][last], &self.stage[0][first])?;
        }
        for l in (0..self.outs.len()).filter(|&l| self.outs[l]) {
            self.out[1][l].sync()?;
            f.out_busy_us += us(&self.out[1][l], &self.out[0][l])?;
        }
        Ok(f)
    }
}
