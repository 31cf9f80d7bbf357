//! Forwarding: places a request, streams it to the instance's driver node, relays its tokens,
//! and fails over.
//!
//! - [`link`] — one QUIC connection per node, kept up by a subscription to its load reports.
//! - [`attempt`] — one request stream on one instance.
//! - [`topology`] — the links and instances followed from the control plane.
//!
//! **Failover.** When the instance dies mid-stream (the link to any of its stage nodes drops,
//! the driver's stream breaks, or the driver fails the request), the request is placed again, excluding instances it already failed on, with
//! the prompt plus the tokens already sent as the new prompt and `max_tokens` reduced by them.
//! Greedy decoding then continues the text exactly: no gap, no duplicate. At most
//! `limits.max_attempts` instances are tried.

pub mod attempt;
pub mod link;
pub mod topology;

use crate::config::Limits;
use crate::generation::{
    Backend, FinishReason, GenError, GenEvent, GenStream, Generation, ModelCard, Usage,
};
use crate::metrics::Metrics;
use crate::place::{Choice, PlaceError, PlaceRequest, Placer};
use crate::view::ClusterView;
use attempt::Attempt;
use futures_util::future::BoxFuture;
use link::{LinkEnv, NodeLink, lock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_raft::api::{NodeRuntime, NodeRuntimeSource};
use strata_raft::state::ClusterState;
use strata_transport::proto::{
    GenerateRequest, Message, RejectReason, RequestId, WireFinishReason,
};
use tokio::sync::watch;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use topology::Topology;

/// How long a failover waits for some instance to become placeable.
const FAILOVER_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting failover looks again.
const FAILOVER_POLL: Duration = Duration::from_millis(20);

struct Shared {
    view: Arc<Mutex<ClusterView>>,
    placer: Arc<Mutex<Placer>>,
    topology: Arc<Mutex<Topology>>,
    limits: Limits,
    inflight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
}

/// The router's [`Backend`]: see the module doc.
#[derive(Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
}

impl Forwarder {
    /// Follows the control plane's applied `state` (nodes, deployments, policy): keeps a link
    /// to every registered node on `endpoint` (a client endpoint with the router's identity)
    /// until `shutdown`. `router` names this router to the nodes.
    pub fn start(
        router: &str,
        limits: &Limits,
        endpoint: quinn::Endpoint,
        metrics: Arc<Metrics>,
        mut state: watch::Receiver<Arc<ClusterState>>,
        shutdown: CancellationToken,
    ) -> Forwarder {
        let view = Arc::new(Mutex::new(ClusterView::default()));
        let env = Arc::new(LinkEnv {
            endpoint,
            view: view.clone(),
            metrics: metrics.clone(),
            router: router.to_string(),
            silence: limits.node_silence(),
            connect_timeout: limits.connect_timeout(),
        });
        let placer = Arc::new(Mutex::new(Placer::new(
            Default::default(),
            limits.node_silence(),
        )));
        let topology = Arc::new(Mutex::new(Topology::default()));
        let current = state.borrow_and_update().clone();
        topology::apply(&current, &topology, &view, &placer, &env, &shutdown);
        let follow = {
            let (topology, view, placer) = (topology.clone(), view.clone(), placer.clone());
            async move {
                loop {
                    tokio::select! {
                        changed = state.changed() => if changed.is_err() { break },
                        () = shutdown.cancelled() => break,
                    }
                    let current = state.borrow_and_update().clone();
                    topology::apply(&current, &topology, &view, &placer, &env, &shutdown);
                }
                lock(&topology).stop_all();
            }
        };
        tokio::spawn(follow);
        let seed = std::process::id() as u64 ^ (router.len() as u64) << 32;
        Forwarder {
            shared: Arc::new(Shared {
                view,
                placer,
                topology,
                limits: limits.clone(),
                inflight: Arc::new(Semaphore::new(limits.max_inflight)),
                metrics,
                next_id: AtomicU64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            }),
        }
    }

    /// The cluster view (for status pages and tests).
    pub fn view(&self) -> Arc<Mutex<ClusterView>> {
        self.shared.view.clone()
    }

    /// What this router's link to node `id` sees, for `strata admin status`.
    pub fn node_runtime(&self, id: &str) -> Option<NodeRuntime> {
        let link = lock(&self.shared.topology).link(id)?.clone();
        let seen = link.seen();
        let silence = self.shared.limits.node_silence();
        let info = seen.info.as_ref();
        let (report, at) = match &seen.load {
            Some((r, at)) => (Some(r), Some(*at)),
            None => (None, None),
        };
        let age = at.map(|at| at.elapsed());
        Some(NodeRuntime {
            healthy: link.connection().is_some()
                && info.is_some()
                && age.is_some_and(|a| a <= silence),
            waiting: report.map_or(0, |r| r.waiting),
            running: report.map_or(0, |r| r.running),
            gpu_free_blocks: report.map_or(0, |r| r.gpu_free_blocks),
            gpu_blocks: info.map_or(0, |i| i.gpu_blocks),
            host_free_blocks: report.map_or(0, |r| r.host_free_blocks),
            host_blocks: info.map_or(0, |i| i.host_blocks),
            report_age_ms: age.map(|a| a.as_millis() as u64),
        })
    }
}

impl NodeRuntimeSource for Forwarder {
    fn node_runtime(&self, id: &str) -> Option<NodeRuntime> {
        Forwarder::node_runtime(self, id)
    }
}

impl Shared {
    fn card(&self, model: &str) -> Option<ModelCard> {
        if !lock(&self.topology).has_model(model) {
            return None;
        }
        let view = lock(&self.view);
        let infos: Vec<_> = view
            .instances()
            .iter()
            .filter(|i| i.model == model)
            .filter_map(|i| i.info.as_ref())
            .collect();
        Some(ModelCard {
            name: model.to_string(),
            max_context: infos.iter().map(|i| i.max_seq_tokens).min(),
            eos_tokens: infos
                .first()
                .map(|i| i.eos_tokens.clone())
                .unwrap_or_default(),
        })
    }

    fn place(&self, req: &PlaceRequest<'_>) -> Result<Choice, PlaceError> {
        let view = lock(&self.view);
        let choice = lock(&self.placer).place(&view, req, Instant::now());
        drop(view);
        if let Ok(c) = &choice {
            lock(&self.view).handle_placed(&c.instance, req.tokens.len() as u64);
        }
        choice
    }

    /// The links of `instance`'s driver and of its other stage nodes.
    fn stage_links(&self, instance: &str) -> Option<(Arc<NodeLink>, Vec<Arc<NodeLink>>)> {
        lock(&self.topology).stage_links(instance)
    }
}

/// Everything a request task carries between attempts.
struct Job {
    req: Generation,
    request: RequestId,
    stop_tokens: Vec<u32>,
    /// Tokens already sent to the client.
    emitted: Vec<u32>,
    /// Instances this request failed on.
    failed: Vec<String>,
    cached_tokens: u32,
}

impl Job {
    fn wire(&self) -> GenerateRequest {
        let mut prompt = self.req.prompt.clone();
        prompt.extend(&self.emitted);
        GenerateRequest {
            request: self.request,
            prompt,
            max_tokens: self.req.max_tokens - self.emitted.len() as u32,
            stop_tokens: self.stop_tokens.clone(),
            sampling: self.req.sampling,
            slo: self.req.slo.clone(),
            cache_salt: self.req.cache_salt,
            logprobs: self.req.logprobs,
        }
    }

    fn place_request<'a>(&'a self, tokens: &'a [u32], enforce_slo: bool) -> PlaceRequest<'a> {
        PlaceRequest {
            model: &self.req.model,
            tokens,
            cache_salt: self.req.cache_salt,
            slo: &self.req.slo,
            exclude: &self.failed,
            enforce_slo,
        }
    }
}

/// A started attempt with what placement predicted for it.
struct Running {
    attempt: Attempt,
    predicted: Option<Duration>,
    sent_at: Instant,
}

impl Backend for Forwarder {
    fn generate(
        &self,
        req: Generation,
        arrival: Instant,
    ) -> BoxFuture<'_, Result<GenStream, GenError>> {
        Box::pin(async move {
            let shared = &self.shared;
            let card = shared
                .card(&req.model)
                .ok_or_else(|| GenError::UnknownModel {
                    model: req.model.clone(),
                })?;
            if let Some(limit) = card.max_context
                && req.prompt.len() as u64 + u64::from(req.max_tokens) > u64::from(limit)
            {
                return Err(GenError::ContextTooLong {
                    prompt: req.prompt.len() as u32,
                    max_tokens: req.max_tokens,
                    limit,
                });
            }
            let permit =
                shared
                    .inflight
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| GenError::Overloaded {
                        slo: req.slo.name.clone(),
                        ttft_ms: req.slo.ttft_ms,
                        predicted_ms: f64::NAN,
                        retry_after: Duration::from_secs(1),
                    })?;
            let mut stop_tokens = if req.ignore_eos {
                Vec::new()
            } else {
                card.eos_tokens.clone()
            };
            stop_tokens.extend(&req.stop_tokens);
            let mut job = Job {
                request: RequestId(shared.next_id.fetch_add(1, Ordering::Relaxed)),
                req,
                stop_tokens,
                emitted: Vec::new(),
                failed: Vec::new(),
                cached_tokens: 0,
            };
            let running = start_first(shared, &mut job).await?;
            let routing = arrival.elapsed();
            let instance = running.attempt.instance.clone();
            let (tx, events) = mpsc::channel(64);
            let task_shared = shared.clone();
            tokio::spawn(async move {
                drive(&task_shared, job, running, tx).await;
                drop(permit);
            });
            Ok(GenStream {
                instance,
                routing,
                events,
            })
        })
    }

    fn models(&self) -> Vec<ModelCard> {
        let names: Vec<String> = lock(&self.shared.topology)
            .models()
            .map(str::to_owned)
            .collect();
        names.iter().filter_map(|m| self.shared.card(m)).collect()
    }

    fn model(&self, name: &str) -> Option<ModelCard> {
        self.shared.card(name)
    }

    /// An instance is healthy and its stages are linked: a request placed now can start
    /// (load reports may make an instance healthy before the topology links its stages).
    fn ready(&self) -> bool {
        let now = Instant::now();
        let silence = self.shared.limits.node_silence();
        // Collected first: the view's lock is released before the topology's is taken.
        let healthy: Vec<String> = lock(&self.shared.view)
            .instances()
            .iter()
            .filter(|i| i.healthy(now, silence))
            .map(|i| i.id.clone())
            .collect();
        healthy
            .iter()
            .any(|id| self.shared.stage_links(id).is_some())
    }
}

/// Places and starts the first attempt; rejections become HTTP errors.
async fn start_first(shared: &Shared, job: &mut Job) -> Result<Running, GenError> {
    for _ in 0..shared.limits.max_attempts {
        let tokens = job.req.prompt.clone();
        let choice = shared
            .place(&job.place_request(&tokens, true))
            .map_err(|e| match e {
                PlaceError::Unavailable => GenError::Unavailable {
                    model: job.req.model.clone(),
                },
                PlaceError::Overloaded { best, retry_after } => GenError::Overloaded {
                    slo: job.req.slo.name.clone(),
                    ttft_ms: job.req.slo.ttft_ms,
                    predicted_ms: best.as_secs_f64() * 1e3,
                    retry_after,
                },
            })?;
        match try_start(shared, job, choice).await {
            Some(r) => return Ok(r),
            None => continue,
        }
    }
    Err(GenError::Unavailable {
        model: job.req.model.clone(),
    })
}

/// Starts an attempt on `choice`; on failure records the instance as failed.
async fn try_start(shared: &Shared, job: &mut Job, choice: Choice) -> Option<Running> {
    let started = match shared.stage_links(&choice.instance) {
        Some((driver, workers)) => {
            Attempt::start(choice.instance.clone(), &driver, &workers, &job.wire())
                .await
                .map_err(|e| e.to_string())
        }
        None => Err(format!("instance {} has no driver link", choice.instance)),
    };
    match started {
        Ok(attempt) => Some(Running {
            attempt,
            predicted: choice.prediction.map(|p| p.total),
            sent_at: Instant::now(),
        }),
        Err(e) => {
            tracing::warn!(instance = %choice.instance, error = %e, "cannot start the request");
            lock(&shared.view).handle_done(&choice.instance);
            job.failed.push(choice.instance);
            None
        }
    }
}

/// Places a failed-over request again, waiting a bounded time for an instance.
async fn restart(shared: &Shared, job: &mut Job) -> Option<Running> {
    let deadline = Instant::now() + FAILOVER_WAIT;
    while job.failed.len() < shared.limits.max_attempts as usize {
        let mut tokens = job.req.prompt.clone();
        tokens.extend(&job.emitted);
        match shared.place(&job.place_request(&tokens, false)) {
            Ok(choice) => {
                if let Some(r) = try_start(shared, job, choice).await {
                    return Some(r);
                }
            }
            Err(_) if Instant::now() < deadline => tokio::time::sleep(FAILOVER_POLL).await,
            Err(_) => return None,
        }
    }
    None
}

/// How one attempt ended.
enum Outcome {
    Done,
    ClientGone,
    /// The instance failed the request; try another.
    Failover(String),
}

/// Relays a request's tokens to the client, failing over until it finishes.
async fn drive(shared: &Shared, mut job: Job, mut run: Running, tx: mpsc::Sender<GenEvent>) {
    loop {
        let instance = run.attempt.instance.clone();
        let outcome = relay(shared, &mut job, &mut run, &tx).await;
        lock(&shared.view).handle_done(&instance);
        match outcome {
            Outcome::Done => {
                run.attempt.finish();
                return;
            }
            Outcome::ClientGone => {
                run.attempt.cancel(job.request).await;
                return;
            }
            Outcome::Failover(why) => {
                tracing::warn!(%instance, request = %job.request, emitted = job.emitted.len(), "failing over: {why}");
                drop(run);
                job.failed.push(instance);
                if job.emitted.len() as u32 >= job.req.max_tokens {
                    let _ = tx.send(finish(&job, FinishReason::Length)).await;
                    return;
                }
                match restart(shared, &mut job).await {
                    Some(next) => run = next,
                    None => {
                        let _ = tx
                            .send(GenEvent::Failed {
                                message: format!(
                                    "the request failed on {} and no other instance could take it",
                                    job.failed.join(", ")
                                ),
                            })
                            .await;
                        return;
                    }
                }
            }
        }
    }
}

fn finish(job: &Job, reason: FinishReason) -> GenEvent {
    GenEvent::Finish {
        reason,
        usage: Usage {
            prompt_tokens: job.req.prompt.len() as u32,
            completion_tokens: job.emitted.len() as u32,
            cached_tokens: job.cached_tokens,
        },
    }
}

async fn relay(
    shared: &Shared,
    job: &mut Job,
    run: &mut Running,
    tx: &mpsc::Sender<GenEvent>,
) -> Outcome {
    // Only an attempt that started from the original prompt reports its cache hits as usage.
    let from_original_prompt = job.emitted.is_empty();
    loop {
        let frame = tokio::select! {
            f = run.attempt.frames.recv() => f,
            node = run.attempt.stages.down() => return Outcome::Failover(format!("node {node} went down")),
            () = tx.closed() => return Outcome::ClientGone,
        };
        let msg = match frame {
            Some(Ok(Some(m))) => m,
            Some(Ok(None)) | None => return Outcome::Failover("the stream ended early".into()),
            Some(Err(e)) => return Outcome::Failover(format!("bad stream: {e}")),
        };
        match msg {
            Message::Token(t) => {
                if job.emitted.is_empty() {
                    let observed = run.sent_at.elapsed();
                    if let Some(predicted) = run.predicted {
                        lock(&shared.view).handle_first_token(
                            &run.attempt.instance,
                            predicted,
                            observed,
                        );
                        shared.metrics.observe_prediction(
                            &run.attempt.instance,
                            predicted.as_secs_f64(),
                            observed.as_secs_f64(),
                        );
                    }
                }
                let ev = GenEvent::Token {
                    index: job.emitted.len() as u32,
                    token: t.token,
                    logprob: t.logprob,
                    top_logprobs: t.top_logprobs,
                };
                job.emitted.push(t.token);
                if tx.send(ev).await.is_err() {
                    return Outcome::ClientGone;
                }
            }
            Message::Finish(f) => {
                let reason = match f.reason {
                    WireFinishReason::Length => FinishReason::Length,
                    WireFinishReason::Stop => FinishReason::Stop,
                    WireFinishReason::Cancelled => {
                        return Outcome::Failover("the node cancelled the request".into());
                    }
                    WireFinishReason::Error(e) => {
                        return Outcome::Failover(format!("the node failed the request: {e}"));
                    }
                };
                if from_original_prompt {
                    job.cached_tokens = f.cached_tokens;
                }
                let _ = tx.send(finish(job, reason)).await;
                return Outcome::Done;
            }
            Message::Reject(r) => match r.reason {
                RejectReason::QueueFull | RejectReason::ShuttingDown => {
                    return Outcome::Failover(format!("rejected: {}", r.message));
                }
                RejectReason::TooLong | RejectReason::TooLarge | RejectReason::Invalid => {
                    let _ = tx
                        .send(GenEvent::Failed {
                            message: format!("the node refused the request: {}", r.message),
                        })
                        .await;
                    return Outcome::Done;
                }
            },
            other => {
                return Outcome::Failover(format!(
                    "unexpected {} on a request stream",
                    other.kind()
                ));
            }
        }
    }
}
