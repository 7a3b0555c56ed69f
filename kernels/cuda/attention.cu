// attention: causal grouped-query attention (ops/attention.rs). q [B, T, Hq·D], k and v
// [B, T, Hkv·D], query head h reads key/value head h / (Hq/Hkv), scores scaled by 1/√D; the
// log-sum-exp of every score row is kept, lse [B, Hq, T], and the backward rebuilds the
// probabilities from it (flash-attention style, no T×T matrix in memory).
//
// These are correct simple kernels, not fast ones: one thread block per query row (forward,
// dq) or per key row (dk, dv), with keys or queries taken in tiles of blockDim and each dot
// product done by one thread. Speed comes later (tensor-core tiles, as flash attention).
//
// Limits: head_dim ≤ ATTN_MAX_HEAD_DIM; blockDim a multiple of 32, at most ATTN_MAX_TILE.
#include "common.cuh"

#define ATTN_MAX_HEAD_DIM 256
#define ATTN_MAX_TILE 1024

struct Geometry {
    int batch, seq, heads, kv_heads, d;
    // Offset of head h's vector at batch b, position t, in a tensor with nh heads.
    __device__ long long at(int nh, int b, int t, int h) const {
        return (((long long)b * seq + t) * nh + h) * d;
    }
    __device__ int kv_head(int h) const { return h / (heads / kv_heads); }
    __device__ float scale() const { return 1.0f / sqrtf((float)d); }
};

template <typename A, typename B>
__device__ __forceinline__ float dot(const A* a, const B* b, int d) {
    float s = 0.0f;
    for (int i = 0; i < d; ++i) s += load(a, i) * load(b, i);
    return s;
}

// attention_{f32,bf16}(const T* q, const T* k, const T* v, T* o, float* lse, int batch, int seq,
//                      int heads, int kv_heads, int head_dim)
// grid: batch·heads·seq, block index (b·heads + h)·seq + t (the lse layout); block: a multiple
// of 32, at most 1024. Online softmax over key tiles of blockDim: running max m, running sum l,
// the output row accumulated in shared memory and divided by l at the end; lse = m + log l.
template <typename T>
__device__ void attention(const T* q, const T* k, const T* v, T* o, float* lse, Geometry g) {
    __shared__ float q_row[ATTN_MAX_HEAD_DIM];
    __shared__ float acc[ATTN_MAX_HEAD_DIM];
    __shared__ float p_tile[ATTN_MAX_TILE];
    const int row = blockIdx.x;
    const int t = row % g.seq, h = (row / g.seq) % g.heads, b = row / (g.seq * g.heads);
    const int kh = g.kv_head(h);
    const long long qi = g.at(g.heads, b, t, h);
    for (int i = threadIdx.x; i < g.d; i += blockDim.x) {
        q_row[i] = load(q, qi + i);
        acc[i] = 0.0f;
    }
    __syncthreads();
    float m = -CUDART_INF_F, l = 0.0f;
    for (int s0 = 0; s0 <= t; s0 += blockDim.x) {
        const int s = s0 + threadIdx.x;
        float score = -CUDART_INF_F;
        if (s <= t) score = dot(q_row, k + g.at(g.kv_heads, b, s, kh), g.d) * g.scale();
        const float m_new = fmaxf(m, block_max(score));
        const float correction = expf(m - m_new);
        const float p = s <= t ? expf(score - m_new) : 0.0f;
        p_tile[threadIdx.x] = p;
        l = l * correction + block_sum(p);  // block_sum's barrier also publishes p_tile
        const int tile = min((int)blockDim.x, t - s0 + 1);
        for (int i = threadIdx.x; i < g.d; i += blockDim.x) {
            float a = acc[i] * correction;
            for (int j = 0; j < tile; ++j) a += p_tile[j] * load(v, g.at(g.kv_heads, b, s0 + j, kh) + i);
            acc[i] = a;
        }
        m = m_new;
        __syncthreads();
    }
    for (int i = threadIdx.x; i < g.d; i += blockDim.x) store(o, qi + i, acc[i] / l);
    if (threadIdx.x == 0) lse[row] = m + logf(l);
}

// attention_backward_{f32,bf16}(const T* q, const T* k, const T* v, const T* o, const float* lse,
//                               const T* d_o, T* dq, T* dk, T* dv, int batch, int seq, int heads,
//                               int kv_heads, int head_dim, int accumulate)
// grid: batch·heads·seq + batch·kv_heads·seq; block: a multiple of 32, at most 1024.
// Blocks [0, batch·heads·seq) write one dq row each (index (b·heads + h)·seq + t):
//   dq_t = Σ_{s ≤ t} dS_ts · k_s,
// the blocks after them one dk and dv row each (index (b·kv_heads + kh)·seq + s), over every
// query head h of the group and every t ≥ s:
//   dv_s = Σ P_ts · do_t,   dk_s = Σ dS_ts · q_t,
// with P_ts = exp(q_t·k_s·scale − lse_t), dP_ts = do_t·v_s, D_t = do_t·o_t and
// dS_ts = P_ts·(dP_ts − D_t)·scale. No atomics: every output row has one writer.
template <typename T>
__device__ void attention_backward(const T* q, const T* k, const T* v, const T* o,
                                   const float* lse, const T* d_o, T* dq, T* dk, T* dv, Geometry g,
                                   int accumulate) {
    __shared__ float row_a[ATTN_MAX_HEAD_DIM];  // q_t (dq blocks) or k_s (dk/dv blocks)
    __shared__ float row_b[ATTN_MAX_HEAD_DIM];  // do_t (dq blocks) or v_s (dk/dv blocks)
    __shared__ float acc_a[ATTN_MAX_HEAD_DIM];  // dq or dk
    __shared__ float acc_b[ATTN_MAX_HEAD_DIM];  // dv
    __shared__ float p_tile[ATTN_MAX_TILE];
    __shared__ float ds_tile[ATTN_MAX_TILE];
    const float scale = g.scale();
    const long long q_rows = (long long)g.batch * g.heads * g.seq;
    if (blockIdx.x < q_rows) {
        const int row = blockIdx.x;
        const int t = row % g.seq, h = (row / g.seq) % g.heads, b = row / (g.seq * g.heads);
        const int kh = g.kv_head(h);
        const long long qi = g.at(g.heads, b, t, h);
        float delta = 0.0f;
        for (int i = threadIdx.x; i < g.d; i += blockDim.x) {
            row_a[i] = load(q, qi + i);
            row_b[i] = load(d_o, qi + i);
            acc_a[i] = 0.0f;
            delta += row_b[i] * load(o, qi + i);
        }
        delta = block_sum(delta);  // also publishes row_a, row_b
        const float row_lse = lse[row];
        for (int s0 = 0; s0 <= t; s0 += blockDim.x) {
            const int s = s0 + threadIdx.x;
            float ds = 0.0f;
            if (s <= t) {
                const long long ki = g.at(g.kv_heads, b, s, kh);
                const float p = expf(dot(row_a, k + ki, g.d) * scale - row_lse);
                const float dp = dot(row_b, v + ki, g.d);
                ds = p * (dp - delta) * scale;
            }
            ds_tile[threadIdx.x] = ds;
            __syncthreads();
            const int tile = min((int)blockDim.x, t - s0 + 1);
            for (int i = threadIdx.x; i < g.d; i += blockDim.x) {
                float a = acc_a[i];
                for (int j = 0; j < tile; ++j) a += ds_tile[j] * load(k, g.at(g.kv_heads, b, s0 + j, kh) + i);
                acc_a[i] = a;
            }
            __syncthreads();
        }
        for (int i = threadIdx.x; i < g.d; i += blockDim.x) store_acc(dq, qi + i, acc_a[i], accumulate);
    } else {
        const int row = blockIdx.x - q_rows;
        const int s = row % g.seq, kh = (row / g.seq) % g.kv_heads, b = row / (g.seq * g.kv_heads);
        const long long ki = g.at(g.kv_heads, b, s, kh);
        for (int i = threadIdx.x; i < g.d; i += blockDim.x) {
            row_a[i] = load(k, ki + i);
            row_b[i] = load(v, ki + i);
            acc_a[i] = 0.0f;
            acc_b[i] = 0.0f;
        }
        __syncthreads();
        const int group = g.heads / g.kv_heads;
        for (int h = kh * group; h < (kh + 1) * group; ++h) {
            for (int t0 = s; t0 < g.seq; t0 += blockDim.x) {
                const int t = t0 + threadIdx.x;
                float p = 0.0f, ds = 0.0f;
                if (t < g.seq) {
                    const long long qi = g.at(g.heads, b, t, h);
                    const float delta = dot(d_o + qi, o + qi, g.d);
                    p = expf(dot(q + qi, row_a, g.d) * scale - lse[((long long)b * g.heads + h) * g.seq + t]);
                    const float dp = dot(d_o + qi, row_b, g.d);
                    ds = p * (dp - delta) * scale;
                }
                p_tile[threadIdx.x] = p;
                ds_tile[threadIdx.x] = ds;
                __syncthreads();
                const int tile = min((int)blockDim.x, g.seq - t0);
                for (int i = threadIdx.x; i < g.d; i += blockDim.x) {
                    float a = acc_a[i], c = acc_b[i];
                    for (int j = 0; j < tile; ++j) {
                        const long long qj = g.at(g.heads, b, t0 + j, h);
                        a += ds_tile[j] * load(q, qj + i);
                        c += p_tile[j] * load(d_o, qj + i);
                    }
                    acc_a[i] = a;
                    acc_b[i] = c;
                }
                __syncthreads();
            }
        }
        for (int i = threadIdx.x; i < g.d; i += blockDim.x) {
            store_acc(dk, ki + i, acc_a[i], accumulate);
            store_acc(dv, ki + i, acc_b[i], accumulate);
        }
    }
}

extern "C" __global__ void attention_f32(const float* q, const float* k, const float* v, float* o,
                                         float* lse, int batch, int seq, int heads, int kv_heads,
                                         int head_dim) {
    attention(q, k, v, o, lse, Geometry{batch, seq, heads, kv_heads, head_dim});
}
extern "C" __global__ void attention_bf16(const bf16* q, const bf16* k, const bf16* v, bf16* o,
                                          float* lse, int batch, int seq, int heads, int kv_heads,
                                          int head_dim) {
    attention(q, k, v, o, lse, Geometry{batch, seq, heads, kv_heads, head_dim});
}
extern "C" __global__ void attention_backward_f32(const float* q, const float* k, const float* v,
                                                  const float* o, const float* lse, const float* d_o,
                                                  float* dq, float* dk, float* dv, int batch, int seq,
                                                  int heads, int kv_heads, int head_dim, int accumulate) {
    attention_backward(q, k, v, o, lse, d_o, dq, dk, dv, Geometry{batch, seq, heads, kv_heads, head_dim},
                       accumulate);
}
extern "C" __global__ void attention_backward_bf16(const bf16* q, const bf16* k, const bf16* v,
                                                   const bf16* o, const float* lse, const bf16* d_o,
                                                   bf16* dq, bf16* dk, bf16* dv, int batch, int seq,
                                                   int heads, int kv_heads, int head_dim, int accumulate) {
    attention_backward(q, k, v, o, lse, d_o, dq, dk, dv, Geometry{batch, seq, heads, kv_heads, head_dim},
                       accumulate);
}
