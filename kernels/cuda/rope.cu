// rope: rotary position embedding, rotate-half convention (element i of a head pairs with
// i + head_dim/2), position = row index modulo seq (ops/rope.rs). rope_backward rotates by the
// negative angle. The angles follow the CPU reference bit for bit where it can: inv_freq is
// 1/theta^(2i/d) computed in double and rounded to float, the angle is the float product
// pos·inv_freq, and its sine and cosine are taken in double and rounded to float.
//
// Those double-precision pow/sin/cos cost far more than the memory traffic, and every head of
// every sequence at one position shares them. So each block takes one position of a chunk of
// sequences: its threads first compute that position's half = head_dim/2 angles once, one pair
// index per thread, into shared memory; after a barrier all threads of the block stride over
// the chunk's (sequence, head, group of pairs) units of that position, so the threads of the
// grid grow with the batch. With half a multiple of ROPE_WIDTH, a unit is ROPE_WIDTH
// consecutive pairs, read and written 16 bytes at a time (load8/store8); otherwise one pair.
#include "abs_max.cuh"

#define ROPE_WIDTH 8
// The largest head_dim/2 the shared angle arrays hold (head_dim ≤ 512; the launcher refuses
// larger heads).
#define ROPE_MAX_HALF 256
// Threads per block (at most; the launcher's ROPE_BLOCK) and blocks per SM the compiler must
// fit at once: without the bound the backward takes 96 registers (two blocks per SM, too few
// loads in flight to reach the memory bandwidth); with it, 64 registers and no spills (NVRTC
// 13.0, sm_90).
#define ROPE_BLOCK 256
#define ROPE_MIN_BLOCKS 4

// Up to eight values at once: ROPE_WIDTH through load8/store8 (16-byte vectors where aligned),
// or one.
template <typename T>
__device__ __forceinline__ void load_n(const T* p, long long i, long long n, int width, float v[8]) {
    if (width == ROPE_WIDTH) load8(p, i, n, v);
    else v[0] = load(p, i);
}
template <typename T>
__device__ __forceinline__ void store_n(T* p, long long i, long long n, int width, const float v[8]) {
    if (width == ROPE_WIDTH) store8(p, i, n, v);
    else store(p, i, v[0]);
}

// Rotates the `width` pairs (a[j], b[j]) by the angles of pair indices i0 + j, in place:
// a·cos − b·sin, b·cos + a·sin. With width ROPE_WIDTH, i0 is a multiple of 8: 16-byte aligned
// in the aligned angle arrays.
__device__ __forceinline__ void rotate_pairs(const float* cos_s, const float* sin_s, int i0,
                                             int width, float a[8], float b[8]) {
    float c[8], s[8];
    if (width == ROPE_WIDTH) {
        const float4 c0 = *reinterpret_cast<const float4*>(cos_s + i0);
        const float4 c1 = *reinterpret_cast<const float4*>(cos_s + i0 + 4);
        const float4 s0 = *reinterpret_cast<const float4*>(sin_s + i0);
        const float4 s1 = *reinterpret_cast<const float4*>(sin_s + i0 + 4);
        c[0] = c0.x; c[1] = c0.y; c[2] = c0.z; c[3] = c0.w;
        c[4] = c1.x; c[5] = c1.y; c[6] = c1.z; c[7] = c1.w;
        s[0] = s0.x; s[1] = s0.y; s[2] = s0.z; s[3] = s0.w;
        s[4] = s1.x; s[5] = s1.y; s[6] = s1.z; s[7] = s1.w;
    } else {
        c[0] = cos_s[i0];
        s[0] = sin_s[i0];
    }
    for (int j = 0; j < width; ++j) {
        const float lo = a[j] * c[j] - b[j] * s[j];
        b[j] = b[j] * c[j] + a[j] * s[j];
        a[j] = lo;
    }
}

// The position loop shared by rope and split_rope: calls unit(row, r, cos_s, sin_s) for every
// unit r < per_row of every row, the angles (times `sign`) of the row's position in cos_s and
// sin_s. One block's items are (chunk of sequences, position) pairs, item = chunk·seq + pos,
// with chunks = max(1, gridDim.x / seq) and per = ceil(sequences / chunks) sequences a chunk;
// block b takes items b, b + gridDim.x, ... (one each when the grid is seq·chunks). Each unit
// is visited by one thread. Every thread of the block must call it.
template <typename Unit>
__device__ void for_each_position(long long rows, int seq, int head_dim, float theta, float sign,
                                  int per_row, Unit unit) {
    __shared__ __align__(16) float cos_s[ROPE_MAX_HALF];
    __shared__ __align__(16) float sin_s[ROPE_MAX_HALF];
    const int half = head_dim / 2;
    // Uniform over the grid (never true under the launcher), so no thread skips a barrier.
    if (half > ROPE_MAX_HALF || half <= 0 || per_row <= 0 || seq <= 0 || rows <= 0) return;
    const long long sequences = rows / seq;
    const long long chunks = max(1ll, (long long)gridDim.x / seq);
    const long long per = (sequences + chunks - 1) / chunks;
    const long long items = chunks * seq;
    // A thread's step through the units: blockDim.x units = step_b rows and step_r more units.
    const int step_b = (int)blockDim.x / per_row, step_r = (int)blockDim.x % per_row;
    for (long long item = blockIdx.x; item < items; item += gridDim.x) {
        const int pos = (int)(item % seq);
        const long long first = (item / seq) * per;
        const long long last = min(sequences, first + per);
        if (first >= last) continue;  // uniform over the block: the same item for all
        for (int i = threadIdx.x; i < half; i += blockDim.x) {
            const float inv_freq = (float)(1.0 / pow((double)theta, 2.0 * i / (double)head_dim));
            const float angle = (float)pos * inv_freq;
            sin_s[i] = (float)sin((double)angle) * sign;
            cos_s[i] = (float)cos((double)angle);
        }
        __syncthreads();
        // Unit r of sequence b.
        long long b = first + (int)threadIdx.x / per_row;
        int r = (int)threadIdx.x % per_row;
        while (b < last) {
            unit(b * seq + pos, r, cos_s, sin_s);
            b += step_b;
            r += step_r;
            if (r >= per_row) {
                r -= per_row;
                ++b;
            }
        }
        __syncthreads();  // every thread done with the angles before the next item's
    }
}

// `y` may alias `x`: each element is read and written by the same thread.
template <typename T>
__device__ void rotate(const T* x, T* y, long long rows, int seq, int channels, int head_dim,
                       float theta, float sign, int accumulate) {
    const int half = head_dim / 2;
    const int width = half % ROPE_WIDTH == 0 ? ROPE_WIDTH : 1;
    const int groups = half / width;
    const long long n = rows * channels;
    // Units of one row: (head, group) pairs, group fastest (consecutive threads read
    // consecutive 16-byte runs of a head).
    const int per_row = channels >= head_dim ? (channels / head_dim) * groups : 0;
    for_each_position(rows, seq, head_dim, theta, sign, per_row,
                      [&](long long row, int r, const float* cos_s, const float* sin_s) {
        const int i0 = (r % groups) * width;
        const long long at = row * channels + (long long)(r / groups) * head_dim + i0;
        float a[8], b[8];
        load_n(x, at, n, width, a);
        load_n(x, at + half, n, width, b);
        rotate_pairs(cos_s, sin_s, i0, width, a, b);
        if (accumulate) {
            float old_a[8], old_b[8];
            load_n(y, at, n, width, old_a);
            load_n(y, at + half, n, width, old_b);
            for (int j = 0; j < width; ++j) {
                a[j] += old_a[j];
                b[j] += old_b[j];
            }
        }
        store_n(y, at, n, width, a);
        store_n(y, at + half, n, width, b);
    });
}

// rope_{f32,bf16}(const T* x, T* y, long long rows, int seq, int channels, int head_dim,
//                 float theta)
// rows = all leading dimensions times seq; channels = heads·head_dim; head_dim ≤
// 2·ROPE_MAX_HALF = 512.
// grid: seq·chunks for any chunks ≥ 1: block chunk·seq + pos rotates position pos of the
// sequences [chunk·per, min((chunk + 1)·per, rows/seq)), per = ceil((rows/seq) / chunks) (the
// launcher picks the largest per that still fills the GPU and chunks = ceil((rows/seq) / per),
// so no chunk is empty; an empty one would be skipped). Any other grid is correct too:
// chunks = max(1, grid/seq), and the blocks grid-stride over the seq·chunks (chunk, position)
// items. block: at most ROPE_BLOCK threads (the launch
// bounds; any count works, the angle loop and the unit loop both stride by blockDim); static
// shared memory only (2·ROPE_MAX_HALF floats).
// rope_backward_{f32,bf16}(const T* dy, T* dx, long long rows, int seq, int channels,
//                          int head_dim, float theta, int accumulate)
// Same layout and launch shape; `accumulate` must be 0 when `dx` aliases `dy`.
#define ROPE_KERNEL extern "C" __global__ void __launch_bounds__(ROPE_BLOCK, ROPE_MIN_BLOCKS)
ROPE_KERNEL rope_f32(const float* x, float* y, long long rows, int seq, int channels,
                     int head_dim, float theta) {
    rotate(x, y, rows, seq, channels, head_dim, theta, 1.0f, 0);
}
ROPE_KERNEL rope_bf16(const bf16* x, bf16* y, long long rows, int seq, int channels,
                      int head_dim, float theta) {
    rotate(x, y, rows, seq, channels, head_dim, theta, 1.0f, 0);
}
ROPE_KERNEL rope_backward_f32(const float* dy, float* dx, long long rows, int seq, int channels,
                              int head_dim, float theta, int accumulate) {
    rotate(dy, dx, rows, seq, channels, head_dim, theta, -1.0f, accumulate);
}
ROPE_KERNEL rope_backward_bf16(const bf16* dy, bf16* dx, long long rows, int seq, int channels,
                               int head_dim, float theta, int accumulate) {
    rotate(dy, dx, rows, seq, channels, head_dim, theta, -1.0f, accumulate);
}

// split_rope (ops/split_rope.rs): the packed rows [q | k | v] of the q/k/v matmul split into
// q, k and v, q and k rotated on the way, the packed bias (if any) added first and rounded to
// T as bias_add would store it; backward: dq and dk rotated back and written packed with dv,
// with the abs-max of the packed gradient as stored when `amax` is set. The q and k columns
// are whole heads, so a packed row is (q_cols + k_cols) / head_dim heads to rotate, then v to
// copy: the units of a row are rope's (head, group) pairs, then v in groups of ROPE_WIDTH
// columns (one column where v's width or offset is not a multiple of ROPE_WIDTH).
template <typename T>
__device__ void split_rope(T* packed, const T* bias, T* q, T* k, T* v, float* amax,
                           long long rows, int seq, int q_cols, int k_cols, int v_cols,
                           int head_dim, float theta, int backward) {
    const int half = head_dim / 2;
    const int width = half % ROPE_WIDTH == 0 ? ROPE_WIDTH : 1;
    const int groups = half / width;
    const int qk = q_cols + k_cols, total = qk + v_cols;
    const int v_width = qk % ROPE_WIDTH == 0 && v_cols % ROPE_WIDTH == 0 ? ROPE_WIDTH : 1;
    const int rotated = head_dim > 0 ? qk / head_dim * groups : 0;
    const int per_row = rotated + v_cols / v_width;
    const long long n = rows * total;
    float m = 0.0f;
    for_each_position(rows, seq, head_dim, theta, backward ? -1.0f : 1.0f, per_row,
                      [&](long long row, int r, const float* cos_s, const float* sin_s) {
        float a[8], b[8];
        if (r >= rotated) {
            const int j = (r - rotated) * v_width;
            const long long at = row * total + qk + j, part = row * v_cols + j;
            const long long part_n = rows * v_cols;
            if (backward) {
                load_n(v, part, part_n, v_width, a);
                store_n(packed, at, n, v_width, a);
                if (amax)
                    for (int e = 0; e < v_width; ++e) m = nan_max(m, fabsf(as_stored(packed, a[e])));
                return;
            }
            load_n(packed, at, n, v_width, a);
            if (bias) {
                load_n(bias, qk + j, total, v_width, b);
                for (int e = 0; e < v_width; ++e) a[e] += b[e];
            }
            store_n(v, part, part_n, v_width, a);
            return;
        }
        const int i0 = (r % groups) * width;
        const int c = (r / groups) * head_dim + i0;  // the column in the packed row
        const bool in_q = c < q_cols;
        T* dst = in_q ? q : k;
        const int cols = in_q ? q_cols : k_cols;
        const long long at = row * total + c, part = row * cols + (in_q ? c : c - q_cols);
        const long long part_n = rows * cols;
        if (backward) {
            load_n(dst, part, part_n, width, a);
            load_n(dst, part + half, part_n, width, b);
            rotate_pairs(cos_s, sin_s, i0, width, a, b);
            store_n(packed, at, n, width, a);
            store_n(packed, at + half, n, width, b);
            if (amax)
                for (int e = 0; e < width; ++e)
                    m = nan_max(m, fmaxf(fabsf(as_stored(packed, a[e])),
                                         fabsf(as_stored(packed, b[e]))));
            return;
        }
        load_n(packed, at, n, width, a);
        load_n(packed, at + half, n, width, b);
        if (bias) {
            float ba[8], bb[8];
            load_n(bias, c, total, width, ba);
            load_n(bias, c + half, total, width, bb);
            for (int e = 0; e < width; ++e) {
                a[e] = as_stored(packed, a[e] + ba[e]);
                b[e] = as_stored(packed, b[e] + bb[e]);
            }
        }
        rotate_pairs(cos_s, sin_s, i0, width, a, b);
        store_n(dst, part, part_n, width, a);
        store_n(dst, part + half, part_n, width, b);
    });
    if (amax) block_abs_max_into(m, amax);
}

// split_rope_{f32,bf16}(const T* qkv, const T* b, T* q, T* k, T* v, long long rows, int seq,
//                       int q_cols, int k_cols, int v_cols, int head_dim, float theta)
// split_rope_backward_{f32,bf16}(const T* dq, const T* dk, const T* dv, T* dqkv, long long rows,
//                                int seq, int q_cols, int k_cols, int v_cols, int head_dim,
//                                float theta)
// split_rope_backward_abs_max_{f32,bf16}(const T* dq, const T* dk, const T* dv, T* dqkv,
//                                        float* amax, <the same sizes>)
// rows = all leading dimensions times seq; q_cols and k_cols multiples of head_dim ≤ 512; `b`
// is null without a bias; `amax` zeroed by the launcher first. Grid and block as rope's.
ROPE_KERNEL split_rope_f32(const float* qkv, const float* b, float* q, float* k, float* v, long long rows,
                          int seq, int q_cols, int k_cols, int v_cols, int head_dim, float theta) {
    split_rope(const_cast<float*>(qkv), b, q, k, v, nullptr, rows, seq, q_cols, k_cols, v_cols,
               head_dim, theta, 0);
}
ROPE_KERNEL split_rope_backward_f32(const float* dq, const float* dk, const float* dv, float* dqkv,
                                   long long rows, int seq, int q_cols, int k_cols, int v_cols,
                                   int head_dim, float theta) {
    split_rope(dqkv, (const float*)nullptr, const_cast<float*>(dq), const_cast<float*>(dk), const_cast<float*>(dv),
               nullptr, rows, seq, q_cols, k_cols, v_cols, head_dim, theta, 1);
}
ROPE_KERNEL split_rope_backward_abs_max_f32(const float* dq, const float* dk, const float* dv,
                                           float* dqkv, float* amax, long long rows, int seq,
                                           int q_cols, int k_cols, int v_cols, int head_dim,
                                           float theta) {
    split_rope(dqkv, (const float*)nullptr, const_cast<float*>(dq), const_cast<float*>(dk), const_cast<float*>(dv),
               amax, rows, seq, q_cols, k_cols, v_cols, head_dim, theta, 1);
}

ROPE_KERNEL split_rope_bf16(const bf16* qkv, const bf16* b, bf16* q, bf16* k, bf16* v, long long rows,
                          int seq, int q_cols, int k_cols, int v_cols, int head_dim, float theta) {
    split_rope(const_cast<bf16*>(qkv), b, q, k, v, nullptr, rows, seq, q_cols, k_cols, v_cols,
               head_dim, theta, 0);
}
ROPE_KERNEL split_rope_backward_bf16(const bf16* dq, const bf16* dk, const bf16* dv, bf16* dqkv,
                                   long long rows, int seq, int q_cols, int k_cols, int v_cols,
                                   int head_dim, float theta) {
    split_rope(dqkv, (const bf16*)nullptr, const_cast<bf16*>(dq), const_cast<bf16*>(dk), const_cast<bf16*>(dv),
               nullptr, rows, seq, q_cols, k_cols, v_cols, head_dim, theta, 1);
}
ROPE_KERNEL split_rope_backward_abs_max_bf16(const bf16* dq, const bf16* dk, const bf16* dv,
                                           bf16* dqkv, float* amax, long long rows, int seq,
                                           int q_cols, int k_cols, int v_cols, int head_dim,
                                           float theta) {
    split_rope(dqkv, (const bf16*)nullptr, const_cast<bf16*>(dq), const_cast<bf16*>(dk), const_cast<bf16*>(dv),
               amax, rows, seq, q_cols, k_cols, v_cols, head_dim, theta, 1);
}
