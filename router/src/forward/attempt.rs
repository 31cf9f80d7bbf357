//! One attempt of a request on one instance: the request stream to its driver node, and a
//! watch on the links of all its stage nodes.

use super::link::NodeLink;
use futures_util::future::select_all;
use std::sync::Arc;
use strata_transport::frame::{self, FrameError};
use strata_transport::proto::{GenerateRequest, Message};
use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

/// Token frames are small; a larger one is a broken peer.
pub const MAX_REQUEST_FRAME: usize = 1 << 20;
/// Frames buffered between the stream reader and the request task.
const FRAME_QUEUE: usize = 64;
/// The application error code of a stream the router abandons (client gone).
pub const CODE_CANCELLED: u32 = 0x10;

/// Why an attempt could not start or went away.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("node {0} is not connected")]
    NotConnected(String),
    #[error("cannot open a stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    #[error("cannot send the request: {0}")]
    Send(#[from] FrameError),
}

/// A request stream in flight: frames from the driver arrive on `frames`; `stages` tells
/// when the link to any stage node of the instance drops.
pub struct Attempt {
    pub instance: String,
    send: quinn::SendStream,
    pub frames: mpsc::Receiver<Result<Option<Message>, FrameError>>,
    pub stages: StageWatch,
    _reader: AbortOnDropHandle<()>,
}

/// The link epochs of an instance's stage nodes, as they were when an attempt started.
pub struct StageWatch {
    /// Each stage node's id and link epoch, the driver first.
    epochs: Vec<(String, watch::Receiver<u64>)>,
}

impl StageWatch {
    /// Completes with a stage node's id when its link drops (or goes away) after the start.
    /// Cancel-safe: dropping it loses no change, the next call sees it.
    pub async fn down(&mut self) -> String {
        let watches = self.epochs.iter_mut().map(|(node, epoch)| {
            Box::pin(async move {
                // An error: the link itself is gone (the node left the cluster) — down too.
                let _ = epoch.changed().await;
                node.clone()
            })
        });
        select_all(watches).await.0
    }
}

impl Attempt {
    /// Opens a stream to `link`'s node (the instance's driver) and writes the request;
    /// watches `link` and `workers`, the links of the instance's other stage nodes.
    pub async fn start(
        instance: String,
        link: &Arc<NodeLink>,
        workers: &[Arc<NodeLink>],
        req: &GenerateRequest,
    ) -> Result<Attempt, AttemptError> {
        let epochs = std::iter::once(link)
            .chain(workers)
            .map(|l| {
                let mut epoch = l.epoch();
                epoch.mark_unchanged();
                (l.node.clone(), epoch)
            })
            .collect();
        let conn = link
            .connection()
            .ok_or_else(|| AttemptError::NotConnected(link.node.clone()))?;
        let (mut send, mut recv) = conn.open_bi().await?;
        frame::write_frame(&mut send, &Message::Generate(req.clone())).await?;
        let (tx, frames) = mpsc::channel(FRAME_QUEUE);
        let reader = tokio::spawn(async move {
            loop {
                let r = frame::read_frame(&mut recv, MAX_REQUEST_FRAME).await;
                let last = !matches!(r, Ok(Some(_)));
                if tx.send(r).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Attempt {
            instance,
            send,
            frames,
            stages: StageWatch { epochs },
            _reader: AbortOnDropHandle::new(reader),
        })
    }

    /// Tells the node to stop: a `Cancel` frame, then a reset of the stream.
    pub async fn cancel(mut self, request: strata_transport::proto::RequestId) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            frame::write_frame(&mut self.send, &Message::Cancel { request }),
        )
        .await;
        let _ = self.send.reset(quinn::VarInt::from_u32(CODE_CANCELLED));
    }

    /// Ends the stream after the node finished (nothing left to cancel).
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn any_stage_going_down_ends_the_watch_and_names_it() {
        let (driver, driver_rx) = watch::channel(0u64);
        let (middle, middle_rx) = watch::channel(0u64);
        let (last, last_rx) = watch::channel(0u64);
        let mut w = StageWatch {
            epochs: vec![
                ("a".into(), driver_rx),
                ("b".into(), middle_rx),
                ("c".into(), last_rx),
            ],
        };
        assert!(w.down().now_or_never().is_none(), "nothing went down yet");
        middle.send_modify(|e| *e += 1);
        assert_eq!(w.down().await, "b");
        // A link that goes away (the node left the cluster) counts as down too.
        drop(last);
        assert_eq!(w.down().await, "c");
        drop(driver);
    }
}
