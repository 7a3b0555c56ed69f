#include "abs_max.cuh"
#include "rope.cuh"

// split_rope (ops/split_rope.rs): the packed rows [q | k | v] of the q/k/v matmul split into
// q, k and v, q and k rotated on the way (rope.cuh's position loop and rotation), the packed
// bias (if any) added first and rounded to T as bias_add would store it; backward: dq and dk
// rotated back and written packed with dv, with the abs-max of the packed gradient as stored
// when `amax` is set. The q and k columns are whole heads, so a packed row is
// (q_cols + k_cols) / head_dim heads to rotate, then v to copy: the units of a row are rope's
// (head, group) pairs, then v in groups of columns. W: the pairs of a rotated unit and the
// columns of a v unit, ROPE_WIDTH where head_dim/2 and v's width are multiples of it (then so
// is v's offset, a multiple of head_dim), else 1.
template <int W, typename T>
__device__ void split_rope_units(T* packed, const T* bias, T* q, T* k, T* v, float* amax,
                                 long long rows, int seq, int q_cols, int k_cols, int v_cols,
                                 int head_dim, float theta, int backward) {
    const int half = head_dim / 2;
    const int groups = half / W;
    const int qk = q_cols + k_cols, total = qk + v_cols;
    const int rotated = head_dim > 0 ? qk / head_dim * groups : 0;
    const int per_row = rotated + v_cols / W;
    const long long n = rows * total;
    float m = 0.0f;
    for_each_position(rows, seq, head_dim, theta, backward ? -1.0f : 1.0f, per_row,
                      [&](long long row, int r, const float* cos_s, const float* sin_s) {
        float a[W], b[W];
        if (r >= rotated) {
            const int j = (r - rotated) * W;
            const long long at = row * total + qk + j, part = row * v_cols + j;
            const long long part_n = rows * v_cols;
            if (backward) {
                load_n<W>(v, part, part_n, a);
                store_n<W>(packed, at, n, a);
                if (amax)
                    for (int e = 0; e < W; ++e) m = nan_max(m, fabsf(as_stored(packed, a[e])));
                return;
            }
            load_n<W>(packed, at, n, a);
            if (bias) {
                load_n<W>(bias, qk + j, total, b);
                for (int e = 0; e < W; ++e) a[e] += b[e];
            }
            store_n<W>(v, part, part_n, a);
            return;
        }
        const int i0 = (r % groups) * W;
        const int c = (r / groups) * head_dim + i0;  // the column in the packed row
        const bool in_q = c < q_cols;
        T* dst = in_q ? q : k;
        const int cols = in_q ? q_cols : k_cols;
        const long long at = row * total + c, part = row * cols + (in_q ? c : c - q_cols);
        const long long part_n = rows * cols;
        if (backward) {
            load_n<W>(dst, part, part_n, a);
            load_n<W>(dst, part + half, part_n, b);
            rotate_pairs<W>(cos_s, sin_s, i0, a, b);
            store_n<W>(packed, at, n, a);
            store_n<W>(packed, at + half, n, b);
            if (amax)
                for (int e = 0; e < W; ++e)
                    m = nan_max(m, fmaxf(fabsf(as_stored(packed, a[e])),
                                         fabsf(as_stored(packed, b[e]))));
            return;
        }
        load_n<W>(packed, at, n, a);
        load_n<W>(packed, at + half, n, b);
        if (bias) {
            float ba[W], bb[W];
            load_n<W>(bias, c, total, ba);
            load_n<W>(bias, c + half, total, bb);
            for (int e = 0; e < W; ++e) {
                a[e] = as_stored(packed, a[e] + ba[e]);
                b[e] = as_stored(packed, b[e] + bb[e]);
            }
        }
        rotate_pairs<W>(cos_s, sin_s, i0, a, b);
        store_n<W>(dst, part, part_n, a);
        store_n<W>(dst, part + half, part_n, b);
    });
    if (amax) block_abs_max_into(m, amax);
}

template <typename T>
__device__ void split_rope(T* packed, const T* bias, T* q, T* k, T* v, float* amax,
                           long long rows, int seq, int q_cols, int k_cols, int v_cols,
                           int head_dim, float theta, int backward) {
    if ((head_dim / 2) % ROPE_WIDTH == 0 && v_cols % ROPE_WIDTH == 0)
        split_rope_units<ROPE_WIDTH>(packed, bias, q, k, v, amax, rows, seq, q_cols, k_cols,
                                     v_cols, head_dim, theta, backward);
    else
        split_rope_units<1>(packed, bias, q, k, v, amax, rows, seq, q_cols, k_cols, v_cols,
                            head_dim, theta, backward);
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
