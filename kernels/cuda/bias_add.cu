// bias_add: `y[r, :] = x[r, :] + b`; bias_backward: `db = Σ_r dy[r, :]` (ops/bias_add.rs).
#include "common.cuh"

// bias_add_{f32,bf16}(const T* x, const T* b, T* y, long long rows, int cols)
// grid: any (grid-stride over rows·cols), block: any. `y` may alias `x`.
template <typename T>
__device__ void bias_add(const T* x, const T* b, T* y, long long rows, int cols) {
    const long long n = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        store(y, i, load(x, i) + load(b, i % cols));
    }
}

// bias_backward_{f32,bf16}(const T* dy, T* db, float* scratch, long long rows, int cols,
//                          int accumulate)
// grid: ceil(cols / 32)·COLSUM_CHUNKS, block: a multiple of 32, at most 1024.
// Deterministic: see column_sum_split in common.cuh (scratch is the backend's).
template <typename T>
__device__ void bias_backward(const T* dy, T* db, float* scratch, long long rows, int cols,
                              int accumulate) {
    const int c = (int)(blockIdx.x % ((cols + 31) / 32)) * 32 + (threadIdx.x & 31);
    float total;
    const bool mine = column_sum_split(rows, cols, blockIdx.x, scratch,
                                       [&](long long r) { return load(dy, r * cols + c); }, &total);
    if (mine) store_acc(db, c, total, accumulate);
}

extern "C" __global__ void bias_add_f32(const float* x, const float* b, float* y, long long rows, int cols) {
    bias_add(x, b, y, rows, cols);
}
extern "C" __global__ void bias_add_bf16(const bf16* x, const bf16* b, bf16* y, long long rows, int cols) {
    bias_add(x, b, y, rows, cols);
}
extern "C" __global__ void bias_backward_f32(const float* dy, float* db, float* scratch, long long rows,
                                             int cols, int accumulate) {
    bias_backward(dy, db, scratch, rows, cols, accumulate);
}
extern "C" __global__ void bias_backward_bf16(const bf16* dy, bf16* db, float* scratch, long long rows,
                                              int cols, int accumulate) {
    bias_backward(dy, db, scratch, rows, cols, accumulate);
}
