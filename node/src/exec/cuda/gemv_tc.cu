// Strata's tensor-core GEMVs: the products of gemv_bf16, gemv_rms and gemv_rms_swiglu for decode
// steps of 2 to TC_ROWS rows. kernels.rs compiles this file appended to kernels.cu and decode.cu,
// whose types, constants and helpers are in scope here.
//
// On CUDA cores each row of a step adds a pass of multiply-adds and bf16 conversions over every
// weight: on an H100 a decode step of 4 rows took 1.8 times one of 1 row, and longer than one
// of 32 rows through cuBLAS. Here one mma.sync m16n8k16 takes a lane's weight chunks for all 8
// rows at once. Measured on an H100 (docs/benchmarks/gpu/small-batch-h100-5.log) they beat the
// CUDA-core kernels at 3 and 4 rows but not cuBLAS at any width, so they are off by default
// (STRATA_GEMV_TC=1 lets them in; kernels/gemv.rs). At one row they took 8.25 ms against the
// CUDA-core kernel's 6.60, so the weight stream itself runs slower here; the likely cause (not
// measured apart) is its 64-byte pieces of 16 rows per warp against one row's 512 bytes.
//
// A CTA takes a tile of 16 output rows: A is the tile's weight rows, B the step's rows of x,
// padded to 8 with zeros. Its TC_WARPS warps split k in groups of 32 elements, warp w taking
// groups w, w + TC_WARPS, ... Lane (g, t) = (lane / 4, lane % 4) loads elements 8t..8t+7 of a
// group from weight rows g and g + 8 and from x row g, and feeds them to two mma's: the first
// four elements as fragment columns (2t, 2t+1, 2t+8, 2t+9) of one, the last four of the other.
// Each lane's columns stand for distinct k, the same ones in A and B, so every output is the
// plain dot product summed in another order. The warps' partial tiles are summed in warp
// order, so the fused kernels' outputs are bit for bit the unfused ones'.
// Grid: ceil(m / 16) CTAs of TC_THREADS (= NORM_THREADS, as the fused norm needs) threads.

#define TC_ROWS 8
#define TC_THREADS NORM_THREADS
#define TC_WARPS (TC_THREADS / 32)
#define TC_LOADS 4 // 16-byte weight chunk pairs each lane has in flight, over the kernel's tiles
#define TC_XPAD 32 // elements after each normalized row in shared memory: conflict-free reads

__device__ __forceinline__ uint4 zero4() { return make_uint4(0u, 0u, 0u, 0u); }

// One 16-row tile of weights as this lane sees it: rows g and g + 8 (zeros past the matrix).
struct TcRows {
    const uint4* lo;
    const uint4* hi;
    bool lo_ok, hi_ok;
};

// The lane's rows of the tile of rows j0.. of w ([m, k]).
__device__ __forceinline__ TcRows tc_rows(const bf16* w, int j0, int m, int k) {
    int g = (threadIdx.x & 31) >> 2;
    TcRows t;
    t.lo_ok = j0 + g < m;
    t.hi_ok = j0 + g + 8 < m;
    t.lo = (const uint4*)(w + (u64)(t.lo_ok ? j0 + g : 0) * k);
    t.hi = (const uint4*)(w + (u64)(t.hi_ok ? j0 + g + 8 : 0) * k);
    return t;
}

// Asks the lane's first weight chunks into L2: before grid_dep_wait, since the weights do not
// depend on the previous kernel.
template <int NT>
__device__ __forceinline__ void tc_prefetch(const TcRows* tile, int k) {
    constexpr int U = TC_LOADS / NT;
    int t = threadIdx.x & 3, w = threadIdx.x >> 5, n = k / 8;
#pragma unroll
    for (int q = 0; q < NT; q++)
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = (w + u * TC_WARPS) * 4 + t;
            if (c < n && tile[q].lo_ok) prefetch_l2(tile[q].lo + c);
            if (c < n && tile[q].hi_ok) prefetch_l2(tile[q].hi + c);
        }
}

// acc[q] = this warp's share of tile q times x rows 0..rows-1 (row r at x + r * xs, in global
// or shared memory), as an m16n8 accumulator fragment.
template <int NT>
__device__ __forceinline__ void tc_dot(float (*acc)[4], const TcRows* tile, const bf16* x, int xs, int rows, int k) {
    constexpr int U = TC_LOADS / NT;
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, w = threadIdx.x >> 5;
    int n = k / 8, groups = (n + 3) / 4;
    bool x_ok = g < rows;
    const uint4* xr = (const uint4*)(x + (u64)(x_ok ? g : 0) * xs);
#pragma unroll
    for (int q = 0; q < NT; q++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[q][e] = 0.0f;
    for (int g0 = w; g0 < groups; g0 += TC_WARPS * U) {
        uint4 a[NT][U], b[NT][U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = (g0 + u * TC_WARPS) * 4 + t;
#pragma unroll
            for (int q = 0; q < NT; q++) {
                a[q][u] = c < n && tile[q].lo_ok ? ld_stream(tile[q].lo + c) : zero4();
                b[q][u] = c < n && tile[q].hi_ok ? ld_stream(tile[q].hi + c) : zero4();
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = (g0 + u * TC_WARPS) * 4 + t;
            uint4 xv = c < n && x_ok ? xr[c] : zero4();
#pragma unroll
            for (int q = 0; q < NT; q++) {
                u32 f0[4] = {a[q][u].x, b[q][u].x, a[q][u].y, b[q][u].y};
                u32 f1[4] = {a[q][u].z, b[q][u].z, a[q][u].w, b[q][u].w};
                mma_bf16(acc[q], f0, xv.x, xv.y);
                mma_bf16(acc[q], f1, xv.z, xv.w);
            }
        }
    }
}

// Sums each tile over the warps, in warp order. Thread i < 128 gets, in sum[q], element
// (tc_row(), tc_col()) of tile q. All threads call.
template <int NT>
__device__ __forceinline__ void tc_reduce(float* sum, float (*acc)[4]) {
    __shared__ float part[TC_WARPS][NT][4][32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
    for (int q = 0; q < NT; q++)
#pragma unroll
        for (int e = 0; e < 4; e++) part[w][q][e][lane] = acc[q][e];
    __syncthreads();
    if (threadIdx.x < 128) {
        int e = threadIdx.x >> 5;
#pragma unroll
        for (int q = 0; q < NT; q++) {
            float s = 0.0f;
            for (int v = 0; v < TC_WARPS; v++) s += part[v][q][e][lane];
            sum[q] = s;
        }
    }
}

// The tile row (output j - j0) and x row of thread i < 128's element: accumulator element e =
// i / 32 of lane i % 32 = (g, t) is (g + 8 (e >> 1), 2t + (e & 1)).
__device__ __forceinline__ int tc_row() { return ((threadIdx.x & 31) >> 2) + 8 * (threadIdx.x >> 6); }
__device__ __forceinline__ int tc_col() { return 2 * (threadIdx.x & 3) + ((threadIdx.x >> 5) & 1); }

// Writes thread i < 128's element v of tile j0 to y[r, j]: f32, bf16 or added to f32.
__device__ __forceinline__ void tc_store(void* y, float v, int j0, int rows, int m, int out_bf16, int accumulate) {
    int j = j0 + tc_row(), r = tc_col();
    if (threadIdx.x < 128 && j < m && r < rows) store_out(y, (u64)r * m + j, v, out_bf16, accumulate);
}

// gemv_bf16 for 2..TC_ROWS rows: y[r, j] (+)= x[r]·w[j], x bf16 [rows, k].
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) gemv_tc(void* y, const bf16* x, const bf16* w, int rows,
                                                                    int m, int k, int out_bf16, int accumulate) {
    int j0 = blockIdx.x * 16;
    TcRows tile = tc_rows(w, j0, m, k);
    tc_prefetch<1>(&tile, k);
    grid_dep_wait();
    grid_dep_launch();
    float acc[1][4], sum[1];
    tc_dot<1>(acc, &tile, x, k, rows, k);
    tc_reduce<1>(sum, acc);
    tc_store(y, sum[0], j0, rows, m, out_bf16, accumulate);
}

// gemv_rms for 2..TC_ROWS rows: the rows normalized into shared memory (dynamic,
// rows * (k + TC_XPAD) * 2 bytes) with gemv_rms's arithmetic, then gemv_tc's products.
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) gemv_rms_tc(void* y, const float* x, const int* row_idx,
                                                                        const float* nw, const bf16* w, int rows,
                                                                        int m, int k, float eps, int out_bf16) {
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    bf16* xs = (bf16*)dyn_smem;
    int j0 = blockIdx.x * 16;
    TcRows tile = tc_rows(w, j0, m, k);
    tc_prefetch<1>(&tile, k);
    grid_dep_wait();
    grid_dep_launch();
    rms_rows_to_shared<TC_ROWS>(xs, k + TC_XPAD, x, row_idx, nw, rows, k, eps);
    float acc[1][4], sum[1];
    tc_dot<1>(acc, &tile, xs, k + TC_XPAD, rows, k);
    tc_reduce<1>(sum, acc);
    tc_store(y, sum[0], j0, rows, m, out_bf16, 0);
}

// gemv_rms_swiglu for 2..TC_ROWS rows: a CTA takes tile j0 of the gate rows and the same of
// the up rows (w = [gate | up], [2 ff, k]), so act[r, j] is bit for bit gemv_rms_tc into bf16
// then silu_mul.
extern "C" __global__ void __launch_bounds__(TC_THREADS, 2) gemv_rms_swiglu_tc(bf16* act, const float* x,
                                                                               const float* nw, const bf16* w,
                                                                               int rows, int ff, int k, float eps) {
    extern __shared__ __align__(16) unsigned char dyn_smem[];
    bf16* xs = (bf16*)dyn_smem;
    int j0 = blockIdx.x * 16;
    TcRows tiles[2] = {tc_rows(w, j0, ff, k), tc_rows(w + (u64)ff * k, j0, ff, k)};
    tc_prefetch<2>(tiles, k);
    grid_dep_wait();
    grid_dep_launch();
    rms_rows_to_shared<TC_ROWS>(xs, k + TC_XPAD, x, nullptr, nw, rows, k, eps);
    float acc[2][4], sum[2];
    tc_dot<2>(acc, tiles, xs, k + TC_XPAD, rows, k);
    tc_reduce<2>(sum, acc);
    int j = j0 + tc_row(), r = tc_col();
    if (threadIdx.x >= 128 || j >= ff || r >= rows) return;
    float g = bf2f(f2bf(sum[0])), u = bf2f(f2bf(sum[1]));
    act[(u64)r * ff + j] = f2bf(g / (1.0f + __expf(-g)) * u);
}
