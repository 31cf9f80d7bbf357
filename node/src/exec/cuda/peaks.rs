//! The device's own ceilings, measured in place: what utilization figures are quoted against.

use super::driver::{self, DeviceBuf, Event, PinnedBuf, Stream};
use super::gemm::{Blas, Out};
use crate::exec::ExecError;

/// The device's own ceilings, measured: what benchmarks quote utilization against.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Peaks {
    /// bf16 GEMM (f32 accumulation) through cuBLAS, 8192³, TFLOP/s.
    pub gemm_tflops: f64,
    /// Device-to-device copy, bytes read plus written, GB/s.
    pub device_copy_gbps: f64,
    /// Pinned host → device, one 256 MiB copy, GB/s.
    pub h2d_gbps: f64,
    /// Device → pinned host, one 256 MiB copy, GB/s.
    pub d2h_gbps: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Milliseconds of each of `reps` runs of `work` on `s` (after one warm-up), timed by events.
fn time_ms(
    s: &Stream,
    reps: usize,
    mut work: impl FnMut() -> Result<(), ExecError>,
) -> Result<Vec<f64>, ExecError> {
    work()?;
    let (a, b) = (Event::new(true)?, Event::new(true)?);
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        a.record(s)?;
        work()?;
        b.record(s)?;
        b.sync()?;
        out.push(b.since(&a)? as f64);
    }
    Ok(out)
}

/// Random bf16 bits in (-1, 1) (never zeros: products on zeros run faster than on data).
fn random_bf16(n: usize, mut seed: u64) -> Vec<u16> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let v = (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            half::bf16::from_f32(v).to_bits()
        })
        .collect()
}

/// Measures [`Peaks`] on GPU `ordinal` (median of several runs each; about a second).
pub fn measure_peaks(ordinal: usize) -> Result<Peaks, ExecError> {
    let (ctx, _) = driver::open(ordinal)?;
    ctx.bind_to_thread()
        .map_err(|e| driver::dev("binding the GPU", e))?;
    let s = Stream::new()?;
    let n = 8192usize;
    let a = DeviceBuf::new(n * n * 2, "GEMM operand")?;
    let b = DeviceBuf::new(n * n * 2, "GEMM operand")?;
    let c = DeviceBuf::new(n * n * 2, "GEMM result")?;
    a.upload(&random_bf16(n * n, 1), "GEMM operand")?;
    b.upload(&random_bf16(n * n, 2), "GEMM operand")?;
    let blas = Blas::new(&s)?;
    let gemm = time_ms(&s, 10, || {
        blas.linear(c.ptr(), Out::Bf16, a.ptr(), b.ptr(), n, n, n, false)
    })?;
    let gemm_tflops = 2.0 * (n as f64).powi(3) / (median(gemm) * 1e-3) / 1e12;

    let big = 1usize << 30;
    let src = DeviceBuf::new(big, "copy source")?;
    let dst = DeviceBuf::new(big, "copy target")?;
    src.fill_bytes(0x3c)?;
    let copy = time_ms(&s, 10, || s.copy(dst.ptr(), src.ptr(), big))?;
    let device_copy_gbps = 2.0 * big as f64 / (median(copy) * 1e-3) / 1e9;

    let mid = 256usize << 20;
    let mut host = PinnedBuf::new(mid, "pinned host buffer")?;
    host.as_mut_slice::<u8>().fill(0x5a);
    let h2d = time_ms(&s, 10, || s.copy(dst.ptr(), host.addr(), mid))?;
    let d2h = time_ms(&s, 10, || s.copy(host.addr(), src.ptr(), mid))?;
    let rate = |ms: Vec<f64>| mid as f64 / (median(ms) * 1e-3) / 1e9;
    Ok(Peaks {
        gemm_tflops,
        device_copy_gbps,
        h2d_gbps: rate(h2d),
        d2h_gbps: rate(d2h),
    })
}
