//! `strata up`: a whole local cluster in one command — Raft router replicas sharing one HTTP
//! port, and nodes, each its own OS process, with certificates, configs, redb files, logs and
//! `cluster.json` in the data directory.
//!
//! - [`child`] — spawning a member, reading its ready line, stopping it.
//! - [`cuda`] — probing the GPU first and splitting it between the nodes (`--executor cuda`).
//! - [`layout`] — which stage nodes make each instance and which layers each runs.
//! - [`setup`] — configuring the fresh cluster through its control plane.

pub(crate) mod child;
mod cuda;
mod layout;
pub mod setup;

use anyhow::{Context, bail};
use child::Member;
use clap::Args;
use layout::Layout;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strata_node::service::ExecutorKind;
use strata_router::config::{Limits, RaftConfig, RouterConfig, TlsConfig};
use strata_router::place::Policy;
use strata_transport::proto::SloClass;
use strata_transport::tls::{Identity, Role};

/// How long a member may take to load its model and start serving.
const MEMBER_START: Duration = Duration::from_secs(300);
/// How long the cluster may take, once started, to serve a request.
const READY_WAIT: Duration = Duration::from_secs(60);
/// How long a member has to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What `strata up --help` shows after the flags.
const EXAMPLES: &str = "EXAMPLES:

  strata up                        # tiny model, 3 routers, 2 cpu nodes, http://127.0.0.1:8080
  strata up --model /models/Llama-3.2-1B-Instruct --nodes 1
  strata up --executor sim --model llama-3-8b --policy round_robin
  strata up --executor cuda --model llama-3-8b --nodes 1
  strata up --stages 2 --nodes 2   # two 2-stage pipeline instances of tiny

With --stages P each instance is a chain of P node processes: node-i drives it (it serves
requests and runs the scheduler), node-i-s1 .. node-i-s(P-1) run its later layers; they start
last stage first. cluster.json lists every process with its instance and layers.";

/// Start a local cluster: router replicas (Raft voters sharing one HTTP port) with the
/// OpenAI-compatible API, and N instances serving one model — each a node, or with `--stages P`
/// a pipeline of P stage nodes — each member its own process (so any one can be killed). Then
/// `strata admin status` shows it. Ctrl-C or SIGTERM stops them all.
///
/// Every `strata up` starts a fresh cluster: new certificates, empty Raft logs.
///
/// Example:
///   strata up                       # tiny model, 3 routers, 2 cpu nodes, http://127.0.0.1:8080
///   strata up --model /models/Llama-3.2-1B-Instruct --nodes 1
///   strata up --executor sim --model llama-3-8b --policy round_robin
///   strata up --executor cuda --model llama-3-8b --nodes 1
///   strata up --stages 2 --nodes 2   # two 2-stage pipeline instances of tiny
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct UpArgs {
    /// A preset (`tiny`, `llama-3-8b`, `llama-3-70b`) or an HF model directory (config.json,
    /// safetensors weights, tokenizer.json).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Number of instances of the model: each a single node, or with `--stages P` a pipeline
    /// of P stage nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Pipeline stages per instance: each instance is a chain of this many node processes,
    /// each running a contiguous range of the model's layers (split evenly; earlier stages
    /// take the remainder). Instance i's driver, which serves requests and runs the
    /// scheduler, is `node-i`; its later stages are `node-i-s1`, `node-i-s2`, … At most the
    /// model's layer count.
    #[arg(long, default_value_t = 1)]
    pub stages: usize,
    /// Number of router replicas (Raft voters; 3 or 5 tolerate 1 or 2 failures).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub routers: u64,
    /// Executor of every node: `cpu` (real math), `cuda` (bf16 on the GPU) or `sim` (a cost
    /// model, no weights).
    ///
    /// With `cuda` the GPU is probed before anything starts, and every node runs on the first
    /// GPU (CUDA_VISIBLE_DEVICES picks it): one node takes 90% of its free memory less its
    /// weights and workspace; N node processes (instances × stages) split that 90% evenly,
    /// each less its own weights and workspace (or take `gpu_mib` from --node-extra). Each
    /// node process also pins 32 GiB of host memory for its host tier (`--node-extra
    /// 'host_mib = …'` changes it).
    #[arg(long, default_value = "cpu")]
    pub executor: ExecutorKind,
    /// HTTP address of the endpoint (port 0: any free port; see cluster.json).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Where certificates, configs, logs and cluster.json go.
    #[arg(long, default_value = ".strata")]
    pub data_dir: PathBuf,
    /// Placement policy: predicted_ttft, round_robin, least_loaded, prefix_affinity.
    #[arg(long, default_value = "predicted_ttft")]
    pub policy: Policy,
    /// Extra TOML appended to every node's config (e.g. `gpu_mib = 64`).
    #[arg(long)]
    pub node_extra: Option<String>,
    /// An SLO class requests may name with header `x-strata-slo`, as NAME:TTFT_MS:TPOT_MS
    /// (repeatable). `default` (10 s, 100 ms), `interactive` (1 s, 100 ms) and `batch`
    /// (60 s, 1 s) always exist.
    #[arg(long = "slo", value_parser = parse_slo)]
    pub slo: Vec<SloClass>,
    /// The largest `max_tokens` the router accepts.
    #[arg(long, default_value_t = Limits::default().max_tokens)]
    pub max_tokens: u32,
}

fn parse_slo(s: &str) -> Result<SloClass, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [name, ttft, tpot] = parts[..] else {
        return Err(format!("{s:?}: expected NAME:TTFT_MS:TPOT_MS"));
    };
    let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{s:?}: {v:?}: {e}"));
    let class = SloClass {
        name: name.to_string(),
        ttft_ms: num(ttft)?,
        tpot_ms: num(tpot)?,
        priority: 0,
    };
    class.validate().map_err(|e| e.to_string())?;
    Ok(class)
}

/// The classes every `strata up` cluster has, then the user's (which may redefine them).
fn slo_classes(user: &[SloClass]) -> Vec<SloClass> {
    let builtin = [
        ("interactive", 1000.0, 100.0, 1),
        ("batch", 60_000.0, 1000.0, 0),
    ];
    let mut all: Vec<SloClass> = builtin
        .into_iter()
        .filter(|(n, ..)| !user.iter().any(|u| u.name == *n))
        .map(|(name, ttft_ms, tpot_ms, priority)| SloClass {
            name: name.into(),
            ttft_ms,
            tpot_ms,
            priority,
        })
        .collect();
    all.extend(user.iter().cloned());
    all
}

/// `cluster.json`: every process of the cluster, and the admin credential.
#[derive(Debug, Serialize)]
struct ClusterFile {
    routers: Vec<RouterEntry>,
    nodes: Vec<NodeRecord>,
    /// The certificate directory and the member name of the admin certificate.
    certs: String,
    admin_member: String,
}

/// The member name of the admin certificate `strata up` makes.
pub const ADMIN_MEMBER: &str = "admin";

#[derive(Debug, Serialize)]
struct RouterEntry {
    id: String,
    /// Raft id.
    raft_id: u64,
    http: String,
    /// Control address: `strata admin --router ADDR`.
    admin: String,
    pid: u32,
}

/// A node process: a single-node instance, or one stage of a pipeline instance.
#[derive(Debug, Serialize)]
struct NodeRecord {
    id: String,
    addr: String,
    pid: u32,
    /// The instance it is a stage of (its stage nodes joined by `+`, as routers name it).
    instance: String,
    /// Its layers: first, end (exclusive).
    layers: [u32; 2],
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    // One thread: members are spawned from it, and PR_SET_PDEATHSIG follows the spawning
    // thread, so it must live as long as the cluster.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(up(args))
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let (model_spec, model_name, model_dir) = model_of(&args.model)?;
    let model = model_spec
        .parse::<strata_node::model::ModelSource>()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .config()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let layers = model.num_layers as u32;
    let layout = Layout::new(args.nodes, args.stages, layers, &model_name)?;
    let gpu_budget = match args.executor {
        ExecutorKind::Cuda => {
            // Every process is sized for the largest stage's weights and KV.
            let mut stage_model = model.clone();
            stage_model.num_layers = layout.max_stage_layers() as usize;
            cuda::node_budget(
                &stage_model,
                &model_name,
                layout.processes(),
                args.node_extra.as_deref(),
            )?
        }
        ExecutorKind::Cpu | ExecutorKind::Sim => String::new(),
    };
    let dir = &args.data_dir;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let cluster_json = dir.join("cluster.json");
    let _ = std::fs::remove_file(&cluster_json);

    let router_ids: Vec<(u64, String)> = (1..=args.routers)
        .map(|i| (i, format!("router-{i}")))
        .collect();
    let certs = dir.join("certs");
    let mut members: Vec<(String, Role)> = layout
        .members()
        .map(|s| (s.id.clone(), Role::Node))
        .collect();
    members.extend(router_ids.iter().map(|(_, r)| (r.clone(), Role::Router)));
    members.push((ADMIN_MEMBER.to_string(), Role::Admin));
    crate::certs::init(&certs, &members, "strata-up", true)?;
    // A fresh cluster: the old Raft files belong to the old certificates.
    let raft_dir = dir.join("raft");
    let _ = std::fs::remove_dir_all(&raft_dir);
    std::fs::create_dir_all(&raft_dir)?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = Instant::now();
    let mut nodes: Vec<Member> = Vec::new();
    let mut routers: Vec<(u64, Member)> = Vec::new();
    let result = async {
        // Routers first: the first starts the cluster, the others join it and share its port.
        let mut http = args.http;
        let mut seed_control: Option<String> = None;
        for (raft_id, id) in &router_ids {
            let cfg = RouterConfig {
                id: id.clone(),
                http,
                tls: TlsConfig { dir: certs.clone(), member: id.clone() },
                raft: RaftConfig {
                    id: *raft_id,
                    listen: "127.0.0.1:0".parse()?,
                    advertise: None,
                    db: raft_dir.join(format!("{id}.redb")),
                    heartbeat_ms: 50,
                    election_timeout_min_ms: 250,
                    election_timeout_max_ms: 500,
                    snapshot_every_logs: 1000,
                },
                default_slo: "default".into(),
                limits: Limits { max_tokens: args.max_tokens, ..Limits::default() },
                api_keys: Vec::new(),
            };
            let cfg_path = dir.join(format!("{id}.toml"));
            std::fs::write(&cfg_path, toml::to_string(&cfg)?)?;
            let mut cmd = vec!["router".to_string(), "--config".into(), path_arg(&cfg_path)];
            match &seed_control {
                None => cmd.push("--init".into()),
                Some(c) => cmd.extend(["--join".to_string(), c.clone()]),
            }
            eprintln!("starting {id} (raft id {raft_id})");
            let log = logs.join(format!("{id}.log"));
            let member = tokio::select! {
                m = child::spawn(id, &cmd, &log, MEMBER_START) => m?,
                _ = sigterm.recv() => bail!("stopped while starting"),
                _ = tokio::signal::ctrl_c() => bail!("stopped while starting"),
            };
            http = member.addr.parse().with_context(|| format!("{id} announced a bad address {:?}", member.addr))?;
            // A restart with this config (`strata router --config FILE`, no --init or --join)
            // resumes from the redb file on the same addresses.
            let mut resumed = cfg.clone();
            resumed.http = http;
            if let Some(c) = &member.control {
                resumed.raft.listen = c.parse().with_context(|| format!("{id} announced a bad control address {c:?}"))?;
            }
            std::fs::write(&cfg_path, toml::to_string(&resumed)?)?;
            if seed_control.is_none() {
                seed_control = member.control.clone();
            }
            routers.push((*raft_id, member));
        }
        let controls: Vec<SocketAddr> = routers
            .iter()
            .map(|(_, r)| r.control.as_deref().unwrap_or_default().parse().with_context(|| format!("{} announced no control address", r.id)))
            .collect::<anyhow::Result<_>>()?;
        let routers_toml = controls.iter().map(|c| format!("{:?}", c.to_string())).collect::<Vec<_>>().join(", ");
        let mut shared = format!(
            "listen = \"127.0.0.1:0\"\nmodel = {model_spec:?}\nmodel_name = {model_name:?}\nexecutor = {:?}\nrouters = [{routers_toml}]\n{gpu_budget}",
            args.executor.name()
        );
        if let Some(extra) = &args.node_extra {
            shared.push_str(extra);
            shared.push('\n');
        }
        let certs_dir = certs.display().to_string();
        for instance in &layout.instances {
            // The last stage first: each stage's config names the next stage's address, which
            // that stage's ready line announced; a driver is ready once its whole chain is.
            let first = nodes.len();
            let mut next: Option<(SocketAddr, &str)> = None;
            for stage in instance.iter().rev() {
                let id = &stage.id;
                let cfg = dir.join(format!("{id}.toml"));
                let stage_toml = layout::stage_section(&layout, stage, next);
                let text = format!("id = {id:?}\n{shared}\n[tls]\ndir = {certs_dir:?}\nmember = {id:?}\n{stage_toml}");
                std::fs::write(&cfg, text)?;
                if layout.pipelined() {
                    eprintln!("starting {id} ({} {model_name}, layers {}..{})", args.executor.name(), stage.layers.start, stage.layers.end);
                } else {
                    eprintln!("starting {id} ({} {model_name})", args.executor.name());
                }
                let node_args = ["node".to_string(), "--config".into(), path_arg(&cfg)];
                let log = logs.join(format!("{id}.log"));
                let member = tokio::select! {
                    m = child::spawn(id, &node_args, &log, MEMBER_START) => m?,
                    _ = sigterm.recv() => bail!("stopped while starting"),
                    _ = tokio::signal::ctrl_c() => bail!("stopped while starting"),
                };
                if layout.pipelined() {
                    let addr = member.addr.parse().with_context(|| format!("{id} announced a bad address {:?}", member.addr))?;
                    next = Some((addr, id));
                }
                nodes.push(member);
            }
            // Drivers first, as cluster.json lists them and the cluster stops them.
            nodes[first..].reverse();
        }
        // Like an operator: `strata admin` with the admin certificate, asking the replicas
        // in turn while the new cluster settles.
        let identity = Identity::load(&certs, ADMIN_MEMBER)?;
        let admin = crate::admin::Admin::new(&identity, controls.clone(), Duration::from_secs(30))?;
        let source = match &model_dir {
            Some(d) => d.display().to_string(),
            None => model_spec.clone(),
        };
        let slo = slo_classes(&args.slo);
        let instances = layout.deployment();
        let plan = setup::Plan {
            slo: &slo,
            policy: args.policy,
            model: &model_name,
            source: &source,
            layers,
            instances: &instances,
        };
        if layout.pipelined() {
            eprintln!("deploying `{model_name}` as {} instance(s) of {} stages", instances.len(), layout.stages);
        } else {
            eprintln!("deploying `{model_name}` on {} node(s)", instances.len());
        }
        setup::apply(&admin, &plan).await?;
        let url = format!("http://{http}");
        wait_ready(&url).await?;
        let file = ClusterFile {
            routers: routers
                .iter()
                .map(|(raft_id, r)| RouterEntry {
                    id: r.id.clone(),
                    raft_id: *raft_id,
                    http: r.addr.clone(),
                    admin: r.control.clone().unwrap_or_default(),
                    pid: r.pid,
                })
                .collect(),
            nodes: layout
                .instances
                .iter()
                .flat_map(|stages| {
                    let instance = Layout::instance_id(stages);
                    stages.iter().map(move |s| (instance.clone(), s))
                })
                .zip(&nodes)
                .map(|((instance, stage), n)| {
                    debug_assert_eq!(stage.id, n.id, "nodes are kept in layout order");
                    NodeRecord {
                        id: n.id.clone(),
                        addr: n.addr.clone(),
                        pid: n.pid,
                        instance,
                        layers: [stage.layers.start, stage.layers.end],
                    }
                })
                .collect(),
            certs: certs.display().to_string(),
            admin_member: ADMIN_MEMBER.into(),
        };
        write_atomic(&cluster_json, &serde_json::to_vec_pretty(&file)?)?;
        let serving = if layout.pipelined() {
            format!("{} pipeline instance(s) of {} stages ({} node processes)", layout.instances.len(), layout.stages, nodes.len())
        } else {
            format!("{} node(s)", nodes.len())
        };
        println!(
            "strata is up in {:.1}s: {} router replica(s) and {serving} serving `{model_name}` behind {url}\n\n\
             try:\n  curl -s {url}/v1/completions -H 'content-type: application/json' \\\n    \
             -d '{{\"model\": \"{model_name}\", \"prompt\": \"Hello\", \"max_tokens\": 16}}'\n  \
             strata admin status --data-dir {}\n\n\
             cluster: {}\nlogs:    {}\nCtrl-C stops the cluster.",
            started.elapsed().as_secs_f64(),
            routers.len(),
            dir.display(),
            cluster_json.display(),
            logs.display()
        );
        let mut router_members: Vec<&mut Member> = routers.iter_mut().map(|(_, m)| m).collect();
        supervise(&mut nodes, &mut router_members, &mut sigterm).await;
        Ok(())
    }
    .await;
    eprintln!("stopping the cluster");
    for m in routers.iter_mut().map(|(_, m)| m).chain(nodes.iter_mut()) {
        m.stop(STOP_GRACE).await;
    }
    let _ = std::fs::remove_file(&cluster_json);
    result
}

/// Waits for Ctrl-C or SIGTERM, reporting members that exit on their own.
async fn supervise(
    nodes: &mut [Member],
    routers: &mut [&mut Member],
    sigterm: &mut tokio::signal::unix::Signal,
) {
    let mut reported = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = sigterm.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = tick.tick() => {}
        }
        for m in nodes.iter_mut().chain(routers.iter_mut().map(|m| &mut **m)) {
            if let Ok(Some(status)) = m.child.try_wait()
                && reported.insert(m.id.clone())
            {
                eprintln!("{} exited ({status}); see {}", m.id, m.log.display());
            }
        }
    }
}

/// Polls `GET /ready` until it answers 200.
async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + READY_WAIT;
    loop {
        if let Ok(r) = client.get(format!("{url}/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url}/ready did not answer 200 within {READY_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (what nodes load, the name clients use, the directory routers read the tokenizer from).
fn model_of(spec: &str) -> anyhow::Result<(String, String, Option<PathBuf>)> {
    if spec.parse::<strata_node::model::Preset>().is_ok() {
        return Ok((spec.to_string(), spec.to_string(), None));
    }
    let path = Path::new(spec);
    if !path.is_dir() {
        bail!(
            "--model {spec:?} is neither a preset (tiny, llama-3-8b, llama-3-70b) nor a directory"
        );
    }
    let abs = std::fs::canonicalize(path)?;
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    Ok((abs.display().to_string(), name, Some(abs)))
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
