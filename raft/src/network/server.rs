//! The callee side: [`serve_raft`] accepts connections on a replica's control endpoint (mutual
//! TLS already checked by the endpoint's configuration) and answers each stream's one request:
//! a Raft RPC (only from a certificate with the router role), a control request, or a node's
//! registration (both handed to the [`ControlService`], which checks roles itself).

use super::{MAX_RAFT_FRAME_BYTES, RpcKind};
use crate::api::Envelope;
use crate::control::ControlService;
use crate::store::TypeConfig;
use openraft::Raft;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use strata_transport::proto::Message;
use strata_transport::stream::{self, MessageReceiver, MessageSender, codes};
use strata_transport::tls::{PeerIdentity, Role, peer_identity};
use tokio::task::JoinSet;

/// Serves Raft RPCs arriving on `endpoint` to `raft` until `shutdown` completes; then stops
/// accepting, abandons the RPCs in flight (their callers see the stream reset and retry
/// elsewhere) and returns. Concurrent streams per connection are bounded by the endpoint's
/// transport configuration.
pub async fn serve_raft(
    endpoint: quinn::Endpoint,
    raft: Raft<TypeConfig>,
    control: Arc<ControlService>,
    shutdown: impl Future<Output = ()>,
) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    conns.spawn(connection(incoming, raft.clone(), control.clone()));
                }
                // The endpoint was closed.
                None => break,
            },
            // Reap finished connection tasks so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// One connection: a task per stream, all ended when the connection ends.
async fn connection(
    incoming: quinn::Incoming,
    raft: Raft<TypeConfig>,
    control: Arc<ControlService>,
) {
    // A refused handshake (a certificate not from the cluster CA) ends here.
    let Ok(conn) = incoming.await else { return };
    let peer = peer_identity(&conn).map(Arc::new);
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(pair) => {
                    let (send, recv) = stream::pair(pair, MAX_RAFT_FRAME_BYTES);
                    streams.spawn(rpc(send, recv, raft.clone(), control.clone(), peer.clone()));
                }
                Err(_) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

/// One stream: one request, one answer. Anything wrong with the request stops this stream
/// with a code from [`codes`].
async fn rpc(
    mut send: MessageSender,
    mut recv: MessageReceiver,
    raft: Raft<TypeConfig>,
    control: Arc<ControlService>,
    peer: Option<Arc<PeerIdentity>>,
) {
    let peer = peer.as_deref();
    let (kind, body) = match recv.recv().await {
        Ok(Some(Message::Raft { kind, body })) => (kind, body),
        Ok(Some(Message::Register(reg))) => {
            let answer = control.register(peer, reg).await;
            if send.send(&Message::Registered(answer)).await.is_ok() {
                let _ = send.finish();
            }
            return;
        }
        Ok(Some(_)) | Ok(None) => {
            recv.stop(codes::UNEXPECTED_MESSAGE);
            send.reset(codes::UNEXPECTED_MESSAGE);
            return;
        }
        // `recv` already stopped the stream with the frame's code.
        Err(e) => {
            send.reset(e.code().unwrap_or(codes::FRAME_INVALID));
            return;
        }
    };
    let kind_of = RpcKind::from_u8(kind);
    let replica = peer.is_some_and(|p| p.role == Some(Role::Router));
    if !replica && !matches!(kind_of, Some(RpcKind::Control) | None) {
        recv.stop(codes::UNAUTHORIZED);
        send.reset(codes::UNAUTHORIZED);
        return;
    }
    let answer = match kind_of {
        Some(RpcKind::Control) => {
            dispatch(&body, |req: Envelope| async {
                control.handle(peer, req).await
            })
            .await
        }
        Some(RpcKind::AppendEntries) => {
            dispatch(&body, |req| async { raft.append_entries(req).await }).await
        }
        Some(RpcKind::Vote) => dispatch(&body, |req| async { raft.vote(req).await }).await,
        Some(RpcKind::InstallSnapshot) => {
            dispatch(&body, |req| async { raft.install_snapshot(req).await }).await
        }
        None => None,
    };
    let Some(body) = answer else {
        recv.stop(codes::FRAME_INVALID);
        send.reset(codes::FRAME_INVALID);
        return;
    };
    if send.send(&Message::Raft { kind, body }).await.is_ok() {
        // The caller may have gone: nothing to do about it here.
        let _ = send.finish();
    }
}

/// Decodes the request, runs it, encodes `Result<answer, RaftError>`; `None` if the request
/// does not decode.
async fn dispatch<Req, Resp, F, Fut>(body: &[u8], run: F) -> Option<Vec<u8>>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    let req: Req = serde_json::from_slice(body).ok()?;
    let answer = run(req).await;
    serde_json::to_vec(&answer).ok()
}
