//! Every kernel against a reference computed here in f64, on fresh random inputs, with outputs
//! poisoned (all-ones bytes: NaN in f32 and bf16) before each run so an unwritten element
//! fails. Skips with a message where no GPU is usable. The fused decode GEMVs are tested in
//! [`gemv`], attention in [`attention`], with the helpers here.

use super::driver::{self, DeviceBuf, Stream};
use super::gemm::{Blas, Out};
use super::kernels::{ItemMeta, Kernels, STAGED, Shape};
use crate::model::rng::Rng;
use crate::model::rope::RopeTable;
use crate::model::{ModelConfig, Preset};
use cudarc::driver::CudaContext;
use half::bf16;
use std::sync::Arc;

mod attention;
mod gemv;

struct Env {
    k: Kernels,
    s: Stream,
    _ctx: Arc<CudaContext>,
}

fn env(shape: Shape) -> Option<Env> {
    let (ctx, info) = match driver::open(0) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("skipping: {e}");
            return None;
        }
    };
    ctx.bind_to_thread().expect("bind");
    let k = Kernels::load(info.compute_capability, shape).expect("kernels compile and load");
    Some(Env {
        k,
        s: Stream::new().expect("stream"),
        _ctx: ctx,
    })
}

const SMALL: Shape = Shape {
    head_dim: 32,
    heads: 4,
    kv_heads: 2,
    block_tokens: 8,
};
const LLAMA: Shape = Shape {
    head_dim: 128,
    heads: 8,
    kv_heads: 2,
    block_tokens: 16,
};
/// Blocks of 5 tokens, a group of 4 query heads per kv head.
const ODD_BLOCKS: Shape = Shape {
    head_dim: 32,
    heads: 8,
    kv_heads: 2,
    block_tokens: 5,
};

fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale)
        .collect()
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn up<T: Copy>(v: &[T]) -> DeviceBuf {
    let b = DeviceBuf::new(std::mem::size_of_val(v), "test input").unwrap();
    b.upload(v, "test input").unwrap();
    b
}

fn poisoned(bytes: usize) -> DeviceBuf {
    let b = DeviceBuf::new(bytes, "test output").unwrap();
    b.fill_bytes(0xff).unwrap();
    b
}

fn down_f32(b: &DeviceBuf, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    b.download(&mut v, "test output").unwrap();
    v
}

fn down_bf16(b: &DeviceBuf, n: usize) -> Vec<f32> {
    let mut v = vec![bf16::ZERO; n];
    b.download(&mut v, "test output").unwrap();
    v.iter().map(|x| x.to_f32()).collect()
}

fn bits_f32(b: &DeviceBuf, n: usize) -> Vec<u32> {
    down_f32(b, n).iter().map(|v| v.to_bits()).collect()
}

fn bits_bf16(b: &DeviceBuf, n: usize) -> Vec<u16> {
    let mut v = vec![bf16::ZERO; n];
    b.download(&mut v, "test output").unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// ‖got − want‖ / ‖want‖, failing on any NaN (an unwritten, poisoned element).
fn rel_err(got: &[f32], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|x| !x.is_finite()) {
        panic!("{what}: element {i} is {} (unwritten?)", got[i]);
    }
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, w)| (g as f64 - w).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    (err / norm.max(1e-30)).sqrt()
}

#[test]
fn rms_norm_embed_gather_rows_and_silu_match_the_reference() {
    let Some(e) = env(SMALL) else { return };
    let mut rng = Rng::derive(11, 0);
    let (rows, h) = (7usize, 300usize);
    let x = randn(&mut rng, rows * h, 3.0);
    let w = randn(&mut rng, h, 1.5);
    let out = poisoned(rows * h * 2);
    let (xb, wb) = (up(&x), up(&w));
    e.k.rms_norm(&e.s, out.ptr(), xb.ptr(), wb.ptr(), rows, h as i32, 1e-5)
        .unwrap();
    e.s.sync("test").unwrap();
    let mut want = Vec::new();
    for r in 0..rows {
        let xr = &x[r * h..(r + 1) * h];
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        want.extend(xr.iter().zip(&w).map(|(&v, &g)| v as f64 * inv * g as f64));
    }
    let err = rel_err(&down_bf16(&out, rows * h), &want, "rms_norm");
    assert!(err < 5e-3, "rms_norm error {err:e}");

    // Embedding rows (bf16 table) and row gathers are exact.
    let vocab = 50;
    let table = to_bf16(&randn(&mut rng, vocab * h, 1.0));
    let tokens: Vec<u32> = (0..rows as u32)
        .map(|i| (i * 7 + 3) % vocab as u32)
        .collect();
    let (tb, tok) = (up(&table), up(&tokens));
    let emb = poisoned(rows * h * 4);
    e.k.embed_gather(&e.s, emb.ptr(), tb.ptr(), tok.ptr(), rows, h as i32)
        .unwrap();
    let pick: Vec<i32> = vec![6, 0, 3];
    let pb = up(&pick);
    let gathered = poisoned(pick.len() * h * 4);
    e.k.gather_rows(
        &e.s,
        gathered.ptr(),
        emb.ptr(),
        pb.ptr(),
        pick.len(),
        h as i32,
    )
    .unwrap();
    e.s.sync("test").unwrap();
    let got = down_f32(&emb, rows * h);
    for (r, &t) in tokens.iter().enumerate() {
        for i in 0..h {
            assert_eq!(
                got[r * h + i],
                table[t as usize * h + i].to_f32(),
                "embed row {r}"
            );
        }
    }
    let g = down_f32(&gathered, pick.len() * h);
    for (j, &r) in pick.iter().enumerate() {
        assert_eq!(
            &g[j * h..(j + 1) * h],
            &got[r as usize * h..(r as usize + 1) * h]
        );
    }

    // SwiGLU on [gate | up] rows.
    let ff = 130;
    let gu = to_bf16(&randn(&mut rng, rows * 2 * ff, 4.0));
    let gub = up(&gu);
    let act = poisoned(rows * ff * 2);
    e.k.silu_mul(&e.s, act.ptr(), gub.ptr(), ff as i32, rows)
        .unwrap();
    e.s.sync("test").unwrap();
    let mut want = Vec::new();
    for r in 0..rows {
        for c in 0..ff {
            let g = gu[r * 2 * ff + c].to_f64();
            let u = gu[r * 2 * ff + ff + c].to_f64();
            want.push(g / (1.0 + (-g).exp()) * u);
        }
    }
    let err = rel_err(&down_bf16(&act, rows * ff), &want, "silu_mul");
    assert!(err < 5e-3, "silu_mul error {err:e}");
}

fn rope_cfg(shape: &Shape) -> ModelConfig {
    let mut cfg = Preset::Llama3_8b.config(); // llama3 rope scaling
    cfg.head_dim = shape.head_dim;
    cfg.num_heads = shape.heads;
    cfg.num_kv_heads = shape.kv_heads;
    cfg.hidden_size = shape.heads * shape.head_dim;
    cfg.max_position_embeddings = 9000;
    cfg
}

#[test]
fn rope_kv_write_rotates_q_and_k_with_llama3_scaling_adds_the_bias_and_fills_the_blocks() {
    for sh in [SMALL, LLAMA, ODD_BLOCKS] {
        rope_kv_write_case(sh);
    }
}

/// Rows at scattered positions, each its own item whose position lands in a pool block (even
/// rows) or a staging slot (odd rows): q, and k and v in the blocks, against the cpu's RoPE.
fn rope_kv_write_case(sh: Shape) {
    let Some(e) = env(sh) else { return };
    let cfg = rope_cfg(&sh);
    assert!(cfg.rope_scaling.is_some());
    let table = RopeTable::new(&cfg, cfg.max_position_embeddings);
    let (cos, sin) = table.cos_sin();
    let mut rng = Rng::derive(12, sh.head_dim as u64);
    let (rows, bt) = (9usize, sh.block_tokens);
    let w = sh.qkv_width();
    let be = 2 * bt * sh.kv_dim(); // elements per block
    let qkv = randn(&mut rng, rows * w, 2.0);
    let bias = randn(&mut rng, w, 0.5);
    let pos: Vec<i32> = (0..rows as i32).map(|i| i * 977 % 9000).collect();
    let (mut metas, mut tab, mut row_item) = (Vec::new(), Vec::new(), Vec::new());
    for (r, &p) in pos.iter().enumerate() {
        metas.push(ItemMeta {
            row0: r as i32,
            rows: 1,
            start_pos: p,
            toff: tab.len() as i32,
        });
        // Entries before the row's block are never read.
        tab.extend(std::iter::repeat_n(0u32, p as usize / bt));
        let slot = (r / 2) as u32;
        tab.push(if r % 2 == 0 { slot } else { STAGED | slot });
        row_item.push(r as i32);
    }
    let blocks = rows.div_ceil(2);
    let (pool, staging) = (poisoned(blocks * be * 2), poisoned(blocks * be * 2));
    let (qkv_b, bias_b, pos_b, cos_b, sin_b) = (up(&qkv), up(&bias), up(&pos), up(cos), up(sin));
    let (meta_b, tab_b, ri_b) = (up(&metas), up(&tab), up(&row_item));
    let q = poisoned(rows * sh.q_dim() * 2);
    e.k.rope_kv_write(
        &e.s,
        qkv_b.ptr(),
        bias_b.ptr(),
        pos_b.ptr(),
        cos_b.ptr(),
        sin_b.ptr(),
        q.ptr(),
        ri_b.ptr(),
        meta_b.ptr(),
        tab_b.ptr(),
        pool.ptr(),
        staging.ptr(),
        rows,
    )
    .unwrap();
    e.s.sync("test").unwrap();
    let got_q = down_bf16(&q, rows * sh.q_dim());
    let (got_pool, got_staging) = (
        down_bf16(&pool, blocks * be),
        down_bf16(&staging, blocks * be),
    );
    let (mut want_q, mut want_k, mut got_k) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rows {
        let mut row: Vec<f32> = (0..w).map(|i| qkv[r * w + i] + bias[i]).collect();
        for head in row[..sh.q_dim() + sh.kv_dim()].chunks_mut(sh.head_dim) {
            table.rotate(head, pos[r] as usize);
        }
        want_q.extend(row[..sh.q_dim()].iter().map(|&v| v as f64));
        let blk = if r % 2 == 0 { &got_pool } else { &got_staging };
        let at = (r / 2) * be + (pos[r] as usize % bt) * sh.kv_dim();
        let v_at = at + bt * sh.kv_dim();
        want_k.extend(
            row[sh.q_dim()..sh.q_dim() + sh.kv_dim()]
                .iter()
                .map(|&v| v as f64),
        );
        got_k.extend_from_slice(&blk[at..at + sh.kv_dim()]);
        // v: bias added in f32, rounded once — exactly.
        for j in 0..sh.kv_dim() {
            let want_v = bf16::from_f32(row[sh.q_dim() + sh.kv_dim() + j]).to_f32();
            assert_eq!(blk[v_at + j], want_v, "row {r}: v[{j}]");
        }
    }
    let eq = rel_err(&got_q, &want_q, "rope q");
    let ek = rel_err(&got_k, &want_k, "rope k");
    assert!(eq < 5e-3 && ek < 5e-3, "rope errors q {eq:e}, k {ek:e}");
}

#[test]
fn gemm_bf16_matches_the_reference_in_f32_and_bf16_and_accumulates() {
    let Some(mut e) = env(SMALL) else { return };
    let blas = Blas::new(&e.s).unwrap();
    let mut rng = Rng::derive(13, 0);
    let (rows, m, k) = (37usize, 96usize, 200usize);
    let x = to_bf16(&randn(&mut rng, rows * k, 1.0));
    let w = to_bf16(&randn(&mut rng, m * k, 1.0));
    let y0 = randn(&mut rng, rows * m, 1.0);
    let mut want = vec![0f64; rows * m];
    for r in 0..rows {
        for j in 0..m {
            want[r * m + j] = (0..k)
                .map(|i| x[r * k + i].to_f64() * w[j * k + i].to_f64())
                .sum();
        }
    }
    let (xb, wb) = (up(&x), up(&w));
    let yf = poisoned(rows * m * 4);
    blas.linear(yf.ptr(), Out::F32, xb.ptr(), wb.ptr(), rows, m, k, false)
        .unwrap();
    let yb = poisoned(rows * m * 2);
    blas.linear(yb.ptr(), Out::Bf16, xb.ptr(), wb.ptr(), rows, m, k, false)
        .unwrap();
    let acc = up(&y0);
    blas.linear(acc.ptr(), Out::F32, xb.ptr(), wb.ptr(), rows, m, k, true)
        .unwrap();
    e.s.sync("test").unwrap();
    let ef = rel_err(&down_f32(&yf, rows * m), &want, "gemm f32");
    let eb = rel_err(&down_bf16(&yb, rows * m), &want, "gemm bf16");
    let want_acc: Vec<f64> = want.iter().zip(&y0).map(|(w, &y)| w + y as f64).collect();
    let ea = rel_err(&down_f32(&acc, rows * m), &want_acc, "gemm accumulate");
    assert!(
        ef < 1e-5 && eb < 5e-3 && ea < 1e-5,
        "gemm errors {ef:e} {eb:e} {ea:e}"
    );

    // The GEMV kernels for decode-sized steps, each output kind: the CUDA-core ones for 1 to
    // GEMV_ROWS rows, and with the tensor-core ones in, those for 2 to TC_ROWS.
    for tc in [false, true] {
        e.k.set_gemv_tc(tc);
        for r in 1..=e.k.gemv_rows() {
            let want_r = &want[..r * m];
            let yf = poisoned(r * m * 4);
            e.k.gemv_bf16(&e.s, yf.ptr(), xb.ptr(), wb.ptr(), r, m, k, false, false)
                .unwrap();
            let yb = poisoned(r * m * 2);
            e.k.gemv_bf16(&e.s, yb.ptr(), xb.ptr(), wb.ptr(), r, m, k, true, false)
                .unwrap();
            let acc = up(&y0[..r * m]);
            e.k.gemv_bf16(&e.s, acc.ptr(), xb.ptr(), wb.ptr(), r, m, k, false, true)
                .unwrap();
            e.s.sync("test").unwrap();
            let ef = rel_err(&down_f32(&yf, r * m), want_r, "gemv f32");
            let eb = rel_err(&down_bf16(&yb, r * m), want_r, "gemv bf16");
            let ea = rel_err(
                &down_f32(&acc, r * m),
                &want_acc[..r * m],
                "gemv accumulate",
            );
            assert!(
                ef < 1e-5 && eb < 5e-3 && ea < 1e-5,
                "gemv {r} rows (tensor cores {tc}): errors {ef:e} {eb:e} {ea:e}"
            );
        }
    }
}

#[test]
fn argmax_breaks_ties_low_and_never_picks_nan() {
    let Some(e) = env(SMALL) else { return };
    let vocab = 5000;
    let mut rng = Rng::derive(14, 0);
    let mut rows: Vec<Vec<f32>> = (0..4).map(|_| randn(&mut rng, vocab, 10.0)).collect();
    rows[1][4000] = 50.0;
    rows[1][17] = 50.0; // tie: the lower id wins
    rows[2][9] = f32::NAN;
    rows[2][3] = 60.0;
    rows[3] = vec![f32::NEG_INFINITY; vocab];
    let flat: Vec<f32> = rows.concat();
    let lb = up(&flat);
    let out = poisoned(rows.len() * 4);
    e.k.argmax_rows(&e.s, out.ptr(), lb.ptr(), rows.len(), vocab as i32)
        .unwrap();
    e.s.sync("test").unwrap();
    let mut got = vec![0u32; rows.len()];
    out.download(&mut got, "argmax").unwrap();
    let want: Vec<u32> = rows
        .iter()
        .map(|r| crate::exec::cpu::sample::argmax(r))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got[1], 17);
    assert_eq!(got[2], 3);
    assert_eq!(got[3], 0);
}

#[test]
fn top_p_sampling_keeps_the_nucleus_and_follows_the_softmax() {
    let Some(e) = env(SMALL) else { return };
    let vocab = 64;
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 37) % 11) as f32 * 0.4).collect();
    let rows = 4000;
    let flat: Vec<f32> = (0..rows).flat_map(|_| logits.iter().copied()).collect();
    let lb = up(&flat);
    let temps = up(&vec![1.0f32; rows]);
    let run = |top_p: f32| {
        let tp = up(&vec![top_p; rows]);
        let us: Vec<f32> = (0..rows)
            .map(|i| Rng::derive(5, i as u64).next_f64() as f32)
            .collect();
        let ub = up(&us);
        let out = poisoned(rows * 4);
        e.k.sample_top_p(
            &e.s,
            out.ptr(),
            lb.ptr(),
            rows,
            vocab as i32,
            temps.ptr(),
            tp.ptr(),
            ub.ptr(),
        )
        .unwrap();
        e.s.sync("test").unwrap();
        let mut got = vec![0u32; rows];
        out.download(&mut got, "samples").unwrap();
        got
    };
    let best = crate::exec::cpu::sample::argmax(&logits);
    let tiny = run(1e-6);
    // Tokens tied at the top are all kept by a threshold; each of them is a top token.
    let top = logits[best as usize];
    assert!(
        tiny.iter().all(|&t| logits[t as usize] == top),
        "tiny top_p keeps only the top logits"
    );
    // Full nucleus: frequencies follow the softmax (loose bound: 4000 draws).
    let all = run(1.0);
    let mx = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let p: Vec<f64> = logits.iter().map(|&l| (l as f64 - mx).exp()).collect();
    let z: f64 = p.iter().sum();
    let mut count = vec![0usize; vocab];
    for &t in &all {
        count[t as usize] += 1;
    }
    let tv: f64 = (0..vocab)
        .map(|i| (count[i] as f64 / rows as f64 - p[i] / z).abs())
        .sum::<f64>()
        / 2.0;
    assert!(tv < 0.05, "total variation from the softmax {tv}");
    // top_p 0.5 draws only from the most likely tokens holding half the mass.
    let half_ = run(0.5);
    let mut sorted: Vec<f64> = p.iter().map(|x| x / z).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let (mut mass, mut cut) = (0.0, 0.0);
    for &q in &sorted {
        mass += q;
        cut = q;
        if mass >= 0.5 {
            break;
        }
    }
    assert!(
        half_.iter().all(|&t| p[t as usize] / z >= cut - 1e-6),
        "a token outside the nucleus was drawn"
    );
}
