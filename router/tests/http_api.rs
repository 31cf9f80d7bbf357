//! The HTTP front end against a scripted fake backend, over real sockets.

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_router::generation::{
    Backend, FinishReason, GenError, GenEvent, GenStream, Generation, ModelCard, Usage,
};
use strata_router::http::{HttpLimits, HttpState, ModelEntry, ModelRegistry, app};
use strata_router::metrics::Metrics;
use strata_transport::proto::SloClass;
use strata_transport::vocab::Tokenizer;
use tokio::sync::{mpsc, watch};

/// What the fake does with the next `generate` call.
enum Script {
    /// Sends these events, then keeps the stream open until the router drops it (so a script
    /// without a `Finish` hangs).
    Events(Vec<GenEvent>),
    Error(GenError),
}

struct Fake {
    scripts: Mutex<VecDeque<Script>>,
    requests: Mutex<Vec<Generation>>,
    ready: AtomicBool,
    cards: Vec<ModelCard>,
    /// How many generation streams the router has dropped.
    dropped: Arc<watch::Sender<usize>>,
}

impl Fake {
    fn new() -> Arc<Fake> {
        Arc::new(Fake {
            scripts: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            ready: AtomicBool::new(true),
            cards: vec![ModelCard {
                name: "tiny".into(),
                max_context: Some(64),
                eos_tokens: vec![Tokenizer::EOS],
            }],
            dropped: Arc::new(watch::channel(0).0),
        })
    }

    fn script(&self, script: Script) {
        self.scripts.lock().unwrap().push_back(script);
    }

    fn last_request(&self) -> Generation {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the backend")
    }

    fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Waits, with a bound, until the router has dropped `n` streams.
    async fn wait_dropped(&self, n: usize) {
        let mut rx = self.dropped.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&d| d >= n))
            .await
            .expect("the router dropped the generation stream in time")
            .expect("watch open");
    }
}

impl Backend for Fake {
    fn generate(
        &self,
        request: Generation,
        _arrival: Instant,
    ) -> BoxFuture<'_, Result<GenStream, GenError>> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(request);
            let script = self.scripts.lock().unwrap().pop_front();
            let events = match script {
                Some(Script::Error(err)) => return Err(err),
                Some(Script::Events(events)) => events,
                None => reply("ok", FinishReason::Length),
            };
            let (tx, rx) = mpsc::channel(8);
            let dropped = Arc::clone(&self.dropped);
            tokio::spawn(async move {
                for event in events {
                    if tx.send(event).await.is_err() {
                        break;
                    }
                }
                tx.closed().await;
                dropped.send_modify(|n| *n += 1);
            });
            Ok(GenStream {
                instance: "inst-7".into(),
                routing: Duration::from_micros(1500),
                events: rx,
            })
        })
    }

    fn models(&self) -> Vec<ModelCard> {
        self.cards.clone()
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

fn byte_id(b: u8) -> u32 {
    u32::from(b) + 3
}

/// Token events for `text` (bytes), each with logprob -0.25 and two top entries.
fn tokens(text: &str) -> Vec<GenEvent> {
    text.bytes()
        .enumerate()
        .map(|(i, b)| GenEvent::Token {
            index: i as u32,
            token: byte_id(b),
            logprob: -0.25,
            top_logprobs: vec![
                (byte_id(b), -0.25),
                (byte_id(b'!'), -2.0),
                (byte_id(b'?'), -3.0),
            ],
        })
        .collect()
}

/// `text` then a finish.
fn reply(text: &str, reason: FinishReason) -> Vec<GenEvent> {
    let mut events = tokens(text);
    events.push(GenEvent::Finish {
        reason,
        usage: Usage {
            prompt_tokens: 5,
            completion_tokens: text.len() as u32,
            cached_tokens: 2,
        },
    });
    events
}

struct Server {
    base: String,
    fake: Arc<Fake>,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
}

async fn serve_with(configure: impl FnOnce(HttpState) -> HttpState) -> Server {
    let fake = Fake::new();
    let models = ModelRegistry::new().with("tiny", ModelEntry::bytes().with_vocab_size(259));
    let metrics = Arc::new(Metrics::new());
    let slo = vec![
        SloClass::default(),
        SloClass {
            name: "batch".into(),
            ttft_ms: 60_000.0,
            tpot_ms: 500.0,
            priority: 0,
        },
    ];
    let state = HttpState::new(fake.clone(), models)
        .with_metrics(Arc::clone(&metrics))
        .with_slo_classes(slo, "default")
        .expect("default class exists");
    let state = configure(state);
    state.validate().expect("valid state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    Server {
        base,
        fake,
        metrics,
        client: reqwest::Client::new(),
    }
}

async fn serve() -> Server {
    serve_with(|s| s).await
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Posts and returns status, headers and the JSON body.
    async fn post_json(&self, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self.post(path, body).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, headers, json)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

/// Splits an SSE body into its `data:` payloads, checking the framing exactly.
fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "body must end with [DONE]: {body:?}"
    );
    body.split_terminator("\n\n")
        .map(|frame| {
            frame
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("frame without `data: `: {frame:?}"))
                .to_owned()
        })
        .collect()
}

/// The JSON chunks of an SSE body (all frames but the final `[DONE]`).
fn sse_chunks(body: &str) -> Vec<Value> {
    let mut events = sse_events(body);
    assert_eq!(events.pop().as_deref(), Some("[DONE]"));
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "one [DONE], at the end"
    );
    events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    if let Some(code) = want_code {
        assert_eq!(error["code"], code, "{body}");
    }
}

fn text_of_chunks(chunks: &[Value], field: impl Fn(&Value) -> Option<&str>) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(&field))
        .collect()
}

#[tokio::test]
async fn completion_whole_response() {
    let s = serve().await;
    s.fake
        .script(Script::Events(reply("Hello", FinishReason::Length)));
    let request = json!({
        "model": "tiny", "prompt": "Hi there", "max_tokens": 5, "temperature": 0,
        "top_p": 0.5, "seed": 7, "user": "alice", "some_future_field": {"x": 1}
    });
    let (status, headers, body) = s.post_json("/v1/completions", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-strata-instance"], "inst-7");
    assert_eq!(headers["x-strata-routing-us"], "1500");
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "tiny");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "text": "Hello", "logprobs": null, "finish_reason": "length"}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
               "prompt_tokens_details": {"cached_tokens": 2}})
    );
    let g = s.fake.last_request();
    assert_eq!(g.model, "tiny");
    assert_eq!(g.prompt, Tokenizer::Bytes.encode("Hi there").unwrap());
    assert_eq!(g.max_tokens, 5);
    assert_eq!(
        (g.sampling.temperature, g.sampling.top_p, g.sampling.seed),
        (0.0, 0.5, 7)
    );
    assert_eq!((g.logprobs, g.slo.name.as_str()), (0, "default"));
    assert!(g.stop_tokens.is_empty());
    let alice = g.cache_salt;
    assert_ne!(alice, 0);
    // The same user salts alike; no user, no salt; the default max_tokens fits the context.
    s.post_json(
        "/v1/completions",
        json!({"model": "tiny", "prompt": "Hi there", "user": "alice"}),
    )
    .await;
    let g = s.fake.last_request();
    assert_eq!((g.cache_salt, g.max_tokens), (alice, 64 - 8));
    s.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x"}))
        .await;
    assert_eq!(s.fake.last_request().cache_salt, 0);
    s.fake.wait_dropped(3).await;
}

#[tokio::test]
async fn completion_stream_frames_chunks_and_done() {
    let s = serve().await;
    s.fake
        .script(Script::Events(reply("Hey", FinishReason::Stop)));
    let request = json!({"model": "tiny", "prompt": "x", "stream": true,
                         "stream_options": {"include_usage": true}});
    let response = s.post("/v1/completions", request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-strata-instance"], "inst-7");
    let body = response.text().await.unwrap();
    assert!(body.starts_with("data: {\"id\":\"cmpl-"), "{body}");
    let chunks = sse_chunks(&body);
    assert_eq!(
        chunks.len(),
        5,
        "3 text chunks, the finish and the usage: {body}"
    );
    let id = &chunks[0]["id"];
    for chunk in &chunks[..4] {
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(&chunk["id"], id);
        assert!(chunk["usage"].is_null() && chunk.get("usage").is_some());
    }
    assert_eq!(text_of_chunks(&chunks, |c| c["text"].as_str()), "Hey");
    assert!(
        chunks[..3]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(
        chunks[3]["choices"],
        json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["total_tokens"], 8);
    assert_eq!(
        chunks[4]["usage"]["prompt_tokens_details"]["cached_tokens"],
        2
    );

    // Without include_usage there is no usage field at all.
    s.fake
        .script(Script::Events(reply("a", FinishReason::Length)));
    let request = json!({"model": "tiny", "prompt": "x", "stream": true});
    let body = s
        .post("/v1/completions", request)
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_chunks(&body);
    assert_eq!(chunks.len(), 2);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{body}");
    s.fake.wait_dropped(2).await;
}

#[tokio::test]
async fn chat_whole_response_uses_the_template() {
    let s = serve().await;
    s.fake
        .script(Script::Events(reply("Hello", FinishReason::Length)));
    let request = json!({
        "model": "tiny", "max_tokens": 100, "max_completion_tokens": 4,
        "messages": [{"role": "system", "content": "S"},
                     {"role": "user", "content": [{"type": "text", "text": "U"}]}]
    });
    let (status, headers, body) = s.post_json("/v1/chat/completions", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-strata-instance"], "inst-7");
    let g = s.fake.last_request();
    let rendered = "<|system|>\nS\n<|user|>\nU\n<|assistant|>\n";
    assert_eq!(g.prompt, Tokenizer::Bytes.encode(rendered).unwrap());
    assert_eq!(g.max_tokens, 4);
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                "logprobs": null, "finish_reason": "length"}])
    );
    assert_eq!(body["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn chat_stream_opens_with_the_role_and_ends_with_finish() {
    let s = serve().await;
    s.fake
        .script(Script::Events(reply("Hi", FinishReason::Stop)));
    let request = json!({"model": "tiny", "stream": true,
                         "messages": [{"role": "user", "content": "U"}]});
    let response = s.post("/v1/chat/completions", request).await;
    assert_eq!(response.status(), 200);
    let chunks = sse_chunks(&response.text().await.unwrap());
    assert_eq!(chunks.len(), 4, "role, H, i, finish: {chunks:?}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null}])
    );
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "H"}));
    assert_eq!(chunks[2]["choices"][0]["delta"], json!({"content": "i"}));
    assert_eq!(
        chunks[3]["choices"],
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])
    );
}

#[tokio::test]
async fn token_id_prompts() {
    let s = serve().await;
    let cases = [
        (json!([1, 2, 3]), vec![1, 2, 3]),
        (json!([[5, 6]]), vec![5, 6]),
        (json!(["hi"]), Tokenizer::Bytes.encode("hi").unwrap()),
    ];
    for (prompt, ids) in cases {
        let (status, _, body) = s
            .post_json(
                "/v1/completions",
                json!({"model": "tiny", "prompt": prompt}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(s.fake.last_request().prompt, ids);
    }
    let n = s.fake.request_count();
    for prompt in [
        json!([[1], [2]]),
        json!([300]),
        json!([]),
        json!(""),
        json!([-1]),
        json!(["a", "b"]),
    ] {
        let (status, _, body) = s
            .post_json(
                "/v1/completions",
                json!({"model": "tiny", "prompt": prompt}),
            )
            .await;
        assert_error(status, &body, 400, None);
    }
    assert_eq!(
        s.fake.request_count(),
        n,
        "invalid prompts never reach the backend"
    );
}

#[tokio::test]
async fn stop_strings_cut_the_text_and_drop_the_stream() {
    let s = serve().await;
    // No finish: the node would keep going, so only the router dropping the stream ends it.
    s.fake.script(Script::Events(tokens("Hello world")));
    let request = json!({"model": "tiny", "prompt": "x", "stop": ["zz", "lo"]});
    let (status, _, body) = s.post_json("/v1/completions", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "Hel");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    s.fake.wait_dropped(1).await;

    // Streaming, a stop string spanning three tokens.
    s.fake.script(Script::Events(tokens("Hello world")));
    let request = json!({"model": "tiny", "prompt": "x", "stop": "o w", "stream": true});
    let body = s
        .post("/v1/completions", request)
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_chunks(&body);
    assert_eq!(text_of_chunks(&chunks, |c| c["text"].as_str()), "Hell");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    s.fake.wait_dropped(2).await;

    // Chat, streaming.
    s.fake.script(Script::Events(tokens("Hello world")));
    let request = json!({"model": "tiny", "stream": true, "stop": "wor",
                         "messages": [{"role": "user", "content": "U"}]});
    let body = s
        .post("/v1/chat/completions", request)
        .await
        .text()
        .await
        .unwrap();
    let chunks = sse_chunks(&body);
    assert_eq!(
        text_of_chunks(&chunks, |c| c["delta"]["content"].as_str()),
        "Hello "
    );
    s.fake.wait_dropped(3).await;
}

#[tokio::test]
async fn completion_logprobs_shape() {
    let s = serve().await;
    s.fake
        .script(Script::Events(reply("ab", FinishReason::Length)));
    let request = json!({"model": "tiny", "prompt": "x", "logprobs": 2});
    let (status, _, body) = s.post_json("/v1/completions", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.fake.last_request().logprobs, 2);
    assert_eq!(
        body["choices"][0]["logprobs"],
        json!({"tokens": ["a", "b"], "token_logprobs": [-0.25, -0.25],
               "top_logprobs": [{"a": -0.25, "!": -2.0}, {"b": -0.25, "!": -2.0}],
               "text_offset": [0, 1]})
    );
    // logprobs 0: the sampled token's log-probability only.
    s.fake
        .script(Script::Events(reply("ab", FinishReason::Length)));
    let request = json!({"model": "tiny", "prompt": "x", "logprobs": 0, "stream": true});
    let chunks = sse_chunks(
        &s.post("/v1/completions", request)
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(
        s.fake.last_request().logprobs,
        1,
        "top-1 carries the sampled logprob"
    );
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"],
        json!({"tokens": ["b"], "token_logprobs": [-0.25], "top_logprobs": [{}], "text_offset": [1]})
    );
}

#[tokio::test]
async fn chat_logprobs_shape() {
    let s = serve().await;
    s.fake
        .script(Script::Events(reply("a", FinishReason::Length)));
    let request = json!({"model": "tiny", "logprobs": true, "top_logprobs": 1,
                         "messages": [{"role": "user", "content": "U"}]});
    let (status, _, body) = s.post_json("/v1/chat/completions", request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["logprobs"],
        json!({"content": [{"token": "a", "logprob": -0.25, "bytes": [97],
                            "top_logprobs": [{"token": "a", "logprob": -0.25, "bytes": [97]}]}]})
    );
    s.fake
        .script(Script::Events(reply("ab", FinishReason::Length)));
    let request = json!({"model": "tiny", "logprobs": true, "stream": true,
                         "messages": [{"role": "user", "content": "U"}]});
    let chunks = sse_chunks(
        &s.post("/v1/chat/completions", request)
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(
        chunks[2]["choices"][0]["logprobs"],
        json!({"content": [{"token": "b", "logprob": -0.25, "bytes": [98], "top_logprobs": []}]})
    );
    let request = json!({"model": "tiny", "top_logprobs": 2,
                         "messages": [{"role": "user", "content": "U"}]});
    let (status, _, body) = s.post_json("/v1/chat/completions", request).await;
    assert_error(status, &body, 400, None);
    assert_eq!(body["error"]["param"], "top_logprobs");
}

#[tokio::test]
async fn bad_requests_are_rejected_before_the_backend() {
    let s = serve().await;
    let msgs = json!([{"role": "user", "content": "U"}]);
    let cases = [
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "temperature": 2.5}),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "temperature": -0.1}),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "top_p": 0}),
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "top_p": 1.5}),
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "max_tokens": 4097}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "logprobs": 21}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "n": 2}),
            "n",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "stop": ""}),
            "stop",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "echo": true}),
            "echo",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": ""}),
            "prompt",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": []}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"content": "x"}]}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "max_completion_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "n": 3}),
            "n",
        ),
    ];
    for (path, request, param) in cases {
        let (status, _, body) = s.post_json(path, request.clone()).await;
        assert_error(status, &body, 400, None);
        assert_eq!(body["error"]["param"], param, "{request}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    // Malformed JSON and a missing field.
    let response = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_error(400, &body, 400, None);
    let (status, _, body) = s
        .post_json("/v1/completions", json!({"model": "tiny"}))
        .await;
    assert_error(status, &body, 400, None);
    // Unknown model.
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let request = json!({"model": "nope", "prompt": "x", "messages": msgs});
        let (status, _, body) = s.post_json(path, request).await;
        assert_error(status, &body, 404, Some("model_not_found"));
    }
    assert_eq!(s.fake.request_count(), 0);
}

#[tokio::test]
async fn limits_give_413_and_context_length_400() {
    let s = serve_with(|state| {
        state.with_limits(HttpLimits {
            max_body_bytes: 1024,
            max_prompt_tokens: 16,
            ..HttpLimits::default()
        })
    })
    .await;
    let big = "x".repeat(2000);
    let (status, _, body) = s
        .post_json("/v1/completions", json!({"model": "tiny", "prompt": big}))
        .await;
    assert_error(status, &body, 413, Some("request_too_large"));
    let long = "x".repeat(20);
    let (status, _, body) = s
        .post_json("/v1/completions", json!({"model": "tiny", "prompt": long}))
        .await;
    assert_error(status, &body, 413, None);
    assert_eq!(body["error"]["param"], "prompt");
    let ten = "x".repeat(10);
    let request = json!({"model": "tiny", "prompt": ten, "max_tokens": 60});
    let (status, _, body) = s.post_json("/v1/completions", request).await;
    assert_error(status, &body, 400, Some("context_length_exceeded"));
    assert_eq!(s.fake.request_count(), 0);
    let (status, _, _) = s
        .post_json("/v1/completions", json!({"model": "tiny", "prompt": ten}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        s.fake.last_request().max_tokens,
        54,
        "the default fits the context"
    );
}

#[tokio::test]
async fn backend_errors_map_to_statuses() {
    let s = serve().await;
    let cases = [
        (
            GenError::Overloaded {
                slo: "default".into(),
                ttft_ms: 100.0,
                predicted_ms: 900.0,
                retry_after: Duration::from_millis(1500),
            },
            429,
            "rate_limit_exceeded",
        ),
        (
            GenError::Unavailable {
                model: "tiny".into(),
            },
            503,
            "service_unavailable",
        ),
        (
            GenError::UnknownModel {
                model: "tiny".into(),
            },
            404,
            "model_not_found",
        ),
        (
            GenError::ContextTooLong {
                prompt: 1,
                max_tokens: 100,
                limit: 64,
            },
            400,
            "context_length_exceeded",
        ),
    ];
    for (err, status, code) in cases {
        for stream in [false, true] {
            s.fake.script(Script::Error(err.clone()));
            let request = json!({"model": "tiny", "prompt": "x", "stream": stream});
            let (got, headers, body) = s.post_json("/v1/completions", request).await;
            assert_error(got, &body, status, Some(code));
            let retry = headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(retry.as_deref(), (status == 429).then_some("2"));
        }
    }
}

#[tokio::test]
async fn generation_failures_give_500_or_an_sse_error() {
    let s = serve().await;
    let failed = GenEvent::Failed {
        message: "every instance failed".into(),
    };
    let mut events = tokens("a");
    events.push(failed.clone());
    s.fake.script(Script::Events(events.clone()));
    let (status, headers, body) = s
        .post_json("/v1/completions", json!({"model": "tiny", "prompt": "x"}))
        .await;
    assert_error(status, &body, 500, None);
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(
        headers["x-strata-instance"], "inst-7",
        "placed requests name their instance"
    );
    assert!(headers.contains_key("x-strata-routing-us"));

    s.fake.script(Script::Events(events));
    let request =
        json!({"model": "tiny", "stream": true, "messages": [{"role": "user", "content": "U"}]});
    let response = s.post("/v1/chat/completions", request).await;
    assert_eq!(response.status(), 200);
    let events = sse_events(&response.text().await.unwrap());
    assert_eq!(events.len(), 4, "role, a, error, [DONE]: {events:?}");
    let error: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(error["error"]["message"], "every instance failed");
    assert_eq!(error["error"]["type"], "server_error");
    s.fake.wait_dropped(2).await;
}

#[tokio::test]
async fn api_keys_guard_v1_only() {
    let s = serve_with(|state| state.with_api_keys(vec!["sk-right".into()])).await;
    let url = format!("{}/v1/completions", s.base);
    let request = json!({"model": "tiny", "prompt": "x"});
    for auth in [
        None,
        Some("Bearer sk-wrong"),
        Some("sk-right"),
        Some("Bearer sk-righ"),
    ] {
        let mut builder = s.client.post(&url).json(&request);
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        let response = builder.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_error(status, &body, 401, Some("invalid_api_key"));
    }
    let response = s
        .client
        .post(&url)
        .json(&request)
        .bearer_auth("sk-right")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(s.get("/v1/models").await.0, 401);
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/metrics").await.0, 200);
    assert_eq!(s.fake.request_count(), 1);
}

#[tokio::test]
async fn the_slo_header_picks_a_class() {
    let s = serve().await;
    let response = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .header("x-strata-slo", "batch")
        .json(&json!({"model": "tiny", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(s.fake.last_request().slo.name, "batch");
    let response = s
        .client
        .post(format!("{}/v1/completions", s.base))
        .header("x-strata-slo", "gold")
        .json(&json!({"model": "tiny", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.json().await.unwrap(), 400, None);
    assert_eq!(s.fake.request_count(), 1);
}

#[tokio::test]
async fn a_client_that_disconnects_drops_the_stream() {
    let s = serve().await;
    // One token, then nothing: only the client going away can end this stream.
    s.fake.script(Script::Events(tokens("a")));
    let request = json!({"model": "tiny", "prompt": "x", "stream": true});
    let mut response = s.post("/v1/completions", request).await;
    let mut seen = String::new();
    while !seen.contains("\"text\":\"a\"") {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("a chunk before the end");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(
        *s.fake.dropped.borrow(),
        0,
        "still streaming while the client listens"
    );
    drop(response);
    s.fake.wait_dropped(1).await;
}

#[tokio::test]
async fn health_ready_models_and_unknown_routes() {
    let s = serve().await;
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/ready").await.0, 200);
    s.fake.ready.store(false, Ordering::SeqCst);
    assert_eq!(s.get("/ready").await.0, 503);
    assert_eq!(s.get("/health").await.0, 200);
    s.fake.ready.store(true, Ordering::SeqCst);
    assert_eq!(s.get("/ready").await.0, 200);

    let (status, body) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"object": "list", "data": [{"id": "tiny", "object": "model", "created": 0,
                                           "owned_by": "strata", "max_model_len": 64}]})
    );
    let (status, body) = s.get("/v2/nothing").await;
    assert_error(status, &serde_json::from_str(&body).unwrap(), 404, None);
    let (status, body) = s.get("/v1/completions").await;
    assert_error(status, &serde_json::from_str(&body).unwrap(), 405, None);
}

/// Checks Prometheus text format line by line; returns `(series, value)` samples.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_owned()), "one TYPE per family: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "unexpected line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(valid_name(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|base| typed.contains(*base)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample before its TYPE: {line}");
        let mut rest = labels;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
            assert!(valid_name(key), "{line}");
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.expect("closing quote");
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

#[tokio::test]
async fn metrics_count_requests_in_prometheus_text() {
    let s = serve().await;
    s.post_json("/v1/completions", json!({"model": "tiny", "prompt": "x"}))
        .await;
    s.post_json("/v1/completions", json!({"model": "nope", "prompt": "x"}))
        .await;
    s.fake.wait_dropped(1).await;
    s.metrics.observe_prediction("inst-7", 0.05, 0.07);
    let (status, text) = s.get("/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_prometheus(&text);
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    assert_eq!(
        value("strata_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        value("strata_requests_total{endpoint=\"/v1/completions\",status=\"404\"}"),
        1.0
    );
    assert_eq!(value("strata_ttft_seconds_count"), 1.0);
    assert_eq!(value("strata_e2e_seconds_count"), 1.0);
    assert_eq!(value("strata_routing_overhead_seconds_count"), 1.0);
    assert_eq!(value("strata_routing_overhead_seconds_sum"), 0.0015);
    assert_eq!(
        value("strata_predicted_ttft_seconds_count{instance=\"inst-7\"}"),
        1.0
    );
    assert_eq!(
        value("strata_observed_ttft_seconds_bucket{instance=\"inst-7\",le=\"0.1\"}"),
        1.0
    );
    assert_eq!(value("strata_requests_in_flight"), 0.0);
    // The scrape itself is counted after it is answered.
    let (_, text) = s.get("/metrics").await;
    assert!(text.contains("strata_requests_total{endpoint=\"/metrics\",status=\"200\"} 1\n"));
}
