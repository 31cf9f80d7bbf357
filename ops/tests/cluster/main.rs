//! Integration tests against a real `strata up` cluster: a router and nodes, each its own
//! process, on loopback.

mod control;
mod pipeline;
mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{Cluster, Streamed, alive, parse_sse, signal, wait_until};

async fn post(url: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .expect("send")
}

/// `post`, sent again (up to `tries` times in all) when the connection itself fails: what a
/// client of the load-balanced port does when the replica it reached died under it.
async fn post_reconnecting(url: &str, path: &str, body: Value, tries: usize) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut last = None;
    for _ in 0..tries {
        match client.post(format!("{url}{path}")).json(&body).send().await {
            Ok(r) => return r,
            Err(e) if e.is_connect() => last = Some(e),
            Err(e) => panic!("send: {e:?}"),
        }
    }
    panic!("send: {tries} connections failed, the last: {last:?}")
}

async fn stream(url: &str, path: &str, body: Value) -> Streamed {
    let r = post(url, path, body).await;
    let status = r.status().as_u16();
    let instance = header(&r, "x-strata-instance");
    let text = r.text().await.expect("body");
    let (events, done) = parse_sse(&text);
    let error = if status == 200 {
        String::new()
    } else {
        text.chars().take(400).collect()
    };
    Streamed {
        status,
        error,
        instance,
        events,
        done,
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `r` if it is a 200; otherwise fails with its body and the cluster's logs.
async fn expect_ok(r: reqwest::Response, c: &Cluster) -> reqwest::Response {
    if r.status() == 200 {
        return r;
    }
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    panic!("status {status}: {body}\n{}", c.log());
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("error json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "OpenAI error shape: {body}"
    );
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_chat_errors_and_clean_stop() {
    let mut c = Cluster::start("api", &["--slo", "impossible:0.001:100"]);
    let url = c.url.clone();
    let node_ids: Vec<String> = c.nodes.iter().map(|(id, _)| id.clone()).collect();

    // /health, /ready, /v1/models
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{url}/health"))
            .send()
            .await
            .expect("health")
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{url}/ready"))
            .send()
            .await
            .expect("ready")
            .status(),
        200
    );
    let models: Value = client
        .get(format!("{url}/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "tiny", "{models}");

    // Completions, not streamed.
    let r = post(
        &url,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "Hello, strata", "max_tokens": 12, "temperature": 0}),
    )
    .await;
    let r = expect_ok(r, &c).await;
    let instance = header(&r, "x-strata-instance");
    assert!(
        node_ids.contains(&instance),
        "{instance} not in {node_ids:?}"
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["prompt_tokens"], 13);
    let n = body["usage"]["completion_tokens"].as_u64().expect("usage");
    assert!((1..=12).contains(&n));
    let text = body["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();

    // The same prompt streamed (greedy) gives the same text; token-id prompts work too.
    let s = stream(&url, "/v1/completions", json!({"model": "tiny", "prompt": "Hello, strata", "max_tokens": 12, "temperature": 0, "stream": true})).await;
    assert_eq!(s.status, 200);
    assert!(s.done, "stream ends with [DONE]");
    assert_eq!(s.text(), text);
    let ids: Vec<u32> = "Hello, strata".bytes().map(|b| u32::from(b) + 3).collect();
    let r = post(
        &url,
        "/v1/completions",
        json!({"model": "tiny", "prompt": ids, "max_tokens": 12, "temperature": 0}),
    )
    .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["choices"][0]["text"].as_str(), Some(text.as_str()));

    // Chat, streamed and not.
    let msgs = json!([{"role": "user", "content": "Say something."}]);
    let r = post(
        &url,
        "/v1/chat/completions",
        json!({"model": "tiny", "messages": msgs, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    let r = expect_ok(r, &c).await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let chat_text = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    let s = stream(&url, "/v1/chat/completions", json!({"model": "tiny", "messages": msgs, "max_tokens": 8, "temperature": 0, "stream": true})).await;
    assert!(s.done);
    assert_eq!(s.events[0]["object"], "chat.completion.chunk");
    assert_eq!(s.text(), chat_text);

    // Errors, in OpenAI's shape.
    let (st, b) = error_of(
        post(
            &url,
            "/v1/completions",
            json!({"model": "nope", "prompt": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 404, "{b}");
    let r = client
        .post(format!("{url}/v1/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(error_of(r).await.0, 400);
    let (st, b) = error_of(
        post(
            &url,
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "max_tokens": 1_000_000}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 400, "{b}");
    let long: Vec<u32> = vec![70; 40_000];
    let (st, b) = error_of(
        post(
            &url,
            "/v1/completions",
            json!({"model": "tiny", "prompt": long, "max_tokens": 16}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 400, "context too long: {b}");
    let huge = "a".repeat(9 << 20);
    let (st, b) = error_of(
        post(
            &url,
            "/v1/completions",
            json!({"model": "tiny", "prompt": huge}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 413, "{b}");
    let r = client
        .post(format!("{url}/v1/completions"))
        .header("x-strata-slo", "impossible")
        .json(&json!({"model": "tiny", "prompt": "x", "max_tokens": 4}))
        .send()
        .await
        .expect("send");
    let retry_after = header(&r, "retry-after");
    let (st, b) = error_of(r).await;
    assert_eq!(st, 429, "{b}");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After {retry_after:?}"
    );
    let r = client
        .post(format!("{url}/v1/completions"))
        .header("x-strata-slo", "gold")
        .json(&json!({"model": "tiny", "prompt": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(error_of(r).await.0, 400);

    // SIGTERM stops every process.
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .map(|n| n.1)
        .chain(c.routers.iter().map(|r| r.pid))
        .collect();
    let status = c.stop().expect("strata up stops");
    assert!(status.success(), "{status}");
    assert!(
        wait_until(Duration::from_secs(10), || pids.iter().all(|&p| !alive(p))),
        "members left running: {:?}",
        pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
    assert!(!c.dir.join("cluster.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_mid_stream_keeps_the_text() {
    let c = Cluster::start("failover", &[]);
    let url = c.url.clone();
    let max_tokens = 400;
    let body = |stream: bool| {
        json!({"model": "tiny", "prompt": "The quick brown fox", "max_tokens": max_tokens,
               "temperature": 0, "stream": stream, "ignore_eos": true})
    };
    // The undisturbed text.
    let r = post(&url, "/v1/completions", body(false)).await;
    let r = expect_ok(r, &c).await;
    let undisturbed: Value = r.json().await.expect("json");
    assert_eq!(undisturbed["usage"]["completion_tokens"], max_tokens);
    let expected = undisturbed["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();

    // Stream it again and kill -9 the serving node after the first chunk.
    let mut r = post(&url, "/v1/completions", body(true)).await;
    assert_eq!(r.status(), 200);
    let instance = header(&r, "x-strata-instance");
    let pid = c.node_pid(&instance);
    let mut raw = String::new();
    let mut killed = false;
    while let Some(chunk) = r.chunk().await.expect("stream survives the kill") {
        raw.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        if !killed && raw.contains("\n\n") {
            signal(pid, libc::SIGKILL);
            killed = true;
        }
    }
    assert!(killed);
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    let (events, done) = parse_sse(&raw);
    let s = Streamed {
        status: 200,
        error: String::new(),
        instance,
        events,
        done,
    };
    assert!(s.done, "the stream completes");
    assert!(
        s.events.iter().all(|e| e.get("error").is_none()),
        "no error events: {raw}"
    );
    assert_eq!(
        s.text(),
        expected,
        "identical text after failover\n{}",
        c.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_streams_complete() {
    let c = Cluster::start("concurrent", &["--max-tokens", "30000"]);
    let url = c.url.clone();
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let prompt = format!("request {i}: tell me about layer-wise KV caches");
            stream(
                &url,
                "/v1/completions",
                json!({"model": "tiny", "prompt": prompt, "max_tokens": 16,
                    "temperature": 0, "stream": true, "ignore_eos": true}),
            )
            .await
        }));
    }
    let mut per_instance = std::collections::HashMap::new();
    for t in tasks {
        let s = t.await.expect("task");
        assert_eq!(s.status, 200, "{}\n{}", s.error, c.log());
        assert!(s.done, "every stream ends with [DONE]");
        let finish = s.events.iter().find_map(|e| {
            e["choices"][0]["finish_reason"]
                .as_str()
                .map(str::to_string)
        });
        assert_eq!(finish.as_deref(), Some("length"));
        *per_instance.entry(s.instance).or_insert(0) += 1;
    }
    assert_eq!(per_instance.values().sum::<i32>(), 100);
    assert!(c.log().contains("node-1"), "logs are kept");

    // A client that disconnects cancels its work on the node: a request for 30000 tokens
    // (tens of seconds of decoding) stops running within seconds of the client leaving.
    let mut r = post(
        &url,
        "/v1/completions",
        json!({"model": "tiny", "prompt": "cancel me",
        "max_tokens": 30_000, "temperature": 0, "stream": true, "ignore_eos": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.chunk().await.expect("first chunk").expect("some data");
    let running = || async {
        let text = reqwest::get(format!("{url}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with("strata_instance_running{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let mut seen = false;
    for _ in 0..250 {
        if running().await >= 1.0 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the long request shows as running");
    drop(r);
    let mut cancelled = false;
    for _ in 0..250 {
        if running().await == 0.0 {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cancelled,
        "the node still runs the request after the client left"
    );
}

/// An HF checkpoint directory in transformers 5's layout: `rope_parameters` instead of
/// `rope_theta`, bf16 safetensors, a WordLevel `tokenizer.json` and a ChatML chat template.
fn write_checkpoint(dir: &std::path::Path) {
    use strata_node::model::{DType, Preset, Weights};
    std::fs::create_dir_all(dir).expect("dir");
    let cfg = Preset::Tiny.config();
    let w = Weights::random(&cfg, 5, 0..cfg.num_layers).expect("weights");
    w.save(dir, &cfg, DType::BF16).expect("save");
    let mut json = cfg.to_hf_json();
    let obj = json.as_object_mut().expect("object");
    let theta = obj.remove("rope_theta").expect("rope_theta");
    obj.remove("rope_scaling");
    obj.insert(
        "rope_parameters".into(),
        json!({"rope_type": "default", "rope_theta": theta}),
    );
    std::fs::write(dir.join("config.json"), json.to_string()).expect("config.json");
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true},
            {"id": 6, "content": "<|im_start|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true},
            {"id": 7, "content": "<|im_end|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "<unk>",
                  "vocab": {"<unk>": 0, "hello": 1, "world": 2, "!": 3, "user": 4,
                            "assistant": 5, "<|im_start|>": 6, "<|im_end|>": 7}}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("tokenizer");
    let template = "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}";
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"chat_template": template, "eos_token": "<|im_end|>"}).to_string(),
    )
    .expect("tokenizer_config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_an_hf_checkpoint_directory() {
    let model_dir = std::env::temp_dir().join(format!("strata-it-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&model_dir);
    let dir = model_dir.join("tiny-hf");
    write_checkpoint(&dir);
    let c = Cluster::start(
        "hfdir",
        &["--nodes", "1", "--model", dir.to_str().expect("utf-8 path")],
    );
    let url = c.url.clone();
    let r = post(
        &url,
        "/v1/completions",
        json!({"model": "tiny-hf", "prompt": "hello world !", "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", c.log());
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["usage"]["prompt_tokens"], 3,
        "the HF tokenizer ran: {body}"
    );
    let r = post(&url, "/v1/chat/completions", json!({"model": "tiny-hf",
        "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 4, "temperature": 0})).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    // <|im_start|> user hello world <|im_end|> <|im_start|> assistant: 7 tokens.
    assert_eq!(
        body["usage"]["prompt_tokens"], 7,
        "the chat template ran: {body}"
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&model_dir);
}
