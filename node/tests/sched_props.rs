//! Property tests of the scheduler: every plan it makes obeys the executor's contract, the
//! block manager stays valid, and every accepted request ends once with exactly its tokens.

use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use strata_node::exec::sim::SimExecutor;
use strata_node::exec::{Executor, StepOutput};
use strata_node::kv::{BlockManager, KvLayout, Tier};
use strata_node::sched::{
    Event, FinishReason, Mode, Request, Scheduler, SchedulerConfig, StepPlan, StreamDecode,
    WorkKind,
};
use strata_transport::proto::{
    CostProfile, DecodeCoeffs, PrefillCoeffs, RequestId, SloClass, TransferCoeffs,
};

const LAYERS: usize = 4;

fn layout() -> KvLayout {
    KvLayout {
        layers: LAYERS,
        block_tokens: 4,
        kv_heads: 1,
        head_dim: 8,
        dtype_bytes: 2,
    }
}

fn cost(stream_cheap: bool) -> CostProfile {
    CostProfile {
        prefill: PrefillCoeffs {
            a0: 1e-4,
            a1: 1e-5,
            a2: 1e-8,
        },
        decode: DecodeCoeffs {
            d0: 1e-3,
            d1: 1e-5,
            d2: 1e-8,
        },
        decode_wide: None,
        transfer: TransferCoeffs {
            t0: 0.0,
            bw_bytes_per_s: if stream_cheap { 1e12 } else { 1e6 },
        },
        step_overhead_s: 0.0,
    }
}

/// The executor's contract (see `sched::plan`), checked against the manager's state.
fn check_plan(plan: &StepPlan, kv: &BlockManager, staging: usize) -> Result<(), String> {
    let mut seen = HashSet::new();
    let mut staged = [0usize; LAYERS];
    for item in &plan.items {
        if !seen.insert(item.seq) {
            return Err(format!("{} twice in one step", item.seq));
        }
        if item.layers.len() != LAYERS {
            return Err(format!("{}: {} layer tables", item.seq, item.layers.len()));
        }
        let end = item.start_pos + item.tokens.len();
        if item.kind == WorkKind::Decode && item.tokens.len() != 1 {
            return Err(format!(
                "{}: decode of {} tokens",
                item.seq,
                item.tokens.len()
            ));
        }
        if item.start_pos != kv.seq_tokens(item.seq) {
            return Err(format!(
                "{}: starts at {} but holds {}",
                item.seq,
                item.start_pos,
                kv.seq_tokens(item.seq)
            ));
        }
        for (l, t) in item.layers.iter().enumerate() {
            if t.blocks.len() != layout().blocks_for(end) {
                return Err(format!(
                    "{} layer {l}: {} blocks for {end} tokens",
                    item.seq,
                    t.blocks.len()
                ));
            }
            if t.blocks.as_slice() != &kv.table(item.seq, l)[..t.blocks.len()] {
                return Err(format!(
                    "{} layer {l}: table differs from the manager's",
                    item.seq
                ));
            }
            if t.staged {
                staged[l] += t.blocks.len();
            } else if t.blocks.iter().any(|b| b.tier != Tier::Gpu) {
                return Err(format!(
                    "{} layer {l}: resident layer with a host block",
                    item.seq
                ));
            }
        }
    }
    if let Some(l) = (0..LAYERS).find(|&l| staged[l] > staging) {
        return Err(format!(
            "layer {l}: {} staged blocks, staging holds {staging}",
            staged[l]
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Case {
    mode: Mode,
    gpu_blocks: usize,
    staging: usize,
    chunk: usize,
    stream: bool,
    reqs: Vec<(u64, usize, usize, u8, bool)>, // arrival ms, prompt, out, priority, shared prefix
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(Mode::Baseline), Just(Mode::Layerwise)],
        20usize..120,
        0usize..40,
        prop_oneof![Just(0usize), 4usize..40],
        any::<bool>(),
        prop::collection::vec(
            (0u64..400, 1usize..60, 1usize..30, 0u8..3, any::<bool>()),
            1..14,
        ),
    )
        .prop_map(|(mode, gpu, staging, chunk, stream, reqs)| Case {
            mode,
            gpu_blocks: gpu * LAYERS,
            staging,
            chunk,
            stream,
            reqs,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn plans_keep_the_contract_and_requests_end_once(c in case()) {
        let host = 400 * LAYERS;
        let cfg = SchedulerConfig {
            mode: c.mode,
            staging_blocks: c.staging,
            watermark_blocks: LAYERS,
            prefill_chunk_tokens: c.chunk,
            stream_decode: if c.stream { StreamDecode::Always } else { StreamDecode::Never },
            max_prefill_tokens: 64,
            ..SchedulerConfig::default()
        };
        let cost = cost(c.stream);
        let mut sched = Scheduler::new(cfg, cost, layout(), c.gpu_blocks, host)
            .with_streaming(c.stream);
        let mut kv = BlockManager::new(layout(), c.gpu_blocks, host);
        let mut exec = SimExecutor::new(cost, layout(), 50, 3);
        let mut pending: Vec<Request> = c.reqs.iter().enumerate().map(|(i, &(at, p, out, prio, shared))| {
            let prompt = (0..p as u32).map(|t| if shared && t < 12 { t } else { 100 + t * 7 + i as u32 }).collect();
            let mut r = Request::new(RequestId(i as u64), prompt, out);
            r.arrival = Duration::from_millis(at);
            r.slo = SloClass { name: "p".into(), ttft_ms: 500.0, tpot_ms: 50.0, priority: prio };
            r
        }).collect();
        pending.sort_by_key(|r| r.arrival);
        let mut accepted: HashMap<RequestId, usize> = HashMap::new();
        let mut tokens: HashMap<RequestId, usize> = HashMap::new();
        let mut finished: HashSet<RequestId> = HashSet::new();
        let mut now = Duration::ZERO;
        let mut pending = pending.into_iter().peekable();
        for _ in 0..20_000 {
            while let Some(r) = pending.next_if(|r| r.arrival <= now) {
                let (id, out) = (r.id, r.max_tokens);
                if sched.handle_submit(r).is_ok() {
                    accepted.insert(id, out);
                }
            }
            if !sched.has_work() {
                match pending.peek() {
                    Some(r) => { now = r.arrival; continue; }
                    None => break,
                }
            }
            let plan = sched.poll_plan(&mut kv, now);
            if let Err(e) = check_plan(&plan, &kv, c.staging) {
                prop_assert!(false, "{e}");
            }
            let out: StepOutput = exec.execute(&plan).unwrap();
            let end = now + out.elapsed + Duration::from_micros(1);
            for ev in sched.handle_output(&plan, &out, &mut kv, end) {
                match ev {
                    Event::Token { seq, .. } => *tokens.entry(seq).or_default() += 1,
                    Event::Finished { seq, reason, .. } => {
                        prop_assert_eq!(reason, FinishReason::Length);
                        prop_assert!(finished.insert(seq), "{} finished twice", seq);
                    }
                    Event::Admitted { .. } => {}
                }
            }
            if let Err(e) = kv.validate() {
                prop_assert!(false, "block manager: {e}");
            }
            if plan.items.is_empty() && plan.copies.is_empty() {
                match pending.peek() {
                    Some(r) => {
                        now = now.max(r.arrival);
                        continue;
                    }
                    None => prop_assert!(false, "stalled with {} waiting, {} running",
                        sched.waiting_len(), sched.running_len()),
                }
            }
            now = end;
        }
        prop_assert!(!sched.has_work(), "unfinished after the step bound");
        for (id, out) in &accepted {
            prop_assert!(finished.contains(id), "{} never finished", id);
            prop_assert_eq!(tokens.get(id).copied().unwrap_or(0), *out, "{} token count", id);
        }
    }
}
