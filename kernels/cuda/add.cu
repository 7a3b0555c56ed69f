// add: `c = a + b`, elementwise over tensors of one shape (ops/add.rs).
#include "common.cuh"

// add_{f32,bf16}(const T* a, const T* b, T* c, long long n)
// grid: any (grid-stride), block: any. `c` may alias `a` or `b`.
template <typename T>
__device__ void add(const T* a, const T* b, T* c, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        store(c, i, load(a, i) + load(b, i));
    }
}

extern "C" __global__ void add_f32(const float* a, const float* b, float* c, long long n) { add(a, b, c, n); }
extern "C" __global__ void add_bf16(const bf16* a, const bf16* b, bf16* c, long long n) { add(a, b, c, n); }
