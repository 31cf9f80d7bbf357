//! Pipeline stages on the GPU: the model cut into 2 and 4 `CudaExecutor::stage`s, chained
//! in-process (activations handed from one to the next, as the `Stage` stream carries them),
//! gives the greedy tokens of one whole-model executor, with and without layer-wise offload
//! on every stage.

use super::gpu::gpu;
use super::scenario::cost;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;
use strata_node::engine::{Engine, EngineConfig};
use strata_node::exec::cuda::CudaExecutor;
use strata_node::exec::{
    ExecError, Executor, PoolSizes, StageExecutor, StageInput, StageOutput, StepOutput,
};
use strata_node::kv::KvLayout;
use strata_node::model::ModelSource;
use strata_node::sched::plan::StepPlan;
use strata_node::sched::{Event, Mode, Request, SchedulerConfig, StreamDecode};
use strata_transport::proto::RequestId;

const SEED: u64 = 5;
const LAYERS: usize = 4; // the tiny preset

/// Stages run one after the other, each from the previous one's activations.
struct Chain(Vec<CudaExecutor>);

impl Executor for Chain {
    fn name(&self) -> &'static str {
        "cuda-chain"
    }

    fn copies_overlap_compute(&self) -> bool {
        true
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<StepOutput, ExecError> {
        let mut hidden: Option<Vec<f32>> = None;
        let mut out = StepOutput::default();
        for stage in &mut self.0 {
            let input = match &hidden {
                None => StageInput::Tokens,
                Some(h) => StageInput::Hidden(h),
            };
            let (o, bytes) = stage.run_stage(plan, input)?;
            out.transfer_bytes += bytes;
            match o {
                StageOutput::Hidden(h) => hidden = Some(h),
                StageOutput::Sampled { tokens, logits } => {
                    out.tokens = tokens;
                    out.logits = logits;
                }
            }
        }
        Ok(out)
    }
}

fn sched(mode: Mode) -> SchedulerConfig {
    SchedulerConfig {
        mode,
        max_seq_tokens: 1024,
        staging_blocks: if mode == Mode::Layerwise { 64 } else { 0 },
        watermark_blocks: 4,
        stream_decode: StreamDecode::Always,
        ..SchedulerConfig::default()
    }
}

fn pools(mode: Mode, gpu_blocks: usize) -> PoolSizes {
    PoolSizes {
        gpu_blocks,
        host_blocks: 4096,
        staging_blocks: sched(mode).staging_blocks,
    }
}

/// Tokens per request, and decodes that streamed offloaded layers.
fn run(
    mode: Mode,
    gpu_blocks: usize,
    layers: usize,
    exec: Box<dyn Executor>,
) -> (BTreeMap<RequestId, Vec<u32>>, usize) {
    let source: ModelSource = "tiny".parse().unwrap();
    let cfg = source.config().unwrap();
    let layout = KvLayout {
        layers,
        ..KvLayout::for_model(&cfg, 16, 2)
    };
    let p = pools(mode, gpu_blocks);
    let mut engine = Engine::new(
        EngineConfig {
            sched: sched(mode),
            pools: p,
        },
        layout,
        cost(true),
        exec,
    )
    .unwrap();
    for (len, salt) in [(900u32, 1u32), (700, 2), (840, 3), (20, 4)] {
        let prompt = (0..len).map(|i| 3 + (i * 7 + salt * 13) % 500).collect();
        engine
            .submit(Request::new(RequestId(u64::from(salt)), prompt, 24))
            .unwrap();
    }
    let (mut tokens, mut streamed) = (BTreeMap::new(), 0);
    let mut now = Duration::ZERO;
    for _ in 0..10_000 {
        if !engine.has_work() {
            break;
        }
        let report = engine.step(now);
        now += report.elapsed + Duration::from_micros(1);
        streamed += report.streamed_decodes;
        for ev in report.events {
            match ev {
                Event::Token { seq, token, .. } => {
                    tokens.entry(seq).or_insert_with(Vec::new).push(token)
                }
                Event::Finished {
                    reason: strata_node::sched::FinishReason::Error(e),
                    ..
                } => panic!("a request failed: {e}"),
                _ => {}
            }
        }
    }
    (tokens, streamed)
}

fn chain(stages: &[Range<usize>], mode: Mode, gpu_blocks: usize) -> Chain {
    let source: ModelSource = "tiny".parse().unwrap();
    let cfg = source.config().unwrap();
    Chain(
        stages
            .iter()
            .map(|r| {
                let w = source.load(SEED, r.clone()).unwrap().weights;
                let layout = KvLayout {
                    layers: r.len(),
                    ..KvLayout::for_model(&cfg, 16, 2)
                };
                CudaExecutor::stage(&cfg, w, layout, pools(mode, gpu_blocks)).unwrap()
            })
            .collect(),
    )
}

#[test]
fn stages_give_the_tokens_of_one_executor() {
    if !gpu() {
        return;
    }
    let source: ModelSource = "tiny".parse().unwrap();
    let model = source.load(SEED, 0..LAYERS).unwrap();
    let whole = |mode| {
        let layout = KvLayout::for_model(&model.config, 16, 2);
        let exec = CudaExecutor::new(
            &model.config,
            model.weights.clone(),
            layout,
            pools(mode, 8192),
        )
        .unwrap();
        run(mode, 8192, LAYERS, Box::new(exec)).0
    };
    let reference = whole(Mode::Baseline);
    assert_eq!(reference.len(), 4);
    assert!(reference.values().all(|t| t.len() == 24));
    for stages in [vec![0..2, 2..4], vec![0..1, 1..2, 2..3, 3..4]] {
        let slots = stages.iter().map(|r| r.len()).max().unwrap();
        let (got, _) = run(
            Mode::Baseline,
            8192,
            slots,
            Box::new(chain(&stages, Mode::Baseline, 8192)),
        );
        assert_eq!(got, reference, "{stages:?}: baseline");
        // Layer-wise offload on every stage: room for the longest sequence, not the next.
        let small = 60 * slots + 24;
        let (got, streamed) = run(
            Mode::Layerwise,
            small,
            slots,
            Box::new(chain(&stages, Mode::Layerwise, small)),
        );
        assert!(
            streamed > 0,
            "{stages:?}: no decode streamed an offloaded layer"
        );
        assert_eq!(got, reference, "{stages:?}: layer-wise with offload");
        eprintln!("{stages:?}: identical tokens; {streamed} decodes streamed offloaded layers");
    }
}
