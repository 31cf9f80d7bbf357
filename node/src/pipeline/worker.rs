//! A stage worker: a node that computes one stage of a chain. It serves the `Stage` stream the
//! stage above opens (one chain at a time: a new `StageOpen` ends the old chain), opens its own
//! stream to the next stage, computes each micro-batch on a thread of its own, passes the
//! activations on (or, as the last stage, samples) and relays results back up.

use super::link::{LinkLimits, NextStage, STEP_QUEUE, open_chain, recv_result};
use super::wire;
use crate::exec::{PoolSizes, StageExecutor, StageInput, StageOutput};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use strata_transport::proto::{Message, StageOpen, StageReady, StageResult, StageStep};
use strata_transport::stream::{MessageReceiver, MessageSender};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Stream error code: the chain ended (a newer chain replaced it, or a link broke).
pub const CHAIN_ENDED: u32 = 0x30;

/// What a worker serves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The node's id, for errors the driver reports.
    pub id: String,
    /// The model name requests use.
    pub model: String,
    pub model_layers: usize,
    pub block_tokens: usize,
    /// The next stage; `None` on the last stage.
    pub next: Option<NextStage>,
    /// The most blocks a chain may ask this stage to allocate.
    pub budget: PoolSizes,
    pub limits: LinkLimits,
}

/// See the module doc.
pub struct StageWorker {
    cfg: WorkerConfig,
    layers: Range<usize>,
    exec: Arc<Mutex<Box<dyn StageExecutor>>>,
    endpoint: quinn::Endpoint,
    /// The chain being served, ended when a new one opens.
    current: Mutex<Option<CancellationToken>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock poisons it; the data (an executor, a token) stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the compute thread does with a micro-batch.
enum Computed {
    /// Pass on to the next stage; this stage moved the bytes between its tiers.
    Forward(StageStep, u64),
    /// Answer up (the last stage's tokens, or an error).
    Answer(StageResult),
}

impl StageWorker {
    /// `exec` computes this stage's layers; `endpoint` makes the connection to the next stage.
    pub fn new(
        cfg: WorkerConfig,
        exec: Box<dyn StageExecutor>,
        endpoint: quinn::Endpoint,
    ) -> Arc<Self> {
        Arc::new(StageWorker {
            cfg,
            layers: exec.layers(),
            exec: Arc::new(Mutex::new(exec)),
            endpoint,
            current: Mutex::new(None),
        })
    }

    pub fn layers(&self) -> Range<usize> {
        self.layers.clone()
    }

    fn name(&self) -> String {
        format!(
            "stage {} (layers {}..{})",
            self.cfg.id, self.layers.start, self.layers.end
        )
    }

    /// Checks the driver's terms against this stage.
    fn check(&self, open: &StageOpen) -> Result<PoolSizes, String> {
        let me = self.name();
        if open.model != self.cfg.model || open.model_layers as usize != self.cfg.model_layers {
            return Err(format!(
                "{me} serves {} ({} layers), the driver {} ({} layers)",
                self.cfg.model, self.cfg.model_layers, open.model, open.model_layers
            ));
        }
        if open.block_tokens as usize != self.cfg.block_tokens {
            return Err(format!(
                "{me} has blocks of {} tokens, the driver {}",
                self.cfg.block_tokens, open.block_tokens
            ));
        }
        let pools = PoolSizes {
            gpu_blocks: open.gpu_blocks as usize,
            host_blocks: open.host_blocks as usize,
            staging_blocks: open.staging_blocks as usize,
        };
        let b = self.cfg.budget;
        if pools.gpu_blocks + pools.staging_blocks > b.gpu_blocks + b.staging_blocks
            || pools.host_blocks > b.host_blocks
        {
            return Err(format!(
                "{me} can hold {} GPU and {} host blocks; the driver asks for {} and {} \
                 (give every stage the same gpu_mib, host_mib and scheduler settings)",
                b.gpu_blocks + b.staging_blocks,
                b.host_blocks,
                pools.gpu_blocks + pools.staging_blocks,
                pools.host_blocks
            ));
        }
        Ok(pools)
    }

    /// Serves the `Stage` stream whose first frame was `open`, until the chain ends.
    pub async fn serve(
        self: Arc<Self>,
        open: StageOpen,
        mut up_send: MessageSender,
        up_recv: MessageReceiver,
        shutdown: CancellationToken,
    ) {
        let token = shutdown.child_token();
        if let Some(old) = lock(&self.current).replace(token.clone()) {
            old.cancel();
        }
        let ready = self.open(&open, &token).await;
        let (down, stages) = match ready {
            Ok(ok) => ok,
            Err(why) => {
                tracing::warn!("refusing a chain: {why}");
                let refusal = Message::StageReady(StageReady {
                    stages: Vec::new(),
                    error: Some(why),
                });
                if up_send.send(&refusal).await.is_ok() {
                    let _ = up_send.finish();
                    let _ = up_send.stopped().await;
                }
                return;
            }
        };
        let answer = Message::StageReady(StageReady {
            stages,
            error: None,
        });
        if let Err(e) = up_send.send(&answer).await {
            tracing::info!("chain ended before it started: {e}");
            return;
        }
        tracing::info!(epoch = open.epoch, "serving a pipeline chain");
        let why = self.relay(open.epoch, up_send, up_recv, down, &token).await;
        token.cancel();
        tracing::info!(epoch = open.epoch, "pipeline chain ended: {why}");
    }

    /// Checks the terms, opens the chain below and makes fresh pools. Returns the downstream
    /// stream and the layer ranges of this stage and those below.
    async fn open(
        &self,
        open: &StageOpen,
        token: &CancellationToken,
    ) -> Result<(Option<super::link::Downstream>, Vec<(u32, u32)>), String> {
        let pools = self.check(open)?;
        let own = (self.layers.start as u32, self.layers.end as u32);
        let (down, mut stages) = match &self.cfg.next {
            None => (None, Vec::new()),
            Some(next) => {
                let opened = tokio::select! {
                    _ = token.cancelled() => return Err(format!("{}: a newer chain replaced this one", self.name())),
                    d = open_chain(&self.endpoint, next, open, &self.cfg.limits) => d,
                };
                let d = opened.map_err(|e| format!("{}: the next stage: {e}", self.name()))?;
                let below = d.stages.clone();
                (Some(d), below)
            }
        };
        let exec = self.exec.clone();
        let reset = tokio::task::spawn_blocking(move || lock(&exec).reset_pools(pools))
            .await
            .map_err(|e| format!("{}: allocating pools: {e}", self.name()))?;
        reset.map_err(|e| format!("{}: allocating pools: {e}", self.name()))?;
        stages.insert(0, own);
        Ok((down, stages))
    }

    /// Runs the chain: steps in from above, computed, out below (or answered); results from
    /// below relayed up. Returns why it ended.
    async fn relay(
        &self,
        epoch: u64,
        mut up_send: MessageSender,
        mut up_recv: MessageReceiver,
        down: Option<super::link::Downstream>,
        token: &CancellationToken,
    ) -> String {
        let (jobs_tx, jobs_rx) = mpsc::channel::<StageStep>(STEP_QUEUE);
        let (up_tx, mut up_rx) = mpsc::channel::<StageResult>(2 * STEP_QUEUE);
        let (down_tx, mut down_rx) = mpsc::channel::<StageStep>(STEP_QUEUE);
        // Bytes this stage moved per (step, micro), added to the result on its way up.
        let moved: Arc<Mutex<HashMap<(u64, u32), u64>>> = Arc::default();
        let compute = self.spawn_compute(jobs_rx, up_tx.clone(), down_tx, moved.clone(), token);
        let name = self.name();

        let from_above = async {
            loop {
                match up_recv.recv().await {
                    Ok(Some(Message::StageStep(step))) if step.epoch == epoch => {
                        if jobs_tx.send(step).await.is_err() {
                            return "the compute thread stopped".to_string();
                        }
                    }
                    Ok(Some(Message::StageStep(step))) => {
                        return format!(
                            "a step of epoch {} on the chain of epoch {epoch}",
                            step.epoch
                        );
                    }
                    Ok(Some(other)) => return format!("unexpected {} from above", other.kind()),
                    Ok(None) => return "the stage above closed the chain".to_string(),
                    Err(e) => return format!("the stage above: {e}"),
                }
            }
        };
        let to_above = async {
            while let Some(r) = up_rx.recv().await {
                if let Err(e) = up_send.send(&Message::StageResult(r)).await {
                    return format!("answering the stage above: {e}");
                }
            }
            "the compute thread stopped".to_string()
        };
        let below = async {
            let Some(down) = down else {
                return std::future::pending::<String>().await;
            };
            let super::link::Downstream {
                mut send,
                mut recv,
                conn,
                ..
            } = down;
            let to_below = async {
                while let Some(step) = down_rx.recv().await {
                    if let Err(e) = send.send(&Message::StageStep(step)).await {
                        return format!("the next stage: {e}");
                    }
                }
                "the compute thread stopped".to_string()
            };
            let from_below = async {
                loop {
                    let mut r = match recv_result(&mut recv, "the next stage").await {
                        Ok(r) => r,
                        Err(why) => return why,
                    };
                    r.transfer_bytes += lock(&moved).remove(&(r.step, r.micro)).unwrap_or(0);
                    if up_tx.send(r).await.is_err() {
                        return "the chain is ending".to_string();
                    }
                }
            };
            let why = tokio::select! {
                w = to_below => w,
                r = from_below => r,
            };
            conn.close(quinn::VarInt::from_u32(CHAIN_ENDED), why.as_bytes());
            why
        };
        let why = tokio::select! {
            w = from_above => w,
            w = to_above => w,
            w = below => w,
            _ = token.cancelled() => "a newer chain replaced this one, or the node is stopping".to_string(),
        };
        token.cancel();
        up_send.reset(CHAIN_ENDED);
        up_recv.stop(CHAIN_ENDED);
        drop(compute);
        format!("{name}: {why}")
    }

    /// The thread that computes this chain's micro-batches, in order.
    fn spawn_compute(
        &self,
        mut jobs: mpsc::Receiver<StageStep>,
        up: mpsc::Sender<StageResult>,
        down: mpsc::Sender<StageStep>,
        moved: Arc<Mutex<HashMap<(u64, u32), u64>>>,
        token: &CancellationToken,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let exec = self.exec.clone();
        let token = token.clone();
        let name = self.name();
        std::thread::Builder::new()
            .name(format!("stage-{}", self.cfg.id))
            .spawn(move || {
                while let Some(step) = jobs.blocking_recv() {
                    let mut exec = lock(&exec);
                    // Checked under the lock: a newer chain resets the pools under it.
                    if token.is_cancelled() {
                        return;
                    }
                    let computed = compute(&mut **exec, step, &name);
                    drop(exec);
                    let sent = match computed {
                        Computed::Forward(step, bytes) => {
                            lock(&moved).insert((step.step, step.micro), bytes);
                            down.blocking_send(step).is_ok()
                        }
                        Computed::Answer(r) => up.blocking_send(r).is_ok(),
                    };
                    if !sent {
                        return;
                    }
                }
            })
    }
}

/// One micro-batch through this stage.
fn compute(exec: &mut dyn StageExecutor, mut step: StageStep, name: &str) -> Computed {
    let plan = match wire::plan_from_wire(&step.copies, &step.items) {
        Ok(p) => p,
        Err(e) => return Computed::Answer(wire::failed(&step, format!("{name}: {e}"))),
    };
    match exec.run_stage(&plan, StageInput::Hidden(&step.hidden)) {
        Ok((StageOutput::Hidden(out), bytes)) => {
            step.hidden = out;
            Computed::Forward(step, bytes)
        }
        Ok((StageOutput::Sampled { tokens, logits }, bytes)) => Computed::Answer(StageResult {
            tokens,
            logits,
            transfer_bytes: bytes,
            error: None,
            ..wire::failed(&step, String::new())
        }),
        Err(e) => Computed::Answer(wire::failed(&step, format!("{name}: {e}"))),
    }
}
