//! Paged causal attention with GQA over a sequence's K/V blocks.
//!
//! The work is split into units of (sequence, query tile, kv head). A unit's query rows are the
//! heads of its kv head's group at the tile's positions; they run along the vector lanes, so a
//! key loaded once serves all of them. Keys go one block at a time, read in place: the block's
//! scores `Sᵀ = K·Qᵀ` (`[block_tokens, rows]`), their max per row, the exps, and `Oᵀ += Vᵀ·P`,
//! with an online softmax carrying each row's max and sum from block to block. Every step of it
//! is lane-parallel over the rows: no gathers, no horizontal reductions.

use super::simd::{Isa, Kernel, Simd, dispatch, exp2_neg};
use super::tile::{LANES, Strip, rows_times_panel};
use rayon::prelude::*;

/// Query rows a unit aims for (positions × group heads); a multiple of [`LANES`].
const TARGET_ROWS: usize = 32;

/// The attention geometry of a layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) block_tokens: usize,
}

/// One sequence in this step: its K/V blocks (`[K | V]`, each `[block_tokens, kv_heads,
/// head_dim]`), already holding the new positions, and where its queries are.
pub(crate) struct SeqKv<'a> {
    pub(crate) blocks: Vec<&'a [f32]>,
    /// Position of the first query.
    pub(crate) start_pos: usize,
    /// First row of the step's `q` and `out` that belongs to this sequence.
    pub(crate) row0: usize,
    /// Query rows (new tokens).
    pub(crate) rows: usize,
}

#[derive(Debug, Clone, Copy)]
struct Unit {
    seq: usize,
    kv_head: usize,
    /// First query of the tile, relative to the sequence's `row0`.
    t0: usize,
    tn: usize,
}

/// Buffers of one unit, reused by the units a thread runs. `rp` is the unit's rows rounded up
/// to [`LANES`]; lanes past the rows compute on zero queries and are never read.
struct Scratch {
    /// `[head_dim, rp]`: Q transposed, pre-scaled by `log2(e)/√head_dim`.
    qt: Vec<f32>,
    /// `[block_tokens, rp]`: a block's scores, then its probabilities.
    s: Vec<f32>,
    /// `[rp]` each: running max (base 2), running sum, this block's max, the rescale factor.
    m: Vec<f32>,
    l: Vec<f32>,
    block_max: Vec<f32>,
    correction: Vec<f32>,
    /// `[head_dim, rp]`: the output, transposed, not yet divided by `l`.
    ot: Vec<f32>,
}

impl Scratch {
    fn new(shape: &Shape, rows: usize) -> Scratch {
        let rp = rows.next_multiple_of(LANES);
        let d = shape.head_dim;
        Scratch {
            qt: vec![0.0; d * rp],
            s: vec![0.0; shape.block_tokens * rp],
            m: vec![0.0; rp],
            l: vec![0.0; rp],
            block_max: vec![0.0; rp],
            correction: vec![0.0; rp],
            ot: vec![0.0; d * rp],
        }
    }
}

/// `out[t, h·d..] = softmax(q_h · Kᵀ / √d) · V` over positions `0..=pos(t)`, for every query row
/// `t` of every sequence. `q` rows have stride `q_stride`; `out` is `[rows, heads·head_dim]`.
pub(crate) fn attention(
    isa: Isa,
    shape: &Shape,
    q: &[f32],
    q_stride: usize,
    seqs: &[SeqKv<'_>],
    out: &mut [f32],
) {
    let (d, group) = (shape.head_dim, shape.heads / shape.kv_heads);
    let tile_pos = (TARGET_ROWS / group).max(1);
    let units: Vec<Unit> = seqs
        .iter()
        .enumerate()
        .flat_map(|(seq, s)| {
            (0..s.rows).step_by(tile_pos).flat_map(move |t0| {
                (0..shape.kv_heads).map(move |kv_head| Unit {
                    seq,
                    kv_head,
                    t0,
                    tn: tile_pos.min(s.rows - t0),
                })
            })
        })
        .collect();
    let unit_elems = tile_pos * group * d;
    let mut results = vec![0.0f32; units.len() * unit_elems];
    results
        .par_chunks_mut(unit_elems)
        .zip(units.par_iter())
        .for_each_init(
            || Scratch::new(shape, tile_pos * group),
            |scratch, (res, &unit)| {
                let seq = &seqs[unit.seq];
                let q = &q[(seq.row0 + unit.t0) * q_stride..];
                dispatch(
                    isa,
                    UnitKernel {
                        shape,
                        q,
                        q_stride,
                        seq,
                        unit,
                        scratch,
                        out: res,
                    },
                );
            },
        );
    let width = shape.heads * d;
    for (unit, res) in units.iter().zip(results.chunks(unit_elems)) {
        let row0 = seqs[unit.seq].row0 + unit.t0;
        for ti in 0..unit.tn {
            let dst = &mut out[(row0 + ti) * width..(row0 + ti + 1) * width];
            let heads = unit.kv_head * group * d..(unit.kv_head + 1) * group * d;
            dst[heads].copy_from_slice(&res[ti * group * d..(ti + 1) * group * d]);
        }
    }
}

struct UnitKernel<'a> {
    shape: &'a Shape,
    /// Starts at the unit's first query row.
    q: &'a [f32],
    q_stride: usize,
    seq: &'a SeqKv<'a>,
    unit: Unit,
    scratch: &'a mut Scratch,
    /// `[tn · group, head_dim]`, rows in (position, head) order.
    out: &'a mut [f32],
}

impl Kernel for UnitKernel<'_> {
    type Out = ();

    #[inline(always)]
    fn run<S: Simd>(self) {
        let UnitKernel {
            shape,
            q,
            q_stride,
            seq,
            unit,
            scratch: sc,
            out,
        } = self;
        let (d, bt) = (shape.head_dim, shape.block_tokens);
        let group = shape.heads / shape.kv_heads;
        let rows = unit.tn * group;
        let rp = rows.next_multiple_of(LANES);
        // Tokens of a block half are `kv_heads · head_dim` apart; V follows K.
        let token_stride = shape.kv_heads * d;
        let half = bt * token_stride;
        let scale = std::f32::consts::LOG2_E / (d as f32).sqrt();
        let qt = &mut sc.qt[..d * rp];
        qt.fill(0.0);
        for ti in 0..unit.tn {
            for hh in 0..group {
                let (r, head) = (ti * group + hh, unit.kv_head * group + hh);
                let src = &q[ti * q_stride + head * d..ti * q_stride + (head + 1) * d];
                for (dd, &x) in src.iter().enumerate() {
                    qt[dd * rp + r] = x * scale;
                }
            }
        }
        let (m, l) = (&mut sc.m[..rp], &mut sc.l[..rp]);
        let (block_max, correction) = (&mut sc.block_max[..rp], &mut sc.correction[..rp]);
        let ot = &mut sc.ot[..d * rp];
        m.fill(f32::NEG_INFINITY);
        l.fill(0.0);
        ot.fill(0.0);
        let first_pos = seq.start_pos + unit.t0;
        let kv_len = first_pos + unit.tn;
        for (b, block) in seq.blocks[..kv_len.div_ceil(bt)].iter().enumerate() {
            let k0 = b * bt;
            let kn = bt.min(kv_len - k0);
            let (k, v) = (
                &block[unit.kv_head * d..],
                &block[half + unit.kv_head * d..],
            );
            let s = &mut sc.s[..kn * rp];
            for c0 in (0..rp).step_by(LANES) {
                let strip = Strip {
                    a: k,
                    rs: token_stride,
                    ks: 1,
                    b: &qt[c0..],
                    ldb: rp,
                    k: d,
                    ldo: rp,
                    accumulate: false,
                };
                rows_times_panel::<S>(&strip, kn, &mut s[c0..]);
            }
            // Keys past a row's own position; `exp2_neg(-∞)` makes their probability exactly 0.
            if k0 + kn - 1 > first_pos {
                for (j, srow) in s.chunks_exact_mut(rp).enumerate() {
                    for (r, x) in srow[..rows].iter_mut().enumerate() {
                        if k0 + j > first_pos + r / group {
                            *x = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            block_max.copy_from_slice(&s[..rp]);
            for srow in s.chunks_exact(rp).skip(1) {
                // `max`, not a compare and select: that becomes a masked store, and reading it
                // back on the next row stalls store forwarding.
                for (bm, &x) in block_max.iter_mut().zip(srow) {
                    *bm = bm.max(x);
                }
            }
            for ((m, c), &bm) in m
                .iter_mut()
                .zip(correction.iter_mut())
                .zip(block_max.iter())
            {
                // Key 0 is in every row's first block, so `m` is finite from then on.
                let m_new = m.max(bm);
                *c = exp2_neg(*m - m_new);
                *m = m_new;
            }
            for (lv, &c) in l.iter_mut().zip(correction.iter()) {
                *lv *= c;
            }
            for srow in s.chunks_exact_mut(rp) {
                for ((x, &m), lv) in srow.iter_mut().zip(m.iter()).zip(l.iter_mut()) {
                    *x = exp2_neg(*x - m);
                    *lv += *x;
                }
            }
            for orow in ot.chunks_exact_mut(rp) {
                orow.iter_mut()
                    .zip(correction.iter())
                    .for_each(|(o, c)| *o *= c);
            }
            for c0 in (0..rp).step_by(LANES) {
                let strip = Strip {
                    a: v,
                    rs: 1,
                    ks: token_stride,
                    b: &s[c0..],
                    ldb: rp,
                    k: kn,
                    ldo: rp,
                    accumulate: true,
                };
                rows_times_panel::<S>(&strip, d, &mut ot[c0..]);
            }
        }
        for r in 0..rows {
            // Every row saw its own position, so `l ≥ 1`.
            let inv = 1.0 / l[r];
            for (dd, o) in out[r * d..(r + 1) * d].iter_mut().enumerate() {
                *o = ot[dd * rp + r] * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rng::Rng;

    /// Straightforward attention in f64 over dense `[pos, kv_heads, d]` K and V.
    fn naive(
        shape: &Shape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        start: usize,
        rows: usize,
    ) -> Vec<f64> {
        let (d, h, kvh) = (shape.head_dim, shape.heads, shape.kv_heads);
        let mut out = vec![0.0; rows * h * d];
        for t in 0..rows {
            for head in 0..h {
                let g = head / (h / kvh);
                let qv = &q[(t * h + head) * d..][..d];
                let scores: Vec<f64> = (0..=start + t)
                    .map(|p| {
                        (0..d)
                            .map(|i| qv[i] as f64 * k[(p * kvh + g) * d + i] as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    let o: f64 = e
                        .iter()
                        .enumerate()
                        .map(|(p, w)| w * v[(p * kvh + g) * d + i] as f64)
                        .sum();
                    out[(t * h + head) * d + i] = o / z;
                }
            }
        }
        out
    }

    fn check(isa: Isa, shape: Shape, start: usize, rows: usize, seed: u64) {
        let mut rng = Rng::new(seed);
        let (d, kvh, bt) = (shape.head_dim, shape.kv_heads, shape.block_tokens);
        let len = start + rows;
        let k: Vec<f32> = (0..len * kvh * d).map(|_| rng.uniform(2.0)).collect();
        let v: Vec<f32> = (0..len * kvh * d).map(|_| rng.uniform(1.0)).collect();
        let q: Vec<f32> = (0..rows * shape.heads * d)
            .map(|_| rng.uniform(2.0))
            .collect();
        // Scatter the dense K/V into blocks, in reverse order.
        let nblocks = len.div_ceil(bt);
        let row = kvh * d;
        let mut mem = vec![0.0f32; nblocks * 2 * bt * row];
        let phys = |b: usize| nblocks - 1 - b;
        for p in 0..len {
            let base = phys(p / bt) * 2 * bt * row + (p % bt) * row;
            mem[base..base + row].copy_from_slice(&k[p * row..(p + 1) * row]);
            mem[base + bt * row..base + bt * row + row].copy_from_slice(&v[p * row..(p + 1) * row]);
        }
        let blocks: Vec<&[f32]> = (0..nblocks)
            .map(|b| &mem[phys(b) * 2 * bt * row..][..2 * bt * row])
            .collect();
        let seqs = [SeqKv {
            blocks,
            start_pos: start,
            row0: 0,
            rows,
        }];
        let mut out = vec![0.0; rows * shape.heads * d];
        attention(isa, &shape, &q, shape.heads * d, &seqs, &mut out);
        let want = naive(&shape, &q, &k, &v, start, rows);
        for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() < 2e-5,
                "{} {shape:?} start {start} rows {rows} [{i}]: {g} vs {w}",
                isa.name()
            );
        }
    }

    #[test]
    fn matches_naive_attention() {
        for isa in Isa::available() {
            let s = |heads, kv_heads, head_dim, block_tokens| Shape {
                heads,
                kv_heads,
                head_dim,
                block_tokens,
            };
            check(isa, s(4, 2, 16, 16), 0, 150, 1);
            check(isa, s(4, 2, 16, 16), 37, 1, 2);
            check(isa, s(8, 2, 8, 3), 5, 70, 3);
            check(isa, s(6, 6, 20, 5), 130, 9, 4);
            check(isa, s(4, 1, 32, 16), 200, 1, 5);
        }
    }
}
