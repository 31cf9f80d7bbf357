//! A synthetic long-context workload: Poisson arrivals, uniform prompt and output lengths.

use std::time::Duration;
use strata_node::model::rng::Rng;
use strata_node::sched::Request;
use strata_transport::proto::{RequestId, SloClass};

/// The shape of a workload.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Workload {
    pub requests: usize,
    pub rate_per_s: f64,
    pub prompt_min: usize,
    pub prompt_max: usize,
    pub output_min: usize,
    pub output_max: usize,
    pub vocab_size: u32,
    pub seed: u64,
}

impl Workload {
    /// The requests, the same for a seed whatever the mode.
    pub fn generate(&self, slo: &SloClass) -> Vec<Request> {
        let mut rng = Rng::new(self.seed);
        let mut t = 0.0f64;
        // Token ids from 3 on: 0–2 are special in the byte tokenizer.
        let span = u64::from(self.vocab_size.saturating_sub(3).max(1));
        (0..self.requests as u64)
            .map(|i| {
                t += rng.exponential(self.rate_per_s);
                let prompt_len = rng.range(self.prompt_min as u64, self.prompt_max as u64);
                let out = rng.range(self.output_min as u64, self.output_max as u64);
                let prompt = (0..prompt_len)
                    .map(|_| 3 + (rng.next_u64() % span) as u32)
                    .collect();
                let mut r = Request::new(RequestId(i), prompt, out as usize);
                r.arrival = Duration::from_secs_f64(t);
                r.slo = slo.clone();
                r
            })
            .collect()
    }

    pub fn mean_prompt(&self) -> f64 {
        (self.prompt_min + self.prompt_max) as f64 / 2.0
    }

    pub fn mean_output(&self) -> f64 {
        (self.output_min + self.output_max) as f64 / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_requests_within_bounds() {
        let w = Workload {
            requests: 200,
            rate_per_s: 4.0,
            prompt_min: 10,
            prompt_max: 20,
            output_min: 1,
            output_max: 3,
            vocab_size: 100,
            seed: 5,
        };
        let a = w.generate(&SloClass::default());
        assert_eq!(a, w.generate(&SloClass::default()));
        assert!(a.iter().all(|r| (10..=20).contains(&r.prompt.len())));
        assert!(a.iter().all(|r| (1..=3).contains(&r.max_tokens)));
        assert!(
            a.iter()
                .flat_map(|r| &r.prompt)
                .all(|&t| (3..100).contains(&t))
        );
        // Mean inter-arrival near 1/rate.
        let span = a.last().unwrap().arrival.as_secs_f64();
        assert!((span / 200.0 - 0.25).abs() < 0.06, "{span}");
    }
}
