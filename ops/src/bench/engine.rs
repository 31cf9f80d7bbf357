//! `strata bench engine`: baseline vs layer-wise on one long-context workload, in-process.

use super::calpoint::CalPoint;
use super::stats::{ModeReport, StepTotals};
use super::workload::Workload;
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
use strata_node::engine::calibrate::{Calibration, CalibrationPlan, calibrate};
use strata_node::engine::replay::replay;
use strata_node::engine::{Engine, EngineConfig};
use strata_node::exec::cpu::CpuExecutor;
use strata_node::exec::sim::SimExecutor;
use strata_node::exec::{Executor, PoolSizes};
use strata_node::kv::KvLayout;
use strata_node::model::{ModelConfig, ModelSource, Weights};
use strata_node::sched::{Mode, SchedulerConfig, StreamDecode, fit, roofline};
use strata_node::service::gpu::{self, GpuProbe, GpuWeights};
use strata_transport::proto::{CostProfile, SloClass};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecKind {
    /// Real f32 math on this machine's CPU cores; the GPU tier is a capacity-limited RAM pool.
    Cpu,
    /// bf16 math on the first NVIDIA GPU, KV in bf16, a pinned host tier (needs a strata built
    /// with the `cuda` feature, the default).
    Cuda,
    /// No math: step times from a cost profile (fast; any model shape).
    Sim,
}

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Executor that runs the steps.
    #[arg(long, value_enum, default_value = "cpu")]
    executor: ExecKind,
    /// Model: a preset (`tiny`, `llama-3-8b`, `llama-3-70b`) or a HF model directory.
    /// `cpu` computes with its weights (random for presets), so keep it small. `cuda` uploads
    /// the weights of models up to 2e9 layer parameters and of HF directories (slow when large)
    /// and draws random ones on the GPU for larger presets.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Keep only the model's first N layers (with its embedding and lm_head), e.g.
    /// `--model llama-3-70b --layers 8` on one GPU. Calibration then runs at N and at N/2
    /// layers, so the step's fixed cost (embedding, lm_head, sampling) is fitted as
    /// `step_overhead_s` rather than spread over N layers: the per-layer costs it saves apply
    /// to the whole model's depth.
    #[arg(long)]
    layers: Option<usize>,
    /// Requests in the workload (each mode runs the same ones).
    #[arg(long, default_value_t = 60)]
    requests: usize,
    /// Arrival rate in requests per second of engine time. Default: `--load` times the
    /// estimated capacity (see `--load`).
    #[arg(long)]
    rate: Option<f64>,
    /// Offered load as a fraction of the estimated capacity, used when `--rate` is not given.
    /// Capacity is the lower of what compute sustains (prefills plus batched decodes) and what
    /// the GPU budget sustains (the sequences it holds at once over how long each holds them),
    /// both from the cost profile. Near 1, baseline queues mostly for KV blocks.
    #[arg(long, default_value_t = 0.9)]
    load: f64,
    /// Shortest prompt, tokens.
    #[arg(long, default_value_t = 1024)]
    prompt_min: usize,
    /// Longest prompt, tokens.
    #[arg(long, default_value_t = 8192)]
    prompt_max: usize,
    /// Fewest output tokens.
    #[arg(long, default_value_t = 64)]
    output_min: usize,
    /// Most output tokens.
    #[arg(long, default_value_t = 256)]
    output_max: usize,
    /// GPU-tier budget, as a number of full KV footprints of the longest request
    /// (prompt-max + output-max over all layers). Layer-wise mode pays its staging area from it.
    #[arg(long, default_value_t = 1.5)]
    gpu_budget: f64,
    /// Host-tier capacity, GiB (allocated lazily on `cpu`, pinned up front on `cuda`; capped at
    /// what the workload can use).
    #[arg(long, default_value_t = 64.0)]
    host_gib: f64,
    /// Prefill long prompts in chunks of this many tokens beside running decodes, in both
    /// modes (0: a whole prompt in one step).
    #[arg(long, default_value_t = 0)]
    prefill_chunk: usize,
    /// When offloaded layers may stream through staging during decode: `auto` (when the
    /// executor's copies overlap compute), `always`, `never`.
    #[arg(long, default_value = "auto")]
    stream_decode: StreamDecode,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    block_tokens: usize,
    /// TTFT target, ms. Default: 5× the isolated prefill time of the longest prompt.
    #[arg(long)]
    ttft_slo_ms: Option<f64>,
    /// TPOT target, ms. Default: 10× the isolated decode step of one longest sequence.
    #[arg(long)]
    tpot_slo_ms: Option<f64>,
    /// Cost profile (TOML) for the scheduler and, with `sim`, for step times. Default: fitted
    /// here by calibration on `cpu` and `cuda`; an analytic H200 roofline on `sim`.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Write the cost profile this run fitted (or read) to this TOML file, for `profile =` in a
    /// node's config and for `--profile` here (e.g. `profiles/h200-llama-3-8b.toml`).
    #[arg(long)]
    save_profile: Option<PathBuf>,
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "baseline,layerwise")]
    modes: Vec<Mode>,
    /// Seed of the workload and the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Document<'a> {
    runs: &'a [ModeReport],
    executor: ExecKind,
    /// The GPU (`cuda`).
    device: Option<&'a str>,
    /// The model, with `(N of M layers)` when `--layers` cut it.
    model: &'a str,
    workload: &'a Workload,
    ttft_slo_ms: f64,
    tpot_slo_ms: f64,
    gpu_budget_blocks: usize,
    block_bytes: u64,
    cost_profile: &'a CostProfile,
    /// The points calibration measured (empty when the profile was read or analytic).
    calibration: &'a [CalPoint],
}

struct Setup {
    /// The model as run: `--layers` of it.
    cfg: ModelConfig,
    /// Layers of the whole model.
    full_layers: usize,
    weights: ExecWeights,
    layout: KvLayout,
    /// The GPU (`cuda`).
    gpu: Option<GpuProbe>,
}

impl Setup {
    /// The same model cut to its first `layers` layers (a second calibration depth).
    fn with_layers(&self, layers: usize) -> Setup {
        let cfg = ModelConfig {
            num_layers: layers,
            ..self.cfg.clone()
        };
        let weights = match &self.weights {
            ExecWeights::Sim => ExecWeights::Sim,
            ExecWeights::Cpu(w) => ExecWeights::Cpu(w.first_layers(layers)),
            ExecWeights::Cuda(w) => ExecWeights::Cuda(w.first_layers(layers)),
        };
        let layout = KvLayout::for_model(&cfg, self.layout.block_tokens, self.layout.dtype_bytes);
        Setup {
            cfg,
            full_layers: self.full_layers,
            weights,
            layout,
            gpu: self.gpu.clone(),
        }
    }
}

/// What each run's executor is built from.
enum ExecWeights {
    Sim,
    Cpu(Weights),
    Cuda(GpuWeights),
}

fn setup(args: &EngineArgs) -> anyhow::Result<Setup> {
    let source: ModelSource = args.model.parse()?;
    let whole = source.config()?;
    let full_layers = whole.num_layers;
    let cfg = super::truncate_layers(whole, args.layers)?;
    let mut gpu = None;
    let (cfg, weights) = match args.executor {
        ExecKind::Sim => (cfg, ExecWeights::Sim),
        ExecKind::Cuda => {
            // The GPU first: where there is none, that is the one error to report.
            let rows =
                args.prompt_max.max(MAX_PREFILL_TOKENS) + SchedulerConfig::default().max_batch_seqs;
            gpu = Some(gpu::probe(&cfg, rows)?);
            let weights = GpuWeights::choose(&source, &cfg, args.seed, &mut |m| println!("{m}"))?;
            (cfg, ExecWeights::Cuda(weights))
        }
        ExecKind::Cpu => {
            let params = cfg.num_layers
                * (4 * cfg.hidden_size * cfg.hidden_size
                    + 3 * cfg.hidden_size * cfg.intermediate_size);
            if params > 2_000_000_000 {
                bail!(
                    "{} is too large for the cpu executor ({params} layer parameters); use --executor sim",
                    args.model
                );
            }
            let model = source.load(args.seed, 0..cfg.num_layers)?;
            (cfg, ExecWeights::Cpu(model.weights))
        }
    };
    let dtype_bytes = match weights {
        ExecWeights::Cpu(_) => 4,
        ExecWeights::Sim | ExecWeights::Cuda(_) => 2,
    };
    let layout = KvLayout::for_model(&cfg, args.block_tokens, dtype_bytes);
    Ok(Setup {
        cfg,
        full_layers,
        weights,
        layout,
        gpu,
    })
}

/// A fresh executor of the run's kind (one per mode).
fn executor(
    s: &Setup,
    pools: PoolSizes,
    cost: &CostProfile,
    seed: u64,
) -> anyhow::Result<Box<dyn Executor>> {
    executor_with(s, pools, cost, seed, |_| Ok(())).map(|(exec, ())| exec)
}

/// A fresh executor of the run's kind, and what `f` made of it first (a calibration): cuda
/// times `f`'s steps until their copies are done (see `gpu::executor`).
fn executor_with<T>(
    s: &Setup,
    pools: PoolSizes,
    cost: &CostProfile,
    seed: u64,
    f: impl FnOnce(&mut dyn Executor) -> anyhow::Result<T>,
) -> anyhow::Result<(Box<dyn Executor>, T)> {
    let mut exec: Box<dyn Executor> = match &s.weights {
        ExecWeights::Cuda(w) => return gpu::executor(&s.cfg, w.clone(), s.layout, pools, f),
        ExecWeights::Cpu(w) => Box::new(CpuExecutor::new(&s.cfg, w.clone(), s.layout, pools)?),
        ExecWeights::Sim => Box::new(SimExecutor::new(
            *cost,
            s.layout,
            s.cfg.vocab_size as u32,
            seed,
        )),
    };
    let made = f(&mut *exec)?;
    Ok((exec, made))
}

/// The scheduler's prefill budget per step: at least one longest prompt.
const MAX_PREFILL_TOKENS: usize = 8192;

pub fn run(args: EngineArgs) -> anyhow::Result<()> {
    if args.prompt_min == 0
        || args.prompt_min > args.prompt_max
        || args.output_min == 0
        || args.output_min > args.output_max
    {
        bail!("need 0 < prompt-min ≤ prompt-max and 0 < output-min ≤ output-max");
    }
    if args.modes.is_empty() || args.requests == 0 {
        bail!("nothing to run: give at least one mode and one request");
    }
    let s = setup(&args)?;
    let label = super::model_label(&args.model, &s.cfg, s.full_layers);
    let layers = s.layout.layers;
    let max_seq = args.prompt_max + args.output_max;
    if max_seq > s.cfg.max_position_embeddings {
        bail!(
            "prompt-max + output-max = {max_seq} exceeds the model's context of {}",
            s.cfg.max_position_embeddings
        );
    }
    let seq_blocks = s.layout.blocks_for(max_seq);
    let budget = (args.gpu_budget * (layers * seq_blocks) as f64).round() as usize;
    let staging = seq_blocks;
    if budget < layers * seq_blocks + staging + layers {
        bail!(
            "--gpu-budget {} cannot hold one longest request plus staging; raise it",
            args.gpu_budget
        );
    }
    let host_blocks = (args.requests * layers * seq_blocks)
        .min((args.host_gib * (1u64 << 30) as f64 / s.layout.block_bytes() as f64) as usize);
    if let Some(gpu) = &s.gpu {
        let budget_mib = (budget as u64 * s.layout.block_bytes()).div_ceil(1 << 20);
        println!(
            "GPU {}: {}, {} of {} MiB free, {} MiB reserved for weights and workspace",
            gpu.ordinal,
            gpu.name,
            gpu.free_bytes >> 20,
            gpu.total_bytes >> 20,
            gpu.reserved_bytes.div_ceil(1 << 20)
        );
        if !gpu.fits(budget_mib) {
            bail!(
                "--gpu-budget {} is {budget_mib} MiB of KV, which with the reserve exceeds the GPU's free memory; lower --gpu-budget or --prompt-max",
                args.gpu_budget
            );
        }
    }
    // A cut model's label already says how many layers run.
    let depth = if s.cfg.num_layers == s.full_layers {
        format!(" ({layers} layers)")
    } else {
        String::new()
    };
    println!(
        "strata bench engine: {} executor, model {label}{depth}, GPU budget {budget} blocks of {} KiB \
         = {:.1} longest requests",
        format!("{:?}", args.executor).to_lowercase(),
        s.layout.block_bytes() / 1024,
        args.gpu_budget
    );

    let (cost, calibration) = profile(&args, &s)?;
    if let Some(path) = &args.save_profile {
        let text = format!(
            "# Cost profile of the {:?} executor for {label}, written by `strata bench engine --save-profile`.\n{}",
            args.executor,
            toml::to_string(&cost).context("encoding the cost profile")?
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("cost profile written to {}", path.display());
    }
    let mean_prefill = (0..16)
        .map(|i| {
            let p = args.prompt_min + (args.prompt_max - args.prompt_min) * i / 15;
            cost.prefill_s(p, 0, layers)
        })
        .sum::<f64>()
        / 16.0;
    let mut workload = Workload {
        requests: args.requests,
        rate_per_s: 0.0,
        prompt_min: args.prompt_min,
        prompt_max: args.prompt_max,
        output_min: args.output_min,
        output_max: args.output_max,
        vocab_size: s.cfg.vocab_size as u32,
        seed: args.seed,
    };
    let mean_prompt = workload.mean_prompt() as usize;
    let mean_out = workload.mean_output();
    let capacity = capacity_per_s(
        &cost,
        &s.layout,
        budget,
        mean_prefill,
        mean_prompt,
        mean_out,
    );
    let rate = args.rate.unwrap_or(args.load * capacity);
    workload.rate_per_s = rate;
    let ttft_slo_ms = args
        .ttft_slo_ms
        .unwrap_or(5e3 * cost.prefill_s(args.prompt_max, 0, layers));
    let tpot_slo_ms = args
        .tpot_slo_ms
        .unwrap_or(10e3 * cost.decode_s(1, max_seq, layers));
    let slo = SloClass {
        name: "bench".into(),
        ttft_ms: ttft_slo_ms,
        tpot_ms: tpot_slo_ms,
        priority: 0,
    };
    slo.validate()?;
    println!("estimated capacity: {capacity:.3} req/s");
    println!(
        "workload: {} requests, Poisson {rate:.3} req/s, prompts {}–{} tokens, outputs {}–{}; \
         SLO: TTFT ≤ {ttft_slo_ms:.0} ms, TPOT ≤ {tpot_slo_ms:.1} ms",
        args.requests, args.prompt_min, args.prompt_max, args.output_min, args.output_max
    );
    let requests = workload.generate(&slo);

    let mut reports = Vec::new();
    for &mode in &args.modes {
        let staging_blocks = if mode == Mode::Layerwise { staging } else { 0 };
        let pools = PoolSizes {
            gpu_blocks: budget - staging_blocks,
            host_blocks,
            staging_blocks,
        };
        let sched = SchedulerConfig {
            mode,
            staging_blocks,
            watermark_blocks: layers.max(pools.gpu_blocks / 100),
            max_seq_tokens: max_seq,
            max_prefill_tokens: args.prompt_max.max(MAX_PREFILL_TOKENS),
            prefill_chunk_tokens: args.prefill_chunk,
            stream_decode: args.stream_decode,
            ..SchedulerConfig::default()
        };
        let exec = executor(&s, pools, &cost, args.seed)?;
        let mut engine = Engine::new(EngineConfig { sched, pools }, s.layout, cost, exec)?;
        let bar = ProgressBar::new(requests.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} done {msg}")
                .context("progress template")?
                .progress_chars("=> "),
        );
        bar.set_prefix(mode.name());
        let started = Instant::now();
        let mut done = 0u64;
        let mut totals = StepTotals::default();
        let records = replay(&mut engine, requests.clone(), 50_000_000, |now, rep| {
            totals.add(rep);
            done += rep
                .events
                .iter()
                .filter(|e| matches!(e, strata_node::sched::Event::Finished { .. }))
                .count() as u64;
            bar.set_position(done);
            bar.set_message(format!("engine time {:.1}s", now.as_secs_f64()));
        })?;
        bar.finish_and_clear();
        let report = ModeReport::new(
            mode.name(),
            &records,
            started.elapsed().as_secs_f64(),
            &totals,
            engine.scheduler().admission_stops(),
        );
        println!(
            "{:>10}: done in {:.1}s wall, {:.1}s engine time, {} steps, mean decode batch {:.1}, \
             {:.1} GB across tiers; admission stopped by {:?}",
            mode.name(),
            report.wall_s,
            report.makespan_s,
            report.steps,
            report.mean_decode_batch,
            report.transfer_gb,
            report.admission_stops
        );
        println!("{:>10}  {}", "", totals.breakdown());
        reports.push(report);
    }
    print_table(&reports);
    if let Some(path) = &args.json {
        let doc = Document {
            runs: &reports,
            executor: args.executor,
            device: s.gpu.as_ref().map(|g| g.name.as_str()),
            model: &label,
            workload: &workload,
            ttft_slo_ms,
            tpot_slo_ms,
            gpu_budget_blocks: budget,
            block_bytes: s.layout.block_bytes(),
            cost_profile: &cost,
            calibration: &calibration,
        };
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Requests per second the engine could sustain: the lower of the compute bound (a mean
/// prefill plus a mean output's share of batched decode steps) and the memory bound (sequences
/// the GPU budget holds at once over how long each holds its blocks).
fn capacity_per_s(
    cost: &CostProfile,
    layout: &KvLayout,
    budget_blocks: usize,
    mean_prefill_s: f64,
    mean_prompt: usize,
    mean_out: f64,
) -> f64 {
    let layers = layout.layers;
    let footprint = layers * layout.blocks_for(mean_prompt + mean_out as usize);
    let slots = (budget_blocks as f64 / footprint as f64).max(1.0);
    let batch = slots.round() as usize;
    let step_s = cost.decode_s(batch, batch * (mean_prompt + mean_out as usize / 2), layers);
    let hold_s = mean_prefill_s + mean_out * step_s;
    let memory = slots / hold_s;
    let compute = 1.0 / (mean_prefill_s + mean_out * step_s / slots);
    memory.min(compute)
}

/// The cost profile: a file, a calibration of the cpu or cuda executor, or the H200 roofline;
/// with the points a calibration measured.
fn profile(args: &EngineArgs, s: &Setup) -> anyhow::Result<(CostProfile, Vec<CalPoint>)> {
    if let Some(path) = &args.profile {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cost = toml::from_str(&text)
            .with_context(|| format!("parsing cost profile {}", path.display()))?;
        return Ok((cost, Vec::new()));
    }
    if args.executor == ExecKind::Sim {
        if let Some(fitted) = strata_node::sched::profiles::h200(&args.model) {
            println!(
                "cost profile: fitted on an H200 (profiles/h200-{}.toml; no --profile given)",
                args.model
            );
            return Ok((fitted, Vec::new()));
        }
        println!(
            "cost profile: analytic H200 roofline for {} (no --profile given)",
            args.model
        );
        return Ok((roofline::profile(&s.cfg, &roofline::H200, 2), Vec::new()));
    }
    // A cut model is also measured at half its depth: two depths tell the step's fixed cost
    // from the layers' (see `fit::fit_profile`).
    let mut depths = vec![s.cfg.num_layers];
    if s.cfg.num_layers < s.full_layers && s.cfg.num_layers >= 2 {
        depths.push(s.cfg.num_layers / 2);
    }
    let plan = CalibrationPlan::for_prompts(args.prompt_max);
    let started = Instant::now();
    let mut cal = Calibration::default();
    let mut name = "";
    for &layers in &depths {
        let half;
        let at = if layers == s.cfg.num_layers {
            s
        } else {
            half = s.with_layers(layers);
            &half
        };
        let (exec_name, measured) = calibrate_at(args, at, &plan)?;
        name = exec_name;
        cal.prefill.extend(measured.prefill);
        cal.decode.extend(measured.decode);
        cal.transfer.extend(measured.transfer);
        cal.decode_wide_from = measured.decode_wide_from;
    }
    let cost = fit::fit_profile(
        &cal.prefill,
        &cal.decode,
        &cal.transfer,
        cal.decode_wide_from,
    )
    .context("fitting the cost profile")?;
    let layers = s.layout.layers;
    println!(
        "cost profile of the {name} executor fitted on this machine in {:.1}s at {depths:?} layers: \
         prefill {:.0} ms at {} tokens, decode step {:.2} ms at batch 8, step overhead {:.3} ms, copies {:.2} GB/s",
        started.elapsed().as_secs_f64(),
        cost.prefill_s(args.prompt_max, 0, layers) * 1e3,
        args.prompt_max,
        cost.decode_s(8, 8 * args.prompt_max / 2, layers) * 1e3,
        cost.step_overhead_s * 1e3,
        cost.transfer.bw_bytes_per_s / 1e9
    );
    let points = CalPoint::all(&cal, &cost);
    for p in &points {
        println!("  {p}");
    }
    Ok((cost, points))
}

/// Calibrates a fresh executor of `s`: the executor's name and what it measured.
fn calibrate_at(
    args: &EngineArgs,
    s: &Setup,
    plan: &CalibrationPlan,
) -> anyhow::Result<(&'static str, Calibration)> {
    let pools = PoolSizes {
        gpu_blocks: plan.gpu_blocks_needed(&s.layout),
        host_blocks: plan.host_blocks_needed(),
        staging_blocks: 0,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("calibrating [{bar:30}] {pos}/{len} points")
            .context("progress template")?,
    );
    let (exec, (_, cal)) = executor_with(s, pools, &CostProfile::default(), args.seed, |exec| {
        Ok(calibrate(
            exec,
            s.layout,
            pools.gpu_blocks,
            pools.host_blocks,
            plan,
            |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        )?)
    })?;
    bar.finish_and_clear();
    Ok((exec.name(), cal))
}

fn print_table(reports: &[ModeReport]) {
    println!(
        "\n{:<10} {:>11} {:>11} {:>7} {:>10} {:>10} {:>9} {:>6} {:>6} {:>6}",
        "mode",
        "TTFT p50",
        "TTFT p99",
        "queue",
        "TPOT p50",
        "TPOT p99",
        "tok/s",
        "SLO",
        "TTFT✓",
        "TPOT✓"
    );
    for r in reports {
        println!(
            "{:<10} {:>9.0}ms {:>9.0}ms {:>6.1}% {:>8.1}ms {:>8.1}ms {:>9.1} {:>5.0}% {:>5.0}% {:>5.0}%",
            r.mode,
            r.ttft_ms.p50,
            r.ttft_ms.p99,
            100.0 * r.queue_share,
            r.tpot_ms.p50,
            r.tpot_ms.p99,
            r.throughput_tok_s,
            100.0 * r.slo_attainment,
            100.0 * r.ttft_attainment,
            100.0 * r.tpot_attainment
        );
    }
    let find = |m: &str| reports.iter().find(|r| r.mode == m);
    if let (Some(b), Some(l)) = (find("baseline"), find("layerwise")) {
        println!(
            "\nlayerwise vs baseline: TTFT p50 {:.1}x lower, TTFT p99 {:.1}x lower, throughput {:.3}x, \
             SLO attainment {:.0}% vs {:.0}%",
            b.ttft_ms.p50 / l.ttft_ms.p50.max(1e-9),
            b.ttft_ms.p99 / l.ttft_ms.p99.max(1e-9),
            l.throughput_tok_s / b.throughput_tok_s.max(1e-9),
            100.0 * l.slo_attainment,
            100.0 * b.slo_attainment
        );
    }
}
