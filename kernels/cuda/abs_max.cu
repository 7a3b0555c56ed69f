// abs_max: `amax = max |x|` over a whole tensor; any NaN makes it NaN (ops/abs_max.rs).
#include "common.cuh"

// abs_max_{f32,bf16}(const T* x, long long n, float* amax)
// grid: any (grid-stride), block: multiple of 32. `amax` must hold 0 (or an earlier max) before
// the launch: blocks combine with an atomic max.
template <typename T>
__device__ void abs_max(const T* x, long long n, float* amax) {
    float m = 0.0f;
    for (long long i = first8(); i < n; i += stride8()) {
        float v[8];
        load8(x, i, n, v);  // missing values are 0, which never raise the max
        for (int k = 0; k < 8; ++k) {
            const float a = fabsf(v[k]);
            // Once NaN, `m` stays NaN: every comparison with it is false.
            if (a > m || isnan(a)) m = a;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, m, o);
        if (other > m || isnan(other)) m = other;
    }
    if ((threadIdx.x & 31) == 0) atomic_max_nonneg(amax, fabsf(m));
}

extern "C" __global__ void abs_max_f32(const float* x, long long n, float* amax) { abs_max(x, n, amax); }
extern "C" __global__ void abs_max_bf16(const bf16* x, long long n, float* amax) { abs_max(x, n, amax); }
