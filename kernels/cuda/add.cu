// add: `c = a + b`, elementwise over tensors of one shape (ops/add.rs).
#include "common.cuh"

// add_{f32,bf16}(const T* a, const T* b, T* c, long long n)
// grid: any (grid-stride, eight elements per thread and step), block: any. `c` may alias `a`
// or `b` (each element is read and written by the same thread).
template <typename T>
__device__ void add(const T* a, const T* b, T* c, long long n) {
    for (long long i = first8(); i < n; i += stride8()) {
        float x[8], y[8];
        load8(a, i, n, x);
        load8(b, i, n, y);
        for (int k = 0; k < 8; ++k) x[k] += y[k];
        store8(c, i, n, x);
    }
}

extern "C" __global__ void add_f32(const float* a, const float* b, float* c, long long n) { add(a, b, c, n); }
extern "C" __global__ void add_bf16(const bf16* a, const bf16* b, bf16* c, long long n) { add(a, b, c, n); }
