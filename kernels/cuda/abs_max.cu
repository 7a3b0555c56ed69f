// abs_max: `amax = max |x|` over a whole tensor; any NaN makes it NaN (ops/abs_max.rs).
#include "abs_max.cuh"

// abs_max_{f32,bf16}(const T* x, long long n, float* amax)
// grid: any (grid-stride), block: multiple of 32. `amax` must hold 0 (or an earlier max) before
// the launch: blocks combine with an atomic max.
template <typename T>
__device__ void abs_max(const T* x, long long n, float* amax) {
    float m = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        m = nan_max(m, fabsf(load(x, i)));
    }
    block_abs_max_into(m, amax);
}

extern "C" __global__ void abs_max_f32(const float* x, long long n, float* amax) { abs_max(x, n, amax); }
extern "C" __global__ void abs_max_bf16(const bf16* x, long long n, float* amax) { abs_max(x, n, amax); }
