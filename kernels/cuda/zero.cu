// zero: `x = 0` in place (ops/zero.rs). A launcher may use cuMemsetD8Async instead; these
// kernels exist so that every op has a kernel and a zeroing step can sit inside a fused launch.
#include "common.cuh"

// zero_{f32,bf16,e4m3,e5m2}(T* x, long long n)
// grid: any (grid-stride), block: any.
template <typename T>
__device__ void zero(T* x, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        store(x, i, 0.0f);
    }
}

extern "C" __global__ void zero_f32(float* x, long long n) { zero(x, n); }
extern "C" __global__ void zero_bf16(bf16* x, long long n) { zero(x, n); }
extern "C" __global__ void zero_e4m3(e4m3* x, long long n) { zero(x, n); }
extern "C" __global__ void zero_e5m2(e5m2* x, long long n) { zero(x, n); }
