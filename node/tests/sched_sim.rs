//! Scheduler behaviour on the `sim` executor under virtual time.

use std::time::Duration;
use strata_node::engine::replay::{RequestRecord, replay};
use strata_node::engine::{Engine, EngineConfig};
use strata_node::exec::PoolSizes;
use strata_node::exec::sim::SimExecutor;
use strata_node::kv::KvLayout;
use strata_node::model::rng::Rng;
use strata_node::sched::{Event, FinishReason, Mode, Request, SchedulerConfig};
use strata_transport::proto::{
    CostProfile, DecodeCoeffs, PrefillCoeffs, RequestId, SloClass, TransferCoeffs,
};

const LAYERS: usize = 8;

fn layout() -> KvLayout {
    KvLayout {
        layers: LAYERS,
        block_tokens: 16,
        kv_heads: 8,
        head_dim: 128,
        dtype_bytes: 2,
    }
}

/// Roughly an 8B-class model on an H200, per layer.
fn gpu_like() -> CostProfile {
    CostProfile {
        prefill: PrefillCoeffs {
            a0: 2e-5,
            a1: 6.2e-7,
            a2: 1.2e-11,
        },
        decode: DecodeCoeffs {
            d0: 9e-5,
            d1: 1e-6,
            d2: 8.5e-10,
        },
        decode_wide: None,
        transfer: TransferCoeffs {
            t0: 1e-5,
            bw_bytes_per_s: 50e9,
        },
        step_overhead_s: 0.0,
    }
}

fn engine(mode: Mode, gpu_blocks: usize, staging_blocks: usize, cost: CostProfile) -> Engine {
    engine_chunked(mode, gpu_blocks, staging_blocks, cost, 0)
}

fn engine_chunked(
    mode: Mode,
    gpu_blocks: usize,
    staging_blocks: usize,
    cost: CostProfile,
    prefill_chunk_tokens: usize,
) -> Engine {
    let pools = PoolSizes {
        gpu_blocks,
        host_blocks: 10_000,
        staging_blocks,
    };
    let cfg = EngineConfig {
        sched: SchedulerConfig {
            mode,
            staging_blocks,
            watermark_blocks: LAYERS,
            prefill_chunk_tokens,
            ..Default::default()
        },
        pools,
    };
    Engine::new(
        cfg,
        layout(),
        cost,
        Box::new(SimExecutor::new(cost, layout(), 1000, 7)),
    )
    .unwrap()
}

fn req(id: u64, prompt: usize, out: usize, at_ms: u64) -> Request {
    let mut r = Request::new(
        RequestId(id),
        (0..prompt as u32).map(|t| t + id as u32 * 7919).collect(),
        out,
    );
    r.arrival = Duration::from_millis(at_ms);
    r.slo = SloClass {
        name: "t".into(),
        ttft_ms: 2_000.0,
        tpot_ms: 200.0,
        priority: 0,
    };
    r
}

fn run(e: &mut Engine, reqs: Vec<Request>) -> Vec<RequestRecord> {
    replay(e, reqs, 1_000_000, |_, _| {}).unwrap()
}

fn check_complete(recs: &[RequestRecord], outs: &[usize]) {
    for (r, &n) in recs.iter().zip(outs) {
        assert_eq!(r.reason, Some(FinishReason::Length), "{:?}", r.id);
        assert_eq!(r.tokens.len(), n, "{:?}", r.id);
    }
}

#[test]
fn layerwise_starts_long_prompts_that_baseline_queues() {
    // The GPU holds the full KV of one 4k prompt (256 blocks per layer).
    let gpu = 256 * LAYERS + 64;
    let reqs = || (0..4).map(|i| req(i, 4096, 64, 0)).collect::<Vec<_>>();
    let base = run(&mut engine(Mode::Baseline, gpu, 1024, gpu_like()), reqs());
    let lw = run(&mut engine(Mode::Layerwise, gpu, 1024, gpu_like()), reqs());
    check_complete(&base, &[64; 4]);
    check_complete(&lw, &[64; 4]);
    // Baseline: the last request waits for earlier ones to finish.
    let base_last = base[3].queued().unwrap();
    let lw_last = lw[3].queued().unwrap();
    assert!(
        base_last > lw_last * 5,
        "baseline queued {base_last:?}, layerwise {lw_last:?}"
    );
    assert!(lw.iter().any(|r| r.offloaded_layers > 0));
    assert!(base.iter().all(|r| r.offloaded_layers == 0));
    let mean = |rs: &[RequestRecord]| {
        rs.iter()
            .map(|r| r.ttft().unwrap().as_secs_f64())
            .sum::<f64>()
    };
    assert!(mean(&lw) < mean(&base));
}

#[test]
fn tpot_guard_holds_back_a_prefill_that_would_break_running_decodes() {
    let mut slow = gpu_like();
    slow.prefill.a1 *= 400.0; // an 8k prefill now takes about 20 s
    let gpu = 20_000;
    let small = |id| {
        let mut r = req(id, 64, 40, 0);
        r.slo.tpot_ms = 100.0;
        r
    };
    let reqs = || vec![small(0), req(1, 8192, 4, 5)];
    let base = run(&mut engine(Mode::Baseline, gpu, 1024, slow), reqs());
    let lw = run(&mut engine(Mode::Layerwise, gpu, 1024, slow), reqs());
    // Baseline stalls the decode with the long prefill and misses its TPOT.
    assert!(base[1].admitted.unwrap() < base[0].finished.unwrap());
    assert!(base[0].tpot().unwrap() > Duration::from_millis(100));
    // Layerwise keeps the decode within its SLO by admitting the prefill after it.
    assert!(lw[1].admitted.unwrap() >= lw[0].finished.unwrap());
    assert!(lw[0].tpot().unwrap() <= Duration::from_millis(100));
}

#[test]
fn pressure_swaps_layers_out_instead_of_recomputing() {
    // Many sequences that grow past what the GPU holds while decoding.
    let gpu = 40 * LAYERS;
    let reqs: Vec<_> = (0..6).map(|i| req(i, 100, 200, 0)).collect();
    for mode in [Mode::Baseline, Mode::Layerwise] {
        let mut e = engine(mode, gpu, 64, gpu_like());
        // Before the first finish nothing is cached, so every copy then is a swap or reload,
        // not a demotion of cache.
        let (mut swap_copies, mut prefills, mut finished) = (0usize, 0usize, false);
        let recs = replay(&mut e, reqs.clone(), 1_000_000, |_, rep| {
            if !finished {
                swap_copies += rep.copies;
            }
            prefills += rep.prefills;
            finished |= rep
                .events
                .iter()
                .any(|ev| matches!(ev, Event::Finished { .. }));
        })
        .unwrap();
        check_complete(&recs, &[200; 6]);
        assert!(
            swap_copies > 0,
            "{mode}: no swap happened before the first finish"
        );
        // One prefill per request: swapping is not recomputation.
        assert_eq!(prefills, reqs.len(), "{mode}: a prompt was prefilled again");
    }
}

#[test]
fn random_workloads_finish_every_request_exactly_once() {
    for seed in 0..12u64 {
        let mut rng = Rng::new(seed);
        let gpu = rng.range(40, 400) as usize * LAYERS;
        let staging = rng.range(0, 300) as usize;
        let n = rng.range(5, 30);
        let mut t = 0u64;
        let mut reqs = Vec::new();
        let mut outs = Vec::new();
        for i in 0..n {
            t += rng.range(0, 300);
            let prompt = rng.range(1, 30 * 16) as usize;
            let out = rng.range(1, 60) as usize;
            let mut r = req(i, prompt, out, t);
            // Shared prefixes exercise the cache.
            if rng.range(0, 1) == 0 {
                r.prompt[..prompt.min(40)]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, x)| *x = j as u32);
            }
            r.slo.priority = rng.range(0, 2) as u8;
            reqs.push(r);
            outs.push(out);
        }
        for mode in [Mode::Baseline, Mode::Layerwise] {
            let mut e = engine(mode, gpu, staging, gpu_like());
            if seed % 2 == 1 {
                e = engine_chunked(mode, gpu, staging, gpu_like(), 64);
            }
            let recs = run(&mut e, reqs.clone());
            for (r, &out) in recs.iter().zip(&outs) {
                if r.rejected.is_some() {
                    continue;
                }
                assert_eq!(
                    r.reason,
                    Some(FinishReason::Length),
                    "seed {seed} {mode} {:?}",
                    r.id
                );
                assert_eq!(r.tokens.len(), out, "seed {seed} {mode}");
            }
            assert_eq!(e.kv().validate(), Ok(()));
            assert!(!e.has_work());
        }
    }
}

#[test]
fn refuses_what_can_never_run() {
    let mut e = engine(Mode::Layerwise, 10 * LAYERS, 16, gpu_like());
    let err = e.submit(req(1, 1000, 10, 0)).unwrap_err();
    assert!(err.to_string().contains("blocks per layer"), "{err}");
    assert!(e.submit(Request::new(RequestId(2), vec![], 4)).is_err());
    assert!(e.submit(Request::new(RequestId(3), vec![1], 0)).is_err());
    e.submit(req(4, 10, 1, 0)).unwrap();
    assert!(e.submit(req(4, 10, 1, 0)).is_err());
}

#[test]
fn calibration_recovers_the_profile_it_measures() {
    use strata_node::engine::calibrate::{CalibrationPlan, calibrate};
    let truth = gpu_like();
    let mut exec = SimExecutor::new(truth, layout(), 1000, 1);
    let plan = CalibrationPlan::for_prompts(4096);
    let mut last = (0, 0);
    let (fitted, cal) = calibrate(&mut exec, layout(), 40_000, 20_000, &plan, |d, t| {
        last = (d, t)
    })
    .unwrap();
    assert_eq!(last.0, last.1);
    assert_eq!(cal.prefill.len(), plan.prefill.len());
    for (n, c) in [(3000, 0), (500, 3000)] {
        let rel = fitted.prefill_s(n, c, LAYERS) / truth.prefill_s(n, c, LAYERS) - 1.0;
        assert!(rel.abs() < 1e-3, "prefill {n}/{c}: {rel}");
    }
    let rel = fitted.decode_s(10, 20_000, LAYERS) / truth.decode_s(10, 20_000, LAYERS) - 1.0;
    assert!(rel.abs() < 1e-3, "decode: {rel}");
    let rel = fitted.transfer_s(1 << 24) / truth.transfer_s(1 << 24) - 1.0;
    assert!(rel.abs() < 1e-3, "transfer: {rel}");
}

/// An executor whose wide decode steps cost apart (as the cuda executor's cuBLAS ones do from 5
/// rows) is calibrated with the split: the fitted profile prices both sides as it does.
#[test]
fn calibration_recovers_a_split_decode() {
    use strata_node::engine::calibrate::{CalibrationPlan, calibrate};
    use strata_transport::proto::WideDecode;
    let mut truth = gpu_like();
    truth.decode.d1 = truth.decode.d0 * 0.2;
    truth.decode_wide = Some(WideDecode {
        from_batch: 5,
        d0: truth.decode.d0 * 1.5,
        d1: truth.decode.d0 * 0.02,
    });
    let mut exec = SimExecutor::new(truth, layout(), 1000, 1);
    let plan = CalibrationPlan::for_prompts(4096);
    let (fitted, cal) = calibrate(&mut exec, layout(), 40_000, 20_000, &plan, |_, _| {}).unwrap();
    assert_eq!(cal.decode_wide_from, Some(5));
    assert_eq!(fitted.decode_wide.map(|w| w.from_batch), Some(5));
    for (batch, ctx) in [
        (1, 4000),
        (3, 2000),
        (4, 4000),
        (5, 4000),
        (12, 1000),
        (48, 500),
    ] {
        let (f, t) = (
            fitted.decode_s(batch, batch * ctx, LAYERS),
            truth.decode_s(batch, batch * ctx, LAYERS),
        );
        assert!(
            (f / t - 1.0).abs() < 1e-3,
            "decode batch {batch}: {f} vs {t}"
        );
    }
}

#[test]
fn higher_priority_is_admitted_first() {
    // Room for one 2k request at a time in baseline.
    let gpu = 140 * LAYERS;
    let mut low = req(1, 2048, 32, 1);
    low.slo.priority = 0;
    let mut high = req(2, 2048, 32, 2);
    high.slo.priority = 5;
    let first = req(0, 2048, 32, 0);
    let recs = run(
        &mut engine(Mode::Baseline, gpu, 0, gpu_like()),
        vec![first, low, high],
    );
    check_complete(&recs, &[32; 3]);
    let (low, high) = (&recs[1], &recs[2]);
    assert!(
        high.admitted.unwrap() < low.admitted.unwrap(),
        "high {:?} low {:?}",
        high.admitted,
        low.admitted
    );
}
