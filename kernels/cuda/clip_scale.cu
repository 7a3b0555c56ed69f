// clip_scale: `norm = √s`, `scale = min(1, max_norm / (norm + 1e-6))`, or 1 when max_norm ≤ 0
// (ops/clip_scale.rs, PyTorch's clip_grad_norm_); 0 for a non-finite norm.
#include "common.cuh"

// clip_scale_f32(const float* sum_squares, float* norm, float* scale, float max_norm)
// grid: 1, block: 1 (any: only thread 0 of block 0 works).
extern "C" __global__ void clip_scale_f32(const float* sum_squares, float* norm, float* scale,
                                          float max_norm) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const float n = sqrtf(sum_squares[0]);
    norm[0] = n;
    // A non-finite norm gives 0, which adamw reads as "skip this step".
    scale[0] = !isfinite(n) ? 0.0f : max_norm > 0.0f ? fminf(max_norm / (n + 1e-6f), 1.0f) : 1.0f;
}
