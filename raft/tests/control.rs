//! Control-plane replicas in one process, each with its own redb file and QUIC endpoint: a
//! cluster started with `Init` and `Join`, requests through any replica (followers forward),
//! authorization by certificate role, node registration, leader loss, restart from disk,
//! catch-up by snapshot, membership changes and leadership transfer.

mod common;

use common::TempDir;
use std::time::Duration;
use strata_raft::api::{ControlError, ControlReply, ControlRequest};
use strata_raft::control::{Bootstrap, CallError, ControlClient, Replica, ReplicaConfig};
use strata_raft::state::{ClusterState, Command, Member};
use strata_transport::proto::{Message, RegisterAnswer, Registration, SloClass};
use strata_transport::tls::{ClusterCa, Identity, Role, SERVER_NAME};

/// Bound on every wait in these tests.
const BOUND: Duration = Duration::from_secs(30);

struct Cluster {
    ca: ClusterCa,
    dir: TempDir,
    replicas: Vec<Option<Replica>>,
    snapshot_every: u64,
}

impl Cluster {
    fn config(&self, id: u64) -> ReplicaConfig {
        let mut cfg = ReplicaConfig::new(
            id,
            format!("router-{id}"),
            "127.0.0.1:0".parse().unwrap(),
            self.dir.0.join(format!("router-{id}.redb")),
        );
        cfg.snapshot_every_logs = self.snapshot_every;
        cfg.keep_logs = 0;
        cfg
    }

    fn identity(&self, id: u64) -> Identity {
        self.ca
            .issue_as(&format!("router-{id}"), Role::Router)
            .unwrap()
    }

    /// `n` replicas: 1 inits, the others join through 1.
    async fn start(n: u64, snapshot_every: u64) -> Cluster {
        let mut c = Cluster {
            ca: ClusterCa::generate("control-test").unwrap(),
            dir: TempDir::new("control"),
            replicas: Vec::new(),
            snapshot_every,
        };
        let first = Replica::start(c.config(1), &c.identity(1), Bootstrap::Init)
            .await
            .expect("init");
        let seed = first.addr();
        c.replicas.push(Some(first));
        for id in 2..=n {
            let r = Replica::start(c.config(id), &c.identity(id), Bootstrap::Join(seed))
                .await
                .expect("join");
            c.replicas.push(Some(r));
        }
        c
    }

    fn replica(&self, id: u64) -> &Replica {
        self.replicas[(id - 1) as usize].as_ref().expect("running")
    }

    async fn stop(&mut self, id: u64) -> std::net::SocketAddr {
        let r = self.replicas[(id - 1) as usize].take().expect("running");
        let addr = r.addr();
        r.shutdown().await;
        addr
    }

    /// Restarts `id` from its redb file, on its old address.
    async fn restart(&mut self, id: u64, addr: std::net::SocketAddr) {
        let mut cfg = self.config(id);
        cfg.listen = addr;
        let r = Replica::start(cfg, &self.identity(id), Bootstrap::Resume)
            .await
            .expect("restart");
        self.replicas[(id - 1) as usize] = Some(r);
    }

    fn client(&self, member: &str, role: Option<Role>) -> ControlClient {
        let identity = match role {
            Some(role) => self.ca.issue_as(member, role).unwrap(),
            None => self.ca.issue(member).unwrap(),
        };
        ControlClient::connect_as(
            &identity,
            "127.0.0.1:1".parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    /// Waits until replica `id` knows a leader other than `not`.
    async fn leader_seen_by(&self, id: u64, not: Option<u64>) -> u64 {
        let m = self
            .replica(id)
            .raft()
            .wait(Some(BOUND))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != not,
                "a leader",
            )
            .await
            .unwrap();
        m.current_leader.unwrap()
    }

    /// Waits until replica `id` has applied state version `version`.
    async fn applied_version(&self, id: u64, version: u64) -> ClusterState {
        let mut rx = self.replica(id).applied();
        let state = tokio::time::timeout(BOUND, rx.wait_for(|s| s.version >= version))
            .await
            .expect("replica catches up")
            .unwrap();
        (**state).clone()
    }
}

fn slo(name: &str, ttft_ms: f64) -> Command {
    Command::SetSlo {
        class: SloClass {
            name: name.into(),
            ttft_ms,
            tpot_ms: 100.0,
            priority: 0,
        },
    }
}

/// Sends `req` through `addr`, retrying transient failures (an election) within the bound.
async fn request(
    client: &ControlClient,
    addr: std::net::SocketAddr,
    req: ControlRequest,
) -> ControlReply {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match client.request(addr, req.clone()).await {
            Ok(reply) => return reply,
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{req:?} failed: {e}"),
        }
    }
}

/// Writes through `addr`, retrying transient failures (an election) within the bound.
async fn write(client: &ControlClient, addr: std::net::SocketAddr, cmd: Command) -> u64 {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let req = ControlRequest::Write {
            command: cmd.clone(),
        };
        match client.request(addr, req).await {
            Ok(ControlReply::Written { version, .. }) => return version,
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_admin_requests_through_any_replica() {
    let c = Cluster::start(3, 1000).await;
    let leader = c.leader_seen_by(1, None).await;
    let admin = c.client("admin", Some(Role::Admin));
    // Every replica is recorded with its address, and all three vote.
    let state = c.applied_version(3, 3).await;
    assert_eq!(state.members.len(), 3);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    // A write through a follower is forwarded; a linearizable read through another follower
    // sees it at once.
    let v = write(&admin, c.replica(follower).addr(), slo("gold", 500.0)).await;
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    match admin
        .request(c.replica(other).addr(), ControlRequest::State)
        .await
        .unwrap()
    {
        ControlReply::State { state, .. } => {
            assert!(state.version >= v);
            assert_eq!(state.slo["gold"].ttft_ms, 500.0);
        }
        r => panic!("{r:?}"),
    }
    match admin
        .request(
            c.replica(follower).addr(),
            ControlRequest::Status { local: false },
        )
        .await
        .unwrap()
    {
        ControlReply::Status(s) => {
            assert_eq!(s.leader, Some(leader));
            assert_eq!(s.by, leader, "status is answered by the leader");
            assert_eq!(s.members.iter().filter(|m| m.kind == "voter").count(), 3);
        }
        r => panic!("{r:?}"),
    }
    // A rejected command changes nothing and says why.
    let err = admin
        .request(
            c.replica(leader).addr(),
            ControlRequest::Write {
                command: Command::Drain { id: "nope".into() },
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Control(ControlError::Rejected(_))),
        "{err}"
    );

    // Without the admin role: refused, saying what is missing.
    for (who, role) in [
        ("node-1", Some(Role::Node)),
        ("anon", None),
        ("router-9", Some(Role::Router)),
    ] {
        let client = c.client(who, role);
        let err = client
            .request(
                c.replica(leader).addr(),
                ControlRequest::Write {
                    command: slo("x", 1.0),
                },
            )
            .await
            .unwrap_err();
        match err {
            CallError::Control(ControlError::Unauthorized { need, .. }) => {
                assert_eq!(need, "admin")
            }
            e => panic!("{who}: {e}"),
        }
    }
    // Reads need admin or router.
    let err = c
        .client("node-1", Some(Role::Node))
        .request(c.replica(leader).addr(), ControlRequest::State)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CallError::Control(ControlError::Unauthorized { .. })
    ));
    for r in c.replicas.into_iter().flatten() {
        r.shutdown().await;
    }
}

/// Sends one registration as `identity` to `addr`.
async fn register(
    identity: &Identity,
    addr: std::net::SocketAddr,
    reg: Registration,
) -> RegisterAnswer {
    let endpoint = identity.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint.connect(addr, SERVER_NAME).unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let (mut send, mut recv) = strata_transport::stream::pair((send, recv), 1 << 20);
    send.send(&Message::Register(reg)).await.unwrap();
    send.finish().unwrap();
    match recv.recv().await.unwrap() {
        Some(Message::Registered(a)) => a,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_through_a_follower_with_their_certificate() {
    let c = Cluster::start(3, 1000).await;
    let leader = c.leader_seen_by(1, None).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let node = c.ca.issue_as("node-1", Role::Node).unwrap();
    let reg = Registration {
        node: "node-1".into(),
        addr: "127.0.0.1:7001".into(),
        executor: "sim".into(),
        devices: 1,
        device_memory_bytes: 1 << 30,
        host_memory_bytes: 1 << 32,
    };
    let answer = register(&node, c.replica(follower).addr(), reg.clone()).await;
    assert!(answer.accepted, "{}", answer.message);
    let state = c.applied_version(follower, answer.version).await;
    let n = &state.nodes["node-1"];
    assert_eq!(n.cert_fingerprint, node.fingerprint());
    assert_eq!(n.addr.to_string(), "127.0.0.1:7001");
    assert_eq!(n.hardware.devices, 1);
    // Another node's certificate cannot register node-1; a router's cannot register at all.
    let other = c.ca.issue_as("node-2", Role::Node).unwrap();
    let answer = register(&other, c.replica(leader).addr(), reg.clone()).await;
    assert!(!answer.accepted && !answer.retry);
    assert!(answer.message.contains("node-2"), "{}", answer.message);
    let router = c.identity(9);
    let answer = register(&router, c.replica(leader).addr(), reg).await;
    assert!(
        !answer.accepted && answer.message.contains("node role"),
        "{}",
        answer.message
    );
    for r in c.replicas.into_iter().flatten() {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_writes_after_the_leader_stops_and_a_restart_keeps_every_entry() {
    let mut c = Cluster::start(3, 1000).await;
    let admin = c.client("admin", Some(Role::Admin));
    let old = c.leader_seen_by(1, None).await;
    let survivor = (1..=3).find(|&i| i != old).unwrap();
    let mut last = 0;
    for i in 0..20 {
        last = write(
            &admin,
            c.replica(survivor).addr(),
            slo(&format!("c{}", i % 5), i as f64 + 1.0),
        )
        .await;
    }
    let old_addr = c.stop(old).await;
    let new = c.leader_seen_by(survivor, Some(old)).await;
    assert_ne!(new, old);
    let after = write(&admin, c.replica(survivor).addr(), slo("after", 7.0)).await;
    assert!(after > last);
    // The old leader, restarted from its redb file, has every committed entry and catches up.
    c.restart(old, old_addr).await;
    let state = c.applied_version(old, after).await;
    assert_eq!(state.slo["c4"].ttft_ms, 20.0);
    assert_eq!(state.slo["after"].ttft_ms, 7.0);
    assert_eq!(state, c.applied_version(new, after).await);
    // Now the restarted replica is needed for a quorum: stop the new leader; the two left
    // elect one and take writes.
    c.stop(new).await;
    let third = (1..=3).find(|&i| i != old && i != new).unwrap();
    let again = write(&admin, c.replica(third).addr(), slo("quorum", 9.0)).await;
    assert_eq!(
        c.applied_version(old, again).await.slo["quorum"].ttft_ms,
        9.0
    );
    for r in c.replicas.into_iter().flatten() {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_snapshot_catches_up_by_installing_it() {
    let mut c = Cluster::start(3, 20).await;
    let admin = c.client("admin", Some(Role::Admin));
    let leader = c.leader_seen_by(1, None).await;
    let lagging = (1..=3).find(|&i| i != leader).unwrap();
    let addr = c.stop(lagging).await;
    let mut last = 0;
    for i in 0..60 {
        last = write(
            &admin,
            c.replica(leader).addr(),
            slo(&format!("s{}", i % 7), i as f64 + 1.0),
        )
        .await;
    }
    let snap = match admin
        .request(c.replica(leader).addr(), ControlRequest::Snapshot)
        .await
        .unwrap()
    {
        ControlReply::Snapshot { index } => index,
        r => panic!("{r:?}"),
    };
    let purged = c
        .replica(leader)
        .raft()
        .wait(Some(BOUND))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index + 1 >= snap),
            "log purged behind the snapshot",
        )
        .await
        .unwrap()
        .purged
        .unwrap();
    c.restart(lagging, addr).await;
    let state = c.applied_version(lagging, last).await;
    assert_eq!(state, c.applied_version(leader, last).await);
    // It could only have caught up by snapshot: the entries it missed are gone from the log.
    c.replica(lagging)
        .raft()
        .wait(Some(BOUND))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= purged.index),
            "the lagging follower holds the leader's snapshot",
        )
        .await
        .unwrap();
    for r in c.replicas.into_iter().flatten() {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_promoted_removed_and_leadership_moves() {
    let mut c = Cluster::start(3, 1000).await;
    let admin = c.client("admin", Some(Role::Admin));
    let leader = c.leader_seen_by(1, None).await;
    // A fourth replica, started on its own, added as a learner then promoted.
    let fourth = Replica::start(c.config(4), &c.identity(4), Bootstrap::Resume)
        .await
        .unwrap();
    let member = Member {
        id: 4,
        name: "router-4".into(),
        raft_addr: fourth.addr(),
        admin_addr: fourth.addr(),
    };
    c.replicas.push(Some(fourth));
    let via = c.replica(leader).addr();
    request(&admin, via, ControlRequest::AddLearner { member }).await;
    let status = |r: ControlReply| match r {
        ControlReply::Status(s) => s,
        r => panic!("{r:?}"),
    };
    let s = status(request(&admin, via, ControlRequest::Status { local: false }).await);
    let m4 = s.members.iter().find(|m| m.id == 4).unwrap();
    assert_eq!(
        (m4.kind.as_str(), m4.name.as_str()),
        ("learner", "router-4")
    );
    request(&admin, via, ControlRequest::Promote { id: 4 }).await;
    let s = status(request(&admin, via, ControlRequest::Status { local: false }).await);
    assert_eq!(s.members.iter().filter(|m| m.kind == "voter").count(), 4);
    // Leadership moves to 4 on request.
    request(&admin, via, ControlRequest::TransferLeader { to: 4 }).await;
    assert_eq!(c.leader_seen_by(1, Some(leader)).await, 4);
    write(&admin, c.replica(4).addr(), slo("after-transfer", 3.0)).await;
    // Removing it (through another replica) hands leadership on and forgets its record.
    let via = c.replica(leader).addr();
    request(&admin, via, ControlRequest::RemoveMember { id: 4 }).await;
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let s = status(request(&admin, via, ControlRequest::Status { local: false }).await);
        let state = match request(&admin, via, ControlRequest::State).await {
            ControlReply::State { state, .. } => state,
            r => panic!("{r:?}"),
        };
        if !s.members.iter().any(|m| m.id == 4) && !state.members.contains_key(&4) {
            assert_ne!(s.leader, Some(4));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "4 still a member: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop(4).await;
    write(&admin, via, slo("after-remove", 3.0)).await;
    for r in c.replicas.into_iter().flatten() {
        r.shutdown().await;
    }
}
