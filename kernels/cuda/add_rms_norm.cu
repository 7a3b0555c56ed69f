// add_rms_norm: `s = a + b`, then `y = s · rstd · w` with `rstd = 1/√(mean(s²) + eps)` over groups
// of `group_size` elements (ops/add_rms_norm.rs). `s` is normalised as stored (rounded to T), so
// the result equals add followed by rms_norm bit for bit. The `_abs_max` variant also emits the
// abs-max of `y` as stored.
#include "abs_max.cuh"

// add_rms_norm_{f32,bf16}(const T* a, const T* b, const T* w, T* s, T* y, float* rstd,
//                         long long groups, int group_size, float eps)
// add_rms_norm_abs_max_{f32,bf16}(const T* a, const T* b, const T* w, T* s, T* y, float* rstd,
//                                 float* amax, long long groups, int group_size, float eps)
// grid: groups (one block per group), block: multiple of 32. With `amax` (zeroed by the
// launcher), the abs-max of `y` read back as stored, so it equals abs_max's on `y` bit for bit.
template <typename T>
__device__ void add_rms_norm(const T* a, const T* b, const T* w, T* s, T* y, float* rstd,
                             float* amax, long long groups, int group_size, float eps) {
    const long long g = blockIdx.x;
    if (g >= groups) return;
    const long long base = g * group_size;
    float sq = 0.0f;
    for (int i = threadIdx.x; i < group_size; i += blockDim.x) {
        store(s, base + i, load(a, base + i) + load(b, base + i));
        const float v = load(s, base + i);
        sq += v * v;
    }
    const float mean_sq = block_sum(sq) / (float)group_size;
    const float r = 1.0f / sqrtf(mean_sq + eps);
    // Each thread reads back only the elements of `s` it wrote itself: no barrier needed.
    float m = 0.0f;
    for (int i = threadIdx.x; i < group_size; i += blockDim.x) {
        store(y, base + i, load(s, base + i) * r * load(w, i));
        if (amax) m = nan_max(m, fabsf(load(y, base + i)));
    }
    if (threadIdx.x == 0) rstd[g] = r;
    if (amax) block_abs_max_into(m, amax);
}

extern "C" __global__ void add_rms_norm_f32(const float* a, const float* b, const float* w,
                                            float* s, float* y, float* rstd, long long groups,
                                            int group_size, float eps) {
    add_rms_norm(a, b, w, s, y, rstd, nullptr, groups, group_size, eps);
}
extern "C" __global__ void add_rms_norm_bf16(const bf16* a, const bf16* b, const bf16* w, bf16* s,
                                             bf16* y, float* rstd, long long groups,
                                             int group_size, float eps) {
    add_rms_norm(a, b, w, s, y, rstd, nullptr, groups, group_size, eps);
}
extern "C" __global__ void add_rms_norm_abs_max_f32(const float* a, const float* b, const float* w,
                                                    float* s, float* y, float* rstd, float* amax,
                                                    long long groups, int group_size, float eps) {
    add_rms_norm(a, b, w, s, y, rstd, amax, groups, group_size, eps);
}
extern "C" __global__ void add_rms_norm_abs_max_bf16(const bf16* a, const bf16* b, const bf16* w,
                                                     bf16* s, bf16* y, float* rstd, float* amax,
                                                     long long groups, int group_size, float eps) {
    add_rms_norm(a, b, w, s, y, rstd, amax, groups, group_size, eps);
}
