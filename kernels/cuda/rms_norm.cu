// rms_norm: `y = x · rstd · w` with `rstd = 1/√(mean(x²) + eps)` over groups of `group_size`
// consecutive elements (the weight's length), the same with the abs-max of `y` as stored, the
// backward, and the backward adding its dx into a residual gradient (ops/rms_norm.rs).
#include "abs_max.cuh"

// rms_norm_{f32,bf16}(const T* x, const T* w, T* y, float* rstd, long long groups,
//                     int group_size, float eps)
// rms_norm_abs_max_{f32,bf16}(const T* x, const T* w, T* y, float* rstd, float* amax,
//                             long long groups, int group_size, float eps)
// grid: ceil(groups / (block/32)), block: a multiple of 32: one warp per group, reading it 16
// bytes per lane (its reduction needs no barrier). With `amax` (zeroed by the launcher), the
// abs-max of `y` as stored, so it equals abs_max's on `y` bit for bit.
template <typename T>
__device__ void rms_norm(const T* x, const T* w, T* y, float* rstd, float* amax, long long groups,
                         int group_size, float eps) {
    const int lane = threadIdx.x & 31;
    const long long g = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5);
    float m = 0.0f;
    if (g < groups) {
        const T* xg = x + g * group_size;
        T* yg = y + g * group_size;
        float sq = 0.0f;
        for (int i = lane * 8; i < group_size; i += 32 * 8) {
            float v[8];
            load8(xg, i, group_size, v);
            for (int k = 0; k < 8; ++k) sq += v[k] * v[k];
        }
        const float r = 1.0f / sqrtf(warp_sum(sq) / (float)group_size + eps);
        for (int i = lane * 8; i < group_size; i += 32 * 8) {
            float v[8], wv[8];
            load8(xg, i, group_size, v);
            load8(w, i, group_size, wv);
            for (int k = 0; k < 8; ++k) v[k] = v[k] * r * wv[k];
            store8(yg, i, group_size, v);
            if (amax) m = nan_max(m, abs_max8_as_stored(yg, i, group_size, v));
        }
        if (lane == 0) rstd[g] = r;
    }
    if (amax) block_abs_max_into(m, amax);
}

// dx of row g, one warp. Vector: every row of dy, x, w, residual and dx takes the 16-byte paths
// (checked once by the caller), so the loops' loads carry no per-access branch and two
// iterations' loads are in flight together (with the branches a warp waited on each load in
// turn: 1.7× the estimate on the H100).
template <bool Vector, typename T>
__device__ float rms_norm_backward_row(const T* dy, const T* x, const T* w, const float* rstd,
                                       const T* residual, T* dx, bool amax, long long g,
                                       int group_size, int accumulate_dx) {
    const int lane = threadIdx.x & 31;
    const long long base = g * group_size;
    const T* dyg = dy + base;
    const T* xg = x + base;
    T* dxg = dx + base;
    const float r = rstd[g];
    float dot = 0.0f, m = 0.0f;
#pragma unroll 2
    for (int i = lane * 8; i < group_size; i += 32 * 8) {
        float d[8], xv[8], wv[8];
        load8_rows<Vector>(dyg, i, group_size, d);
        load8_rows<Vector>(xg, i, group_size, xv);
        load8_rows<Vector>(w, i, group_size, wv);
        for (int k = 0; k < 8; ++k) dot += d[k] * wv[k] * xv[k] * r;
    }
    const float mean = warp_sum(dot) / (float)group_size;
#pragma unroll 2
    for (int i = lane * 8; i < group_size; i += 32 * 8) {
        float d[8], xv[8], wv[8], out[8];
        load8_rows<Vector>(dyg, i, group_size, d);
        load8_rows<Vector>(xg, i, group_size, xv);
        load8_rows<Vector>(w, i, group_size, wv);
        for (int k = 0; k < 8; ++k) out[k] = r * (d[k] * wv[k] - xv[k] * r * mean);
        if (residual) {
            float res[8];
            load8_rows<Vector>(residual + base, i, group_size, res);
            for (int k = 0; k < 8; ++k) out[k] = res[k] + as_stored(dxg, out[k]);
        } else if (accumulate_dx) {
            float old[8];
            load8_rows<Vector>(dxg, i, group_size, old);
            for (int k = 0; k < 8; ++k) out[k] += old[k];
        }
        store8_rows<Vector>(dxg, i, group_size, out);
        if (amax) m = nan_max(m, abs_max8_rows<Vector>(dxg, i, group_size, out));
    }
    return m;
}

// rms_norm_backward_{f32,bf16}(const T* dy, const T* x, const T* w, const float* rstd, T* dx,
//                              T* dw, float* scratch, long long groups, int group_size,
//                              int accumulate_dx, int accumulate_dw)
// rms_norm_backward_add_{f32,bf16}(const T* dy, const T* x, const T* w, const float* rstd,
//                                  const T* r, T* d, T* dw, float* scratch, long long groups,
//                                  int group_size, int accumulate_dw)
// rms_norm_backward_add_abs_max_{f32,bf16}(const T* dy, const T* x, const T* w,
//                                          const float* rstd, const T* r, T* d, T* dw,
//                                          float* amax, float* scratch, long long groups,
//                                          int group_size, int accumulate_dw)
// One flag per output: the weight gradient accumulates over micro-batches, dx usually not.
// grid: COLSUM_CHUNKS·(ceil(group_size / COLSUM_WIDTH) + ceil(ceil(groups / COLSUM_CHUNKS) /
// (block/32))), block: a multiple of 32, at most 1024. The blocks come in one run per chunk of
// groups of column_sum_split (common.cuh): the chunk's column-sum blocks, which write
// dw = Σ_groups dy·x̂ deterministically (scratch is the backend's), then the chunk's dx blocks,
// one warp per group (a group is a few hundred to a few thousand elements: a warp reads it 16
// bytes per lane, and its reduction needs no barrier): with x̂ = x·r and ĝ = dy·w,
// dx = r·(ĝ − x̂·mean(ĝ·x̂)). Blocks start in about their order, so both readers of a chunk's
// dy and x run together and the second finds them in L2 rather than in DRAM.
// The _add kernels write d = r + dx instead, dx rounded to T first as the unfused add reads it
// back; with `amax` (zeroed by the launcher), also the abs-max of d as stored.
template <typename T>
__device__ void rms_norm_backward(const T* dy, const T* x, const T* w, const float* rstd,
                                  const T* residual, T* dx, T* dw, float* amax, float* scratch,
                                  long long groups, int group_size, int accumulate_dx,
                                  int accumulate_dw) {
    const int col_blocks = colsum_col_blocks(group_size), warps = blockDim.x >> 5;
    const long long per_chunk = (groups + COLSUM_CHUNKS - 1) / COLSUM_CHUNKS;
    const long long run = col_blocks + (per_chunk + warps - 1) / warps;  // blocks per chunk
    const long long chunk = blockIdx.x / run, at = blockIdx.x % run;
    const bool vector = vec8_rows_ok_all(group_size, dy, x, w, residual, (const T*)dx);
    if (at < col_blocks) {
        const long long block = chunk * col_blocks + at;  // column_sum_split's numbering
        const int c = colsum_first_column(block, group_size);
        column_sum_split(
            groups, group_size, block, scratch,
            [&](long long g, float v[8]) {
                float d[8], xv[8];
                load8_uniform(vector, dy + g * group_size, c, group_size, d);
                load8_uniform(vector, x + g * group_size, c, group_size, xv);
                const float r = rstd[g];
                for (int k = 0; k < 8; ++k) v[k] = d[k] * xv[k] * r;
            },
            [&](int col, float total) { store_acc(dw, col, total, accumulate_dw); });
        return;
    }
    const long long g = chunk * per_chunk + (at - col_blocks) * warps + (threadIdx.x >> 5);
    float m = 0.0f;
    if (g < min(groups, (chunk + 1) * per_chunk)) {
        m = vector ? rms_norm_backward_row<true>(dy, x, w, rstd, residual, dx, amax, g,
                                                 group_size, accumulate_dx)
                   : rms_norm_backward_row<false>(dy, x, w, rstd, residual, dx, amax, g,
                                                  group_size, accumulate_dx);
    }
    if (amax) block_abs_max_into(m, amax);
}

extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, float* rstd,
                                        long long groups, int group_size, float eps) {
    rms_norm(x, w, y, rstd, nullptr, groups, group_size, eps);
}
extern "C" __global__ void rms_norm_bf16(const bf16* x, const bf16* w, bf16* y, float* rstd,
                                         long long groups, int group_size, float eps) {
    rms_norm(x, w, y, rstd, nullptr, groups, group_size, eps);
}
extern "C" __global__ void rms_norm_abs_max_f32(const float* x, const float* w, float* y,
                                                float* rstd, float* amax, long long groups,
                                                int group_size, float eps) {
    rms_norm(x, w, y, rstd, amax, groups, group_size, eps);
}
extern "C" __global__ void rms_norm_abs_max_bf16(const bf16* x, const bf16* w, bf16* y,
                                                 float* rstd, float* amax, long long groups,
                                                 int group_size, float eps) {
    rms_norm(x, w, y, rstd, amax, groups, group_size, eps);
}
extern "C" __global__ void rms_norm_backward_f32(const float* dy, const float* x, const float* w,
                                                 const float* rstd, float* dx, float* dw, float* scratch,
                                                 long long groups, int group_size, int accumulate_dx,
                                                 int accumulate_dw) {
    rms_norm_backward(dy, x, w, rstd, (const float*)nullptr, dx, dw, nullptr, scratch, groups,
                      group_size, accumulate_dx, accumulate_dw);
}
extern "C" __global__ void rms_norm_backward_bf16(const bf16* dy, const bf16* x, const bf16* w,
                                                  const float* rstd, bf16* dx, bf16* dw, float* scratch,
                                                  long long groups, int group_size, int accumulate_dx,
                                                  int accumulate_dw) {
    rms_norm_backward(dy, x, w, rstd, (const bf16*)nullptr, dx, dw, nullptr, scratch, groups,
                      group_size, accumulate_dx, accumulate_dw);
}
extern "C" __global__ void rms_norm_backward_add_f32(const float* dy, const float* x, const float* w,
                                                     const float* rstd, const float* r, float* d,
                                                     float* dw, float* scratch, long long groups,
                                                     int group_size, int accumulate_dw) {
    rms_norm_backward(dy, x, w, rstd, r, d, dw, nullptr, scratch, groups, group_size, 0,
                      accumulate_dw);
}
extern "C" __global__ void rms_norm_backward_add_bf16(const bf16* dy, const bf16* x, const bf16* w,
                                                      const float* rstd, const bf16* r, bf16* d,
                                                      bf16* dw, float* scratch, long long groups,
                                                      int group_size, int accumulate_dw) {
    rms_norm_backward(dy, x, w, rstd, r, d, dw, nullptr, scratch, groups, group_size, 0,
                      accumulate_dw);
}
extern "C" __global__ void rms_norm_backward_add_abs_max_f32(
    const float* dy, const float* x, const float* w, const float* rstd, const float* r, float* d,
    float* dw, float* amax, float* scratch, long long groups, int group_size, int accumulate_dw) {
    rms_norm_backward(dy, x, w, rstd, r, d, dw, amax, scratch, groups, group_size, 0,
                      accumulate_dw);
}
extern "C" __global__ void rms_norm_backward_add_abs_max_bf16(
    const bf16* dy, const bf16* x, const bf16* w, const float* rstd, const bf16* r, bf16* d,
    bf16* dw, float* amax, float* scratch, long long groups, int group_size, int accumulate_dw) {
    rms_norm_backward(dy, x, w, rstd, r, d, dw, amax, scratch, groups, group_size, 0,
                      accumulate_dw);
}
