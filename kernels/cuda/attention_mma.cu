// attention_mma: causal grouped-query attention on tensor cores for head_dim 64 and 128,
// flash-attention 2 style: the same op, layouts and results as attention.cu
// (ops/attention.rs), which stays the kernel for FP32 and other head sizes. The forward keeps
// the log-sum-exp of every score row, lse [B, Hq, T]; the backward rebuilds the probabilities
// from it.
//
// Every product is a warp-wide `mma.sync.m16n8k16` (BF16 operands, FP32 accumulation) whose
// operands come from shared memory through `ldmatrix`; scores, probabilities, the online
// softmax and the output accumulators stay in registers (a score fragment of the C layout is
// the A operand of the next product once packed to BF16). The walked tiles (keys and values,
// or queries and output gradients) are double-buffered with `cp.async`.
//
// Numerics beyond attention.cu: the probabilities P (forward) and P, dS (backward) are rounded
// to BF16 before they enter the tensor-core products, as every flash-attention kernel does;
// exponentials are `exp2f` of log2-scaled scores (error 2 ulp, far below that rounding).
//
// Tiles: a block of 4 warps owns 64 rows (queries, or keys for dK/dV), each warp 16 of them;
// the other operand is walked in tiles of 64 rows. Shared memory is dynamic: the launcher
// passes sizeof(MmaForwardSmem<D>) or sizeof(MmaBackwardSmem<D>), computed by the same rule in
// runtime/src/backend/cuda/launch.rs (attention_mma_launch, which runtime/tests/
// cuda_attention.rs launches with).
#include "common.cuh"

#define MMA_ROWS 64     // rows per block (queries or keys) and per walked tile
#define MMA_WARPS 4     // 16 rows per warp
#define MMA_THREADS (MMA_WARPS * 32)
#define MMA_LOG2E 1.4426950408889634f
#define MMA_LN2 0.6931471805599453f

struct MmaGeometry {
    int batch, seq, heads, kv_heads;
    __device__ long long at(int nh, int b, int t, int h, int d) const {
        return (((long long)b * seq + t) * nh + h) * d;
    }
};

// ---- PTX wrappers ----------------------------------------------------------------------------

__device__ __forceinline__ unsigned shared_address(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 16 bytes from global to shared memory, asynchronously; zeros when !valid (src is not read).
__device__ __forceinline__ void copy_async_16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(dst)),
                 "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void copy_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
// Waits until at most `pending` committed groups of this thread are still in flight.
template <int pending>
__device__ __forceinline__ void copy_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(pending) : "memory");
}

// Four 8×8 BF16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and register i
// of lane l holds row l/4, columns 2(l%4) and 2(l%4)+1 of matrix i (of its transpose with
// `.trans`).
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p))
                 : "memory");
}

// c (16×8 f32) += a (16×16 bf16, row-major) · b (16×8 bf16, given as b0, b1). Fragments, with
// g = lane/4 and i = lane%4: a = {(g, 2i..), (g+8, 2i..), (g, 2i+8..), (g+8, 2i+8..)};
// b0 = (k 2i.., n g), b1 = (k 2i+8.., n g); c = {(g, 2i), (g, 2i+1), (g+8, 2i), (g+8, 2i+1)}.
__device__ __forceinline__ void mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}

// ---- warp-level building blocks ----------------------------------------------------------------

// Issues the copy of rows [t0, t0 + 64) of head h (of nh heads) into tile [64][D + 8] (rows
// padded by 16 bytes, so that ldmatrix's eight rows fall in distinct banks); rows past seq
// are zeros. Every thread of the block takes part.
template <int D>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* src, const MmaGeometry& g,
                                                int nh, int b, int t0, int h) {
    constexpr int LD = D + 8, VECS = D / 8;
    for (int i = threadIdx.x; i < MMA_ROWS * VECS; i += MMA_THREADS) {
        const int r = i / VECS, c = (i % VECS) * 8, t = t0 + r;
        const bool valid = t < g.seq;
        copy_async_16(tile + r * LD + c, valid ? src + g.at(nh, b, t, h, D) + c : src, valid);
    }
}

// s (16×64 as eight C fragments) = rows (16×D) · tileᵀ (tile 64×D); both in shared memory.
template <int D>
__device__ __forceinline__ void warp_scores(float (&s)[8][4], const bf16* rows, const bf16* tile) {
    constexpr int LD = D + 8;
    const int lane = threadIdx.x & 31;
    const bf16* a_at = rows + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
    const bf16* b_at = tile + (lane & 7) * LD + (lane >> 3) * 8;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
#pragma unroll
    for (int k = 0; k < D / 16; k += 2) {
        unsigned a0[4], a1[4];
        ldmatrix_x4(a0, a_at + k * 16);
        ldmatrix_x4(a1, a_at + (k + 1) * 16);
#pragma unroll
        for (int n = 0; n < 8; ++n) {
            unsigned b[4];  // keys 8n..8n+7, dims 16k..16k+31
            ldmatrix_x4(b, b_at + n * 8 * LD + k * 16);
            mma(s[n], a0, b[0], b[1]);
            mma(s[n], a1, b[2], b[3]);
        }
    }
}

// The A fragments (16×64 bf16, four k-steps) of a 16×64 C-fragment tile.
__device__ __forceinline__ void to_a_fragments(unsigned (&a)[4][4], const float (&s)[8][4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        a[j][0] = pack_bf16(s[2 * j][0], s[2 * j][1]);
        a[j][1] = pack_bf16(s[2 * j][2], s[2 * j][3]);
        a[j][2] = pack_bf16(s[2 * j + 1][0], s[2 * j + 1][1]);
        a[j][3] = pack_bf16(s[2 * j + 1][2], s[2 * j + 1][3]);
    }
}

// acc (16×D, D/8 C fragments) += p (16×64, A fragments) · tile (64×D, shared memory).
template <int D>
__device__ __forceinline__ void warp_accumulate(float (&acc)[D / 8][4], const unsigned (&p)[4][4],
                                                const bf16* tile) {
    constexpr int LD = D + 8;
    const int lane = threadIdx.x & 31;
    const bf16* b_at = tile + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
            unsigned b[4];  // rows 16j..16j+15, dims 8n..8n+15
            ldmatrix_x4_trans(b, b_at + j * 16 * LD + n * 8);
            mma(acc[n], p[j], b[0], b[1]);
            mma(acc[n + 1], p[j], b[2], b[3]);
        }
}

// Writes the warp's 16×D accumulators (this lane: rows row0 and row0 + 8, each times its
// factor) to dst rows of head h, or adds them to dst when accumulating; rows past seq are
// skipped.
template <int D>
__device__ __forceinline__ void store_rows(bf16* dst, const float (&acc)[D / 8][4],
                                           const MmaGeometry& g, int nh, int b, int row0, int h,
                                           const float (&factor)[2], int accumulate) {
    const int i = threadIdx.x & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int t = row0 + r * 8;
        if (t >= g.seq) continue;
        bf16* row = dst + g.at(nh, b, t, h, D) + 2 * i;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            float x = acc[n][2 * r] * factor[r], y = acc[n][2 * r + 1] * factor[r];
            __nv_bfloat162* at = reinterpret_cast<__nv_bfloat162*>(row + n * 8);
            if (accumulate) {
                const float2 old = __bfloat1622float2(*at);
                x += old.x;
                y += old.y;
            }
            *at = __floats2bfloat162_rn(x, y);
        }
    }
}

// ---- forward -------------------------------------------------------------------------------------

template <int D>
struct MmaForwardSmem {
    bf16 q[MMA_ROWS][D + 8];
    bf16 kv[2][2][MMA_ROWS][D + 8];  // [buffer][k, v]
};

// attention_bf16_d{64,128}(q, k, v, o, lse, batch, seq, heads, kv_heads, head_dim): the
// arguments of attention_bf16. grid: ceil(seq/64)·batch·heads, block: 128, dynamic shared
// memory sizeof(MmaForwardSmem<D>). Blocks take the query tiles from the last (the longest
// causal rows) to the first, every head's tile before the next tile.
template <int D>
__device__ void attention_mma(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse,
                              MmaGeometry g) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    MmaForwardSmem<D>& sm = *reinterpret_cast<MmaForwardSmem<D>*>(smem_raw);
    const int tiles = (g.seq + MMA_ROWS - 1) / MMA_ROWS;
    const int heads_all = g.batch * g.heads;
    const int qt = tiles - 1 - (int)(blockIdx.x / heads_all);
    const int bh = blockIdx.x % heads_all, b = bh / g.heads, h = bh % g.heads;
    const int kh = h / (g.heads / g.kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = qt * MMA_ROWS, row0 = q0 + warp * 16 + lane / 4;  // and row0 + 8
    const float scale_log2 = MMA_LOG2E / sqrtf((float)D);

    load_tile_async<D>(&sm.q[0][0], q, g, g.heads, b, q0, h);
    load_tile_async<D>(&sm.kv[0][0][0][0], k, g, g.kv_heads, b, 0, kh);
    load_tile_async<D>(&sm.kv[0][1][0][0], v, g, g.kv_heads, b, 0, kh);
    copy_async_commit();

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
    // Running maximum (log2 units) and this lane's part of the running sum, rows row0, row0+8.
    float m[2] = {-CUDART_INF_F, -CUDART_INF_F}, l[2] = {0.0f, 0.0f};
    for (int kt = 0; kt <= qt; ++kt) {
        if (kt < qt) {
            const int next = (kt + 1) & 1;
            load_tile_async<D>(&sm.kv[next][0][0][0], k, g, g.kv_heads, b, (kt + 1) * MMA_ROWS, kh);
            load_tile_async<D>(&sm.kv[next][1][0][0], v, g, g.kv_heads, b, (kt + 1) * MMA_ROWS, kh);
            copy_async_commit();
            copy_async_wait<1>();
        } else {
            copy_async_wait<0>();
        }
        __syncthreads();
        const int k0 = kt * MMA_ROWS;
        float s[8][4];
        warp_scores<D>(s, &sm.q[warp * 16][0], &sm.kv[kt & 1][0][0][0]);
        // Only the diagonal tile and the one past seq hold masked scores.
        const bool edge = kt == qt || k0 + MMA_ROWS > g.seq;
        float tile_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + n * 8 + 2 * (lane & 3) + (e & 1), row = row0 + (e >> 1) * 8;
                float x = s[n][e] * scale_log2;
                if (edge && (key > row || key >= g.seq)) x = -CUDART_INF_F;
                s[n][e] = x;
                tile_max[e >> 1] = fmaxf(tile_max[e >> 1], x);
            }
        // Key 0 is in every row, so after the first tile the maximum is finite.
        float correction[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
            tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
            const float m_new = fmaxf(m[r], tile_max[r]);
            correction[r] = exp2f(m[r] - m_new);
            m[r] = m_new;
            l[r] *= correction[r];
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[n][e] *= correction[e >> 1];
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(s[n][e] - m[e >> 1]);
                s[n][e] = p;
                l[e >> 1] += p;
            }
        unsigned p[4][4];
        to_a_fragments(p, s);
        warp_accumulate<D>(acc, p, &sm.kv[kt & 1][1][0][0]);
        __syncthreads();  // this buffer is refilled two tiles on
    }
    float inverse[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        inverse[r] = 1.0f / l[r];
        const int t = row0 + r * 8;
        if ((lane & 3) == 0 && t < g.seq)
            lse[((long long)b * g.heads + h) * g.seq + t] = m[r] * MMA_LN2 + logf(l[r]);
    }
    store_rows<D>(o, acc, g, g.heads, b, row0, h, inverse, 0);
}

// ---- backward ------------------------------------------------------------------------------------

template <int D>
struct MmaBackwardSmem {
    bf16 own[2][MMA_ROWS][D + 8];        // the block's rows: q, do (dQ) or k, v (dK/dV)
    bf16 walked[2][2][MMA_ROWS][D + 8];  // [buffer][k, v (dQ) or q, do (dK/dV)]
    float lse[2][MMA_ROWS];              // [buffer] the query rows' lse·log2(e)
    float delta[2][MMA_ROWS];            // [buffer] the query rows' do·o
};

// The query rows of one head padded to whole tiles.
__device__ __forceinline__ int padded_rows(int seq) {
    return (seq + MMA_ROWS - 1) / MMA_ROWS * MMA_ROWS;
}

// The query rows' statistics that the backward blocks copy with their tiles, per (b, h) of
// padded_rows(seq) rows: lse·log2(e), then delta = do·o; zeros past seq.
__device__ __forceinline__ long long stats_at(const MmaGeometry& g, int b, int h) {
    return ((long long)b * g.heads + h) * 2 * padded_rows(g.seq);
}

#define STATS_LANES 8  // threads per row of attention_backward_stats_bf16

// attention_backward_stats_bf16(o, d_o, lse, stats, batch, seq, heads, head_dim): fills stats
// (see stats_at) for the backward kernels; head_dim a multiple of 8. grid: ceil(rows·8/256)
// blocks of 256 threads, rows = batch·heads·padded, eight threads per row.
extern "C" __global__ void attention_backward_stats_bf16(const bf16* o, const bf16* d_o,
                                                         const float* lse, float* stats,
                                                         int batch, int seq, int heads,
                                                         int head_dim) {
    const MmaGeometry g{batch, seq, heads, 0};
    const int padded = padded_rows(seq);
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / STATS_LANES;
    const int part = threadIdx.x % STATS_LANES;
    const long long bh = row / padded;
    const int t = (int)(row % padded), b = (int)(bh / heads), h = (int)(bh % heads);
    const bool real = bh < (long long)batch * heads && t < seq;
    float d = 0.0f;
    if (real) {
        const long long at = g.at(heads, b, t, h, head_dim);
        for (int c = part * 8; c < head_dim; c += STATS_LANES * 8) {
            const int4 x = *reinterpret_cast<const int4*>(o + at + c);
            const int4 y = *reinterpret_cast<const int4*>(d_o + at + c);
            const __nv_bfloat162* xs = reinterpret_cast<const __nv_bfloat162*>(&x);
            const __nv_bfloat162* ys = reinterpret_cast<const __nv_bfloat162*>(&y);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 a = __bfloat1622float2(xs[j]), c2 = __bfloat1622float2(ys[j]);
                d += a.x * c2.x + a.y * c2.y;
            }
        }
    }
#pragma unroll
    for (int lanes = 1; lanes < STATS_LANES; lanes *= 2)
        d += __shfl_xor_sync(0xffffffffu, d, lanes);
    if (part == 0 && bh < (long long)batch * heads) {
        float* out = stats + stats_at(g, b, h) + t;
        out[0] = real ? lse[bh * seq + t] * MMA_LOG2E : 0.0f;
        out[padded] = d;
    }
}

// Issues the copy of the statistics of the 64 query rows from t0 of head h into lse2 and
// delta (shared memory), by the block's first 32 threads.
__device__ __forceinline__ void load_stats_async(float* lse2, float* delta, const float* stats,
                                                 const MmaGeometry& g, int b, int t0, int h) {
    const float* at = stats + stats_at(g, b, h) + t0;
    const int i = threadIdx.x % 16;
    if (threadIdx.x < 16) copy_async_16(lse2 + 4 * i, at + 4 * i, true);
    else if (threadIdx.x < 32)
        copy_async_16(delta + 4 * i, at + padded_rows(g.seq) + 4 * i, true);
}

// In place: s (scores) becomes P = exp(s·scale − lse) and dp becomes dS = P·(dp − delta)·scale,
// both zero where `valid` is false. lse2 and delta are indexed by the fragment's (row, column).
template <typename Valid, typename Lse, typename Delta>
__device__ __forceinline__ void probabilities_and_gradients(float (&s)[8][4], float (&dp)[8][4],
                                                            float scale, Valid valid, Lse lse2,
                                                            Delta delta) {
    const float scale_log2 = scale * MMA_LOG2E;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = lane / 4 + (e >> 1) * 8, c = n * 8 + 2 * (lane & 3) + (e & 1);
            const float p = valid(r, c) ? exp2f(s[n][e] * scale_log2 - lse2(r, c)) : 0.0f;
            s[n][e] = p;
            dp[n][e] = p * (dp[n][e] - delta(r, c)) * scale;
        }
}

// The split dK/dV walk's reduction. Every split of key tile `key_tile` writes its FP32
// accumulators to its own slot of `partials` ([key tile][split][thread][dk, dv fragments]),
// then counts itself in counters[key_tile] (zeroed before the launch); the last to arrive adds
// the slots in split order, so the sums do not depend on which split finishes last. True in
// that block, whose accumulators then hold the sums for it to write.
template <int D>
__device__ __forceinline__ bool combine_splits(float (&acc_k)[D / 8][4], float (&acc_v)[D / 8][4],
                                               float* partials, int* counters, int key_tile,
                                               int split, int splits) {
    constexpr int PER_THREAD = 2 * (D / 8) * 4;
    __shared__ int last;
    const long long tile_at = (long long)key_tile * splits * MMA_THREADS * PER_THREAD;
    float4* mine = reinterpret_cast<float4*>(partials + tile_at +
                                             ((long long)split * MMA_THREADS + threadIdx.x) *
                                                 PER_THREAD);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        mine[n] = make_float4(acc_k[n][0], acc_k[n][1], acc_k[n][2], acc_k[n][3]);
        mine[D / 8 + n] = make_float4(acc_v[n][0], acc_v[n][1], acc_v[n][2], acc_v[n][3]);
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&counters[key_tile], 1) == splits - 1;
    __syncthreads();
    if (!last) return false;
    __threadfence();
    for (int j = 0; j < splits; ++j) {
        // L2 reads (__ldcg): the other splits' blocks wrote their slots.
        const float4* slot = reinterpret_cast<const float4*>(
            partials + tile_at + ((long long)j * MMA_THREADS + threadIdx.x) * PER_THREAD);
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const float4 k4 = __ldcg(slot + n), v4 = __ldcg(slot + D / 8 + n);
            const float ks[4] = {k4.x, k4.y, k4.z, k4.w}, vs[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                acc_k[n][e] = j == 0 ? ks[e] : acc_k[n][e] + ks[e];
                acc_v[n][e] = j == 0 ? vs[e] : acc_v[n][e] + vs[e];
            }
        }
    }
    return true;
}

// attention_backward_bf16_d{64,128}(q, k, v, stats, d_o, dq, dk, dv, partials, counters,
// batch, seq, heads, kv_heads, head_dim, accumulate, splits): the arguments of
// attention_backward_bf16 (q, k, v, o, lse, d_o, dq, dk, dv, sizes, accumulate), with o and lse
// replaced by their rows' statistics, written by attention_backward_stats_bf16 first (so that
// the walk copies them with its tiles instead of reading o and do again at every step).
// grid: batch·kv_heads·tiles·splits (dK/dV blocks, `splits` per key tile, first: they run
// longest) + batch·heads·tiles (dQ blocks, one per query tile), tiles = ceil(seq/64); block:
// 128; dynamic shared memory sizeof(MmaBackwardSmem<D>). Every output row has one writer, at
// the price of recomputing QKᵀ and dO·Vᵀ in the dQ blocks. With splits > 1 (1 ≤ splits ≤
// heads/kv_heads) the walk of each key tile is cut into that many blocks, which add their FP32
// partials in a fixed order (combine_splits; `partials` and `counters`, zeroed, from the
// launcher), so that few sequences still fill the GPU; with splits = 1 those go unused.
//   dQ block (queries t of one head h):   dq_t = Σ_{s ≤ t} dS_ts · k_s
//   dK/dV block (keys s of kv head kh):  over the group's heads and every t ≥ s,
//                                         dv_s = Σ P_ts · do_t,   dk_s = Σ dS_ts · q_t
// with P_ts = exp(q_t·k_s·scale − lse_t), dS_ts = P_ts·(do_t·v_s − do_t·o_t)·scale.
template <int D>
__device__ void attention_backward_mma(const bf16* q, const bf16* k, const bf16* v,
                                       const float* stats, const bf16* d_o, bf16* dq, bf16* dk,
                                       bf16* dv, float* partials, int* counters, MmaGeometry g,
                                       int accumulate, int splits) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    MmaBackwardSmem<D>& sm = *reinterpret_cast<MmaBackwardSmem<D>*>(smem_raw);
    const int tiles = (g.seq + MMA_ROWS - 1) / MMA_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int w0 = warp * 16;
    const float scale = 1.0f / sqrtf((float)D);
    const float one[2] = {1.0f, 1.0f};
    const int kv_blocks = g.batch * g.kv_heads * tiles * splits;
    if ((int)blockIdx.x >= kv_blocks) {
        const int id = blockIdx.x - kv_blocks, heads_all = g.batch * g.heads;
        const int qt = tiles - 1 - id / heads_all;  // the longest first
        const int bh = id % heads_all, b = bh / g.heads, h = bh % g.heads;
        const int kh = h / (g.heads / g.kv_heads);
        const int q0 = qt * MMA_ROWS, row0 = q0 + w0 + lane / 4;
        load_tile_async<D>(&sm.own[0][0][0], q, g, g.heads, b, q0, h);
        load_tile_async<D>(&sm.own[1][0][0], d_o, g, g.heads, b, q0, h);
        load_tile_async<D>(&sm.walked[0][0][0][0], k, g, g.kv_heads, b, 0, kh);
        load_tile_async<D>(&sm.walked[0][1][0][0], v, g, g.kv_heads, b, 0, kh);
        load_stats_async(sm.lse[0], sm.delta[0], stats, g, b, q0, h);
        copy_async_commit();
        float acc[D / 8][4];
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
        for (int kt = 0; kt <= qt; ++kt) {
            if (kt < qt) {
                const int next = (kt + 1) & 1, k1 = (kt + 1) * MMA_ROWS;
                load_tile_async<D>(&sm.walked[next][0][0][0], k, g, g.kv_heads, b, k1, kh);
                load_tile_async<D>(&sm.walked[next][1][0][0], v, g, g.kv_heads, b, k1, kh);
                copy_async_commit();
                copy_async_wait<1>();
            } else {
                copy_async_wait<0>();
            }
            __syncthreads();
            const int k0 = kt * MMA_ROWS;
            const bf16* keys = &sm.walked[kt & 1][0][0][0];
            float s[8][4], ds[8][4];
            warp_scores<D>(s, &sm.own[0][w0][0], keys);                     // q·kᵀ
            warp_scores<D>(ds, &sm.own[1][w0][0], &sm.walked[kt & 1][1][0][0]);  // do·vᵀ
            const bool edge = kt == qt || k0 + MMA_ROWS > g.seq;
            auto valid = [&](int r, int c) {
                const int t = q0 + w0 + r, key = k0 + c;
                return !edge || (key <= t && key < g.seq && t < g.seq);
            };
            auto lse2 = [&](int r, int) { return sm.lse[0][w0 + r]; };
            auto delta = [&](int r, int) { return sm.delta[0][w0 + r]; };
            probabilities_and_gradients(s, ds, scale, valid, lse2, delta);
            unsigned a[4][4];
            to_a_fragments(a, ds);
            warp_accumulate<D>(acc, a, keys);  // dS·k
            __syncthreads();
        }
        store_rows<D>(dq, acc, g, g.heads, b, row0, h, one, accumulate);
    } else {
        const int kv_all = g.batch * g.kv_heads;
        const int key_tile = blockIdx.x / splits, split = blockIdx.x % splits;
        const int kt = key_tile / kv_all;  // the longest (earliest keys) first
        const int bk = key_tile % kv_all, b = bk / g.kv_heads, kh = bk % g.kv_heads;
        const int k0 = kt * MMA_ROWS, key0 = k0 + w0 + lane / 4;
        const int group = g.heads / g.kv_heads, q_tiles = tiles - kt;
        // This split's steps of the walk (splits ≤ group: every split has one at least).
        const int steps = group * q_tiles;
        const int first = split * steps / splits, end = (split + 1) * steps / splits;
        // Step i: query tile kt + i % q_tiles of head kh·group + i / q_tiles.
        auto prefetch = [&](int i) {
            const int buffer = i & 1, h = kh * group + i / q_tiles;
            const int t0 = (kt + i % q_tiles) * MMA_ROWS;
            load_tile_async<D>(&sm.walked[buffer][0][0][0], q, g, g.heads, b, t0, h);
            load_tile_async<D>(&sm.walked[buffer][1][0][0], d_o, g, g.heads, b, t0, h);
            load_stats_async(sm.lse[buffer], sm.delta[buffer], stats, g, b, t0, h);
            copy_async_commit();
        };
        load_tile_async<D>(&sm.own[0][0][0], k, g, g.kv_heads, b, k0, kh);
        load_tile_async<D>(&sm.own[1][0][0], v, g, g.kv_heads, b, k0, kh);
        prefetch(first);
        float acc_k[D / 8][4], acc_v[D / 8][4];
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                acc_k[n][e] = 0.0f;
                acc_v[n][e] = 0.0f;
            }
        for (int i = first; i < end; ++i) {
            if (i + 1 < end) {
                prefetch(i + 1);
                copy_async_wait<1>();
            } else {
                copy_async_wait<0>();
            }
            __syncthreads();
            const int buffer = i & 1, q0 = (kt + i % q_tiles) * MMA_ROWS;
            const bf16* queries = &sm.walked[buffer][0][0][0];
            const bf16* grads = &sm.walked[buffer][1][0][0];
            float p[8][4], ds[8][4];
            warp_scores<D>(p, &sm.own[0][w0][0], queries);  // (q·kᵀ)ᵀ
            warp_scores<D>(ds, &sm.own[1][w0][0], grads);   // (do·vᵀ)ᵀ
            const bool edge = q0 == k0 || q0 + MMA_ROWS > g.seq;
            auto valid = [&](int r, int c) {
                const int key = k0 + w0 + r, t = q0 + c;
                return !edge || (key <= t && t < g.seq);
            };
            auto lse2 = [&](int, int c) { return sm.lse[buffer][c]; };
            auto delta = [&](int, int c) { return sm.delta[buffer][c]; };
            probabilities_and_gradients(p, ds, scale, valid, lse2, delta);
            unsigned a[4][4];
            to_a_fragments(a, p);
            warp_accumulate<D>(acc_v, a, grads);  // Pᵀ·do
            to_a_fragments(a, ds);
            warp_accumulate<D>(acc_k, a, queries);  // dSᵀ·q
            __syncthreads();
        }
        if (splits > 1 &&
            !combine_splits<D>(acc_k, acc_v, partials, counters, key_tile, split, splits))
            return;
        store_rows<D>(dk, acc_k, g, g.kv_heads, b, key0, kh, one, accumulate);
        store_rows<D>(dv, acc_v, g, g.kv_heads, b, key0, kh, one, accumulate);
    }
}

// Entries for head size D; FORWARD_BOUNDS and BACKWARD_BOUNDS are the kernels'
// __launch_bounds__ arguments. Measured on the H100 at 0.5B's shape (runtime/tests/
// cuda_attention.rs, timing): for heads of 64, asking for 4 forward blocks per SM (128
// registers, 32 bytes spilled) and 3 backward blocks (168 registers, 88 bytes spilled) ran 6%
// and 11% faster than the compiler's unbounded choice (134 and 186 registers: 3 and 2 blocks).
// Heads of 128 keep the unbounded choice (164 and 255 registers); shared memory allows 2 blocks
// of either kernel, and a minimum of blocks only made the forward take 202 registers.
#define MMA_ENTRIES(D, FORWARD_BOUNDS, BACKWARD_BOUNDS)                                            \
    extern "C" __global__ void __launch_bounds__ FORWARD_BOUNDS                                    \
        attention_bf16_d##D(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse,      \
                            int batch, int seq, int heads, int kv_heads, int head_dim) {           \
        attention_mma<D>(q, k, v, o, lse, MmaGeometry{batch, seq, heads, kv_heads});               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__ BACKWARD_BOUNDS                                   \
        attention_backward_bf16_d##D(const bf16* q, const bf16* k, const bf16* v,                 \
                                     const float* stats, const bf16* d_o, bf16* dq, bf16* dk,      \
                                     bf16* dv, float* partials, int* counters, int batch, int seq, \
                                     int heads, int kv_heads, int head_dim, int accumulate,        \
                                     int splits) {                                                 \
        attention_backward_mma<D>(q, k, v, stats, d_o, dq, dk, dv, partials, counters,             \
                                  MmaGeometry{batch, seq, heads, kv_heads}, accumulate, splits);   \
    }

MMA_ENTRIES(64, (MMA_THREADS, 4), (MMA_THREADS, 3))
MMA_ENTRIES(128, (MMA_THREADS), (MMA_THREADS))
