//! `strata bench http`: open-loop Poisson load on an OpenAI-compatible endpoint, streaming.
//!
//! - [`arrivals`] — the seeded schedule: arrival times, prompts, output lengths.
//! - [`client`] — one streaming request: send, read the SSE body, measure.
//! - [`drive`] — the open-loop driver: arrivals on schedule, tasks, progress, the drain.
//! - [`sse`] — the Server-Sent Events parser, fed pieces of the body as they come.
//! - [`report`] — the figures from the records, and the table.
//!
//! The run: one task per request, spawned at its arrival time unless `--max-inflight` are in
//! flight (then the arrival is dropped); after `--duration` no more arrivals, and the run waits
//! for those in flight (each bounded by `--timeout-s`). Ctrl-C stops arrivals and interrupts
//! the requests in flight; the report covers what was sent.

mod arrivals;
mod client;
mod drive;
mod report;
mod sse;

use anyhow::{Context, bail};
use arrivals::{PromptKind, TokenRange};
use report::{Report, SloTargets};
use serde::Serialize;
use std::path::PathBuf;

/// The long help of `strata bench http`, after the options.
pub const HELP: &str = "\
How it works:
  Arrivals are open-loop: a seeded Poisson process at --rate requests/s decides when each
  request is sent, whatever the server's pace, for --duration seconds; then the bench waits
  for the requests in flight. An arrival that finds --max-inflight requests in flight is not
  sent and counts as dropped (the bench's own limit, not the server's).

  Each request is a streaming completion (\"stream\": true with usage, temperature 0) with
  max_tokens uniform in --output-tokens (the server may stop earlier, at an end-of-sequence
  token). Its prompt length is uniform in --prompt-tokens: token ids in [3, --vocab), exact;
  or with --text, lowercase words of one byte per token, exact for the built-in byte
  tokenizer. --chat sends the text as a user message to /v1/chat/completions (the chat
  template adds a few tokens).

What the figures mean:
  completed       the stream reached data: [DONE]
  rejected        the server answered 429 (overloaded); its Retry-After is reported
  failed          any other status, data: {\"error\": ...} in the stream, a stream cut before
                  [DONE], no [DONE] within --timeout-s, or a connection error; counted by cause
  dropped         arrivals not sent because --max-inflight requests were in flight
  TTFT            time to first token: from sending the request to the first chunk with text
  TPOT            time per output token after the first: (last token chunk - first) /
                  (output tokens - 1), output tokens from the usage chunk
  end-to-end      from sending the request to data: [DONE]
  throughput      output tokens of completed requests per second, from the start of the run
                  to the end of its last request
  SLO attainment  the share of sent requests that completed with TTFT <= --ttft-slo-ms and
                  TPOT <= --tpot-slo-ms; rejected and failed ones count as misses
  goodput         requests per second that met the SLO
  instances       responses per x-strata-instance header: how the router spread the load
  routing         the router's own overhead per request, from its x-strata-routing-us header

Example, against a local cluster from `strata up` (its router on port 8080):
  strata bench http --url http://127.0.0.1:8080 --rate 2 --duration 30
Raise --rate until attainment falls to find the load the cluster sustains within its SLO;
add --json run.json to keep every figure with the configuration used.";

/// Most requests per second the bench offers.
const MAX_RATE_PER_S: f64 = 100_000.0;
/// Longest run, seconds.
const MAX_DURATION_S: f64 = 7.0 * 24.0 * 3600.0;
/// Most requests in flight.
const MAX_INFLIGHT: usize = 65_536;
/// Longest request timeout, seconds.
const MAX_TIMEOUT_S: f64 = 3600.0;

#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// Base URL of the server (`http://` only: this build has no TLS client).
    #[arg(long)]
    url: String,
    /// Mean arrival rate, requests per second (Poisson, open loop).
    #[arg(long)]
    rate: f64,
    /// Seconds during which requests arrive; the run then waits for those in flight.
    #[arg(long)]
    duration: f64,
    /// Prompt length in tokens, uniform in MIN-MAX.
    #[arg(long, default_value = "256-2048", value_name = "MIN-MAX")]
    prompt_tokens: TokenRange,
    /// Output tokens asked for (max_tokens), uniform in MIN-MAX.
    #[arg(long, default_value = "32-128", value_name = "MIN-MAX")]
    output_tokens: TokenRange,
    /// Send to /v1/chat/completions, the prompt as a user message (implies --text).
    #[arg(long)]
    chat: bool,
    /// Send prompts as text instead of token ids.
    #[arg(long)]
    text: bool,
    /// Token ids of prompts are uniform in [3, VOCAB); 259 fits the built-in byte tokenizer.
    #[arg(long, default_value_t = 259)]
    vocab: u32,
    /// Model to ask for. Default: the first of GET /v1/models.
    #[arg(long)]
    model: Option<String>,
    /// SLO class to ask for, sent as the `x-strata-slo` header.
    #[arg(long)]
    slo_class: Option<String>,
    /// TTFT target for attainment and goodput, ms.
    #[arg(long, default_value_t = 1000.0)]
    ttft_slo_ms: f64,
    /// TPOT target for attainment and goodput, ms.
    #[arg(long, default_value_t = 100.0)]
    tpot_slo_ms: f64,
    /// Most requests in flight; arrivals beyond are dropped and reported.
    #[arg(long, default_value_t = 512)]
    max_inflight: usize,
    /// Bound on one request, from sending to data: [DONE], seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
    /// Seed of arrival times, prompts and output lengths.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write every figure and the configuration as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The configuration of a run, as the JSON document records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub url: String,
    pub endpoint: String,
    /// The model asked for (found from GET /v1/models when not given).
    pub model: Option<String>,
    pub chat: bool,
    pub prompt: PromptKind,
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub seed: u64,
    pub prompt_tokens: TokenRange,
    pub output_tokens: TokenRange,
    pub slo_class: Option<String>,
    pub ttft_slo_ms: f64,
    pub tpot_slo_ms: f64,
    pub max_inflight: usize,
    pub timeout_s: f64,
}

impl HttpArgs {
    /// The checked configuration.
    fn config(&self) -> anyhow::Result<Config> {
        let url = self.url.trim_end_matches('/').to_string();
        if url.starts_with("https://") {
            bail!("--url {url}: this build has no TLS client; use http://");
        }
        if !url.starts_with("http://") {
            bail!("--url {url}: need an http:// URL");
        }
        if !(self.rate > 0.0 && self.rate <= MAX_RATE_PER_S) {
            bail!("--rate {}: need 0 < rate ≤ {MAX_RATE_PER_S}", self.rate);
        }
        if !(self.duration > 0.0 && self.duration <= MAX_DURATION_S) {
            bail!(
                "--duration {}: need 0 < duration ≤ {MAX_DURATION_S}",
                self.duration
            );
        }
        if !(self.timeout_s > 0.0 && self.timeout_s <= MAX_TIMEOUT_S) {
            bail!(
                "--timeout-s {}: need 0 < timeout ≤ {MAX_TIMEOUT_S}",
                self.timeout_s
            );
        }
        if self.max_inflight == 0 || self.max_inflight > MAX_INFLIGHT {
            bail!(
                "--max-inflight {}: need 1 ≤ max-inflight ≤ {MAX_INFLIGHT}",
                self.max_inflight
            );
        }
        if self.vocab <= 3 {
            bail!(
                "--vocab {}: need more than 3 (ids 0–2 are special)",
                self.vocab
            );
        }
        if !(self.ttft_slo_ms > 0.0 && self.tpot_slo_ms > 0.0) {
            bail!(
                "--ttft-slo-ms {} --tpot-slo-ms {}: need both > 0",
                self.ttft_slo_ms,
                self.tpot_slo_ms
            );
        }
        if let Some(class) = &self.slo_class
            && reqwest::header::HeaderValue::from_str(class).is_err()
        {
            bail!("--slo-class {class:?} is not a valid header value");
        }
        let path = if self.chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        Ok(Config {
            endpoint: format!("{url}{path}"),
            url,
            model: self.model.clone(),
            chat: self.chat,
            prompt: if self.text || self.chat {
                PromptKind::Text
            } else {
                PromptKind::TokenIds { vocab: self.vocab }
            },
            rate_per_s: self.rate,
            duration_s: self.duration,
            seed: self.seed,
            prompt_tokens: self.prompt_tokens,
            output_tokens: self.output_tokens,
            slo_class: self.slo_class.clone(),
            ttft_slo_ms: self.ttft_slo_ms,
            tpot_slo_ms: self.tpot_slo_ms,
            max_inflight: self.max_inflight,
            timeout_s: self.timeout_s,
        })
    }
}

#[derive(Debug, Serialize)]
struct Document<'a> {
    config: &'a Config,
    /// Ctrl-C ended the run early.
    interrupted: bool,
    #[serde(flatten)]
    report: &'a Report,
}

pub fn run(args: HttpArgs) -> anyhow::Result<()> {
    let mut config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (report, interrupted) = runtime.block_on(drive::drive(&mut config))?;
    let slo = slo_targets(&config);
    report.print(&slo);
    if interrupted {
        println!("interrupted: arrivals stopped early and requests in flight were cut");
    }
    if let Some(path) = &args.json {
        let doc = Document {
            config: &config,
            interrupted,
            report: &report,
        };
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn slo_targets(config: &Config) -> SloTargets {
    SloTargets {
        ttft_ms: config.ttft_slo_ms,
        tpot_ms: config.tpot_slo_ms,
    }
}
