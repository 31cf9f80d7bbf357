//! One streaming request: send it, read its SSE body, measure it.
//!
//! The clock starts just before the request is sent. TTFT ends at the first chunk that carries
//! text or token ids; TPOT is the time from that chunk to the last one that carries any, over
//! the output tokens after the first; end-to-end ends at `data: [DONE]`. Output tokens come
//! from the `usage` chunk when the server sends one, else from counting chunks.

use super::arrivals::Prompt;
use super::sse::SseParser;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Response header naming the instance that served the request.
pub const INSTANCE_HEADER: &str = "x-strata-instance";
/// Response header with the router's routing overhead, microseconds.
pub const ROUTING_HEADER: &str = "x-strata-routing-us";
/// Request header naming the SLO class.
pub const SLO_HEADER: &str = "x-strata-slo";
/// Characters of an error message or body kept for the report.
const DETAIL_CHARS: usize = 300;
/// How long to read on after `[DONE]` so that the connection goes back to the pool.
const DRAIN_BOUND: Duration = Duration::from_secs(1);

/// Where requests go and how.
#[derive(Debug, Clone)]
pub struct Target {
    /// One client for the whole run: its pool keeps connections open between requests.
    pub client: reqwest::Client,
    /// The full URL, e.g. `http://127.0.0.1:8080/v1/completions`.
    pub endpoint: String,
    pub slo_class: Option<String>,
    /// Bound on a whole request, from sending to `[DONE]`.
    pub timeout: Duration,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The stream reached `data: [DONE]`.
    Completed,
    /// The server answered 429, with the seconds of its `Retry-After` when it gave some.
    Rejected {
        retry_after_s: Option<f64>,
    },
    Failed {
        failure: Failure,
        detail: String,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A status other than 2xx and 429.
    Status(u16),
    /// No `[DONE]` within `--timeout-s`.
    Timeout,
    /// No connection to the server.
    Connect,
    /// The connection failed while sending or reading.
    Transport,
    /// The stream carried `data: {"error": ...}`.
    StreamError,
    /// The body is not an SSE stream of JSON chunks.
    Malformed,
    /// The body ended before `data: [DONE]`.
    Truncated,
    /// The run was interrupted (Ctrl-C) while the request was in flight.
    Interrupted,
}

impl Failure {
    /// The key the report counts it under: `http_503`, `timeout`, ...
    pub fn key(&self) -> String {
        match self {
            Failure::Status(code) => format!("http_{code}"),
            Failure::Timeout => "timeout".into(),
            Failure::Connect => "connect".into(),
            Failure::Transport => "transport".into(),
            Failure::StreamError => "stream_error".into(),
            Failure::Malformed => "malformed".into(),
            Failure::Truncated => "truncated".into(),
            Failure::Interrupted => "interrupted".into(),
        }
    }
}

/// What one request did.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub outcome: Outcome,
    pub ttft: Option<Duration>,
    /// Mean time per output token after the first (`None` with fewer than two).
    pub tpot: Option<Duration>,
    /// Sending to `[DONE]`, or to the failure.
    pub e2e: Duration,
    pub output_tokens: u64,
    /// The `x-strata-instance` header of the response.
    pub instance: Option<String>,
    /// The `x-strata-routing-us` header of the response.
    pub routing_us: Option<f64>,
}

/// What one SSE event of a completion stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// `data: [DONE]`.
    Done,
    /// A chunk: the output tokens it carries (1 per choice with text, or its `token_ids`), and
    /// `usage.completion_tokens` when present.
    Data {
        tokens: u64,
        completion_tokens: Option<u64>,
    },
    /// `data: {"error": ...}`, with its message.
    Error(String),
}

/// Reads one event's data; `Err` with a description when it is not a JSON chunk.
pub fn interpret(data: &str) -> Result<Chunk, String> {
    if data.trim() == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let v: Value =
        serde_json::from_str(data).map_err(|e| format!("{e} in chunk {}", snippet(data)))?;
    if let Some(err) = v.get("error")
        && !err.is_null()
    {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Ok(Chunk::Error(snippet(&message)));
    }
    let tokens = v
        .get("choices")
        .and_then(Value::as_array)
        .map_or(0, |choices| choices.iter().map(choice_tokens).sum());
    let completion_tokens = v
        .get("usage")
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64);
    Ok(Chunk::Data {
        tokens,
        completion_tokens,
    })
}

fn choice_tokens(choice: &Value) -> u64 {
    if let Some(ids) = choice.get("token_ids").and_then(Value::as_array)
        && !ids.is_empty()
    {
        return ids.len() as u64;
    }
    let text = choice
        .get("text")
        .and_then(Value::as_str)
        .or_else(|| choice.get("delta")?.get("content")?.as_str());
    u64::from(text.is_some_and(|t| !t.is_empty()))
}

/// The JSON body of a streaming request, greedy, asking for a final `usage` chunk. It sets
/// `ignore_eos` (a Strata and vLLM extension) so output lengths follow the workload exactly.
pub fn request_body(model: &str, prompt: &Prompt, max_tokens: u32, chat: bool) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if chat {
        body["messages"] = json!([{"role": "user", "content": prompt.to_json()}]);
    } else {
        body["prompt"] = prompt.to_json();
    }
    body
}

/// Measurements of a request so far; kept outside the timed future so a timeout keeps them.
#[derive(Debug)]
struct Progress {
    sent: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    done: Option<Instant>,
    chunk_tokens: u64,
    usage_tokens: Option<u64>,
    instance: Option<String>,
    routing_us: Option<f64>,
}

impl Progress {
    fn handle_chunk(&mut self, tokens: u64, completion_tokens: Option<u64>, at: Instant) {
        if tokens > 0 {
            self.first_token.get_or_insert(at);
            self.last_token = Some(at);
            self.chunk_tokens += tokens;
        }
        if completion_tokens.is_some() {
            self.usage_tokens = completion_tokens;
        }
    }

    fn into_record(self, outcome: Outcome) -> Record {
        let end = self.done.unwrap_or_else(Instant::now);
        let output_tokens = self.usage_tokens.unwrap_or(self.chunk_tokens);
        let tpot = match (self.first_token, self.last_token) {
            (Some(first), Some(last)) if output_tokens > 1 => Some(Duration::from_secs_f64(
                last.duration_since(first).as_secs_f64() / (output_tokens - 1) as f64,
            )),
            _ => None,
        };
        Record {
            outcome,
            ttft: self.first_token.map(|t| t.duration_since(self.sent)),
            tpot,
            e2e: end.duration_since(self.sent),
            output_tokens,
            instance: self.instance,
            routing_us: self.routing_us,
        }
    }
}

/// Sends one request and reads its stream to the end, or until `interrupt` is cancelled; never
/// fails: the record says how it went.
pub async fn send(target: &Target, body: String, interrupt: &CancellationToken) -> Record {
    let mut p = Progress {
        sent: Instant::now(),
        first_token: None,
        last_token: None,
        done: None,
        chunk_tokens: 0,
        usage_tokens: None,
        instance: None,
        routing_us: None,
    };
    let result = tokio::select! {
        r = tokio::time::timeout(target.timeout, exchange(target, body, &mut p)) => Some(r),
        () = interrupt.cancelled() => None,
    };
    let Some(result) = result else {
        return p.into_record(Outcome::Failed {
            failure: Failure::Interrupted,
            detail: "interrupted while in flight".into(),
        });
    };
    let outcome = match result {
        Ok(Ok(mut response)) => {
            // Read what follows `[DONE]` (normally nothing) so the connection can be reused.
            let _ = tokio::time::timeout(DRAIN_BOUND, async {
                while let Ok(Some(_)) = response.chunk().await {}
            })
            .await;
            Outcome::Completed
        }
        Ok(Err(outcome)) => outcome,
        Err(_) => Outcome::Failed {
            failure: Failure::Timeout,
            detail: format!("no [DONE] within {:.1}s", target.timeout.as_secs_f64()),
        },
    };
    p.into_record(outcome)
}

/// Sends and reads up to `[DONE]`; hands back the response to drain, or how it ended instead.
async fn exchange(
    target: &Target,
    body: String,
    p: &mut Progress,
) -> Result<reqwest::Response, Outcome> {
    let mut request = target
        .client
        .post(&target.endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .body(body);
    if let Some(class) = &target.slo_class {
        request = request.header(SLO_HEADER, class);
    }
    p.sent = Instant::now();
    let mut response = request.send().await.map_err(transport_failure)?;
    let headers = response.headers();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    p.instance = header(INSTANCE_HEADER).map(str::to_string);
    p.routing_us = header(ROUTING_HEADER).and_then(|v| v.trim().parse::<f64>().ok());
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let retry_after_s = header(reqwest::header::RETRY_AFTER.as_str())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0);
        return Err(Outcome::Rejected { retry_after_s });
    }
    if !status.is_success() {
        return Err(Outcome::Failed {
            failure: Failure::Status(status.as_u16()),
            detail: error_body(&mut response).await,
        });
    }
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    loop {
        let piece = response.chunk().await.map_err(transport_failure)?;
        let at = Instant::now();
        let parsed = match &piece {
            Some(bytes) => parser.handle_bytes(bytes, &mut events),
            None => parser.finish(&mut events),
        };
        parsed.map_err(|e| malformed(e.to_string()))?;
        for data in events.drain(..) {
            match interpret(&data).map_err(malformed)? {
                Chunk::Done => {
                    p.done = Some(at);
                    return Ok(response);
                }
                Chunk::Data {
                    tokens,
                    completion_tokens,
                } => p.handle_chunk(tokens, completion_tokens, at),
                Chunk::Error(message) => {
                    return Err(Outcome::Failed {
                        failure: Failure::StreamError,
                        detail: message,
                    });
                }
            }
        }
        if piece.is_none() {
            return Err(Outcome::Failed {
                failure: Failure::Truncated,
                detail: format!(
                    "the stream ended after {} token chunks without data: [DONE]",
                    p.chunk_tokens
                ),
            });
        }
    }
}

/// The start of an error response's body.
async fn error_body(response: &mut reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < 4 * DETAIL_CHARS {
        match response.chunk().await {
            Ok(Some(bytes)) => body.extend_from_slice(&bytes),
            _ => break,
        }
    }
    snippet(&String::from_utf8_lossy(&body))
}

fn malformed(detail: String) -> Outcome {
    Outcome::Failed {
        failure: Failure::Malformed,
        detail,
    }
}

fn transport_failure(e: reqwest::Error) -> Outcome {
    let failure = if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() {
        Failure::Connect
    } else {
        Failure::Transport
    };
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    Outcome::Failed {
        failure,
        detail: snippet(&detail),
    }
}

/// At most [`DETAIL_CHARS`] characters of `s`, on one line.
pub fn snippet(s: &str) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .take(DETAIL_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.trim().chars().nth(DETAIL_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_and_chat_chunks() {
        let data = |s: &str| interpret(s).unwrap();
        assert_eq!(data(" [DONE]"), Chunk::Done);
        assert_eq!(
            data(r#"{"choices":[{"index":0,"text":"he","finish_reason":null}],"usage":null}"#),
            Chunk::Data {
                tokens: 1,
                completion_tokens: None
            }
        );
        assert_eq!(
            data(r#"{"choices":[{"text":""}]}"#),
            Chunk::Data {
                tokens: 0,
                completion_tokens: None
            }
        );
        assert_eq!(
            data(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            Chunk::Data {
                tokens: 0,
                completion_tokens: None
            }
        );
        assert_eq!(
            data(r#"{"choices":[{"delta":{"content":"x"}}]}"#),
            Chunk::Data {
                tokens: 1,
                completion_tokens: None
            }
        );
        assert_eq!(
            data(r#"{"choices":[{"text":"","token_ids":[5,6,7]}]}"#),
            Chunk::Data {
                tokens: 3,
                completion_tokens: None
            }
        );
        assert_eq!(
            data(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#),
            Chunk::Data {
                tokens: 0,
                completion_tokens: Some(4)
            }
        );
        assert_eq!(
            data(r#"{"error":{"message":"engine died","type":"server_error"}}"#),
            Chunk::Error("engine died".into())
        );
        assert_eq!(
            data(r#"{"error":"plain"}"#),
            Chunk::Error("\"plain\"".into())
        );
        assert!(interpret("{not json").is_err());
    }

    #[test]
    fn tpot_is_over_the_tokens_after_the_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Progress {
            sent: t0,
            first_token: None,
            last_token: None,
            done: None,
            chunk_tokens: 0,
            usage_tokens: None,
            instance: None,
            routing_us: None,
        };
        p.handle_chunk(0, None, t0 + ms(5));
        p.handle_chunk(1, None, t0 + ms(100));
        p.handle_chunk(1, None, t0 + ms(130));
        p.handle_chunk(1, None, t0 + ms(160));
        p.handle_chunk(0, Some(3), t0 + ms(170));
        p.done = Some(t0 + ms(171));
        let r = p.into_record(Outcome::Completed);
        assert_eq!(r.ttft, Some(ms(100)));
        assert_eq!(r.tpot, Some(ms(30)));
        assert_eq!(r.e2e, ms(171));
        assert_eq!(r.output_tokens, 3);
    }

    #[test]
    fn bodies() {
        let ids = Prompt::TokenIds(vec![3, 4]);
        let b = request_body("m", &ids, 7, false);
        assert_eq!(b["prompt"], json!([3, 4]));
        assert_eq!(b["stream"], json!(true));
        assert_eq!(b["stream_options"]["include_usage"], json!(true));
        assert_eq!(b["temperature"], json!(0));
        assert_eq!(b["max_tokens"], json!(7));
        let text = Prompt::Text("hi there".into());
        let b = request_body("m", &text, 7, true);
        assert_eq!(b["messages"][0]["content"], json!("hi there"));
        assert!(b.get("prompt").is_none());
    }

    #[test]
    fn snippets_are_bounded() {
        assert_eq!(snippet(" a\nb "), "a b");
        let long = "é".repeat(1000);
        assert_eq!(snippet(&long).chars().count(), DETAIL_CHARS + 1);
    }
}
