//! `strata bench raft`: the control plane's admin write latency on a healthy cluster, and its
//! leader failover time (SIGKILL of the leader → the next committed admin write), on a real
//! cluster of router replicas, each its own process on loopback.

use super::stats::percentile;
use crate::up::child::{self, Member};
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strata_raft::api::{ControlReply, ControlRequest};
use strata_raft::control::ControlClient;
use strata_raft::state::Command;
use strata_router::config::{Limits, RaftConfig, RouterConfig, TlsConfig};
use strata_transport::proto::SloClass;
use strata_transport::tls::{Identity, Role};

/// How long a replica may take to start.
const START: Duration = Duration::from_secs(60);
/// How long one trial may wait for a committed write after the kill.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// Measure the Raft control plane: admin write latency, then leader failover.
///
/// Starts `--replicas` router replicas (no nodes) in a temporary directory, writes
/// `--writes` admin commands through the leader and through a follower (forwarded), then runs
/// `--trials` failovers: SIGKILL the leader, write through the survivors until one commits,
/// restart the killed replica from its redb file and wait until it has caught up.
#[derive(Debug, Args)]
pub struct RaftArgs {
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,
    /// Admin writes per path (leader, follower) for the latency figures.
    #[arg(long, default_value_t = 500)]
    pub writes: usize,
    /// Leader failovers to time.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Raft heartbeat interval, ms.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Election timeout range, ms (the leader lease equals its upper end).
    #[arg(long, default_value_t = 250)]
    pub election_min_ms: u64,
    #[arg(long, default_value_t = 500)]
    pub election_max_ms: u64,
    /// Keep the temporary directory (configs, redb files, every replica's log).
    #[arg(long)]
    pub keep: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    replicas: u64,
    heartbeat_ms: u64,
    election_ms: (u64, u64),
    write_ms_via_leader: Summary,
    write_ms_via_follower: Summary,
    failover_ms: Summary,
    failover_trials_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Summary {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(v: &[f64]) -> Summary {
        let mut v = v.to_vec();
        Summary {
            n: v.len(),
            p50: percentile(&mut v, 50.0),
            p99: percentile(&mut v, 99.0),
            max: v.iter().copied().fold(0.0, f64::max),
        }
    }
}

pub fn run(args: RaftArgs) -> anyhow::Result<()> {
    if args.replicas < 3 {
        bail!("--replicas must be at least 3 to survive the loss of the leader");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

struct Replica {
    raft_id: u64,
    config: PathBuf,
    control: SocketAddr,
    member: Member,
}

async fn bench(args: RaftArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("strata-bench-raft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&args, &dir).await;
    if args.keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(args: &RaftArgs, dir: &Path) -> anyhow::Result<()> {
    let certs = dir.join("certs");
    let mut members: Vec<(String, Role)> = (1..=args.replicas)
        .map(|i| (format!("router-{i}"), Role::Router))
        .collect();
    members.push(("admin".into(), Role::Admin));
    crate::certs::init(&certs, &members, "bench-raft", true)?;
    let mut replicas: Vec<Replica> = Vec::new();
    let mut http: SocketAddr = "127.0.0.1:0".parse()?;
    for raft_id in 1..=args.replicas {
        let id = format!("router-{raft_id}");
        let mut cfg = RouterConfig {
            id: id.clone(),
            http,
            tls: TlsConfig {
                dir: certs.clone(),
                member: id.clone(),
            },
            raft: RaftConfig {
                id: raft_id,
                listen: "127.0.0.1:0".parse()?,
                advertise: None,
                db: dir.join(format!("{id}.redb")),
                heartbeat_ms: args.heartbeat_ms,
                election_timeout_min_ms: args.election_min_ms,
                election_timeout_max_ms: args.election_max_ms,
                snapshot_every_logs: 1000,
            },
            default_slo: "default".into(),
            limits: Limits::default(),
            api_keys: Vec::new(),
        };
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(&path, toml::to_string(&cfg)?)?;
        let mut cmd = vec![
            "router".to_string(),
            "--config".into(),
            path.display().to_string(),
        ];
        match replicas.first() {
            None => cmd.push("--init".into()),
            Some(seed) => cmd.extend(["--join".into(), seed.control.to_string()]),
        }
        let member = child::spawn(&id, &cmd, &dir.join(format!("{id}.log")), START).await?;
        let control: SocketAddr = member
            .control
            .as_deref()
            .unwrap_or_default()
            .parse()
            .context("control address")?;
        http = member.addr.parse()?;
        // Restarts resume on the same addresses.
        cfg.raft.listen = control;
        cfg.http = http;
        std::fs::write(&path, toml::to_string(&cfg)?)?;
        replicas.push(Replica {
            raft_id,
            config: path,
            control,
            member,
        });
    }
    eprintln!("{} replicas up", replicas.len());
    let identity = Identity::load(&certs, "admin")?;
    let client =
        ControlClient::connect_as(&identity, replicas[0].control, Duration::from_millis(1500))?;

    let first = leader(&client, &replicas).await?;
    let leader_addr = replicas
        .iter()
        .find(|r| r.raft_id == first)
        .map(|r| r.control)
        .context("leader")?;
    let follower_addr = replicas
        .iter()
        .find(|r| r.raft_id != first)
        .map(|r| r.control)
        .context("follower")?;
    let mut via_leader = Vec::new();
    let mut via_follower = Vec::new();
    for i in 0..args.writes {
        for (addr, out) in [
            (leader_addr, &mut via_leader),
            (follower_addr, &mut via_follower),
        ] {
            let t = Instant::now();
            write(&client, &[addr], i, Duration::from_secs(10)).await?;
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (wl, wf) = (Summary::of(&via_leader), Summary::of(&via_follower));
    eprintln!(
        "admin write via leader:   p50 {:.2} ms  p99 {:.2} ms",
        wl.p50, wl.p99
    );
    eprintln!(
        "admin write via follower: p50 {:.2} ms  p99 {:.2} ms",
        wf.p50, wf.p99
    );

    let mut trials = Vec::new();
    for trial in 0..args.trials {
        let current = leader(&client, &replicas).await?;
        let idx = replicas
            .iter()
            .position(|r| r.raft_id == current)
            .context("leader")?;
        let survivors: Vec<SocketAddr> = replicas
            .iter()
            .filter(|r| r.raft_id != current)
            .map(|r| r.control)
            .collect();
        // SAFETY: kill(2) on a child this process spawned and has not reaped.
        let killed = Instant::now();
        unsafe {
            libc::kill(replicas[idx].member.pid as libc::pid_t, libc::SIGKILL);
        }
        write(&client, &survivors, 1_000_000 + trial, FAILOVER_LIMIT).await?;
        let ms = killed.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "trial {:>2}: killed leader {current}; next committed write after {ms:.0} ms",
            trial + 1
        );
        trials.push(ms);
        let _ = replicas[idx].member.child.wait().await;
        // Restart it from its redb file and wait until it has caught up.
        let id = format!("router-{}", replicas[idx].raft_id);
        let cmd = vec![
            "router".to_string(),
            "--config".into(),
            replicas[idx].config.display().to_string(),
        ];
        replicas[idx].member =
            child::spawn(&id, &cmd, &dir.join(format!("{id}-{trial}.log")), START).await?;
        caught_up(&client, &replicas, replicas[idx].control).await?;
    }
    let failover = Summary::of(&trials);
    eprintln!(
        "leader failover: p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms over {} trials",
        failover.p50, failover.p99, failover.max, failover.n
    );
    let report = Report {
        replicas: args.replicas,
        heartbeat_ms: args.heartbeat_ms,
        election_ms: (args.election_min_ms, args.election_max_ms),
        write_ms_via_leader: wl,
        write_ms_via_follower: wf,
        failover_ms: failover,
        failover_trials_ms: trials,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    for r in &mut replicas {
        r.member.stop(Duration::from_secs(10)).await;
    }
    Ok(())
}

/// The leader's Raft id, as the cluster reports it.
async fn leader(client: &ControlClient, replicas: &[Replica]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for r in replicas {
            if let Ok(ControlReply::Status(s)) = client
                .request(r.control, ControlRequest::Status { local: false })
                .await
                && let Some(l) = s.leader
            {
                return Ok(l);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One committed admin write through the first of `via` that takes it, retrying transient
/// failures every 10 ms until `limit`.
async fn write(
    client: &ControlClient,
    via: &[SocketAddr],
    i: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let command = Command::SetSlo {
        class: SloClass {
            name: format!("bench-{}", i % 16),
            ttft_ms: 1.0 + i as f64,
            tpot_ms: 100.0,
            priority: 0,
        },
    };
    loop {
        for &addr in via {
            let req = ControlRequest::Write {
                command: command.clone(),
            };
            match client.request(addr, req).await {
                Ok(ControlReply::Written { .. }) => return Ok(()),
                Ok(other) => bail!("unexpected reply {other:?}"),
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if Instant::now() > deadline {
            bail!("no write committed within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the replica at `addr` has applied what the leader has committed.
async fn caught_up(
    client: &ControlClient,
    replicas: &[Replica],
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader_commit = match client
            .request(replicas[0].control, ControlRequest::Status { local: false })
            .await
        {
            Ok(ControlReply::Status(s)) => Some(s.commit_index),
            _ => None,
        };
        let mine = match client
            .request(addr, ControlRequest::Status { local: true })
            .await
        {
            Ok(ControlReply::Status(s)) => Some(s.commit_index),
            _ => None,
        };
        if let (Some(l), Some(m)) = (leader_commit, mine)
            && m >= l
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the restarted replica did not catch up within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
