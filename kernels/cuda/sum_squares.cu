// sum_squares: `s += Σ x²` in FP32 (ops/sum_squares.rs). Run over every gradient into one
// scalar, it gives the squared global norm; the launcher zeroes `s` before the first one.
#include "common.cuh"

// sum_squares_{f32,bf16}(const T* x, long long n, float* s)
// grid: any (grid-stride), block: multiple of 32. Always accumulates into `s` (atomicAdd), so
// the result's rounding depends on the order blocks finish in (the CPU reference sums in FP64).
template <typename T>
__device__ void sum_squares(const T* x, long long n, float* s) {
    float acc = 0.0f;
    for_each8(x, n, [&](const float v[8]) {
        for (int k = 0; k < 8; ++k) acc += v[k] * v[k];
    });
    acc = block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(s, acc);
}

extern "C" __global__ void sum_squares_f32(const float* x, long long n, float* s) { sum_squares(x, n, s); }
extern "C" __global__ void sum_squares_bf16(const bf16* x, long long n, float* s) { sum_squares(x, n, s); }
