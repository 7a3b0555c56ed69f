// swiglu: `h = gate·σ(gate)·up`, the same with the abs-max of `h` as stored, and the backward
// (ops/swiglu.rs).
#include "abs_max.cuh"

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// swiglu_{f32,bf16}(const T* gate, const T* up, T* h, long long n)
// swiglu_abs_max_{f32,bf16}(const T* gate, const T* up, T* h, float* amax, long long n)
// grid: any (grid-stride), block: a multiple of 32. With `amax` (zeroed by the launcher), the
// abs-max of `h` read back as stored, so it equals abs_max's on `h` bit for bit.
template <typename T>
__device__ void swiglu(const T* gate, const T* up, T* h, float* amax, long long n) {
    float m = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = load(gate, i);
        store(h, i, g * sigmoid(g) * load(up, i));
        if (amax) m = nan_max(m, fabsf(load(h, i)));
    }
    if (amax) block_abs_max_into(m, amax);
}

// swiglu_backward_{f32,bf16}(const T* gate, const T* up, const T* dh, T* dgate, T* dup,
//                            long long n, int accumulate)
// swiglu_backward_abs_max_{f32,bf16}(const T* gate, const T* up, const T* dh, T* dgate, T* dup,
//                                    float* dgate_amax, float* dup_amax, long long n)
// grid: any (grid-stride), block: a multiple of 32.
// dup = dh·g·σ(g), dgate = dh·up·σ(g)·(1 + g·(1 − σ(g))). With the abs-max pointers (zeroed by
// the launcher; the variant never accumulates), the abs-max of each gradient read back as
// stored, so it equals abs_max's bit for bit.
template <typename T>
__device__ void swiglu_backward(const T* gate, const T* up, const T* dh, T* dgate, T* dup,
                                float* dgate_amax, float* dup_amax, long long n, int accumulate) {
    float mg = 0.0f, mu = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = load(gate, i), u = load(up, i), d = load(dh, i);
        const float s = sigmoid(g);
        store_acc(dup, i, d * g * s, accumulate);
        store_acc(dgate, i, d * u * s * (1.0f + g * (1.0f - s)), accumulate);
        if (dgate_amax) {
            mg = nan_max(mg, fabsf(load(dgate, i)));
            mu = nan_max(mu, fabsf(load(dup, i)));
        }
    }
    if (dgate_amax) {
        block_abs_max_into(mg, dgate_amax);
        __syncthreads();  // block_abs_max_into's shared partials are reused
        block_abs_max_into(mu, dup_amax);
    }
}

extern "C" __global__ void swiglu_f32(const float* gate, const float* up, float* h, long long n) {
    swiglu(gate, up, h, nullptr, n);
}
extern "C" __global__ void swiglu_bf16(const bf16* gate, const bf16* up, bf16* h, long long n) {
    swiglu(gate, up, h, nullptr, n);
}
extern "C" __global__ void swiglu_abs_max_f32(const float* gate, const float* up, float* h,
                                              float* amax, long long n) {
    swiglu(gate, up, h, amax, n);
}
extern "C" __global__ void swiglu_abs_max_bf16(const bf16* gate, const bf16* up, bf16* h,
                                               float* amax, long long n) {
    swiglu(gate, up, h, amax, n);
}
extern "C" __global__ void swiglu_backward_f32(const float* gate, const float* up, const float* dh,
                                               float* dgate, float* dup, long long n, int accumulate) {
    swiglu_backward(gate, up, dh, dgate, dup, nullptr, nullptr, n, accumulate);
}
extern "C" __global__ void swiglu_backward_bf16(const bf16* gate, const bf16* up, const bf16* dh,
                                                bf16* dgate, bf16* dup, long long n, int accumulate) {
    swiglu_backward(gate, up, dh, dgate, dup, nullptr, nullptr, n, accumulate);
}
extern "C" __global__ void swiglu_backward_abs_max_f32(const float* gate, const float* up,
                                                       const float* dh, float* dgate, float* dup,
                                                       float* dgate_amax, float* dup_amax,
                                                       long long n) {
    swiglu_backward(gate, up, dh, dgate, dup, dgate_amax, dup_amax, n, 0);
}
extern "C" __global__ void swiglu_backward_abs_max_bf16(const bf16* gate, const bf16* up,
                                                        const bf16* dh, bf16* dgate, bf16* dup,
                                                        float* dgate_amax, float* dup_amax,
                                                        long long n) {
    swiglu_backward(gate, up, dh, dgate, dup, dgate_amax, dup_amax, n, 0);
}
