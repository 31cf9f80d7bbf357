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

/// Per layer, an optional span on one stream: an event where it starts and one where it ends.
struct Spans {
    start: Vec<Event>,
    end: Vec<Event>,
    used: Vec<bool>,
}

impl Spans {
    fn new(n: usize) -> Result<Spans, ExecError> {
        let v = || {
            (0..n)
                .map(|_| Event::new(true))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Spans {
            start: v()?,
            end: v()?,
            used: vec![false; n],
        })
    }

    fn clear(&mut self) {
        self.used.iter_mut().for_each(|u| *u = false);
    }

    fn start(&mut self, i: usize, stream: &Stream) -> Result<(), ExecError> {
        self.used[i] = true;
        self.start[i].record(stream)
    }

    fn end(&self, i: usize, stream: &Stream) -> Result<(), ExecError> {
        self.end[i].record(stream)
    }

    fn used(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.used.len()).filter(|&i| self.used[i])
    }

    /// Microseconds from `start[a]` to `end[b]`.
    fn us(&self, a: usize, b: usize) -> Result<f64, ExecError> {
        self.end[b]
            .since(&self.start[a])
            .map(|ms| f64::from(ms) * 1e3)
    }

    /// The spans' summed length, in microseconds.
    fn total_us(&self) -> Result<f64, ExecError> {
        self.used().map(|i| self.us(i, i)).sum()
    }
}

/// The timing events of one step (see the module doc).
pub(crate) struct StepTrace {
    /// Compute at the step's entry waits (one span).
    entry: Spans,
    /// Per layer: compute from reaching the layer's waits to passing them.
    wait: Spans,
    /// Per layer: the stage-in from passing its own waits to the end of its copies.
    stage_in: Spans,
    /// Per layer: the stage-out from passing its wait to the end of its copies.
    stage_out: Spans,
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
        Ok(Some(StepTrace {
            entry: Spans::new(1)?,
            wait: Spans::new(layers)?,
            stage_in: Spans::new(layers)?,
            stage_out: Spans::new(layers)?,
            in_bytes: 0,
        }))
    }

    /// Compute reaches the step's entry waits (call before them, on the compute stream).
    pub(crate) fn step_begins(&mut self, compute: &Stream) -> Result<(), ExecError> {
        for s in [&mut self.wait, &mut self.stage_in, &mut self.stage_out] {
            s.clear();
        }
        self.in_bytes = 0;
        self.entry.start(0, compute)
    }

    /// Compute has passed the step's entry waits.
    pub(crate) fn entry_passed(&self, compute: &Stream) -> Result<(), ExecError> {
        self.entry.end(0, compute)
    }

    /// Compute reaches layer `l`'s waits.
    pub(crate) fn layer_waits(&mut self, l: usize, compute: &Stream) -> Result<(), ExecError> {
        self.wait.start(l, compute)
    }

    /// Compute has passed layer `l`'s waits.
    pub(crate) fn layer_waited(&self, l: usize, compute: &Stream) -> Result<(), ExecError> {
        self.wait.end(l, compute)
    }

    /// Layer `l`'s stage-in starts on `stream` (after its waits).
    pub(crate) fn stage_in_starts(&mut self, l: usize, stream: &Stream) -> Result<(), ExecError> {
        self.stage_in.start(l, stream)
    }

    /// Layer `l`'s stage-in has been issued on `stream`, moving `bytes`.
    pub(crate) fn stage_in_issued(
        &mut self,
        l: usize,
        stream: &Stream,
        bytes: u64,
    ) -> Result<(), ExecError> {
        self.in_bytes += bytes;
        self.stage_in.end(l, stream)
    }

    /// Layer `l`'s stage-out starts on `stream` (after its wait for the layer's attention).
    pub(crate) fn stage_out_starts(&mut self, l: usize, stream: &Stream) -> Result<(), ExecError> {
        self.stage_out.start(l, stream)
    }

    /// Layer `l`'s stage-out has been issued on `stream`.
    pub(crate) fn stage_out_issued(&self, l: usize, stream: &Stream) -> Result<(), ExecError> {
        self.stage_out.end(l, stream)
    }

    /// Reads the step's events. Call after compute has synchronized: compute waited for every
    /// stage-in, so their events have completed; this waits for the last stage-out (the
    /// stage-outs share one stream, so the others have ended before it).
    pub(crate) fn figures(&self) -> Result<TraceFigures, ExecError> {
        if let Some(last) = self.stage_out.used().last() {
            self.stage_out.end[last].sync()?;
        }
        let staged: Vec<usize> = self.stage_in.used().collect();
        let in_span_us = match (staged.first(), staged.last()) {
            (Some(&first), Some(&last)) => self.stage_in.us(first, last)?,
            _ => 0.0,
        };
        Ok(TraceFigures {
            entry_wait_us: self.entry.us(0, 0)?,
            stall_us: self.wait.total_us()?,
            in_busy_us: self.stage_in.total_us()?,
            in_span_us,
            in_bytes: self.in_bytes,
            out_busy_us: self.stage_out.total_us()?,
        })
    }
}
