//! The engine on the cuda executor, in the scenario of `engine_cpu.rs`: a blocker and a probe
//! arrive together, and the GPU pool is sized so that the probe, admitted beside the blocker,
//! keeps exactly `resident` layers on the GPU; the others go to the host tier during its
//! prefill, then are reloaded or streamed through staging at decode.

use std::time::Duration;
use strata_node::engine::{Engine, EngineConfig};
use strata_node::exec::PoolSizes;
use strata_node::exec::cuda::CudaExecutor;
use strata_node::kv::{KvLayout, Tier};
use strata_node::model::rng::Rng;
use strata_node::model::{ModelConfig, Weights};
use strata_node::sched::{Event, FinishReason, Mode, Request, SchedulerConfig, StreamDecode};
use strata_transport::proto::{
    CostProfile, DecodeCoeffs, PrefillCoeffs, RequestId, TransferCoeffs,
};

pub const BT: usize = 16;
/// 7 blocks a layer, with room for its 12 outputs.
const BLOCKER_PROMPT: usize = 6 * BT + 4;
const BLOCKER_OUT: usize = 12;
/// 6 blocks a layer.
const PROMPT: usize = 5 * BT + 3;
pub const OUT: usize = 40;
const MAX_STEPS: usize = 10_000;
const BLOCKER: RequestId = RequestId(1);
const PROBE: RequestId = RequestId(2);

/// A cost model where offloading always hides under prefill compute, and streaming an
/// offloaded layer during decode is free (`stream`) or slower than a decode layer.
pub fn cost(stream: bool) -> CostProfile {
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
            bw_bytes_per_s: if stream { f64::INFINITY } else { 1e6 },
        },
        step_overhead_s: 0.0,
    }
}

/// One engine run's policy.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    pub mode: Mode,
    /// Layers of the probe the GPU pool leaves room for at its admission.
    pub resident: usize,
    pub stream: StreamDecode,
    /// Prefill chunk tokens (0: whole prompts).
    pub chunk: usize,
}

/// What one run did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub probe_tokens: Vec<u32>,
    pub probe_logits: Vec<Vec<f32>>,
    pub blocker_tokens: Vec<u32>,
    pub offloaded_layers: usize,
    pub streamed_decodes: usize,
    pub transfer_bytes: u64,
    /// The most host-tier blocks held after any step.
    pub host_blocks_peak: usize,
}

/// The model and the two prompts, fixed across the runs compared.
pub struct Scenario {
    pub cfg: ModelConfig,
    weights: Weights,
    blocker: Vec<u32>,
    probe: Vec<u32>,
}

impl Scenario {
    pub fn new(seed: u64) -> Scenario {
        let mut cfg = strata_node::model::Preset::Tiny.config();
        cfg.num_layers = 8;
        cfg.max_position_embeddings = 1024;
        let weights = Weights::random(&cfg, seed, 0..cfg.num_layers).expect("random weights");
        let mut rng = Rng::new(seed ^ 0xb10c);
        // Requests without stop tokens run to their length whatever they sample.
        let mut prompt = |len: usize| -> Vec<u32> {
            (0..len)
                .map(|_| rng.range(0, cfg.vocab_size as u64 - 1) as u32)
                .collect()
        };
        let (blocker, probe) = (prompt(BLOCKER_PROMPT), prompt(PROMPT));
        Scenario {
            cfg,
            weights,
            blocker,
            probe,
        }
    }

    /// Runs blocker and probe to the end under `rc`.
    pub fn run(&self, rc: RunConfig) -> Outcome {
        let layers = self.cfg.num_layers;
        let watermark = layers;
        let blocker_blocks = layers * BLOCKER_PROMPT.div_ceil(BT);
        let gpu = blocker_blocks + watermark + rc.resident * PROMPT.div_ceil(BT);
        let pools = PoolSizes {
            gpu_blocks: gpu.max(layers * (PROMPT + OUT).div_ceil(BT) + watermark),
            host_blocks: 4096,
            staging_blocks: 64,
        };
        let sched = SchedulerConfig {
            mode: rc.mode,
            staging_blocks: 64,
            watermark_blocks: watermark,
            stream_decode: rc.stream,
            prefill_chunk_tokens: rc.chunk,
            ..Default::default()
        };
        let layout = KvLayout::for_model(&self.cfg, BT, 2);
        let exec = CudaExecutor::new(&self.cfg, self.weights.clone(), layout, pools)
            .unwrap_or_else(|e| panic!("{rc:?}: no cuda executor: {e}"));
        let stream = rc.stream != StreamDecode::Never;
        let mut e = Engine::new(
            EngineConfig { sched, pools },
            layout,
            cost(stream),
            Box::new(exec),
        )
        .unwrap_or_else(|e| panic!("{rc:?}: no engine: {e}"));
        let mut blocker = Request::new(BLOCKER, self.blocker.clone(), BLOCKER_OUT);
        blocker.want_logits = false;
        let mut probe = Request::new(PROBE, self.probe.clone(), OUT);
        probe.want_logits = true;
        for r in [blocker, probe] {
            e.submit(r)
                .unwrap_or_else(|err| panic!("{rc:?}: submit refused: {err}"));
        }
        let mut out = Outcome::default();
        let mut now = Duration::ZERO;
        let mut steps = 0;
        while e.has_work() {
            steps += 1;
            assert!(steps <= MAX_STEPS, "{rc:?}: no end after {MAX_STEPS} steps");
            let rep = e.step(now);
            assert!(
                rep.prefills + rep.decodes + rep.copies > 0,
                "{rc:?}: the engine stalled at step {steps}"
            );
            out.streamed_decodes += rep.streamed_decodes;
            out.transfer_bytes += rep.transfer_bytes;
            let kv = e.kv();
            let host_held = kv.capacity(Tier::Host) - kv.free_blocks(Tier::Host);
            out.host_blocks_peak = out.host_blocks_peak.max(host_held);
            for ev in rep.events {
                out.record(ev, &rc);
            }
            now += rep.elapsed;
        }
        assert_eq!(
            e.kv().validate(),
            Ok(()),
            "{rc:?}: block manager invariants"
        );
        assert_eq!(out.probe_tokens.len(), OUT, "{rc:?}: probe tokens");
        assert_eq!(out.probe_logits.len(), OUT, "{rc:?}: probe logits");
        assert_eq!(
            out.blocker_tokens.len(),
            BLOCKER_OUT,
            "{rc:?}: blocker tokens"
        );
        out
    }
}

impl Outcome {
    fn record(&mut self, ev: Event, rc: &RunConfig) {
        match ev {
            Event::Admitted {
                seq,
                offloaded_layers,
                ..
            } if seq == PROBE => self.offloaded_layers = offloaded_layers,
            Event::Token {
                seq, token, logits, ..
            } => {
                if seq == PROBE {
                    self.probe_tokens.push(token);
                    self.probe_logits.extend(logits);
                } else {
                    self.blocker_tokens.push(token);
                }
            }
            Event::Finished { seq, reason, .. } => {
                assert_eq!(reason, FinishReason::Length, "{rc:?}: {seq} ended early");
            }
            Event::Admitted { .. } => {}
        }
    }
}
