// classifier_cross_entropy: the LM head and the loss over chunks of rows
// (ops/classifier_cross_entropy.rs). The launcher runs, per chunk of `chunk_rows` rows starting
// at row `first_row`, a cuBLASLt matmul `scratch = x[chunk] · Wᵀ` (rounded to T), then one of
// the kernels below on `scratch`:
//   * evaluation (`classifier_cross_entropy`): the loss alone, one read of the logits;
//   * training (`classifier_cross_entropy_backward`): the loss and, in place, the logits'
//     gradient (one read for the loss, one read and write for the gradient), then the two
//     matmuls `dx[chunk] = scratch · W` and `dW += scratchᵀ · x[chunk]`.
// Only one chunk of logits exists at a time, and training makes each chunk's logits once.
// Before the first chunk, `count_valid_targets` counts the valid targets of all rows once, so
// that the row kernels read one float instead of every block reading every target.
#include "cross_entropy.cuh"

// count_valid_targets(const int* targets, long long rows, int vocab, float* valid)
// grid: 1, block: multiple of 32. Writes the number of targets in [0, vocab) to `valid`.
extern "C" __global__ void count_valid_targets(const int* targets, long long rows, int vocab,
                                               float* valid) {
    const float count = count_valid(targets, rows, vocab);
    if (threadIdx.x == 0) *valid = count;
}

// classifier_cross_entropy_{f32,bf16}(const T* logits, const int* targets, float* loss,
//                                     long long first_row, long long chunk_rows,
//                                     const float* valid, int vocab)
// grid: chunk_rows (one block per row of the chunk), block: multiple of 32. `logits` is the
// chunk's [chunk_rows, vocab]; `targets` covers all rows, `valid` is count_valid_targets' count.
// Adds each valid row's `(lse − logit[target]) / valid` to `loss` (atomicAdd; the launcher
// zeroes it before the first chunk).
template <typename T>
__device__ void classifier_cross_entropy(const T* logits, const int* targets, float* loss,
                                         long long first_row, long long chunk_rows,
                                         const float* valid_count, int vocab) {
    const long long r = blockIdx.x;
    if (r >= chunk_rows) return;
    const int t = targets[first_row + r];
    if (!(t >= 0 && t < vocab)) return;  // uniform over the block
    const T* row = logits + r * vocab;
    const float lse = row_lse(row, vocab);
    const float valid = *valid_count;
    if (threadIdx.x == 0) atomicAdd(loss, (lse - load(row, t)) / valid);
}

// classifier_cross_entropy_backward_{f32,bf16}(T* logits, const int* targets, const float* dloss,
//                                              float* loss, long long first_row,
//                                              long long chunk_rows, const float* valid,
//                                              int vocab)
// grid: chunk_rows, block: multiple of 32. Adds the row's loss to `loss` as the kernel above,
// then overwrites the chunk's logits with their gradient `(softmax − onehot(target)) · dloss /
// valid`, 0 for ignored rows. The target's logit is read before the reductions' barriers, and
// each other element is read and written by the same thread, so in place is safe.
template <typename T>
__device__ void classifier_cross_entropy_backward(T* logits, const int* targets,
                                                  const float* dloss, float* loss,
                                                  long long first_row, long long chunk_rows,
                                                  const float* valid_count, int vocab) {
    const long long r = blockIdx.x;
    if (r >= chunk_rows) return;
    T* row = logits + r * vocab;
    const int t = targets[first_row + r];
    if (!(t >= 0 && t < vocab)) {  // uniform over the block
        const float zeros[8] = {};
        for (long long i = threadIdx.x * 8LL; i < vocab; i += blockDim.x * 8LL)
            store8(row, i, vocab, zeros);
        return;
    }
    const float target_logit = load(row, t);
    const float lse = row_lse(row, vocab);
    const float valid = *valid_count;
    if (threadIdx.x == 0) atomicAdd(loss, (lse - target_logit) / valid);
    const float scale = dloss[0] / valid;
    for (long long i = threadIdx.x * 8LL; i < vocab; i += blockDim.x * 8LL) {
        float v[8];
        load8(row, i, vocab, v);
        for (int k = 0; k < 8; ++k) v[k] = expf(v[k] - lse) * scale;
        if (t >= i && t < i + 8) v[t - i] -= scale;
        store8(row, i, vocab, v);
    }
}

extern "C" __global__ void classifier_cross_entropy_f32(const float* logits, const int* targets,
                                                        float* loss, long long first_row,
                                                        long long chunk_rows,
                                                        const float* valid_count, int vocab) {
    classifier_cross_entropy(logits, targets, loss, first_row, chunk_rows, valid_count, vocab);
}
extern "C" __global__ void classifier_cross_entropy_bf16(const bf16* logits, const int* targets,
                                                         float* loss, long long first_row,
                                                         long long chunk_rows,
                                                         const float* valid_count, int vocab) {
    classifier_cross_entropy(logits, targets, loss, first_row, chunk_rows, valid_count, vocab);
}
extern "C" __global__ void classifier_cross_entropy_backward_f32(
    float* logits, const int* targets, const float* dloss, float* loss, long long first_row,
    long long chunk_rows, const float* valid_count, int vocab) {
    classifier_cross_entropy_backward(logits, targets, dloss, loss, first_row, chunk_rows,
                                      valid_count, vocab);
}
extern "C" __global__ void classifier_cross_entropy_backward_bf16(
    bf16* logits, const int* targets, const float* dloss, float* loss, long long first_row,
    long long chunk_rows, const float* valid_count, int vocab) {
    classifier_cross_entropy_backward(logits, targets, dloss, loss, first_row, chunk_rows,
                                      valid_count, vocab);
}
