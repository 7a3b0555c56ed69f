// abs_max.cuh: the abs-max reduction shared by abs_max.cu and the kernels that emit the abs-max
// of their own output (swiglu_abs_max, rms_norm_abs_max, add_rms_norm_abs_max), so they all
// compute it the same way: a NaN anywhere makes it NaN (ops/abs_max.rs).
#pragma once

#include "common.cuh"

// `m` with `v` folded in: the larger, or NaN once either is NaN (every comparison with NaN is
// false, so a NaN `m` stays).
__device__ __forceinline__ float nan_max(float m, float v) { return (v > m || isnan(v)) ? v : m; }

// The abs-max of p[i..i+8) as `v` would be stored there (each value rounded to T), elements
// from `n` on left out: what reading them back after store8 gives, without the read.
template <typename T>
__device__ __forceinline__ float abs_max8_as_stored(const T* p, long long i, long long n,
                                                    const float v[8]) {
    float m = 0.0f;
    for (int k = 0; k < 8 && i + k < n; ++k) m = nan_max(m, fabsf(as_stored(p, v[k])));
    return m;
}

// abs_max8_as_stored for a run of eight inside a row; with `Vector` (vec8_rows_ok checked) all
// eight exist, so the bounds test, and its branch, go.
template <bool Vector, typename T>
__device__ __forceinline__ float abs_max8_rows(const T* p, long long i, long long n,
                                               const float v[8]) {
    return Vector ? abs_max8_as_stored(p, 0, 8, v) : abs_max8_as_stored(p, i, n, v);
}

// Folds every thread's partial `m` (a maximum of absolute values) into `*amax`: a NaN-aware
// block reduction, then one atomic max on the float's bits per block. `*amax` must hold 0 (or
// an earlier maximum) before the launch. Every thread of the block must call it (blockDim a
// multiple of 32).
__device__ void block_abs_max_into(float m, float* amax) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) m = nan_max(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) partial[warp] = m;
    __syncthreads();
    if (warp == 0) {
        m = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) m = nan_max(m, __shfl_xor_sync(0xffffffffu, m, o));
        if (lane == 0) atomic_max_nonneg(amax, fabsf(m));
    }
}
