//! A subscription stream: `Subscribe` in; `Hello` once, a first `Load`, the prefix cache's
//! contents as `KvEvents` (a snapshot, as `Stored` events), then `Load` every `load_report_ms`
//! and promptly when the waiting or running count changes (at most one extra per
//! [`CHANGE_REPORT_MIN`]), and `KvEvents` as the cache changes.
//!
//! **Predicted queue wait** of a new request, reported in every `Load`:
//!
//! `predicted_queue_wait = max(0, busy_until − now) + Σ_{r pending} prefill_s(n_r, 0, L)`
//!
//! where `busy_until` is the end of the step under way (modelled on `sim`; the previous step's
//! duration on `cpu`), the sum runs over the waiting requests and chunked prefills under way
//! with `n_r` prompt tokens not yet prefilled, and `prefill_s` is the node's cost profile over
//! its `L` layers (step overhead included). It ignores prefix-cache hits (an upper bound there)
//! and decode steps interleaved with those prefills (a lower bound there).
//!
//! The subscription ends when the peer finishes or resets its side, on shutdown, or with code
//! [`LAGGED`](super::codes::LAGGED) when the subscriber fell too far behind the cache events.

use super::codes;
use super::engine_loop::{EngineStats, KV_BATCH_MAX, KvBatch};
use super::server::Shared;
use quinn::{RecvStream, SendStream, VarInt};
use std::pin::pin;
use std::time::Duration;
use strata_transport::frame::{self, FrameError};
use strata_transport::proto::{LoadReport, Message};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, MissedTickBehavior};

/// Least time between two reports sent because the counts changed.
pub(crate) const CHANGE_REPORT_MIN: Duration = Duration::from_millis(10);

struct Reporter<'a> {
    shared: &'a Shared,
    send: SendStream,
    seq: u64,
    /// When a change may be reported next.
    next_change_at: Instant,
}

impl Reporter<'_> {
    fn load(&mut self, stats: &EngineStats) -> Message {
        let now = self.shared.engine.now();
        let busy = stats.busy_until.saturating_sub(now).as_secs_f64();
        let wait_s = busy + stats.pending_prefill_s;
        self.seq += 1;
        Message::Load(LoadReport {
            seq: self.seq,
            at_us: now.as_micros() as u64,
            waiting: stats.waiting,
            running: stats.running,
            waiting_prefill_tokens: stats.waiting_prefill_tokens,
            gpu_free_blocks: stats.gpu_free_blocks,
            host_free_blocks: stats.host_free_blocks,
            predicted_queue_wait_us: (wait_s * 1e6).round() as u64,
            cost: self.shared.cost,
        })
    }

    async fn send_load(&mut self, stats: &EngineStats) -> Result<(), FrameError> {
        let msg = self.load(stats);
        self.next_change_at = Instant::now() + CHANGE_REPORT_MIN;
        frame::write_frame(&mut self.send, &msg).await
    }

    async fn send_kv(
        &mut self,
        events: &[strata_transport::proto::WireKvEvent],
    ) -> Result<(), FrameError> {
        for chunk in events.chunks(KV_BATCH_MAX) {
            frame::write_frame(&mut self.send, &Message::KvEvents(chunk.to_vec())).await?;
        }
        Ok(())
    }
}

/// Ends when the peer finishes, resets or sends anything on its side: why, and the code to
/// reset the stream with when the peer broke the protocol.
pub(crate) async fn peer_gone(recv: &mut RecvStream, limit: usize) -> (String, Option<u32>) {
    match frame::read_frame(recv, limit).await {
        Ok(None) => ("finished its side".into(), None),
        Ok(Some(m)) => (
            format!("sent {} on a subscription", m.kind()),
            Some(codes::UNEXPECTED),
        ),
        Err(FrameError::Io(e)) => (format!("went away ({e})"), None),
        Err(e) => (format!("sent a bad frame ({e})"), Some(codes::BAD_FRAME)),
    }
}

/// Serves one subscription whose `Subscribe` frame has been read.
pub(crate) async fn serve(shared: &Shared, router: String, send: SendStream, mut recv: RecvStream) {
    tracing::info!(%router, "subscribed");
    let result = run(shared, &router, send, &mut recv).await;
    match result {
        Ok(why) => tracing::info!(%router, "subscription ended: {why}"),
        Err(e) => tracing::info!(%router, "subscription ended: {e}"),
    }
}

async fn run(
    shared: &Shared,
    router: &str,
    send: SendStream,
    recv: &mut RecvStream,
) -> Result<String, FrameError> {
    let mut stats_rx = shared.engine.stats();
    // Subscribe to changes before taking the snapshot: nothing falls between the two (events
    // already in the snapshot may come again; replaying them in order is harmless).
    let mut kv_rx = shared.engine.kv_events();
    let mut r = Reporter {
        shared,
        send,
        seq: 0,
        next_change_at: Instant::now(),
    };
    frame::write_frame(&mut r.send, &Message::Hello(shared.info.clone())).await?;
    let stats = stats_rx.borrow_and_update().clone();
    r.send_load(&stats).await?;
    let Some(snapshot) = shared.engine.kv_snapshot().await else {
        return Ok("the engine stopped".into());
    };
    r.send_kv(&snapshot).await?;
    drop(snapshot);

    let mut tick = tokio::time::interval(Duration::from_millis(shared.load_report_ms));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.reset();
    let mut peer = pin!(peer_gone(recv, shared.limits.max_frame_bytes));
    // A change arrived before `next_change_at`: report it then.
    let mut change_pending = false;
    let why = loop {
        let change_at = r.next_change_at;
        tokio::select! {
            _ = shared.shutdown.cancelled() => break "the node is shutting down".to_string(),
            (why, code) = &mut peer => {
                if let Some(code) = code {
                    tracing::warn!(router, "subscriber {why}; closing the stream");
                    let _ = r.send.reset(VarInt::from_u32(code));
                }
                return Ok(format!("the subscriber {why}"));
            }
            _ = tick.tick() => {
                let stats = stats_rx.borrow_and_update().clone();
                change_pending = false;
                r.send_load(&stats).await?;
            }
            changed = stats_rx.changed(), if !change_pending => {
                if changed.is_err() {
                    break "the engine stopped".to_string();
                }
                if Instant::now() >= change_at {
                    let stats = stats_rx.borrow_and_update().clone();
                    r.send_load(&stats).await?;
                } else {
                    change_pending = true;
                }
            }
            _ = tokio::time::sleep_until(change_at), if change_pending => {
                change_pending = false;
                let stats = stats_rx.borrow_and_update().clone();
                r.send_load(&stats).await?;
            }
            batch = kv_rx.recv() => match batch {
                Ok(batch) => send_batch(&mut r, batch).await?,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(router, missed = n, "subscriber lagged behind the cache events; closing its stream");
                    let _ = r.send.reset(VarInt::from_u32(codes::LAGGED));
                    return Ok("lagged".into());
                }
                Err(RecvError::Closed) => break "the engine stopped".to_string(),
            },
        }
    };
    let _ = r.send.finish();
    Ok(why)
}

async fn send_batch(r: &mut Reporter<'_>, batch: KvBatch) -> Result<(), FrameError> {
    frame::write_frame(&mut r.send, &Message::KvEvents(batch.to_vec())).await
}
