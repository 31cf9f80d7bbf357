//! Runtime choice of vector instructions for the hot kernels.
//!
//! The kernels are written once, generic over a [`Simd`] flavour that supplies the register tile
//! of the matrix products (intrinsics on x86-64, plain Rust elsewhere); their other loops are
//! plain Rust that LLVM vectorizes. [`dispatch`] runs a [`Kernel`] inside a function compiled for
//! the best instruction set this CPU has (AVX-512 or AVX2 with FMA), so one binary built for the
//! baseline target still runs the kernels at full vector width.

use super::tile::{self, Strip};

/// A flavour of the kernels: the register tile of the matrix products.
pub(crate) trait Simd {
    /// Rows of the tallest tile worth using (the accumulators the registers hold).
    const MAX_ROWS: usize;
    /// One `R × 16` tile of `s` into `out` (see [`Strip`]).
    fn tile<const R: usize>(s: &Strip<'_>, out: &mut [f32]);
}

/// Plain Rust, for any CPU.
struct Portable;

impl Simd for Portable {
    const MAX_ROWS: usize = 4;

    #[inline(always)]
    fn tile<const R: usize>(s: &Strip<'_>, out: &mut [f32]) {
        tile::portable::<R, { cfg!(target_arch = "aarch64") }>(s, out);
    }
}

/// AVX2 with FMA. Private, and only named by [`dispatch`] after detection.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    const MAX_ROWS: usize = 4;

    #[inline(always)]
    fn tile<const R: usize>(s: &Strip<'_>, out: &mut [f32]) {
        s.check::<R>(out);
        // SAFETY: this flavour only runs inside `dispatch` at `Level::Avx2` or above, which
        // `Isa::detect` found on this CPU; the bounds were just checked.
        unsafe { tile::x86::avx2::<R>(s, out) }
    }
}

/// AVX-512F. Private, and only named by [`dispatch`] after detection.
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const MAX_ROWS: usize = 8;

    #[inline(always)]
    fn tile<const R: usize>(s: &Strip<'_>, out: &mut [f32]) {
        s.check::<R>(out);
        // SAFETY: this flavour only runs inside `dispatch` at `Level::Avx512`, which
        // `Isa::detect` found on this CPU; the bounds were just checked.
        unsafe { tile::x86::avx512::<R>(s, out) }
    }
}

/// Work to run with one [`Simd`] flavour. Implementations mark `run` `#[inline(always)]` so it is
/// compiled inside the target-feature function that [`dispatch`] calls.
pub(crate) trait Kernel {
    type Out;
    fn run<S: Simd>(self) -> Self::Out;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// An instruction set this CPU supports. Only [`Isa::detect`] and [`Isa::portable`] make one,
/// which is what makes [`dispatch`] sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Isa(Level);

impl Isa {
    /// The widest instruction set of this CPU that the kernels are compiled for.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if fma && is_x86_feature_detected!("avx512f") {
                return Isa(Level::Avx512);
            }
            if fma {
                return Isa(Level::Avx2);
            }
        }
        Isa::portable()
    }

    /// The baseline target's instructions; runs anywhere.
    pub(crate) fn portable() -> Isa {
        Isa(Level::Portable)
    }

    /// Every instruction set this CPU can run, narrowest first (tests run the kernels on each).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let best = Isa::detect();
        let mut all = vec![Isa::portable()];
        #[cfg(target_arch = "x86_64")]
        if best.0 == Level::Avx512 {
            all.push(Isa(Level::Avx2));
        }
        if best != Isa::portable() {
            all.push(best);
        }
        all
    }

    /// A short name for reports: `portable`, `avx2`, `avx512`.
    pub(crate) fn name(self) -> &'static str {
        match self.0 {
            Level::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => "avx512",
        }
    }
}

/// Runs `k` compiled for `isa`.
pub(crate) fn dispatch<K: Kernel>(isa: Isa, k: K) -> K::Out {
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa` at this level is only made by `Isa::detect` (or `available`, from
        // it), after the CPU reported avx512f, avx2 and fma.
        Level::Avx512 => unsafe { run_avx512(k) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, the CPU reported avx2 and fma.
        Level::Avx2 => unsafe { run_avx2(k) },
        Level::Portable => run_portable(k),
    }
}

// The whole kernel is compiled with the target's features, so the loops around the tiles
// (softmax, masks, copies) are vectorized at the same width.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn run_avx512<K: Kernel>(k: K) -> K::Out {
    k.run::<Avx512>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<K: Kernel>(k: K) -> K::Out {
    k.run::<Avx2>()
}

fn run_portable<K: Kernel>(k: K) -> K::Out {
    k.run::<Portable>()
}

/// `2^x` for `x ≤ 0`, to a relative error under 3·10⁻⁷; `x < -126` (and `-∞`) gives exactly 0.
/// Branch-free and made of adds, multiplies, integer shifts and a select, so loops over it
/// vectorize.
#[inline(always)]
pub(crate) fn exp2_neg(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    let underflow = x < -126.0;
    let x = x.max(-126.0);
    let t = x + SHIFT;
    let k = t.to_bits() as i32 - SHIFT.to_bits() as i32;
    let f = x - (t - SHIFT); // in [-0.5, 0.5]
    // 2^f = e^(f·ln 2): Taylor to degree 6; the remainder is below 1.2·10⁻⁷ on [-0.5, 0.5].
    const C: [f32; 7] = [
        1.0,
        std::f32::consts::LN_2,
        0.240_226_5,
        0.055_504_11,
        0.009_618_129,
        0.001_333_355_8,
        0.000_154_035_3,
    ];
    let p = C[0] + f * (C[1] + f * (C[2] + f * (C[3] + f * (C[4] + f * (C[5] + f * C[6])))));
    let y = p * f32::from_bits(((k + 127) as u32) << 23);
    if underflow { 0.0 } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_neg_is_accurate() {
        let mut worst = 0.0f64;
        for i in 0..=1_000_000 {
            let x = -(i as f64) * 1.25e-4 * (1.0 + (i % 7) as f64 * 1e-3);
            let got = exp2_neg(x as f32) as f64;
            let want = (x as f32 as f64).exp2();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp2_neg(-1000.0), 0.0);
        assert_eq!(exp2_neg(f32::NEG_INFINITY), 0.0);
        assert!(exp2_neg(-126.0) > 0.0);
        assert_eq!(exp2_neg(0.0), 1.0);
    }
}
