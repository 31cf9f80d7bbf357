// Strata's decode kernels: the GEMVs of steps of at most GEMV_ROWS rows and decode attention.
// kernels.rs compiles this file appended to kernels.cu, whose types, constants and helpers are
// in scope here.

// ---------------------------------------------------------------------------------------------
// Matrix-vector products for steps of at most GEMV_ROWS rows (decode): y[r, j] (+)= x[r]·w[j],
// w bf16 [m, k] row-major, x bf16 [rows, k], k a multiple of 8. One warp per output; every lane
// streams 16-byte chunks of the weight row (read once: the step is bound by these bytes).
// Grid: ceil(m / 8) CTAs of 256 threads.

#define GEMV_ROWS 4

// A 16-byte chunk of a weight row, read once: not kept in L1.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

extern "C" __global__ void __launch_bounds__(256) gemv_bf16(void* y, const bf16* x, const bf16* w, int rows,
                                                           int m, int k, int out_bf16, int accumulate) {
    int j = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (j >= m) return; // whole warps leave together
    const uint4* wr = (const uint4*)(w + (u64)j * k);
    int n = k / 8;
    float acc[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) acc[r] = 0.0f;
#pragma unroll 4
    for (int i = lane; i < n; i += 32) {
        uint4 wv = ld_stream(wr + i);
        const bf16* wh = (const bf16*)&wv;
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) {
            if (r < rows) {
                uint4 xv = ((const uint4*)(x + (u64)r * k))[i];
                const bf16* xh = (const bf16*)&xv;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r] += bf2f(wh[e]) * bf2f(xh[e]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        float v = warp_sum(acc[r]);
        if (lane == 0 && r < rows) {
            u64 at = (u64)r * m + j;
            if (out_bf16) {
                ((bf16*)y)[at] = f2bf(v);
            } else {
                float* yf = (float*)y;
                yf[at] = accumulate ? yf[at] + v : v;
            }
        }
    }
}

// The decode GEMV with the RMSNorm in front: x is the f32 residual [rows, k], nw the norm's
// weight. Each CTA normalizes the rows into shared memory as bf16 (dynamic, rows * k * 2 bytes)
// with rms_norm's very arithmetic — 512 threads, each summing x[t], x[t + 512], ..., then
// warp_sum and the same sum over the 16 warps' parts — so the products are bit for bit those of
// rms_norm followed by gemv_bf16 (same chunk order per lane, same warp_sum). While the norm runs,
// each warp's first weight chunks are already in flight. Grid: ceil(m / 16) CTAs of 512 threads.

#define NORM_THREADS 512
#define NORM_WARPS (NORM_THREADS / 32)
#define GEMV_UNROLL 4

// acc[r] += w·x[r] over the 8 elements of chunk i (gemv_bf16's inner step).
__device__ __forceinline__ void dot_chunk(float* acc, uint4 wv, const bf16* xs, int i, int rows, int k) {
    const bf16* wh = (const bf16*)&wv;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        if (r < rows) {
            uint4 xv = ((const uint4*)(xs + r * k))[i];
            const bf16* xh = (const bf16*)&xv;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[r] += bf2f(wh[e]) * bf2f(xh[e]);
        }
    }
}

// xs[r] = bf16(x[r] / rms(x[r]) * nw) for each row, as rms_norm computes it. All threads call.
__device__ void rms_rows_to_shared(bf16* xs, const float* x, const float* nw, int rows, int k, float eps) {
    __shared__ float part[GEMV_ROWS][NORM_WARPS];
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        if (r < rows) {
            const float* xr = x + (u64)r * k;
            float s = 0.0f;
            for (int i = threadIdx.x; i < k; i += NORM_THREADS) s += xr[i] * xr[i];
            s = warp_sum(s);
            if (lane == 0) part[r][w] = s;
        }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        if (r < rows) {
            float s = lane < NORM_WARPS ? part[r][lane] : 0.0f;
            s = warp_sum(s);
            float inv = rsqrtf(s / (float)k + eps);
            const float* xr = x + (u64)r * k;
            for (int i = threadIdx.x; i < k; i += NORM_THREADS) xs[r * k + i] = f2bf(xr[i] * inv * nw[i]);
        }
    }
    __syncthreads();
}

// Weight rows `wr[0..NW)` of one warp times the normalized rows: acc[q][r] = w_q·xs[r].
// Loads GEMV_UNROLL chunks per lane at a time (GEMV_UNROLL / NW of each row, in order); the
// first ones are in flight before the norm.
template <int NW>
__device__ __forceinline__ void rms_gemv_warp(float (*acc)[GEMV_ROWS], const uint4* const* wr, bool live,
                                              bf16* xs, const float* x, const float* nw, int rows, int k,
                                              float eps) {
    constexpr int U = GEMV_UNROLL / NW;
    int lane = threadIdx.x & 31, n = k / 8;
    uint4 pre[NW][U];
#pragma unroll
    for (int q = 0; q < NW; q++)
#pragma unroll
        for (int u = 0; u < U; u++)
            if (live && lane + 32 * u < n) pre[q][u] = ld_stream(wr[q] + lane + 32 * u);
    rms_rows_to_shared(xs, x, nw, rows, k, eps);
    if (!live) return;
#pragma unroll
    for (int q = 0; q < NW; q++) {
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) acc[q][r] = 0.0f;
    }
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int q = 0; q < NW; q++)
            if (lane + 32 * u < n) dot_chunk(acc[q], pre[q][u], xs, lane + 32 * u, rows, k);
    for (int i0 = lane + 32 * U; i0 < n; i0 += 32 * U) {
        uint4 wv[NW][U];
#pragma unroll
        for (int q = 0; q < NW; q++)
#pragma unroll
            for (int u = 0; u < U; u++)
                if (i0 + 32 * u < n) wv[q][u] = ld_stream(wr[q] + i0 + 32 * u);
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int q = 0; q < NW; q++)
                if (i0 + 32 * u < n) dot_chunk(acc[q], wv[q][u], xs, i0 + 32 * u, rows, k);
    }
}

// y[r, j] = rms_norm(x[r])·w[j] for rows ≤ GEMV_ROWS, as f32 or bf16 (then as gemv_bf16 rounds).
extern "C" __global__ void __launch_bounds__(NORM_THREADS, 2) gemv_rms(void* y, const float* x, const float* nw,
                                                                      const bf16* w, int rows, int m, int k,
                                                                      float eps, int out_bf16) {
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    int j = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    bool live = j < m; // every thread takes part in the norm's barriers
    const uint4* wr = (const uint4*)(w + (u64)(live ? j : 0) * k);
    float acc[1][GEMV_ROWS];
    rms_gemv_warp<1>(acc, &wr, live, (bf16*)dyn_smem, x, nw, rows, k, eps);
    if (!live) return;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        float v = warp_sum(acc[0][r]);
        if (lane == 0 && r < rows) {
            u64 at = (u64)r * m + j;
            if (out_bf16) ((bf16*)y)[at] = f2bf(v);
            else ((float*)y)[at] = v;
        }
    }
}

// act[r, j] = silu(g) * u with g = bf16(rms_norm(x[r])·w[j]) and u = bf16(rms_norm(x[r])·w[ff + j])
// (w = [gate | up], [2 ff, k]): one warp takes both rows, so the result is bit for bit gemv_rms
// into bf16 then silu_mul. Grid: ceil(ff / 16) CTAs of 512 threads.
extern "C" __global__ void __launch_bounds__(NORM_THREADS, 2) gemv_rms_swiglu(bf16* act, const float* x,
                                                                             const float* nw, const bf16* w,
                                                                             int rows, int ff, int k, float eps) {
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    int j = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    bool live = j < ff;
    const uint4* wr[2] = {(const uint4*)(w + (u64)(live ? j : 0) * k),
                          (const uint4*)(w + (u64)(live ? ff + j : 0) * k)};
    float acc[2][GEMV_ROWS];
    rms_gemv_warp<2>(acc, wr, live, (bf16*)dyn_smem, x, nw, rows, k, eps);
    if (!live) return;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        float g = bf2f(f2bf(warp_sum(acc[0][r]))), u = bf2f(f2bf(warp_sum(acc[1][r])));
        if (lane == 0 && r < rows) act[(u64)r * ff + j] = f2bf(g / (1.0f + __expf(-g)) * u);
    }
}

// ---------------------------------------------------------------------------------------------
// Decode attention (one query row per item), split over the keys: a CTA takes one item, one kv
// head (all GROUP query heads that share it) and `part_keys` keys, and writes an unnormalized
// partial (m, l, o) that attn_decode_reduce merges. Lanes read 16 bytes of a key row each:
// LPK lanes per key, KPW keys per warp at a time. Grid: (parts, KV_HEADS, items).

#define LPK (HEAD_DIM / 8)
#define KPW (32 / LPK)
#define DEC_WARPS 4
#define DEC_UNROLL 4

extern "C" __global__ void __launch_bounds__(128) attn_decode(
    float* part_o, float* part_ml, const bf16* q, const int* item_ids, const Item* items,
    const u32* table, bf16* pool, bf16* staging, int part_keys, int parts, float scale_log2) {
    __shared__ float sm_ml[DEC_WARPS * KPW][GROUP][2];
    __shared__ float sm_o[DEC_WARPS * KPW][GROUP][HEAD_DIM];
    int part = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
    Item it = items[item_ids[z]];
    int len = it.start_pos + 1;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int slot = lane / LPK, ch = lane % LPK;
    int k_begin = part * part_keys, k_end = min(len, k_begin + part_keys);

    float qf[GROUP][8];
#pragma unroll
    for (int gq = 0; gq < GROUP; gq++) {
        uint4 v = *(const uint4*)(q + (u64)it.row0 * Q_DIM + (kvh * GROUP + gq) * HEAD_DIM + ch * 8);
        const bf16* h = (const bf16*)&v;
#pragma unroll
        for (int e = 0; e < 8; e++) qf[gq][e] = bf2f(h[e]);
    }
    float m[GROUP], l[GROUP], o[GROUP][8];
#pragma unroll
    for (int gq = 0; gq < GROUP; gq++) {
        m[gq] = NEG_INF;
        l[gq] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) o[gq][e] = 0.0f;
    }
    const int stride = DEC_WARPS * KPW;
    // The loop bound is the same for every lane of the warp, so all of them reach the shuffles.
    for (int kw = k_begin + warp * KPW; kw < k_end; kw += stride * DEC_UNROLL) {
        int kb = kw + slot;
        uint4 kr[DEC_UNROLL], vr[DEC_UNROLL];
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) {
            int kpos = kb + u * stride;
            if (kpos < k_end) {
                const bf16* blk = block_ptr(pool, staging, table[it.toff + kpos / BLOCK_TOKENS]);
                int off = kpos % BLOCK_TOKENS;
                kr[u] = *(const uint4*)(blk + (u64)off * KV_DIM + kvh * HEAD_DIM + ch * 8);
                vr[u] = *(const uint4*)(blk + (u64)(BLOCK_TOKENS + off) * KV_DIM + kvh * HEAD_DIM + ch * 8);
            }
        }
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) {
            int kpos = kb + u * stride;
            // Every lane of a key group agrees on `valid`, so the shuffles below stay in step.
            bool valid = kpos < k_end;
            const bf16* kh = (const bf16*)&kr[u];
            const bf16* vh = (const bf16*)&vr[u];
#pragma unroll
            for (int gq = 0; gq < GROUP; gq++) {
                float d = 0.0f;
                if (valid) {
#pragma unroll
                    for (int e = 0; e < 8; e++) d += qf[gq][e] * bf2f(kh[e]);
                }
#pragma unroll
                for (int w = LPK / 2; w > 0; w >>= 1) d += __shfl_xor_sync(0xffffffffu, d, w);
                if (valid) {
                    float sc = d * scale_log2;
                    float mn = fmaxf(m[gq], sc);
                    float corr = exp2f(m[gq] - mn), p = exp2f(sc - mn);
                    l[gq] = l[gq] * corr + p;
#pragma unroll
                    for (int e = 0; e < 8; e++) o[gq][e] = o[gq][e] * corr + p * bf2f(vh[e]);
                    m[gq] = mn;
                }
            }
        }
    }
    int sl = warp * KPW + slot;
#pragma unroll
    for (int gq = 0; gq < GROUP; gq++) {
        if (ch == 0) {
            sm_ml[sl][gq][0] = m[gq];
            sm_ml[sl][gq][1] = l[gq];
        }
#pragma unroll
        for (int e = 0; e < 8; e++) sm_o[sl][gq][ch * 8 + e] = o[gq][e];
    }
    __syncthreads();
    u64 base = ((u64)z * KV_HEADS + kvh) * parts + part; // (z, kvh, part)
    for (int i = threadIdx.x; i < GROUP * HEAD_DIM; i += blockDim.x) {
        int gq = i / HEAD_DIM, d = i % HEAD_DIM;
        float mm = NEG_INF;
        for (int s2 = 0; s2 < stride; s2++) mm = fmaxf(mm, sm_ml[s2][gq][0]);
        float ll = 0.0f, oo = 0.0f;
        if (mm != NEG_INF) {
            for (int s2 = 0; s2 < stride; s2++) {
                float w = sm_ml[s2][gq][0] == NEG_INF ? 0.0f : exp2f(sm_ml[s2][gq][0] - mm);
                ll += sm_ml[s2][gq][1] * w;
                oo += sm_o[s2][gq][d] * w;
            }
        }
        part_o[(base * GROUP + gq) * HEAD_DIM + d] = oo;
        if (d == 0) {
            part_ml[(base * GROUP + gq) * 2] = mm;
            part_ml[(base * GROUP + gq) * 2 + 1] = ll;
        }
    }
}

// Merges the partials of attn_decode into each item's attention row (bf16). Grid: (items,
// HEADS); threads: HEAD_DIM.
extern "C" __global__ void attn_decode_reduce(bf16* att, const float* part_o, const float* part_ml,
                                              const int* item_ids, const Item* items, int parts) {
    int z = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
    int kvh = head / GROUP, gq = head % GROUP;
    Item it = items[item_ids[z]];
    u64 base = ((u64)z * KV_HEADS + kvh) * parts;
    float mm = NEG_INF;
    for (int p = 0; p < parts; p++) mm = fmaxf(mm, part_ml[((base + p) * GROUP + gq) * 2]);
    float ll = 0.0f, oo = 0.0f;
    for (int p = 0; p < parts; p++) {
        float pm = part_ml[((base + p) * GROUP + gq) * 2];
        if (pm == NEG_INF) continue;
        float w = exp2f(pm - mm);
        ll += part_ml[((base + p) * GROUP + gq) * 2 + 1] * w;
        oo += part_o[((base + p) * GROUP + gq) * HEAD_DIM + d] * w;
    }
    att[(u64)it.row0 * Q_DIM + head * HEAD_DIM + d] = f2bf(oo / ll);
}
