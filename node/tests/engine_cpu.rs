//! The engine on the cpu executor: moving KV is lossless. Greedy tokens (and logits) are the
//! same in `baseline` and `layerwise`, with no, about half, or nearly all layers offloaded at
//! prefill, whether offloaded layers are reloaded or streamed during decode.

use std::time::Duration;
use strata_node::engine::replay::{RequestRecord, replay};
use strata_node::engine::{Engine, EngineConfig};
use strata_node::exec::PoolSizes;
use strata_node::exec::cpu::CpuExecutor;
use strata_node::kv::KvLayout;
use strata_node::model::{ModelConfig, Preset, Weights};
use strata_node::sched::{Mode, Request, SchedulerConfig, StreamDecode};
use strata_transport::proto::{
    CostProfile, DecodeCoeffs, PrefillCoeffs, RequestId, TransferCoeffs,
};

const BT: usize = 16;

fn model() -> (ModelConfig, Weights) {
    let cfg = ModelConfig {
        num_layers: 8,
        ..Preset::Tiny.config()
    };
    let w = Weights::random(&cfg, 11, 0..cfg.num_layers).unwrap();
    (cfg, w)
}

fn layout(cfg: &ModelConfig) -> KvLayout {
    KvLayout::for_model(cfg, BT, 4)
}

/// A cost model where offloading always hides under prefill compute, and streaming an
/// offloaded layer during decode is free (`stream`) or slower than a decode layer (`reload`).
fn cost(stream: bool) -> CostProfile {
    CostProfile {
        prefill: PrefillCoeffs {
            a0: 1.0,
            a1: 1e-6,
            a2: 1e-9,
        },
        decode: DecodeCoeffs {
            d0: 1e-4,
            d1: 1e-6,
            d2: 1e-9,
        },
        decode_wide: None,
        transfer: TransferCoeffs {
            t0: 0.0,
            // 6 blocks of 4 KiB: 25 ms a layer against 100 µs of decode compute.
            bw_bytes_per_s: if stream { f64::INFINITY } else { 1e6 },
        },
        step_overhead_s: 0.0,
    }
}

const BLOCKER_PROMPT: usize = 6 * BT + 4; // 7 blocks a layer, with room for its 12 outputs
const PROMPT: usize = 5 * BT + 3; // 6 blocks per layer
const OUT: usize = 40;

fn blocker() -> Request {
    let mut r = Request::new(
        RequestId(1),
        (0..BLOCKER_PROMPT as u32)
            .map(|t| 3 + t * 7 % 500)
            .collect(),
        12,
    );
    r.arrival = Duration::ZERO;
    r
}

fn probe() -> Request {
    let mut r = Request::new(
        RequestId(2),
        (0..PROMPT as u32).map(|t| 3 + (t * 31 + 5) % 509).collect(),
        OUT,
    );
    r.arrival = Duration::ZERO;
    r.want_logits = true;
    r
}

/// Runs blocker + probe with the GPU pool sized so that the probe, admitted right after the
/// blocker, can keep exactly `resident` layers on the GPU.
/// Returns the probe's record, the streamed decodes, and the bytes that crossed tiers.
fn run(mode: Mode, resident: usize, stream: bool) -> (RequestRecord, usize, u64) {
    run_chunked(mode, resident, stream, 0)
}

fn run_chunked(
    mode: Mode,
    resident: usize,
    stream: bool,
    chunk: usize,
) -> (RequestRecord, usize, u64) {
    let (cfg, w) = model();
    let layers = cfg.num_layers;
    let watermark = layers;
    let blocker_blocks = layers * BLOCKER_PROMPT.div_ceil(BT);
    let probe_blocks = PROMPT.div_ceil(BT);
    // The blocker never grows past its 7 blocks a layer.
    let gpu = blocker_blocks + watermark + resident * probe_blocks;
    let pools = PoolSizes {
        gpu_blocks: gpu.max(layers * (PROMPT + OUT).div_ceil(BT) + watermark),
        host_blocks: 4096,
        staging_blocks: 64,
    };
    // The cpu executor does not overlap copies, so `auto` would never stream: force the policy
    // both ways so that each decode path is checked.
    let stream_decode = if stream {
        StreamDecode::Always
    } else {
        StreamDecode::Never
    };
    let sched = SchedulerConfig {
        mode,
        staging_blocks: 64,
        watermark_blocks: watermark,
        stream_decode,
        prefill_chunk_tokens: chunk,
        ..Default::default()
    };
    let exec = CpuExecutor::new(&cfg, w, layout(&cfg), pools).unwrap();
    let mut e = Engine::new(
        EngineConfig { sched, pools },
        layout(&cfg),
        cost(stream),
        Box::new(exec),
    )
    .unwrap();
    let (mut streamed, mut moved) = (0, 0);
    let recs = replay(&mut e, vec![blocker(), probe()], 100_000, |_, rep| {
        streamed += rep.streamed_decodes;
        moved += rep.transfer_bytes;
    })
    .unwrap();
    assert_eq!(e.kv().validate(), Ok(()));
    let probe = recs.into_iter().find(|r| r.id == RequestId(2)).unwrap();
    assert_eq!(probe.tokens.len(), OUT);
    (probe, streamed, moved)
}

fn assert_same(a: &RequestRecord, b: &RequestRecord, what: &str) {
    assert_eq!(a.tokens, b.tokens, "{what}: tokens differ");
    assert_eq!(a.logits.len(), b.logits.len());
    for (i, (x, y)) in a.logits.iter().zip(&b.logits).enumerate() {
        let num: f32 = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f32>()
            .sqrt();
        let den: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
        assert!(
            num <= 1e-5 * den,
            "{what}: logits of token {i} differ by {}",
            num / den
        );
    }
}

#[test]
fn offloading_during_prefill_is_lossless() {
    let layers = model().0.num_layers;
    // No offload: the pool fits everything.
    let (reference, _, moved) = run(Mode::Layerwise, layers, false);
    assert_eq!(reference.offloaded_layers, 0);
    assert_eq!(moved, 0);
    let (baseline, _, _) = run(Mode::Baseline, layers / 2, false);
    assert_eq!(baseline.offloaded_layers, 0);
    assert_same(&reference, &baseline, "baseline");
    for (resident, label) in [(layers / 2, "about half"), (1, "nearly all")] {
        for stream in [false, true] {
            let what = format!("{label} offloaded, stream={stream}");
            let (r, streamed, moved) = run(Mode::Layerwise, resident, stream);
            assert_eq!(r.offloaded_layers, layers - resident, "{what}");
            assert!(moved > 0, "{what}: nothing crossed tiers");
            if stream {
                assert!(
                    streamed > 0,
                    "{what}: no decode streamed its offloaded layers"
                );
            } else {
                assert_eq!(
                    streamed, 0,
                    "{what}: a decode streamed under the reload policy"
                );
            }
            assert_same(&reference, &r, &what);
        }
    }
}

#[test]
fn chunked_prefill_is_lossless() {
    let layers = model().0.num_layers;
    let (reference, _, _) = run(Mode::Layerwise, layers, false);
    // 83 prompt tokens in chunks of 32 (and of 16, one block): resident, and mostly offloaded
    // with offloaded layers staged chunk after chunk.
    for chunk in [16, 32] {
        for resident in [layers, 1] {
            let (r, _, _) = run_chunked(Mode::Layerwise, resident, false, chunk);
            assert_eq!(r.offloaded_layers, layers - resident);
            assert_same(
                &reference,
                &r,
                &format!("chunk {chunk}, {resident} resident"),
            );
        }
        let (b, _, _) = run_chunked(Mode::Baseline, layers, false, chunk);
        assert_same(&reference, &b, &format!("baseline, chunk {chunk}"));
    }
}
