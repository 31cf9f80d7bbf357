//! Paged attention, prefill and decode, with `rope_kv_write` filling the blocks: against
//! attention in f64 over the very bf16 values in the blocks.

use super::{
    LLAMA, ODD_BLOCKS, SMALL, bits_bf16, down_bf16, env, poisoned, randn, rel_err, rope_cfg,
    to_bf16, up,
};
use crate::exec::cuda::driver::DeviceBuf;
use crate::exec::cuda::kernels::{ItemMeta, PREFILL_ROWS, STAGED, Shape};
use crate::model::rng::Rng;
use crate::model::rope::RopeTable;
use half::bf16;

/// A pool of random blocks, items with cached prefixes and new rows, tables through a shuffled
/// pool and a staging buffer: rope_kv_write, then prefill and decode attention, checked against
/// attention in f64 over the very bf16 values in the blocks.
fn attention_case(sh: Shape, seed: u64) {
    let Some(e) = env(sh) else { return };
    let mut rng = Rng::derive(seed, 0);
    let bt = sh.block_tokens;
    let be = 2 * bt * sh.kv_dim(); // elements per block
    // (start_pos, rows, staged): prefills with and without a prefix, decodes.
    let cases = [
        (0usize, 150usize, false),
        (37, 64, true),
        (5, 1, false),
        (300, 1, true),
        (0, 1, false),
        (129, 70, false),
        (287, 1, false),
        (2099, 1, true),
    ];
    let pool_blocks = 400;
    let staging_blocks = 600;
    let mut pool = to_bf16(&randn(&mut rng, pool_blocks * be, 1.0));
    let mut staging = to_bf16(&randn(&mut rng, staging_blocks * be, 1.0));
    let mut free: Vec<u32> = (0..pool_blocks as u32).collect();
    for i in (1..free.len()).rev() {
        let j = (rng.next_f64() * (i + 1) as f64) as usize;
        free.swap(i, j.min(i));
    }
    let (mut metas, mut table, mut row_item) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tiles, mut decode_ids, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    let (mut row0, mut next_slot) = (0, 0u32);
    for (n, &(sp, rows, staged)) in cases.iter().enumerate() {
        let need = (sp + rows).div_ceil(bt);
        metas.push(ItemMeta {
            row0: row0 as i32,
            rows: rows as i32,
            start_pos: sp as i32,
            toff: table.len() as i32,
        });
        for _ in 0..need {
            if staged {
                table.push(STAGED | next_slot);
                next_slot += 1;
            } else {
                table.push(free.pop().unwrap());
            }
        }
        row_item.extend(std::iter::repeat_n(n as i32, rows));
        positions.extend((sp..sp + rows).map(|p| p as i32));
        if rows == 1 {
            decode_ids.push(n as i32);
        } else {
            tiles.extend(
                (0..rows)
                    .step_by(PREFILL_ROWS)
                    .map(|f| [n as i32, f as i32]),
            );
        }
        row0 += rows;
    }
    let total_rows = row0;
    let qkv = randn(&mut rng, total_rows * sh.qkv_width(), 1.0);
    let cfg = rope_cfg(&sh);
    let rope = RopeTable::new(&cfg, cfg.max_position_embeddings);
    let (cos, sin) = rope.cos_sin();
    // Poison the positions rope_kv_write must fill so a miss shows up as NaN.
    let nan = bf16::from_bits(0xffff);
    for m in &metas {
        for pos in m.start_pos as usize..(m.start_pos + m.rows) as usize {
            let e_ = table[m.toff as usize + pos / bt];
            let (buf, base) = if e_ & STAGED != 0 {
                (&mut staging, (e_ & !STAGED) as usize * be)
            } else {
                (&mut pool, e_ as usize * be)
            };
            let off = pos % bt;
            for j in 0..sh.kv_dim() {
                buf[base + off * sh.kv_dim() + j] = nan;
                buf[base + (bt + off) * sh.kv_dim() + j] = nan;
            }
        }
    }
    let (pool_b, staging_b) = (up(&pool), up(&staging));
    let (qkv_b, meta_b, table_b, ri_b) = (up(&qkv), up(&metas), up(&table), up(&row_item));
    let (tiles_b, dec_b, pos_b) = (up(&tiles), up(&decode_ids), up(&positions));
    let (cos_b, sin_b) = (up(cos), up(sin));
    let q_b = poisoned(total_rows * sh.q_dim() * 2);
    e.k.rope_kv_write(
        &e.s,
        qkv_b.ptr(),
        0,
        pos_b.ptr(),
        cos_b.ptr(),
        sin_b.ptr(),
        q_b.ptr(),
        ri_b.ptr(),
        meta_b.ptr(),
        table_b.ptr(),
        pool_b.ptr(),
        staging_b.ptr(),
        total_rows,
    )
    .unwrap();
    let att = poisoned(total_rows * sh.q_dim() * 2);
    let scale_log2 = std::f32::consts::LOG2_E / (sh.head_dim as f32).sqrt();
    e.k.attn_prefill(
        &e.s,
        att.ptr(),
        q_b.ptr(),
        tiles_b.ptr(),
        tiles.len(),
        meta_b.ptr(),
        table_b.ptr(),
        pool_b.ptr(),
        staging_b.ptr(),
        scale_log2,
    )
    .unwrap();
    e.s.sync("test").unwrap();
    // Decode attention with partitions of one tile, two, three, and one partition per item:
    // single-partition rows, one merge group, groups of 8 with a lone last partition (288 keys
    // in 9 partitions), many groups (2100 keys in 66). Each launch twice: the counters come back
    // to zero, so the second gives the same bits.
    let group = sh.heads / sh.kv_heads;
    let max_keys = metas
        .iter()
        .filter(|m| m.rows == 1)
        .map(|m| m.start_pos as usize + 1)
        .max()
        .unwrap();
    let q_elems = total_rows * sh.q_dim();
    let mut decoded = Vec::new();
    for part_keys in [32usize, 64, 96, 4096] {
        let parts = max_keys.div_ceil(part_keys);
        let n_part = decode_ids.len() * sh.kv_heads * parts;
        let (po, pml) = (
            poisoned(n_part * group * sh.head_dim * 4),
            poisoned(n_part * group * 2 * 4),
        );
        let counters = DeviceBuf::new(n_part * 4, "test counters").unwrap();
        counters.fill_bytes(0).unwrap();
        let mut runs = Vec::new();
        for _ in 0..2 {
            let out = poisoned(q_elems * 2);
            e.k.attn_decode(
                &e.s,
                out.ptr(),
                po.ptr(),
                pml.ptr(),
                counters.ptr(),
                q_b.ptr(),
                dec_b.ptr(),
                decode_ids.len(),
                meta_b.ptr(),
                table_b.ptr(),
                pool_b.ptr(),
                staging_b.ptr(),
                part_keys as i32,
                parts as i32,
                scale_log2,
            )
            .unwrap();
            e.s.sync("test").unwrap();
            runs.push(bits_bf16(&out, q_elems));
            let mut left = vec![0u32; n_part];
            counters.download(&mut left, "test counters").unwrap();
            assert!(left.iter().all(|&c| c == 0), "counters left {left:?}");
        }
        assert_eq!(
            runs[0], runs[1],
            "partitions of {part_keys}: a second launch"
        );
        let values: Vec<f32> = runs[0]
            .iter()
            .map(|&b| bf16::from_bits(b).to_f32())
            .collect();
        decoded.push((part_keys, values));
    }

    let mut pool_after = vec![bf16::ZERO; pool.len()];
    pool_b.download(&mut pool_after, "pool").unwrap();
    let mut staging_after = vec![bf16::ZERO; staging.len()];
    staging_b.download(&mut staging_after, "staging").unwrap();
    let kv_at = |entry: u32, pos: usize, v: bool, j: usize| -> f64 {
        let (buf, base) = if entry & STAGED != 0 {
            (&staging_after, (entry & !STAGED) as usize * be)
        } else {
            (&pool_after, entry as usize * be)
        };
        let off = pos % bt + if v { bt } else { 0 };
        buf[base + off * sh.kv_dim() + j].to_f64()
    };
    // rope_kv_write: new positions hold bf16(rotated k) and bf16(v) of their rows.
    let (mut got_k, mut want_k) = (Vec::new(), Vec::new());
    for m in &metas {
        for r in 0..m.rows as usize {
            let pos = m.start_pos as usize + r;
            let entry = table[m.toff as usize + pos / bt];
            let row = &qkv[(m.row0 as usize + r) * sh.qkv_width()..];
            let mut k_row = row[sh.q_dim()..sh.q_dim() + sh.kv_dim()].to_vec();
            for head in k_row.chunks_mut(sh.head_dim) {
                rope.rotate(head, pos);
            }
            for j in 0..sh.kv_dim() {
                got_k.push(kv_at(entry, pos, false, j) as f32);
                want_k.push(k_row[j] as f64);
                assert_eq!(
                    kv_at(entry, pos, true, j),
                    bf16::from_f32(row[sh.q_dim() + sh.kv_dim() + j]).to_f64()
                );
            }
        }
    }
    let ek = rel_err(&got_k, &want_k, "k written");
    assert!(ek < 5e-3, "k written: relative error {ek:e}");
    let q = down_bf16(&q_b, total_rows * sh.q_dim());
    let got = down_bf16(&att, total_rows * sh.q_dim());
    let (d, scale) = (sh.head_dim, 1.0 / (sh.head_dim as f64).sqrt());
    for (n, m) in metas.iter().enumerate() {
        let mut want = Vec::new();
        let mut g = Vec::new();
        for r in 0..m.rows as usize {
            let row = m.row0 as usize + r;
            let qpos = m.start_pos as usize + r;
            for head in 0..sh.heads {
                let kvh = head / group;
                let qv: Vec<f64> = (0..d)
                    .map(|i| q[row * sh.q_dim() + head * d + i] as f64)
                    .collect();
                let scores: Vec<f64> = (0..=qpos)
                    .map(|p| {
                        let entry = table[m.toff as usize + p / bt];
                        (0..d)
                            .map(|i| qv[i] * kv_at(entry, p, false, kvh * d + i))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let ws: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let total: f64 = ws.iter().sum();
                for i in 0..d {
                    let o: f64 = (0..=qpos)
                        .map(|p| {
                            ws[p] * kv_at(table[m.toff as usize + p / bt], p, true, kvh * d + i)
                        })
                        .sum();
                    want.push(o / total);
                    g.push(got[row * sh.q_dim() + head * d + i]);
                }
            }
        }
        if m.rows > 1 {
            let err = rel_err(&g, &want, &format!("attention item {n} {:?}", cases[n]));
            assert!(
                err < 1.5e-2,
                "attention item {n} {:?}: relative error {err:e}",
                cases[n]
            );
            continue;
        }
        // Decode: f32 throughout, then one bf16 rounding.
        let row = m.row0 as usize * sh.q_dim();
        for (part_keys, got) in &decoded {
            let g = &got[row..row + sh.q_dim()];
            let what = format!("decode item {n} {:?}, partitions of {part_keys}", cases[n]);
            let err = rel_err(g, &want, &what);
            assert!(err < 5e-3, "{what}: relative error {err:e}");
        }
    }
}

#[test]
fn paged_attention_prefill_and_decode_match_the_reference_small_shape() {
    attention_case(SMALL, 21);
}

#[test]
fn paged_attention_prefill_and_decode_match_the_reference_llama_head_dim() {
    attention_case(LLAMA, 22);
}

#[test]
fn paged_attention_prefill_and_decode_match_the_reference_blocks_of_5() {
    attention_case(ODD_BLOCKS, 23);
}
