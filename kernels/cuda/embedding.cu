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
#define EMB_SORT_MAX 1024

// The backward is a bucket sort of the token positions by id, then one block per table row:
//   embedding_backward_count(const int* tokens, int* count, long long n_tokens, int vocab)
//     count[v] = number of tokens equal to v (count zeroed by the launcher). grid: any.
//   embedding_backward_scan(const int* count, int* start, int vocab)
//     start[v] = Σ_{u < v} count[u]. grid: 1, block: 1024.
//   embedding_backward_bucket(const int* tokens, const int* start, int* cursor, int* bucket,
//                             long long n_tokens, int vocab)
//     every position n goes into bucket[start[tokens[n]] ..), in whatever order the atomics
//     give (cursor zeroed by the launcher). grid: any.
//   embedding_backward_{f32,bf16}(const int* tokens, const T* dy, T* dtable, const int* count,
//                                 const int* start, const int* bucket, long long n_tokens,
//                                 int vocab, int cols, int accumulate)
//     grid: vocab (one block per table row); block: a multiple of 32, at most 1024, and at
//     least cols / EMB_COLS_PER_THREAD (each thread owns up to 16 columns, kept in registers).
//     `dtable[v, :] = Σ dy[n, :]` over the row's positions in increasing order: a bucket of at
//     most EMB_SORT_MAX positions is sorted in shared memory; a larger one (a very frequent
//     token) is found by scanning all tokens in order instead. Either way the sum runs in token
//     order, so the result is deterministic and independent of the atomics. No atomics on the
//     values; every row is written once (rows no token names get 0, or keep their value when
//     accumulating).

extern "C" __global__ void embedding_backward_count(const int* tokens, int* count,
                                                    long long n_tokens, int vocab) {
    for (long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x; n < n_tokens;
         n += (long long)gridDim.x * blockDim.x) {
        const int t = tokens[n];
        if (t >= 0 && t < vocab) atomicAdd(&count[t], 1);
    }
}

extern "C" __global__ void embedding_backward_scan(const int* count, int* start, int vocab) {
    __shared__ int sums[1024];
    const int per = (vocab + blockDim.x - 1) / blockDim.x;
    const int lo = min(vocab, (int)threadIdx.x * per), hi = min(vocab, lo + per);
    int s = 0;
    for (int v = lo; v < hi; ++v) s += count[v];
    sums[threadIdx.x] = s;
    __syncthreads();
    for (int offset = 1; offset < (int)blockDim.x; offset <<= 1) {
        const int add = threadIdx.x >= (unsigned)offset ? sums[threadIdx.x - offset] : 0;
        __syncthreads();
        sums[threadIdx.x] += add;
        __syncthreads();
    }
    int base = threadIdx.x > 0 ? sums[threadIdx.x - 1] : 0;
    for (int v = lo; v < hi; ++v) {
        start[v] = base;
        base += count[v];
    }
}

extern "C" __global__ void embedding_backward_bucket(const int* tokens, const int* start,
                                                     int* cursor, int* bucket, long long n_tokens,
                                                     int vocab) {
    for (long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x; n < n_tokens;
         n += (long long)gridDim.x * blockDim.x) {
        const int t = tokens[n];
        if (t >= 0 && t < vocab) bucket[start[t] + atomicAdd(&cursor[t], 1)] = (int)n;
    }
}

// acc[j] += dy[n, j·blockDim + thread] for every column the thread owns.
template <typename T>
__device__ __forceinline__ void add_row(const T* dy, long long n, int cols,
                                        float acc[EMB_COLS_PER_THREAD]) {
    const long long at = n * cols;
#pragma unroll
    for (int j = 0; j < EMB_COLS_PER_THREAD; ++j) {
        const int c = j * blockDim.x + threadIdx.x;
        if (c < cols) acc[j] += load(dy, at + c);
    }
}

// The positions of row v, at most EMB_SORT_MAX of them, sorted ascending in shared memory
// (a bitonic sort of the bucket padded to a power of two), then summed in that order.
template <typename T>
__device__ void sum_sorted_bucket(const T* dy, const int* positions, int count, int cols,
                                  float acc[EMB_COLS_PER_THREAD]) {
    __shared__ int order[EMB_SORT_MAX];
    int size = 1;
    while (size < count) size <<= 1;
    for (int k = threadIdx.x; k < size; k += blockDim.x) {
        order[k] = k < count ? positions[k] : 0x7fffffff;
    }
    __syncthreads();
    for (int len = 2; len <= size; len <<= 1) {
        for (int stride = len / 2; stride > 0; stride >>= 1) {
            for (int k = threadIdx.x; k < size; k += blockDim.x) {
                const int partner = k ^ stride;
                if (partner > k) {
                    const bool ascending = (k & len) == 0;
                    const int a = order[k], b = order[partner];
                    if ((a > b) == ascending) {
                        order[k] = b;
                        order[partner] = a;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (int h = 0; h < count; ++h) add_row(dy, order[h], cols, acc);
}

// The positions of row v found by scanning all tokens in chunks of blockDim; a chunk naming
// the row is compacted, in token order, into shared memory, and the named dy rows are summed.
template <typename T>
__device__ void sum_scanned(const int* tokens, const T* dy, long long n_tokens, int v, int cols,
                            float acc[EMB_COLS_PER_THREAD]) {
    __shared__ long long hits[1024];
    __shared__ int warp_base[33];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
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
        for (int h = 0; h < count; ++h) add_row(dy, hits[h], cols, acc);
        __syncthreads();
    }
}

template <typename T>
__device__ void embedding_backward(const int* tokens, const T* dy, T* dtable, const int* count,
                                   const int* start, const int* bucket, long long n_tokens,
                                   int vocab, int cols, int accumulate) {
    const int v = blockIdx.x;
    const int c = count[v];
    float acc[EMB_COLS_PER_THREAD];
#pragma unroll
    for (int j = 0; j < EMB_COLS_PER_THREAD; ++j) acc[j] = 0.0f;
    if (c > EMB_SORT_MAX) {
        sum_scanned(tokens, dy, n_tokens, v, cols, acc);
    } else if (c > 0) {
        sum_sorted_bucket(dy, bucket + start[v], c, cols, acc);
    }
#pragma unroll
    for (int j = 0; j < EMB_COLS_PER_THREAD; ++j) {
        const int col = j * blockDim.x + threadIdx.x;
        if (col < cols) store_acc(dtable, (long long)v * cols + col, acc[j], accumulate);
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
                                                  const int* count, const int* start,
                                                  const int* bucket, long long n_tokens, int vocab,
                                                  int cols, int accumulate) {
    embedding_backward(tokens, dy, dtable, count, start, bucket, n_tokens, vocab, cols, accumulate);
}
extern "C" __global__ void embedding_backward_bf16(const int* tokens, const bf16* dy, bf16* dtable,
                                                   const int* count, const int* start,
                                                   const int* bucket, long long n_tokens, int vocab,
                                                   int cols, int accumulate) {
    embedding_backward(tokens, dy, dtable, count, start, bucket, n_tokens, vocab, cols, accumulate);
}
