// classifier_cross_entropy: the LM head and the loss over chunks of rows
// (ops/classifier_cross_entropy.rs). The launcher runs, per chunk of `chunk_rows` rows starting
// at row `first_row`: a cuBLASLt matmul `scratch = x[chunk] · Wᵀ` (rounded to T), then the
// kernel below on `scratch`. The backward recomputes the chunk's logits the same way, turns them
// into their gradient in place, then runs the two matmuls `dx[chunk] = scratch · W` and
// `dW += scratchᵀ · x[chunk]`. Only one chunk of logits exists at a time.
#include "cross_entropy.cuh"

// classifier_cross_entropy_{f32,bf16}(const T* logits, const int* targets, float* lse,
//                                     float* loss, long long first_row, long long chunk_rows,
//                                     long long rows, int vocab)
// grid: chunk_rows (one block per row of the chunk), block: multiple of 32. `logits` is the
// chunk's [chunk_rows, vocab]; `targets` and `lse` cover all `rows`. Writes every row's
// log-sum-exp and adds each valid row's `(lse − logit[target]) / valid` to `loss` (atomicAdd;
// the launcher zeroes it before the first chunk).
template <typename T>
__device__ void classifier_cross_entropy(const T* logits, const int* targets, float* lse,
                                         float* loss, long long first_row, long long chunk_rows,
                                         long long rows, int vocab) {
    const long long r = blockIdx.x;
    if (r >= chunk_rows) return;
    const T* row = logits + r * vocab;
    const float row_lse_value = row_lse(row, vocab);
    if (threadIdx.x == 0) lse[first_row + r] = row_lse_value;
    const int t = targets[first_row + r];
    if (!(t >= 0 && t < vocab)) return;  // uniform over the block
    const float valid = count_valid(targets, rows, vocab);
    if (threadIdx.x == 0) atomicAdd(loss, (row_lse_value - load(row, t)) / valid);
}

// classifier_cross_entropy_backward_{f32,bf16}(T* logits, const int* targets, const float* lse,
//                                              const float* dloss, long long first_row,
//                                              long long chunk_rows, long long rows, int vocab)
// grid: chunk_rows, block: multiple of 32. Overwrites the chunk's logits with their gradient
// `(softmax − onehot(target)) · dloss / valid`, 0 for ignored rows (each element is read and
// written by the same thread, so in place is safe).
template <typename T>
__device__ void classifier_cross_entropy_backward(T* logits, const int* targets, const float* lse,
                                                  const float* dloss, long long first_row,
                                                  long long chunk_rows, long long rows, int vocab) {
    const long long r = blockIdx.x;
    if (r >= chunk_rows) return;
    T* row = logits + r * vocab;
    const int t = targets[first_row + r];
    if (!(t >= 0 && t < vocab)) {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) store(row, i, 0.0f);
        return;
    }
    const float scale = dloss[0] / count_valid(targets, rows, vocab);
    const float row_lse_value = lse[first_row + r];
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float g = expf(load(row, i) - row_lse_value) * scale;
        if (i == t) g -= scale;
        store(row, i, g);
    }
}

extern "C" __global__ void classifier_cross_entropy_f32(const float* logits, const int* targets,
                                                        float* lse, float* loss,
                                                        long long first_row, long long chunk_rows,
                                                        long long rows, int vocab) {
    classifier_cross_entropy(logits, targets, lse, loss, first_row, chunk_rows, rows, vocab);
}
extern "C" __global__ void classifier_cross_entropy_bf16(const bf16* logits, const int* targets,
                                                         float* lse, float* loss,
                                                         long long first_row, long long chunk_rows,
                                                         long long rows, int vocab) {
    classifier_cross_entropy(logits, targets, lse, loss, first_row, chunk_rows, rows, vocab);
}
extern "C" __global__ void classifier_cross_entropy_backward_f32(
    float* logits, const int* targets, const float* lse, const float* dloss, long long first_row,
    long long chunk_rows, long long rows, int vocab) {
    classifier_cross_entropy_backward(logits, targets, lse, dloss, first_row, chunk_rows, rows,
                                      vocab);
}
extern "C" __global__ void classifier_cross_entropy_backward_bf16(
    bf16* logits, const int* targets, const float* lse, const float* dloss, long long first_row,
    long long chunk_rows, long long rows, int vocab) {
    classifier_cross_entropy_backward(logits, targets, lse, dloss, first_row, chunk_rows, rows,
                                      vocab);
}
