// add_rms_norm: `s = a + b`, then `y = s · rstd · w` with `rstd = 1/√(mean(s²) + eps)` over groups
// of `group_size` elements (ops/add_rms_norm.rs). `s` is normalised as stored (rounded to T), so
// the result equals add followed by rms_norm bit for bit. The `_abs_max` variant also emits the
// abs-max of `y` as stored.
#include "abs_max.cuh"

// Group g, one warp. Vector: every row of a, b, w, s and y takes the 16-byte paths (checked once
// by the caller), so a loop's loads carry no per-access branch and go out together.
template <bool Vector, typename T>
__device__ float add_rms_norm_row(const T* a, const T* b, const T* w, T* s, T* y, float* rstd,
                                  bool amax, long long g, int group_size, float eps) {
    const int lane = threadIdx.x & 31;
    const long long base = g * group_size;
    float sq = 0.0f, m = 0.0f;
    for (int i = lane * 8; i < group_size; i += 32 * 8) {
        float u[8], v[8];
        load8_rows<Vector>(a + base, i, group_size, u);
        load8_rows<Vector>(b + base, i, group_size, v);
        for (int k = 0; k < 8; ++k) u[k] += v[k];
        store8_rows<Vector>(s + base, i, group_size, u);
        // The sum as stored (rounded to T) is what is normalised.
        for (int k = 0; k < 8; ++k) {
            u[k] = as_stored(s, u[k]);
            sq += u[k] * u[k];
        }
    }
    const float r = 1.0f / sqrtf(warp_sum(sq) / (float)group_size + eps);
    // Each lane reads back only the elements of `s` it wrote itself: no barrier needed.
    for (int i = lane * 8; i < group_size; i += 32 * 8) {
        float v[8], wv[8];
        load8_rows<Vector>(s + base, i, group_size, v);
        load8_rows<Vector>(w, i, group_size, wv);
        for (int k = 0; k < 8; ++k) v[k] = v[k] * r * wv[k];
        store8_rows<Vector>(y + base, i, group_size, v);
        if (amax) m = nan_max(m, abs_max8_rows<Vector>(y + base, i, group_size, v));
    }
    if (lane == 0) rstd[g] = r;
    return m;
}

// add_rms_norm_{f32,bf16}(const T* a, const T* b, const T* w, T* s, T* y, float* rstd,
//                         long long groups, int group_size, float eps)
// add_rms_norm_abs_max_{f32,bf16}(const T* a, const T* b, const T* w, T* s, T* y, float* rstd,
//                                 float* amax, long long groups, int group_size, float eps)
// grid: ceil(groups / (block/32)), block: a multiple of 32: one warp per group, 16 bytes per
// lane. With `amax` (zeroed by the launcher), the abs-max of `y` as stored, so it equals
// abs_max's on `y` bit for bit.
template <typename T>
__device__ void add_rms_norm(const T* a, const T* b, const T* w, T* s, T* y, float* rstd,
                             float* amax, long long groups, int group_size, float eps) {
    const long long g = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5);
    float m = 0.0f;
    if (g < groups) {
        const bool vector = vec8_rows_ok_all(group_size, a, b, w, (const T*)s, (const T*)y);
        m = vector ? add_rms_norm_row<true>(a, b, w, s, y, rstd, amax, g, group_size, eps)
                   : add_rms_norm_row<false>(a, b, w, s, y, rstd, amax, g, group_size, eps);
    }
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
