//! The engine actor: an OS thread that owns the [`Engine`] (steps are blocking CPU work), a
//! cloneable [`EngineHandle`] to talk to it over a bounded command channel.
//!
//! The loop: when the engine is idle it blocks on the command channel (no busy loop); otherwise
//! it drains the commands that are queued, runs one step at `now` (time since the node's epoch)
//! and routes the step's events. On `sim` the thread sleeps until each step's modelled end
//! before it delivers the events, so the node behaves in real time.
//!
//! Each request has its own channel of capacity `max_tokens + 2`: at most one `Admitted`,
//! `max_tokens` tokens and one `Finished` ever go in, so a send can never find it full. A
//! request whose receiver is gone is cancelled in the engine.
//!
//! Outputs besides the events: [`EngineStats`] on a `watch` channel (notified when the waiting
//! or running count changes; the other figures are fresh whenever read) and prefix-cache
//! changes as batches on a `broadcast` channel.

use crate::engine::{Engine, StepReport};
use crate::kv::{KvEvent, Tier};
use crate::sched::{Event, Request, SeqId, SubmitError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strata_transport::proto::{RequestId, WireKvEvent};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Commands queued for the engine thread at most.
pub(crate) const COMMAND_CAPACITY: usize = 1024;
/// Prefix-cache events in one batch at most.
pub(crate) const KV_BATCH_MAX: usize = 4096;
/// Batches a subscriber may fall behind before it is told it lagged.
const KV_BROADCAST_CAPACITY: usize = 1024;
/// Pause after a step that did nothing although requests are queued (admission waits on
/// something only time changes); keeps such a state from spinning.
const STALLED_BACKOFF: Duration = Duration::from_millis(1);

/// A batch of prefix-cache changes, shared by every subscriber.
pub(crate) type KvBatch = Arc<[WireKvEvent]>;

/// Load figures the engine thread publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EngineStats {
    pub waiting: u32,
    pub running: u32,
    /// Prompt tokens not yet prefilled (waiting requests and chunked prefills under way).
    pub waiting_prefill_tokens: u64,
    /// Σ over those requests of the cost profile's prefill time of their tokens, seconds.
    pub pending_prefill_s: f64,
    /// Free plus evictable-cache blocks per tier.
    pub gpu_free_blocks: u64,
    pub host_free_blocks: u64,
    /// Node clock at which the step under way ends (estimated on `cpu` from the previous
    /// step, modelled on `sim`); in the past when idle.
    pub busy_until: Duration,
}

enum Command {
    Submit {
        req: Request,
        events: mpsc::Sender<Event>,
        reply: oneshot::Sender<Result<(), SubmitError>>,
    },
    Cancel(SeqId),
    KvSnapshot(oneshot::Sender<Vec<WireKvEvent>>),
    Shutdown,
}

/// Why a submission did not reach the queue.
#[derive(Debug)]
pub(crate) enum Refused {
    Submit(SubmitError),
    /// The engine thread has stopped.
    Stopped,
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub(crate) struct EngineHandle {
    cmds: mpsc::Sender<Command>,
    next_seq: Arc<AtomicU64>,
    epoch: Instant,
    stats: watch::Receiver<EngineStats>,
    kv: broadcast::Sender<KvBatch>,
}

impl EngineHandle {
    /// The node clock.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Queues `req` under a fresh sequence id (its `id` and `arrival` are set here); returns
    /// the id and the request's events.
    pub async fn submit(
        &self,
        mut req: Request,
    ) -> Result<(SeqId, mpsc::Receiver<Event>), Refused> {
        req.id = RequestId(self.next_seq.fetch_add(1, Ordering::Relaxed));
        req.arrival = self.now();
        let id = req.id;
        let (events, rx) = mpsc::channel(req.max_tokens.saturating_add(2));
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Submit { req, events, reply };
        self.cmds.send(cmd).await.map_err(|_| Refused::Stopped)?;
        match answer.await {
            Ok(Ok(())) => Ok((id, rx)),
            Ok(Err(e)) => Err(Refused::Submit(e)),
            Err(_) => Err(Refused::Stopped),
        }
    }

    /// Cancels a sequence; its `Finished` event follows on its channel.
    pub async fn cancel(&self, seq: SeqId) {
        // A stopped engine has cancelled everything already.
        let _ = self.cmds.send(Command::Cancel(seq)).await;
    }

    /// What the prefix cache holds now, as `Stored` events (`None`: the engine stopped).
    pub async fn kv_snapshot(&self) -> Option<Vec<WireKvEvent>> {
        let (reply, answer) = oneshot::channel();
        self.cmds.send(Command::KvSnapshot(reply)).await.ok()?;
        answer.await.ok()
    }

    pub fn stats(&self) -> watch::Receiver<EngineStats> {
        self.stats.clone()
    }

    /// Prefix-cache changes from now on.
    pub fn kv_events(&self) -> broadcast::Receiver<KvBatch> {
        self.kv.subscribe()
    }

    /// Asks the engine thread to cancel everything and stop.
    pub async fn shutdown(&self) {
        let _ = self.cmds.send(Command::Shutdown).await;
    }
}

/// Starts the engine thread. `realtime`: sleep until each step's modelled end (`sim`).
pub(crate) fn spawn(
    engine: Engine,
    realtime: bool,
    name: &str,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let epoch = Instant::now();
    let (cmds, rx) = mpsc::channel(COMMAND_CAPACITY);
    let (stats_tx, stats) = watch::channel(EngineStats::default());
    let (kv, _) = broadcast::channel(KV_BROADCAST_CAPACITY);
    let actor = Actor {
        engine,
        epoch,
        realtime,
        cmds: rx,
        requests: HashMap::new(),
        stats: stats_tx,
        kv: kv.clone(),
        last_step: Duration::ZERO,
    };
    let thread = std::thread::Builder::new()
        .name(format!("engine-{name}"))
        .spawn(move || actor.run())?;
    let handle = EngineHandle {
        cmds,
        next_seq: Arc::new(AtomicU64::new(1)),
        epoch,
        stats,
        kv,
    };
    Ok((handle, thread))
}

struct Actor {
    engine: Engine,
    epoch: Instant,
    realtime: bool,
    cmds: mpsc::Receiver<Command>,
    requests: HashMap<SeqId, mpsc::Sender<Event>>,
    stats: watch::Sender<EngineStats>,
    kv: broadcast::Sender<KvBatch>,
    last_step: Duration,
}

fn wire(e: &KvEvent) -> WireKvEvent {
    match *e {
        KvEvent::Stored { tier, hash, layer } => WireKvEvent::Stored {
            tier: tier.index() as u8,
            hash,
            layer,
        },
        KvEvent::Removed { tier, hash, layer } => WireKvEvent::Removed {
            tier: tier.index() as u8,
            hash,
            layer,
        },
    }
}

impl Actor {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn run(mut self) {
        tracing::debug!(realtime = self.realtime, "engine thread started");
        'outer: loop {
            if !self.engine.has_work() {
                self.publish(self.now());
                match self.cmds.blocking_recv() {
                    Some(cmd) => {
                        if !self.handle(cmd) {
                            break 'outer;
                        }
                    }
                    None => break 'outer,
                }
            }
            loop {
                match self.cmds.try_recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            break 'outer;
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => break 'outer,
                }
            }
            if self.engine.has_work() {
                self.step();
            }
        }
        self.cancel_all();
        self.publish(self.now());
        tracing::debug!("engine thread stopped");
    }

    /// Handles one command; `false` to stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit { req, events, reply } => {
                let id = req.id;
                let result = self.engine.submit(req);
                let accepted = result.is_ok();
                if accepted {
                    self.requests.insert(id, events);
                }
                if reply.send(result).is_err() && accepted {
                    // The submitter went away meanwhile.
                    self.requests.remove(&id);
                    let events = self.engine.cancel(id, self.now());
                    self.dispatch(events);
                }
            }
            Command::Cancel(seq) => {
                let events = self.engine.cancel(seq, self.now());
                self.dispatch(events);
            }
            Command::KvSnapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn snapshot(&self) -> Vec<WireKvEvent> {
        self.engine
            .kv()
            .index
            .iter()
            .map(|(key, block)| WireKvEvent::Stored {
                tier: block.tier.index() as u8,
                hash: key.hash,
                layer: key.layer,
            })
            .collect()
    }

    fn step(&mut self) {
        let now = self.now();
        self.publish(now + self.last_step);
        let report = self.engine.step(now);
        let end = now + report.elapsed;
        if self.realtime {
            self.publish(end);
            if let Some(rest) = end.checked_sub(self.now()) {
                std::thread::sleep(rest);
            }
        }
        self.last_step = report.elapsed;
        let idle = is_idle(&report);
        self.dispatch(report.events);
        self.broadcast(&report.kv_events);
        if idle {
            std::thread::sleep(STALLED_BACKOFF);
        }
    }

    /// Routes events to their requests; cancels requests nobody listens to any more.
    fn dispatch(&mut self, events: Vec<Event>) {
        let mut gone = Vec::new();
        for ev in events {
            let (seq, last) = match &ev {
                Event::Admitted { .. } => continue,
                Event::Token { seq, .. } => (*seq, false),
                Event::Finished { seq, .. } => (*seq, true),
            };
            let Some(tx) = self.requests.get(&seq) else {
                continue;
            };
            match tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(seq),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Capacity is max_tokens + 2: this is a bug, not load.
                    tracing::error!(%seq, "event channel full; cancelling the request");
                    gone.push(seq);
                }
            }
            if last {
                self.requests.remove(&seq);
            }
        }
        for seq in gone {
            if self.requests.remove(&seq).is_some() {
                tracing::debug!(%seq, "receiver gone; cancelling");
                let events = self.engine.cancel(seq, self.now());
                self.dispatch(events);
            }
        }
    }

    fn broadcast(&self, events: &[KvEvent]) {
        for chunk in events.chunks(KV_BATCH_MAX) {
            let batch: KvBatch = chunk.iter().map(wire).collect();
            // No subscriber is not an error.
            let _ = self.kv.send(batch);
        }
    }

    fn cancel_all(&mut self) {
        let seqs: Vec<SeqId> = self.requests.keys().copied().collect();
        for seq in seqs {
            let events = self.engine.cancel(seq, self.now());
            self.dispatch(events);
        }
    }

    fn publish(&self, busy_until: Duration) {
        let sched = self.engine.scheduler();
        let kv = self.engine.kv();
        let layers = kv.layout().layers;
        let cost = sched.cost();
        let (mut tokens, mut seconds) = (0u64, 0.0);
        for n in sched.pending_prefill_tokens() {
            tokens += n as u64;
            seconds += cost.prefill_s(n, 0, layers);
        }
        let stats = EngineStats {
            waiting: sched.waiting_len() as u32,
            running: sched.running_len() as u32,
            waiting_prefill_tokens: tokens,
            pending_prefill_s: seconds,
            gpu_free_blocks: kv.available(Tier::Gpu) as u64,
            host_free_blocks: kv.available(Tier::Host) as u64,
            busy_until,
        };
        self.stats.send_if_modified(|cur| {
            let changed = (cur.waiting, cur.running) != (stats.waiting, stats.running);
            *cur = stats;
            changed
        });
    }
}

/// A step that planned nothing and reported nothing.
fn is_idle(r: &StepReport) -> bool {
    r.prefills == 0 && r.decodes == 0 && r.copies == 0 && r.events.is_empty()
}
