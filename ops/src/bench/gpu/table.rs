//! The short table printed at the end of `strata bench gpu` (at most about 40 lines: it is what
//! the device machine's reply shows).

use super::report::{Direction, Report};
use std::fmt::Write;

const GIB: f64 = (1u64 << 30) as f64;

/// The table, one line per point, with the formulas and skipped points at the end.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = write_all(&mut s, r);
    s
}

fn write_all(s: &mut String, r: &Report) -> std::fmt::Result {
    let d = &r.device;
    writeln!(
        s,
        "{} (sm {}.{}, {:.1} GiB, {:.1} free) · {} bf16, blocks of {} tokens · median of {}",
        d.name,
        d.compute_capability.0,
        d.compute_capability.1,
        d.total_bytes as f64 / GIB,
        d.free_bytes as f64 / GIB,
        r.model,
        r.pools.block_tokens,
        r.repeats
    )?;
    let p = &r.peaks;
    writeln!(
        s,
        "peaks: GEMM {:.0} TFLOP/s · device copy {:.0} GB/s · H2D {:.1} GB/s · D2H {:.1} GB/s",
        p.gemm_tflops, p.device_copy_gbps, p.h2d_gbps, p.d2h_gbps
    )?;
    if !r.prefill.is_empty() {
        writeln!(
            s,
            "\n{:<7} {:>9} {:>10} {:>10} {:>9} {:>6}",
            "prefill", "tokens", "step ms", "tok/s", "TFLOP/s", "MFU"
        )?;
        for x in &r.prefill {
            writeln!(
                s,
                "{:>17} {:>10.2} {:>10.0} {:>9.1} {:>5.1}%",
                x.tokens,
                x.median_ms,
                x.tokens_per_s,
                x.achieved_tflops,
                100.0 * x.mfu
            )?;
        }
    }
    if !r.decode.is_empty() {
        writeln!(
            s,
            "\n{:<6} {:>6} {:>6} {:>10} {:>10} {:>9} {:>8} {:>8}",
            "decode", "batch", "ctx", "step ms", "tok/s", "GB read", "GB/s", "of copy"
        )?;
        for x in &r.decode {
            writeln!(
                s,
                "{:>13} {:>6} {:>10.3} {:>10.0} {:>9.2} {:>8.0} {:>7.1}%",
                x.batch,
                x.ctx,
                x.median_ms,
                x.tokens_per_s,
                (x.weight_bytes + x.kv_bytes) as f64 / 1e9,
                x.achieved_gbps,
                100.0 * x.fraction_of_device_copy
            )?;
        }
    }
    if !r.transfer.is_empty() {
        writeln!(
            s,
            "\n{:<8} {:>10}  {:<12} {:>5} {:>6} {:>8}",
            "transfer", "direction", "order", "MiB", "ms", "GB/s"
        )?;
        for x in &r.transfer {
            let dir = match x.direction {
                Direction::Offload => "offload",
                Direction::Reload => "reload",
            };
            writeln!(
                s,
                "{:>19}  {:<12} {:>5.0} {:>6.2} {:>8.1}",
                dir,
                x.order.name(),
                x.bytes as f64 / (1u64 << 20) as f64,
                x.median_ms,
                x.gbps
            )?;
        }
    }
    if !r.offload.is_empty() {
        writeln!(
            s,
            "\n{:>11} {:>6} {:>7} {:>9} {:>9} {:>7}",
            "offload", "tokens", "staged", "MiB out", "step ms", "× none"
        )?;
        for x in &r.offload {
            let ratio = x.ratio_to_none.map_or("-".into(), |v| format!("{v:.2}"));
            writeln!(
                s,
                "{:>11} {:>6} {:>7} {:>9.0} {:>9.2} {:>7}",
                x.offload.name(),
                x.tokens,
                x.staged_layers.len(),
                x.staged_bytes as f64 / (1u64 << 20) as f64,
                x.median_ms,
                ratio
            )?;
        }
    }
    if !r.streamed.is_empty() {
        writeln!(
            s,
            "\n{:<8} {:>5} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "streamed",
            "batch",
            "ctx",
            "GB in",
            "step ms",
            "resident",
            "copy-in",
            "serial",
            "overlap"
        )?;
        for x in &r.streamed {
            writeln!(
                s,
                "{:>14} {:>6} {:>7.2} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7.0}%",
                x.batch,
                x.ctx,
                x.bytes_in as f64 / 1e9,
                x.median_ms,
                x.resident_ms,
                x.copy_in_ms,
                x.serial_ms,
                100.0 * x.overlap
            )?;
        }
    }
    writeln!(s, "\nprefill FLOPs = {}", r.formulas.prefill_flops)?;
    writeln!(s, "decode bytes = {}", r.formulas.decode_bytes)?;
    writeln!(s, "{}", r.formulas.utilization)?;
    for x in &r.skipped {
        writeln!(s, "skipped {}: {}", x.point, x.reason)?;
    }
    Ok(())
}
