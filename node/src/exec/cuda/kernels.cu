// Strata's CUDA kernels, compiled by NVRTC at start for the device's architecture. The model's
// shape comes in as compile-time constants (-D): HEAD_DIM, HEADS, KV_HEADS, BLOCK_TOKENS.
// No headers: bf16 is `unsigned short` with explicit conversions, tensor-core products are
// inline PTX (mma.sync m16n8k16, bf16 in, f32 accumulate).
//
// A KV block holds one layer's K and V of BLOCK_TOKENS tokens:
//   K[token][kv_head][dim] then V[token][kv_head][dim], bf16.
// Block tables are u32 entries: a GPU-pool index, or STAGED | a staging-slot index.
//
// decode.cu (the decode GEMVs and decode attention) is compiled appended to this file.

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

// The two bf16 of a 32-bit word as f32: element 2i of a vector is the low half of its word i.
// One instruction each; bf2f on a half taken out of the word costs two or three.
__device__ __forceinline__ float bf_lo(u32 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf_hi(u32 v) { return __uint_as_float(v & 0xffff0000u); }

// acc + w·x over the 8 bf16 of two 16-byte chunks, element by element in order: the
// multiply-adds of `acc += bf2f(w[e]) * bf2f(x[e])` for e = 0..7.
__device__ __forceinline__ float dot8(float acc, uint4 w, uint4 x) {
    acc += bf_lo(w.x) * bf_lo(x.x);
    acc += bf_hi(w.x) * bf_hi(x.x);
    acc += bf_lo(w.y) * bf_lo(x.y);
    acc += bf_hi(w.y) * bf_hi(x.y);
    acc += bf_lo(w.z) * bf_lo(x.z);
    acc += bf_hi(w.z) * bf_hi(x.z);
    acc += bf_lo(w.w) * bf_lo(x.w);
    acc += bf_hi(w.w) * bf_hi(x.w);
    return acc;
}

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

// Programmatic dependent launch (sm_90+). The decode chain's kernels (rope_kv_write, the GEMVs,
// attn_decode) are launched so that they may start while the stream's previous kernel runs:
// before grid_dep_wait() returns — the previous kernels have completed and their writes are
// visible — such a kernel reads nothing but its weights (and asks them into L2) and writes
// nothing. grid_dep_launch() then lets the next kernel start early in turn. Without the launch
// attribute, or before sm_90, both do nothing.
__device__ __forceinline__ void grid_dep_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void grid_dep_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
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

// Per row of [q | k | v] (f32, the qkv GEMV's output): adds the bias (when given), rotates q and
// k heads for the row's position ("rotate half" pairs (i, i + HALF); cos/sin tables [pos][HALF],
// llama3 scaling baked in), writes q as bf16 to `q`, and k and v as bf16 into the row's layer
// block at its position. Grid: rows.
extern "C" __global__ void rope_kv_write(const float* qkv, const float* bias, const int* positions,
                                         const float* cos_t, const float* sin_t, bf16* q, const int* row_item,
                                         const Item* items, const u32* table, bf16* pool, bf16* staging) {
    grid_dep_wait();
    grid_dep_launch();
    int r = blockIdx.x;
    const float* row = qkv + (u64)r * QKV_W;
    const float* c = cos_t + (u64)positions[r] * HALF;
    const float* s = sin_t + (u64)positions[r] * HALF;
    Item it = items[row_item[r]];
    int pos = it.start_pos + (r - it.row0);
    bf16* blk = block_ptr(pool, staging, table[it.toff + pos / BLOCK_TOKENS]);
    bf16* kd = blk + (u64)(pos % BLOCK_TOKENS) * KV_DIM;
    bf16* vd = blk + (u64)(BLOCK_TOKENS + pos % BLOCK_TOKENS) * KV_DIM;
    bf16* qr = q + (u64)r * Q_DIM;
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
            qr[a] = f2bf(y0);
            qr[b] = f2bf(y1);
        } else {
            kd[a - Q_DIM] = f2bf(y0);
            kd[b - Q_DIM] = f2bf(y1);
        }
    }
    for (int j = threadIdx.x; j < KV_DIM; j += blockDim.x) {
        float v = row[Q_DIM + KV_DIM + j];
        if (bias) v += bias[Q_DIM + KV_DIM + j];
        vd[j] = f2bf(v);
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
