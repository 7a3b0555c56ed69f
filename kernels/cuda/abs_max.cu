// abs_max: `amax = max |x|` over a whole tensor; any NaN makes it NaN (ops/abs_max.rs).
#include "abs_max.cuh"

// abs_max_{f32,bf16}(const T* x, long long n, float* amax)
// grid: any (grid-stride), block: multiple of 32. `amax` must hold 0 (or an earlier max) before
// the launch: blocks combine with an atomic max.
template <typename T>
__device__ void abs_max(const T* x, long long n, float* amax) {
    float m = 0.0f;
    // Missing values are 0, which never raise the max.
    for_each8(x, n, [&](const float v[8]) {
        for (int k = 0; k < 8; ++k) m = nan_max(m, fabsf(v[k]));
    });
    block_abs_max_into(m, amax);
}

extern "C" __global__ void abs_max_f32(const float* x, long long n, float* amax) { abs_max(x, n, amax); }
extern "C" __global__ void abs_max_bf16(const bf16* x, long long n, float* amax) { abs_max(x, n, amax); }
