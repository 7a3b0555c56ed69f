// cross_entropy.cuh: the per-row pieces shared by cross_entropy.cu and the chunked
// classifier_cross_entropy.cu.
#pragma once

#include "common.cuh"

// The number of valid targets of all `rows`, summed by the calling block. cross_entropy.cu's
// kernels call it in every block (rows² reads in all, for the unchunked loss of small plans);
// the chunked head calls it once, in count_valid_targets.
__device__ float count_valid(const int* targets, long long rows, int vocab) {
    float count = 0.0f;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
        const int t = targets[r];
        count += (t >= 0 && t < vocab) ? 1.0f : 0.0f;
    }
    return block_sum(count);
}

// The row's log-sum-exp in one pass: each thread keeps a running maximum and the sum of
// exponentials below it (rescaled when the maximum grows) over groups of eight values read with
// 16-byte loads; the block then combines them.
template <typename T>
__device__ float row_lse(const T* row, int vocab) {
    float m = -CUDART_INF_F, s = 0.0f;
    for (long long i = threadIdx.x * 8LL; i < vocab; i += blockDim.x * 8LL) {
        float v[8];
        load8(row, i, vocab, v);
        const int n = (int)min(8LL, vocab - i);
        float top = m;
        for (int k = 0; k < n; ++k) top = fmaxf(top, v[k]);
        if (top > m) s *= expf(m - top);
        for (int k = 0; k < n; ++k) s += expf(v[k] - top);
        m = top;
    }
    const float block_top = block_max(m);
    const float scaled = m == -CUDART_INF_F ? 0.0f : s * expf(m - block_top);
    return block_top + logf(block_sum(scaled));
}
