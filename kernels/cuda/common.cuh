// common.cuh: dtype load/store and reductions shared by every kernel of kernels/cuda/.
//
// Kernel naming rule (the Rust launcher builds these names from the op and its operand dtypes):
//   * `{op}_{dtype}`: `op` is the catalogue op's `name()` (`rms_norm`, `rms_norm_backward`) and
//     `dtype` the storage dtype of its float activations, `f32` or `bf16` (`rms_norm_bf16`).
//     Ops whose only float operands are FP32 scalars use `_f32` (`clip_scale_f32`).
//   * Ops that convert between dtypes name the source and the result, in that order:
//     `cast_{from}_{to}` (`cast_bf16_e4m3`), `quantize_{from}_{to}` (`quantize_bf16_e4m3`).
//   * Kernels specialised for a size append it: `attention_bf16_d64`, `attention_bf16_d128`
//     (tensor-core attention for those head sizes; `attention_bf16` takes any other).
//   * `adamw_{param}_{grad}_{moments}` (`adamw_f32_bf16_f32`: FP32 master weights, BF16
//     gradient, FP32 moments).
//   * FP8 dtypes are spelled `e4m3` and `e5m2`; FP8 appears only where the op reads or writes it.
//
// Argument conventions (each kernel documents its own order above it):
//   * raw pointers first (inputs, then outputs, in the op's signature order), then sizes, then
//     attributes, then `int accumulate` where the kernel has it (one flag per output,
//     `accumulate_dx`, `accumulate_dw`, where a plan can ask for different ones);
//   * element counts are `long long`, per-row sizes `int`;
//   * `accumulate != 0` means every output of the kernel is `out += result` instead of
//     `out = result` (gradient accumulation); the sum is formed in FP32 and rounded once;
//   * kernels that reduce a whole tensor to one FP32 scalar (`abs_max`, `sum_squares`,
//     `cross_entropy`) combine their blocks with atomics into that scalar: the launcher sets it
//     to zero first (cuMemsetD32Async) unless the plan accumulates into it;
//   * block sizes: a multiple of 32, at most 1024, unless a kernel says otherwise.
//
// Numerics: every value is widened to FP32 and every sum is accumulated in FP32; stores round to
// nearest even, FP8 saturating to the largest finite value (as the CPU backend's `round_to`).
// Precise `expf`, `logf`, `sqrtf` and divisions (no fast-math intrinsics), as the CPU reference.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <math_constants.h>  // CUDART_INF_F (NVRTC has no <cmath> INFINITY)

typedef __nv_bfloat16 bf16;
typedef __nv_fp8_e4m3 e4m3;
typedef __nv_fp8_e5m2 e5m2;

// ---- loads: any storage dtype to FP32 ------------------------------------------------------

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, long long i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float load(const e4m3* p, long long i) { return float(p[i]); }
__device__ __forceinline__ float load(const e5m2* p, long long i) { return float(p[i]); }

// ---- stores: FP32 to any storage dtype, round to nearest even (FP8 saturating) ---------------

__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(e4m3* p, long long i, float v) {
    p[i].__x = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ void store(e5m2* p, long long i, float v) {
    p[i].__x = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E5M2);
}

// ---- eight consecutive values at once: 16-byte loads and stores (8 bytes for FP8) -----------
// `load8(p, i, n, v)` reads p[i..i+8) into v, and `store8(p, i, n, v)` writes them. Where the
// eight are not all inside [0, n) or `p` is not aligned to the vector, they go one by one
// (loads fill the missing values with 0). Kernels step i by 8 over a grid-stride loop.

template <typename T> struct Vec8;  // the bytes of eight T, loaded and stored as one
template <> struct Vec8<float> { float4 a, b; };
template <> struct Vec8<bf16> { uint4 a; };
template <> struct Vec8<e4m3> { uint2 a; };
template <> struct Vec8<e5m2> { uint2 a; };

template <typename T>
__device__ __forceinline__ bool vec8_ok(const T* p, long long i, long long n) {
    return i + 8 <= n && reinterpret_cast<unsigned long long>(p) % sizeof(Vec8<T>) == 0;
}

// The vector paths alone, for callers that checked once (vec8_rows_ok) that every run of eight
// they read or write is whole and aligned: no per-access test and branch, so the loads of a
// loop's iterations can be in flight together.
template <typename T>
__device__ __forceinline__ void load8_vector(const T* p, long long i, float v[8]) {
    union { Vec8<T> vec; T e[8]; } u;
    u.vec = *reinterpret_cast<const Vec8<T>*>(p + i);
    for (int k = 0; k < 8; ++k) v[k] = load(u.e, k);
}
template <typename T>
__device__ __forceinline__ void store8_vector(T* p, long long i, const float v[8]) {
    union { Vec8<T> vec; T e[8]; } u;
    for (int k = 0; k < 8; ++k) store(u.e, k, v[k]);
    *reinterpret_cast<Vec8<T>*>(p + i) = u.vec;
}

template <typename T>
__device__ __forceinline__ void load8(const T* p, long long i, long long n, float v[8]) {
    if (vec8_ok(p, i, n)) {
        load8_vector(p, i, v);
    } else {
        for (int k = 0; k < 8; ++k) v[k] = i + k < n ? load(p, i + k) : 0.0f;
    }
}

template <typename T>
__device__ __forceinline__ void store8(T* p, long long i, long long n, const float v[8]) {
    if (vec8_ok(p, i, n)) {
        store8_vector(p, i, v);
    } else {
        for (int k = 0; k < 8 && i + k < n; ++k) store(p, i + k, v[k]);
    }
}

// load8/store8, or their vector paths alone when `Vector` (the caller checked vec8_rows_ok).
template <bool Vector, typename T>
__device__ __forceinline__ void load8_rows(const T* p, long long i, long long n, float v[8]) {
    if constexpr (Vector) load8_vector(p, i, v);
    else load8(p, i, n, v);
}
// load8_rows with the caller's check made at run time, for a loop that one code path must
// serve (column_sum's 32 KB of shared memory is not worth two instances): `vector` is the same
// for the whole block, so the compiler takes the test out of the loop and its loads still go
// out together.
template <typename T>
__device__ __forceinline__ void load8_uniform(bool vector, const T* p, long long i, long long n,
                                              float v[8]) {
    if (vector) load8_vector(p, i, v);
    else load8(p, i, n, v);
}
template <bool Vector, typename T>
__device__ __forceinline__ void store8_rows(T* p, long long i, long long n, const float v[8]) {
    if constexpr (Vector) store8_vector(p, i, v);
    else store8(p, i, n, v);
}

// True when rows of `cols` elements starting at `p` take load8's vector path at every multiple
// of 8 inside a row: the row length is a multiple of 8 and `p` aligned to the vector. A null
// `p` (an absent operand) passes.
template <typename T>
__device__ __forceinline__ bool vec8_rows_ok(const T* p, long long cols) {
    return cols % 8 == 0 && reinterpret_cast<unsigned long long>(p) % sizeof(Vec8<T>) == 0;
}
// vec8_rows_ok for every operand of a kernel at once.
template <typename... T>
__device__ __forceinline__ bool vec8_rows_ok_all(long long cols, const T*... p) {
    return (vec8_rows_ok(p, cols) && ...);
}

// `v` rounded to T's storage and widened back: what a store of `v` and a load give (the first
// argument only names T).
template <typename T>
__device__ __forceinline__ float as_stored(const T*, float v) {
    T e;
    store(&e, 0, v);
    return load(&e, 0);
}

// The first element of each group of eight a thread takes in a grid-stride loop over n
// elements: `for (long long i = first8(); i < n; i += stride8())`.
__device__ __forceinline__ long long first8() {
    return (blockIdx.x * (long long)blockDim.x + threadIdx.x) * 8;
}
__device__ __forceinline__ long long stride8() { return (long long)gridDim.x * blockDim.x * 8; }

// A grid-stride pass over x[0..n) by runs of eight: `fold(v)` for each run (values past n are 0).
// Where every run is whole and aligned (checked once), four runs' loads go out before any is
// folded, so a thread waits on memory once per four runs rather than once per run. The runs
// reach `fold` in an order that depends on the unrolling: for order-free folds (max, or a sum
// whose blocks combine by atomics anyway).
template <typename T, typename Fold>
__device__ __forceinline__ void for_each8(const T* x, long long n, Fold fold) {
    const long long stride = stride8();
    long long i = first8();
    if (vec8_rows_ok(x, n)) {
        for (; i + 3 * stride < n; i += 4 * stride) {
            float v[4][8];
            for (int u = 0; u < 4; ++u) load8_vector(x, i + u * stride, v[u]);
            for (int u = 0; u < 4; ++u) fold(v[u]);
        }
    }
    for (; i < n; i += stride) {
        float v[8];
        load8(x, i, n, v);
        fold(v);
    }
}

// `out = v`, or `out += v` (in FP32, rounded once) when `accumulate` is set.
template <typename T>
__device__ __forceinline__ void store_acc(T* p, long long i, float v, int accumulate) {
    if (accumulate) v += load(p, i);
    store(p, i, v);
}

// ---- the counter-based random generator and stochastic rounding (kernels/src/rng.rs,
// kernels/src/numerics.rs): bit for bit the CPU backend's, so both round the same way ----------

// One 64-bit random word for position `index` of stream `stream` under `seed` (rng::word).
__device__ __forceinline__ unsigned long long rng_word(unsigned long long seed,
                                                       unsigned long long stream,
                                                       unsigned long long index) {
    unsigned long long z = seed * 0x9E3779B97F4A7C15ull + stream * 0xD1B54A32D192ED03ull +
                           index * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Stores `v` as BF16 rounded stochastically with the top 16 bits of word `index` of `stream`
// under seed `step` (numerics::round_bf16_stochastic_all): add the 16 random bits to the bits
// BF16 drops, then truncate. Infinities and NaN round to nearest.
__device__ __forceinline__ bf16 round_stochastic(float v, unsigned long long step,
                                                 unsigned long long stream, long long i) {
    if (!isfinite(v)) return __float2bfloat16_rn(v);
    const unsigned int r = (unsigned int)(rng_word(step, stream, (unsigned long long)i) >> 48);
    return __ushort_as_bfloat16((unsigned short)((__float_as_uint(v) + r) >> 16));
}

// The optimizer step `hyper[1]` as the generator's seed (`as u64` on the CPU: truncation,
// negative values to 0).
__device__ __forceinline__ unsigned long long step_seed(const float* hyper) {
    const float s = hyper[1];
    return s > 0.0f ? (unsigned long long)s : 0ull;
}

// store8 with stochastic rounding to BF16 (round_stochastic above; element i+k draws from
// position i+k of the stream).
__device__ __forceinline__ void store8_stochastic(bf16* p, long long i, long long n,
                                                  const float v[8], unsigned long long step,
                                                  unsigned long long stream) {
    if (vec8_ok(p, i, n)) {
        union { Vec8<bf16> vec; bf16 e[8]; } u;
        for (int k = 0; k < 8; ++k) u.e[k] = round_stochastic(v[k], step, stream, i + k);
        *reinterpret_cast<Vec8<bf16>*>(p + i) = u.vec;
    } else {
        for (int k = 0; k < 8 && i + k < n; ++k) p[i + k] = round_stochastic(v[k], step, stream, i + k);
    }
}

// ---- warp and block reductions ---------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The block's sum of `v`, returned to every thread. Every thread of the block must call it.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}

// The block's maximum of `v`, returned to every thread. Every thread of the block must call it.
__device__ float block_max(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < (int)(blockDim.x >> 5) ? partial[lane] : -CUDART_INF_F;
        w = warp_max(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    return total;
}

// Column sums over many rows, deterministically: the block owns 256 consecutive columns, lane l
// of every warp takes the eight columns from 8·l (read as one 16-byte vector where the row
// allows, see load8), the warps take rows round-robin, then warp 0 adds the warps' partial sums
// in warp order. `term(r, v)` writes row r's eight values of the lane's columns into v. Leaves
// Σ_r term(r) in `total` of the threads of warp 0 (other warps get 0); `active` is false for
// lanes past the last column (they still reach the barrier). Every thread of the block must
// call it; blockDim a multiple of 32.
#define COLSUM_WIDTH 256
template <typename Term>
__device__ void column_sum(long long rows, bool active, Term term, float total[8]) {
    // [warp][k][lane]: warp 0's reads below are one bank per lane.
    __shared__ float partial[32][8][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float acc[8] = {};
    if (active) {
        // Four rows at a time with no exit test between them, so that their loads go out
        // together (`#pragma unroll` kept a test, and a branch, before each row's loads: one
        // row in flight per warp); the sum still runs in row order.
        long long r = warp;
        for (; r + 3 * warps < rows; r += 4 * warps) {
            float v[4][8];
            for (int u = 0; u < 4; ++u) term(r + u * warps, v[u]);
            for (int u = 0; u < 4; ++u)
                for (int k = 0; k < 8; ++k) acc[k] += v[u][k];
        }
        for (; r < rows; r += warps) {
            float v[8];
            term(r, v);
            for (int k = 0; k < 8; ++k) acc[k] += v[k];
        }
    }
    for (int k = 0; k < 8; ++k) partial[warp][k][lane] = acc[k];
    __syncthreads();
    for (int k = 0; k < 8; ++k) total[k] = 0.0f;
    if (warp == 0) {
        for (int w = 0; w < warps; ++w)
            for (int k = 0; k < 8; ++k) total[k] += partial[w][k][lane];
    }
}

// Column sums over many rows spread over many blocks, still deterministic. The rows are cut into
// COLSUM_CHUNKS chunks; block `block` takes column block block % col_blocks (COLSUM_WIDTH
// columns) and chunk block / col_blocks, so a launch has col_blocks·COLSUM_CHUNKS such blocks.
// Each writes its partial sums (column_sum above) to scratch; the block that finishes a column
// block last adds the partials in chunk order, one column per thread (their loads coalesce and
// many are in flight, where one warp adding eight columns each waited on 512 loads in a row).
// Scratch (the backend's, see docs/cuda.md):
//   unsigned int done[COLSUM_COUNTERS], then float partial[COLSUM_CHUNKS][cols]. The counters
//   sit at a fixed place whatever `cols` is, are zero before the first launch, and the last block
//   of each column block resets its own, so every later launch (and graph replay) finds zeros.
// `term(r, v)` gives row r's values of the eight columns from colsum_first_column; `store(c,
// total)` is called once per column c of the block, by the last block, with its sum. Every
// thread of the block must call it.
#define COLSUM_CHUNKS 64
#define COLSUM_COUNTERS 4096
__device__ __forceinline__ int colsum_col_blocks(int cols) {
    return (cols + COLSUM_WIDTH - 1) / COLSUM_WIDTH;
}
__device__ __forceinline__ int colsum_first_column(long long block, int cols) {
    return (int)(block % colsum_col_blocks(cols)) * COLSUM_WIDTH + (threadIdx.x & 31) * 8;
}
template <typename Term, typename Store>
__device__ void column_sum_split(long long rows, int cols, long long block, float* scratch,
                                 Term term, Store store) {
    __shared__ bool last;
    const int col_blocks = colsum_col_blocks(cols);
    const int cb = (int)(block % col_blocks), chunk = (int)(block / col_blocks);
    const int c = colsum_first_column(block, cols);
    const int width = min(8, cols - c);  // the lane's columns that exist (≤ 0: none)
    const long long per_chunk = (rows + COLSUM_CHUNKS - 1) / COLSUM_CHUNKS;
    const long long r0 = chunk * per_chunk;
    const long long n = max(0LL, min(per_chunk, rows - r0));
    float partial[8];
    column_sum(n, width > 0, [&](long long r, float v[8]) { term(r0 + r, v); }, partial);
    unsigned int* done = reinterpret_cast<unsigned int*>(scratch);
    float* partials = scratch + COLSUM_COUNTERS;
    if (threadIdx.x < 32)
        for (int k = 0; k < width; ++k) partials[(long long)chunk * cols + c + k] = partial[k];
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&done[cb], 1u) == COLSUM_CHUNKS - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (threadIdx.x == 0) done[cb] = 0;
    const int end = min(cols, (cb + 1) * COLSUM_WIDTH);
    for (int col = cb * COLSUM_WIDTH + threadIdx.x; col < end; col += blockDim.x) {
        float sum = 0.0f;
        // L2 loads (ld.cg): other blocks wrote the partials, which this SM's L1 may not hold.
#pragma unroll 8
        for (int j = 0; j < COLSUM_CHUNKS; ++j) sum += __ldcg(partials + (long long)j * cols + col);
        store(col, sum);
    }
}

// atomicMax for FP32 values that are non-negative or NaN (with the sign bit clear): their bit
// patterns order as signed integers, and a NaN's pattern is above +inf, so a NaN wins.
__device__ __forceinline__ void atomic_max_nonneg(float* addr, float v) {
    atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
}
