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
use strata_node::sched::{Mode, Request, SchedulerConfig};
use strata_transport::proto::{CostProfile, DecodeCoeffs, PrefillCoeffs, RequestId, TransferCoeffs};

const BT: usize = 16;

fn model() -> (ModelConfig, Weights) {
    let cfg = ModelConfig { num_layers: 8, ..Preset::Tiny.config() };
    let w = Weights::random(&cfg, 11, 0..cfg.num_layers).unwrap();
    (cfg, w)
}

fn layout(cfg: &ModelConfig) -> KvLayout {
    KvLayout {
        layers: cfg.num_layers,
        block_tokens: BT,
        kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
        dtype_bytes: 4,
    }
}

/// A cost model where streaming an offloaded layer is free (`stream`) or never pays (`reload`).
fn cost(stream: bool) -> CostProfile {
    CostProfile {
        prefill: PrefillCoeffs { a0: 1e-4, a1: 1e-6, a2: 1e-9 },
        decode: DecodeCoeffs { d0: 1e-4, d1: 1e-6, d2: 1e-9 },
        transfer: TransferCoeffs {
            t0: 0.0,
            bw_bytes_per_s: if stream { f64::INFINITY } else { 1.0 },
        },
        step_overhead_s: 0.0,
    }
}

const BLOCKER_PROMPT: usize = 6 * BT;
const PROMPT: usize = 5 * BT + 3; // 6 blocks per layer
const OUT: usize = 40;

fn blocker() -> Request {
    let mut r = Request::new(RequestId(1), (0..BLOCKER_PROMPT as u32).map(|t| 3 + t * 7 % 500).collect(), 30);
    r.arrival = Duration::ZERO;
    r
}

fn probe() -> Request {
    let mut r = Request::new(RequestId(2), (0..PROMPT as u32).map(|t| 3 + (t * 31 + 5) % 509).collect(), OUT);
    r.arrival = Duration::ZERO;
    r.want_logits = true;
    r
}

/// Runs blocker + probe with the GPU pool sized so that the probe, admitted right after the
/// blocker, can keep exactly `resident` layers on the GPU.
fn run(mode: Mode, resident: usize, stream: bool) -> RequestRecord {
    let (cfg, w) = model();
    let layers = cfg.num_layers;
    let watermark = layers;
    let blocker_blocks = layers * BLOCKER_PROMPT.div_ceil(BT);
    let probe_blocks = PROMPT.div_ceil(BT);
    // The blocker decodes 30 tokens: room for its growth on top of the probe's resident layers.
    let gpu = blocker_blocks + watermark + resident * probe_blocks;
    let pools = PoolSizes { gpu_blocks: gpu.max(layers * (PROMPT + OUT).div_ceil(BT) + watermark), host_blocks: 4096, staging_blocks: 64 };
    let sched = SchedulerConfig { mode, staging_blocks: 64, watermark_blocks: watermark, ..Default::default() };
    let exec = CpuExecutor::new(&cfg, w, layout(&cfg), pools).unwrap();
    let mut e = Engine::new(EngineConfig { sched, pools }, layout(&cfg), cost(stream), Box::new(exec)).unwrap();
    let recs = replay(&mut e, vec![blocker(), probe()], 100_000, |_, _| {}).unwrap();
    assert_eq!(e.kv().validate(), Ok(()));
    let probe = recs.into_iter().find(|r| r.id == RequestId(2)).unwrap();
    assert_eq!(probe.tokens.len(), OUT);
    probe
}

fn assert_same(a: &RequestRecord, b: &RequestRecord, what: &str) {
    assert_eq!(a.tokens, b.tokens, "{what}: tokens differ");
    assert_eq!(a.logits.len(), b.logits.len());
    for (i, (x, y)) in a.logits.iter().zip(&b.logits).enumerate() {
        let num: f32 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum::<f32>().sqrt();
        let den: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
        assert!(num <= 1e-5 * den, "{what}: logits of token {i} differ by {}", num / den);
    }
}

#[test]
fn offloading_during_prefill_is_lossless() {
    let layers = model().0.num_layers;
    // No offload: the pool fits everything.
    let reference = run(Mode::Layerwise, layers, false);
    assert_eq!(reference.offloaded_layers, 0);
    let baseline = run(Mode::Baseline, layers / 2, false);
    assert_eq!(baseline.offloaded_layers, 0);
    assert_same(&reference, &baseline, "baseline");
    for (resident, label) in [(layers / 2, "about half"), (1, "nearly all")] {
        for stream in [false, true] {
            let r = run(Mode::Layerwise, resident, stream);
            assert_eq!(r.offloaded_layers, layers - resident, "{label}");
            assert_same(&reference, &r, &format!("{label} offloaded, stream={stream}"));
        }
    }
}
