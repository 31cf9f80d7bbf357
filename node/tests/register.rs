//! Node registration against a fake control endpoint over real QUIC on loopback: the node
//! registers with its own certificate (role `node`), retries refusals that may pass and dead
//! routers, stops at a definitive refusal, and stops on shutdown.

mod common;

use common::Certs;
use std::net::SocketAddr;
use std::time::Duration;
use strata_node::service::{ExecutorKind, NodeConfig, NodeService, RegistrationState, TlsConfig};
use strata_transport::proto::{Message, RegisterAnswer, Registration};
use strata_transport::stream::{self, DEFAULT_MAX_FRAME};
use strata_transport::tls::{ClusterCa, PeerIdentity, Role, peer_identity};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Bound on every wait: generous for a loaded 2-core machine; a pass never waits this long.
const BOUND: Duration = Duration::from_secs(60);

fn certs(tag: &str) -> Certs {
    common::certs("reg", tag)
}

/// A `sim` node (no weights, no calibration: it starts fast) that registers with `routers`.
fn config(certs: &Certs, routers: Vec<SocketAddr>) -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model: "tiny".into(),
        executor: ExecutorKind::Sim,
        tls: TlsConfig {
            dir: certs.dir.clone(),
            member: None,
        },
        gpu_mib: Some(64),
        host_mib: Some(32),
        routers,
        ..NodeConfig::default()
    }
}

async fn start(cfg: NodeConfig) -> NodeService {
    timeout(BOUND, NodeService::start(cfg, CancellationToken::new()))
        .await
        .unwrap()
        .unwrap()
}

/// What the fake control endpoint heard on one registration stream.
#[derive(Debug)]
struct Heard {
    peer: Option<PeerIdentity>,
    registration: Registration,
}

/// A fake router control endpoint (certificate role `router`): answers the registrations it
/// reads with `answers` in order (the last one from then on) and reports each on the channel.
fn control_server(
    ca: &ClusterCa,
    answers: Vec<RegisterAnswer>,
) -> (SocketAddr, mpsc::Receiver<Heard>) {
    let id = ca.issue_as("router-1", Role::Router).unwrap();
    let ep = id.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let (heard_tx, heard) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut answered = 0;
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let Ok(bi) = conn.accept_bi().await else {
                continue;
            };
            let (mut tx, mut rx) = stream::pair(bi, DEFAULT_MAX_FRAME);
            let Ok(Some(Message::Register(registration))) = rx.recv().await else {
                // Nothing is reported: the test waiting for a registration fails at its bound.
                continue;
            };
            let answer = answers[answered.min(answers.len() - 1)].clone();
            answered += 1;
            let peer = peer_identity(&conn);
            let _ = tx.send(&Message::Registered(answer)).await;
            let _ = tx.finish();
            let _ = heard_tx.send(Heard { peer, registration }).await;
            // The node closes the connection once it has read the answer.
            let _ = timeout(BOUND, conn.closed()).await;
        }
    });
    (addr, heard)
}

fn accept(version: u64) -> RegisterAnswer {
    RegisterAnswer {
        accepted: true,
        version,
        retry: false,
        message: String::new(),
    }
}

fn refuse(retry: bool, message: &str) -> RegisterAnswer {
    RegisterAnswer {
        accepted: false,
        version: 0,
        retry,
        message: message.into(),
    }
}

/// Waits (bounded) until the registration is no longer pending; returns the state.
async fn settled(mut rx: watch::Receiver<RegistrationState>) -> RegistrationState {
    timeout(
        BOUND,
        rx.wait_for(|s| !matches!(s, RegistrationState::Pending { .. })),
    )
    .await
    .expect("registration did not settle within the bound")
    .unwrap()
    .clone()
}

/// A loopback UDP port nobody listens on.
fn dead_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

#[tokio::test]
async fn a_node_registers_with_its_certificate_and_advertised_address() {
    let certs = certs("ok");
    let (router, mut heard) = control_server(&certs.ca, vec![accept(7)]);
    let node = start(config(&certs, vec![router])).await;
    assert_eq!(
        settled(node.registration()).await,
        RegistrationState::Registered { version: 7 }
    );
    let h = heard.recv().await.unwrap();
    let peer = h.peer.expect("the node presented a member certificate");
    assert_eq!(peer.member, "node-1");
    assert_eq!(peer.role, Some(Role::Node));
    let r = h.registration;
    assert_eq!(r.node, "node-1");
    assert_eq!(r.addr, node.local_addr().to_string());
    assert_eq!(r.executor, "sim");
    assert_eq!(r.devices, 0);
    assert_eq!(r.device_memory_bytes, 64 << 20);
    assert_eq!(r.host_memory_bytes, 32 << 20);
    timeout(BOUND, node.shutdown()).await.unwrap().unwrap();
    assert!(heard.try_recv().is_err(), "registered once");
}

#[tokio::test]
async fn a_refusal_that_may_pass_is_retried() {
    let certs = certs("retry");
    let answers = vec![refuse(true, "no leader yet"), accept(3)];
    let (router, mut heard) = control_server(&certs.ca, answers);
    let node = start(config(&certs, vec![router])).await;
    assert_eq!(
        settled(node.registration()).await,
        RegistrationState::Registered { version: 3 }
    );
    for _ in 0..2 {
        let h = heard.recv().await.unwrap();
        assert_eq!(h.registration.node, "node-1");
    }
    timeout(BOUND, node.shutdown()).await.unwrap().unwrap();
    assert!(heard.try_recv().is_err(), "no attempt after the acceptance");
}

#[tokio::test]
async fn a_definitive_refusal_stops_registration() {
    let certs = certs("refused");
    let message = "node-1 is registered with another certificate";
    let (router, mut heard) = control_server(&certs.ca, vec![refuse(false, message)]);
    let mut cfg = config(&certs, vec![router]);
    let advertised: SocketAddr = "127.0.0.1:7999".parse().unwrap();
    cfg.advertise = Some(advertised);
    let node = start(cfg).await;
    assert_eq!(
        settled(node.registration()).await,
        RegistrationState::Refused {
            message: message.into()
        }
    );
    let h = heard.recv().await.unwrap();
    assert_eq!(h.registration.addr, advertised.to_string());
    timeout(BOUND, node.shutdown()).await.unwrap().unwrap();
    assert!(heard.try_recv().is_err(), "no attempt after the refusal");
}

#[tokio::test]
async fn a_dead_router_is_skipped() {
    let certs = certs("dead");
    let (router, mut heard) = control_server(&certs.ca, vec![accept(11)]);
    let node = start(config(&certs, vec![dead_addr(), router])).await;
    assert_eq!(
        settled(node.registration()).await,
        RegistrationState::Registered { version: 11 }
    );
    assert_eq!(heard.recv().await.unwrap().registration.node, "node-1");
    timeout(BOUND, node.shutdown()).await.unwrap().unwrap();
}

#[tokio::test]
async fn registration_stops_on_shutdown_and_is_off_without_routers() {
    let certs = certs("stop");
    let node = start(config(&certs, vec![dead_addr()])).await;
    let mut rx = node.registration();
    // The first attempt is under way (or failed already): still pending.
    assert!(matches!(
        *rx.borrow_and_update(),
        RegistrationState::Pending { .. }
    ));
    timeout(BOUND, node.shutdown()).await.unwrap().unwrap();
    assert!(matches!(*rx.borrow(), RegistrationState::Pending { .. }));

    let node = start(config(&certs, Vec::new())).await;
    assert_eq!(*node.registration().borrow(), RegistrationState::Disabled);
    timeout(BOUND, node.shutdown()).await.unwrap().unwrap();
}
