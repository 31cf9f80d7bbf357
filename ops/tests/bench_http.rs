//! `strata bench http` end to end, against a fake OpenAI server started here.
//!
//! The fake streams scripted SSE chunks: the first token after [`TTFT`], then one every
//! [`GAP`], each chunk split in two pieces mid-JSON. It answers every 5th request 429, every
//! 7th 500, and cuts every 11th stream with `data: {"error": ...}`; it counts what it did, and
//! the tests compare the bench's JSON with those counts.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Before the first token.
const TTFT: Duration = Duration::from_millis(150);
/// Between tokens.
const GAP: Duration = Duration::from_millis(20);
/// Routing overhead every streamed response reports, µs.
const ROUTING_US: u64 = 250;
const MODEL: &str = "fake-model";

/// What the fake expects of each request, and what it did.
#[derive(Debug, Default)]
struct Fake {
    prompt_min: usize,
    prompt_max: usize,
    output_min: u64,
    output_max: u64,
    slo_class: Option<&'static str>,
    tally: Mutex<Tally>,
}

#[derive(Debug, Default, Clone)]
struct Tally {
    received: u64,
    rejected: u64,
    http_500: u64,
    stream_errors: u64,
    completed: u64,
    output_tokens: u64,
    by_instance: BTreeMap<String, u64>,
    /// Requests that broke the contract, and why.
    bad: Vec<String>,
}

enum Plan {
    Reject,
    Fail,
    /// Stream this many tokens, then an error event.
    StreamError,
    Complete(u64),
}

impl Fake {
    /// Checks the request against the contract; the number of tokens it asks for.
    fn check(&self, chat: bool, headers: &HeaderMap, body: &Value) -> Result<u64, String> {
        let want = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{what}: {body}"))
            }
        };
        want(body["model"] == MODEL, "model")?;
        want(body["stream"] == json!(true), "stream")?;
        want(
            body["stream_options"]["include_usage"] == json!(true),
            "include_usage",
        )?;
        want(body["temperature"] == json!(0), "temperature")?;
        let slo = headers.get("x-strata-slo").and_then(|v| v.to_str().ok());
        want(slo == self.slo_class, "x-strata-slo")?;
        let max_tokens = body["max_tokens"].as_u64().unwrap_or(0);
        want(
            (self.output_min..=self.output_max).contains(&max_tokens),
            "max_tokens",
        )?;
        let prompt_len = if chat {
            let text = body["messages"][0]["content"].as_str().unwrap_or("");
            want(body["messages"][0]["role"] == "user", "role")?;
            text.len()
        } else {
            let ids = body["prompt"].as_array().cloned().unwrap_or_default();
            want(
                ids.iter()
                    .all(|t| t.as_u64().is_some_and(|t| (3..259).contains(&t))),
                "token ids in [3, 259)",
            )?;
            ids.len()
        };
        want(
            (self.prompt_min..=self.prompt_max).contains(&prompt_len),
            "prompt length",
        )?;
        Ok(max_tokens)
    }

    /// Decides the answer and counts it.
    fn plan(&self, chat: bool, headers: &HeaderMap, body: &Value) -> Result<(u64, Plan), String> {
        let checked = self.check(chat, headers, body);
        let mut t = self.tally.lock().unwrap();
        t.received += 1;
        let n = t.received;
        let max_tokens = checked.inspect_err(|e| t.bad.push(e.clone()))?;
        let plan = if n.is_multiple_of(5) {
            t.rejected += 1;
            Plan::Reject
        } else if n.is_multiple_of(7) {
            t.http_500 += 1;
            Plan::Fail
        } else if n.is_multiple_of(11) {
            t.stream_errors += 1;
            Plan::StreamError
        } else {
            t.completed += 1;
            t.output_tokens += max_tokens;
            Plan::Complete(max_tokens)
        };
        if matches!(plan, Plan::StreamError | Plan::Complete(_)) {
            *t.by_instance.entry(instance(n)).or_insert(0) += 1;
        }
        Ok((n, plan))
    }
}

fn instance(n: u64) -> String {
    format!("inst-{}", n % 3)
}

/// One SSE event, its lines ended by `eol`.
fn event(data: &Value, eol: &str) -> String {
    format!("data: {data}{eol}{eol}")
}

fn token_event(chat: bool, i: u64) -> String {
    let piece = format!("t{i} ");
    if chat {
        event(
            &json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]}),
            "\r\n",
        )
    } else {
        event(
            &json!({"object": "text_completion", "choices": [{"index": 0, "text": piece, "logprobs": null, "finish_reason": null}], "usage": null}),
            "\n",
        )
    }
}

/// The body as (delay before, bytes) steps: tokens split in two pieces mid-JSON.
fn script(chat: bool, tokens: u64, error_after: Option<u64>) -> Vec<(Duration, String)> {
    let eol = if chat { "\r\n" } else { "\n" };
    let mut steps = Vec::new();
    // Sent at once, and not a token: a keep-alive comment, or chat's role-only first chunk.
    steps.push((
        Duration::ZERO,
        if chat {
            event(
                &json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
                eol,
            )
        } else {
            ": keep-alive\n\n".to_string()
        },
    ));
    for i in 0..tokens {
        if error_after == Some(i) {
            steps.push((
                Duration::ZERO,
                event(
                    &json!({"error": {"message": "engine failed", "type": "server_error"}}),
                    eol,
                ),
            ));
            return steps;
        }
        let e = token_event(chat, i);
        let (a, b) = e.split_at(e.len() / 2);
        let before = if i == 0 { TTFT } else { GAP - GAP / 4 };
        steps.push((before, a.to_string()));
        steps.push((GAP / 4, b.to_string()));
    }
    steps.push((
        Duration::ZERO,
        event(&json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}}), eol),
    ));
    steps.push((Duration::ZERO, format!("data: [DONE]{eol}{eol}")));
    steps
}

fn stream(n: u64, steps: Vec<(Duration, String)>) -> Response {
    let body = futures_util::stream::unfold(steps.into_iter(), |mut steps| async move {
        let (delay, bytes) = steps.next()?;
        tokio::time::sleep(delay).await;
        Some((Ok::<_, Infallible>(Bytes::from(bytes)), steps))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("x-strata-instance", instance(n))
        .header("x-strata-routing-us", ROUTING_US.to_string())
        .body(Body::from_stream(body))
        .expect("valid response")
}

async fn answer(fake: &Fake, chat: bool, headers: HeaderMap, body: Value) -> Response {
    match fake.plan(chat, &headers, &body) {
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
        Ok((_, Plan::Reject)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "2")],
            Json(json!({"error": {"message": "overloaded", "type": "rate_limit"}})),
        )
            .into_response(),
        Ok((_, Plan::Fail)) => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Ok((n, Plan::StreamError)) => stream(n, script(chat, 3, Some(1))),
        Ok((n, Plan::Complete(tokens))) => stream(n, script(chat, tokens, None)),
    }
}

async fn serve(fake: Fake) -> (SocketAddr, Arc<Fake>) {
    let fake = Arc::new(fake);
    let app = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]}))
            }),
        )
        .route(
            "/v1/completions",
            post(
                |State(f): State<Arc<Fake>>, h: HeaderMap, Json(b): Json<Value>| async move {
                    answer(&f, false, h, b).await
                },
            ),
        )
        .route(
            "/v1/chat/completions",
            post(
                |State(f): State<Arc<Fake>>, h: HeaderMap, Json(b): Json<Value>| async move {
                    answer(&f, true, h, b).await
                },
            ),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, fake)
}

/// Runs the bench; its JSON document and stdout.
async fn bench(name: &str, addr: SocketAddr, args: &[&str]) -> (Value, String) {
    let json = std::env::temp_dir().join(format!(
        "strata-bench-http-{name}-{}.json",
        std::process::id()
    ));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["bench", "http", "--url", &format!("http://{addr}/")])
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .expect("run strata");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
        .expect("valid json");
    let _ = std::fs::remove_file(&json);
    (doc, stdout)
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_with_token_ids_429s_and_errors() {
    let (addr, fake) = serve(Fake {
        prompt_min: 16,
        prompt_max: 64,
        output_min: 4,
        output_max: 8,
        ..Fake::default()
    })
    .await;
    let (doc, stdout) = bench(
        "completions",
        addr,
        &[
            "--rate",
            "20",
            "--duration",
            "2",
            "--seed",
            "3",
            "--prompt-tokens",
            "16-64",
            "--output-tokens",
            "4-8",
            "--ttft-slo-ms",
            "10000",
            "--tpot-slo-ms",
            "10000",
        ],
    )
    .await;
    let t = fake.tally.lock().unwrap().clone();
    assert!(t.bad.is_empty(), "requests broke the contract: {:?}", t.bad);
    // Rate 20/s for 2 s with seed 3: enough requests that every scripted answer occurs.
    assert!(t.received >= 20, "{t:?}");
    assert!(
        t.rejected > 0 && t.http_500 > 0 && t.stream_errors > 0,
        "{t:?}"
    );

    assert_eq!(doc["config"]["model"], MODEL, "found from /v1/models");
    assert_eq!(
        doc["config"]["endpoint"],
        format!("http://{addr}/v1/completions")
    );
    assert_eq!(doc["interrupted"], false);
    assert_eq!(count(&doc["sent"]), t.received);
    assert_eq!(count(&doc["dropped"]), 0);
    assert_eq!(count(&doc["arrivals"]), t.received);
    assert_eq!(count(&doc["completed"]), t.completed);
    assert_eq!(count(&doc["rejected"]), t.rejected);
    assert_eq!(count(&doc["failed"]), t.http_500 + t.stream_errors);
    let causes = doc["failed_by_cause"].as_object().expect("causes");
    assert_eq!(causes.len(), 2, "{causes:?}");
    assert_eq!(count(&causes["http_500"]), t.http_500);
    assert_eq!(count(&causes["stream_error"]), t.stream_errors);
    assert_eq!(doc["failure_examples"]["stream_error"], "engine failed");
    assert_eq!(doc["failure_examples"]["http_500"], "boom");
    assert_eq!(ms(&doc["retry_after"]["max_s"]), 2.0);
    assert_eq!(count(&doc["retry_after"]["missing"]), 0);
    assert_eq!(
        count(&doc["output_tokens"]),
        t.output_tokens,
        "from the usage chunks"
    );

    let instances: BTreeMap<String, u64> =
        serde_json::from_value(doc["instances"].clone()).expect("instances");
    assert_eq!(instances, t.by_instance);
    assert_eq!(
        count(&doc["routing_samples"]),
        t.completed + t.stream_errors
    );
    assert_eq!(ms(&doc["routing_us"]["p50"]), ROUTING_US as f64);
    assert_eq!(ms(&doc["routing_us"]["p99"]), ROUTING_US as f64);

    // The fake waits TTFT before the first token, so no TTFT can be shorter; the upper bounds
    // are loose for a busy machine.
    let ttft = &doc["ttft_ms"];
    assert!(
        ms(&ttft["p50"]) >= 150.0 && ms(&ttft["p50"]) < 3000.0,
        "{ttft}"
    );
    assert!(ms(&ttft["p50"]) <= ms(&ttft["p90"]) && ms(&ttft["p90"]) <= ms(&ttft["p99"]));
    let tpot = &doc["tpot_ms"];
    assert!(
        ms(&tpot["p50"]) >= 10.0 && ms(&tpot["p50"]) < 1000.0,
        "{tpot}"
    );
    // At least TTFT plus 3 gaps (4 tokens or more).
    assert!(
        ms(&doc["e2e_ms"]["p50"]) >= 150.0 + 3.0 * 15.0,
        "{}",
        doc["e2e_ms"]
    );

    // Targets of 10 s: every completed request meets them, and only those.
    assert_eq!(count(&doc["slo_met"]), t.completed);
    let attainment = ms(&doc["slo_attainment"]);
    assert!((attainment - t.completed as f64 / t.received as f64).abs() < 1e-9);
    let elapsed = ms(&doc["elapsed_s"]);
    assert!(elapsed >= 0.3, "{elapsed}");
    assert!((ms(&doc["goodput_req_s"]) - t.completed as f64 / elapsed).abs() < 1e-6);
    assert!((ms(&doc["throughput_tok_s"]) - t.output_tokens as f64 / elapsed).abs() < 1e-6);

    assert!(
        stdout.contains("TTFT") && stdout.contains("inst-0"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_text_drops_beyond_max_inflight_and_misses_a_tight_slo() {
    let (addr, fake) = serve(Fake {
        prompt_min: 8,
        prompt_max: 32,
        output_min: 3,
        output_max: 3,
        slo_class: Some("batch"),
        ..Fake::default()
    })
    .await;
    let (doc, _) = bench(
        "chat",
        addr,
        &[
            "--chat",
            "--model",
            MODEL,
            "--slo-class",
            "batch",
            "--rate",
            "40",
            "--duration",
            "1.5",
            "--max-inflight",
            "2",
            "--prompt-tokens",
            "8-32",
            "--output-tokens",
            "3",
            // Below the scripted 150 ms TTFT: no request can meet it.
            "--ttft-slo-ms",
            "100",
        ],
    )
    .await;
    let t = fake.tally.lock().unwrap().clone();
    assert!(t.bad.is_empty(), "requests broke the contract: {:?}", t.bad);
    assert_eq!(
        doc["config"]["endpoint"],
        format!("http://{addr}/v1/chat/completions")
    );
    assert_eq!(doc["config"]["prompt"], "text");
    assert_eq!(doc["config"]["slo_class"], "batch");
    // Two in flight, each at least 150 ms, cannot take 40/s: most arrivals are dropped.
    let (arrivals, sent, dropped) = (
        count(&doc["arrivals"]),
        count(&doc["sent"]),
        count(&doc["dropped"]),
    );
    assert_eq!(sent, t.received);
    assert_eq!(arrivals, sent + dropped);
    assert!(dropped > 0 && sent > 0, "{doc}");
    assert_eq!(count(&doc["completed"]), t.completed);
    assert_eq!(count(&doc["rejected"]), t.rejected);
    // The role-only first chunk is not a token: TTFT waits for content.
    assert!(ms(&doc["ttft_ms"]["p50"]) >= 150.0, "{}", doc["ttft_ms"]);
    assert_eq!(count(&doc["slo_met"]), 0);
    assert_eq!(ms(&doc["slo_attainment"]), 0.0);
    assert_eq!(ms(&doc["goodput_req_s"]), 0.0);
    assert_eq!(count(&doc["output_tokens"]), 3 * t.completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_teaches() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["bench", "http", "--help"])
        .output()
        .await
        .expect("run strata");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for needle in [
        "--rate",
        "SLO attainment",
        "TPOT",
        "strata bench http --url http://127.0.0.1:8080 --rate 2 --duration 30",
    ] {
        assert!(help.contains(needle), "missing {needle:?} in {help}");
    }
}
