// quantize: `scale = fmax / amax` (1 when amax is 0, negative or not finite), `q = fp8(x·scale)`
// saturating, `descale = 1 / scale` (ops/quantize.rs; fmax 448 for e4m3, 57344 for e5m2).
#include "common.cuh"

template <typename Q> struct Fp8Max;
template <> struct Fp8Max<e4m3> { static constexpr float value = 448.0f; };
template <> struct Fp8Max<e5m2> { static constexpr float value = 57344.0f; };

// quantize_{from}_{to}(const F* x, const float* amax, Q* q, float* descale, long long n)
// from: f32, bf16; to: e4m3, e5m2. grid: any (grid-stride), block: any.
// `amax` is read from device memory (the abs_max kernel's output), so a captured graph stays valid.
template <typename F, typename Q>
__device__ void quantize(const F* x, const float* amax, Q* q, float* descale, long long n) {
    const float a = amax[0];
    const float scale = (a > 0.0f && isfinite(a)) ? Fp8Max<Q>::value / a : 1.0f;
    if (blockIdx.x == 0 && threadIdx.x == 0) descale[0] = 1.0f / scale;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        store(q, i, load(x, i) * scale);
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
