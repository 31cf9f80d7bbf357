//! The Placer: (cluster view, request) → an instance, or a rejection. Sans-IO.
//!
//! Candidates are the healthy instances of the request's model that it has not already failed
//! on. Policies:
//! - `round_robin` — the next candidate in turn;
//! - `least_loaded` — fewest requests (waiting + running on the node, plus placed since its
//!   last report);
//! - `prefix_affinity` — the longest cached prefix, then least loaded;
//! - `predicted_ttft` (default) — the lowest predicted TTFT, and an early rejection when even
//!   that misses the request's TTFT SLO.

use crate::predict::{Prediction, predict};
use crate::view::{ClusterView, InstanceState};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use strata_transport::proto::{SloClass, kv};

/// How to choose among instances: the replicated control plane's policy type, so a policy set
/// through Raft and one read from a config file are the same value.
pub use strata_raft::state::Policy;

/// What placement needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct PlaceRequest<'a> {
    pub model: &'a str,
    /// The prompt as the node will see it (after any failover replay).
    pub tokens: &'a [u32],
    pub cache_salt: u64,
    pub slo: &'a SloClass,
    /// Instances this request already failed on.
    pub exclude: &'a [String],
    /// Reject when the best prediction misses the TTFT SLO (`predicted_ttft` only). A
    /// failover never does: the client already has part of its answer.
    pub enforce_slo: bool,
}

/// The chosen instance, with its prediction (when it had reported).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub instance: String,
    pub prediction: Option<Prediction>,
}

/// Why no instance was chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum PlaceError {
    /// No healthy candidate.
    Unavailable,
    /// `predicted_ttft`: the best candidate misses the TTFT SLO.
    Overloaded {
        best: Duration,
        retry_after: Duration,
    },
}

/// The longest `Retry-After` the placer asks for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Placer {
    policy: Policy,
    /// A node silent for longer is unhealthy.
    silence: Duration,
    next: usize,
}

impl Placer {
    pub fn new(policy: Policy, silence: Duration) -> Self {
        Placer {
            policy,
            silence,
            next: 0,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Chooses an instance for `req`, or says why none.
    pub fn place(
        &mut self,
        view: &ClusterView,
        req: &PlaceRequest<'_>,
        now: Instant,
    ) -> Result<Choice, PlaceError> {
        let candidates: Vec<&InstanceState> = view
            .instances()
            .iter()
            .filter(|i| {
                i.model == req.model
                    && !i.draining
                    && i.healthy(now, self.silence)
                    && !req.exclude.contains(&i.id)
            })
            .collect();
        if candidates.is_empty() {
            return Err(PlaceError::Unavailable);
        }
        // Hash the prompt once per block size among the candidates.
        let mut chains: HashMap<u32, Vec<u64>> = HashMap::new();
        let scored: Vec<(&InstanceState, Option<Prediction>)> = candidates
            .iter()
            .map(|&inst| {
                let bt = inst.info.as_ref().map_or(16, |i| i.block_tokens.max(1));
                let hashes = chains.entry(bt).or_insert_with(|| {
                    kv::chain(req.cache_salt, req.tokens, bt as usize, usize::MAX)
                });
                (inst, predict(inst, req.tokens.len(), hashes))
            })
            .collect();
        let pick = match self.policy {
            Policy::RoundRobin => {
                let i = self.next % scored.len();
                self.next = self.next.wrapping_add(1);
                i
            }
            Policy::LeastLoaded => argmin(&scored, |(inst, _)| load_of(inst) as f64),
            Policy::PrefixAffinity => argmin(&scored, |(inst, p)| {
                let cached = p.map_or(0, |p| p.cached_tokens);
                // Most cached first; load breaks ties.
                -(f64::from(cached)) * 1e6 + load_of(inst) as f64
            }),
            Policy::PredictedTtft => {
                let i = argmin(&scored, |(_, p)| {
                    p.map_or(f64::INFINITY, |p| p.total.as_secs_f64())
                });
                if let Some(p) = scored[i].1.filter(|_| req.enforce_slo) {
                    let slo = Duration::from_secs_f64(req.slo.ttft_ms / 1e3);
                    if p.total > slo {
                        let over = p.total - slo;
                        let retry_after =
                            Duration::from_secs(over.as_secs_f64().ceil().max(1.0) as u64)
                                .min(MAX_RETRY_AFTER);
                        return Err(PlaceError::Overloaded {
                            best: p.total,
                            retry_after,
                        });
                    }
                }
                i
            }
        };
        let (inst, prediction) = scored[pick];
        Ok(Choice {
            instance: inst.id.clone(),
            prediction,
        })
    }
}

/// Requests on an instance: the node's queue and batch, plus what this router sent since.
fn load_of(inst: &InstanceState) -> u64 {
    let reported = inst
        .load
        .as_ref()
        .map_or(0, |l| u64::from(l.waiting) + u64::from(l.running));
    reported.max(u64::from(inst.inflight))
}

/// The index of the smallest score; the first on ties.
fn argmin<T>(items: &[T], score: impl Fn(&T) -> f64) -> usize {
    let mut best = (0, f64::INFINITY);
    for (i, item) in items.iter().enumerate() {
        let s = score(item);
        if s < best.1 {
            best = (i, s);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_transport::proto::{
        CostProfile, DecodeCoeffs, LoadReport, NodeInfo, PrefillCoeffs, TransferCoeffs, WireKvEvent,
    };

    const SILENCE: Duration = Duration::from_secs(1);

    fn cost() -> CostProfile {
        CostProfile {
            prefill: PrefillCoeffs {
                a0: 0.0,
                a1: 1e-5,
                a2: 0.0,
            },
            decode: DecodeCoeffs {
                d0: 1e-4,
                d1: 0.0,
                d2: 0.0,
            },
            decode_wide: None,
            transfer: TransferCoeffs {
                t0: 0.0,
                bw_bytes_per_s: 1e10,
            },
            step_overhead_s: 0.0,
        }
    }

    fn report(wait_ms: u64, waiting: u32) -> LoadReport {
        LoadReport {
            seq: 1,
            at_us: 0,
            waiting,
            running: 0,
            waiting_prefill_tokens: 0,
            gpu_free_blocks: 100,
            host_free_blocks: 100,
            predicted_queue_wait_us: wait_ms * 1000,
            cost: cost(),
        }
    }

    fn view(now: Instant, waits_ms: &[u64]) -> ClusterView {
        let mut v = ClusterView::new(
            (0..waits_ms.len()).map(|i| (format!("n{i}"), "m".to_string(), format!("n{i}"))),
        );
        for (i, &w) in waits_ms.iter().enumerate() {
            let node = format!("n{i}");
            v.handle_hello(&node, info(&node));
            v.handle_load(&node, report(w, w as u32), now, Duration::ZERO);
        }
        v
    }

    fn info(node: &str) -> NodeInfo {
        NodeInfo {
            node: node.to_string(),
            model: "m".into(),
            executor: "sim".into(),
            vocab_size: 512,
            num_layers: 2,
            max_seq_tokens: 8192,
            block_tokens: 4,
            block_bytes: 1024,
            gpu_blocks: 100,
            host_blocks: 100,
            eos_tokens: vec![],
        }
    }

    fn req<'a>(tokens: &'a [u32], slo: &'a SloClass, exclude: &'a [String]) -> PlaceRequest<'a> {
        PlaceRequest {
            model: "m",
            tokens,
            cache_salt: 0,
            slo,
            exclude,
            enforce_slo: true,
        }
    }

    #[test]
    fn predicted_ttft_picks_the_shortest_queue_and_rejects_past_the_slo() {
        let now = Instant::now();
        let v = view(now, &[300, 20, 900]);
        let slo = SloClass::default();
        let tokens: Vec<u32> = (0..100).collect();
        let mut p = Placer::new(Policy::PredictedTtft, SILENCE);
        let c = p.place(&v, &req(&tokens, &slo, &[]), now).expect("placed");
        assert_eq!(c.instance, "n1");
        // Excluding the best moves to the next best.
        let ex = ["n1".to_string()];
        let c = p.place(&v, &req(&tokens, &slo, &ex), now).expect("placed");
        assert_eq!(c.instance, "n0");
        let tight = SloClass {
            ttft_ms: 10.0,
            ..SloClass::default()
        };
        match p.place(&v, &req(&tokens, &tight, &[]), now) {
            Err(PlaceError::Overloaded { best, retry_after }) => {
                assert!(best > Duration::from_millis(20));
                assert_eq!(retry_after, Duration::from_secs(1));
            }
            other => panic!("expected Overloaded, got {other:?}"),
        }
    }

    #[test]
    fn draining_instances_get_no_new_placements() {
        let now = Instant::now();
        let mut v = view(now, &[0, 50]);
        let spec = |i: usize, draining| crate::view::InstanceSpec {
            id: format!("n{i}"),
            model: "m".into(),
            driver: format!("n{i}"),
            workers: Vec::new(),
            draining,
        };
        v.set_instances([spec(0, true), spec(1, false)], |_| None);
        let slo = SloClass::default();
        for policy in Policy::ALL {
            let mut p = Placer::new(policy, SILENCE);
            let pick = p.place(&v, &req(&[1, 2], &slo, &[]), now).expect("placed");
            assert_eq!(pick.instance, "n1", "{policy}");
        }
        v.set_instances([spec(0, true), spec(1, true)], |_| None);
        let mut p = Placer::new(Policy::PredictedTtft, SILENCE);
        assert_eq!(
            p.place(&v, &req(&[1], &slo, &[]), now),
            Err(PlaceError::Unavailable)
        );
    }

    #[test]
    fn round_robin_cycles_and_skips_unhealthy() {
        let now = Instant::now();
        let mut v = view(now, &[0, 0, 0]);
        v.handle_disconnect("n1");
        let slo = SloClass::default();
        let mut p = Placer::new(Policy::RoundRobin, SILENCE);
        let picks: Vec<_> = (0..4)
            .map(|_| {
                p.place(&v, &req(&[1, 2, 3], &slo, &[]), now)
                    .expect("placed")
                    .instance
            })
            .collect();
        assert_eq!(picks, ["n0", "n2", "n0", "n2"]);
        let all = ["n0".to_string(), "n2".to_string()];
        assert_eq!(
            p.place(&v, &req(&[1], &slo, &all), now),
            Err(PlaceError::Unavailable)
        );
        // Silent nodes are unhealthy too.
        assert_eq!(
            p.place(&v, &req(&[1], &slo, &[]), now + 2 * SILENCE),
            Err(PlaceError::Unavailable)
        );
    }

    #[test]
    fn a_pipeline_with_a_dead_stage_gets_no_placements() {
        let now = Instant::now();
        // `n0+n2` is a 2-stage pipeline (n0 drives, n2 computes the later layers); n1 is a
        // single node with the longer queue.
        let mut v = ClusterView::default();
        let spec = |nodes: &[&str]| crate::view::InstanceSpec {
            id: nodes.join("+"),
            model: "m".into(),
            driver: nodes[0].into(),
            workers: nodes[1..].iter().map(|n| n.to_string()).collect(),
            draining: false,
        };
        v.set_instances([spec(&["n0", "n2"]), spec(&["n1"])], |_| None);
        for (node, wait_ms) in [("n0", 0), ("n1", 50), ("n2", 0)] {
            v.handle_hello(node, info(node));
            v.handle_load(node, report(wait_ms, 0), now, Duration::ZERO);
        }
        let slo = SloClass::default();
        let mut p = Placer::new(Policy::PredictedTtft, SILENCE);
        let pick = |p: &mut Placer, v: &ClusterView, now| {
            p.place(v, &req(&[1, 2], &slo, &[]), now)
                .expect("placed")
                .instance
        };
        assert_eq!(pick(&mut p, &v, now), "n0+n2");
        v.handle_disconnect("n2");
        assert_eq!(pick(&mut p, &v, now), "n1", "the pipeline lost a stage");
        v.handle_hello("n2", info("n2"));
        v.handle_load("n2", report(0, 0), now, Duration::ZERO);
        assert_eq!(pick(&mut p, &v, now), "n0+n2", "the stage is back");
        // n2 falls silent while n0 and n1 keep reporting.
        let later = now + SILENCE + Duration::from_millis(1);
        v.handle_load("n0", report(0, 0), later, Duration::ZERO);
        v.handle_load("n1", report(50, 0), later, Duration::ZERO);
        assert_eq!(pick(&mut p, &v, later), "n1", "a silent stage");
    }

    #[test]
    fn least_loaded_and_prefix_affinity() {
        let now = Instant::now();
        let mut v = view(now, &[5, 1, 3]);
        let slo = SloClass::default();
        let tokens: Vec<u32> = (0..16).collect();
        let mut ll = Placer::new(Policy::LeastLoaded, SILENCE);
        assert_eq!(
            ll.place(&v, &req(&tokens, &slo, &[]), now)
                .expect("placed")
                .instance,
            "n1"
        );
        // n2 holds the whole prompt's first two blocks on both layers.
        let hashes = kv::chain(0, &tokens, 4, usize::MAX);
        let ev: Vec<_> = hashes[..2]
            .iter()
            .flat_map(|&hash| {
                (0..2).map(move |layer| WireKvEvent::Stored {
                    tier: 0,
                    hash,
                    layer,
                })
            })
            .collect();
        v.handle_kv_events("n2", &ev);
        let mut pa = Placer::new(Policy::PrefixAffinity, SILENCE);
        let c = pa.place(&v, &req(&tokens, &slo, &[]), now).expect("placed");
        assert_eq!(c.instance, "n2");
        assert_eq!(c.prediction.map(|p| p.cached_tokens), Some(8));
    }

    #[test]
    fn policy_names_parse() {
        for (s, p) in [
            ("round_robin", Policy::RoundRobin),
            ("least_loaded", Policy::LeastLoaded),
            ("prefix_affinity", Policy::PrefixAffinity),
            ("predicted_ttft", Policy::PredictedTtft),
        ] {
            assert_eq!(s.parse::<Policy>(), Ok(p));
        }
        assert!("fastest".parse::<Policy>().is_err());
    }
}
