// cross_entropy: the mean over valid rows of `logsumexp(logits) − logits[target]`, a row being
// valid when 0 ≤ target < vocab; and its backward,
// `dlogits = (softmax(logits) − onehot(target)) · dloss / valid` (ops/cross_entropy.rs).
// The CPU reference rejects targets ≥ vocab; a kernel cannot fail, so here they count as
// ignored rows: the data loader checks token ids.
#include "cross_entropy.cuh"

// cross_entropy_{f32,bf16}(const T* logits, const int* targets, float* loss, long long rows,
//                          int vocab)
// grid: rows (one block per row), block: multiple of 32. Adds this call's mean loss to `loss`
// (atomicAdd): the launcher zeroes it first unless the plan accumulates over micro-batches.
template <typename T>
__device__ void cross_entropy(const T* logits, const int* targets, float* loss, long long rows,
                              int vocab) {
    const long long r = blockIdx.x;
    const int t = targets[r];
    if (!(t >= 0 && t < vocab)) return;  // uniform over the block
    const float valid = count_valid(targets, rows, vocab);
    const T* row = logits + r * vocab;
    const float lse = row_lse(row, vocab);
    if (threadIdx.x == 0) atomicAdd(loss, (lse - load(row, t)) / valid);
}

// cross_entropy_backward_{f32,bf16}(const T* logits, const int* targets, const float* dloss,
//                                   T* dlogits, long long rows, int vocab, int accumulate)
// grid: rows (one block per row), block: multiple of 32. Rows with an ignored target get 0.
template <typename T>
__device__ void cross_entropy_backward(const T* logits, const int* targets, const float* dloss,
                                       T* dlogits, long long rows, int vocab, int accumulate) {
    const long long r = blockIdx.x;
    const int t = targets[r];
    T* grad = dlogits + r * vocab;
    if (!(t >= 0 && t < vocab)) {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) store_acc(grad, i, 0.0f, accumulate);
        return;
    }
    const float valid = count_valid(targets, rows, vocab);
    const float scale = dloss[0] / valid;
    const T* row = logits + r * vocab;
    const float lse = row_lse(row, vocab);
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        float g = expf(load(row, i) - lse) * scale;
        if (i == t) g -= scale;
        store_acc(grad, i, g, accumulate);
    }
}

extern "C" __global__ void cross_entropy_f32(const float* logits, const int* targets, float* loss,
                                             long long rows, int vocab) {
    cross_entropy(logits, targets, loss, rows, vocab);
}
extern "C" __global__ void cross_entropy_bf16(const bf16* logits, const int* targets, float* loss,
                                              long long rows, int vocab) {
    cross_entropy(logits, targets, loss, rows, vocab);
}
extern "C" __global__ void cross_entropy_backward_f32(const float* logits, const int* targets,
                                                      const float* dloss, float* dlogits,
                                                      long long rows, int vocab, int accumulate) {
    cross_entropy_backward(logits, targets, dloss, dlogits, rows, vocab, accumulate);
}
extern "C" __global__ void cross_entropy_backward_bf16(const bf16* logits, const int* targets,
                                                       const float* dloss, bf16* dlogits,
                                                       long long rows, int vocab, int accumulate) {
    cross_entropy_backward(logits, targets, dloss, dlogits, rows, vocab, accumulate);
}
