//! Drives an [`Engine`] through timed requests on a virtual clock.
//!
//! Time advances by each step's `elapsed` (measured on `cpu`, modelled on `sim`) and jumps over
//! idle gaps to the next arrival, so a trace replays as fast as the executor computes while
//! every latency is what the engine would have shown in real time.

use super::{Engine, StepReport};
use crate::sched::{Event, FinishReason, Request, SeqId, SubmitError};
use std::collections::HashMap;
use std::time::Duration;
use strata_transport::proto::SloClass;

/// What happened to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub id: SeqId,
    pub prompt_tokens: usize,
    pub slo: SloClass,
    pub arrival: Duration,
    pub admitted: Option<Duration>,
    pub first_token: Option<Duration>,
    pub finished: Option<Duration>,
    pub reason: Option<FinishReason>,
    pub offloaded_layers: usize,
    pub cached_tokens: usize,
    pub tokens: Vec<u32>,
    /// Per output token, when the request asked for logits.
    pub logits: Vec<Vec<f32>>,
    /// Refused at submission.
    pub rejected: Option<SubmitError>,
}

impl RequestRecord {
    fn new(req: &Request) -> Self {
        RequestRecord {
            id: req.id,
            prompt_tokens: req.prompt.len(),
            slo: req.slo.clone(),
            arrival: req.arrival,
            admitted: None,
            first_token: None,
            finished: None,
            reason: None,
            offloaded_layers: 0,
            cached_tokens: 0,
            tokens: Vec::new(),
            logits: Vec::new(),
            rejected: None,
        }
    }

    /// Time to first token.
    pub fn ttft(&self) -> Option<Duration> {
        Some(self.first_token?.saturating_sub(self.arrival))
    }

    /// Time spent waiting for admission.
    pub fn queued(&self) -> Option<Duration> {
        Some(self.admitted?.saturating_sub(self.arrival))
    }

    /// Mean time per output token after the first (`None` for fewer than two tokens).
    pub fn tpot(&self) -> Option<Duration> {
        let n = self.tokens.len();
        if n < 2 {
            return None;
        }
        Some(self.finished?.saturating_sub(self.first_token?) / (n as u32 - 1))
    }

    /// Met both its TTFT and TPOT targets (TPOT vacuously with one token).
    pub fn met_slo(&self) -> bool {
        let ttft_ok = self
            .ttft()
            .is_some_and(|t| t.as_secs_f64() * 1e3 <= self.slo.ttft_ms);
        let tpot_ok = self
            .tpot()
            .is_none_or(|t| t.as_secs_f64() * 1e3 <= self.slo.tpot_ms);
        ttft_ok && tpot_ok && matches!(self.reason, Some(FinishReason::Length | FinishReason::Stop))
    }
}

/// A replay that could not finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    /// The engine had work but planned nothing, with no arrival left to wait for.
    #[error("the engine stalled at {at:?} with {waiting} waiting and {running} running")]
    Stalled {
        at: Duration,
        waiting: usize,
        running: usize,
    },
    /// More steps than the bound allowed.
    #[error("no end after {0} steps")]
    TooManySteps(usize),
}

/// Runs `requests` (any order) to completion. `on_step` sees every step (progress bars).
pub fn replay(
    engine: &mut Engine,
    mut requests: Vec<Request>,
    max_steps: usize,
    mut on_step: impl FnMut(Duration, &StepReport),
) -> Result<Vec<RequestRecord>, ReplayError> {
    requests.sort_by_key(|r| (r.arrival, r.id));
    let mut records: HashMap<SeqId, RequestRecord> = requests
        .iter()
        .map(|r| (r.id, RequestRecord::new(r)))
        .collect();
    let order: Vec<SeqId> = requests.iter().map(|r| r.id).collect();
    let mut pending = requests.into_iter().peekable();
    let mut now = Duration::ZERO;
    for _ in 0..max_steps {
        while let Some(r) = pending.next_if(|r| r.arrival <= now) {
            if let Err(e) = engine.submit(r.clone())
                && let Some(rec) = records.get_mut(&r.id)
            {
                rec.rejected = Some(e);
            }
        }
        if !engine.has_work() {
            match pending.peek() {
                Some(r) => {
                    now = now.max(r.arrival);
                    continue;
                }
                None => return Ok(order.iter().filter_map(|id| records.remove(id)).collect()),
            }
        }
        let report = engine.step(now);
        for event in &report.events {
            record(&mut records, event);
        }
        on_step(now, &report);
        if report.elapsed.is_zero() && report.prefills + report.decodes == 0 {
            match pending.peek() {
                Some(r) => now = now.max(r.arrival),
                None => {
                    return Err(ReplayError::Stalled {
                        at: now,
                        waiting: engine.scheduler().waiting_len(),
                        running: engine.scheduler().running_len(),
                    });
                }
            }
        }
        now += report.elapsed;
    }
    Err(ReplayError::TooManySteps(max_steps))
}

fn record(records: &mut HashMap<SeqId, RequestRecord>, event: &Event) {
    match event {
        Event::Admitted {
            seq,
            at,
            offloaded_layers,
            cached_tokens,
        } => {
            if let Some(r) = records.get_mut(seq) {
                r.admitted = Some(*at);
                r.offloaded_layers = *offloaded_layers;
                r.cached_tokens = *cached_tokens;
            }
        }
        Event::Token {
            seq,
            token,
            at,
            logits,
            ..
        } => {
            if let Some(r) = records.get_mut(seq) {
                r.first_token.get_or_insert(*at);
                r.tokens.push(*token);
                if let Some(l) = logits {
                    r.logits.push(l.clone());
                }
            }
        }
        Event::Finished {
            seq, reason, at, ..
        } => {
            if let Some(r) = records.get_mut(seq) {
                r.finished = Some(*at);
                r.reason = Some(reason.clone());
            }
        }
    }
}
