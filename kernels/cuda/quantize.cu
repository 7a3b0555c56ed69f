// quantize: `scale = fmax / amax` (1 when amax is 0, negative or not finite), `q = fp8(x·scale)`
// saturating, `descale = 1 / scale` (ops/quantize.rs; fmax 448 for e4m3, 57344 for e5m2).
#include "common.cuh"

template <typename Q> struct Fp8Max;
template <> struct Fp8Max<e4m3> { static constexpr float value = 448.0f; };
template <> struct Fp8Max<e5m2> { static constexpr float value = 57344.0f; };

// quantize_{from}_{to}(const F* x, const float* amax, Q* q, float* descale, long long n)
// from: f32, bf16; to: e4m3, e5m2. grid: any (grid-stride), block: any.
// `amax` is read from device memory (the abs_max kernel's output), so a captured graph stays valid.
// The scale of an abs-max: `fmax / amax`, or 1 when amax is 0, negative or not finite.
template <typename Q>
__device__ __forceinline__ float scale_from_amax(float a) {
    return (a > 0.0f && isfinite(a)) ? Fp8Max<Q>::value / a : 1.0f;
}

template <typename F, typename Q>
__device__ void quantize(const F* x, const float* amax, Q* q, float* descale, long long n) {
    const float scale = scale_from_amax<Q>(amax[0]);
    if (blockIdx.x == 0 && threadIdx.x == 0) descale[0] = 1.0f / scale;
    for (long long i = first8(); i < n; i += stride8()) {
        float v[8];
        load8(x, i, n, v);
        for (int k = 0; k < 8; ++k) v[k] *= scale;
        store8(q, i, n, v);
    }
}

extern "C" __global__ void quantize_f32_e4m3(const float* x, const float* amax, e4m3* q,
                                             float* descale, long long n) {
    quantize(x, amax, q, descale, n);
}
extern "C" __global__ void quantize_f32_e5m2(const float* x, const float* amax, e5m2* q,
                                             float* descale, long long n) {
    quantize(x, amax, q, descale, n);
}
extern "C" __global__ void quantize_bf16_e4m3(const bf16* x, const float* amax, e4m3* q,
                                              float* descale, long long n) {
    quantize(x, amax, q, descale, n);
}
extern "C" __global__ void quantize_bf16_e5m2(const bf16* x, const float* amax, e5m2* q,
                                              float* descale, long long n) {
    quantize(x, amax, q, descale, n);
}

// quantize_dual_{from}_{to}(const F* x, const float* amax, Q* q, Q* qt, float* descale,
//                           long long rows, int cols)
// `x` is [rows, cols] row-major: `q` as `quantize` writes it, and `qt` [cols, rows] with
// qt[c][r] = q[r][c], from one read of x. from: f32, bf16; to: e4m3, e5m2.
// grid: ceil(rows/FT_TILE)·ceil(cols/FT_TILE), block: FT_THREADS.
// A block quantises one 64×64 tile into shared memory (fp8_tile.cuh) and writes it transposed.
// A whole aligned tile is read eight values of one x row per thread, whose eight bytes also
// go to q's row in one 8-byte store; other tiles go element by element.
#include "fp8_tile.cuh"

// The FP8 byte of v.
template <typename Q>
__device__ __forceinline__ unsigned char fp8_byte(float v) {
    Q b;
    store(&b, 0, v);
    return b.__x;
}

template <typename F, typename Q>
__device__ void quantize_tile(const F* x, const float* amax, Q* q, Q* qt, float* descale,
                              long long rows, int cols) {
    __shared__ __align__(16) ByteTile tile;
    const float scale = scale_from_amax<Q>(amax[0]);
    if (blockIdx.x == 0 && threadIdx.x == 0) descale[0] = 1.0f / scale;
    long long r0;
    int c0;
    tile_origin(cols, &r0, &c0);
    const bool vector = vector_tile(r0, c0, rows, cols, qt, q) && vec8_rows_ok(x, cols);
    if (vector) {
        // Each thread's pieces of the tile (eight values of one x row each), all loaded before
        // any is stored: a store to q between them would keep the next load waiting for it.
        constexpr int per_row = FT_TILE / 8, pieces = FT_TILE * per_row / FT_THREADS;
        static_assert(pieces * FT_THREADS == FT_TILE * per_row, "whole pieces per thread");
        float v[pieces][8];
        for (int p = 0; p < pieces; ++p) {
            const int k = threadIdx.x + p * FT_THREADS, tr = k / per_row, tc = (k % per_row) * 8;
            load8_vector(x, (r0 + tr) * cols + c0 + tc, v[p]);
        }
        for (int p = 0; p < pieces; ++p) {
            const int k = threadIdx.x + p * FT_THREADS, tr = k / per_row, tc = (k % per_row) * 8;
            union { uint2 vec; unsigned int w[2]; unsigned char b[8]; } u;
            for (int j = 0; j < 8; ++j) u.b[j] = fp8_byte<Q>(v[p][j] * scale);
            // Tile rows are 68 bytes: 4-byte aligned at every multiple of 8 columns.
            unsigned int* dst = reinterpret_cast<unsigned int*>(&tile.b[tr][tc]);
            dst[0] = u.w[0];
            dst[1] = u.w[1];
            *reinterpret_cast<uint2*>(q + (r0 + tr) * cols + c0 + tc) = u.vec;
        }
    } else {
        for (int k = threadIdx.x; k < FT_TILE * FT_TILE; k += FT_THREADS) {
            const int tr = k / FT_TILE, tc = k % FT_TILE;
            const long long r = r0 + tr;
            const int c = c0 + tc;
            const bool inside = r < rows && c < cols;
            const unsigned char b = inside ? fp8_byte<Q>(load(x, r * cols + c) * scale) : 0;
            tile.b[tr][tc] = b;
            if (inside) q[r * cols + c].__x = b;
        }
    }
    __syncthreads();
    store_tile_transposed(tile, reinterpret_cast<unsigned char*>(qt), rows, cols, r0, c0, vector);
}

#define QUANTIZE_TILE_ENTRIES(F, Q, SUFFIX)                                                    \
    extern "C" __global__ void quantize_dual_##SUFFIX(const F* x, const float* amax, Q* q,      \
                                                      Q* qt, float* descale, long long rows,    \
                                                      int cols) {                               \
        quantize_tile<F, Q>(x, amax, q, qt, descale, rows, cols);                               \
    }

QUANTIZE_TILE_ENTRIES(float, e4m3, f32_e4m3)
QUANTIZE_TILE_ENTRIES(float, e5m2, f32_e5m2)
QUANTIZE_TILE_ENTRIES(bf16, e4m3, bf16_e4m3)
QUANTIZE_TILE_ENTRIES(bf16, e5m2, bf16_e5m2)
