//! The figures of an HTTP bench run, computed from its records, and the table that shows them.

use super::client::{Failure, Outcome, Record};
use crate::bench::stats::percentile;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Quantiles {
    /// Nearest-rank quantiles; all 0 for an empty set.
    fn of(mut v: Vec<f64>) -> Self {
        Quantiles {
            p50: percentile(&mut v, 50.0),
            p90: percentile(&mut v, 90.0),
            p99: percentile(&mut v, 99.0),
        }
    }
}

/// The `Retry-After` of the 429 answers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryAfter {
    pub p50_s: f64,
    pub max_s: f64,
    /// 429 answers without a numeric `Retry-After`.
    pub missing: u64,
}

/// The targets a request must meet to count for attainment and goodput.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SloTargets {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
}

impl SloTargets {
    /// Completed, TTFT within target (its end-to-end time when no token came), and TPOT within
    /// target (or a single output token).
    pub fn met(&self, r: &Record) -> bool {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        r.outcome == Outcome::Completed
            && ms(r.ttft.unwrap_or(r.e2e)) <= self.ttft_ms
            && r.tpot.is_none_or(|t| ms(t) <= self.tpot_ms)
    }
}

/// The figures of a run. Field names are the bench's JSON contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Arrivals the Poisson schedule produced within the duration.
    pub arrivals: u64,
    /// Arrivals sent (the others were dropped at `--max-inflight`).
    pub sent: u64,
    /// Sent requests whose stream reached `data: [DONE]`.
    pub completed: u64,
    /// Sent requests that failed (any status but 2xx and 429, errors, timeouts).
    pub failed: u64,
    /// Sent requests answered 429.
    pub rejected: u64,
    /// Arrivals not sent because `--max-inflight` requests were in flight.
    pub dropped: u64,
    /// Failed requests by cause: `http_<status>`, `timeout`, `connect`, `transport`,
    /// `stream_error`, `malformed`, `truncated`, `interrupted`.
    pub failed_by_cause: BTreeMap<String, u64>,
    /// The first message seen for each cause.
    pub failure_examples: BTreeMap<String, String>,
    pub retry_after: RetryAfter,
    /// Time to first token of completed requests, ms (0 when none completed, as below).
    pub ttft_ms: Quantiles,
    /// Mean time per output token after the first, of completed requests with two or more, ms.
    pub tpot_ms: Quantiles,
    /// Sending to `[DONE]`, completed requests, ms.
    pub e2e_ms: Quantiles,
    /// Output tokens of completed requests.
    pub output_tokens: u64,
    /// `output_tokens` over `elapsed_s`.
    pub throughput_tok_s: f64,
    /// Sent requests that completed within both SLO targets.
    pub slo_met: u64,
    /// `slo_met` over `sent`: rejected and failed requests count as misses.
    pub slo_attainment: f64,
    /// `slo_met` over `elapsed_s`.
    pub goodput_req_s: f64,
    /// Responses by `x-strata-instance` header (any status).
    pub instances: BTreeMap<String, u64>,
    /// The `x-strata-routing-us` headers, µs.
    pub routing_us: Quantiles,
    /// Responses that carried `x-strata-routing-us`.
    pub routing_samples: u64,
    /// From the start of the run to the end of the last request, seconds.
    pub elapsed_s: f64,
}

impl Report {
    pub fn new(
        records: &[Record],
        arrivals: u64,
        dropped: u64,
        elapsed: Duration,
        slo: &SloTargets,
    ) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let done: Vec<&Record> = records
            .iter()
            .filter(|r| r.outcome == Outcome::Completed)
            .collect();
        let mut failed_by_cause = BTreeMap::new();
        let mut failure_examples = BTreeMap::new();
        let mut retry_after = Vec::new();
        let mut missing = 0;
        for r in records {
            match &r.outcome {
                Outcome::Completed => {}
                Outcome::Rejected { retry_after_s } => match retry_after_s {
                    Some(s) => retry_after.push(*s),
                    None => missing += 1,
                },
                Outcome::Failed { failure, detail } => {
                    let key = failure.key();
                    *failed_by_cause.entry(key.clone()).or_insert(0) += 1;
                    failure_examples
                        .entry(key)
                        .or_insert_with(|| detail.clone());
                }
            }
        }
        let rejected = retry_after.len() as u64 + missing;
        let mut instances = BTreeMap::new();
        for name in records.iter().filter_map(|r| r.instance.as_ref()) {
            *instances.entry(name.clone()).or_insert(0) += 1;
        }
        let routing: Vec<f64> = records.iter().filter_map(|r| r.routing_us).collect();
        let output_tokens = done.iter().map(|r| r.output_tokens).sum();
        let slo_met = records.iter().filter(|r| slo.met(r)).count() as u64;
        let elapsed_s = elapsed.as_secs_f64();
        let per_s = |x: f64| if elapsed_s > 0.0 { x / elapsed_s } else { 0.0 };
        let sent = records.len() as u64;
        Report {
            arrivals,
            sent,
            completed: done.len() as u64,
            failed: failed_by_cause.values().sum(),
            rejected,
            dropped,
            failed_by_cause,
            failure_examples,
            retry_after: RetryAfter {
                p50_s: percentile(&mut retry_after.clone(), 50.0),
                max_s: retry_after.iter().copied().fold(0.0, f64::max),
                missing,
            },
            ttft_ms: Quantiles::of(done.iter().filter_map(|r| r.ttft).map(ms).collect()),
            tpot_ms: Quantiles::of(done.iter().filter_map(|r| r.tpot).map(ms).collect()),
            e2e_ms: Quantiles::of(done.iter().map(|r| ms(r.e2e)).collect()),
            output_tokens,
            throughput_tok_s: per_s(output_tokens as f64),
            slo_met,
            slo_attainment: if sent > 0 {
                slo_met as f64 / sent as f64
            } else {
                0.0
            },
            goodput_req_s: per_s(slo_met as f64),
            instances,
            routing_samples: routing.len() as u64,
            routing_us: Quantiles::of(routing),
            elapsed_s,
        }
    }

    /// Whether the invariants between the counts hold.
    pub fn validate(&self) -> bool {
        self.completed + self.failed + self.rejected == self.sent
            && self.sent + self.dropped == self.arrivals
            && self.slo_met <= self.completed
    }

    /// The human table, on stdout.
    pub fn print(&self, slo: &SloTargets) {
        println!(
            "\nrequests     {} arrivals: {} sent, {} completed, {} failed, {} rejected (429), {} dropped (max in flight)",
            self.arrivals, self.sent, self.completed, self.failed, self.rejected, self.dropped
        );
        let q = |name: &str, unit: &str, q: &Quantiles| {
            println!(
                "{name:<12} p50 {:>9.1} {unit}   p90 {:>9.1} {unit}   p99 {:>9.1} {unit}",
                q.p50, q.p90, q.p99
            );
        };
        if self.completed == 0 {
            println!("latency      no request completed");
        } else {
            q("TTFT", "ms", &self.ttft_ms);
            q("TPOT", "ms", &self.tpot_ms);
            q("end-to-end", "ms", &self.e2e_ms);
        }
        println!(
            "throughput   {:.1} output tokens/s ({} tokens over {:.1} s)",
            self.throughput_tok_s, self.output_tokens, self.elapsed_s
        );
        println!(
            "SLO          TTFT ≤ {:.0} ms and TPOT ≤ {:.0} ms: {} of {} sent = {:.1}% attainment; goodput {:.2} req/s",
            slo.ttft_ms,
            slo.tpot_ms,
            self.slo_met,
            self.sent,
            100.0 * self.slo_attainment,
            self.goodput_req_s
        );
        if !self.instances.is_empty() {
            let list: Vec<String> = self
                .instances
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            println!("instances    {}", list.join(", "));
        }
        if self.routing_samples > 0 {
            println!(
                "routing      p50 {:.0} µs   p99 {:.0} µs   ({} responses)",
                self.routing_us.p50, self.routing_us.p99, self.routing_samples
            );
        }
        if self.rejected > 0 {
            println!(
                "429s         {}: Retry-After p50 {:.1} s, max {:.1} s, {} without one",
                self.rejected,
                self.retry_after.p50_s,
                self.retry_after.max_s,
                self.retry_after.missing
            );
        }
        for (cause, n) in &self.failed_by_cause {
            let example = self.failure_examples.get(cause).map_or("", String::as_str);
            println!("failed       {cause}: {n}  e.g. {example}");
        }
    }
}

/// A record for a request whose task ended without one (it panicked): a failure.
pub fn lost(detail: String) -> Record {
    Record {
        outcome: Outcome::Failed {
            failure: Failure::Transport,
            detail,
        },
        ttft: None,
        tpot: None,
        e2e: Duration::ZERO,
        output_tokens: 0,
        instance: None,
        routing_us: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(ttft_ms: u64, tpot_ms: Option<u64>, tokens: u64, instance: &str) -> Record {
        Record {
            outcome: Outcome::Completed,
            ttft: Some(Duration::from_millis(ttft_ms)),
            tpot: tpot_ms.map(Duration::from_millis),
            e2e: Duration::from_millis(ttft_ms + tpot_ms.unwrap_or(0) * tokens),
            output_tokens: tokens,
            instance: Some(instance.into()),
            routing_us: Some(100.0),
        }
    }

    #[test]
    fn counts_attainment_and_goodput() {
        let slo = SloTargets {
            ttft_ms: 500.0,
            tpot_ms: 50.0,
        };
        let mut records = vec![
            completed(100, Some(20), 10, "a"), // meets both
            completed(100, None, 1, "b"),      // one token: meets
            completed(900, Some(20), 10, "a"), // TTFT miss
            completed(100, Some(80), 10, "b"), // TPOT miss
        ];
        records.push(Record {
            outcome: Outcome::Rejected {
                retry_after_s: Some(2.0),
            },
            ..lost(String::new())
        });
        records.push(Record {
            outcome: Outcome::Rejected {
                retry_after_s: None,
            },
            ..lost(String::new())
        });
        records.push(Record {
            outcome: Outcome::Failed {
                failure: Failure::Status(503),
                detail: "down".into(),
            },
            instance: Some("a".into()),
            ..lost(String::new())
        });
        let r = Report::new(&records, 9, 2, Duration::from_secs(2), &slo);
        assert!(r.validate(), "{r:?}");
        assert_eq!((r.sent, r.completed, r.failed, r.rejected), (7, 4, 1, 2));
        assert_eq!(r.slo_met, 2);
        assert!((r.slo_attainment - 2.0 / 7.0).abs() < 1e-12);
        assert!((r.goodput_req_s - 1.0).abs() < 1e-12);
        assert_eq!(r.output_tokens, 31);
        assert!((r.throughput_tok_s - 15.5).abs() < 1e-12);
        assert_eq!(r.failed_by_cause["http_503"], 1);
        assert_eq!(r.failure_examples["http_503"], "down");
        assert_eq!(r.instances["a"], 3);
        assert_eq!(r.instances["b"], 2);
        assert_eq!(r.retry_after.max_s, 2.0);
        assert_eq!(r.retry_after.missing, 1);
        assert_eq!(r.ttft_ms.p50, 100.0);
        assert_eq!(r.ttft_ms.p99, 900.0);
        assert_eq!(r.routing_samples, 4);
    }

    #[test]
    fn empty_run_is_all_zero() {
        let slo = SloTargets {
            ttft_ms: 1.0,
            tpot_ms: 1.0,
        };
        let r = Report::new(&[], 0, 0, Duration::ZERO, &slo);
        assert!(r.validate());
        assert_eq!(r.slo_attainment, 0.0);
        assert_eq!(r.throughput_tok_s, 0.0);
    }
}
