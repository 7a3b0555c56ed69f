// cross_entropy.cuh: the per-row pieces shared by cross_entropy.cu and the chunked
// classifier_cross_entropy.cu.
#pragma once

#include "common.cuh"

// The number of valid targets, computed by every block (a simple first kernel: rows² reads in
// all; a separate count kernel is the faster way).
__device__ float count_valid(const int* targets, long long rows, int vocab) {
    float count = 0.0f;
    for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
        const int t = targets[r];
        count += (t >= 0 && t < vocab) ? 1.0f : 0.0f;
    }
    return block_sum(count);
}

// The row's log-sum-exp, with its maximum subtracted.
template <typename T>
__device__ float row_lse(const T* row, int vocab) {
    float m = -CUDART_INF_F;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) m = fmaxf(m, load(row, i));
    m = block_max(m);
    float s = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += expf(load(row, i) - m);
    return m + logf(block_sum(s));
}
