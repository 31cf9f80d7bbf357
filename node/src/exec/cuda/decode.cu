// Strata's decode kernels: the GEMVs of steps of at most GEMV_ROWS rows and decode attention.
// kernels.rs compiles this file appended to kernels.cu, whose types, constants and helpers are
// in scope here.

// ---------------------------------------------------------------------------------------------
// Matrix-vector products for steps of at most GEMV_ROWS rows (decode): y[r, j] (+)= x[r]·w[j],
// w bf16 [m, k] row-major, x bf16 [rows, k], k a multiple of 8. One warp per output; every lane
// streams 16-byte chunks of the weight row (read once: the step is bound by these bytes).
// Grid: ceil(m / 8) CTAs of 256 threads.

#define GEMV_ROWS 4

#define GEMV_PREFETCH 128 // chunks per warp asked into L2 before the inputs are read (2 KiB)

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// A 16-byte chunk of a weight row, read once: not kept in L1.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// y[at] = v, as bf16 or f32, or added to the f32 there.
__device__ __forceinline__ void store_out(void* y, u64 at, float v, int out_bf16, int accumulate) {
    if (out_bf16) {
        ((bf16*)y)[at] = f2bf(v);
    } else {
        float* yf = (float*)y;
        yf[at] = accumulate ? yf[at] + v : v;
    }
}

// acc[r] += w·x[r] over the 8 elements of chunk i, for each of rows ≤ GEMV_ROWS rows of x
// (row r at xs + r * k, in global or shared memory).
__device__ __forceinline__ void dot_chunk(float* acc, uint4 wv, const bf16* xs, int i, int rows, int k) {
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
        if (r < rows) acc[r] = dot8(acc[r], wv, ((const uint4*)(xs + r * k))[i]);
}

extern "C" __global__ void __launch_bounds__(256) gemv_bf16(void* y, const bf16* x, const bf16* w, int rows,
                                                           int m, int k, int out_bf16, int accumulate) {
    int j = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const uint4* wr = (const uint4*)(w + (u64)j * k);
    int n = k / 8;
    if (j < m)
        for (int i = lane; i < min(n, GEMV_PREFETCH); i += 32) prefetch_l2(wr + i);
    grid_dep_wait();
    grid_dep_launch();
    if (j >= m) return; // whole warps leave together
    float acc[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) acc[r] = 0.0f;
#pragma unroll 4
    for (int i = lane; i < n; i += 32) dot_chunk(acc, ld_stream(wr + i), x, i, rows, k);
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        float v = warp_sum(acc[r]);
        if (lane == 0 && r < rows) store_out(y, (u64)r * m + j, v, out_bf16, accumulate);
    }
}

// The decode GEMV with the RMSNorm in front: x is the f32 residual [rows, k], nw the norm's
// weight. Each CTA normalizes the rows into shared memory as bf16 (dynamic, rows * k * 2 bytes)
// with rms_norm's very arithmetic — 512 threads, each summing x[t], x[t + 512], ..., then
// warp_sum and the same sum over the 16 warps' parts — so the products are bit for bit those of
// rms_norm followed by gemv_bf16 (same chunk order per lane, same warp_sum). While the norm runs,
// each warp's first weight chunks are on their way into L2. 40 registers: 3 CTAs (48 warps) per
// SM. Grid: ceil(m / 16) CTAs of 512 threads.

#define NORM_THREADS 512
#define NORM_WARPS (NORM_THREADS / 32)
#define GEMV_UNROLL 4

// xs[r] (at xs + r * xs_stride) = bf16(x[r] / rms(x[r]) * nw) for each of rows ≤ R rows, as
// rms_norm computes it; row r of x is row_idx[r] when row_idx is given. All threads call.
template <int R>
__device__ void rms_rows_to_shared(bf16* xs, int xs_stride, const float* x, const int* row_idx, const float* nw,
                                   int rows, int k, float eps) {
    __shared__ float part[R][NORM_WARPS];
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r < rows) {
            const float* xr = x + (u64)(row_idx ? row_idx[r] : r) * k;
            float s = 0.0f;
            for (int i = threadIdx.x; i < k; i += NORM_THREADS) s += xr[i] * xr[i];
            s = warp_sum(s);
            if (lane == 0) part[r][w] = s;
        }
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (r < rows) {
            float s = lane < NORM_WARPS ? part[r][lane] : 0.0f;
            s = warp_sum(s);
            float inv = rsqrtf(s / (float)k + eps);
            const float* xr = x + (u64)(row_idx ? row_idx[r] : r) * k;
            for (int i = threadIdx.x; i < k; i += NORM_THREADS) xs[r * xs_stride + i] = f2bf(xr[i] * inv * nw[i]);
        }
    }
    __syncthreads();
}

// Weight rows `wr[0..NW)` of one warp times the normalized rows: acc[q][r] = w_q·xs[r].
// Loads GEMV_UNROLL chunks per lane at a time (GEMV_UNROLL / NW of each row, in order). The
// first GEMV_PREFETCH / NW chunks of each row are asked into L2 before the norm, so their HBM
// latency passes while it runs (no registers held across it).
template <int NW>
__device__ __forceinline__ void rms_gemv_warp(float (*acc)[GEMV_ROWS], const uint4* const* wr, bool live,
                                              bf16* xs, const float* x, const int* row_idx, const float* nw,
                                              int rows, int k, float eps) {
    constexpr int U = GEMV_UNROLL / NW;
    int lane = threadIdx.x & 31, n = k / 8;
    if (live) {
#pragma unroll
        for (int q = 0; q < NW; q++)
            for (int i = lane; i < min(n, GEMV_PREFETCH / NW); i += 32) prefetch_l2(wr[q] + i);
    }
    grid_dep_wait();
    grid_dep_launch();
    rms_rows_to_shared<GEMV_ROWS>(xs, k, x, row_idx, nw, rows, k, eps);
    if (!live) return;
#pragma unroll
    for (int q = 0; q < NW; q++) {
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) acc[q][r] = 0.0f;
    }
    for (int i0 = lane; i0 < n; i0 += 32 * U) {
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

// y[r, j] = rms_norm(x[row r])·w[j] for rows ≤ GEMV_ROWS, as f32 or bf16 (then as gemv_bf16
// rounds); row r is x[row_idx[r]] when row_idx is given (gather_rows' rows), else x[r].
extern "C" __global__ void __launch_bounds__(NORM_THREADS, 3) gemv_rms(void* y, const float* x, const int* row_idx,
                                                                      const float* nw, const bf16* w, int rows,
                                                                      int m, int k, float eps, int out_bf16) {
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    int j = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    bool live = j < m; // every thread takes part in the norm's barriers
    const uint4* wr = (const uint4*)(w + (u64)(live ? j : 0) * k);
    float acc[1][GEMV_ROWS];
    rms_gemv_warp<1>(acc, &wr, live, (bf16*)dyn_smem, x, row_idx, nw, rows, k, eps);
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
// into bf16 then silu_mul. Grid: ceil(ff / 16) CTAs of 512 threads, 2 per SM: at 3 (40
// registers) its two rows' accumulators spill.
extern "C" __global__ void __launch_bounds__(NORM_THREADS, 2) gemv_rms_swiglu(bf16* act, const float* x,
                                                                             const float* nw, const bf16* w,
                                                                             int rows, int ff, int k, float eps) {
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    int j = blockIdx.x * NORM_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    bool live = j < ff;
    const uint4* wr[2] = {(const uint4*)(w + (u64)(live ? j : 0) * k),
                          (const uint4*)(w + (u64)(live ? ff + j : 0) * k)};
    float acc[2][GEMV_ROWS];
    rms_gemv_warp<2>(acc, wr, live, (bf16*)dyn_smem, x, nullptr, nw, rows, k, eps);
    if (!live) return;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
        float g = bf2f(f2bf(warp_sum(acc[0][r]))), u = bf2f(f2bf(warp_sum(acc[1][r])));
        if (lane == 0 && r < rows) act[(u64)r * ff + j] = f2bf(g / (1.0f + __expf(-g)) * u);
    }
}

// ---------------------------------------------------------------------------------------------
// Decode attention (one query row per item), split over the keys: a CTA takes one item, one kv
// head (all GROUP query heads that share it) and the `part_keys` keys of its partition, in tiles
// of DEC_TILE keys that cp.async brings into shared memory two at a time (the next tile's bytes
// are in flight while this one is used). Per tile: scores (four lanes per key, each a quarter
// of its row for every head), the online softmax (a warp per head), then o += p·V (a thread per
// output column d, for DEC_OUT heads). An item with one partition writes its rows. Otherwise
// each CTA writes an unnormalized partial (m, l, o); the last CTA of each group of DEC_MERGE
// partitions to finish merges the group's partials, and the last group to finish merges the
// groups' into the rows. Arrivals are counted in `counters` (zero before the launch; each count
// is left at zero again by the CTA that completes it). Grid: (parts, KV_HEADS, items); CTAs past
// an item's keys leave at once.

#define DEC_THREADS 128
#define DEC_TILE 32
#define KROW (HEAD_DIM + 8)                          // padded K row: conflict-free 16-byte reads
#define DEC_COLS (DEC_THREADS / HEAD_DIM)            // threads per output column d
#define DEC_OUT ((GROUP + DEC_COLS - 1) / DEC_COLS) // outputs per thread
#define DEC_VEC (GROUP * HEAD_DIM / 4)               // float4 slots of a partial's o
#define DEC_MERGE 8                                  // partials merged at a time
#define DEC_WARPS (DEC_THREADS / 32)
#define DEC_KCH (HEAD_DIM / 8)         // 16-byte chunks of a K row
#define DEC_QCH ((DEC_KCH + 3) / 4)    // of them per lane: a key's row over four lanes
#define DEC_SROW (DEC_TILE + 8)        // padded score row: the four quarters' writes meet no bank twice
static_assert(DEC_TILE == DEC_WARPS * 8, "a warp scores 8 keys");
// CTAs an SM must hold (so 80 registers a thread at 6). Groups of more than 4 heads need more
// shared memory than 6 CTAs fit, and their scores more registers, so they ask for 5.
#define DEC_MIN_CTAS (GROUP > 4 ? 5 : 6)

struct DecodeSmem {
    bf16 k[2][DEC_TILE][KROW];
    bf16 v[2][DEC_TILE][HEAD_DIM];
    float q[GROUP][HEAD_DIM];
    float sc[GROUP][DEC_SROW];               // the tile's scores (log2 scale)
    __align__(16) float p[DEC_TILE][GROUP]; // a key's weights side by side: one read for the group
    float m[GROUP], l[GROUP], corr[GROUP];
    int last;
};

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    u32 s = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
}

// Starts copying keys [k0, min(k0 + DEC_TILE, k_end)) of kv head `kvh` into stage `st`.
__device__ __forceinline__ void decode_load_tile(DecodeSmem& sm, int st, const Item& it, int kvh, int k0,
                                                 int k_end, const u32* table, bf16* pool, bf16* staging) {
    const int per = DEC_TILE * (HEAD_DIM / 8); // 16-byte chunks of K (and of V) per tile
    for (int c = threadIdx.x; c < 2 * per; c += DEC_THREADS) {
        int is_v = c >= per, rem = c - is_v * per;
        int key = rem / (HEAD_DIM / 8), ch = rem % (HEAD_DIM / 8);
        int kpos = k0 + key;
        if (kpos < k_end) {
            const bf16* blk = block_ptr(pool, staging, table[it.toff + kpos / BLOCK_TOKENS]);
            int row = is_v * BLOCK_TOKENS + kpos % BLOCK_TOKENS;
            const bf16* src = blk + (u64)row * KV_DIM + kvh * HEAD_DIM + ch * 8;
            bf16* dst = is_v ? &sm.v[st][key][ch * 8] : &sm.k[st][key][ch * 8];
            cp_async16(dst, src);
        }
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// Counts this CTA in at `counter` once its partial is written; true for the last of `n`, which
// leaves the counter at zero for the next launch. All threads call.
__device__ bool decode_arrive(DecodeSmem& sm, u32* counter, int n) {
    __threadfence(); // this thread's partial is visible device-wide before the count
    __syncthreads();
    if (threadIdx.x == 0) {
        sm.last = atomicAdd(counter, 1u) == (u32)(n - 1);
        if (sm.last) *counter = 0u; // all n have counted
    }
    __syncthreads();
    bool last = sm.last;
    if (last) __threadfence(); // the others' partials are read after their counts
    return last;
}

// Merges `count` partials of one (item, kv head), at slots first, first + stride, ... from
// `base` (read from L2): into the group's rows of att (bf16, normalized) when `att_row` is
// given, else back into slot `first` as one partial. All threads call.
__device__ void decode_merge(DecodeSmem& sm, float* part_o, float* part_ml, u64 base, int first, int count,
                             int stride, bf16* att_row) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // Per head (a warp each): the largest m and the total weight l.
    for (int g = warp; g < GROUP; g += DEC_THREADS / 32) {
        float mm = NEG_INF, ll = 0.0f;
        for (int i = lane; i < count; i += 32)
            mm = fmaxf(mm, __ldcg(&part_ml[((base + first + (u64)i * stride) * GROUP + g) * 2]));
#pragma unroll
        for (int w = 16; w > 0; w >>= 1) mm = fmaxf(mm, __shfl_xor_sync(0xffffffffu, mm, w));
        for (int i = lane; i < count; i += 32) {
            const float* ml = &part_ml[((base + first + (u64)i * stride) * GROUP + g) * 2];
            ll += __ldcg(ml + 1) * exp2f(__ldcg(ml) - mm);
        }
        ll = warp_sum(ll);
        if (lane == 0) {
            sm.m[g] = mm;
            sm.l[g] = ll;
        }
    }
    __syncthreads();
    // o = Σ o_p · 2^(m_p − m), four elements a thread at a time.
    for (int s = threadIdx.x; s < DEC_VEC; s += DEC_THREADS) {
        int g = s * 4 / HEAD_DIM;
        float mm = sm.m[g];
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
        for (int i = 0; i < count; i++) {
            u64 slot = base + first + (u64)i * stride;
            float w = exp2f(__ldcg(&part_ml[(slot * GROUP + g) * 2]) - mm);
            float4 po = __ldcg((const float4*)(part_o + slot * GROUP * HEAD_DIM) + s);
            acc.x += po.x * w;
            acc.y += po.y * w;
            acc.z += po.z * w;
            acc.w += po.w * w;
        }
        if (att_row) {
            float inv = 1.0f / sm.l[g];
            u32* out = (u32*)(att_row + s * 4);
            out[0] = pack2(acc.x * inv, acc.y * inv);
            out[1] = pack2(acc.z * inv, acc.w * inv);
        } else {
            ((float4*)(part_o + (base + first) * GROUP * HEAD_DIM))[s] = acc; // only this thread reads it
        }
    }
    if (!att_row) {
        __syncthreads(); // every thread has read slot `first`'s m
        if (threadIdx.x < GROUP) {
            part_ml[((base + first) * GROUP + threadIdx.x) * 2] = sm.m[threadIdx.x];
            part_ml[((base + first) * GROUP + threadIdx.x) * 2 + 1] = sm.l[threadIdx.x];
        }
    }
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS, DEC_MIN_CTAS) attn_decode(
    bf16* att, float* part_o, float* part_ml, u32* counters, const bf16* q, const int* item_ids,
    const Item* items, const u32* table, bf16* pool, bf16* staging, int part_keys, int parts,
    float scale_log2) {
    __shared__ __align__(16) DecodeSmem sm;
    grid_dep_wait();
    grid_dep_launch();
    int part = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
    Item it = items[item_ids[z]];
    int len = it.start_pos + 1;
    int k_begin = part * part_keys;
    if (k_begin >= len) return; // the whole CTA: this item has fewer keys
    int k_end = min(len, k_begin + part_keys);
    int n_parts = (len + part_keys - 1) / part_keys;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = threadIdx.x;
    int n_tiles = (k_end - k_begin + DEC_TILE - 1) / DEC_TILE;

    decode_load_tile(sm, 0, it, kvh, k_begin, k_end, table, pool, staging);
    decode_load_tile(sm, 1, it, kvh, k_begin + DEC_TILE, k_end, table, pool, staging);
    const bf16* qh = q + (u64)it.row0 * Q_DIM + kvh * GROUP * HEAD_DIM; // the group's heads
    for (int i = t; i < GROUP * HEAD_DIM; i += DEC_THREADS) sm.q[i / HEAD_DIM][i % HEAD_DIM] = bf2f(qh[i]);
    if (t < GROUP) {
        sm.m[t] = NEG_INF;
        sm.l[t] = 0.0f;
    }
    // This thread's outputs: (g0 + j * DEC_COLS, d). With one thread per column, g0 = 0 is
    // known here, so the `g < GROUP` tests below fold away and a key's weights come in one read.
    int d = t % HEAD_DIM, g0 = DEC_COLS == 1 ? 0 : t / HEAD_DIM;
    float o[DEC_OUT];
#pragma unroll
    for (int j = 0; j < DEC_OUT; j++) o[j] = 0.0f;

    for (int tile = 0; tile < n_tiles; tile++) {
        int st = tile & 1, k0 = k_begin + tile * DEC_TILE, tn = min(DEC_TILE, k_end - k0);
        asm volatile("cp.async.wait_group 1;" ::: "memory"); // all but the newest group: this tile
        __syncthreads();
        // Scores: warp w takes keys 8w..8w+7, four lanes a key (lane = key % 8 + 8 quarter),
        // each lane a quarter of the key's row for every head of the group; the quarters meet
        // by shuffles. So a K row is read and unpacked once, not once per head, and lanes 0-7
        // of each read take 8 keys' rows: conflict-free with KROW's padding.
        {
            int key = warp * 8 + (lane & 7), qd = lane >> 3;
            float acc[GROUP];
#pragma unroll
            for (int g = 0; g < GROUP; g++) acc[g] = 0.0f;
            if (key < tn) {
                const uint4* kr = (const uint4*)&sm.k[st][key][0];
#pragma unroll
                for (int i = 0; i < DEC_QCH; i++) {
                    int c = qd * DEC_QCH + i;
                    if (DEC_QCH * 4 == DEC_KCH || c < DEC_KCH) {
                        uint4 kv = kr[c];
                        float kf[8] = {bf_lo(kv.x), bf_hi(kv.x), bf_lo(kv.y), bf_hi(kv.y),
                                       bf_lo(kv.z), bf_hi(kv.z), bf_lo(kv.w), bf_hi(kv.w)};
#pragma unroll
                        for (int g = 0; g < GROUP; g++) {
                            const float4* qr = (const float4*)&sm.q[g][c * 8];
                            float4 qa = qr[0], qb = qr[1];
                            acc[g] += qa.x * kf[0];
                            acc[g] += qa.y * kf[1];
                            acc[g] += qa.z * kf[2];
                            acc[g] += qa.w * kf[3];
                            acc[g] += qb.x * kf[4];
                            acc[g] += qb.y * kf[5];
                            acc[g] += qb.z * kf[6];
                            acc[g] += qb.w * kf[7];
                        }
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < GROUP; g++) {
                acc[g] += __shfl_xor_sync(0xffffffffu, acc[g], 8);
                acc[g] += __shfl_xor_sync(0xffffffffu, acc[g], 16);
                if ((g & 3) == qd) sm.sc[g][key] = key < tn ? acc[g] * scale_log2 : NEG_INF;
            }
        }
        __syncthreads();
        // Online softmax: warp w takes heads w, w + 4, ...; lane = key.
        for (int g = warp; g < GROUP; g += DEC_WARPS) {
            float s = sm.sc[g][lane];
            // Over this tile's keys (the first key of a tile is always valid).
            float mx = s;
#pragma unroll
            for (int w = 16; w > 0; w >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, w));
            float m_old = sm.m[g], m_new = fmaxf(m_old, mx);
            float p = exp2f(s - m_new);
            float sum = warp_sum(p);
            sm.p[lane][g] = p;
            if (lane == 0) {
                float corr = exp2f(m_old - m_new);
                sm.corr[g] = corr;
                sm.l[g] = sm.l[g] * corr + sum;
                sm.m[g] = m_new;
            }
        }
        __syncthreads();
        // o = o * corr + Σ p · V.
        float po[DEC_OUT];
#pragma unroll
        for (int j = 0; j < DEC_OUT; j++) po[j] = 0.0f;
        for (int key = 0; key < tn; key++) {
            float vv = bf2f(sm.v[st][key][d]);
#pragma unroll
            for (int j = 0; j < DEC_OUT; j++) {
                int g = g0 + j * DEC_COLS;
                if (g < GROUP) po[j] += sm.p[key][g] * vv;
            }
        }
#pragma unroll
        for (int j = 0; j < DEC_OUT; j++) {
            int g = g0 + j * DEC_COLS;
            if (g < GROUP) o[j] = o[j] * sm.corr[g] + po[j];
        }
        __syncthreads(); // stage `st` and the scores are free again
        decode_load_tile(sm, st, it, kvh, k0 + 2 * DEC_TILE, k_end, table, pool, staging);
    }

    bf16* att_row = att + (u64)it.row0 * Q_DIM + kvh * GROUP * HEAD_DIM; // the group's heads
    if (n_parts == 1) {
#pragma unroll
        for (int j = 0; j < DEC_OUT; j++) {
            int g = g0 + j * DEC_COLS;
            if (g < GROUP) att_row[g * HEAD_DIM + d] = f2bf(o[j] / sm.l[g]);
        }
        return;
    }
    u64 base = ((u64)z * KV_HEADS + kvh) * parts; // partial (and counters) of (z, kvh, 0)
#pragma unroll
    for (int j = 0; j < DEC_OUT; j++) {
        int g = g0 + j * DEC_COLS;
        if (g < GROUP) part_o[((base + part) * GROUP + g) * HEAD_DIM + d] = o[j];
    }
    if (t < GROUP) {
        part_ml[((base + part) * GROUP + t) * 2] = sm.m[t];
        part_ml[((base + part) * GROUP + t) * 2 + 1] = sm.l[t];
    }
    // Partitions merge in groups of DEC_MERGE (the group's last CTA, into the group's first
    // slot), then the groups (the last group's merger). counters[base]: groups done;
    // counters[base + 1 + grp]: partitions of group grp done.
    int grp = part / DEC_MERGE, n_groups = (n_parts + DEC_MERGE - 1) / DEC_MERGE;
    int in_grp = min(DEC_MERGE, n_parts - grp * DEC_MERGE);
    if (!decode_arrive(sm, counters + base + 1 + grp, in_grp)) return;
    if (n_groups == 1) {
        decode_merge(sm, part_o, part_ml, base, 0, in_grp, 1, att_row);
        return;
    }
    if (in_grp > 1) decode_merge(sm, part_o, part_ml, base, grp * DEC_MERGE, in_grp, 1, nullptr);
    if (!decode_arrive(sm, counters + base, n_groups)) return;
    decode_merge(sm, part_o, part_ml, base, 0, n_groups, DEC_MERGE, att_row);
}
