//! Every error path: validation, limits, backend errors, failures, API keys, SLO header, disconnects.

use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;
use strata_router::generation::{GenError, GenEvent};
use strata_router::http::HttpLimits;

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
