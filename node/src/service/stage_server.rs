//! The service of a pipeline stage worker (a stage after the first): `StageOpen` streams from
//! the stage above go to its [`StageWorker`]; a `Subscribe` gets `Hello` and a `Load` every
//! `load_report_ms` (a worker queues nothing: routers watch it only to know it is alive, so
//! that its instance is placeable); a `Generate` is rejected with a pointer to the driver.

use super::codes;
use super::config::Limits;
use super::report::peer_gone;
use super::server::Serve;
use crate::pipeline::worker::StageWorker;
use quinn::{RecvStream, SendStream, VarInt};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_transport::frame::{self, FrameError};
use strata_transport::proto::{
    CostProfile, LoadReport, Message, NodeInfo, RejectEvent, RejectReason,
};
use strata_transport::stream::{MessageReceiver, MessageSender};
use strata_transport::tls::{PeerIdentity, Role};
use tokio_util::sync::CancellationToken;

/// What every stream of a worker needs.
pub(crate) struct StageShared {
    pub info: NodeInfo,
    pub limits: Limits,
    pub load_report_ms: u64,
    pub worker: Arc<StageWorker>,
    pub shutdown: CancellationToken,
    pub started: Instant,
}

impl Serve for StageShared {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    async fn serve_stream(
        self: Arc<Self>,
        mut send: SendStream,
        mut recv: RecvStream,
        peer: Option<PeerIdentity>,
    ) {
        let first = tokio::time::timeout(
            Duration::from_millis(self.limits.first_frame_timeout_ms),
            frame::read_frame(&mut recv, self.limits.max_frame_bytes),
        )
        .await;
        let refuse = |send: &mut SendStream, recv: &mut RecvStream, code: u32| {
            let _ = send.reset(VarInt::from_u32(code));
            let _ = recv.stop(VarInt::from_u32(code));
        };
        match first {
            Ok(Ok(Some(Message::StageOpen(open)))) => {
                if peer.as_ref().and_then(|p| p.role) != Some(Role::Node) {
                    tracing::warn!(peer = ?peer.map(|p| p.member), "a chain opened without a node certificate; refusing");
                    refuse(&mut send, &mut recv, codes::UNEXPECTED);
                    return;
                }
                let max = self.limits.max_stage_frame_bytes;
                let worker = self.worker.clone();
                worker
                    .serve(
                        open,
                        MessageSender::new(send, max),
                        MessageReceiver::new(recv, max),
                        self.shutdown.clone(),
                    )
                    .await;
            }
            Ok(Ok(Some(Message::Subscribe { router }))) => {
                let why = self.subscription(send, &mut recv).await;
                tracing::info!(%router, "subscription ended: {why}");
            }
            Ok(Ok(Some(Message::Generate(g)))) => {
                let r = self.worker.layers();
                let reject = Message::Reject(RejectEvent {
                    request: g.request,
                    reason: RejectReason::Invalid,
                    message: format!(
                        "node {} is a pipeline stage (layers {}..{}); send requests to its driver",
                        self.info.node, r.start, r.end
                    ),
                });
                if frame::write_frame(&mut send, &reject).await.is_ok() {
                    let _ = send.finish();
                }
            }
            Ok(Ok(Some(other))) => {
                tracing::warn!(
                    "unexpected {} as a first frame; closing the stream",
                    other.kind()
                );
                refuse(&mut send, &mut recv, codes::UNEXPECTED);
            }
            Ok(Ok(None)) => {
                let _ = send.finish();
            }
            Ok(Err(FrameError::Io(e))) => tracing::debug!("stream lost: {e}"),
            Ok(Err(e)) => {
                tracing::warn!("bad first frame: {e}; closing the stream");
                refuse(&mut send, &mut recv, codes::BAD_FRAME);
            }
            Err(_) => {
                tracing::warn!("no first frame in time; closing the stream");
                refuse(&mut send, &mut recv, codes::TIMEOUT);
            }
        }
    }
}

impl StageShared {
    fn load(&self, seq: u64) -> Message {
        Message::Load(LoadReport {
            seq,
            at_us: self.started.elapsed().as_micros() as u64,
            waiting: 0,
            running: 0,
            waiting_prefill_tokens: 0,
            gpu_free_blocks: 0,
            host_free_blocks: 0,
            predicted_queue_wait_us: 0,
            cost: CostProfile::default(),
        })
    }

    /// `Hello`, then a `Load` every `load_report_ms` until the subscriber leaves or the node
    /// stops. Returns why it ended.
    async fn subscription(&self, mut send: SendStream, recv: &mut RecvStream) -> String {
        if frame::write_frame(&mut send, &Message::Hello(self.info.clone()))
            .await
            .is_err()
        {
            return "the subscriber went away".into();
        }
        let mut tick = tokio::time::interval(Duration::from_millis(self.load_report_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut peer = pin!(peer_gone(recv, self.limits.max_frame_bytes));
        let mut seq = 0;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    let _ = send.finish();
                    return "the node is shutting down".into();
                }
                (why, code) = &mut peer => {
                    if let Some(code) = code {
                        let _ = send.reset(VarInt::from_u32(code));
                    }
                    return format!("the subscriber {why}");
                }
                _ = tick.tick() => {
                    seq += 1;
                    if let Err(e) = frame::write_frame(&mut send, &self.load(seq)).await {
                        return format!("the subscriber went away ({e})");
                    }
                }
            }
        }
    }
}
