//! Server-sent events: `data: {json}\n\n` per chunk, `data: [DONE]\n\n` at the end.
//!
//! The body stream owns the [`GenStream`]: when the client goes away, axum drops the body,
//! which drops the stream and cancels the work on the node. A stop string drops it at once.

use super::assemble::{Assembler, Piece};
use super::errors::ApiError;
use super::run::{Format, Timing, finish_reason};
use crate::generation::GenStream;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use std::convert::Infallible;
use std::time::Instant;

/// The last event of every stream.
pub(crate) const DONE: &str = "data: [DONE]\n\n";

/// One SSE event carrying `json`.
pub(crate) fn event(json: &str) -> String {
    format!("data: {json}\n\n")
}

struct SseState<F> {
    /// `None` once the generation ended: dropped as soon as it is not needed.
    stream: Option<GenStream>,
    assembler: Assembler,
    format: F,
    timing: Timing,
    opened: bool,
}

/// A streaming response of `format` chunks.
pub(crate) fn response<F: Format>(
    stream: GenStream,
    assembler: Assembler,
    format: F,
    timing: Timing,
) -> Response {
    let state = SseState {
        stream: Some(stream),
        assembler,
        format,
        timing,
        opened: false,
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        let frames = next_frames(&mut state).await?;
        Some((Ok::<_, Infallible>(Bytes::from(frames)), state))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The next frames to send; `None` when the stream is over.
async fn next_frames<F: Format>(state: &mut SseState<F>) -> Option<String> {
    if !state.opened {
        state.opened = true;
        if let Some(opening) = state.format.opening() {
            return Some(event(&opening));
        }
    }
    loop {
        let events = &mut state.stream.as_mut()?.events;
        let event_in = events.recv().await;
        let pieces = state.assembler.handle(event_in, Instant::now());
        let mut out = String::new();
        for piece in pieces {
            match piece {
                Piece::Text { text, logprobs } => {
                    out.push_str(&event(&state.format.chunk(text, logprobs)));
                }
                Piece::Finish { reason, usage } => {
                    state.stream = None;
                    state.timing.record(&state.assembler, Instant::now());
                    out.push_str(&event(&state.format.finish_chunk(finish_reason(reason))));
                    if let Some(usage) = state.format.usage_chunk(usage) {
                        out.push_str(&event(&usage));
                    }
                    out.push_str(DONE);
                }
                Piece::Failed { message } => {
                    state.stream = None;
                    out.push_str(&event(&ApiError::internal(message).to_json()));
                    out.push_str(DONE);
                }
            }
        }
        if !out.is_empty() {
            return Some(out);
        }
    }
}
