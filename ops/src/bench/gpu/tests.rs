//! The formulas, the plans and the pool sizing of `strata bench gpu`, without a GPU: the plans
//! run on the cpu executor with the `tiny` model, which checks them against the plan contract.

use super::cost::ModelCost;
use super::plans::{self, Order};
use super::points::{Budget, Offload, Point, size_pools};
use super::report::{self, Peaks, PrefillResult, Report};
use super::{GpuArgs, table};
use clap::Parser;
use std::collections::HashSet;
use strata_node::exec::Executor;
use strata_node::exec::cpu::CpuExecutor;
use strata_node::kv::{BlockId, KvLayout, Tier};
use strata_node::model::{Preset, Weights};
use strata_node::sched::{StepPlan, WorkKind};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: GpuArgs,
}

fn args(extra: &[&str]) -> GpuArgs {
    let argv = std::iter::once("gpu").chain(extra.iter().copied());
    Cli::try_parse_from(argv).expect("arguments parse").args
}

fn llama8b() -> (strata_node::model::ModelConfig, KvLayout) {
    let cfg = Preset::Llama3_8b.config();
    let layout = KvLayout::for_model(&cfg, 16, 2);
    (cfg, layout)
}

#[test]
fn llama_3_8b_flops_and_bytes() {
    let (cfg, _) = llama8b();
    let c = ModelCost::new(&cfg, 2);
    // 4096·(4096 + 2·1024) + 4096·4096 + 3·4096·14336
    assert_eq!(c.layer_matrix_params(), 218_103_808);
    // 2·n·32·P + 2·V·h + 2·2·32·32·128·n(n+1)/2 at n = 4096, by hand.
    assert_eq!(c.prefill_flops(4096), 61_574_775_570_432.0);
    // At one token: the matrices, one logits row and one query–key pair per head.
    let one = 2.0 * 32.0 * 218_103_808.0 + 2.0 * 128_256.0 * 4096.0 + 4.0 * 32.0 * 32.0 * 128.0;
    assert_eq!(c.prefill_flops(1), one);
    // bf16: 32 layers with their norms, the final norm, the lm_head.
    assert_eq!(c.weight_bytes(), 15_009_849_344);
    // 128 sequences of 4097 positions, K and V, 32 layers, 8 heads of 128, bf16.
    assert_eq!(c.decode_kv_bytes(128, 4096), 68_736_253_952);
    assert_eq!(c.decode_bytes(1, 0), 15_009_849_344 + 32 * 2 * 8 * 128 * 2);
}

#[test]
fn derived_rates() {
    let (cfg, _) = llama8b();
    let c = ModelCost::new(&cfg, 2);
    let peaks = Peaks {
        gemm_tflops: 500.0,
        device_copy_gbps: 4000.0,
        h2d_gbps: 50.0,
        d2h_gbps: 50.0,
    };
    assert_eq!(report::median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(report::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    assert_eq!(report::median(&[]), 0.0);
    let p = PrefillResult::new(&c, &peaks, 4096, vec![200.0, 100.0, 300.0]);
    assert_eq!(p.median_ms, 200.0);
    assert!((p.tokens_per_s - 20_480.0).abs() < 1e-6);
    let want_mfu = 61_574_775_570_432.0 / 0.2 / 500e12;
    assert!((p.mfu - want_mfu).abs() < 1e-12);
    let d = report::DecodeResult::new(&c, &peaks, 1, 0, vec![10.0]);
    assert!((d.achieved_gbps - c.decode_bytes(1, 0) as f64 / 0.01 / 1e9).abs() < 1e-6);
    assert!((d.fraction_of_device_copy - d.achieved_gbps / 4000.0).abs() < 1e-12);
    let t = report::TransferResult::new(
        report::Direction::Offload,
        Order::Consecutive,
        4096,
        65536,
        vec![5.0],
    );
    assert!((t.gbps - 268_435_456.0 / 0.005 / 1e9).abs() < 1e-9);
}

#[test]
fn staged_layers_spread_evenly() {
    let half = Offload::Half.staged(32);
    assert_eq!(half.iter().filter(|&&s| s).count(), 16);
    assert!(half.iter().enumerate().all(|(l, &s)| s == (l % 2 == 1)));
    let most = Offload::AllButOne.staged(32);
    assert_eq!(most.iter().position(|&s| !s), Some(0));
    assert_eq!(most.iter().filter(|&&s| s).count(), 31);
    assert!(Offload::None.staged(32).iter().all(|&s| !s));
    assert_eq!(plans::spread(5, 9), vec![true; 5]);
}

fn all_blocks(plan: &StepPlan) -> Vec<BlockId> {
    (plan.items.iter())
        .flat_map(|i| i.layers.iter().flat_map(|l| l.blocks.iter().copied()))
        .collect()
}

fn assert_within(plan: &StepPlan, need: &plans::Need) {
    let blocks = all_blocks(plan);
    let distinct: HashSet<_> = blocks.iter().collect();
    assert_eq!(distinct.len(), blocks.len(), "a block is used twice");
    for b in blocks {
        let cap = if b.tier == Tier::Gpu {
            need.gpu
        } else {
            need.host
        };
        assert!((b.index as usize) < cap, "{b} outside a need of {need:?}");
    }
}

#[test]
fn plans_have_the_right_blocks() {
    let (cfg, layout) = llama8b();
    let vocab = cfg.vocab_size;

    let p = plans::prefill(&layout, vocab, 1000);
    assert_eq!(p.items.len(), 1);
    let item = &p.items[0];
    assert_eq!(
        (item.kind, item.start_pos, item.tokens.len()),
        (WorkKind::Prefill, 0, 1000)
    );
    assert!(item.tokens.iter().all(|&t| (t as usize) < vocab));
    assert_eq!(item.layers.len(), 32);
    assert!(
        item.layers
            .iter()
            .all(|l| !l.staged && l.blocks.len() == 63)
    );
    assert!(all_blocks(&p).iter().all(|b| b.tier == Tier::Gpu));
    assert_within(&p, &plans::prefill_need(&layout, 1000));

    let d = plans::decode(&layout, vocab, 4, 4096);
    assert_eq!(d.items.len(), 4);
    for item in &d.items {
        assert_eq!(
            (item.kind, item.start_pos, item.tokens.len()),
            (WorkKind::Decode, 4096, 1)
        );
        assert!(
            item.layers
                .iter()
                .all(|l| !l.staged && l.blocks.len() == 257)
        );
    }
    let seqs: HashSet<_> = d.items.iter().map(|i| i.seq).collect();
    assert_eq!(seqs.len(), 4);
    assert_within(&d, &plans::decode_need(&layout, 4, 4096));
    assert_eq!(plans::decode_need(&layout, 128, 4096).gpu, 128 * 32 * 257);

    for offload in Offload::ALL {
        let staged = offload.staged(32);
        let s = plans::staged_prefill(&layout, vocab, 4096, &staged);
        let need = plans::staged_need(&layout, 4096, &staged);
        for (l, kv) in s.items[0].layers.iter().enumerate() {
            assert_eq!(kv.staged, staged[l]);
            assert_eq!(kv.blocks.len(), 256);
            let tier = if staged[l] { Tier::Host } else { Tier::Gpu };
            assert!(kv.blocks.iter().all(|b| b.tier == tier), "layer {l}");
        }
        assert_eq!(need.host, offload.staged_count(32) * 256);
        assert_eq!(need.staging, if offload == Offload::None { 0 } else { 256 });
        assert_within(&s, &need);
    }

    let most = Offload::AllButOne.staged(32);
    let d = plans::streamed_decode(&layout, vocab, 3, 4096, &most);
    let need = plans::streamed_need(&layout, 3, 4096, &most);
    assert_eq!((need.host, need.staging), (3 * 31 * 257, 3 * 257));
    assert_eq!(need.gpu, plans::decode_need(&layout, 3, 4096).gpu);
    for item in &d.items {
        assert_eq!((item.kind, item.start_pos), (WorkKind::Decode, 4096));
        for (l, kv) in item.layers.iter().enumerate() {
            assert_eq!(kv.staged, l > 0, "layer {l}");
            assert_eq!(kv.blocks.len(), 257);
            let tier = if l > 0 { Tier::Host } else { Tier::Gpu };
            assert!(kv.blocks.iter().all(|b| b.tier == tier), "layer {l}");
        }
    }
    assert_within(&d, &need);
}

#[test]
fn transfer_plans_pair_offload_and_reload() {
    let (off, re) = plans::transfer(100, Order::Consecutive, 1);
    assert!(off.items.is_empty() && re.items.is_empty());
    for (i, c) in off.copies.iter().enumerate() {
        assert_eq!(
            (c.src, c.dst),
            (BlockId::gpu(i as u32), BlockId::host(i as u32))
        );
    }
    let (off, re) = plans::transfer(100, Order::Shuffled, 1);
    let mut src: Vec<u32> = off.copies.iter().map(|c| c.src.index).collect();
    let mut dst: Vec<u32> = off.copies.iter().map(|c| c.dst.index).collect();
    let runs = src.windows(2).filter(|w| w[1] == w[0] + 1).count();
    assert!(runs < 10, "{runs} consecutive pairs in a shuffle of 100");
    src.sort();
    dst.sort();
    assert_eq!(src, (0..100).collect::<Vec<_>>());
    assert_eq!(dst, src);
    for (o, r) in off.copies.iter().zip(&re.copies) {
        assert_eq!((r.src, r.dst), (o.dst, o.src));
        assert_eq!((o.src.tier, o.dst.tier), (Tier::Gpu, Tier::Host));
    }
}

#[test]
fn every_plan_runs_on_the_cpu_executor() {
    let cfg = Preset::Tiny.config();
    let layout = KvLayout::for_model(&cfg, 16, 4);
    let a = args(&[
        "--model=tiny",
        "--prefill=40,17",
        "--decode-batch=1,3",
        "--decode-ctx=33",
        "--transfer-mib=1",
        "--offload-prompt=40",
        "--streamed-batch=2",
    ]);
    a.validate(&cfg).expect("valid arguments");
    let points = a.points(&layout);
    let budget = Budget {
        free_bytes: 1 << 40,
        reserved_bytes: 0,
        headroom_bytes: 0,
        block_bytes: layout.block_bytes(),
        staging_blocks: a.staging_blocks(&layout),
    };
    let (pools, skipped) = size_pools(&points, &layout, &budget);
    assert!(skipped.is_empty());
    assert!(points.contains(&Point::Streamed { batch: 2, ctx: 33 }));
    let weights = Weights::random(&cfg, 1, 0..cfg.num_layers).expect("tiny weights");
    let mut exec = CpuExecutor::new(&cfg, weights, layout, pools).expect("cpu executor");
    let vocab = cfg.vocab_size;
    for p in &points {
        let steps = match *p {
            Point::Prefill { tokens } => vec![plans::prefill(&layout, vocab, tokens)],
            Point::Decode { batch, ctx } => vec![plans::decode(&layout, vocab, batch, ctx)],
            Point::Transfer { blocks, order } => {
                let (o, r) = plans::transfer(blocks, order, 7);
                vec![o, r]
            }
            Point::Offload { tokens, offload } => {
                let staged = offload.staged(layout.layers);
                vec![plans::staged_prefill(&layout, vocab, tokens, &staged)]
            }
            Point::Streamed { batch, ctx } => {
                let staged = Offload::AllButOne.staged(layout.layers);
                vec![
                    plans::decode(&layout, vocab, batch, ctx),
                    plans::streamed_decode(&layout, vocab, batch, ctx, &staged),
                ]
            }
        };
        for s in steps {
            let out = exec.execute(&s).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(out.tokens.len(), s.items.len(), "{p}");
        }
    }
}

#[test]
fn points_that_do_not_fit_are_skipped() {
    let (cfg, layout) = llama8b();
    let a = args(&[]);
    a.validate(&cfg).expect("defaults are valid");
    assert_eq!(a.transfer_blocks(&layout), 4096);
    assert_eq!(a.max_rows(), 16384);
    let points = a.points(&layout);
    assert_eq!(points.len(), 3 + 3 + 2 + 3 + 2);
    assert_eq!(a.staging_blocks(&layout), 4 * 257);
    let gib = 1u64 << 30;
    let budget = Budget {
        free_bytes: 100 * gib,
        reserved_bytes: 16 * gib,
        headroom_bytes: 2 * gib,
        block_bytes: layout.block_bytes(),
        staging_blocks: a.staging_blocks(&layout),
    };
    let (pools, skipped) = size_pools(&points, &layout, &budget);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(pools.gpu_blocks, 128 * 32 * 257);
    assert_eq!(pools.host_blocks, 4 * 31 * 257);
    assert_eq!(pools.staging_blocks, 4 * 257);

    let small = Budget {
        free_bytes: 60 * gib,
        ..budget
    };
    let (pools, skipped) = size_pools(&points, &layout, &small);
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        skipped[0].0,
        Point::Decode {
            batch: 128,
            ctx: 4096
        }
    );
    let why = skipped[0].1.to_string();
    assert!(why.contains("needs 64.2 GiB"), "{why}");
    assert_eq!(pools.gpu_blocks, 32 * 32 * 257);
    assert!(pools.gpu_blocks <= small.gpu_blocks());
}

#[test]
fn bad_arguments_are_refused() {
    let (cfg, _) = llama8b();
    for bad in [
        &["--prefill=0"][..],
        &["--prefill=200000"],
        &["--decode-batch=1,0"],
        &["--streamed-batch=0"],
        &["--streamed-batch=65"],
        &["--decode-ctx=131072"],
        &["--repeats=0"],
        &["--transfer-mib=0"],
        &["--offload-prompt=0"],
        &["--block-tokens=0"],
        &["--headroom-gib=-1"],
    ] {
        assert!(args(bad).validate(&cfg).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn the_table_is_short() {
    let (cfg, layout) = llama8b();
    let cost = ModelCost::new(&cfg, 2);
    let peaks = Peaks {
        gemm_tflops: 700.0,
        device_copy_gbps: 4200.0,
        h2d_gbps: 55.0,
        d2h_gbps: 55.0,
    };
    let mut r = Report {
        device: report::Device {
            name: "NVIDIA H200".into(),
            compute_capability: (9, 0),
            total_bytes: 150 << 30,
            free_bytes: 140 << 30,
        },
        model: "llama-3-8b".into(),
        cost,
        pools: report::Pools {
            gpu_blocks: 1,
            host_blocks: 1,
            staging_blocks: 1,
            block_tokens: 16,
            block_bytes: layout.block_bytes(),
        },
        budget: Budget {
            free_bytes: 0,
            reserved_bytes: 0,
            headroom_bytes: 0,
            block_bytes: 1,
            staging_blocks: 1,
        },
        repeats: 5,
        seed: 1,
        formulas: report::Formulas::default(),
        peaks,
        prefill: Vec::new(),
        decode: Vec::new(),
        transfer: Vec::new(),
        offload: Vec::new(),
        streamed: Vec::new(),
        skipped: vec![report::Skipped {
            point: "decode batch 128 at ctx 4096".into(),
            reason: "needs 64.2 GiB".into(),
        }],
    };
    for n in [1024, 4096, 16384] {
        r.prefill
            .push(PrefillResult::new(&cost, &peaks, n, vec![100.0]));
    }
    for b in [1, 32, 128] {
        r.decode.push(report::DecodeResult::new(
            &cost,
            &peaks,
            b,
            4096,
            vec![10.0],
        ));
    }
    for order in [Order::Consecutive, Order::Shuffled] {
        for dir in [report::Direction::Offload, report::Direction::Reload] {
            r.transfer.push(report::TransferResult::new(
                dir,
                order,
                4096,
                65536,
                vec![5.0],
            ));
        }
    }
    for offload in Offload::ALL {
        r.offload.push(report::OffloadResult {
            offload,
            tokens: 4096,
            staged_layers: (1..=offload.staged_count(32)).collect(),
            staged_bytes: 1 << 20,
            samples_ms: vec![300.0],
            median_ms: 300.0,
            ratio_to_none: Some(1.0),
        });
    }
    for b in [1, 4] {
        r.streamed.push(report::StreamedResult::new(
            &peaks,
            b,
            4096,
            31,
            b as u64 * 31 * 256 * 65536,
            vec![7.0],
            vec![12.0],
        ));
    }
    let text = table::render(&r);
    println!("{text}");
    assert!(text.lines().count() <= 40, "{} lines", text.lines().count());
    assert!(text.contains("prefill FLOPs = 2·n·P"));
    assert!(text.contains("skipped decode batch 128"));
    let json = serde_json::to_value(&r).expect("report serializes");
    assert_eq!(json["transfer"][1]["direction"], "reload");
    assert_eq!(json["offload"][2]["offload"], "all-but-one");
    assert!(text.contains("streamed"));
    // 0.52 GB in at 55 GB/s: 9.46 ms of copy, longer than the 7 ms resident step.
    let s = &r.streamed[0];
    assert!((s.copy_in_ms - 9.457).abs() < 0.01, "{}", s.copy_in_ms);
    assert!((s.overlap - s.copy_in_ms / 12.0).abs() < 1e-9);
    assert!((s.serial_ms - (7.0 + s.copy_in_ms)).abs() < 1e-9);
}
