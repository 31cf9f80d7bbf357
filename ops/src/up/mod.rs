//! `strata up`: a whole local cluster in one command — nodes and a router, each its own OS
//! process, with certificates, configs, logs and `cluster.json` in the data directory.
//!
//! - [`child`] — spawning a member, reading its ready line, stopping it.

mod child;

use anyhow::{Context, bail};
use child::Member;
use clap::Args;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strata_router::config::{Limits, ModelEntry, NodeEntry, RouterConfig, TlsConfig};
use strata_router::place::Policy;
use strata_transport::proto::SloClass;
use strata_transport::tls::Role;

/// How long a member may take to load its model and start serving.
const MEMBER_START: Duration = Duration::from_secs(300);
/// How long the cluster may take, once started, to serve a request.
const READY_WAIT: Duration = Duration::from_secs(60);
/// How long a member has to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Start a local cluster: N nodes serving one model and a router with the OpenAI-compatible
/// HTTP API, each member its own process (so any one can be killed). Ctrl-C or SIGTERM stops
/// them all.
///
/// Example:
///   strata up                       # tiny model, 2 cpu nodes, http://127.0.0.1:8080
///   strata up --model /models/Llama-3.2-1B-Instruct --nodes 1
///   strata up --executor sim --model llama-3-8b --policy round_robin
#[derive(Debug, Args)]
pub struct UpArgs {
    /// A preset (`tiny`, `llama-3-8b`, `llama-3-70b`) or an HF model directory (config.json,
    /// safetensors weights, tokenizer.json).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Number of nodes (each a single-node instance of the model).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Executor of every node: `cpu` (real math) or `sim` (a cost model, no weights).
    #[arg(long, default_value = "cpu")]
    pub executor: String,
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

/// `cluster.json`: every process of the cluster.
#[derive(Debug, Serialize)]
struct ClusterFile {
    routers: Vec<RouterEntry>,
    nodes: Vec<NodeRecord>,
}

#[derive(Debug, Serialize)]
struct RouterEntry {
    id: String,
    http: String,
    pid: u32,
}

#[derive(Debug, Serialize)]
struct NodeRecord {
    id: String,
    addr: String,
    pid: u32,
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
    if !matches!(args.executor.as_str(), "cpu" | "sim") {
        bail!("--executor must be cpu or sim (cuda arrives with its issue)");
    }
    let dir = &args.data_dir;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let cluster_json = dir.join("cluster.json");
    let _ = std::fs::remove_file(&cluster_json);
    let (model_spec, model_name, model_dir) = model_of(&args.model)?;

    let node_ids: Vec<String> = (1..=args.nodes).map(|i| format!("node-{i}")).collect();
    let router_id = "router-1".to_string();
    let certs = dir.join("certs");
    let mut members: Vec<(String, Role)> =
        node_ids.iter().map(|id| (id.clone(), Role::Node)).collect();
    members.push((router_id.clone(), Role::Router));
    members.push(("admin".to_string(), Role::Admin));
    crate::certs::init(&certs, &members, "strata-up", true)?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = Instant::now();
    let mut nodes: Vec<Member> = Vec::new();
    let mut routers: Vec<Member> = Vec::new();
    let result = async {
        for id in &node_ids {
            let cfg = dir.join(format!("{id}.toml"));
            let mut text = format!(
                "id = {id:?}\nlisten = \"127.0.0.1:0\"\nmodel = {model_spec:?}\nmodel_name = {model_name:?}\nexecutor = {:?}\n",
                args.executor
            );
            if let Some(extra) = &args.node_extra {
                text.push_str(extra);
                text.push('\n');
            }
            text.push_str(&format!("\n[tls]\ndir = {:?}\nmember = {id:?}\n", certs.display().to_string()));
            std::fs::write(&cfg, text)?;
            eprintln!("starting {id} ({} {model_name})", args.executor);
            let node_args = ["node".to_string(), "--config".into(), path_arg(&cfg)];
            let log = logs.join(format!("{id}.log"));
            let member = tokio::select! {
                m = child::spawn(id, &node_args, &log, MEMBER_START) => m?,
                _ = sigterm.recv() => bail!("stopped while starting"),
                _ = tokio::signal::ctrl_c() => bail!("stopped while starting"),
            };
            nodes.push(member);
        }
        let router_cfg = RouterConfig {
            id: router_id.clone(),
            http: args.http,
            tls: TlsConfig {
                dir: certs.clone(),
                member: router_id.clone(),
            },
            policy: args.policy,
            nodes: nodes
                .iter()
                .map(|n| {
                    Ok(NodeEntry {
                        id: n.id.clone(),
                        addr: n.addr.parse().with_context(|| format!("{} announced a bad address {:?}", n.id, n.addr))?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            models: vec![ModelEntry {
                name: model_name.clone(),
                dir: model_dir.clone(),
                instances: node_ids.iter().map(|n| vec![n.clone()]).collect(),
            }],
            slo: slo_classes(&args.slo),
            default_slo: "default".into(),
            limits: Limits {
                max_tokens: args.max_tokens,
                ..Limits::default()
            },
            api_keys: Vec::new(),
        };
        let cfg_path = dir.join(format!("{router_id}.toml"));
        std::fs::write(&cfg_path, toml::to_string(&router_cfg)?)?;
        eprintln!("starting {router_id}");
        let router = child::spawn(
            &router_id,
            &["router".into(), "--config".into(), path_arg(&cfg_path)],
            &logs.join(format!("{router_id}.log")),
            MEMBER_START,
        )
        .await?;
        let url = format!("http://{}", router.addr);
        routers.push(router);
        wait_ready(&url).await?;
        let file = ClusterFile {
            routers: routers
                .iter()
                .map(|r| RouterEntry {
                    id: r.id.clone(),
                    http: r.addr.clone(),
                    pid: r.pid,
                })
                .collect(),
            nodes: nodes
                .iter()
                .map(|n| NodeRecord {
                    id: n.id.clone(),
                    addr: n.addr.clone(),
                    pid: n.pid,
                })
                .collect(),
        };
        write_atomic(&cluster_json, &serde_json::to_vec_pretty(&file)?)?;
        println!(
            "strata is up in {:.1}s: {} node(s) serving `{model_name}` behind {url}\n\n\
             try:\n  curl -s {url}/v1/completions -H 'content-type: application/json' \\\n    \
             -d '{{\"model\": \"{model_name}\", \"prompt\": \"Hello\", \"max_tokens\": 16}}'\n\n\
             cluster: {}\nlogs:    {}\nCtrl-C stops the cluster.",
            started.elapsed().as_secs_f64(),
            nodes.len(),
            cluster_json.display(),
            logs.display()
        );
        supervise(&mut nodes, &mut routers, &mut sigterm).await;
        Ok(())
    }
    .await;
    eprintln!("stopping the cluster");
    for m in routers.iter_mut().chain(nodes.iter_mut()) {
        m.stop(STOP_GRACE).await;
    }
    let _ = std::fs::remove_file(&cluster_json);
    result
}

/// Waits for Ctrl-C or SIGTERM, reporting members that exit on their own.
async fn supervise(
    nodes: &mut [Member],
    routers: &mut [Member],
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
        for m in nodes.iter_mut().chain(routers.iter_mut()) {
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
