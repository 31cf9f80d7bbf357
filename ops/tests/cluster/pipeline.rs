//! Pipeline-parallel instances of a real `strata up --stages P` cluster: each instance a chain
//! of stage node processes, each owning a contiguous range of the model's layers.
//!
//! - The same greedy tokens as one process holding every layer, with 2 and 4 stages (tiny has
//!   4 layers), and again with GPU tiers so small that a prefix's KV is demoted to every
//!   stage's host tier and brought back.
//! - `kill -9` of a middle stage mid-stream: the stream continues on the other instance with
//!   identical text, and the broken instance gets no more requests.

use super::support::{Cluster, Streamed, alive, parse_sse, signal, wait_until};
use super::{header, post};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Generous for a loaded 2-core machine; every wait ends as soon as its condition holds.
const BOUND: Duration = Duration::from_secs(30);
/// Tokens generated per prompt.
const MAX_TOKENS: u64 = 64;

/// Node settings for a `--stages P` cluster under which each node process's GPU tier holds
/// one long sequence of [`offload_prompts`] (98 blocks of 16 tokens per layer: 1500 prompt
/// tokens and 64 generated) in every one of its layers, but not two: its blocks per layer,
/// less the watermark, are in 98..195.
///
/// A block of tiny's KV is 4 KiB (2 · 16 tokens · 2 KV heads · 16 dims · 4 bytes), so a MiB of
/// `gpu_mib` is 256 blocks; the layer-wise staging area takes one longest sequence's blocks
/// (`max_seq_tokens` / 16) off the top, and the watermark max(layers, 1%) of the rest. Every
/// stage has its own tiers (DESIGN.md), sized like a node's for its own layers (4 / P):
/// - 1 process, 4 layers: 512 − 100 staging − 4 watermark = 408 blocks, 102 per layer;
/// - 2 stages, 2 layers each: 512 − 160 − 4 = 348, 174 per layer;
/// - 4 stages, 1 layer each: 256 − 100 − 1 = 155.
fn small_gpu(stages: usize) -> &'static str {
    match stages {
        1 => "gpu_mib = 2\n[scheduler]\nmax_seq_tokens = 1600",
        2 => "gpu_mib = 2\n[scheduler]\nmax_seq_tokens = 2560",
        4 => "gpu_mib = 1\n[scheduler]\nmax_seq_tokens = 1600",
        _ => unreachable!("no small-GPU settings for {stages} stages"),
    }
}

/// `n` bytes of distinct text: tiny's tokenizer makes one token per byte.
fn text_of(n: usize, seed: &str) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!("{seed} {i}: layer-wise KV moves between tiers. "));
        i += 1;
    }
    s.truncate(n);
    s
}

/// Short prompts and one spanning many 16-token blocks.
fn prompts() -> Vec<String> {
    vec![
        "Hello, strata".into(),
        "The quick brown fox".into(),
        text_of(300, "medium"),
    ]
}

/// Prompts that move KV between tiers under [`small_gpu`], sent one after another: the first
/// leaves its blocks in the GPU tier's prefix cache; the second, a different long prompt,
/// needs their room, so every stage demotes them to its host tier; the third, the first
/// again, finds its prefix on the host and brings it back to the GPU (demoting the second's).
fn offload_prompts() -> Vec<String> {
    let long = text_of(1500, "first");
    vec![
        long.clone(),
        text_of(1500, "second"),
        long,
        "Hello, strata".into(),
    ]
}

/// The instance id a `--nodes 1 --stages P` cluster serves from.
fn instance_of(stages: usize) -> String {
    let ids: Vec<String> = (0..stages)
        .map(|k| match k {
            0 => "node-1".to_string(),
            k => format!("node-1-s{k}"),
        })
        .collect();
    ids.join("+")
}

/// A completion's text and how many of its prompt tokens the node found cached.
#[derive(Debug)]
struct Completed {
    text: String,
    cached_tokens: u64,
}

/// Greedy completions of `prompts`, one after another, each checked to come from `instance`
/// with exactly [`MAX_TOKENS`] tokens.
async fn complete_all(c: &Cluster, prompts: &[String], instance: &str) -> Vec<Completed> {
    let mut done = Vec::new();
    for p in prompts {
        let r = post(
            &c.url,
            "/v1/completions",
            json!({"model": "tiny", "prompt": p, "max_tokens": MAX_TOKENS,
                   "temperature": 0, "ignore_eos": true}),
        )
        .await;
        assert_eq!(r.status(), 200, "{}", c.log());
        assert_eq!(header(&r, "x-strata-instance"), instance);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["usage"]["completion_tokens"], MAX_TOKENS, "{body}");
        done.push(Completed {
            text: body["choices"][0]["text"]
                .as_str()
                .expect("text")
                .to_string(),
            cached_tokens: body["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .expect("cached tokens"),
        });
    }
    done
}

fn texts(done: &[Completed]) -> Vec<&str> {
    done.iter().map(|d| d.text.as_str()).collect()
}

/// A `strata up --nodes 1 --stages P` cluster (one router: only the nodes matter here) with
/// `node_extra` in every node's config.
fn start(tag: &str, stages: usize, node_extra: Option<&str>) -> Cluster {
    let stages_arg = stages.to_string();
    let mut args = vec!["--nodes", "1", "--routers", "1", "--stages", &stages_arg];
    if let Some(extra) = node_extra {
        args.extend(["--node-extra", extra]);
    }
    Cluster::start(tag, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_tokens_match_one_process() {
    let prompts = prompts();
    let one = {
        let c = start("pp-one", 1, None);
        complete_all(&c, &prompts, "node-1").await
    };
    for stages in [2, 4] {
        let c = start(&format!("pp-s{stages}"), stages, None);
        let got = complete_all(&c, &prompts, &instance_of(stages)).await;
        assert_eq!(texts(&got), texts(&one), "--stages {stages}\n{}", c.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_tokens_match_one_process_with_kv_through_the_host_tier() {
    let prompts = offload_prompts();
    // The reference: one process with room for everything.
    let reference = {
        let c = start("pp-host-ref", 1, None);
        complete_all(&c, &prompts, "node-1").await
    };
    assert_eq!(
        reference[0].text, reference[2].text,
        "the same prompt, the same text"
    );
    // The first long prompt's full blocks: what its repeat must find cached.
    let prefix_tokens = (prompts[0].len() as u64 / 16) * 16;
    for stages in [1, 2, 4] {
        let c = start(
            &format!("pp-host-s{stages}"),
            stages,
            Some(small_gpu(stages)),
        );
        let got = complete_all(&c, &prompts, &instance_of(stages)).await;
        assert_eq!(
            texts(&got),
            texts(&reference),
            "--stages {stages} with small GPU tiers\n{}",
            c.log()
        );
        // The repeat found its whole prefix cached although no stage's GPU tier could keep it
        // beside the second prompt's blocks: it was demoted to the host tiers and came back.
        assert!(
            got[2].cached_tokens >= prefix_tokens,
            "--stages {stages}: the repeat found {} of {prefix_tokens} prefix tokens cached\n{}",
            got[2].cached_tokens,
            c.log()
        );
    }
}

/// The `strata_instance_healthy` sample of `instance` in a `/metrics` page (`None` when it
/// has none).
fn healthy_gauge(metrics: &str, instance: &str) -> Option<f64> {
    let prefix = format!("strata_instance_healthy{{instance=\"{instance}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_middle_stage_mid_stream_keeps_the_text() {
    let c = Cluster::start("pp-failover", &["--stages", "3", "--nodes", "2"]);
    let url = c.url.clone();
    assert_eq!(
        c.nodes.len(),
        6,
        "cluster.json lists every stage: {:?}",
        c.nodes
    );
    let max_tokens = 400;
    let body = |stream: bool| {
        json!({"model": "tiny", "prompt": "The quick brown fox", "max_tokens": max_tokens,
               "temperature": 0, "stream": stream, "ignore_eos": true})
    };
    // The undisturbed text.
    let r = post(&url, "/v1/completions", body(false)).await;
    assert_eq!(r.status(), 200);
    let undisturbed: Value = r.json().await.expect("json");
    assert_eq!(undisturbed["usage"]["completion_tokens"], max_tokens);
    let expected = undisturbed["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();

    // Stream it again and kill -9 the serving instance's middle stage after the first chunk.
    let mut r = post(&url, "/v1/completions", body(true)).await;
    assert_eq!(r.status(), 200);
    let instance = header(&r, "x-strata-instance");
    let stages: Vec<&str> = instance.split('+').collect();
    assert_eq!(stages.len(), 3, "a 3-stage instance: {instance}");
    let middle = stages[1];
    assert!(
        middle.ends_with("-s1"),
        "{middle} is the middle stage of {instance}"
    );
    let pid = c.node_pid(middle);
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
        instance: instance.clone(),
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

    // The instance without its middle stage is unhealthy and takes no new requests.
    let deadline = Instant::now() + BOUND;
    loop {
        let metrics = reqwest::get(format!("{url}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if healthy_gauge(&metrics, &instance) == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{instance} still healthy after its middle stage died:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..4 {
        let r = post(
            &url,
            "/v1/completions",
            json!({"model": "tiny", "prompt": format!("after the kill {i}"), "max_tokens": 4}),
        )
        .await;
        assert_eq!(r.status(), 200);
        let served_by = header(&r, "x-strata-instance");
        assert_ne!(served_by, instance, "placed on the broken instance");
    }
}
