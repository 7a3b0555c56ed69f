// cast: conversion to another storage dtype; the value is unchanged, the store rounds to nearest
// even (FP8 saturating to its largest finite value) (ops/cast.rs).
// cast_stochastic: FP32 to BF16 with stochastic rounding, the random bits of element i from
// position i of stream `stream` under seed `hyper[1]` (the optimizer step), as the CPU does.
#include "common.cuh"

// cast_{from}_{to}(const F* x, T* y, long long n)
// from → to: f32 ↔ bf16; f32, bf16 → e4m3, e5m2; e4m3, e5m2 → f32, bf16.
// grid: any (grid-stride), block: any.
template <typename F, typename T>
__device__ void cast(const F* x, T* y, long long n) {
    for (long long i = first8(); i < n; i += stride8()) {
        float v[8];
        load8(x, i, n, v);
        store8(y, i, n, v);
    }
}

extern "C" __global__ void cast_f32_bf16(const float* x, bf16* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_bf16_f32(const bf16* x, float* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_f32_e4m3(const float* x, e4m3* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_f32_e5m2(const float* x, e5m2* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_bf16_e4m3(const bf16* x, e4m3* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_bf16_e5m2(const bf16* x, e5m2* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_e4m3_f32(const e4m3* x, float* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_e4m3_bf16(const e4m3* x, bf16* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_e5m2_f32(const e5m2* x, float* y, long long n) { cast(x, y, n); }
extern "C" __global__ void cast_e5m2_bf16(const e5m2* x, bf16* y, long long n) { cast(x, y, n); }

// cast_stochastic_f32_bf16(const float* x, const float* hyper, bf16* y, long long n,
//                          long long stream)
// grid: any (grid-stride), block: any. `hyper` is read from device memory (graphs stay valid).
extern "C" __global__ void cast_stochastic_f32_bf16(const float* x, const float* hyper, bf16* y,
                                                    long long n, long long stream) {
    const unsigned long long seed = step_seed(hyper);
    for (long long i = first8(); i < n; i += stride8()) {
        float v[8];
        load8(x, i, n, v);
        store8_stochastic(y, i, n, v, seed, (unsigned long long)stream);
    }
}
