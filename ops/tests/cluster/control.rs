//! The Raft control plane of a real `strata up` cluster (three router replicas, two nodes):
//! `strata admin` status and refusal, drain, and `kill -9` of the leader in the middle of a
//! stream of admin writes — a new leader takes writes, HTTP keeps working on the shared port,
//! no acknowledged write is lost, and the killed replica restarted from its redb file
//! catches up.

use super::support::{Cluster, RouterInfo, alive, signal, wait_until};
use super::{header, post, post_reconnecting};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use strata_raft::api::{ControlReply, ControlRequest, Status};
use strata_raft::control::ControlClient;
use strata_raft::state::Command as RaftCommand;
use strata_transport::proto::SloClass;
use strata_transport::tls::Identity;

const BOUND: Duration = Duration::from_secs(60);

fn admin_client(c: &Cluster) -> ControlClient {
    let identity = Identity::load(&c.dir.join("certs"), "admin").expect("admin cert");
    ControlClient::connect_as(&identity, c.routers[0].admin, Duration::from_millis(1500)).unwrap()
}

async fn status(client: &ControlClient, via: SocketAddr, local: bool) -> Option<Status> {
    match client.request(via, ControlRequest::Status { local }).await {
        Ok(ControlReply::Status(s)) => Some(*s),
        _ => None,
    }
}

/// The leader as some replica in `routers` reports it, within the bound.
async fn leader(client: &ControlClient, routers: &[&RouterInfo], not: Option<u64>) -> u64 {
    let deadline = Instant::now() + BOUND;
    loop {
        for r in routers {
            if let Some(s) = status(client, r.admin, false).await
                && let Some(l) = s.leader
                && Some(l) != not
            {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn class(name: String, ttft_ms: f64) -> RaftCommand {
    RaftCommand::SetSlo {
        class: SloClass {
            name,
            ttft_ms,
            tpot_ms: 100.0,
            priority: 0,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_survives_kill_9_of_its_leader() {
    let c = Cluster::start("raft", &[]);
    assert_eq!(c.routers.len(), 3, "strata up runs three replicas");

    // `strata admin status --json`: leader, term, three voting members, two healthy nodes.
    let mut last = Value::Null;
    let healthy = wait_until(BOUND, || {
        let (ok, out, _) = c.admin(&["status", "--json"]);
        last = serde_json::from_str(&out).unwrap_or(Value::Null);
        ok && last["nodes"].as_array().is_some_and(|n| {
            n.len() == 2 && n.iter().all(|n| n["runtime"]["healthy"] == json!(true))
        })
    });
    assert!(healthy, "status: {last:#}\n{}", c.log());
    assert!(last["leader"].as_u64().is_some() && last["term"].as_u64().is_some_and(|t| t >= 1));
    let members = last["members"].as_array().unwrap();
    assert_eq!(members.iter().filter(|m| m["kind"] == "voter").count(), 3);
    let (ok, table, _) = c.admin(&["status"]);
    assert!(
        ok && table.contains("LEADER") || table.contains("leader"),
        "{table}"
    );
    assert!(
        table.contains("node-1") && table.contains("healthy"),
        "{table}"
    );

    // Without the admin credential the cluster refuses and says why.
    let (ok, _, err) = c.admin(&[
        "--member",
        "node-1",
        "slo",
        "set",
        "x",
        "--ttft-ms",
        "1",
        "--tpot-ms",
        "1",
    ]);
    assert!(!ok && err.contains("admin role"), "{err}");

    // Drain: new requests avoid node-1; undrain: it serves again.
    let (ok, out, err) = c.admin(&["drain", "node-1", "--json"]);
    assert!(ok, "{out}{err}");
    let written: Value = serde_json::from_str(&out).expect("drain --json");
    let version = written["written"]["version"].as_u64().expect("version");
    // Routing reads each replica's local state: wait until every replica has applied it.
    let client = admin_client(&c);
    for r in &c.routers {
        let deadline = Instant::now() + BOUND;
        while status(&client, r.admin, true)
            .await
            .is_none_or(|s| s.version < version)
        {
            assert!(
                Instant::now() < deadline,
                "{} did not apply the drain",
                r.id
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let body = json!({"model": "tiny", "prompt": "drain", "max_tokens": 2});
    for _ in 0..4 {
        let r = post(&c.url, "/v1/completions", body.clone()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-strata-instance"), "node-2");
    }
    assert!(c.admin(&["undrain", "node-1"]).0);

    // A stream of admin writes through every replica; kill -9 the leader in the middle.
    let all: Vec<&RouterInfo> = c.routers.iter().collect();
    let old = leader(&client, &all, None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<(String, f64)>();
    let writer = {
        let client = client.clone();
        let addrs: Vec<SocketAddr> = c.routers.iter().map(|r| r.admin).collect();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut i, mut turn) = (0u64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let (name, value) = (format!("w{}", i % 8), (i + 1) as f64);
                turn += 1;
                let addr = addrs[turn % addrs.len()];
                let req = ControlRequest::Write {
                    command: class(name.clone(), value),
                };
                match client.request(addr, req).await {
                    Ok(ControlReply::Written { .. }) => {
                        let _ = acked_tx.send((name, value));
                        i += 1;
                    }
                    Ok(other) => panic!("unexpected reply {other:?}"),
                    // The killed replica, or no leader yet: the next replica, the same write.
                    Err(e) if e.is_transient() => {}
                    Err(e) => panic!("write refused: {e}"),
                }
            }
        })
    };
    let mut acked: Vec<(String, f64)> = Vec::new();
    take(&mut acked, &mut acked_rx, 30).await;
    let victim = c.routers.iter().find(|r| r.raft_id == old).unwrap().clone();
    signal(victim.pid, libc::SIGKILL);
    // Once it is dead its listener leaves the shared port. A connection that raced the kill
    // into its queue is reset, as with any crashed server (seen here once, after /proc showed
    // it gone): a client connects again, as an HTTP client of a load balancer does.
    assert!(
        wait_until(BOUND, || !alive(victim.pid)),
        "the leader did not die"
    );
    // While the leader is down the shared HTTP port keeps answering.
    for _ in 0..5 {
        let r = post_reconnecting(&c.url, "/v1/completions", body.clone(), 3).await;
        assert_eq!(r.status(), 200, "HTTP through the surviving replicas");
    }
    take(&mut acked, &mut acked_rx, 30).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    while let Ok(more) = acked_rx.try_recv() {
        acked.push(more);
    }
    let survivors: Vec<&RouterInfo> = c.routers.iter().filter(|r| r.raft_id != old).collect();
    let new = leader(&client, &survivors, Some(old)).await;
    assert_ne!(new, old);

    // Restart the killed replica from its redb file (no --init, no --join).
    let config = c.dir.join(format!("{}.toml", victim.id));
    let _restarted = Reaped(
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["router", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(c.dir.join("restarted.log")).unwrap(),
            ))
            .spawn()
            .expect("restart the router"),
    );
    let leader_addr = c.routers.iter().find(|r| r.raft_id == new).unwrap().admin;
    let leader_commit = status(&client, leader_addr, false)
        .await
        .expect("leader status")
        .commit_index;
    let deadline = Instant::now() + BOUND;
    let caught_up = loop {
        let seen = client
            .request(victim.admin, ControlRequest::Status { local: true })
            .await;
        if let Ok(ControlReply::Status(s)) = &seen
            && s.commit_index >= leader_commit
        {
            break s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the restarted replica did not catch up to commit {leader_commit}: {seen:?}\n\
             --- restarted.log ---\n{}\n{}",
            std::fs::read_to_string(c.dir.join("restarted.log")).unwrap_or_default(),
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(caught_up.by, old);
    // No acknowledged write is lost: every class holds its last acknowledged value or a later one.
    let state = match client
        .request(victim.admin, ControlRequest::State)
        .await
        .expect("state")
    {
        ControlReply::State { state, .. } => state,
        r => panic!("{r:?}"),
    };
    for (name, value) in &acked {
        let held = state.slo.get(name).map(|c| c.ttft_ms);
        assert!(
            held.is_some_and(|h| h >= *value),
            "{name}: acked {value}, holds {held:?}"
        );
    }
}

/// A child process killed and reaped on drop, even when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Receives `n` more acknowledged writes into `acked`, within the bound.
async fn take(
    acked: &mut Vec<(String, f64)>,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, f64)>,
    n: usize,
) {
    let want = acked.len() + n;
    let deadline = Instant::now() + BOUND;
    while acked.len() < want {
        let got = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        .expect("writes are acknowledged within the bound")
        .expect("writer alive");
        acked.push(got);
    }
}
