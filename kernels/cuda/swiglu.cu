// swiglu: `h = gate·σ(gate)·up`, the same with the abs-max of `h` as stored, and the backward
// (ops/swiglu.rs), for gate and up as two tensors or packed in one (`packed=true`).
#include "abs_max.cuh"

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Gate and up: element i of `h` (row-major, `width` columns) reads gate[at(i)] and up[at(i)],
// at(i) = (i / width)·stride + i % width. Two tensors: stride = width (at(i) = i). Packed in
// `gu [rows, 2·width]`: gate = gu, up = gu + width, stride = 2·width. The backward writes
// dgate and dup at the same places. When width is a multiple of 8, each group of eight
// elements of `h` lies in one row, so gate, up and the gradients move as 16-byte vectors.
__device__ __forceinline__ long long at(long long i, long long width, long long stride) {
    return stride == width ? i : (i / width) * stride + i % width;
}

// The eight values of `p` for elements i..i+8 of `h` (those past n are 0); j = at(i), computed
// once per group by the caller (packed, a 64-bit division), not at every load and store.
template <typename T>
__device__ __forceinline__ void load_gu(const T* p, long long i, long long j, long long n,
                                        long long width, long long stride, float v[8]) {
    if (width % 8 == 0) {
        load8(p, j, j + 8, v);  // n is a multiple of 8 here: all eight exist
    } else {
        for (int k = 0; k < 8; ++k) v[k] = i + k < n ? load(p, at(i + k, width, stride)) : 0.0f;
    }
}

// Writes (or adds) the eight values at the places load_gu reads them from.
template <typename T>
__device__ __forceinline__ void store_gu(T* p, long long i, long long j, long long n,
                                         long long width, long long stride, const float v[8],
                                         int accumulate) {
    if (width % 8 == 0 && !accumulate) {
        store8(p, j, j + 8, v);
    } else {
        for (int k = 0; k < 8 && i + k < n; ++k) store_acc(p, at(i + k, width, stride), v[k], accumulate);
    }
}

// Vector (checked once by the caller): every group of eight is whole and aligned in every
// operand, so the loop's loads carry no per-access test and branch and go out together.
template <bool Vector, typename T>
__device__ void swiglu_groups(const T* gate, const T* up, T* h, float* amax, long long n,
                              long long width, long long stride) {
    float m = 0.0f;
    for (long long i = first8(); i < n; i += stride8()) {
        float g[8], u[8], y[8];
        const long long j = at(i, width, stride);
        if constexpr (Vector) {
            load8_vector(gate, j, g);
            load8_vector(up, j, u);
        } else {
            load_gu(gate, i, j, n, width, stride, g);
            load_gu(up, i, j, n, width, stride, u);
        }
        for (int k = 0; k < 8; ++k) y[k] = g[k] * sigmoid(g[k]) * u[k];
        store8_rows<Vector>(h, i, n, y);
        if (amax) m = nan_max(m, abs_max8_rows<Vector>(h, i, n, y));
    }
    if (amax) block_abs_max_into(m, amax);
}

// swiglu_{f32,bf16}(const T* gate, const T* up, T* h, long long n, long long width,
//                   long long stride)
// swiglu_abs_max_{f32,bf16}(const T* gate, const T* up, T* h, float* amax, long long n,
//                           long long width, long long stride)
// grid: any (grid-stride over groups of eight), block: a multiple of 32. With `amax` (zeroed by
// the launcher), the abs-max of `h` as stored (each value rounded to T in registers, not read
// back), so it equals abs_max's on `h` bit for bit.
template <typename T>
__device__ void swiglu(const T* gate, const T* up, T* h, float* amax, long long n,
                       long long width, long long stride) {
    // Every group of eight of every operand on the 16-byte path: rows of `width` at multiples of
    // eight `stride` apart, each pointer aligned.
    if (stride % 8 == 0 && vec8_rows_ok_all(width, gate, up, (const T*)h))
        swiglu_groups<true>(gate, up, h, amax, n, width, stride);
    else
        swiglu_groups<false>(gate, up, h, amax, n, width, stride);
}

// The backward's loop; Vector as in swiglu_groups.
template <bool Vector, typename T>
__device__ void swiglu_backward_groups(const T* gate, const T* up, const T* dh, T* dgate, T* dup,
                                       float* dgate_amax, float* dup_amax, long long n,
                                       long long width, long long stride, int accumulate) {
    float mg = 0.0f, mu = 0.0f;
    for (long long i = first8(); i < n; i += stride8()) {
        float g[8], u[8], d[8], dg[8], du[8];
        const long long j = at(i, width, stride);
        if constexpr (Vector) {
            load8_vector(gate, j, g);
            load8_vector(up, j, u);
            load8_vector(dh, i, d);
        } else {
            load_gu(gate, i, j, n, width, stride, g);
            load_gu(up, i, j, n, width, stride, u);
            load8(dh, i, n, d);
        }
        for (int k = 0; k < 8; ++k) {
            const float s = sigmoid(g[k]);
            du[k] = d[k] * g[k] * s;
            dg[k] = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
        }
        if (Vector && !accumulate) {
            store8_vector(dgate, j, dg);
            store8_vector(dup, j, du);
        } else {
            store_gu(dgate, i, j, n, width, stride, dg, accumulate);
            store_gu(dup, i, j, n, width, stride, du, accumulate);
        }
        if (dgate_amax) {
            mg = nan_max(mg, abs_max8_rows<Vector>(dgate, i, n, dg));
            mu = nan_max(mu, abs_max8_rows<Vector>(dup, i, n, du));
        }
    }
    if (dgate_amax) {
        block_abs_max_into(mg, dgate_amax);
        __syncthreads();  // block_abs_max_into's shared partials are reused
        block_abs_max_into(mu, dup_amax);
    }
}

// swiglu_backward_{f32,bf16}(const T* gate, const T* up, const T* dh, T* dgate, T* dup,
//                            long long n, long long width, long long stride, int accumulate)
// swiglu_backward_abs_max_{f32,bf16}(const T* gate, const T* up, const T* dh, T* dgate, T* dup,
//                                    float* dgate_amax, float* dup_amax, long long n,
//                                    long long width, long long stride)
// grid: any (grid-stride over groups of eight), block: a multiple of 32.
// dup = dh·g·σ(g), dgate = dh·up·σ(g)·(1 + g·(1 − σ(g))). With the abs-max pointers (zeroed by
// the launcher; the variant never accumulates), the abs-max of each gradient as stored, so it
// equals abs_max's bit for bit; packed, both pointers are the one abs-max of dgu.
template <typename T>
__device__ void swiglu_backward(const T* gate, const T* up, const T* dh, T* dgate, T* dup,
                                float* dgate_amax, float* dup_amax, long long n,
                                long long width, long long stride, int accumulate) {
    // As in swiglu.
    if (stride % 8 == 0 && vec8_rows_ok_all(width, gate, up, dh, (const T*)dgate, (const T*)dup))
        swiglu_backward_groups<true>(gate, up, dh, dgate, dup, dgate_amax, dup_amax, n, width,
                                     stride, accumulate);
    else
        swiglu_backward_groups<false>(gate, up, dh, dgate, dup, dgate_amax, dup_amax, n, width,
                                      stride, accumulate);
}

extern "C" __global__ void swiglu_f32(const float* gate, const float* up, float* h, long long n,
                                      long long width, long long stride) {
    swiglu(gate, up, h, nullptr, n, width, stride);
}
extern "C" __global__ void swiglu_bf16(const bf16* gate, const bf16* up, bf16* h, long long n,
                                       long long width, long long stride) {
    swiglu(gate, up, h, nullptr, n, width, stride);
}
extern "C" __global__ void swiglu_abs_max_f32(const float* gate, const float* up, float* h,
                                              float* amax, long long n, long long width,
                                              long long stride) {
    swiglu(gate, up, h, amax, n, width, stride);
}
extern "C" __global__ void swiglu_abs_max_bf16(const bf16* gate, const bf16* up, bf16* h,
                                               float* amax, long long n, long long width,
                                               long long stride) {
    swiglu(gate, up, h, amax, n, width, stride);
}
extern "C" __global__ void swiglu_backward_f32(const float* gate, const float* up, const float* dh,
                                               float* dgate, float* dup, long long n,
                                               long long width, long long stride, int accumulate) {
    swiglu_backward(gate, up, dh, dgate, dup, nullptr, nullptr, n, width, stride, accumulate);
}
extern "C" __global__ void swiglu_backward_bf16(const bf16* gate, const bf16* up, const bf16* dh,
                                                bf16* dgate, bf16* dup, long long n,
                                                long long width, long long stride, int accumulate) {
    swiglu_backward(gate, up, dh, dgate, dup, nullptr, nullptr, n, width, stride, accumulate);
}
extern "C" __global__ void swiglu_backward_abs_max_f32(const float* gate, const float* up,
                                                       const float* dh, float* dgate, float* dup,
                                                       float* dgate_amax, float* dup_amax,
                                                       long long n, long long width,
                                                       long long stride) {
    swiglu_backward(gate, up, dh, dgate, dup, dgate_amax, dup_amax, n, width, stride, 0);
}
extern "C" __global__ void swiglu_backward_abs_max_bf16(const bf16* gate, const bf16* up,
                                                        const bf16* dh, bf16* dgate, bf16* dup,
                                                        float* dgate_amax, float* dup_amax,
                                                        long long n, long long width,
                                                        long long stride) {
    swiglu_backward(gate, up, dh, dgate, dup, dgate_amax, dup_amax, n, width, stride, 0);
}
