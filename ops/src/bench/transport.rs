//! `strata bench transport`: bulk throughput between two processes on loopback, over QUIC
//! (mutual TLS, the cluster's own endpoints) and over plain TCP, in one run.
//!
//! Each round moves `--gib` GiB over QUIC and then over TCP, split over `--streams` QUIC
//! streams of one connection and as many TCP connections; the report gives the median and the
//! spread of the rounds.

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_transport::tls::{ClusterCa, Identity, SERVER_NAME};
use strata_transport::tuning::{CongestionControl, TransportTuning};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Tuning of both endpoints, shared by the bench and its peer.
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// Transport profile: `loopback` (64 KB datagrams, large buffers) or `lan` (the default of
    /// the cluster's endpoints).
    #[arg(long, default_value = "loopback")]
    profile: String,
    /// The QUIC receiver copies each chunk into a 1 MiB buffer (`read`) instead of taking
    /// quinn's decrypted chunks by reference (`read_chunk`).
    #[arg(long)]
    copy_reads: bool,
    /// Override one knob of the profile, `KEY=VALUE` (repeatable): initial_mtu,
    /// mtu_upper_bound (0: no discovery), stream_window, conn_window, send_window,
    /// congestion (cubic|bbr|newreno), initial_window, sndbuf, rcvbuf, gso (0|1),
    /// ack_every (packets per ACK asked of the peer; 0: its default).
    #[arg(long = "tune", value_name = "KEY=VALUE")]
    tune: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct TransportArgs {
    /// Data to move on each transport per round, GiB.
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    /// Size of each write, KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// Parallel QUIC streams (and as many TCP connections).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// QUIC connections the streams are spread over (each connection is driven by one task).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Rounds of QUIC then TCP; the report gives medians.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Copy each write into quinn (`write_all`) instead of handing it over by reference
    /// (`write_chunk`).
    #[arg(long)]
    copy_writes: bool,
    /// Print quinn's path statistics of each QUIC connection (MTU, losses, congestion events).
    #[arg(long)]
    quic_stats: bool,
    /// Skip the TCP transfers (for profiling QUIC alone); TCP figures read 0.
    #[arg(long, hide = true)]
    skip_tcp: bool,
    #[command(flatten)]
    tuning: TuningArgs,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PeerArgs {
    /// Certificate directory holding `ca.pem` and the `peer` identity.
    #[arg(long)]
    certs: PathBuf,
    #[command(flatten)]
    tuning: TuningArgs,
}

#[derive(Debug, Serialize)]
struct Report {
    /// Bytes per transport per round.
    bytes: u64,
    streams: usize,
    profile: String,
    tune: Vec<String>,
    /// Medians over the rounds.
    quic_gb_s: f64,
    tcp_gb_s: f64,
    quic_over_tcp: f64,
    /// Every round, in order.
    rounds: Vec<Round>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Round {
    quic_gb_s: f64,
    tcp_gb_s: f64,
    quic_over_tcp: f64,
    /// CPU seconds (user + system, both processes) per GB moved; 0 where not measured.
    quic_cpu_s_per_gb: f64,
    tcp_cpu_s_per_gb: f64,
}

/// CPU seconds (user + system) used so far by this process and by the peer process, or `None`
/// where the platform does not say (only Linux is read).
fn cpu_s(peer: u32) -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given, which points to
    // one; the struct is only read when the call reports success.
    let own = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let stat = std::fs::read_to_string(format!("/proc/{peer}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    Some(tv(own.ru_utime) + tv(own.ru_stime) + ticks / hz as f64)
}

/// Kills the peer process however the bench ends.
struct PeerGuard(Child);

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PEER_BOUND: Duration = Duration::from_secs(600);
const MAX_STREAMS: usize = 64;
const MAX_ROUNDS: usize = 100;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

impl TuningArgs {
    fn tuning(&self) -> anyhow::Result<TransportTuning> {
        let mut t = match self.profile.as_str() {
            "loopback" => TransportTuning::loopback(),
            "lan" => TransportTuning::lan(),
            other => bail!("unknown --profile {other:?} (loopback|lan)"),
        };
        for kv in &self.tune {
            apply_tune(&mut t, kv).with_context(|| format!("--tune {kv}"))?;
        }
        t.validate()?;
        Ok(t)
    }

    fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--profile".to_string(), self.profile.clone()];
        if self.copy_reads {
            args.push("--copy-reads".into());
        }
        for kv in &self.tune {
            args.push("--tune".into());
            args.push(kv.clone());
        }
        args
    }
}

fn apply_tune(t: &mut TransportTuning, kv: &str) -> anyhow::Result<()> {
    let (key, value) = kv.split_once('=').context("expected KEY=VALUE")?;
    let num = || value.parse::<u64>().context("expected a number");
    match key {
        "initial_mtu" => t.initial_mtu = u16::try_from(num()?)?,
        "mtu_upper_bound" => {
            t.mtu_upper_bound = match num()? {
                0 => None,
                n => Some(u16::try_from(n)?),
            }
        }
        "stream_window" => t.stream_receive_window_bytes = num()?,
        "conn_window" => t.receive_window_bytes = num()?,
        "send_window" => t.send_window_bytes = num()?,
        "initial_window" => t.initial_window_bytes = num()?,
        "sndbuf" => t.socket_send_buffer_bytes = usize::try_from(num()?)?,
        "rcvbuf" => t.socket_recv_buffer_bytes = usize::try_from(num()?)?,
        "gso" => t.segmentation_offload = num()? != 0,
        "ack_every" => {
            t.ack_every_packets = match num()? {
                0 => None,
                n => Some(u32::try_from(n)?),
            }
        }
        "congestion" => {
            t.congestion = match value {
                "cubic" => CongestionControl::Cubic,
                "bbr" => CongestionControl::Bbr,
                "newreno" => CongestionControl::NewReno,
                other => bail!("unknown congestion controller {other:?}"),
            }
        }
        other => bail!("unknown knob {other:?}"),
    }
    Ok(())
}

pub fn run(args: TransportArgs) -> anyhow::Result<()> {
    if !(args.gib > 0.0 && args.gib <= 64.0) || args.chunk_kib == 0 || args.chunk_kib > 65536 {
        bail!("need 0 < --gib ≤ 64 and 0 < --chunk-kib ≤ 65536");
    }
    if !(1..=MAX_STREAMS).contains(&args.streams)
        || !(1..=args.streams).contains(&args.connections)
        || !(1..=MAX_ROUNDS).contains(&args.rounds)
    {
        bail!(
            "need 1 ≤ --streams ≤ {MAX_STREAMS}, 1 ≤ --connections ≤ --streams and 1 ≤ --rounds ≤ {MAX_ROUNDS}"
        );
    }
    args.tuning.tuning()?;
    let bytes = (args.gib * (1u64 << 30) as f64) as u64;
    let dir = std::env::temp_dir().join(format!("strata-bench-transport-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = ClusterCa::generate("bench")?;
    ca.write(&dir)?;
    ca.issue_to("peer", &dir)?;
    ca.issue_to("bench", &dir)?;
    let result = measure(&dir, bytes, &args);
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if report.rounds.len() > 1 {
        for (i, r) in report.rounds.iter().enumerate() {
            println!(
                "round {}: QUIC {:.2} GB/s, TCP {:.2} GB/s, QUIC/TCP {:.2}; CPU s/GB QUIC {:.2}, TCP {:.2}",
                i + 1,
                r.quic_gb_s,
                r.tcp_gb_s,
                r.quic_over_tcp,
                r.quic_cpu_s_per_gb,
                r.tcp_cpu_s_per_gb
            );
        }
    }
    let spread = |f: fn(&Round) -> f64| {
        let v: Vec<f64> = report.rounds.iter().map(f).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    };
    let (ratio_lo, ratio_hi) = spread(|r| r.quic_over_tcp);
    println!(
        "moved {:.2} GiB each way per round on {} stream(s) between two processes on loopback \
         ({} profile), median of {} round(s): QUIC {:.2} GB/s, TCP {:.2} GB/s, QUIC/TCP {:.2} \
         (range {:.2}–{:.2})",
        bytes as f64 / (1u64 << 30) as f64,
        args.streams,
        report.profile,
        report.rounds.len(),
        report.quic_gb_s,
        report.tcp_gb_s,
        report.quic_over_tcp,
        ratio_lo,
        ratio_hi
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn measure(dir: &Path, bytes: u64, args: &TransportArgs) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("locating the strata binary")?;
    let child = Command::new(exe)
        .args(["bench", "transport-peer", "--certs"])
        .arg(dir)
        .args(args.tuning.to_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the peer process")?;
    let mut peer = PeerGuard(child);
    let peer_pid = peer.0.id();
    let stdout = peer.0.stdout.take().context("peer stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .context("the peer did not report its ports within 30 s")?;
    let mut parts = line.split_whitespace();
    let (quic, tcp): (SocketAddr, SocketAddr) = match (parts.next(), parts.next(), parts.next()) {
        (Some("listening"), Some(q), Some(t)) => (q.parse()?, t.parse()?),
        _ => bail!("unexpected peer output {line:?}"),
    };
    let me = Identity::load(dir, "bench")?;
    let tuning = args.tuning.tuning()?;
    let chunk = args.chunk_kib << 10;
    let data: Bytes = (0..chunk)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect::<Vec<u8>>()
        .into();
    let plan = Plan {
        bytes,
        streams: args.streams,
        connections: args.connections,
        copy_writes: args.copy_writes,
        quic_stats: args.quic_stats,
    };
    runtime()?.block_on(async move {
        let ep = me.endpoint_tuned("127.0.0.1:0".parse()?, &tuning)?;
        let mut rounds = Vec::with_capacity(args.rounds);
        let cpu = || cpu_s(peer_pid);
        for _ in 0..args.rounds {
            let c0 = cpu();
            let q = tokio::time::timeout(PEER_BOUND, quic_round(&ep, quic, &data, plan))
                .await
                .context("QUIC transfer timed out")??;
            let c1 = cpu();
            let t = if args.skip_tcp {
                None
            } else {
                Some(
                    tokio::time::timeout(PEER_BOUND, tcp_round(tcp, &data, plan))
                        .await
                        .context("TCP transfer timed out")??,
                )
            };
            let c2 = cpu();
            let gb_s =
                |d: Option<Duration>| d.map_or(0.0, |d| bytes as f64 / d.as_secs_f64() / 1e9);
            let q = Some(q);
            let per_gb = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => (b - a) / (bytes as f64 / 1e9),
                _ => 0.0,
            };
            rounds.push(Round {
                quic_gb_s: gb_s(q),
                tcp_gb_s: gb_s(t),
                quic_over_tcp: if t.is_some() { gb_s(q) / gb_s(t) } else { 0.0 },
                quic_cpu_s_per_gb: per_gb(c0, c1),
                tcp_cpu_s_per_gb: per_gb(c1, c2),
            });
        }
        ep.wait_idle().await;
        Ok(Report {
            bytes,
            streams: args.streams,
            profile: args.tuning.profile.clone(),
            tune: args.tuning.tune.clone(),
            quic_gb_s: median(rounds.iter().map(|r| r.quic_gb_s).collect()),
            tcp_gb_s: median(rounds.iter().map(|r| r.tcp_gb_s).collect()),
            quic_over_tcp: median(rounds.iter().map(|r| r.quic_over_tcp).collect()),
            rounds,
        })
    })
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    bytes: u64,
    streams: usize,
    connections: usize,
    copy_writes: bool,
    quic_stats: bool,
}

impl Plan {
    /// Bytes of stream `i`: an even split, the remainder on the first streams.
    fn share(&self, i: usize) -> u64 {
        let n = self.streams as u64;
        self.bytes / n + u64::from((i as u64) < self.bytes % n)
    }
}

/// One QUIC connection (handshake not timed), `plan.streams` streams sent concurrently.
async fn quic_round(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    data: &Bytes,
    plan: Plan,
) -> anyhow::Result<Duration> {
    let mut conns = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        conns.push(
            ep.connect(addr, SERVER_NAME)?
                .await
                .context("QUIC handshake")?,
        );
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..plan.streams {
        let conn = conns[i % conns.len()].clone();
        let data = data.clone();
        let share = plan.share(i);
        tasks.spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut left = share;
            while left > 0 {
                let n = left.min(data.len() as u64) as usize;
                if plan.copy_writes {
                    send.write_all(&data[..n]).await?;
                } else {
                    send.write_chunk(data.slice(..n)).await?;
                }
                left -= n as u64;
            }
            send.finish()?;
            let got = recv.read_u64().await.context("reading the peer's count")?;
            if got != share {
                bail!("QUIC peer received {got} of {share} bytes");
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let took = start.elapsed();
    for conn in conns {
        if plan.quic_stats {
            let p = conn.stats().path;
            println!(
                "QUIC path: MTU {} B, {} packets sent, {} lost ({} B), {} congestion events, \
                 {} black holes, cwnd {} B, rtt {:?}",
                p.current_mtu,
                p.sent_packets,
                p.lost_packets,
                p.lost_bytes,
                p.congestion_events,
                p.black_holes_detected,
                p.cwnd,
                p.rtt
            );
        }
        conn.close(0u32.into(), b"done");
    }
    Ok(took)
}

/// `plan.streams` TCP connections (connects not timed), sent concurrently.
async fn tcp_round(addr: SocketAddr, data: &Bytes, plan: Plan) -> anyhow::Result<Duration> {
    let mut conns = Vec::with_capacity(plan.streams);
    for _ in 0..plan.streams {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut s) in conns.into_iter().enumerate() {
        let data = data.clone();
        let share = plan.share(i);
        tasks.spawn(async move {
            let mut left = share;
            while left > 0 {
                let n = left.min(data.len() as u64) as usize;
                s.write_all(&data[..n]).await?;
                left -= n as u64;
            }
            s.shutdown().await?;
            let got = s.read_u64().await.context("reading the peer's count")?;
            if got != share {
                bail!("TCP peer received {got} of {share} bytes");
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(start.elapsed())
}

/// Reads a QUIC stream to its end, by reference or into a buffer, and answers with the count.
async fn quic_sink(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    copy_reads: bool,
) -> anyhow::Result<()> {
    let mut total = 0u64;
    if copy_reads {
        let mut buf = vec![0u8; 1 << 20];
        while let Some(n) = recv.read(&mut buf).await? {
            total += n as u64;
        }
    } else {
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            total += chunk.bytes.len() as u64;
        }
    }
    send.write_u64(total).await?;
    send.finish()?;
    Ok(())
}

/// Reads a TCP connection to its end into a buffer and answers with the count.
async fn tcp_sink(mut s: tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    s.write_u64(total).await?;
    s.shutdown().await?;
    Ok(())
}

/// The peer: serves QUIC connections (every stream read to its end and answered with the
/// number of bytes received) and TCP connections (the same) until the bench kills it, within
/// [`PEER_BOUND`].
pub fn peer(args: PeerArgs) -> anyhow::Result<()> {
    let tuning = args.tuning.tuning()?;
    let copy_reads = args.tuning.copy_reads;
    runtime()?.block_on(async move {
        let me = Identity::load(&args.certs, "peer")?;
        let ep = me.endpoint_tuned("127.0.0.1:0".parse()?, &tuning)?;
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {} {}", ep.local_addr()?, tcp.local_addr()?);
        let quic = async {
            while let Some(incoming) = ep.accept().await {
                let conn = incoming.await?;
                tokio::spawn(async move {
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if let Err(e) = quic_sink(send, recv, copy_reads).await {
                                eprintln!("peer: QUIC stream: {e:#}");
                            }
                        });
                    }
                });
            }
            anyhow::Ok(())
        };
        let tcp = async {
            loop {
                let s = match tcp.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => return anyhow::Result::<()>::Err(e.into()),
                };
                tokio::spawn(async move {
                    if let Err(e) = tcp_sink(s).await {
                        eprintln!("peer: TCP connection: {e:#}");
                    }
                });
            }
        };
        let served = tokio::time::timeout(PEER_BOUND, async {
            tokio::try_join!(quic, tcp).map(|_| ())
        })
        .await;
        match served {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    })
}
