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

// quantize_transposed_{from}_{to}(const F* x, const float* amax, Q* q, float* descale,
//                                 long long rows, int cols)
// `x` is [rows, cols] row-major, `q` is [cols, rows]: q[c][r] = fp8(x[r][c]·scale), the same
// bytes as `quantize` writes at x's place. from: f32, bf16; to: e4m3, e5m2.
// quantize_dual_{from}_{to}(const F* x, const float* amax, Q* q, Q* qt, float* descale,
//                           long long rows, int cols)
// Both: `q` as `quantize` writes it, `qt` as `quantize_transposed` does, from one read of x.
// grid: ceil(rows/QT_TILE)·ceil(cols/QT_TILE), block: QT_THREADS.
// A block moves one 64×64 tile through shared memory: it reads x's rows coalesced, writes q's
// rows (dual only) and qt's rows four bytes (four consecutive elements) per thread.
#define QT_TILE 64
#define QT_THREADS 256

// Four FP8 values packed into one 32-bit word, the first in the lowest byte.
template <typename Q>
__device__ __forceinline__ unsigned int pack4(float a, float b, float c, float d) {
    const float v[4] = {a, b, c, d};
    unsigned int word = 0;
    for (int j = 0; j < 4; ++j) {
        Q byte;
        store(&byte, 0, v[j]);
        word |= (unsigned int)byte.__x << (8 * j);
    }
    return word;
}

template <typename F, typename Q>
__device__ void quantize_tile(const F* x, const float* amax, Q* q, Q* qt, float* descale,
                              long long rows, int cols) {
    __shared__ float tile[QT_TILE][QT_TILE + 1];
    const float scale = scale_from_amax<Q>(amax[0]);
    if (blockIdx.x == 0 && threadIdx.x == 0) descale[0] = 1.0f / scale;
    const int col_tiles = (cols + QT_TILE - 1) / QT_TILE;
    const long long r0 = (long long)(blockIdx.x / col_tiles) * QT_TILE;
    const int c0 = (int)(blockIdx.x % col_tiles) * QT_TILE;
    for (int k = threadIdx.x; k < QT_TILE * QT_TILE; k += QT_THREADS) {
        const int tr = k / QT_TILE, tc = k % QT_TILE;
        const long long r = r0 + tr;
        const int c = c0 + tc;
        tile[tr][tc] = (r < rows && c < cols) ? load(x, r * cols + c) * scale : 0.0f;
    }
    __syncthreads();
    // q's row r, four consecutive columns at a time: one 32-bit store when the four lie inside
    // x and the row start keeps them 4-byte aligned.
    if (q) {
        const bool aligned = cols % 4 == 0;
        for (int k = threadIdx.x; k < QT_TILE * (QT_TILE / 4); k += QT_THREADS) {
            const int tr = k / (QT_TILE / 4), tc = (k % (QT_TILE / 4)) * 4;
            const long long r = r0 + tr;
            const int c = c0 + tc;
            if (r >= rows || c >= cols) continue;
            Q* out = q + r * cols + c;
            if (aligned && c + 4 <= cols) {
                *reinterpret_cast<unsigned int*>(out) = pack4<Q>(
                    tile[tr][tc], tile[tr][tc + 1], tile[tr][tc + 2], tile[tr][tc + 3]);
            } else {
                for (int j = 0; j < 4 && c + j < cols; ++j) store(out, j, tile[tr][tc + j]);
            }
        }
    }
    // qt's row c, four consecutive rows of x at a time, likewise.
    const bool aligned = rows % 4 == 0;
    for (int k = threadIdx.x; k < QT_TILE * (QT_TILE / 4); k += QT_THREADS) {
        const int tc = k / (QT_TILE / 4), tr = (k % (QT_TILE / 4)) * 4;
        const int c = c0 + tc;
        const long long r = r0 + tr;
        if (c >= cols || r >= rows) continue;
        Q* out = qt + (long long)c * rows + r;
        if (aligned && r + 4 <= rows) {
            *reinterpret_cast<unsigned int*>(out) = pack4<Q>(
                tile[tr][tc], tile[tr + 1][tc], tile[tr + 2][tc], tile[tr + 3][tc]);
        } else {
            for (int j = 0; j < 4 && r + j < rows; ++j) store(out, j, tile[tr + j][tc]);
        }
    }
}

#define QUANTIZE_TILE_ENTRIES(F, Q, SUFFIX)                                                    \
    extern "C" __global__ void quantize_transposed_##SUFFIX(                                    \
        const F* x, const float* amax, Q* qt, float* descale, long long rows, int cols) {       \
        quantize_tile<F, Q>(x, amax, nullptr, qt, descale, rows, cols);                         \
    }                                                                                           \
    extern "C" __global__ void quantize_dual_##SUFFIX(const F* x, const float* amax, Q* q,      \
                                                      Q* qt, float* descale, long long rows,    \
                                                      int cols) {                               \
        quantize_tile<F, Q>(x, amax, q, qt, descale, rows, cols);                               \
    }

QUANTIZE_TILE_ENTRIES(float, e4m3, f32_e4m3)
QUANTIZE_TILE_ENTRIES(float, e5m2, f32_e5m2)
QUANTIZE_TILE_ENTRIES(bf16, e4m3, bf16_e4m3)
QUANTIZE_TILE_ENTRIES(bf16, e5m2, bf16_e5m2)
