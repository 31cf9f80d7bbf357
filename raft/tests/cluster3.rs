//! Three replicas in one process, each with its own redb file and its own QUIC endpoint with
//! a certificate from one cluster CA: election, replication of a write to every state machine,
//! a new leader after the leader stops, and refusal of a certificate from another CA.

mod common;

use common::TempDir;
use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use openraft::{BasicNode, Config, Raft, Vote};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use strata_raft::control::{ControlClient, ControlService};
use strata_raft::network::{NetworkConfig, QuicNetworkFactory, serve_raft};
use strata_raft::state::{ClusterState, Command, Hardware};
use strata_raft::store::{self, NodeId, TypeConfig};
use strata_transport::pool::{ConnectionPool, PeerKey, PoolConfig};
use strata_transport::proto::{Message, RequestId};
use strata_transport::tls::{ClusterCa, Identity, Role, SERVER_NAME};
use tokio::sync::{oneshot, watch};

/// Bound on every wait in these tests.
const BOUND: Duration = Duration::from_secs(30);

struct Replica {
    id: NodeId,
    raft: Raft<TypeConfig>,
    endpoint: quinn::Endpoint,
    applied: watch::Receiver<Arc<ClusterState>>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(id: NodeId, ca: &ClusterCa, dir: &TempDir) -> Replica {
        let identity = ca.issue_as(&format!("router-{id}"), Role::Router).unwrap();
        let endpoint = identity.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
        let (log, sm) = store::open(&dir.0.join(format!("replica-{id}.redb"))).unwrap();
        let applied = sm.subscribe();
        let config = Config {
            cluster_name: "cluster3".into(),
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let network = QuicNetworkFactory::new(endpoint.clone(), &NetworkConfig::default()).unwrap();
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let client = ControlClient::new(endpoint.clone(), Duration::from_secs(2)).unwrap();
        let control = Arc::new(ControlService::new(
            id,
            raft.clone(),
            applied.clone(),
            client,
        ));
        let server = tokio::spawn(serve_raft(endpoint.clone(), raft.clone(), control, async {
            let _ = stopped.await;
        }));
        Replica {
            id,
            raft,
            endpoint,
            applied,
            stop: Some(stop),
            server,
        }
    }

    fn node(&self) -> BasicNode {
        BasicNode::new(self.endpoint.local_addr().unwrap().to_string())
    }

    /// Stops Raft, the RPC server and the endpoint.
    async fn shut_down(&mut self) {
        self.raft.shutdown().await.unwrap();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(BOUND, &mut self.server)
            .await
            .expect("server stops")
            .unwrap();
        self.endpoint.close(0u32.into(), b"shut down");
    }

    /// Waits until this replica knows a leader that is not `not`, and returns it.
    async fn leader_other_than(&self, not: Option<NodeId>) -> NodeId {
        let m = self
            .raft
            .wait(Some(BOUND))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != not,
                "a leader",
            )
            .await
            .unwrap();
        m.current_leader.unwrap()
    }

    /// Waits until this replica's applied state has node `node`.
    async fn wait_applied(&mut self, node: &str) {
        tokio::time::timeout(BOUND, self.applied.wait_for(|s| s.nodes.contains_key(node)))
            .await
            .unwrap_or_else(|_| panic!("replica {} never applied {node}", self.id))
            .unwrap();
    }
}

fn register(id: &str, port: u16) -> Command {
    Command::RegisterNode {
        id: id.into(),
        addr: format!("10.0.0.1:{port}").parse().unwrap(),
        cert_fingerprint: format!("fp-{id}"),
        hardware: Hardware {
            executor: "sim".into(),
            ..Default::default()
        },
    }
}

async fn cluster(ca: &ClusterCa, dir: &TempDir) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push(Replica::start(id, ca, dir).await);
    }
    let voters: BTreeMap<NodeId, BasicNode> = replicas.iter().map(|r| (r.id, r.node())).collect();
    replicas[0].raft.initialize(voters).await.unwrap();
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_replicate_and_fail_over() {
    let ca = ClusterCa::generate("test").unwrap();
    let dir = TempDir::new("cluster3");
    let mut replicas = cluster(&ca, &dir).await;

    // Every replica agrees on one leader.
    let leader = replicas[0].leader_other_than(None).await;
    for r in &replicas {
        let m = r
            .raft
            .wait(Some(BOUND))
            .metrics(|m| m.current_leader == Some(leader), "same leader")
            .await
            .unwrap();
        assert_eq!(m.current_leader, Some(leader));
    }

    // A write through the leader reaches every state machine.
    let at = replicas.iter().position(|r| r.id == leader).unwrap();
    let resp = replicas[at]
        .raft
        .client_write(register("node-a", 7001))
        .await
        .unwrap();
    assert!(resp.data.is_ok(), "{:?}", resp.data);
    for r in &mut replicas {
        r.wait_applied("node-a").await;
    }

    // The leader stops; the other two elect a new one and accept a write.
    let mut old = replicas.remove(at);
    old.shut_down().await;
    let new_leader = replicas[0].leader_other_than(Some(leader)).await;
    assert_ne!(new_leader, leader);
    let next = replicas.iter().position(|r| r.id == new_leader).unwrap();
    let resp = replicas[next]
        .raft
        .client_write(register("node-b", 7002))
        .await
        .unwrap();
    assert!(resp.data.is_ok(), "{:?}", resp.data);
    for r in &mut replicas {
        r.wait_applied("node-b").await;
        assert!(r.applied.borrow().nodes.contains_key("node-a"));
    }

    for r in &mut replicas {
        r.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_endpoint_refuses_foreign_certificates_and_survives_bad_frames() {
    let ca = ClusterCa::generate("test").unwrap();
    let dir = TempDir::new("cluster3");
    let mut replicas = cluster(&ca, &dir).await;
    replicas[0].leader_other_than(None).await;
    let target = replicas[1].node();
    let addr = target.addr.parse().unwrap();
    let vote = || VoteRequest::new(Vote::new(1, 9), None);
    let option = || RPCOption::new(Duration::from_secs(5));

    // A client whose certificate comes from another CA (it trusts the cluster CA, so only the
    // server's check can refuse it) cannot call.
    let foreign = ClusterCa::generate("other")
        .unwrap()
        .issue("router-9")
        .unwrap();
    let impostor = Identity {
        ca: ca.cert().clone(),
        ..foreign
    };
    let endpoint = impostor.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut factory = QuicNetworkFactory::new(endpoint, &NetworkConfig::default()).unwrap();
    let mut net = factory.new_client(2, &target).await;
    let err = net.vote(vote(), option()).await.unwrap_err();
    assert!(matches!(err, RPCError::Unreachable(_)), "{err}");

    // A certificate from the cluster CA without the router role cannot either.
    let node = ca.issue_as("node-8", Role::Node).unwrap();
    let endpoint = node.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut factory = QuicNetworkFactory::new(endpoint, &NetworkConfig::default()).unwrap();
    let mut net = factory.new_client(2, &target).await;
    let err = net.vote(vote(), option()).await.unwrap_err();
    assert!(matches!(err, RPCError::Network(_)), "{err}");

    // A replica of the cluster can; a bad frame on one stream leaves the connection usable.
    let member = ca.issue_as("router-8", Role::Router).unwrap();
    let endpoint = member.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let pool = ConnectionPool::new(endpoint.clone(), PoolConfig::default()).unwrap();
    let peer = PeerKey::new(SERVER_NAME, addr);
    let (mut send, mut recv) = pool.open_bi(&peer).await.unwrap();
    send.send(&Message::Cancel {
        request: RequestId(1),
    })
    .await
    .unwrap();
    send.finish().unwrap();
    let answer = tokio::time::timeout(BOUND, recv.recv()).await.unwrap();
    assert!(answer.is_err(), "{answer:?}");
    let (mut send, mut recv) = pool.open_bi(&peer).await.unwrap();
    send.send(&Message::Raft {
        kind: 2,
        body: b"not json".to_vec(),
    })
    .await
    .unwrap();
    send.finish().unwrap();
    let answer = tokio::time::timeout(BOUND, recv.recv()).await.unwrap();
    assert!(answer.is_err(), "{answer:?}");
    assert_eq!(pool.len(), 1);
    let mut factory = QuicNetworkFactory::new(endpoint, &NetworkConfig::default()).unwrap();
    let mut net = factory.new_client(2, &target).await;
    let resp = net.vote(vote(), option()).await.unwrap();
    // Term 1 with no log: the replica, at a later term with a leader, says no.
    assert!(!resp.vote_granted);

    for r in &mut replicas {
        r.shut_down().await;
    }
}
