//! On the GPU, moving KV is lossless: the engine's greedy tokens are the same in `baseline` and
//! `layerwise`, with no, about half or nearly all of the probe's layers offloaded at prefill,
//! whether offloaded layers are reloaded (`Never`) or streamed through staging during decode
//! (`Always`, and `Auto`, which streams on cuda since its copies overlap compute), and with
//! chunked prefill.

use super::gpu::gpu;
use super::pair::rel_err;
use super::scenario::{Outcome, RunConfig, Scenario};
use strata_node::exec::cpu::sample::argmax;
use strata_node::sched::{Mode, StreamDecode};

/// Runs that saw the same tokens differ in logits only by how their rows were batched.
const SAME_TOL: f64 = 5e-3;

fn rc(mode: Mode, resident: usize, stream: StreamDecode, chunk: usize) -> RunConfig {
    RunConfig {
        mode,
        resident,
        stream,
        chunk,
    }
}

/// Largest minus second largest logit.
fn top2_margin(logits: &[f32]) -> f32 {
    let best = argmax(logits) as usize;
    let second = logits
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &l)| l)
        .fold(f32::NEG_INFINITY, f32::max);
    logits[best] - second
}

fn assert_same(reference: &Outcome, r: &Outcome, what: &str) {
    assert_eq!(
        r.blocker_tokens, reference.blocker_tokens,
        "{what}: the blocker's tokens differ from the reference run's"
    );
    let (want, got) = (&reference.probe_tokens, &r.probe_tokens);
    if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
        let (a, b) = (&reference.probe_logits[i], &r.probe_logits[i]);
        panic!(
            "{what}: probe token {i} is {} where the reference run has {}; there the \
             reference's top-2 logit margin is {:.3e} and the logits differ by \
             ‖Δ‖/‖ref‖ = {:.3e}\n reference: {want:?}\n this run:  {got:?}",
            got[i],
            want[i],
            top2_margin(a),
            rel_err(b, a)
        );
    }
    let mut worst = 0f64;
    for (i, (a, b)) in reference
        .probe_logits
        .iter()
        .zip(&r.probe_logits)
        .enumerate()
    {
        let rel = rel_err(b, a);
        assert!(
            rel < SAME_TOL,
            "{what}: logits of probe token {i} off the reference run's by ‖Δ‖/‖ref‖ = \
             {rel:.3e} (limit {SAME_TOL:e})"
        );
        worst = worst.max(rel);
    }
    eprintln!("{what}: tokens identical, largest logits ‖Δ‖/‖ref‖ {worst:.3e}");
}

/// The run really offloaded `layers` of the probe's layers and moved KV across tiers.
fn assert_offloaded(r: &Outcome, layers: usize, what: &str) {
    assert_eq!(r.offloaded_layers, layers, "{what}: offloaded layers");
    assert!(r.transfer_bytes > 0, "{what}: nothing crossed tiers");
    assert!(
        r.host_blocks_peak > 0,
        "{what}: no host block was ever held"
    );
    eprintln!(
        "{what}: {layers} layers offloaded, {} bytes moved, {} host blocks at most, {} \
         streamed decodes",
        r.transfer_bytes, r.host_blocks_peak, r.streamed_decodes
    );
}

#[test]
fn offloading_during_prefill_is_lossless() {
    if !gpu() {
        return;
    }
    let s = Scenario::new(401);
    let layers = s.cfg.num_layers;
    // No offload: the pool fits everything.
    let reference = s.run(rc(Mode::Layerwise, layers, StreamDecode::Never, 0));
    assert_eq!(reference.offloaded_layers, 0, "reference: offloaded layers");
    assert_eq!(reference.transfer_bytes, 0, "reference: bytes across tiers");
    let baseline = s.run(rc(Mode::Baseline, layers / 2, StreamDecode::Never, 0));
    assert_eq!(baseline.offloaded_layers, 0, "baseline never offloads");
    assert_same(&reference, &baseline, "baseline");
    for (resident, label) in [(layers / 2, "about half"), (1, "nearly all")] {
        for stream in [
            StreamDecode::Never,
            StreamDecode::Always,
            StreamDecode::Auto,
        ] {
            let what = format!("{label} offloaded, stream_decode {stream:?}");
            let r = s.run(rc(Mode::Layerwise, resident, stream, 0));
            assert_offloaded(&r, layers - resident, &what);
            if stream == StreamDecode::Never {
                assert_eq!(
                    r.streamed_decodes, 0,
                    "{what}: a decode streamed under the reload policy"
                );
            } else {
                assert!(
                    r.streamed_decodes > 0,
                    "{what}: no decode streamed its offloaded layers"
                );
            }
            assert_same(&reference, &r, &what);
        }
    }
}

#[test]
fn chunked_prefill_is_lossless() {
    if !gpu() {
        return;
    }
    let s = Scenario::new(402);
    let layers = s.cfg.num_layers;
    let reference = s.run(rc(Mode::Layerwise, layers, StreamDecode::Never, 0));
    // 83 prompt tokens in chunks of 16 (one block) and of 32: resident, and mostly offloaded
    // with offloaded layers staged chunk after chunk, then reloaded or streamed.
    for chunk in [16, 32] {
        for (resident, stream) in [
            (layers, StreamDecode::Never),
            (1, StreamDecode::Never),
            (1, StreamDecode::Auto),
        ] {
            let what = format!("chunk {chunk}, {resident} resident, stream_decode {stream:?}");
            let r = s.run(rc(Mode::Layerwise, resident, stream, chunk));
            if resident < layers {
                assert_offloaded(&r, layers - resident, &what);
            } else {
                assert_eq!(r.offloaded_layers, 0, "{what}: offloaded layers");
            }
            assert_same(&reference, &r, &what);
        }
        let b = s.run(rc(Mode::Baseline, layers, StreamDecode::Never, chunk));
        assert_same(&reference, &b, &format!("baseline, chunk {chunk}"));
    }
}
