// embedding: `out[n, :] = table[tokens[n], :]`; embedding_backward: the scatter-add
// `dtable[v, :] = Σ_{n: tokens[n] = v} dy[n, :]` (ops/embedding.rs).
// The CPU reference rejects token ids outside [0, vocab); a kernel cannot fail, so here such a
// token gives a zero row forward and contributes nothing backward: the data loader checks ids.
#include "common.cuh"

// embedding_{f32,bf16}(const int* tokens, const T* table, T* out, long long n_tokens, int vocab,
//                      int cols)
// grid: any (grid-stride over n_tokens·cols), block: any.
template <typename T>
__device__ void embedding(const int* tokens, const T* table, T* out, long long n_tokens, int vocab,
                          int cols) {
    const long long n = n_tokens * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int t = tokens[i / cols];
        const float v = (t >= 0 && t < vocab) ? load(table, (long long)t * cols + i % cols) : 0.0f;
        store(out, i, v);
    }
}

#define EMB_COLS_PER_THREAD 16

// embedding_backward_{f32,bf16}(const int* tokens, const T* dy, T* dtable, long long n_tokens,
//                               int vocab, int cols, int accumulate)
// grid: vocab (one block per table row); block: a multiple of 32, at most 1024, and at least
// cols / EMB_COLS_PER_THREAD (each thread owns up to 16 columns, kept in registers).
// Each block scans the tokens in chunks of blockDim; a chunk naming its row is compacted, in
// token order, into shared memory, and the named dy rows are summed in FP32. Deterministic, no
// atomics, every row of dtable written once (rows no token names get 0, or keep their value when
// accumulating). A simple first kernel: every block reads all tokens; sorting them first is the
// faster way.
template <typename T>
__device__ void embedding_backward(const int* tokens, const T* dy, T* dtable, long long n_tokens,
                                   int vocab, int cols, int accumulate) {
    __shared__ long long hits[1024];
    __shared__ int warp_base[33];
    const int v = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float acc[EMB_COLS_PER_THREAD];
#pragma unroll
    for (int j = 0; j < EMB_COLS_PER_THREAD; ++j) acc[j] = 0.0f;
    for (long long n0 = 0; n0 < n_tokens; n0 += blockDim.x) {
        const long long n = n0 + threadIdx.x;
        const bool hit = n < n_tokens && tokens[n] == v;
        if (__syncthreads_count(hit) == 0) continue;  // most chunks: uniform over the block
        const unsigned ballot = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) warp_base[warp + 1] = __popc(ballot);
        __syncthreads();
        if (threadIdx.x == 0) {
            warp_base[0] = 0;
            for (int w = 0; w < warps; ++w) warp_base[w + 1] += warp_base[w];
        }
        __syncthreads();
        if (hit) hits[warp_base[warp] + __popc(ballot & ((1u << lane) - 1u))] = n;
        __syncthreads();
        const int count = warp_base[warps];
        for (int h = 0; h < count; ++h) {
            const long long at = hits[h] * cols;
#pragma unroll
            for (int j = 0; j < EMB_COLS_PER_THREAD; ++j) {
                const int c = j * blockDim.x + threadIdx.x;
                if (c < cols) acc[j] += load(dy, at + c);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < EMB_COLS_PER_THREAD; ++j) {
        const int c = j * blockDim.x + threadIdx.x;
        if (c < cols) store_acc(dtable, (long long)v * cols + c, acc[j], accumulate);
    }
}

extern "C" __global__ void embedding_f32(const int* tokens, const float* table, float* out,
                                         long long n_tokens, int vocab, int cols) {
    embedding(tokens, table, out, n_tokens, vocab, cols);
}
extern "C" __global__ void embedding_bf16(const int* tokens, const bf16* table, bf16* out,
                                          long long n_tokens, int vocab, int cols) {
    embedding(tokens, table, out, n_tokens, vocab, cols);
}
extern "C" __global__ void embedding_backward_f32(const int* tokens, const float* dy, float* dtable,
                                                  long long n_tokens, int vocab, int cols,
                                                  int accumulate) {
    embedding_backward(tokens, dy, dtable, n_tokens, vocab, cols, accumulate);
}
extern "C" __global__ void embedding_backward_bf16(const int* tokens, const bf16* dy, bf16* dtable,
                                                   long long n_tokens, int vocab, int cols,
                                                   int accumulate) {
    embedding_backward(tokens, dy, dtable, n_tokens, vocab, cols, accumulate);
}
