// bias_add: `y[r, :] = x[r, :] + b`; bias_backward: `db = Σ_r dy[r, :]` (ops/bias_add.rs).
#include "common.cuh"

// bias_add_{f32,bf16}(const T* x, const T* b, T* y, long long rows, int cols)
// grid: any (grid-stride over groups of eight), block: any. `y` may alias `x`. When cols is a
// multiple of 8, each group of eight lies in one row and moves as 16-byte vectors.
template <typename T>
__device__ void bias_add(const T* x, const T* b, T* y, long long rows, int cols) {
    const long long n = rows * cols;
    for (long long i = first8(); i < n; i += stride8()) {
        float v[8], bv[8];
        load8(x, i, n, v);
        if (cols % 8 == 0) {
            load8(b, i % cols, cols, bv);
        } else {
            for (int k = 0; k < 8; ++k) bv[k] = i + k < n ? load(b, (i + k) % cols) : 0.0f;
        }
        for (int k = 0; k < 8; ++k) v[k] += bv[k];
        store8(y, i, n, v);
    }
}

// bias_backward_{f32,bf16}(const T* dy, T* db, float* scratch, long long rows, int cols,
//                          int accumulate)
// grid: ceil(cols / COLSUM_WIDTH)·COLSUM_CHUNKS, block: a multiple of 32, at most 1024.
// Deterministic: see column_sum_split in common.cuh (scratch is the backend's).
template <typename T>
__device__ void bias_backward(const T* dy, T* db, float* scratch, long long rows, int cols,
                              int accumulate) {
    const int c = colsum_first_column(blockIdx.x, cols);
    const bool vector = vec8_rows_ok(dy, cols);
    column_sum_split(
        rows, cols, blockIdx.x, scratch,
        [&](long long r, float v[8]) { load8_uniform(vector, dy + r * cols, c, cols, v); },
        [&](int col, float total) { store_acc(db, col, total, accumulate); });
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
