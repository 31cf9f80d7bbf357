//! Placing a prepared request and answering: one JSON object, or an SSE stream (see `sse`).

use super::assemble::{Assembler, Piece, TokenLogprob};
use super::errors::ApiError;
use super::params::Checked;
use super::registry::ModelEntry;
use super::{HttpState, INSTANCE_HEADER, ROUTING_HEADER, sse};
use crate::generation::{FinishReason, GenStream, Generation, Usage};
use crate::metrics::Metrics;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How one endpoint writes its objects (each method returns JSON text).
pub(crate) trait Format: Send + Sync + 'static {
    /// A chunk sent before any token (chat: the `role` chunk).
    fn opening(&self) -> Option<String>;
    /// A chunk of new text.
    fn chunk(&self, text: String, logprobs: Vec<TokenLogprob>) -> String;
    /// The chunk with the finish reason.
    fn finish_chunk(&self, reason: &'static str) -> String;
    /// The usage chunk, when `stream_options.include_usage` asked for it.
    fn usage_chunk(&self, usage: Usage) -> Option<String>;
    /// The whole, non-streaming response.
    fn whole(
        &self,
        text: String,
        logprobs: Vec<TokenLogprob>,
        reason: &'static str,
        usage: Usage,
    ) -> String;
}

/// What every object of one response shares.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    /// Whether log-probabilities were asked for.
    pub logprobs: bool,
}

impl Common {
    pub fn new(prefix: &str, model: &str, checked: &Checked) -> Common {
        Common {
            id: format!("{prefix}-{:016x}", super::params::random_u64()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            include_usage: checked.include_usage,
            logprobs: checked.logprobs.is_some(),
        }
    }

    /// `usage` on chunks: absent unless asked for, then `null` until the usage chunk.
    pub fn chunk_usage(&self) -> Option<Option<super::openai::UsageJson>> {
        self.include_usage.then_some(None)
    }
}

pub(crate) fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop => "stop",
    }
}

/// Places `generation` and answers with `format`.
pub(crate) async fn run<F: Format>(
    state: &HttpState,
    entry: &ModelEntry,
    generation: Generation,
    checked: Checked,
    format: F,
    arrival: Instant,
) -> Response {
    let in_flight = state.metrics.in_flight();
    let prompt_tokens = u32::try_from(generation.prompt.len()).unwrap_or(u32::MAX);
    let stream = match state.backend.generate(generation, arrival).await {
        Ok(stream) => stream,
        Err(err) => return ApiError::from(err).into_response(),
    };
    state.metrics.observe_routing(stream.routing);
    let headers = placement_headers(&stream);
    let assembler = Assembler::new(
        Arc::clone(&entry.tokenizer),
        checked.stops,
        checked.logprobs,
        prompt_tokens,
    );
    let mut response = if checked.stream {
        let timing = Timing {
            metrics: Arc::clone(&state.metrics),
            arrival,
            _in_flight: in_flight,
        };
        sse::response(stream, assembler, format, timing)
    } else {
        let response = whole(stream, assembler, &format, &state.metrics, arrival).await;
        drop(in_flight);
        response
    };
    response.headers_mut().extend(headers);
    response
}

/// What a finished request reports to the metrics.
pub(crate) struct Timing {
    pub metrics: Arc<Metrics>,
    pub arrival: Instant,
    pub _in_flight: crate::metrics::InFlight,
}

impl Timing {
    /// Records TTFT, TPOT and end-to-end latency of a finished generation.
    pub fn record(&self, assembler: &Assembler, now: Instant) {
        record(&self.metrics, self.arrival, assembler, now);
    }
}

fn record(metrics: &Metrics, arrival: Instant, assembler: &Assembler, now: Instant) {
    metrics.observe_e2e(now - arrival);
    if let Some(first) = assembler.first_token_at {
        metrics.observe_ttft(first - arrival);
        let later = assembler.completion_tokens().saturating_sub(1);
        if let (Some(last), true) = (assembler.last_token_at, later > 0) {
            metrics.observe_tpot((last - first) / later);
        }
    }
}

fn placement_headers(stream: &GenStream) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(instance) = HeaderValue::from_str(&stream.instance) {
        headers.insert(INSTANCE_HEADER, instance);
    }
    let routing_us = u64::try_from(stream.routing.as_micros()).unwrap_or(u64::MAX);
    headers.insert(ROUTING_HEADER, HeaderValue::from(routing_us));
    headers
}

/// Collects the whole generation, then answers with one object (500 if it failed).
async fn whole<F: Format>(
    mut stream: GenStream,
    mut assembler: Assembler,
    format: &F,
    metrics: &Metrics,
    arrival: Instant,
) -> Response {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let end = loop {
        let event = stream.events.recv().await;
        let pieces = assembler.handle(event, Instant::now());
        let mut end = None;
        for piece in pieces {
            match piece {
                Piece::Text {
                    text: t,
                    logprobs: l,
                } => {
                    text.push_str(&t);
                    logprobs.extend(l);
                }
                Piece::Finish { reason, usage } => end = Some(Ok((reason, usage))),
                Piece::Failed { message } => end = Some(Err(message)),
            }
        }
        if let Some(end) = end {
            break end;
        }
    };
    // Cancels the work on the node if a stop string ended it early.
    drop(stream);
    match end {
        Ok((reason, usage)) => {
            record(metrics, arrival, &assembler, Instant::now());
            let body = format.whole(text, logprobs, finish_reason(reason), usage);
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(message) => ApiError::internal(message).into_response(),
    }
}
