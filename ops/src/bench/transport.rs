//! `strata bench transport`: bulk throughput between two processes on loopback, over QUIC
//! (mutual TLS, the cluster's own endpoints) and over plain TCP, in one run.

use anyhow::{Context, bail};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strata_transport::tls::{ClusterCa, Identity, SERVER_NAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, clap::Args)]
pub struct TransportArgs {
    /// Data to move on each transport, GiB.
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    /// Size of each write, KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PeerArgs {
    /// Certificate directory holding `ca.pem` and the `peer` identity.
    #[arg(long)]
    certs: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    bytes: u64,
    quic_gb_s: f64,
    tcp_gb_s: f64,
    quic_over_tcp: f64,
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(args: TransportArgs) -> anyhow::Result<()> {
    if !(args.gib > 0.0 && args.gib <= 64.0) || args.chunk_kib == 0 || args.chunk_kib > 65536 {
        bail!("need 0 < --gib ≤ 64 and 0 < --chunk-kib ≤ 65536");
    }
    let bytes = (args.gib * (1u64 << 30) as f64) as u64;
    let dir = std::env::temp_dir().join(format!("strata-bench-transport-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = ClusterCa::generate("bench")?;
    ca.write(&dir)?;
    ca.issue_to("peer", &dir)?;
    ca.issue_to("bench", &dir)?;
    let result = measure(&dir, bytes, args.chunk_kib << 10);
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    println!(
        "moved {:.2} GiB each way between two processes on loopback: QUIC {:.2} GB/s, TCP {:.2} GB/s, QUIC/TCP {:.2}",
        bytes as f64 / (1u64 << 30) as f64,
        report.quic_gb_s,
        report.tcp_gb_s,
        report.quic_over_tcp
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn measure(dir: &Path, bytes: u64, chunk: usize) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("locating the strata binary")?;
    let child = Command::new(exe)
        .args(["bench", "transport-peer", "--certs"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the peer process")?;
    let mut peer = PeerGuard(child);
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
    let data: Vec<u8> = (0..chunk)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    runtime()?.block_on(async move {
        let q = tokio::time::timeout(PEER_BOUND, quic_send(&me, quic, &data, bytes))
            .await
            .context("QUIC transfer timed out")??;
        let t = tokio::time::timeout(PEER_BOUND, tcp_send(tcp, &data, bytes))
            .await
            .context("TCP transfer timed out")??;
        let gb_s = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
        Ok(Report {
            bytes,
            quic_gb_s: gb_s(q),
            tcp_gb_s: gb_s(t),
            quic_over_tcp: gb_s(q) / gb_s(t),
        })
    })
}

async fn quic_send(
    me: &Identity,
    addr: SocketAddr,
    data: &[u8],
    bytes: u64,
) -> anyhow::Result<Duration> {
    let ep = me.endpoint("127.0.0.1:0".parse()?)?;
    let conn = ep
        .connect(addr, SERVER_NAME)?
        .await
        .context("QUIC handshake")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(data.len() as u64) as usize;
        send.write_all(&data[..n]).await?;
        left -= n as u64;
    }
    send.finish()?;
    let got = recv.read_u64().await.context("reading the peer's count")?;
    let took = start.elapsed();
    if got != bytes {
        bail!("QUIC peer received {got} of {bytes} bytes");
    }
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    Ok(took)
}

async fn tcp_send(addr: SocketAddr, data: &[u8], bytes: u64) -> anyhow::Result<Duration> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(data.len() as u64) as usize;
        s.write_all(&data[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let got = s.read_u64().await.context("reading the peer's count")?;
    let took = start.elapsed();
    if got != bytes {
        bail!("TCP peer received {got} of {bytes} bytes");
    }
    Ok(took)
}

/// The peer: one QUIC and one TCP connection, each read to its end and answered with the
/// number of bytes received.
pub fn peer(args: PeerArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let me = Identity::load(&args.certs, "peer")?;
        let ep = me.endpoint("127.0.0.1:0".parse()?)?;
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {} {}", ep.local_addr()?, tcp.local_addr()?);
        let quic = async {
            let conn = ep.accept().await.context("endpoint closed")?.await?;
            let (mut send, mut recv) = conn.accept_bi().await?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            while let Some(n) = recv.read(&mut buf).await? {
                total += n as u64;
            }
            send.write_u64(total).await?;
            send.finish()?;
            conn.closed().await;
            anyhow::Ok(())
        };
        let tcp = async {
            let (mut s, _) = tcp.accept().await?;
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
            anyhow::Ok(())
        };
        let (q, t) = tokio::time::timeout(PEER_BOUND, async { tokio::join!(quic, tcp) })
            .await
            .context("peer gave up waiting")?;
        q.context("QUIC side")?;
        t.context("TCP side")?;
        anyhow::Ok(())
    })
}
