//! One attempt of a request on one instance: the request stream to its driver node.

use super::link::NodeLink;
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

/// A request stream in flight: frames from the node arrive on `frames`; `node_down` changes
/// when the node's link drops.
pub struct Attempt {
    pub instance: String,
    send: quinn::SendStream,
    pub frames: mpsc::Receiver<Result<Option<Message>, FrameError>>,
    pub node_down: watch::Receiver<u64>,
    _reader: AbortOnDropHandle<()>,
}

impl Attempt {
    /// Opens a stream to `link`'s node and writes the request.
    pub async fn start(
        instance: String,
        link: &Arc<NodeLink>,
        req: &GenerateRequest,
    ) -> Result<Attempt, AttemptError> {
        let mut node_down = link.epoch();
        node_down.mark_unchanged();
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
            node_down,
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
