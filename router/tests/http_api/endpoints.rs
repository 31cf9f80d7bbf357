//! `/health`, `/ready`, `/v1/models`, unknown routes and `/metrics`.

use crate::support::*;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

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
