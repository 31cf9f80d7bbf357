//! Runs the points of `strata bench gpu` on GPU 0 with the cuda executor and random bf16
//! weights. Progress goes to stderr, one line per phase and per point.

use super::cost::ModelCost;
use super::plans;
use super::points::{Budget, Offload, Point, size_pools};
use super::report::{
    DecodeResult, Device, Direction, Formulas, OffloadResult, Peaks, Pools, PrefillResult, Report,
    Skipped, StreamedResult, TransferResult, median,
};
use super::{DTYPE_BYTES, GpuArgs};
use anyhow::Context;
use std::time::Instant;
use strata_node::exec::cuda::{self, CudaExecutor};
use strata_node::exec::{ExecError, Executor};
use strata_node::kv::KvLayout;
use strata_node::model::ModelConfig;
use strata_node::sched::StepPlan;

const GIB: f64 = (1u64 << 30) as f64;

/// The one GPU the benchmark runs on.
const ORDINAL: usize = 0;

/// One warm-up run, then `repeats` timed runs of `plan`, each until every copy it started has
/// finished (`synchronize`), in milliseconds.
fn time(exec: &mut CudaExecutor, plan: &StepPlan, repeats: usize) -> Result<Vec<f64>, ExecError> {
    exec.execute(plan)?;
    exec.synchronize()?;
    let mut samples = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        exec.execute(plan)?;
        exec.synchronize()?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(samples)
}

/// Runs every point of `args` on `cfg`, called `label` in the report.
pub fn measure(args: &GpuArgs, cfg: &ModelConfig, label: &str) -> anyhow::Result<Report> {
    let layout = KvLayout::for_model(cfg, args.block_tokens, DTYPE_BYTES);
    let cost = ModelCost::new(cfg, DTYPE_BYTES);
    let info = cuda::probe(ORDINAL).context("strata bench gpu needs a usable GPU")?;
    eprintln!(
        "gpu {ORDINAL}: {} (sm {}.{}), {:.1} GiB free of {:.1}; measuring peaks",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.free_bytes as f64 / GIB,
        info.total_bytes as f64 / GIB
    );
    let p = cuda::measure_peaks(ORDINAL).context("measuring the device's peaks")?;
    let peaks = Peaks {
        gemm_tflops: p.gemm_tflops,
        device_copy_gbps: p.device_copy_gbps,
        h2d_gbps: p.h2d_gbps,
        d2h_gbps: p.d2h_gbps,
    };
    eprintln!(
        "peaks: GEMM {:.0} TFLOP/s, device copy {:.0} GB/s, H2D {:.1} GB/s, D2H {:.1} GB/s",
        peaks.gemm_tflops, peaks.device_copy_gbps, peaks.h2d_gbps, peaks.d2h_gbps
    );
    let free_bytes = cuda::probe(ORDINAL)?.free_bytes;
    let budget = Budget {
        free_bytes,
        reserved_bytes: cuda::reserved_bytes(cfg, args.max_rows()),
        headroom_bytes: (args.headroom_gib * GIB) as u64,
        block_bytes: layout.block_bytes(),
        staging_blocks: args.staging_blocks(&layout),
    };
    let points = args.points(&layout);
    let (pools, no_room) = size_pools(&points, &layout, &budget);
    for (p, why) in &no_room {
        eprintln!("skipping {p}: {why}");
    }
    eprintln!(
        "allocating {} weights ({:.1} GiB reserved) and pools: {} GPU blocks ({:.1} GiB), {} host \
         blocks ({:.2} GiB), {} staging blocks",
        label,
        budget.reserved_bytes as f64 / GIB,
        pools.gpu_blocks,
        (pools.gpu_blocks as u64 * budget.block_bytes) as f64 / GIB,
        pools.host_blocks,
        (pools.host_blocks as u64 * budget.block_bytes) as f64 / GIB,
        pools.staging_blocks
    );
    let mut exec = CudaExecutor::random(cfg, args.seed, layout, pools)
        .context("starting the cuda executor")?;

    let mut report = Report {
        device: Device {
            name: info.name.clone(),
            compute_capability: info.compute_capability,
            total_bytes: info.total_bytes,
            free_bytes,
        },
        model: label.to_string(),
        cost,
        pools: Pools {
            gpu_blocks: pools.gpu_blocks,
            host_blocks: pools.host_blocks,
            staging_blocks: pools.staging_blocks,
            block_tokens: layout.block_tokens,
            block_bytes: layout.block_bytes(),
        },
        budget,
        repeats: args.repeats,
        seed: args.seed,
        formulas: Formulas::default(),
        peaks,
        prefill: Vec::new(),
        decode: Vec::new(),
        transfer: Vec::new(),
        offload: Vec::new(),
        streamed: Vec::new(),
        skipped: no_room
            .iter()
            .map(|(p, why)| Skipped {
                point: p.to_string(),
                reason: why.to_string(),
            })
            .collect(),
    };
    let todo: Vec<Point> = points
        .into_iter()
        .filter(|p| !no_room.iter().any(|(q, _)| q == p))
        .collect();
    for (i, point) in todo.iter().enumerate() {
        let started = Instant::now();
        let line = run_point(&mut exec, args, &layout, point, &mut report)
            .with_context(|| format!("{point}"))?;
        eprintln!(
            "[{}/{}] {point}: {line} ({:.1}s)",
            i + 1,
            todo.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let none = (report.offload.iter())
        .find(|o| o.offload == Offload::None)
        .map(|o| o.median_ms);
    for o in &mut report.offload {
        o.ratio_to_none = none.map(|n| o.median_ms / n.max(1e-9));
    }
    Ok(report)
}

/// Runs one point, adds its result to `report`, and returns a progress line.
fn run_point(
    exec: &mut CudaExecutor,
    args: &GpuArgs,
    layout: &KvLayout,
    point: &Point,
    report: &mut Report,
) -> Result<String, ExecError> {
    let vocab = report.cost.vocab as usize;
    let (cost, peaks, repeats) = (report.cost, report.peaks, args.repeats);
    Ok(match *point {
        Point::Prefill { tokens } => {
            let samples = time(exec, &plans::prefill(layout, vocab, tokens), repeats)?;
            let r = PrefillResult::new(&cost, &peaks, tokens, samples);
            let line = format!("{:.2} ms, MFU {:.1}%", r.median_ms, 100.0 * r.mfu);
            report.prefill.push(r);
            line
        }
        Point::Decode { batch, ctx } => {
            let samples = time(exec, &plans::decode(layout, vocab, batch, ctx), repeats)?;
            let r = DecodeResult::new(&cost, &peaks, batch, ctx, samples);
            let line = format!("{:.3} ms, {:.0} GB/s", r.median_ms, r.achieved_gbps);
            report.decode.push(r);
            line
        }
        Point::Transfer { blocks, order } => {
            let (offload, reload) = plans::transfer(blocks, order, args.seed);
            let mut line = Vec::new();
            for (dir, plan) in [(Direction::Offload, offload), (Direction::Reload, reload)] {
                let samples = time(exec, &plan, repeats)?;
                let r = TransferResult::new(dir, order, blocks, layout.block_bytes(), samples);
                line.push(format!("{dir:?} {:.1} GB/s", r.gbps).to_lowercase());
                report.transfer.push(r);
            }
            line.join(", ")
        }
        Point::Offload { tokens, offload } => {
            let staged = offload.staged(layout.layers);
            let plan = plans::staged_prefill(layout, vocab, tokens, &staged);
            let samples = time(exec, &plan, repeats)?;
            let staged_layers: Vec<usize> = (0..layout.layers).filter(|&l| staged[l]).collect();
            let median_ms = median(&samples);
            report.offload.push(OffloadResult {
                offload,
                tokens,
                staged_bytes: (staged_layers.len() * layout.blocks_for(tokens)) as u64
                    * layout.block_bytes(),
                staged_layers,
                samples_ms: samples,
                median_ms,
                ratio_to_none: None,
            });
            format!("{median_ms:.2} ms")
        }
        Point::Streamed { batch, ctx } => {
            let staged = Offload::AllButOne.staged(layout.layers);
            let resident = time(exec, &plans::decode(layout, vocab, batch, ctx), repeats)?;
            let plan = plans::streamed_decode(layout, vocab, batch, ctx, &staged);
            let samples = time(exec, &plan, repeats)?;
            let count = staged.iter().filter(|&&s| s).count();
            let bytes_in = (batch * count * layout.blocks_for(ctx)) as u64 * layout.block_bytes();
            let r = StreamedResult::new(&peaks, batch, ctx, count, bytes_in, resident, samples);
            let line = format!(
                "{:.3} ms against {:.3} resident, {:.0}% of max(compute, copy-in)",
                r.median_ms,
                r.resident_ms,
                100.0 * r.overlap
            );
            report.streamed.push(r);
            line
        }
    })
}
