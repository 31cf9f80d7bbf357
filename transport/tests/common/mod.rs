//! Helpers shared by the transport's integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;
use strata_transport::proto::msg::{
    FinishEvent, GenerateRequest, LoadReport, NodeInfo, RegisterAnswer, Registration, RejectEvent,
    RejectReason, TokenEvent, WireFinishReason, WireKvEvent, WireSampling,
};
use strata_transport::proto::{CostProfile, Message, RequestId, SloClass};
use strata_transport::stream::{self, DEFAULT_MAX_FRAME};
use strata_transport::tls::{ClusterCa, Identity};

/// Bound on every wait in these tests.
pub const BOUND: Duration = Duration::from_secs(30);

/// One value of every message variant (and of the interesting inner variants).
pub fn every_message() -> Vec<Message> {
    let r = RequestId(42);
    vec![
        Message::Generate(GenerateRequest {
            request: r,
            prompt: (0..5000).collect(),
            max_tokens: 256,
            stop_tokens: vec![2, 128_009],
            sampling: WireSampling {
                temperature: 0.7,
                top_p: 0.9,
                seed: 7,
            },
            slo: SloClass {
                name: "interactive".into(),
                ttft_ms: 800.0,
                tpot_ms: 50.0,
                priority: 2,
            },
            cache_salt: 0xDEAD_BEEF,
            logprobs: 5,
        }),
        Message::Token(TokenEvent {
            request: r,
            index: 3,
            token: 1234,
            at_us: 99_000,
            logprob: -0.1,
            top_logprobs: vec![(1234, -0.1), (77, -2.5)],
        }),
        Message::Finish(FinishEvent {
            request: r,
            reason: WireFinishReason::Error("device lost".into()),
            prompt_tokens: 5000,
            output_tokens: 3,
            cached_tokens: 4096,
        }),
        Message::Finish(FinishEvent {
            request: r,
            reason: WireFinishReason::Length,
            prompt_tokens: 1,
            output_tokens: 1,
            cached_tokens: 0,
        }),
        Message::Reject(RejectEvent {
            request: r,
            reason: RejectReason::QueueFull,
            message: "the waiting queue is full (64 requests)".into(),
        }),
        Message::Cancel { request: r },
        Message::Subscribe {
            router: "router-0".into(),
        },
        Message::Hello(NodeInfo {
            node: "node-1".into(),
            model: "tiny".into(),
            executor: "cpu".into(),
            vocab_size: 512,
            num_layers: 4,
            max_seq_tokens: 32_768,
            block_tokens: 16,
            block_bytes: 4096,
            gpu_blocks: 1 << 12,
            host_blocks: 1 << 16,
            eos_tokens: vec![2],
        }),
        Message::Load(LoadReport {
            seq: 9,
            at_us: 123_456,
            waiting: 3,
            waiting_prefill_tokens: 12_288,
            running: 17,
            gpu_free_blocks: 1 << 20,
            host_free_blocks: 1 << 30,
            predicted_queue_wait_us: 1500,
            cost: CostProfile::default(),
        }),
        Message::KvEvents(vec![
            WireKvEvent::Stored {
                tier: 0,
                hash: 1,
                layer: 3,
            },
            WireKvEvent::Removed {
                tier: 1,
                hash: u64::MAX,
                layer: 79,
            },
        ]),
        Message::Raft {
            kind: 1,
            body: br#"{"vote":{"leader_id":{"term":3,"node_id":2},"committed":false}}"#.to_vec(),
        },
        Message::Raft {
            kind: 255,
            body: Vec::new(),
        },
        Message::Register(Registration {
            node: "node-1".into(),
            addr: "[fd00::7]:7001".into(),
            executor: "sim".into(),
            devices: 8,
            device_memory_bytes: 143_771 << 20,
            host_memory_bytes: 2 << 40,
        }),
        Message::Registered(RegisterAnswer {
            accepted: true,
            version: 17,
            retry: false,
            message: String::new(),
        }),
        Message::Registered(RegisterAnswer {
            accepted: false,
            version: 0,
            retry: true,
            message: "no leader yet".into(),
        }),
    ]
}

/// A cluster CA and identities for `members`.
pub fn identities(members: &[&str]) -> Vec<Identity> {
    let ca = ClusterCa::generate("test").unwrap();
    members.iter().map(|m| ca.issue(m).unwrap()).collect()
}

/// An endpoint on a free loopback port whose connections echo every message of every
/// bidirectional stream back on that stream, until the peer finishes it.
pub fn echo_server(identity: &Identity) -> (quinn::Endpoint, SocketAddr) {
    let ep = identity.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let accept = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok(bi) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let (mut tx, mut rx) = stream::pair(bi, DEFAULT_MAX_FRAME);
                        while let Ok(Some(m)) = rx.recv().await {
                            if tx.send(&m).await.is_err() {
                                return;
                            }
                        }
                        let _ = tx.finish();
                        let _ = tx.stopped().await;
                    });
                }
            });
        }
    });
    (ep, addr)
}
