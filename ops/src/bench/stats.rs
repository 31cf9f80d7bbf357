//! Percentiles and the per-mode report of the engine bench.

use serde::Serialize;
use strata_node::engine::replay::RequestRecord;
use strata_node::sched::AdmissionStops;

/// Nearest-rank percentile of `v` (sorted in place); 0 for an empty set.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
}

impl Quantiles {
    fn of(mut v: Vec<f64>) -> Self {
        Quantiles {
            p50: percentile(&mut v, 50.0),
            p99: percentile(&mut v, 99.0),
        }
    }
}

/// Totals over the steps of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTotals {
    pub steps: u64,
    pub decode_steps: u64,
    pub decodes: u64,
    pub transfer_bytes: u64,
    /// Runs of consecutive blocks the plans' copies were issued as, and the bytes the copies
    /// moved across tiers.
    pub copy_runs: u64,
    pub copy_bytes: u64,
    /// Decodes that streamed offloaded layers through staging; the bytes of host blocks that
    /// staged layers (streamed decodes and staged prefills) read, and the runs of consecutive
    /// blocks those were.
    pub streamed_decodes: u64,
    pub stream_bytes: u64,
    pub stream_runs: u64,
    /// Steps and seconds by kind (see [`STEP_KINDS`]).
    pub kinds: [KindTime; 4],
}

/// Steps of one kind: how many, their measured and their modelled seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct KindTime {
    pub steps: u64,
    pub measured_s: f64,
    pub modelled_s: f64,
}

/// The names of [`StepTotals::kinds`], in order: steps with a prefill, decode-only steps
/// without and with streamed layers, copy-only steps.
pub const STEP_KINDS: [&str; 4] = ["prefill", "decode", "streamed", "copies"];

impl StepTotals {
    pub fn add(&mut self, r: &strata_node::engine::StepReport) {
        if r.prefills + r.decodes > 0 || r.copies > 0 {
            self.steps += 1;
        } else {
            return;
        }
        if r.decodes > 0 {
            self.decode_steps += 1;
            self.decodes += r.decodes as u64;
        }
        self.transfer_bytes += r.transfer_bytes;
        self.copy_runs += r.copy_runs as u64;
        self.copy_bytes += r.modelled.copy_bytes;
        self.streamed_decodes += r.streamed_decodes as u64;
        self.stream_runs += r.modelled.stream_runs as u64;
        self.stream_bytes += r.modelled.transfer_bytes - r.modelled.copy_bytes;
        let kind = if r.prefills > 0 {
            0
        } else if r.streamed_decodes > 0 {
            2
        } else if r.decodes > 0 {
            1
        } else {
            3
        };
        let k = &mut self.kinds[kind];
        k.steps += 1;
        k.measured_s += r.elapsed.as_secs_f64();
        k.modelled_s += r.modelled.elapsed().as_secs_f64();
    }

    /// One line: time by step kind, measured against modelled, and the copies' runs.
    pub fn breakdown(&self) -> String {
        let kinds: Vec<String> = STEP_KINDS
            .iter()
            .zip(&self.kinds)
            .map(|(name, k)| {
                format!(
                    "{name} {} steps {:.2}s (model {:.2}s)",
                    k.steps, k.measured_s, k.modelled_s
                )
            })
            .collect();
        format!(
            "{}; copies {:.1} GB in {} runs; {} streamed decodes, streams {:.1} GB in {} runs",
            kinds.join(", "),
            self.copy_bytes as f64 / 1e9,
            self.copy_runs,
            self.streamed_decodes,
            self.stream_bytes as f64 / 1e9,
            self.stream_runs
        )
    }
}

/// One mode's results. Field names are the bench's JSON contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeReport {
    pub mode: String,
    pub ttft_ms: Quantiles,
    /// Σ time queued / Σ TTFT over completed requests.
    pub queue_share: f64,
    pub tpot_ms: Quantiles,
    /// Output tokens per second from the first arrival to the last finish.
    pub throughput_tok_s: f64,
    /// Completed requests that met both TTFT and TPOT targets, over all requests.
    pub slo_attainment: f64,
    pub ttft_attainment: f64,
    pub tpot_attainment: f64,
    pub completed: usize,
    pub rejected: usize,
    pub requests: usize,
    /// Mean layers offloaded to the host at prefill.
    pub offloaded_layers_mean: f64,
    /// Seconds of virtual time the run covered.
    pub makespan_s: f64,
    /// Seconds of wall time the run took.
    pub wall_s: f64,
    /// Engine steps that ran work.
    pub steps: u64,
    /// Mean sequences decoding per step that decoded.
    pub mean_decode_batch: f64,
    /// Bytes that crossed tiers (offload, reload, demotion, staging), GB.
    pub transfer_gb: f64,
    /// Steps in which admission stopped, by reason.
    pub admission_stops: AdmissionStops,
    /// Steps and seconds (measured and as the cost profile models them) by kind: steps with a
    /// prefill, decode-only steps without and with streamed layers, copy-only steps.
    pub step_kinds: std::collections::BTreeMap<String, KindTime>,
    /// Runs of consecutive blocks the plans' copies were issued as.
    pub copy_runs: u64,
    /// Bytes of host blocks that staged layers read (GB), and the runs of consecutive blocks
    /// they were issued as.
    pub stream_gb: f64,
    pub stream_runs: u64,
}

impl ModeReport {
    pub fn new(
        mode: &str,
        records: &[RequestRecord],
        wall_s: f64,
        steps: &StepTotals,
        admission_stops: AdmissionStops,
    ) -> Self {
        let done: Vec<&RequestRecord> = records
            .iter()
            .filter(|r| r.finished.is_some() && r.first_token.is_some())
            .collect();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let ttft: Vec<f64> = done.iter().filter_map(|r| r.ttft()).map(ms).collect();
        let tpot: Vec<f64> = done.iter().filter_map(|r| r.tpot()).map(ms).collect();
        let queued: f64 = done.iter().filter_map(|r| r.queued()).map(ms).sum();
        let ttft_sum: f64 = ttft.iter().sum();
        let start = records.iter().map(|r| r.arrival).min().unwrap_or_default();
        let end = done
            .iter()
            .filter_map(|r| r.finished)
            .max()
            .unwrap_or_default();
        let makespan_s = end.saturating_sub(start).as_secs_f64();
        let tokens: usize = done.iter().map(|r| r.tokens.len()).sum();
        let n = records.len().max(1) as f64;
        let frac = |k: usize| k as f64 / n;
        ModeReport {
            mode: mode.to_string(),
            ttft_ms: Quantiles::of(ttft),
            queue_share: if ttft_sum > 0.0 {
                queued / ttft_sum
            } else {
                0.0
            },
            tpot_ms: Quantiles::of(tpot),
            throughput_tok_s: if makespan_s > 0.0 {
                tokens as f64 / makespan_s
            } else {
                0.0
            },
            slo_attainment: frac(done.iter().filter(|r| r.met_slo()).count()),
            ttft_attainment: frac(
                done.iter()
                    .filter(|r| r.ttft().is_some_and(|t| ms(t) <= r.slo.ttft_ms))
                    .count(),
            ),
            tpot_attainment: frac(
                done.iter()
                    .filter(|r| r.tpot().is_none_or(|t| ms(t) <= r.slo.tpot_ms))
                    .count(),
            ),
            completed: done.len(),
            rejected: records.iter().filter(|r| r.rejected.is_some()).count(),
            requests: records.len(),
            offloaded_layers_mean: done.iter().map(|r| r.offloaded_layers as f64).sum::<f64>()
                / done.len().max(1) as f64,
            makespan_s,
            wall_s,
            steps: steps.steps,
            mean_decode_batch: steps.decodes as f64 / steps.decode_steps.max(1) as f64,
            transfer_gb: steps.transfer_bytes as f64 / 1e9,
            admission_stops,
            step_kinds: STEP_KINDS
                .iter()
                .zip(&steps.kinds)
                .map(|(n, k)| (n.to_string(), *k))
                .collect(),
            copy_runs: steps.copy_runs,
            stream_gb: steps.stream_bytes as f64 / 1e9,
            stream_runs: steps.stream_runs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(percentile(&mut [3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }
}
