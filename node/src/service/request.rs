//! A request stream: `Generate` in; `Token`… then `Finish`, or `Reject` before any token, out.
//!
//! While the request runs the stream's receive side is read concurrently: a `Cancel` frame, a
//! finished send side (EOF), a reset, a bad frame or the connection's loss all cancel the
//! request on the engine. After a `Cancel` or EOF the node still writes `Finish(Cancelled)`; a
//! bad or unexpected frame resets the stream with its code instead.

use super::codes;
use super::engine_loop::Refused;
use super::logprobs::logprobs;
use super::server::Shared;
use crate::sched::{Event, FinishReason, Request, Sampling, SubmitError};
use quinn::{RecvStream, SendStream, VarInt};
use std::pin::pin;
use std::time::Duration;
use strata_transport::frame::{self, FrameError};
use strata_transport::proto::{
    FinishEvent, GenerateRequest, Message, RejectEvent, RejectReason, RequestId, TokenEvent,
    WireFinishReason,
};

/// Stop tokens a request may carry at most.
pub(crate) const MAX_STOP_TOKENS: usize = 1024;
/// How long the node waits for the peer to acknowledge a finished stream's last bytes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the receive side of a running request ended.
#[derive(Debug)]
enum Cause {
    /// A `Cancel` frame.
    Cancel,
    /// The peer finished its send side.
    Eof,
    /// A frame that could not be decoded.
    BadFrame(FrameError),
    /// A valid message other than `Cancel`.
    Unexpected(&'static str),
    /// The stream was reset or the connection lost.
    Gone(std::io::Error),
}

async fn watch(recv: &mut RecvStream, limit: usize, id: RequestId) -> Cause {
    match frame::read_frame(recv, limit).await {
        Ok(Some(Message::Cancel { request })) => {
            if request != id {
                tracing::debug!(%id, other = %request, "Cancel names another request; cancelling this stream's");
            }
            Cause::Cancel
        }
        Ok(Some(other)) => Cause::Unexpected(other.kind()),
        Ok(None) => Cause::Eof,
        Err(FrameError::Io(e)) => Cause::Gone(e),
        Err(e) => Cause::BadFrame(e),
    }
}

fn reject_reason(e: &SubmitError) -> RejectReason {
    match e {
        SubmitError::EmptyPrompt | SubmitError::ZeroMaxTokens | SubmitError::Duplicate(_) => {
            RejectReason::Invalid
        }
        SubmitError::TooLong { .. } => RejectReason::TooLong,
        SubmitError::TooLarge { .. } => RejectReason::TooLarge,
        SubmitError::QueueFull { .. } => RejectReason::QueueFull,
    }
}

/// Checks what the engine does not: token ids, sampling, SLO, logprobs, bounds.
fn check(shared: &Shared, g: &GenerateRequest) -> Result<(), (RejectReason, String)> {
    let invalid = |m: String| Err((RejectReason::Invalid, m));
    let vocab = shared.info.vocab_size;
    if let Some(t) = g.prompt.iter().find(|&&t| t >= vocab) {
        return invalid(format!("token {t} is outside the vocabulary of {vocab}"));
    }
    let total = g.prompt.len() as u64 + u64::from(g.max_tokens);
    if total > u64::from(shared.info.max_seq_tokens) {
        let e = SubmitError::TooLong {
            prompt: g.prompt.len(),
            max_tokens: g.max_tokens as usize,
            limit: shared.info.max_seq_tokens as usize,
        };
        return Err((RejectReason::TooLong, e.to_string()));
    }
    let s = g.sampling;
    if !(s.temperature.is_finite() && s.temperature >= 0.0) {
        return invalid(format!("temperature {} must be ≥ 0", s.temperature));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return invalid(format!("top_p {} must be in (0, 1]", s.top_p));
    }
    if let Err(e) = g.slo.validate() {
        return invalid(e.to_string());
    }
    if g.logprobs > shared.limits.max_logprobs {
        return invalid(format!(
            "logprobs {} exceeds the limit of {}",
            g.logprobs, shared.limits.max_logprobs
        ));
    }
    if g.stop_tokens.len() > MAX_STOP_TOKENS {
        return invalid(format!(
            "{} stop tokens exceed the limit of {MAX_STOP_TOKENS}",
            g.stop_tokens.len()
        ));
    }
    Ok(())
}

fn to_request(g: GenerateRequest) -> Request {
    Request {
        // Id and arrival are set by the engine handle.
        id: RequestId(0),
        max_tokens: g.max_tokens as usize,
        prompt: g.prompt,
        stop_tokens: g.stop_tokens,
        sampling: Sampling {
            temperature: g.sampling.temperature,
            top_p: g.sampling.top_p,
            seed: g.sampling.seed,
        },
        slo: g.slo,
        cache_salt: g.cache_salt,
        want_logits: g.logprobs > 0,
        arrival: Duration::ZERO,
    }
}

fn finish_reason(r: FinishReason) -> WireFinishReason {
    match r {
        FinishReason::Length => WireFinishReason::Length,
        FinishReason::Stop => WireFinishReason::Stop,
        FinishReason::Cancelled => WireFinishReason::Cancelled,
        FinishReason::Error(e) => WireFinishReason::Error(e),
    }
}

/// Writes the last frame, finishes the stream and waits (bounded) until the peer has it.
async fn close_with(send: &mut SendStream, msg: &Message) {
    if frame::write_frame(send, msg).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, send.stopped()).await;
    }
}

/// Serves one `Generate` whose frame has been read.
pub(crate) async fn serve(
    shared: &Shared,
    g: GenerateRequest,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let id = g.request;
    let reject = |reason: RejectReason, message: String| {
        tracing::info!(%id, ?reason, "rejected: {message}");
        Message::Reject(RejectEvent {
            request: id,
            reason,
            message,
        })
    };
    if shared.shutdown.is_cancelled() {
        let msg = reject(
            RejectReason::ShuttingDown,
            "the node is shutting down".into(),
        );
        return close_with(&mut send, &msg).await;
    }
    if let Err((reason, message)) = check(shared, &g) {
        return close_with(&mut send, &reject(reason, message)).await;
    }
    let top_k = usize::from(g.logprobs);
    let (seq, mut events) = match shared.engine.submit(to_request(g)).await {
        Ok(ok) => ok,
        Err(Refused::Submit(e)) => {
            return close_with(&mut send, &reject(reject_reason(&e), e.to_string())).await;
        }
        Err(Refused::Stopped) => {
            let msg = reject(RejectReason::ShuttingDown, "the engine has stopped".into());
            return close_with(&mut send, &msg).await;
        }
    };
    tracing::debug!(%id, %seq, "accepted");
    let mut peer = pin!(watch(&mut recv, shared.limits.max_frame_bytes, id));
    let mut peer_done = false;
    // Set when the stream is not usable any more: reset with this code once the request ends.
    let mut reset: Option<u32> = None;
    loop {
        tokio::select! {
            ev = events.recv() => {
                let msg = match ev {
                    Some(Event::Token { token, index, at, logits, .. }) => {
                        let (logprob, top_logprobs) = match logits {
                            Some(l) if top_k > 0 => logprobs(&l, token, top_k),
                            _ => (0.0, Vec::new()),
                        };
                        Message::Token(TokenEvent {
                            request: id,
                            index: index as u32,
                            token,
                            at_us: at.as_micros() as u64,
                            logprob,
                            top_logprobs,
                        })
                    }
                    Some(Event::Finished { reason, prompt_tokens, output_tokens, cached_tokens, .. }) => {
                        tracing::debug!(%id, ?reason, output_tokens, "finished");
                        let msg = Message::Finish(FinishEvent {
                            request: id,
                            reason: finish_reason(reason),
                            prompt_tokens: prompt_tokens as u32,
                            output_tokens: output_tokens as u32,
                            cached_tokens: cached_tokens as u32,
                        });
                        match reset {
                            Some(code) => {
                                let _ = send.reset(VarInt::from_u32(code));
                            }
                            None => close_with(&mut send, &msg).await,
                        }
                        return;
                    }
                    Some(Event::Admitted { .. }) => continue,
                    None => {
                        let msg = Message::Finish(FinishEvent {
                            request: id,
                            reason: WireFinishReason::Error("the engine stopped".into()),
                            prompt_tokens: 0,
                            output_tokens: 0,
                            cached_tokens: 0,
                        });
                        return close_with(&mut send, &msg).await;
                    }
                };
                if reset.is_none()
                    && let Err(e) = frame::write_frame(&mut send, &msg).await
                {
                    tracing::info!(%id, "cannot write to the stream ({e}); cancelling");
                    reset = Some(codes::CANCELLED);
                    shared.engine.cancel(seq).await;
                }
            }
            cause = &mut peer, if !peer_done => {
                peer_done = true;
                match &cause {
                    Cause::Cancel | Cause::Eof => {
                        tracing::debug!(%id, ?cause, "cancelled by the peer");
                    }
                    Cause::Gone(e) => {
                        tracing::info!(%id, "stream lost ({e}); cancelling");
                        reset = Some(codes::CANCELLED);
                    }
                    Cause::BadFrame(e) => {
                        tracing::warn!(%id, "bad frame on a request stream: {e}; closing it");
                        reset = Some(codes::BAD_FRAME);
                    }
                    Cause::Unexpected(what) => {
                        tracing::warn!(%id, "unexpected {what} on a request stream; closing it");
                        reset = Some(codes::UNEXPECTED);
                    }
                }
                shared.engine.cancel(seq).await;
            }
        }
    }
}
