//! The TTFT predictor (DESIGN.md, Router):
//!
//! `TTFT = (queue_wait + prefill(uncached tokens) + Σ cached host blocks · load_time) · correction + rtt`
//!
//! - `queue_wait`: the node's own estimate from its last load report, plus the prefill of the
//!   prompt tokens this router placed there since that report (the node has not counted them).
//! - `prefill`: the node's fitted `CostProfile` for the tokens its prefix cache does not hold.
//! - cached KV on the host tier must come back to the GPU: its bytes at the profile's copy rate.
//! - `correction`: the instance's observed / predicted TTFT ratio, an EWMA (see `view`).
//! - `rtt`: the QUIC round trip to the driver.

use crate::view::InstanceState;
use std::time::Duration;

/// A prediction for one request on one instance, with its parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub queue: Duration,
    pub prefill: Duration,
    pub load: Duration,
    pub rtt: Duration,
    /// Prompt tokens the instance's prefix cache holds (on any tier, every layer).
    pub cached_tokens: u32,
    /// The corrected total: what placement compares.
    pub total: Duration,
}

/// Predicts the TTFT of a prompt of `prompt_len` tokens whose full-block hashes are `hashes`
/// (as [`strata_transport::proto::kv::chain`] computes them with the instance's block size).
/// `None` when the instance has not reported yet.
pub fn predict(inst: &InstanceState, prompt_len: usize, hashes: &[u64]) -> Option<Prediction> {
    let info = inst.info.as_ref()?;
    let load = inst.load.as_ref()?;
    let layers = info.num_layers as usize;
    let cost = &load.cost;

    // The cached prefix: full blocks present on every layer, on some tier.
    let (mut cached_blocks, mut host_layer_blocks) = (0usize, 0u64);
    for &h in hashes {
        let (gpu, host) = inst.cached_layers(h);
        if (gpu + host) < info.num_layers {
            break;
        }
        cached_blocks += 1;
        host_layer_blocks += u64::from(host.min(info.num_layers));
    }
    // The node recomputes at least the last prompt token, to sample from it.
    let cached = (cached_blocks * info.block_tokens as usize).min(prompt_len.saturating_sub(1));
    let new = prompt_len - cached;

    let queue_s = load.predicted_queue_wait_us as f64 / 1e6
        + if inst.placed_tokens_since_report > 0 {
            cost.prefill_s(inst.placed_tokens_since_report as usize, 0, layers)
        } else {
            0.0
        };
    let prefill_s = cost.prefill_s(new, cached, layers);
    let load_s = if host_layer_blocks > 0 {
        cost.transfer_s(host_layer_blocks * info.block_bytes)
    } else {
        0.0
    };
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let body = (queue_s + prefill_s + load_s) * inst.correction;
    Some(Prediction {
        queue: secs(queue_s),
        prefill: secs(prefill_s),
        load: secs(load_s),
        rtt: inst.rtt,
        cached_tokens: cached as u32,
        total: secs(body) + inst.rtt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::ClusterView;
    use std::time::Instant;
    use strata_transport::proto::{
        CostProfile, DecodeCoeffs, LoadReport, NodeInfo, PrefillCoeffs, TransferCoeffs,
        WireKvEvent, kv,
    };

    fn cost() -> CostProfile {
        CostProfile {
            prefill: PrefillCoeffs {
                a0: 1e-4,
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
                t0: 1e-5,
                bw_bytes_per_s: 1e9,
            },
            step_overhead_s: 0.0,
        }
    }

    fn setup() -> ClusterView {
        let mut v = ClusterView::new([("n".into(), "m".into(), "n".into())]);
        v.handle_hello(
            "n",
            NodeInfo {
                node: "n".into(),
                model: "m".into(),
                executor: "sim".into(),
                vocab_size: 512,
                num_layers: 4,
                max_seq_tokens: 8192,
                block_tokens: 16,
                block_bytes: 1 << 20,
                gpu_blocks: 100,
                host_blocks: 100,
                eos_tokens: vec![],
            },
        );
        v.handle_load(
            "n",
            LoadReport {
                seq: 1,
                at_us: 0,
                waiting: 1,
                running: 0,
                waiting_prefill_tokens: 100,
                gpu_free_blocks: 100,
                host_free_blocks: 100,
                predicted_queue_wait_us: 50_000,
                cost: cost(),
            },
            Instant::now(),
            Duration::from_micros(200),
        );
        v
    }

    #[test]
    fn sums_queue_prefill_and_rtt() {
        let v = setup();
        let p = predict(&v.instances()[0], 1000, &[]).expect("reported");
        // prefill = 4 layers · (1e-4 + 1e-5 · 1000) = 0.0404 s
        assert!((p.prefill.as_secs_f64() - 0.0404).abs() < 1e-9, "{p:?}");
        assert_eq!(p.queue, Duration::from_millis(50));
        assert_eq!(p.cached_tokens, 0);
        assert_eq!(p.total, p.queue + p.prefill + Duration::from_micros(200));
    }

    #[test]
    fn cached_prefix_shortens_prefill_and_host_blocks_cost_a_load() {
        let mut v = setup();
        let prompt: Vec<u32> = (0..64).collect();
        let hashes = kv::chain(0, &prompt, 16, usize::MAX);
        // Two blocks cached on every layer: the first all on GPU, the second half on host.
        let mut ev = Vec::new();
        for layer in 0..4 {
            ev.push(WireKvEvent::Stored {
                tier: 0,
                hash: hashes[0],
                layer,
            });
            ev.push(WireKvEvent::Stored {
                tier: u8::from(layer >= 2),
                hash: hashes[1],
                layer,
            });
        }
        // The third block only on 3 layers: not a hit.
        for layer in 0..3 {
            ev.push(WireKvEvent::Stored {
                tier: 0,
                hash: hashes[2],
                layer,
            });
        }
        v.handle_kv_events("n", &ev);
        let p = predict(&v.instances()[0], 64, &hashes).expect("reported");
        assert_eq!(p.cached_tokens, 32);
        let expect_prefill = 4.0 * (1e-4 + 1e-5 * 32.0);
        assert!((p.prefill.as_secs_f64() - expect_prefill).abs() < 1e-9);
        let expect_load = 1e-5 + 2.0 * (1 << 20) as f64 / 1e9;
        assert!((p.load.as_secs_f64() - expect_load).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn placed_tokens_and_correction_raise_the_prediction() {
        let mut v = setup();
        let base = predict(&v.instances()[0], 1000, &[])
            .expect("reported")
            .total;
        v.handle_placed("n", 4000);
        let queued = predict(&v.instances()[0], 1000, &[])
            .expect("reported")
            .total;
        assert!(queued > base);
        for _ in 0..30 {
            v.handle_first_token("n", Duration::from_millis(10), Duration::from_millis(40));
        }
        let corrected = predict(&v.instances()[0], 1000, &[])
            .expect("reported")
            .total;
        assert!(corrected > queued);
    }
}
