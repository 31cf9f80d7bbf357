//! The open-loop driver: arrivals on schedule, one task per request, progress, the drain.

use super::arrivals::{Arrivals, PromptKind};
use super::client::{self, Outcome, Record, Target};
use super::report::{self, Report};
use super::{Config, slo_targets};
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bound on connecting, and on the `GET /v1/models` that finds the default model.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the progress bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

/// The first model of `GET {url}/v1/models`.
async fn first_model(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let models_url = format!("{url}/v1/models");
    let response = client
        .get(&models_url)
        .timeout(SETUP_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("GET {models_url} (to find the model; or give --model)"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {models_url}: {status} (give --model to skip it)");
    }
    let models: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("GET {models_url}: not JSON"))?;
    match models["data"][0]["id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => bail!("GET {models_url} lists no model: {models}"),
    }
}

/// Counts for the progress bar.
#[derive(Debug, Default)]
struct Tally {
    completed: u64,
    rejected: u64,
    failed: u64,
}

impl Tally {
    fn add(&mut self, r: &Record) {
        match r.outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Rejected { .. } => self.rejected += 1,
            Outcome::Failed { .. } => self.failed += 1,
        }
    }
}

/// Runs the schedule; the report and whether Ctrl-C cut it short.
pub async fn drive(config: &mut Config) -> anyhow::Result<(Report, bool)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(SETUP_TIMEOUT)
        .pool_max_idle_per_host(config.max_inflight)
        .build()
        .context("building the HTTP client")?;
    let model = match &config.model {
        Some(m) => m.clone(),
        None => first_model(&client, &config.url).await?,
    };
    config.model = Some(model.clone());
    let model: Arc<str> = model.into();
    println!(
        "strata bench http: Poisson {} req/s for {} s to {}, model {model}; prompts {} tokens ({}), \
         outputs {}; SLO TTFT ≤ {} ms, TPOT ≤ {} ms; at most {} in flight",
        config.rate_per_s,
        config.duration_s,
        config.endpoint,
        config.prompt_tokens,
        match config.prompt {
            PromptKind::Text => "text",
            PromptKind::TokenIds { .. } => "token ids",
        },
        config.output_tokens,
        config.ttft_slo_ms,
        config.tpot_slo_ms,
        config.max_inflight
    );
    let target = Arc::new(Target {
        client,
        endpoint: config.endpoint.clone(),
        slo_class: config.slo_class.clone(),
        timeout: Duration::from_secs_f64(config.timeout_s),
    });
    let interrupt = CancellationToken::new();
    let on_ctrl_c = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });

    let duration = Duration::from_secs_f64(config.duration_s);
    let mut schedule = Arrivals::new(
        config.seed,
        config.rate_per_s,
        duration,
        config.prompt_tokens,
        config.output_tokens,
        config.prompt,
    );
    let bar = ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {elapsed:>4} {msg}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_prefix("sending");
    let permits = Arc::new(Semaphore::new(config.max_inflight));
    let mut tasks: JoinSet<Record> = JoinSet::new();
    let mut records = Vec::new();
    let mut tally = Tally::default();
    let (mut arrivals, mut dropped) = (0u64, 0u64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut next = schedule.next();
    let progress = |records: &[Record], tally: &Tally, arrivals: u64, dropped: u64| {
        let in_flight = arrivals - dropped - records.len() as u64;
        format!(
            "{} sent, {in_flight} in flight, {} completed, {} rejected, {} failed, {dropped} dropped",
            arrivals - dropped,
            tally.completed,
            tally.rejected,
            tally.failed
        )
    };
    while let Some(at) = next.as_ref().map(|a| a.at) {
        tokio::select! {
            () = tokio::time::sleep_until(start + at) => {
                if let Some(a) = next.take() {
                    arrivals += 1;
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (target, interrupt) = (target.clone(), interrupt.clone());
                            let (model, chat) = (model.clone(), config.chat);
                            tasks.spawn(async move {
                                let body = client::request_body(&model, &a.prompt, a.max_tokens, chat);
                                let record = client::send(&target, body.to_string(), &interrupt).await;
                                drop(permit);
                                record
                            });
                        }
                        Err(_) => dropped += 1,
                    }
                }
                next = schedule.next();
            }
            Some(joined) = tasks.join_next() => {
                let record = joined.unwrap_or_else(|e| report::lost(format!("request task: {e}")));
                tally.add(&record);
                records.push(record);
            }
            _ = tick.tick() => {
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(progress(&records, &tally, arrivals, dropped));
            }
            () = interrupt.cancelled() => break,
        }
    }
    bar.set_prefix("draining");
    bar.set_length(arrivals - dropped);
    while !tasks.is_empty() {
        tokio::select! {
            Some(joined) = tasks.join_next() => {
                let record = joined.unwrap_or_else(|e| report::lost(format!("request task: {e}")));
                tally.add(&record);
                records.push(record);
            }
            _ = tick.tick() => {
                bar.set_position(records.len() as u64);
                bar.set_message(progress(&records, &tally, arrivals, dropped));
            }
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let report = Report::new(&records, arrivals, dropped, elapsed, &slo_targets(config));
    debug_assert!(report.validate(), "counts disagree: {report:?}");
    Ok((report, interrupt.is_cancelled()))
}
