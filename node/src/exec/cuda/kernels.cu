// Strata's CUDA kernels, compiled by NVRTC at start for the device's architecture. The model's
// shape comes in as compile-time constants (-D): HEAD_DIM, HEADS, KV_HEADS, BLOCK_TOKENS.
// No headers: bf16 is `unsigned short` with explicit conversions, tensor-core products are
// inline PTX (mma.sync m16n8k16, bf16 in, f32 accumulate).
//
// A KV block holds one layer's K and V of BLOCK_TOKENS tokens:
//   K[token][kv_head][dim] then V[token][kv_head][dim], bf16.
// Block tables are u32 entries: a GPU-pool index, or STAGED | a staging-slot index.

typedef unsigned short bf16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define KV_DIM (KV_HEADS * HEAD_DIM)
#define Q_DIM (HEADS * HEAD_DIM)
#define QKV_W (Q_DIM + 2 * KV_DIM)
#define GROUP (HEADS / KV_HEADS)
#define HALF (HEAD_DIM / 2)
#define BLOCK_ELEMS ((u64)2 * BLOCK_TOKENS * KV_DIM)
#define STAGED 0x80000000u
#define NEG_INF (-__int_as_float(0x7f800000))

struct Item {
    int row0;      // first row of the item in the step's activations
    int rows;      // tokens computed this step
    int start_pos; // tokens already in the KV
    int toff;      // first table entry of the item (per layer)
};

__device__ __forceinline__ float bf2f(bf16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ bf16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Two floats as packed bf16x2, `lo` in the low half.
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ bf16* block_ptr(bf16* pool, bf16* staging, u32 e) {
    return (e & STAGED) ? staging + (u64)(e & ~STAGED) * BLOCK_ELEMS : pool + (u64)e * BLOCK_ELEMS;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block; every thread gets the result. blockDim.x a multiple of 32, ≤ 1024.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    v = warp_sum(v);
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) part[w] = v;
    __syncthreads();
    if (w == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

// ---------------------------------------------------------------------------------------------
// Weights and activations

// Uniform values in [-scale, scale) from a counter hash (random weights for benchmarks).
extern "C" __global__ void fill_uniform(bf16* out, u64 n, u64 seed, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        out[i] = f2bf((2.0f * u - 1.0f) * scale);
    }
}

extern "C" __global__ void fill_value(float* out, u64 n, float v) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = v;
}

// out[r] = embed[tokens[r]] (f32 residual stream). Grid: rows.
extern "C" __global__ void embed_gather(float* out, const bf16* embed, const u32* tokens, int hidden) {
    const bf16* src = embed + (u64)tokens[blockIdx.x] * hidden;
    float* dst = out + (u64)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = bf2f(src[i]);
}

// out[r] = x[rows[r]] for the rows listed (the last position of each item). Grid: n.
extern "C" __global__ void gather_rows(float* out, const float* x, const int* rows, int hidden) {
    const float* src = x + (u64)rows[blockIdx.x] * hidden;
    float* dst = out + (u64)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

// out = x / rms(x) * w, as bf16 (a GEMM's input). Grid: rows.
extern "C" __global__ void rms_norm(bf16* out, const float* x, const float* w, int hidden, float eps) {
    const float* xr = x + (u64)blockIdx.x * hidden;
    float s = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) s += xr[i] * xr[i];
    s = block_sum(s);
    float inv = rsqrtf(s / (float)hidden + eps);
    bf16* o = out + (u64)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = f2bf(xr[i] * inv * w[i]);
}

// Per row of [q | k | v] (f32): adds the bias (when given), rotates q and k heads for the row's
// position ("rotate half" pairs (i, i + HALF); cos/sin tables [pos][HALF], llama3 scaling baked
// in), writes q as bf16 to `q`, and leaves the rotated k and the v in place. Grid: rows.
extern "C" __global__ void rope_qkv(float* qkv, const float* bias, const int* positions,
                                    const float* cos_t, const float* sin_t, bf16* q) {
    float* row = qkv + (u64)blockIdx.x * QKV_W;
    const float* c = cos_t + (u64)positions[blockIdx.x] * HALF;
    const float* s = sin_t + (u64)positions[blockIdx.x] * HALF;
    for (int j = threadIdx.x; j < (HEADS + KV_HEADS) * HALF; j += blockDim.x) {
        int head = j / HALF, i = j % HALF;
        int a = head * HEAD_DIM + i, b = a + HALF;
        float x0 = row[a], x1 = row[b];
        if (bias) {
            x0 += bias[a];
            x1 += bias[b];
        }
        float y0 = x0 * c[i] - x1 * s[i];
        float y1 = x1 * c[i] + x0 * s[i];
        if (head < HEADS) {
            bf16* qr = q + (u64)blockIdx.x * Q_DIM;
            qr[a] = f2bf(y0);
            qr[b] = f2bf(y1);
        } else {
            row[a] = y0;
            row[b] = y1;
        }
    }
    if (bias)
        for (int j = threadIdx.x; j < KV_DIM; j += blockDim.x) row[Q_DIM + KV_DIM + j] += bias[Q_DIM + KV_DIM + j];
}

// Writes each row's k and v (f32, after rope_qkv) as bf16 into its layer's block at its
// position. Grid: rows.
extern "C" __global__ void kv_write(const float* qkv, const int* row_item, const Item* items,
                                    const u32* table, bf16* pool, bf16* staging) {
    int r = blockIdx.x;
    Item it = items[row_item[r]];
    int pos = it.start_pos + (r - it.row0);
    bf16* blk = block_ptr(pool, staging, table[it.toff + pos / BLOCK_TOKENS]);
    int off = pos % BLOCK_TOKENS;
    const float* row = qkv + (u64)r * QKV_W;
    for (int j = threadIdx.x; j < KV_DIM; j += blockDim.x) {
        blk[(u64)off * KV_DIM + j] = f2bf(row[Q_DIM + j]);
        blk[(u64)(BLOCK_TOKENS + off) * KV_DIM + j] = f2bf(row[Q_DIM + KV_DIM + j]);
    }
}

// act = silu(gate) * up from rows [gate | up] (bf16). n = rows * ff.
extern "C" __global__ void silu_mul(bf16* act, const bf16* gu, int ff, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 r = i / ff, c = i % ff;
        float g = bf2f(gu[r * 2 * ff + c]), u = bf2f(gu[r * 2 * ff + ff + c]);
        act[i] = f2bf(g / (1.0f + __expf(-g)) * u);
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix-vector products for steps of at most GEMV_ROWS rows (decode): y[r, j] (+)= x[r]·w[j],
// w bf16 [m, k] row-major, x bf16 [rows, k], k a multiple of 8. One warp per output; every lane
// streams 16-byte chunks of the weight row (read once: the step is bound by these bytes).
// Grid: ceil(m / 8) CTAs of 256 threads.

#define GEMV_ROWS 4

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
        uint4 wv;
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(wv.x), "=r"(wv.y), "=r"(wv.z), "=r"(wv.w)
                     : "l"(wr + i));
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

// ---------------------------------------------------------------------------------------------
// Prefill attention: causal, GQA, paged over the layer's block table, tiled with an online
// softmax, tensor cores (mma.sync m16n8k16 bf16). A CTA of 4 warps takes 64 query rows of one
// item and one head; each warp 16 rows. Grid: (tiles, HEADS); `tiles` lists (item, first row).

#define PF_ROWS 64
#define PF_KEYS 64
#define KPAD 8
#define CPW (HEAD_DIM / 8 < 4 ? HEAD_DIM / 8 : 4)
#define KGROUPS (PF_KEYS / (32 / CPW))

__device__ __forceinline__ void mma_bf16(float* d, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

extern "C" __global__ void __launch_bounds__(128) attn_prefill(
    bf16* att, const bf16* q, const int2* tiles, const Item* items, const u32* table, bf16* pool,
    bf16* staging, float scale_log2) {
    __shared__ __align__(16) bf16 ks[PF_KEYS][HEAD_DIM + KPAD];
    __shared__ __align__(16) bf16 vt[HEAD_DIM][PF_KEYS + KPAD];
    int2 tile = tiles[blockIdx.x];
    Item it = items[tile.x];
    int head = blockIdx.y, kvh = head / GROUP;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, t = lane & 3;
    int r_lo = tile.y + warp * 16 + g, r_hi = r_lo + 8; // rows within the item
    int last_row = min(tile.y + PF_ROWS, it.rows) - 1;
    int kmax = it.start_pos + last_row; // last key any row of this CTA attends to
    int qpos_lo = it.start_pos + r_lo, qpos_hi = it.start_pos + r_hi;

    // Q fragments, zero for rows past the item.
    u32 qa[HEAD_DIM / 16][4];
    {
        const u32* ql = (const u32*)(q + (u64)(it.row0 + r_lo) * Q_DIM + head * HEAD_DIM);
        const u32* qh = (const u32*)(q + (u64)(it.row0 + r_hi) * Q_DIM + head * HEAD_DIM);
        bool lo = r_lo < it.rows, hi = r_hi < it.rows;
#pragma unroll
        for (int kk = 0; kk < HEAD_DIM / 16; kk++) {
            qa[kk][0] = lo ? ql[kk * 8 + t] : 0u;
            qa[kk][1] = hi ? qh[kk * 8 + t] : 0u;
            qa[kk][2] = lo ? ql[kk * 8 + 4 + t] : 0u;
            qa[kk][3] = hi ? qh[kk * 8 + 4 + t] : 0u;
        }
    }
    float o[HEAD_DIM / 8][4];
#pragma unroll
    for (int n = 0; n < HEAD_DIM / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_lo = NEG_INF, m_hi = NEG_INF, l_lo = 0.0f, l_hi = 0.0f;

    const int chunks = HEAD_DIM / 8; // 16-byte chunks per key row
    for (int k0 = 0; k0 <= kmax; k0 += PF_KEYS) {
        __syncthreads();
        // A warp reads CPW consecutive 16-byte chunks of 32/CPW consecutive keys: whole sectors
        // from global memory, few bank conflicts on the transposing stores.
        for (int c = threadIdx.x; c < PF_KEYS * chunks; c += blockDim.x) {
            int w = c >> 5, ln = c & 31;
            int key = (w % KGROUPS) * (32 / CPW) + ln / CPW;
            int ch = (w / KGROUPS) * CPW + ln % CPW;
            int kpos = k0 + key;
            uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
            if (kpos <= kmax) {
                const bf16* blk = block_ptr(pool, staging, table[it.toff + kpos / BLOCK_TOKENS]);
                int off = kpos % BLOCK_TOKENS;
                kv4 = *(const uint4*)(blk + (u64)off * KV_DIM + kvh * HEAD_DIM + ch * 8);
                vv4 = *(const uint4*)(blk + (u64)(BLOCK_TOKENS + off) * KV_DIM + kvh * HEAD_DIM + ch * 8);
            }
            *(uint4*)&ks[key][ch * 8] = kv4;
            const bf16* v8 = (const bf16*)&vv4;
#pragma unroll
            for (int e = 0; e < 8; e++) vt[ch * 8 + e][key] = v8[e];
        }
        __syncthreads();

        // S = Q Kᵀ for 16 rows × 64 keys: 8 n-tiles of 8 keys.
        float s[PF_KEYS / 8][4];
#pragma unroll
        for (int j = 0; j < PF_KEYS / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < HEAD_DIM / 16; kk++) {
                u32 b0 = *(const u32*)&ks[j * 8 + g][kk * 16 + 2 * t];
                u32 b1 = *(const u32*)&ks[j * 8 + g][kk * 16 + 8 + 2 * t];
                mma_bf16(s[j], qa[kk], b0, b1);
            }
        }
        // Mask and scale (log2 domain), row maxima over the quad.
        float mx_lo = NEG_INF, mx_hi = NEG_INF;
#pragma unroll
        for (int j = 0; j < PF_KEYS / 8; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int kpos = k0 + j * 8 + 2 * t + e;
                s[j][e] = kpos <= qpos_lo ? s[j][e] * scale_log2 : NEG_INF;
                s[j][2 + e] = kpos <= qpos_hi ? s[j][2 + e] * scale_log2 : NEG_INF;
                mx_lo = fmaxf(mx_lo, s[j][e]);
                mx_hi = fmaxf(mx_hi, s[j][2 + e]);
            }
        }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        // Key 0 is in every row's past, so after the first tile every m is finite.
        float c_lo = exp2f(m_lo - mn_lo), c_hi = exp2f(m_hi - mn_hi);
        m_lo = mn_lo;
        m_hi = mn_hi;
        float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
        for (int j = 0; j < PF_KEYS / 8; j++) {
            s[j][0] = exp2f(s[j][0] - mn_lo);
            s[j][1] = exp2f(s[j][1] - mn_lo);
            s[j][2] = exp2f(s[j][2] - mn_hi);
            s[j][3] = exp2f(s[j][3] - mn_hi);
            sum_lo += s[j][0] + s[j][1];
            sum_hi += s[j][2] + s[j][3];
        }
        l_lo = l_lo * c_lo + sum_lo; // per-thread partial; summed over the quad at the end
        l_hi = l_hi * c_hi + sum_hi;
#pragma unroll
        for (int n = 0; n < HEAD_DIM / 8; n++) {
            o[n][0] *= c_lo;
            o[n][1] *= c_lo;
            o[n][2] *= c_hi;
            o[n][3] *= c_hi;
        }
        // O += P V: P as A fragments (16 keys per k-step), Vᵀ from shared memory.
#pragma unroll
        for (int jj = 0; jj < PF_KEYS / 16; jj++) {
            u32 pa[4];
            pa[0] = pack2(s[2 * jj][0], s[2 * jj][1]);
            pa[1] = pack2(s[2 * jj][2], s[2 * jj][3]);
            pa[2] = pack2(s[2 * jj + 1][0], s[2 * jj + 1][1]);
            pa[3] = pack2(s[2 * jj + 1][2], s[2 * jj + 1][3]);
#pragma unroll
            for (int n = 0; n < HEAD_DIM / 8; n++) {
                u32 b0 = *(const u32*)&vt[n * 8 + g][jj * 16 + 2 * t];
                u32 b1 = *(const u32*)&vt[n * 8 + g][jj * 16 + 8 + 2 * t];
                mma_bf16(o[n], pa, b0, b1);
            }
        }
    }
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
    if (r_lo < it.rows) {
        u32* out = (u32*)(att + (u64)(it.row0 + r_lo) * Q_DIM + head * HEAD_DIM);
#pragma unroll
        for (int n = 0; n < HEAD_DIM / 8; n++) out[n * 4 + t] = pack2(o[n][0] * inv_lo, o[n][1] * inv_lo);
    }
    if (r_hi < it.rows) {
        u32* out = (u32*)(att + (u64)(it.row0 + r_hi) * Q_DIM + head * HEAD_DIM);
#pragma unroll
        for (int n = 0; n < HEAD_DIM / 8; n++) out[n * 4 + t] = pack2(o[n][2] * inv_hi, o[n][3] * inv_hi);
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

// ---------------------------------------------------------------------------------------------
// Sampling

// Greedy: the index of the largest logit per row; ties go to the lowest index, NaN never wins,
// a row with no number above -inf gives 0 (as the cpu executor). Grid: rows; threads 1024.
extern "C" __global__ void argmax_rows(u32* out, const float* logits, int vocab) {
    __shared__ float bv[32];
    __shared__ u32 bi[32];
    const float* row = logits + (u64)blockIdx.x * vocab;
    float best = NEG_INF;
    u32 idx = 0xffffffffu;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float v = row[i];
        if (v > best) {
            best = v;
            idx = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        u32 oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > best || (ov == best && oi < idx)) {
            best = ov;
            idx = oi;
        }
    }
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        bv[w] = best;
        bi[w] = idx;
    }
    __syncthreads();
    if (w == 0) {
        int nw = blockDim.x >> 5;
        best = lane < nw ? bv[lane] : NEG_INF;
        idx = lane < nw ? bi[lane] : 0xffffffffu;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, best, o);
            u32 oi = __shfl_xor_sync(0xffffffffu, idx, o);
            if (ov > best || (ov == best && oi < idx)) {
                best = ov;
                idx = oi;
            }
        }
        if (lane == 0) out[blockIdx.x] = idx == 0xffffffffu ? 0u : idx;
    }
}

// Temperature and nucleus (top-p) sampling, one row per CTA (1024 threads): p_i ∝
// exp((l_i - max)/T); the kept set is the tokens with p_i ≥ τ for the largest τ whose kept mass
// reaches top_p of the total (found by bisection on τ); the token is drawn by walking the kept
// set in id order to u·mass. `u` per row in [0, 1) comes from the host (seeded per output).
// Grid: rows.
extern "C" __global__ void sample_top_p(u32* out, const float* logits, int vocab, const float* temps,
                                        const float* top_ps, const float* us) {
    __shared__ float sm_best;
    __shared__ u32 sm_pick;
    const float* row = logits + (u64)blockIdx.x * vocab;
    float t = temps[blockIdx.x], top_p = fminf(fmaxf(top_ps[blockIdx.x], 0.0f), 1.0f);
    float mx = NEG_INF;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, row[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    __shared__ float wmax[32];
    if ((threadIdx.x & 31) == 0) wmax[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = NEG_INF;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) mx = fmaxf(mx, wmax[w]);
    float inv_t = 1.0f / t;
    float total = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float p = __expf((row[i] - mx) * inv_t);
        total += p == p ? p : 0.0f;
    }
    total = block_sum(total);
    float want = top_p * total;
    // Bisection for τ in (0, 1]: mass(τ) = Σ p_i·[p_i ≥ τ] is non-increasing in τ.
    float lo = 0.0f, hi = 1.0f;
    for (int step = 0; step < 32; step++) {
        float mid = 0.5f * (lo + hi);
        float mass = 0.0f;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            float p = __expf((row[i] - mx) * inv_t);
            mass += p >= mid ? p : 0.0f;
        }
        mass = block_sum(mass);
        if (mass >= want) lo = mid; else hi = mid;
    }
    float tau = lo;
    // Kept mass, then the walk: each thread owns a contiguous chunk of ids.
    int per = (vocab + blockDim.x - 1) / blockDim.x;
    int b = threadIdx.x * per, e = min(vocab, b + per);
    float mine = 0.0f;
    for (int i = b; i < e; i++) {
        float p = __expf((row[i] - mx) * inv_t);
        mine += p >= tau ? p : 0.0f;
    }
    // Exclusive prefix over threads through shared memory (1024 values).
    __shared__ float pre[1024];
    pre[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        float acc = 0.0f;
        for (int i = 0; i < (int)blockDim.x; i++) {
            float v = pre[i];
            pre[i] = acc;
            acc += v;
        }
        sm_best = acc; // kept mass
        sm_pick = 0xffffffffu;
    }
    __syncthreads();
    float target = us[blockIdx.x] * sm_best;
    float acc = pre[threadIdx.x];
    u32 last_kept = 0xffffffffu;
    if (acc <= target && target < acc + mine) {
        for (int i = b; i < e; i++) {
            float p = __expf((row[i] - mx) * inv_t);
            if (p < tau) continue;
            last_kept = i;
            if (target < acc + p) break;
            acc += p;
        }
        atomicMin(&sm_pick, last_kept);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 pick = sm_pick;
        if (pick == 0xffffffffu) {
            // Rounding put the target past the last kept token: take the highest kept id.
            for (int i = vocab - 1; i >= 0; i--) {
                if (__expf((row[i] - mx) * inv_t) >= tau) {
                    pick = i;
                    break;
                }
            }
        }
        out[blockIdx.x] = pick == 0xffffffffu ? 0u : pick;
    }
}
