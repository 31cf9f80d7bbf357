//! The node service over real QUIC on loopback: generation matches the engine run in-process,
//! cancellation by every route ends the request, subscriptions report load and the prefix
//! cache, bad streams are closed alone, strangers are refused, shutdown is clean.

mod common;

use common::Certs;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use std::path::Path;
use std::time::Duration;
use strata_node::engine::{Engine, EngineConfig};
use strata_node::exec::PoolSizes;
use strata_node::exec::cpu::CpuExecutor;
use strata_node::kv::KvLayout;
use strata_node::model::ModelSource;
use strata_node::sched::{Event, Mode, Request, SchedulerConfig, roofline};
use strata_node::service::{ExecutorKind, NodeConfig, NodeService, TlsConfig, codes};
use strata_transport::frame::{self, DEFAULT_MAX_FRAME};
use strata_transport::proto::kv::chain;
use strata_transport::proto::{
    FinishEvent, GenerateRequest, LoadReport, Message, NodeInfo, RejectReason, RequestId, SloClass,
    TokenEvent, WireFinishReason, WireKvEvent, WireSampling,
};
use strata_transport::tls::{ClusterCa, Identity, SERVER_NAME};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Bound on every wait: generous for a loaded 2-core machine; a pass never waits this long.
const BOUND: Duration = Duration::from_secs(60);
const SEED: u64 = 3;

fn certs(tag: &str) -> Certs {
    common::certs("svc", tag)
}

fn config(dir: &Path) -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model: "tiny".into(),
        executor: ExecutorKind::Cpu,
        tls: TlsConfig {
            dir: dir.to_path_buf(),
            member: None,
        },
        gpu_mib: Some(64),
        host_mib: Some(64),
        load_report_ms: 20,
        seed: SEED,
        ..NodeConfig::default()
    }
}

async fn start(cfg: NodeConfig) -> NodeService {
    timeout(BOUND, NodeService::start(cfg, CancellationToken::new()))
        .await
        .unwrap()
        .unwrap()
}

async fn connect(id: &Identity, addr: std::net::SocketAddr) -> Result<Connection, String> {
    let ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    let mut ep = ep;
    ep.set_default_client_config(id.client_config().map_err(|e| e.to_string())?);
    ep.connect(addr, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
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

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 3 + (i * 7 + salt * 13) % 500)
        .collect()
}

/// Opens a stream and sends `req`; the send side stays open.
async fn send_generate(conn: &Connection, req: GenerateRequest) -> (SendStream, RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    frame::write_frame(&mut send, &Message::Generate(req))
        .await
        .unwrap();
    (send, recv)
}

async fn next(recv: &mut RecvStream) -> Option<Message> {
    timeout(BOUND, frame::read_frame(recv, DEFAULT_MAX_FRAME))
        .await
        .expect("no frame within the bound")
        .expect("a valid frame")
}

/// Reads tokens up to the `Finish` (or a `Reject`).
async fn collect(recv: &mut RecvStream) -> (Vec<TokenEvent>, Message) {
    let mut tokens = Vec::new();
    loop {
        match next(recv).await.expect("stream ended early") {
            Message::Token(t) => tokens.push(t),
            end => return (tokens, end),
        }
    }
}

/// Greedy tokens (and logits) of the tiny model for `prompt`, from an engine run in-process.
fn reference(prompt: &[u32], max_tokens: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let model = "tiny"
        .parse::<ModelSource>()
        .unwrap()
        .load(SEED, 0..4)
        .unwrap();
    let layout = KvLayout::for_model(&model.config, 16, 4);
    let pools = PoolSizes {
        gpu_blocks: 8192,
        host_blocks: 0,
        staging_blocks: 0,
    };
    let exec = CpuExecutor::new(&model.config, model.weights, layout, pools).unwrap();
    let sched = SchedulerConfig {
        mode: Mode::Baseline,
        ..SchedulerConfig::default()
    };
    let cost = roofline::profile(&model.config, &roofline::H200, 4);
    let mut engine =
        Engine::new(EngineConfig { sched, pools }, layout, cost, Box::new(exec)).unwrap();
    let mut req = Request::new(RequestId(1), prompt.to_vec(), max_tokens);
    req.want_logits = true;
    engine.submit(req).unwrap();
    let (mut tokens, mut logits, mut now) = (Vec::new(), Vec::new(), Duration::ZERO);
    while engine.has_work() {
        let report = engine.step(now);
        now += report.elapsed + Duration::from_micros(1);
        for ev in report.events {
            if let Event::Token {
                token, logits: l, ..
            } = ev
            {
                tokens.push(token);
                logits.push(l.unwrap());
            }
        }
    }
    (tokens, logits)
}

/// A subscription: `Hello` read, frames after it on demand.
struct Subscription {
    _send: SendStream,
    recv: RecvStream,
    hello: NodeInfo,
    kv: Vec<WireKvEvent>,
    last_seq: u64,
}

impl Subscription {
    async fn open(conn: &Connection) -> Subscription {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let sub = Message::Subscribe {
            router: "router-1".into(),
        };
        frame::write_frame(&mut send, &sub).await.unwrap();
        let Some(Message::Hello(hello)) = next(&mut recv).await else {
            panic!("no Hello first");
        };
        Subscription {
            _send: send,
            recv,
            hello,
            kv: Vec::new(),
            last_seq: 0,
        }
    }

    /// Reads until a `Load` satisfies `pred`, keeping `KvEvents` on the way.
    async fn load_until(&mut self, pred: impl Fn(&LoadReport) -> bool) -> LoadReport {
        loop {
            match next(&mut self.recv).await.expect("subscription ended") {
                Message::Load(l) => {
                    assert!(
                        l.seq > self.last_seq,
                        "seq {} after {}",
                        l.seq,
                        self.last_seq
                    );
                    self.last_seq = l.seq;
                    if pred(&l) {
                        return l;
                    }
                }
                Message::KvEvents(ev) => self.kv.extend(ev),
                other => panic!("unexpected {other:?} on a subscription"),
            }
        }
    }

    fn stored(&self, hash: u64) -> bool {
        self.kv
            .iter()
            .any(|e| matches!(*e, WireKvEvent::Stored { tier: 0, hash: h, layer: 0 } if h == hash))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_matches_the_engine_in_process() {
    let c = certs("greedy");
    let node = start(config(&c.dir)).await;
    let conn = connect(&c.router, node.local_addr()).await.unwrap();
    let p = prompt(40, 1);
    let (want, logits) = reference(&p, 12);

    let mut req = generate(7, p.clone(), 12);
    req.logprobs = 3;
    let (_send, mut recv) = send_generate(&conn, req).await;
    let (tokens, end) = collect(&mut recv).await;
    let got: Vec<u32> = tokens.iter().map(|t| t.token).collect();
    assert_eq!(got, want);
    assert_eq!(
        end,
        Message::Finish(FinishEvent {
            request: RequestId(7),
            reason: WireFinishReason::Length,
            prompt_tokens: 40,
            output_tokens: 12,
            cached_tokens: 0,
        })
    );
    for (i, (t, l)) in tokens.iter().zip(&logits).enumerate() {
        assert_eq!((t.request, t.index), (RequestId(7), i as u32));
        if i > 0 {
            assert!(t.at_us >= tokens[i - 1].at_us);
        }
        // Greedy: the token is the most likely one, and its log-probability is the reference's.
        assert_eq!(t.top_logprobs.len(), 3);
        assert_eq!(t.top_logprobs[0].0, t.token);
        assert_eq!(t.top_logprobs[0].1, t.logprob);
        assert!(t.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + l.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
        let want_lp = l[t.token as usize] - lse;
        assert!(
            (t.logprob - want_lp).abs() < 1e-3,
            "{} vs {want_lp}",
            t.logprob
        );
    }

    // The same prompt again: its full blocks come from the prefix cache, the tokens do not
    // change.
    let (_send, mut recv) = send_generate(&conn, generate(8, p, 12)).await;
    let (again, end) = collect(&mut recv).await;
    assert_eq!(again.iter().map(|t| t.token).collect::<Vec<_>>(), want);
    assert!(
        again
            .iter()
            .all(|t| t.logprob == 0.0 && t.top_logprobs.is_empty())
    );
    let Message::Finish(f) = end else {
        panic!("{end:?}")
    };
    assert_eq!(f.cached_tokens, 32);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_tokens() {
    let c = certs("concurrent");
    let node = start(config(&c.dir)).await;
    let conn = connect(&c.router, node.local_addr()).await.unwrap();
    let (pa, pb) = (prompt(30, 2), prompt(50, 3));
    let (a, b) = tokio::join!(
        async {
            let (_s, mut r) = send_generate(&conn, generate(1, pa.clone(), 20)).await;
            collect(&mut r).await
        },
        async {
            let (_s, mut r) = send_generate(&conn, generate(2, pb.clone(), 15)).await;
            collect(&mut r).await
        }
    );
    for ((tokens, end), (p, n, id)) in [(a, (&pa, 20, 1)), (b, (&pb, 15, 2))] {
        let got: Vec<u32> = tokens.iter().map(|t| t.token).collect();
        assert_eq!(got, reference(p, n).0, "request {id}");
        assert!(tokens.iter().all(|t| t.request == RequestId(id)));
        let Message::Finish(f) = end else {
            panic!("{end:?}")
        };
        assert_eq!(
            (f.request, f.reason),
            (RequestId(id), WireFinishReason::Length)
        );
        assert_eq!(f.output_tokens, n as u32);
    }
    node.shutdown().await.unwrap();
}

/// Starts a request that runs until cancelled and waits until the node reports it running.
async fn start_long(
    conn: &Connection,
    sub: &mut Subscription,
    id: u64,
) -> (SendStream, RecvStream) {
    let (send, mut recv) = send_generate(conn, generate(id, prompt(16, id as u32), 30_000)).await;
    let Some(Message::Token(t)) = next(&mut recv).await else {
        panic!("no first token")
    };
    assert_eq!(t.index, 0);
    sub.load_until(|l| l.running == 1).await;
    (send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_cancel_ends_the_request() {
    let c = certs("cancel");
    // No periodic reports within the test: every Load it sees is sent because the waiting or
    // running count changed.
    let mut cfg = config(&c.dir);
    cfg.load_report_ms = 60_000;
    let node = start(cfg).await;
    let conn = connect(&c.router, node.local_addr()).await.unwrap();
    let mut sub = Subscription::open(&conn).await;
    let idle = |l: &LoadReport| l.running == 0 && l.waiting == 0;

    // A Cancel frame: the request ends with Finish(Cancelled).
    let (mut send, mut recv) = start_long(&conn, &mut sub, 1).await;
    let cancel = Message::Cancel {
        request: RequestId(1),
    };
    frame::write_frame(&mut send, &cancel).await.unwrap();
    let (_, end) = collect(&mut recv).await;
    let Message::Finish(f) = end else {
        panic!("{end:?}")
    };
    assert_eq!(f.reason, WireFinishReason::Cancelled);
    assert!(f.output_tokens < 30_000);
    sub.load_until(idle).await;

    // A finished send side (EOF) cancels too.
    let (mut send, mut recv) = start_long(&conn, &mut sub, 2).await;
    send.finish().unwrap();
    let (_, end) = collect(&mut recv).await;
    assert!(
        matches!(&end, Message::Finish(f) if f.reason == WireFinishReason::Cancelled),
        "{end:?}"
    );
    sub.load_until(idle).await;

    // A reset stream.
    let (mut send, mut recv) = start_long(&conn, &mut sub, 3).await;
    send.reset(VarInt::from_u32(9)).unwrap();
    recv.stop(VarInt::from_u32(9)).unwrap();
    sub.load_until(idle).await;

    // A dropped stream.
    let (send, recv) = start_long(&conn, &mut sub, 4).await;
    drop((send, recv));
    sub.load_until(idle).await;

    // A bad frame after the Generate: the stream is reset with BAD_FRAME.
    let (mut send, mut recv) = start_long(&conn, &mut sub, 5).await;
    send.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(
        reset_code(&mut recv).await,
        Some(VarInt::from_u32(codes::BAD_FRAME))
    );
    sub.load_until(idle).await;

    // A lost connection.
    let other = connect(&c.router, node.local_addr()).await.unwrap();
    let (_send, _recv) = start_long(&other, &mut sub, 6).await;
    other.close(VarInt::from_u32(0), b"gone");
    sub.load_until(idle).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_before_any_token() {
    let c = certs("reject");
    let node = start(config(&c.dir)).await;
    let conn = connect(&c.router, node.local_addr()).await.unwrap();
    let max = node.info().max_seq_tokens as usize;
    let cases = [
        (generate(1, prompt(max, 0), 1), RejectReason::TooLong),
        (generate(2, Vec::new(), 4), RejectReason::Invalid),
        (generate(3, vec![5, 9999], 4), RejectReason::Invalid),
        (generate(4, prompt(8, 0), 0), RejectReason::Invalid),
        (
            GenerateRequest {
                logprobs: 200,
                ..generate(5, prompt(8, 0), 4)
            },
            RejectReason::Invalid,
        ),
    ];
    for (req, reason) in cases {
        let id = req.request;
        let (_send, mut recv) = send_generate(&conn, req).await;
        match next(&mut recv).await {
            Some(Message::Reject(r)) => {
                assert_eq!((r.request, r.reason), (id, reason), "{}", r.message)
            }
            other => panic!("{id}: {other:?}"),
        }
        assert_eq!(next(&mut recv).await, None, "nothing after a Reject");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_reports_load_and_the_prefix_cache() {
    let c = certs("subscribe");
    let node = start(config(&c.dir)).await;
    let conn = connect(&c.router, node.local_addr()).await.unwrap();
    let mut sub = Subscription::open(&conn).await;
    assert_eq!(&sub.hello, node.info());
    assert_eq!(
        (
            sub.hello.node.as_str(),
            sub.hello.model.as_str(),
            sub.hello.executor.as_str()
        ),
        ("node-1", "tiny", "cpu")
    );
    assert_eq!((sub.hello.num_layers, sub.hello.block_tokens), (4, 16));
    assert_eq!(sub.hello.eos_tokens, vec![2]);
    // Periodic reports keep coming while idle.
    let first = sub.load_until(|_| true).await;
    let later = sub.load_until(|l| l.seq >= first.seq + 3).await;
    assert!(later.at_us > first.at_us);
    assert_eq!(later.gpu_free_blocks, sub.hello.gpu_blocks);
    assert_eq!(later.predicted_queue_wait_us, 0);
    assert!(later.cost.decode.d0 > 0.0 || later.cost.decode.d1 > 0.0);

    // A request with two full blocks of prompt: both are stored on the GPU tier.
    let p = prompt(40, 4);
    let hashes = chain(0, &p, 16, 8);
    assert_eq!(hashes.len(), 2);
    let (_send, mut recv) = send_generate(&conn, generate(1, p, 4)).await;
    let (_, end) = collect(&mut recv).await;
    assert!(matches!(end, Message::Finish(_)), "{end:?}");
    while !hashes.iter().all(|&h| sub.stored(h)) {
        sub.load_until(|_| true).await;
    }

    // A new subscriber gets the cache's contents as a snapshot.
    let mut late = Subscription::open(&conn).await;
    while !hashes.iter().all(|&h| late.stored(h)) {
        late.load_until(|_| true).await;
    }
    node.shutdown().await.unwrap();
}

/// The error code a stream was reset with, if it was.
async fn reset_code(recv: &mut RecvStream) -> Option<VarInt> {
    let mut buf = [0u8; 256];
    loop {
        match timeout(BOUND, recv.read(&mut buf)).await.unwrap() {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(quinn::ReadError::Reset(code)) => return Some(code),
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stream_is_closed_alone() {
    let c = certs("garbage");
    let node = start(config(&c.dir)).await;
    let conn = connect(&c.router, node.local_addr()).await.unwrap();
    let token = frame::encode(&Message::Cancel {
        request: RequestId(1),
    })
    .unwrap();
    let cases: [(&str, Vec<u8>, u32); 4] = [
        ("too large", vec![0xff; 64], codes::BAD_FRAME),
        (
            "garbage body",
            [&[8u8, 0, 0, 0][..], &[0xA5; 8]].concat(),
            codes::BAD_FRAME,
        ),
        ("truncated", vec![100, 0, 0, 0, 1, 2, 3], codes::BAD_FRAME),
        ("wrong first message", token, codes::UNEXPECTED),
    ];
    for (what, bytes, code) in cases {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        assert_eq!(
            reset_code(&mut recv).await,
            Some(VarInt::from_u32(code)),
            "{what}"
        );
        // The connection goes on serving.
        let (_send, mut recv) = send_generate(&conn, generate(2, prompt(20, 5), 3)).await;
        let (tokens, end) = collect(&mut recv).await;
        assert_eq!(tokens.len(), 3, "{what}");
        assert!(matches!(end, Message::Finish(_)), "{what}: {end:?}");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_another_ca_is_refused() {
    let c = certs("foreign");
    let node = start(config(&c.dir)).await;
    let foreign = ClusterCa::generate("other")
        .unwrap()
        .issue("mallory")
        .unwrap();
    let stranger = Identity {
        ca: c.ca.cert().clone(),
        ..foreign
    };
    let attempt = async {
        let conn = connect(&stranger, node.local_addr()).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        frame::write_frame(&mut send, &Message::Generate(generate(1, prompt(8, 0), 2)))
            .await
            .map_err(|e| e.to_string())?;
        frame::read_frame(&mut recv, DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| e.to_string())
    };
    let result = timeout(BOUND, attempt).await.unwrap();
    assert!(result.is_err(), "a foreign client was served: {result:?}");
    // Members are still served.
    let conn = connect(&c.router, node.local_addr()).await.unwrap();
    let (_send, mut recv) = send_generate(&conn, generate(2, prompt(8, 0), 2)).await;
    assert_eq!(collect(&mut recv).await.0.len(), 2);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_node_runs_in_real_time_and_shuts_down_cleanly() {
    let c = certs("sim");
    let mut cfg = config(&c.dir);
    cfg.executor = ExecutorKind::Sim;
    cfg.model = "llama-3-8b".into();
    cfg.gpu_mib = Some(4096);
    cfg.host_mib = Some(4096);
    cfg.scheduler.max_seq_tokens = Some(32_768);
    cfg.limits.shutdown_grace_ms = 3_000;
    let node = start(cfg).await;
    assert_eq!(node.info().executor, "sim");
    let conn = connect(&c.router, node.local_addr()).await.unwrap();
    let mut sub = Subscription::open(&conn).await;

    // A request long enough to outlive the shutdown's grace period.
    let sent = std::time::Instant::now();
    let (_send, mut recv) = send_generate(&conn, generate(1, prompt(64, 1), 30_000)).await;
    let mut tokens = Vec::new();
    while tokens.len() < 20 {
        match next(&mut recv).await {
            Some(Message::Token(t)) => tokens.push(t),
            other => panic!("{other:?}"),
        }
    }
    // A decode step of Llama 3 8B on an H200 is modelled at a few milliseconds: the node's
    // clock advances by a step between tokens, and so does the wall clock, because the engine
    // sleeps until each step's modelled end before it hands out the tokens.
    let cfg8b = strata_node::model::Preset::Llama3_8b.config();
    let decode = roofline::profile(&cfg8b, &roofline::H200, 2).decode_s(1, 64, 32);
    assert!(decode > 1e-3, "{decode}");
    for w in tokens.windows(2) {
        let gap_s = (w[1].at_us - w[0].at_us) as f64 / 1e6;
        assert!(gap_s >= 0.9 * decode, "{gap_s} < {decode}");
    }
    let wall_s = sent.elapsed().as_secs_f64();
    assert!(
        wall_s >= 19.0 * decode,
        "{wall_s} s for 19 decode steps of {decode} s"
    );
    let load = sub.load_until(|l| l.running == 1).await;
    assert!(load.predicted_queue_wait_us < 1_000_000);

    let token = node.shutdown_token();
    let done = tokio::spawn(node.wait());
    token.cancel();
    // During the grace period a new request is rejected.
    let (_s, mut r) = send_generate(&conn, generate(2, prompt(8, 0), 2)).await;
    match next(&mut r).await {
        Some(Message::Reject(rej)) => assert_eq!(rej.reason, RejectReason::ShuttingDown),
        other => panic!("{other:?}"),
    }
    // The running request is cancelled after the grace period, and says so.
    let (_, end) = collect(&mut recv).await;
    assert!(
        matches!(&end, Message::Finish(f) if f.reason == WireFinishReason::Cancelled),
        "{end:?}"
    );
    timeout(BOUND, done).await.unwrap().unwrap().unwrap();
    // The endpoint is closed with the shutdown code.
    let closed = timeout(BOUND, conn.closed()).await.unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(a) if a.error_code == VarInt::from_u32(codes::SHUTDOWN)),
        "{closed:?}"
    );
}
