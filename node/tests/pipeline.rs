//! Pipeline-parallel instances over real QUIC on loopback: a model split over 2 and over 4
//! stages gives the greedy tokens of one process, with and without layer-wise offload on every
//! stage; a whole pipeline node service answers `Generate` like a single node; a dead stage
//! fails what was in flight and the driver serves again on a fresh chain; bad chains are
//! refused with a clear error.

mod common;

use common::Certs;
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;
use strata_node::engine::{Engine, EngineConfig};
use strata_node::exec::PoolSizes;
use strata_node::exec::cpu::CpuExecutor;
use strata_node::kv::KvLayout;
use strata_node::model::ModelSource;
use strata_node::pipeline::PipelineExecutor;
use strata_node::pipeline::link::{ChainState, LinkLimits, NextStage, spawn_driver_link};
use strata_node::sched::{Event, Mode, Request, SchedulerConfig, StreamDecode};
use strata_node::service::{ExecutorKind, NodeConfig, NodeService, StageSettings, TlsConfig};
use strata_transport::proto::{
    CostProfile, DecodeCoeffs, PrefillCoeffs, RequestId, StageOpen, TransferCoeffs,
};
use strata_transport::tls::{Identity, Role};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Bound on every wait: generous for a loaded 2-core machine; a pass never waits this long.
const BOUND: Duration = Duration::from_secs(60);
const SEED: u64 = 5;
const LAYERS: usize = 4; // the tiny preset

fn limits() -> LinkLimits {
    LinkLimits {
        max_frame_bytes: 64 << 20,
        connect_timeout: Duration::from_secs(5),
        open_timeout: Duration::from_secs(30),
    }
}

fn worker_config(
    certs: &Certs,
    id: &str,
    layers: Range<usize>,
    next: Option<(std::net::SocketAddr, String)>,
) -> NodeConfig {
    certs.ca.issue_to_as(id, Role::Node, &certs.dir).unwrap();
    NodeConfig {
        id: id.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        model: "tiny".into(),
        executor: ExecutorKind::Cpu,
        tls: TlsConfig {
            dir: certs.dir.clone(),
            member: None,
        },
        gpu_mib: Some(64),
        host_mib: Some(64),
        load_report_ms: 20,
        seed: SEED,
        stage: Some(StageSettings {
            layers: [layers.start, layers.end],
            next: next.as_ref().map(|n| n.0),
            next_member: next.map(|n| n.1),
            micro_batches: None,
        }),
        ..NodeConfig::default()
    }
}

async fn start(cfg: NodeConfig) -> NodeService {
    timeout(BOUND, NodeService::start(cfg, CancellationToken::new()))
        .await
        .expect("started within the bound")
        .expect("started")
}

/// Workers for every stage of `stages` but the first, started last first. Returns them in
/// chain order and the first worker's address and member.
async fn workers(
    certs: &Certs,
    stages: &[Range<usize>],
) -> (Vec<NodeService>, (std::net::SocketAddr, String)) {
    let mut next = None;
    let mut started = Vec::new();
    for (k, r) in stages.iter().enumerate().skip(1).rev() {
        let id = format!("stage-{k}");
        let svc = start(worker_config(certs, &id, r.clone(), next.clone())).await;
        next = Some((svc.local_addr(), id));
        started.insert(0, svc);
    }
    (started, next.expect("two or more stages"))
}

fn requests() -> Vec<Request> {
    // Three long prompts (many 16-token blocks) and a short one, decoding past block edges.
    [(900, 1), (700, 2), (840, 3), (20, 4)]
        .into_iter()
        .map(|(len, salt): (u32, u32)| {
            let prompt = (0..len).map(|i| 3 + (i * 7 + salt * 13) % 500).collect();
            Request::new(RequestId(u64::from(salt)), prompt, 24)
        })
        .collect()
}

/// What a run gave: tokens per request, and whether any layer went to the host tier.
struct Run {
    tokens: BTreeMap<RequestId, Vec<u32>>,
    offloaded: bool,
    errors: Vec<String>,
}

fn run(mut engine: Engine) -> Run {
    for r in requests() {
        engine.submit(r).unwrap();
    }
    let mut out = Run {
        tokens: BTreeMap::new(),
        offloaded: false,
        errors: Vec::new(),
    };
    let mut now = Duration::ZERO;
    let mut steps = 0;
    while engine.has_work() && steps < 10_000 {
        steps += 1;
        let report = engine.step(now);
        now += report.elapsed + Duration::from_micros(1);
        out.offloaded |= report.streamed_decodes > 0;
        for ev in report.events {
            match ev {
                Event::Token { seq, token, .. } => out.tokens.entry(seq).or_default().push(token),
                Event::Finished {
                    reason: strata_node::sched::FinishReason::Error(e),
                    ..
                } => out.errors.push(e),
                _ => {}
            }
        }
    }
    out
}

fn sched(mode: Mode) -> SchedulerConfig {
    SchedulerConfig {
        mode,
        max_seq_tokens: 1024,
        staging_blocks: if mode == Mode::Layerwise { 64 } else { 0 },
        watermark_blocks: 4,
        // Offloaded layers stream through staging during decode on every stage.
        stream_decode: StreamDecode::Always,
        ..SchedulerConfig::default()
    }
}

/// A cost model where offloading always hides under prefill compute and waiting for GPU room
/// would miss the TTFT SLO, so layer-wise admission offloads instead of queuing.
fn cost() -> CostProfile {
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
            bw_bytes_per_s: f64::INFINITY,
        },
        step_overhead_s: 0.0,
    }
}

/// The whole model in one engine.
fn one_process(mode: Mode, gpu_blocks: usize) -> Run {
    let model = "tiny"
        .parse::<ModelSource>()
        .unwrap()
        .load(SEED, 0..LAYERS)
        .unwrap();
    let layout = KvLayout::for_model(&model.config, 16, 4);
    let s = sched(mode);
    let pools = PoolSizes {
        gpu_blocks,
        host_blocks: 4096,
        staging_blocks: s.staging_blocks,
    };
    let exec = CpuExecutor::new(&model.config, model.weights, layout, pools).unwrap();
    run(Engine::new(
        EngineConfig { sched: s, pools },
        layout,
        cost(),
        Box::new(exec),
    )
    .unwrap())
}

/// The driver's engine over a chain of worker services for `stages`.
async fn pipelined(certs: &Certs, stages: &[Range<usize>], mode: Mode, gpu_blocks: usize) -> Run {
    let (services, (addr, member)) = workers(certs, stages).await;
    let s = sched(mode);
    let pools = PoolSizes {
        gpu_blocks,
        host_blocks: 4096,
        staging_blocks: s.staging_blocks,
    };
    let identity = Identity::load(&certs.dir, "node-1").unwrap();
    let endpoint = identity.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let open = StageOpen {
        model: "tiny".into(),
        model_layers: LAYERS as u32,
        block_tokens: 16,
        gpu_blocks: pools.gpu_blocks as u64,
        host_blocks: pools.host_blocks as u64,
        staging_blocks: pools.staging_blocks as u64,
        epoch: 0,
    };
    let link = spawn_driver_link(
        &tokio::runtime::Handle::current(),
        endpoint,
        NextStage { addr, member },
        open,
        limits(),
        |_| Ok(()),
        CancellationToken::new(),
    );
    let mut state = link.state.clone();
    let below = timeout(
        BOUND,
        state.wait_for(|s| matches!(s, ChainState::Up { .. })),
    )
    .await
    .expect("the chain opens")
    .unwrap()
    .clone();
    let ChainState::Up { stages: below, .. } = below else {
        unreachable!()
    };
    let expected: Vec<(u32, u32)> = stages[1..]
        .iter()
        .map(|r| (r.start as u32, r.end as u32))
        .collect();
    assert_eq!(
        below, expected,
        "StageReady names the stages below in order"
    );
    let slots = stages.iter().map(|r| r.len()).max().unwrap();
    let first = stages[0].clone();
    let run = tokio::task::spawn_blocking(move || {
        let model = "tiny"
            .parse::<ModelSource>()
            .unwrap()
            .load(SEED, first)
            .unwrap();
        let layout = KvLayout {
            layers: slots,
            ..KvLayout::for_model(&model.config, 16, 4)
        };
        let local = CpuExecutor::stage(&model.config, model.weights, layout, pools).unwrap();
        let exec = PipelineExecutor::new(Box::new(local), link, 2, 64 << 20, BOUND);
        run(Engine::new(
            EngineConfig { sched: s, pools },
            layout,
            cost(),
            Box::new(exec),
        )
        .unwrap())
    })
    .await
    .unwrap();
    for svc in services {
        svc.shutdown().await.unwrap();
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_and_four_stages_give_the_tokens_of_one_process() {
    let certs = common::certs("pipe", "tokens");
    for mode in [Mode::Baseline, Mode::Layerwise] {
        let reference = one_process(mode, 8192);
        assert!(reference.errors.is_empty(), "{:?}", reference.errors);
        assert_eq!(reference.tokens.len(), 4);
        assert!(!reference.offloaded);
        for stages in [vec![0..2, 2..4], vec![0..1, 1..2, 2..3, 3..4]] {
            let got = pipelined(&certs, &stages, mode, 8192).await;
            assert!(
                got.errors.is_empty(),
                "{stages:?} {mode:?}: {:?}",
                got.errors
            );
            assert_eq!(got.tokens, reference.tokens, "{stages:?} {mode:?}");
        }
    }
    // Layer-wise offload on every stage: a GPU tier that holds the longest sequence (58
    // blocks per slot) but not the next one beside it.
    for stages in [vec![0..2, 2..4], vec![0..1, 1..2, 2..3, 3..4]] {
        let slots = stages.iter().map(|r| r.len()).max().unwrap();
        let small = 60 * slots + 24;
        let got = pipelined(&certs, &stages, Mode::Layerwise, small).await;
        assert!(got.errors.is_empty(), "{stages:?}: {:?}", got.errors);
        assert!(
            got.offloaded,
            "{stages:?}: no layer was offloaded with {small} GPU blocks"
        );
        assert_eq!(
            got.tokens,
            one_process(Mode::Baseline, 8192).tokens,
            "{stages:?} offloaded"
        );
    }
}

mod service {
    //! The pipeline as node services: a driver node and a worker, requests over QUIC.

    use super::*;
    use quinn::{Connection, Endpoint, RecvStream};
    use strata_transport::frame::{self, DEFAULT_MAX_FRAME};
    use strata_transport::proto::{
        GenerateRequest, Message, SloClass, WireFinishReason, WireSampling,
    };
    use strata_transport::tls::SERVER_NAME;

    async fn connect(id: &Identity, addr: std::net::SocketAddr) -> Connection {
        let mut ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(id.client_config().unwrap());
        ep.connect(addr, SERVER_NAME).unwrap().await.unwrap()
    }

    fn generate(id: u64, prompt: Vec<u32>, max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            request: RequestId(id),
            prompt,
            max_tokens,
            stop_tokens: Vec::new(),
            sampling: WireSampling {
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
            },
            slo: SloClass::default(),
            cache_salt: 0,
            logprobs: 0,
        }
    }

    async fn next(recv: &mut RecvStream) -> Message {
        timeout(BOUND, frame::read_frame(recv, DEFAULT_MAX_FRAME))
            .await
            .expect("a frame within the bound")
            .expect("a valid frame")
            .expect("the stream goes on")
    }

    /// Sends `req` and reads its tokens up to the end: the tokens and the finish reason.
    async fn ask(conn: &Connection, req: GenerateRequest) -> (Vec<u32>, WireFinishReason) {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        frame::write_frame(&mut send, &Message::Generate(req))
            .await
            .unwrap();
        let mut tokens = Vec::new();
        loop {
            match next(&mut recv).await {
                Message::Token(t) => tokens.push(t.token),
                Message::Finish(f) => return (tokens, f.reason),
                other => panic!("unexpected {}", other.kind()),
            }
        }
    }

    fn prompt(len: u32) -> Vec<u32> {
        (0..len).map(|i| 3 + (i * 11) % 400).collect()
    }

    fn driver_config(certs: &Certs, next: (std::net::SocketAddr, String)) -> NodeConfig {
        let mut cfg = worker_config(certs, "node-1", 0..2, Some(next));
        cfg.limits.stage_open_timeout_ms = 30_000;
        cfg
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_pipeline_node_serves_like_one_node_and_outlives_a_stage_restart() {
        let certs = common::certs("pipe", "svc");
        let router = certs.router.clone();
        // The reference: the whole model on one node.
        let mut whole = worker_config(&certs, "node-1", 0..4, None);
        whole.stage = None;
        let whole = start(whole).await;
        let conn = connect(&router, whole.local_addr()).await;
        let (expected, reason) = ask(&conn, generate(1, prompt(70), 40)).await;
        assert_eq!(reason, WireFinishReason::Length);
        assert_eq!(expected.len(), 40);
        whole.shutdown().await.unwrap();

        let stage1 = start(worker_config(&certs, "stage-1", 2..4, None)).await;
        let stage1_addr = stage1.local_addr();
        let driver = start(driver_config(&certs, (stage1_addr, "stage-1".into()))).await;
        assert_eq!(
            driver.info().num_layers,
            2,
            "the driver accounts for 2 layer slots"
        );
        let conn = connect(&router, driver.local_addr()).await;
        let (got, reason) = ask(&conn, generate(2, prompt(70), 40)).await;
        assert_eq!(reason, WireFinishReason::Length);
        assert_eq!(
            got, expected,
            "a 2-stage pipeline gives the tokens of one node"
        );

        // A worker refuses requests, pointing at the driver.
        let wconn = connect(&router, stage1_addr).await;
        let (mut send, mut recv) = wconn.open_bi().await.unwrap();
        frame::write_frame(&mut send, &Message::Generate(generate(3, prompt(5), 4)))
            .await
            .unwrap();
        match next(&mut recv).await {
            Message::Reject(r) => assert!(r.message.contains("driver"), "{}", r.message),
            other => panic!("a worker answered {} to Generate", other.kind()),
        }

        // The last stage stops mid-request: the request fails, it does not hang.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        frame::write_frame(&mut send, &Message::Generate(generate(4, prompt(70), 900)))
            .await
            .unwrap();
        assert!(matches!(next(&mut recv).await, Message::Token(_)));
        stage1.shutdown().await.unwrap();
        let reason = loop {
            match next(&mut recv).await {
                Message::Token(_) => {}
                Message::Finish(f) => break f.reason,
                other => panic!("unexpected {}", other.kind()),
            }
        };
        assert!(
            matches!(&reason, WireFinishReason::Error(e) if e.contains("pipeline")),
            "{reason:?}"
        );

        // The stage comes back on its address; the driver reopens the chain and serves the
        // same tokens again (the prefix cache of the lost chain was dropped).
        let mut again = worker_config(&certs, "stage-1", 2..4, None);
        again.listen = stage1_addr;
        let stage1 = start(again).await;
        let deadline = tokio::time::Instant::now() + BOUND;
        let got = loop {
            let (got, reason) = ask(&conn, generate(5, prompt(70), 40)).await;
            if reason == WireFinishReason::Length {
                break got;
            }
            // Failed while the chain was still down: ask again, within the bound.
            assert!(
                tokio::time::Instant::now() < deadline,
                "the chain never reopened: {reason:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(got, expected, "tokens after the chain reopened");
        driver.shutdown().await.unwrap();
        stage1.shutdown().await.unwrap();
    }
}
