// adamw: one AdamW update in place, as PyTorch computes it (ops/adamw.rs): the gradient times
// the clipping factor, decoupled weight decay, then the bias-corrected Adam step.
// `hyper = [lr, step]` and `clip` are read from device memory so captured graphs stay valid.
// The `_sr` kernels store BF16 tensors with stochastic rounding (seed = the step, one stream per
// tensor; a negative stream rounds to nearest): the moments, and a BF16 parameter updated in
// place where it has no master copy, bit for bit as the CPU backend.
#include "common.cuh"

// adamw_{param}_{grad}_{moments}(P* param, const G* grad, M* m, M* v, const float* clip,
//                                const float* hyper, long long n, float beta1, float beta2,
//                                float eps, float weight_decay)
// (param, grad, moments): (f32, f32, f32), (bf16, bf16, f32), (bf16, bf16, bf16),
//                         (f32, bf16, f32), (f32, bf16, bf16).
// grid: any (grid-stride), block: any.

// Stores eight values: FP32 as they are, BF16 to nearest or, for a stream ≥ 0, stochastically.
__device__ __forceinline__ void store8_rounded(float* p, long long i, long long n,
                                               const float v[8], unsigned long long, long long) {
    store8(p, i, n, v);
}
__device__ __forceinline__ void store8_rounded(bf16* p, long long i, long long n,
                                               const float v[8], unsigned long long seed,
                                               long long stream) {
    if (stream >= 0) {
        store8_stochastic(p, i, n, v, seed, (unsigned long long)stream);
    } else {
        store8(p, i, n, v);
    }
}

template <typename P, typename G, typename M>
__device__ void adamw(P* param, const G* grad, M* m, M* v, const float* clip, const float* hyper,
                      long long n, float beta1, float beta2, float eps, float weight_decay,
                      long long param_stream, long long m_stream, long long v_stream) {
    const float c = clip[0];
    if (c == 0.0f) return;  // non-finite gradient norm: the step is skipped (ops/adamw.rs)
    const float lr = hyper[0], step = hyper[1];
    const float bias1 = 1.0f - powf(beta1, step);
    const float bias2_sqrt = sqrtf(1.0f - powf(beta2, step));
    const unsigned long long seed = step_seed(hyper);
    for (long long i = first8(); i < n; i += stride8()) {
        float p8[8], g8[8], m8[8], v8[8];
        load8(param, i, n, p8);
        load8(grad, i, n, g8);
        load8(m, i, n, m8);
        load8(v, i, n, v8);
        for (int k = 0; k < 8; ++k) {
            const float g = g8[k] * c;
            const float m_new = beta1 * m8[k] + (1.0f - beta1) * g;
            const float v_new = beta2 * v8[k] + (1.0f - beta2) * g * g;
            const float decayed = p8[k] * (1.0f - lr * weight_decay);
            const float denom = sqrtf(v_new) / bias2_sqrt + eps;
            p8[k] = decayed - lr / bias1 * m_new / denom;
            m8[k] = m_new;
            v8[k] = v_new;
        }
        store8_rounded(param, i, n, p8, seed, param_stream);
        store8_rounded(m, i, n, m8, seed, m_stream);
        store8_rounded(v, i, n, v8, seed, v_stream);
    }
}

#define ADAMW_ENTRY(NAME, P, G, M)                                                              \
    extern "C" __global__ void NAME(P* param, const G* grad, M* m, M* v, const float* clip,     \
                                    const float* hyper, long long n, float beta1, float beta2,  \
                                    float eps, float weight_decay) {                            \
        adamw(param, grad, m, v, clip, hyper, n, beta1, beta2, eps, weight_decay, -1, -1, -1);  \
    }

// adamw_{param}_{grad}_{moments}_sr(..., float weight_decay, long long param_stream,
//                                   long long m_stream, long long v_stream):
// the arguments above, then the random streams (negative: nearest rounding).
// (param, grad, moments): (f32, bf16, bf16), (bf16, bf16, bf16), (bf16, bf16, f32).
#define ADAMW_SR_ENTRY(NAME, P, G, M)                                                           \
    extern "C" __global__ void NAME(P* param, const G* grad, M* m, M* v, const float* clip,     \
                                    const float* hyper, long long n, float beta1, float beta2,  \
                                    float eps, float weight_decay, long long param_stream,      \
                                    long long m_stream, long long v_stream) {                   \
        adamw(param, grad, m, v, clip, hyper, n, beta1, beta2, eps, weight_decay, param_stream, \
              m_stream, v_stream);                                                              \
    }

ADAMW_ENTRY(adamw_f32_f32_f32, float, float, float)
ADAMW_ENTRY(adamw_bf16_bf16_f32, bf16, bf16, float)
ADAMW_ENTRY(adamw_bf16_bf16_bf16, bf16, bf16, bf16)
ADAMW_ENTRY(adamw_f32_bf16_f32, float, bf16, float)
ADAMW_ENTRY(adamw_f32_bf16_bf16, float, bf16, bf16)
ADAMW_SR_ENTRY(adamw_f32_bf16_bf16_sr, float, bf16, bf16)
ADAMW_SR_ENTRY(adamw_bf16_bf16_bf16_sr, bf16, bf16, bf16)
ADAMW_SR_ENTRY(adamw_bf16_bf16_f32_sr, bf16, bf16, float)
