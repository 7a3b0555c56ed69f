// adamw: one AdamW update in place, as PyTorch computes it (ops/adamw.rs): the gradient times
// the clipping factor, decoupled weight decay, then the bias-corrected Adam step.
// `hyper = [lr, step]` and `clip` are read from device memory so captured graphs stay valid.
#include "common.cuh"

// adamw_{param}_{grad}_{moments}(P* param, const G* grad, M* m, M* v, const float* clip,
//                                const float* hyper, long long n, float beta1, float beta2,
//                                float eps, float weight_decay)
// (param, grad, moments): (f32, f32, f32), (bf16, bf16, f32), (bf16, bf16, bf16),
//                         (f32, bf16, f32), (f32, bf16, bf16).
// grid: any (grid-stride), block: any.
template <typename P, typename G, typename M>
__device__ void adamw(P* param, const G* grad, M* m, M* v, const float* clip, const float* hyper,
                      long long n, float beta1, float beta2, float eps, float weight_decay) {
    const float c = clip[0];
    if (c == 0.0f) return;  // non-finite gradient norm: the step is skipped (ops/adamw.rs)
    const float lr = hyper[0], step = hyper[1];
    const float bias1 = 1.0f - powf(beta1, step);
    const float bias2_sqrt = sqrtf(1.0f - powf(beta2, step));
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = load(grad, i) * c;
        const float m_new = beta1 * load(m, i) + (1.0f - beta1) * g;
        const float v_new = beta2 * load(v, i) + (1.0f - beta2) * g * g;
        const float decayed = load(param, i) * (1.0f - lr * weight_decay);
        const float denom = sqrtf(v_new) / bias2_sqrt + eps;
        store(param, i, decayed - lr / bias1 * m_new / denom);
        store(m, i, m_new);
        store(v, i, v_new);
    }
}

#define ADAMW_ENTRY(NAME, P, G, M)                                                              \
    extern "C" __global__ void NAME(P* param, const G* grad, M* m, M* v, const float* clip,     \
                                    const float* hyper, long long n, float beta1, float beta2,  \
                                    float eps, float weight_decay) {                            \
        adamw(param, grad, m, v, clip, hyper, n, beta1, beta2, eps, weight_decay);              \
    }

ADAMW_ENTRY(adamw_f32_f32_f32, float, float, float)
ADAMW_ENTRY(adamw_bf16_bf16_f32, bf16, bf16, float)
ADAMW_ENTRY(adamw_bf16_bf16_bf16, bf16, bf16, bf16)
ADAMW_ENTRY(adamw_f32_bf16_f32, float, bf16, float)
ADAMW_ENTRY(adamw_f32_bf16_bf16, float, bf16, bf16)
