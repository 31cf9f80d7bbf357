//! Completions and chat, whole and streamed: shapes, token ids, stop strings, logprobs.

use crate::support::*;
use serde_json::json;
use strata_router::generation::FinishReason;
use strata_transport::vocab::Tokenizer;

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
