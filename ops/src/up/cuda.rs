//! `strata up --executor cuda`: the GPU is probed once, before any member starts, so a missing
//! GPU or CUDA library (or a strata built without the `cuda` feature) is the first and only
//! error; and its memory is split evenly between the node processes (every stage of every
//! instance), which all run on it.

use strata_node::model::ModelConfig;
use strata_node::service::SchedSettings;
use strata_node::service::gpu;

/// What every node's config gets for its share of the GPU: a `gpu_mib = …` line when several
/// node processes share it (each gets its share of 90% of the free memory, less what its
/// executor reserves, and no more than its scheduler can use), nothing for one node (it takes
/// its default) or when `node_extra` sets `gpu_mib`. `model` is what one process runs: for a
/// pipeline, the model cut to its largest stage's layers, so every stage of an instance gets
/// the same budget.
pub fn node_budget(
    model: &ModelConfig,
    model_name: &str,
    nodes: usize,
    node_extra: Option<&str>,
) -> anyhow::Result<String> {
    // The reserve is sized for the default scheduler limits, which `node_extra` may change.
    let rows = gpu::max_step_rows(&SchedSettings::default());
    let probe = gpu::probe(model, rows)?;
    let set_by_user = node_extra
        .and_then(|t| toml::from_str::<toml::Table>(t).ok())
        .is_some_and(|t| t.contains_key("gpu_mib"));
    eprintln!(
        "GPU {}: {}, {} of {} MiB free",
        probe.ordinal,
        probe.name,
        probe.free_bytes >> 20,
        probe.total_bytes >> 20
    );
    if nodes == 1 || set_by_user {
        return Ok(String::new());
    }
    let mib = probe
        .default_gpu_mib(model_name, nodes)?
        .min(gpu::useful_kv_mib(model, &SchedSettings::default()));
    eprintln!(
        "{nodes} nodes share it: gpu_mib = {mib} each, beside {} MiB reserved for weights and workspace",
        probe.reserved_bytes.div_ceil(1 << 20)
    );
    Ok(format!("gpu_mib = {mib}\n"))
}
