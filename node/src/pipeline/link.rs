//! Links down a chain: [`open_chain`] opens the `Stage` stream to the next stage and waits for
//! its `StageReady`; [`spawn_driver_link`] keeps the driver's chain open (reopening it with
//! backoff when it breaks) and bridges it to the [`PipelineExecutor`](super::PipelineExecutor),
//! which runs on the engine's thread and blocks on it.

use super::wire;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;
use strata_transport::proto::{Message, StageOpen, StageResult, StageStep};
use strata_transport::stream::{self, MessageReceiver, MessageSender};
use strata_transport::tls::{self, SERVER_NAME};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Steps queued for the link task at most (micro-batches of a few steps).
pub const STEP_QUEUE: usize = 64;
/// Results queued for the executor at most. The executor has at most `STEP_QUEUE`
/// micro-batches in flight, so a full queue means a stage answered what it was not asked.
pub const RESULT_QUEUE: usize = 2 * STEP_QUEUE;
/// First pause before reopening a broken chain; doubles up to [`REOPEN_BACKOFF_MAX`].
const REOPEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The next stage of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextStage {
    pub addr: SocketAddr,
    /// Its certificate's member name, checked on connect.
    pub member: String,
}

/// Bounds of a chain link.
#[derive(Debug, Clone, Copy)]
pub struct LinkLimits {
    /// Largest frame on a `Stage` stream, bytes (activations of a micro-batch).
    pub max_frame_bytes: usize,
    /// How long the next stage may take to accept a connection.
    pub connect_timeout: Duration,
    /// How long the chain below may take to answer `StageOpen` (each stage opens its own
    /// downstream link first).
    pub open_timeout: Duration,
}

/// An open `Stage` stream to the next stage.
pub struct Downstream {
    pub send: MessageSender,
    pub recv: MessageReceiver,
    /// `(first, end)` layers of each stage below, in chain order.
    pub stages: Vec<(u32, u32)>,
    /// Keeps the connection open while the stream is in use.
    pub conn: quinn::Connection,
}

/// Connects to `next`, checks who answered, sends `open` and waits for the chain below to be
/// ready. The error says which step failed.
pub async fn open_chain(
    endpoint: &quinn::Endpoint,
    next: &NextStage,
    open: &StageOpen,
    limits: &LinkLimits,
) -> Result<Downstream, String> {
    let at = |e: &dyn std::fmt::Display| format!("stage {} at {}: {e}", next.member, next.addr);
    let connecting = endpoint
        .connect(next.addr, SERVER_NAME)
        .map_err(|e| at(&e))?;
    let conn = tokio::time::timeout(limits.connect_timeout, connecting)
        .await
        .map_err(|_| {
            at(&format!(
                "no connection within {:?}",
                limits.connect_timeout
            ))
        })?
        .map_err(|e| at(&e))?;
    let peer = tls::peer_identity(&conn).map(|p| p.member);
    if peer.as_deref() != Some(next.member.as_str()) {
        conn.close(quinn::VarInt::from_u32(1), b"unexpected peer");
        return Err(at(&format!(
            "the certificate names {}, not {}",
            peer.as_deref().unwrap_or("no member"),
            next.member
        )));
    }
    let (mut send, mut recv) = stream::pair(
        conn.open_bi().await.map_err(|e| at(&e))?,
        limits.max_frame_bytes,
    );
    send.send(&Message::StageOpen(open.clone()))
        .await
        .map_err(|e| at(&e))?;
    let answer = tokio::time::timeout(limits.open_timeout, recv.recv())
        .await
        .map_err(|_| at(&format!("no StageReady within {:?}", limits.open_timeout)))?
        .map_err(|e| at(&e))?;
    match answer {
        Some(Message::StageReady(ready)) => match ready.error {
            Some(why) => Err(why),
            None if ready.stages.is_empty() => Err(at(&"StageReady names no stages")),
            None => Ok(Downstream {
                send,
                recv,
                stages: ready.stages,
                conn,
            }),
        },
        Some(other) => Err(at(&format!("answered {} to StageOpen", other.kind()))),
        None => Err(at(&"closed the stream without answering")),
    }
}

/// The next `StageResult` from the stage below (`from` names it), or why the stream can give
/// no more: it ended, broke, or carried another message.
pub(super) async fn recv_result(
    recv: &mut MessageReceiver,
    from: &str,
) -> Result<StageResult, String> {
    match recv.recv().await {
        Ok(Some(Message::StageResult(r))) => Ok(r),
        Ok(Some(other)) => Err(format!("{from} sent {} on the stage stream", other.kind())),
        Ok(None) => Err(format!("{from} closed the stage stream")),
        Err(e) => Err(format!("{from}: {e}")),
    }
}

/// Where the driver's chain stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainState {
    /// Not open yet, or broken and being reopened; `last_error` says why.
    Connecting {
        attempts: u32,
        last_error: Option<String>,
    },
    /// Open: `stages` are the layer ranges below the driver.
    Up { epoch: u64, stages: Vec<(u32, u32)> },
}

/// What the link task tells the executor.
#[derive(Debug)]
pub enum LinkEvent {
    Result(StageResult),
    /// The chain of `epoch` broke: its steps in flight will not be answered.
    Lost {
        epoch: u64,
        why: String,
    },
}

/// The executor's side of the driver's link.
pub struct DriverLink {
    pub steps: mpsc::Sender<StageStep>,
    pub results: Receiver<LinkEvent>,
    pub state: watch::Receiver<ChainState>,
    /// Asks the task to drop the chain and open a fresh one (a stage stopped answering).
    pub reset: Arc<Notify>,
}

/// Starts the task that keeps the driver's chain open. `open.epoch` is replaced by each
/// opening's own. `check` vets the stages below (their layout); a refusal counts as a failed
/// opening. Runs until `shutdown` is cancelled or the executor drops its side.
pub fn spawn_driver_link(
    runtime: &tokio::runtime::Handle,
    endpoint: quinn::Endpoint,
    next: NextStage,
    open: StageOpen,
    limits: LinkLimits,
    check: impl Fn(&[(u32, u32)]) -> Result<(), String> + Send + 'static,
    shutdown: CancellationToken,
) -> DriverLink {
    let (steps_tx, steps_rx) = mpsc::channel(STEP_QUEUE);
    let (results_tx, results_rx) = std::sync::mpsc::sync_channel(RESULT_QUEUE);
    let (state_tx, state_rx) = watch::channel(ChainState::Connecting {
        attempts: 0,
        last_error: None,
    });
    let reset = Arc::new(Notify::new());
    let task = DriverTask {
        endpoint,
        next,
        open,
        limits,
        steps: steps_rx,
        results: results_tx,
        state: state_tx,
        reset: reset.clone(),
        shutdown,
    };
    runtime.spawn(task.run(check));
    DriverLink {
        steps: steps_tx,
        results: results_rx,
        state: state_rx,
        reset,
    }
}

struct DriverTask {
    endpoint: quinn::Endpoint,
    next: NextStage,
    open: StageOpen,
    limits: LinkLimits,
    steps: mpsc::Receiver<StageStep>,
    results: SyncSender<LinkEvent>,
    state: watch::Sender<ChainState>,
    reset: Arc<Notify>,
    shutdown: CancellationToken,
}

impl DriverTask {
    async fn run(mut self, check: impl Fn(&[(u32, u32)]) -> Result<(), String>) {
        let mut backoff = REOPEN_BACKOFF_MIN;
        let mut attempts = 0u32;
        let mut epoch = 0u64;
        loop {
            if self.steps.is_closed() {
                return; // the executor is gone
            }
            epoch += 1;
            attempts = attempts.saturating_add(1);
            let mut open = self.open.clone();
            open.epoch = epoch;
            let opened = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                o = open_chain(&self.endpoint, &self.next, &open, &self.limits) => o,
            };
            let why = match opened.and_then(|d| check(&d.stages).map(|()| d)) {
                Err(why) => why,
                Ok(down) => {
                    tracing::info!(epoch, stages = ?down.stages, "pipeline chain open");
                    backoff = REOPEN_BACKOFF_MIN;
                    attempts = 0;
                    self.state.send_replace(ChainState::Up {
                        epoch,
                        stages: down.stages.clone(),
                    });
                    let why = self.serve(down, epoch).await;
                    if self.shutdown.is_cancelled() || self.steps.is_closed() {
                        return;
                    }
                    tracing::warn!(epoch, "pipeline chain lost: {why}");
                    // The executor drains results in order; this one tells it the rest of
                    // the epoch will not come. A full queue already holds an error for it.
                    let _ = self.results.try_send(LinkEvent::Lost {
                        epoch,
                        why: why.clone(),
                    });
                    why
                }
            };
            self.state.send_replace(ChainState::Connecting {
                attempts,
                last_error: Some(why),
            });
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(REOPEN_BACKOFF_MAX);
        }
    }

    /// Relays steps down and results up until the chain breaks; returns why it did.
    async fn serve(&mut self, down: Downstream, epoch: u64) -> String {
        let Downstream {
            mut send,
            mut recv,
            conn,
            ..
        } = down;
        let results = self.results.clone();
        let results_up = self.results.clone();
        let (reset, shutdown) = (self.reset.clone(), self.shutdown.clone());
        let steps = &mut self.steps;
        let writer = async {
            while let Some(step) = steps.recv().await {
                if step.epoch != epoch {
                    // Sent for a chain that is gone: answer it here so nobody waits.
                    let stale = wire::failed(&step, "the pipeline chain was reopened".into());
                    if results.try_send(LinkEvent::Result(stale)).is_err() {
                        return "the executor's result queue is full".to_string();
                    }
                    continue;
                }
                if let Err(e) = send.send(&Message::StageStep(step)).await {
                    return format!("sending a step to stage 1: {e}");
                }
            }
            "the driver stopped".to_string()
        };
        let reader = async {
            loop {
                let r = match recv_result(&mut recv, "stage 1").await {
                    Ok(r) => r,
                    Err(why) => return why,
                };
                match results_up.try_send(LinkEvent::Result(r)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        return "stage 1 answered more than it was asked".to_string();
                    }
                    Err(TrySendError::Disconnected(_)) => return "the driver stopped".to_string(),
                }
            }
        };
        let why = tokio::select! {
            w = writer => w,
            r = reader => r,
            _ = reset.notified() => "reset by the driver (a stage stopped answering)".to_string(),
            _ = shutdown.cancelled() => "shutting down".to_string(),
        };
        conn.close(quinn::VarInt::from_u32(1), why.as_bytes());
        why
    }
}
