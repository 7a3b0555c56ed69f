// embedding: `out[n, :] = table[tokens[n], :]`; embedding_backward: the scatter-add
// `dtable[v, :] = Σ_{n: tokens[n] = v} dy[n, :]` (ops/embedding.rs).
// The CPU reference rejects token ids outside [0, vocab); a kernel cannot fail, so here such a
// token gives a zero row forward and contributes nothing backward: the data loader checks ids.
#include "common.cuh"

// embedding_{f32,bf16}(const int* tokens, const T* table, T* out, long long n_tokens, int vocab,
//                      int cols)
// grid: any (grid-stride, eight elements per thread), block: any.
template <typename T>
__device__ void embedding(const int* tokens, const T* table, T* out, long long n_tokens, int vocab,
                          int cols) {
    const long long n = n_tokens * cols;
    if (vec8_rows_ok_all(cols, table, (const T*)out)) {
        // Each run of eight lies inside one row: one vector load and store.
        for (long long i = first8(); i < n; i += stride8()) {
            const int t = tokens[i / cols];
            float v[8] = {};
            if (t >= 0 && t < vocab) load8_vector(table, (long long)t * cols + i % cols, v);
            store8_vector(out, i, v);
        }
        return;
    }
    for (long long i = first8(); i < n; i += stride8()) {
        for (long long e = i; e < i + 8 && e < n; ++e) {
            const int t = tokens[e / cols];
            store(out, e, (t >= 0 && t < vocab) ? load(table, (long long)t * cols + e % cols) : 0.0f);
        }
    }
}

#define EMB_GROUPS_PER_THREAD 2  // groups of eight columns a thread owns
#define EMB_SORT_MAX 1024

// The backward touches only the rows that some token names, found with a bucket sort of the
// token positions by id. Scratch `ids` is [distinct count, bucket cursor, count[vocab],
// cursor[vocab]], zeroed by the launcher; `distinct` lists the named ids, `start` the first
// slot of each named id's bucket.
//   embedding_backward_count(const int* tokens, int* ids, int* distinct, long long n_tokens,
//                            int vocab)
//     count[v] = number of tokens equal to v, and each named v once in `distinct`.
//     grid: any.
//   embedding_backward_starts(int* ids, const int* distinct, int* start)
//     start[v] for each named v: disjoint runs of count[v] slots, handed out by an atomic
//     (their order does not matter: each bucket is sorted by position before it is summed).
//     grid: any.
//   embedding_backward_bucket(const int* tokens, int* ids, const int* start, int* bucket,
//                             long long n_tokens, int vocab)
//     every position n goes into bucket[start[tokens[n]] ..), in whatever order the atomics
//     give. grid: any.
//   embedding_backward_{f32,bf16}(const int* tokens, const T* dy, T* dtable, const int* ids,
//                                 const int* distinct, const int* start, const int* bucket,
//                                 long long n_tokens, int cols)
//     grid: any (blocks step over the named ids); block: a multiple of 32, at most 1024, and
//     at least cols / (8·EMB_GROUPS_PER_THREAD) (each thread owns up to two groups of eight
//     columns, kept in registers). `dtable[v, :] += Σ dy[n, :]` over the row's positions in
//     increasing order, rounded once: a bucket of at most EMB_SORT_MAX positions is sorted in
//     shared memory; a larger one (a very frequent token) is found by scanning all tokens in
//     order instead. Either way the sum runs in token order, so the result is deterministic and
//     independent of the atomics. No atomics on the values; rows no token names are not
//     touched: where the plan does not accumulate, the launcher zeroes dtable first.

template <typename I>  // int or const int
__device__ __forceinline__ I* id_counts(I* ids) { return ids + 2; }
__device__ __forceinline__ int* id_cursors(int* ids, int vocab) { return ids + 2 + vocab; }

extern "C" __global__ void embedding_backward_count(const int* tokens, int* ids, int* distinct,
                                                    long long n_tokens, int vocab) {
    for (long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x; n < n_tokens;
         n += (long long)gridDim.x * blockDim.x) {
        const int t = tokens[n];
        if (t >= 0 && t < vocab && atomicAdd(&id_counts(ids)[t], 1) == 0) {
            distinct[atomicAdd(&ids[0], 1)] = t;
        }
    }
}

extern "C" __global__ void embedding_backward_starts(int* ids, const int* distinct, int* start) {
    const int named = ids[0];
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < named; d += gridDim.x * blockDim.x) {
        const int v = distinct[d];
        start[v] = atomicAdd(&ids[1], id_counts(ids)[v]);
    }
}

extern "C" __global__ void embedding_backward_bucket(const int* tokens, int* ids, const int* start,
                                                     int* bucket, long long n_tokens, int vocab) {
    for (long long n = blockIdx.x * (long long)blockDim.x + threadIdx.x; n < n_tokens;
         n += (long long)gridDim.x * blockDim.x) {
        const int t = tokens[n];
        if (t >= 0 && t < vocab) bucket[start[t] + atomicAdd(&id_cursors(ids, vocab)[t], 1)] = (int)n;
    }
}

// The first column of group j of this thread's (groups of eight consecutive columns).
__device__ __forceinline__ int group_col(int j) { return (j * blockDim.x + threadIdx.x) * 8; }

// acc[j] += dy[n, group j] for every group the thread owns (`Vector`: vec8_rows_ok(dy, cols)).
template <bool Vector, typename T>
__device__ __forceinline__ void add_row(const T* dy, long long n, int cols,
                                        float acc[EMB_GROUPS_PER_THREAD][8]) {
    const long long at = n * cols, end = at + cols;
#pragma unroll
    for (int j = 0; j < EMB_GROUPS_PER_THREAD; ++j) {
        if (group_col(j) < cols) {
            float v[8];
            load8_rows<Vector>(dy, at + group_col(j), end, v);
            for (int k = 0; k < 8; ++k) acc[j][k] += v[k];
        }
    }
}

// The positions of one row, at most EMB_SORT_MAX of them, sorted ascending in shared memory
// (a bitonic sort of the bucket padded to a power of two), then summed in that order.
template <bool Vector, typename T>
__device__ void sum_sorted_bucket(const T* dy, const int* positions, int count, int cols,
                                  float acc[EMB_GROUPS_PER_THREAD][8]) {
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
    for (int h = 0; h < count; ++h) add_row<Vector>(dy, order[h], cols, acc);
    __syncthreads();  // the next row of this block refills `order`
}

// The positions of row v found by scanning all tokens in chunks of blockDim; a chunk naming
// the row is compacted, in token order, into shared memory, and the named dy rows are summed.
template <bool Vector, typename T>
__device__ void sum_scanned(const int* tokens, const T* dy, long long n_tokens, int v, int cols,
                            float acc[EMB_GROUPS_PER_THREAD][8]) {
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
        for (int h = 0; h < count; ++h) add_row<Vector>(dy, hits[h], cols, acc);
        __syncthreads();
    }
}

template <bool Vector, typename T>
__device__ void embedding_backward_rows(const int* tokens, const T* dy, T* dtable, const int* ids,
                                        const int* distinct, const int* start, const int* bucket,
                                        long long n_tokens, int cols) {
    const int named = ids[0];
    for (int d = blockIdx.x; d < named; d += gridDim.x) {
        const int v = distinct[d];
        const int c = id_counts(ids)[v];
        float acc[EMB_GROUPS_PER_THREAD][8] = {};
        if (c > EMB_SORT_MAX) {
            sum_scanned<Vector>(tokens, dy, n_tokens, v, cols, acc);
        } else {
            sum_sorted_bucket<Vector>(dy, bucket + start[v], c, cols, acc);
        }
        const long long at = (long long)v * cols, end = at + cols;
#pragma unroll
        for (int j = 0; j < EMB_GROUPS_PER_THREAD; ++j) {
            if (group_col(j) < cols) {
                float old[8];
                load8_rows<Vector>(dtable, at + group_col(j), end, old);
                for (int k = 0; k < 8; ++k) acc[j][k] += old[k];
                store8_rows<Vector>(dtable, at + group_col(j), end, acc[j]);
            }
        }
    }
}

template <typename T>
__device__ void embedding_backward(const int* tokens, const T* dy, T* dtable, const int* ids,
                                   const int* distinct, const int* start, const int* bucket,
                                   long long n_tokens, int cols) {
    if (vec8_rows_ok_all(cols, dy, (const T*)dtable)) {
        embedding_backward_rows<true>(tokens, dy, dtable, ids, distinct, start, bucket, n_tokens, cols);
    } else {
        embedding_backward_rows<false>(tokens, dy, dtable, ids, distinct, start, bucket, n_tokens, cols);
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
                                                  const int* ids, const int* distinct,
                                                  const int* start, const int* bucket,
                                                  long long n_tokens, int cols) {
    embedding_backward(tokens, dy, dtable, ids, distinct, start, bucket, n_tokens, cols);
}
extern "C" __global__ void embedding_backward_bf16(const int* tokens, const bf16* dy, bf16* dtable,
                                                   const int* ids, const int* distinct,
                                                   const int* start, const int* bucket,
                                                   long long n_tokens, int cols) {
    embedding_backward(tokens, dy, dtable, ids, distinct, start, bucket, n_tokens, cols);
}
