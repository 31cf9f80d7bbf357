//! The scripted fake backend, a served app, and SSE and error helpers.

use futures_util::future::BoxFuture;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_router::generation::{
    Backend, FinishReason, GenError, GenEvent, GenStream, Generation, ModelCard, Usage,
};
use strata_router::http::{HttpState, ModelEntry, ModelRegistry, app};
use strata_router::metrics::Metrics;
use strata_transport::proto::SloClass;
use strata_transport::vocab::Tokenizer;
use tokio::sync::{mpsc, watch};
/// What the fake does with the next `generate` call.
pub enum Script {
    /// Sends these events, then keeps the stream open until the router drops it (so a script
    /// without a `Finish` hangs).
    Events(Vec<GenEvent>),
    Error(GenError),
}

pub struct Fake {
    pub scripts: Mutex<VecDeque<Script>>,
    pub requests: Mutex<Vec<Generation>>,
    pub ready: AtomicBool,
    pub cards: Vec<ModelCard>,
    /// How many generation streams the router has dropped.
    pub dropped: Arc<watch::Sender<usize>>,
}

impl Fake {
    pub fn new() -> Arc<Fake> {
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

    pub fn script(&self, script: Script) {
        self.scripts.lock().unwrap().push_back(script);
    }

    pub fn last_request(&self) -> Generation {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the backend")
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Waits, with a bound, until the router has dropped `n` streams.
    pub async fn wait_dropped(&self, n: usize) {
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

pub fn byte_id(b: u8) -> u32 {
    u32::from(b) + 3
}

/// Token events for `text` (bytes), each with logprob -0.25 and two top entries.
pub fn tokens(text: &str) -> Vec<GenEvent> {
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
pub fn reply(text: &str, reason: FinishReason) -> Vec<GenEvent> {
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

pub struct Server {
    pub base: String,
    pub fake: Arc<Fake>,
    pub metrics: Arc<Metrics>,
    pub client: reqwest::Client,
}

pub async fn serve_with(configure: impl FnOnce(HttpState) -> HttpState) -> Server {
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

pub async fn serve() -> Server {
    serve_with(|s| s).await
}

impl Server {
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Posts and returns status, headers and the JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        body: Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self.post(path, body).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, headers, json)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
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
pub fn sse_events(body: &str) -> Vec<String> {
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
pub fn sse_chunks(body: &str) -> Vec<Value> {
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

pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: Option<&str>) {
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

pub fn text_of_chunks(chunks: &[Value], field: impl Fn(&Value) -> Option<&str>) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(&field))
        .collect()
}
