// attention_tc: causal grouped-query attention on tensor cores (WMMA, BF16 operands, FP32
// accumulation), flash-attention style, for head_dim 64 and 128: the same op, layouts and
// results as attention.cu (ops/attention.rs), which stays the kernel for FP32 and other head
// sizes. Scores and probabilities never leave shared memory; the forward keeps the log-sum-exp
// of every score row, lse [B, Hq, T], and the backward rebuilds the probabilities from it.
//
// Numerics beyond attention.cu: the probabilities P (forward) and P, dS (backward) are rounded
// to BF16 before they enter the tensor-core products, as every flash-attention kernel does.
//
// Tiles: a block of 4 warps owns 64 rows (queries, or keys for dK/dV), each warp 16 of them;
// the other operand is walked in tiles of 64. Shared memory is dynamic: the launcher passes
// sizeof(TcForwardSmem<D>) or sizeof(TcBackwardSmem<D>), computed by the same rule in
// runtime/src/backend/cuda/launch.rs (a mismatch shows up in the conformance test).
#include "common.cuh"

#define TC_ROWS 64     // rows per block (queries or keys)
#define TC_TILE 64     // keys (or queries) per inner tile
#define TC_WARPS 4     // 16 rows per warp
#define TC_THREADS (TC_WARPS * 32)

// Warp-wide 16×16×16 BF16 products with FP32 accumulation, through the PTX `wmma` instructions
// (sm_80 and later). Written here rather than with <mma.h>, whose crt/ part the CUDA header
// wheels that CI compiles against do not ship. A fragment's element order is the hardware's:
// only these functions touch it. Pointers are generic, 32-byte aligned; `ld` counts elements.
struct FragA { unsigned r[4]; };      // 16×16 bf16, row-major
struct FragB { unsigned r[4]; };      // 16×16 bf16, row-major
struct FragBt { unsigned r[4]; };     // 16×16 bf16, column-major (a transposed row-major tile)
struct FragC { float r[8]; };         // 16×16 f32 accumulator

__device__ __forceinline__ void fill_zero(FragC& c) {
    for (int i = 0; i < 8; ++i) c.r[i] = 0.0f;
}
__device__ __forceinline__ void load(FragA& a, const bf16* p, int ld) {
    asm volatile("wmma.load.a.sync.aligned.row.m16n16k16.bf16 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(a.r[0]), "=r"(a.r[1]), "=r"(a.r[2]), "=r"(a.r[3]) : "l"(p), "r"(ld) : "memory");
}
__device__ __forceinline__ void load(FragB& b, const bf16* p, int ld) {
    asm volatile("wmma.load.b.sync.aligned.row.m16n16k16.bf16 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(b.r[0]), "=r"(b.r[1]), "=r"(b.r[2]), "=r"(b.r[3]) : "l"(p), "r"(ld) : "memory");
}
__device__ __forceinline__ void load(FragBt& b, const bf16* p, int ld) {
    asm volatile("wmma.load.b.sync.aligned.col.m16n16k16.bf16 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(b.r[0]), "=r"(b.r[1]), "=r"(b.r[2]), "=r"(b.r[3]) : "l"(p), "r"(ld) : "memory");
}
// c += a·b
__device__ __forceinline__ void mma(FragC& c, const FragA& a, const FragB& b) {
    asm volatile(
        "wmma.mma.sync.aligned.row.row.m16n16k16.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, {%12,%13,%14,%15}, {%0,%1,%2,%3,%4,%5,%6,%7};"
        : "+f"(c.r[0]), "+f"(c.r[1]), "+f"(c.r[2]), "+f"(c.r[3]), "+f"(c.r[4]), "+f"(c.r[5]),
          "+f"(c.r[6]), "+f"(c.r[7])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]), "r"(b.r[2]),
          "r"(b.r[3]));
}
__device__ __forceinline__ void mma(FragC& c, const FragA& a, const FragBt& b) {
    asm volatile(
        "wmma.mma.sync.aligned.row.col.m16n16k16.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, {%12,%13,%14,%15}, {%0,%1,%2,%3,%4,%5,%6,%7};"
        : "+f"(c.r[0]), "+f"(c.r[1]), "+f"(c.r[2]), "+f"(c.r[3]), "+f"(c.r[4]), "+f"(c.r[5]),
          "+f"(c.r[6]), "+f"(c.r[7])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b.r[0]), "r"(b.r[1]), "r"(b.r[2]),
          "r"(b.r[3]));
}
// p[16][16] (row-major, ld) = c
__device__ __forceinline__ void store(float* p, const FragC& c, int ld) {
    asm volatile("wmma.store.d.sync.aligned.row.m16n16k16.f32 [%0], {%1,%2,%3,%4,%5,%6,%7,%8}, %9;"
                 :: "l"(p), "f"(c.r[0]), "f"(c.r[1]), "f"(c.r[2]), "f"(c.r[3]), "f"(c.r[4]),
                    "f"(c.r[5]), "f"(c.r[6]), "f"(c.r[7]), "r"(ld) : "memory");
}

struct TcGeometry {
    int batch, seq, heads, kv_heads;
    __device__ long long at(int nh, int b, int t, int h, int d) const {
        return (((long long)b * seq + t) * nh + h) * d;
    }
};

// Loads rows [t0, t0 + 64) of head h (of nh heads) into smem [64][D + 8]; rows past seq are 0.
// 16-byte vector loads; every thread of the block takes part.
template <int D>
__device__ void load_tile(bf16* smem, const bf16* src, const TcGeometry& g, int nh, int b, int t0, int h) {
    constexpr int LD = D + 8, VECS = D / 8;
    for (int i = threadIdx.x; i < TC_ROWS * VECS; i += blockDim.x) {
        const int r = i / VECS, c = (i % VECS) * 8;
        const int t = t0 + r;
        int4 v = make_int4(0, 0, 0, 0);
        if (t < g.seq) v = *reinterpret_cast<const int4*>(src + g.at(nh, b, t, h, D) + c);
        *reinterpret_cast<int4*>(smem + r * LD + c) = v;
    }
}

// out[16][64] (float, ld TC_TILE + 4) = a[16][D] · bᵀ where b is [64][D] (both bf16, ld D + 8).
template <int D>
__device__ void rows_times_tile_t(float* out, const bf16* a, const bf16* b) {
    constexpr int LD = D + 8;
    for (int n = 0; n < TC_TILE / 16; ++n) {
        FragC acc;
        fill_zero(acc);
        for (int k = 0; k < D / 16; ++k) {
            FragA fa;
            FragBt fb;
            load(fa, a + k * 16, LD);
            load(fb, b + n * 16 * LD + k * 16, LD);
            mma(acc, fa, fb);
        }
        store(out + n * 16, acc, TC_TILE + 4);
    }
}

// acc[j] += p[16][64] (bf16, ld TC_TILE + 8) · v[64][D] (bf16, ld D + 8), j over D/16 columns.
template <int D>
__device__ void accumulate_rows_times_tile(FragC* acc, const bf16* p, const bf16* v) {
    constexpr int LD = D + 8;
    for (int k = 0; k < TC_TILE / 16; ++k) {
        FragA fa;
        load(fa, p + k * 16, TC_TILE + 8);
        for (int j = 0; j < D / 16; ++j) {
            FragB fb;
            load(fb, v + k * 16 * LD + j * 16, LD);
            mma(acc[j], fa, fb);
        }
    }
}

// Writes the warp's 16 rows held in acc (D/16 fragments) to dst rows [t0, t0 + 16) of head h,
// through a 16×16 float staging area of the warp: dst = acc·scale, or += when accumulating.
template <int D>
__device__ void store_rows(bf16* dst, FragC* acc, float* stage, const TcGeometry& g, int nh, int b,
                           int t0, int h, int accumulate) {
    const int lane = threadIdx.x & 31;
    for (int j = 0; j < D / 16; ++j) {
        store(stage, acc[j], 16);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
            const int r = e / 16, c = e % 16, t = t0 + r;
            if (t < g.seq) store_acc(dst, g.at(nh, b, t, h, D) + j * 16 + c, stage[e], accumulate);
        }
        __syncwarp();
    }
}

template <int D>
struct TcForwardSmem {
    bf16 q[TC_ROWS][D + 8], k[TC_TILE][D + 8], v[TC_TILE][D + 8];
    float s[TC_ROWS][TC_TILE + 4];
    bf16 p[TC_ROWS][TC_TILE + 8];
    float o[TC_ROWS][D + 4];
};

// attention_bf16_d{64,128}(q, k, v, o, lse, batch, seq, heads, kv_heads, head_dim): the
// arguments of attention_bf16. grid: ceil(seq/64)·batch·heads, block: 128, dynamic shared
// memory sizeof(TcForwardSmem<D>). Block x takes query tile (x mod tiles) counted from the
// end (the longest causal rows first) of head (x / tiles) = b·heads + h.
template <int D>
__device__ void attention_tc(const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse,
                             TcGeometry g) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    TcForwardSmem<D>& sm = *reinterpret_cast<TcForwardSmem<D>*>(smem_raw);
    const int tiles = (g.seq + TC_ROWS - 1) / TC_ROWS;
    const int qt = tiles - 1 - (int)(blockIdx.x % tiles);
    const int bh = blockIdx.x / tiles, b = bh / g.heads, h = bh % g.heads;
    const int kh = h / (g.heads / g.kv_heads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int q0 = qt * TC_ROWS;
    const float scale = 1.0f / sqrtf((float)D);
    load_tile<D>(&sm.q[0][0], q, g, g.heads, b, q0, h);
    // Lane pair (2i, 2i+1) owns row 16·warp + i: columns [half·D/2, (half+1)·D/2) of O.
    const int row = warp * 16 + lane / 2, half = lane & 1;
    const int t = q0 + row;
    float acc[D / 2];
    for (int c = 0; c < D / 2; ++c) acc[c] = 0.0f;
    float m = -CUDART_INF_F, l = 0.0f;
    for (int kt = 0; kt <= qt; ++kt) {
        const int k0 = kt * TC_TILE;
        __syncthreads();  // the previous tile's k and v are no longer read
        load_tile<D>(&sm.k[0][0], k, g, g.kv_heads, b, k0, kh);
        load_tile<D>(&sm.v[0][0], v, g, g.kv_heads, b, k0, kh);
        __syncthreads();
        rows_times_tile_t<D>(&sm.s[warp * 16][0], &sm.q[warp * 16][0], &sm.k[0][0]);
        __syncwarp();
        // Online softmax of this lane's half row (32 scores).
        float tile_max = -CUDART_INF_F;
        for (int c = half * 32; c < half * 32 + 32; ++c) {
            const int s = k0 + c;
            if (s <= t && s < g.seq && t < g.seq) tile_max = fmaxf(tile_max, sm.s[row][c] * scale);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        const float correction = m_new == -CUDART_INF_F ? 1.0f : expf(m - m_new);
        float sum = 0.0f;
        for (int c = half * 32; c < half * 32 + 32; ++c) {
            const int s = k0 + c;
            float p = 0.0f;
            if (s <= t && s < g.seq && t < g.seq) p = expf(sm.s[row][c] * scale - m_new);
            sm.p[row][c] = __float2bfloat16_rn(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * correction + sum;
        m = m_new;
        __syncwarp();
        FragC pv[D / 16];
        for (int j = 0; j < D / 16; ++j) fill_zero(pv[j]);
        accumulate_rows_times_tile<D>(pv, &sm.p[warp * 16][0], &sm.v[0][0]);
        for (int j = 0; j < D / 16; ++j)
            store(&sm.o[warp * 16][j * 16], pv[j], D + 4);
        __syncwarp();
        for (int c = 0; c < D / 2; ++c) acc[c] = acc[c] * correction + sm.o[row][half * (D / 2) + c];
    }
    if (t < g.seq) {
        const long long at = g.at(g.heads, b, t, h, D) + half * (D / 2);
        for (int c = 0; c < D / 2; ++c) store(o, at + c, acc[c] / l);
        if (half == 0) lse[((long long)b * g.heads + h) * g.seq + t] = m + logf(l);
    }
}

template <int D>
struct TcBackwardSmem {
    bf16 a[TC_ROWS][D + 8];   // q (dQ blocks) or k (dK/dV blocks): the block's own rows
    bf16 b[TC_ROWS][D + 8];   // do (dQ blocks) or v (dK/dV blocks): the block's own rows
    bf16 x[TC_TILE][D + 8];   // k (dQ) or q (dK/dV): the walked tile
    bf16 y[TC_TILE][D + 8];   // v (dQ) or do (dK/dV): the walked tile
    float s[TC_ROWS][TC_TILE + 4], dp[TC_ROWS][TC_TILE + 4];
    bf16 p[TC_ROWS][TC_TILE + 8], ds[TC_ROWS][TC_TILE + 8];
    float lse[TC_TILE], delta[TC_TILE];   // of the query rows involved
    float stage[TC_WARPS][256];
};

// delta[r] = do_t · o_t for the 64 query rows from t0 (0 past seq); lse[r] likewise.
template <int D>
__device__ void load_row_stats(float* lse_out, float* delta, const bf16* o, const bf16* d_o,
                               const float* lse, const TcGeometry& g, int b, int t0, int h) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int r = warp; r < TC_ROWS; r += TC_WARPS) {
        const int t = t0 + r;
        float d = 0.0f;
        if (t < g.seq) {
            const long long at = g.at(g.heads, b, t, h, D);
            for (int c = lane; c < D; c += 32) d += load(d_o, at + c) * load(o, at + c);
        }
        d = warp_sum(d);
        if (lane == 0) {
            delta[r] = d;
            lse_out[r] = t < g.seq ? lse[((long long)b * g.heads + h) * g.seq + t] : 0.0f;
        }
    }
}

// attention_backward_bf16_d{64,128}: the arguments of attention_backward_bf16.
// grid: batch·kv_heads·tiles (dK/dV blocks, one per key tile, first: they run longest) +
// batch·heads·tiles (dQ blocks, one per query tile), tiles = ceil(seq/64); block: 128; dynamic
// shared memory
// sizeof(TcBackwardSmem<D>). No atomics: every output row has one writer.
//   dQ block (queries t of one head h):   dq_t = Σ_{s ≤ t} dS_ts · k_s
//   dK/dV block (keys s of kv head kh):  over the group's heads and every t ≥ s,
//                                         dv_s = Σ P_ts · do_t,   dk_s = Σ dS_ts · q_t
// with P_ts = exp(q_t·k_s·scale − lse_t), dS_ts = P_ts·(do_t·v_s − do_t·o_t)·scale.
template <int D>
__device__ void attention_backward_tc(const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                                      const float* lse, const bf16* d_o, bf16* dq, bf16* dk,
                                      bf16* dv, TcGeometry g, int accumulate) {
    extern __shared__ __align__(128) unsigned char smem_raw[];
    TcBackwardSmem<D>& sm = *reinterpret_cast<TcBackwardSmem<D>*>(smem_raw);
    const int tiles = (g.seq + TC_ROWS - 1) / TC_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float scale = 1.0f / sqrtf((float)D);
    const int kv_blocks = g.batch * g.kv_heads * tiles;
    const int w0 = warp * 16;
    if ((int)blockIdx.x >= kv_blocks) {
        const int id = blockIdx.x - kv_blocks;
        const int qt = tiles - 1 - id % tiles;
        const int bh = id / tiles, b = bh / g.heads, h = bh % g.heads;
        const int kh = h / (g.heads / g.kv_heads);
        const int q0 = qt * TC_ROWS;
        load_tile<D>(&sm.a[0][0], q, g, g.heads, b, q0, h);
        load_tile<D>(&sm.b[0][0], d_o, g, g.heads, b, q0, h);
        load_row_stats<D>(sm.lse, sm.delta, o, d_o, lse, g, b, q0, h);
        FragC acc[D / 16];
        for (int j = 0; j < D / 16; ++j) fill_zero(acc[j]);
        for (int kt = 0; kt <= qt; ++kt) {
            const int k0 = kt * TC_TILE;
            __syncthreads();
            load_tile<D>(&sm.x[0][0], k, g, g.kv_heads, b, k0, kh);
            load_tile<D>(&sm.y[0][0], v, g, g.kv_heads, b, k0, kh);
            __syncthreads();
            rows_times_tile_t<D>(&sm.s[w0][0], &sm.a[w0][0], &sm.x[0][0]);   // q·kᵀ
            rows_times_tile_t<D>(&sm.dp[w0][0], &sm.b[w0][0], &sm.y[0][0]);  // do·vᵀ
            __syncwarp();
            for (int e = lane; e < 16 * TC_TILE; e += 32) {
                const int r = w0 + e / TC_TILE, c = e % TC_TILE;
                const int t = q0 + r, s = k0 + c;
                float ds = 0.0f;
                if (s <= t && t < g.seq) {
                    const float p = expf(sm.s[r][c] * scale - sm.lse[r]);
                    ds = p * (sm.dp[r][c] - sm.delta[r]) * scale;
                }
                sm.ds[r][c] = __float2bfloat16_rn(ds);
            }
            __syncwarp();
            accumulate_rows_times_tile<D>(acc, &sm.ds[w0][0], &sm.x[0][0]);  // dS·k
        }
        store_rows<D>(dq, acc, sm.stage[warp], g, g.heads, b, q0 + w0, h, accumulate);
    } else {
        const int id = blockIdx.x;
        const int kt = id % tiles;  // the longest (earliest keys) first
        const int bk = id / tiles, b = bk / g.kv_heads, kh = bk % g.kv_heads;
        const int k0 = kt * TC_ROWS;
        load_tile<D>(&sm.a[0][0], k, g, g.kv_heads, b, k0, kh);
        load_tile<D>(&sm.b[0][0], v, g, g.kv_heads, b, k0, kh);
        FragC acc_k[D / 16], acc_v[D / 16];
        for (int j = 0; j < D / 16; ++j) {
            fill_zero(acc_k[j]);
            fill_zero(acc_v[j]);
        }
        const int group = g.heads / g.kv_heads;
        for (int h = kh * group; h < (kh + 1) * group; ++h) {
            for (int qt = kt; qt < tiles; ++qt) {
                const int q0 = qt * TC_TILE;
                __syncthreads();
                load_tile<D>(&sm.x[0][0], q, g, g.heads, b, q0, h);
                load_tile<D>(&sm.y[0][0], d_o, g, g.heads, b, q0, h);
                load_row_stats<D>(sm.lse, sm.delta, o, d_o, lse, g, b, q0, h);
                __syncthreads();
                rows_times_tile_t<D>(&sm.s[w0][0], &sm.a[w0][0], &sm.x[0][0]);   // (q·kᵀ)ᵀ
                rows_times_tile_t<D>(&sm.dp[w0][0], &sm.b[w0][0], &sm.y[0][0]);  // (do·vᵀ)ᵀ
                __syncwarp();
                for (int e = lane; e < 16 * TC_TILE; e += 32) {
                    const int r = w0 + e / TC_TILE, c = e % TC_TILE;
                    const int s = k0 + r, t = q0 + c;
                    float p = 0.0f, ds = 0.0f;
                    if (s <= t && t < g.seq && s < g.seq) {
                        p = expf(sm.s[r][c] * scale - sm.lse[c]);
                        ds = p * (sm.dp[r][c] - sm.delta[c]) * scale;
                    }
                    sm.p[r][c] = __float2bfloat16_rn(p);
                    sm.ds[r][c] = __float2bfloat16_rn(ds);
                }
                __syncwarp();
                accumulate_rows_times_tile<D>(acc_v, &sm.p[w0][0], &sm.y[0][0]);   // Pᵀ·do
                accumulate_rows_times_tile<D>(acc_k, &sm.ds[w0][0], &sm.x[0][0]);  // dSᵀ·q
            }
        }
        store_rows<D>(dk, acc_k, sm.stage[warp], g, g.kv_heads, b, k0 + w0, kh, accumulate);
        store_rows<D>(dv, acc_v, sm.stage[warp], g, g.kv_heads, b, k0 + w0, kh, accumulate);
    }
}

#define TC_ENTRIES(D)                                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) attention_tc_bf16_d##D(                  \
        const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse, int batch, int seq,      \
        int heads, int kv_heads, int head_dim) {                                                   \
        attention_tc<D>(q, k, v, o, lse, TcGeometry{batch, seq, heads, kv_heads});                 \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS) attention_tc_backward_bf16_d##D(         \
        const bf16* q, const bf16* k, const bf16* v, const bf16* o, const float* lse,              \
        const bf16* d_o, bf16* dq, bf16* dk, bf16* dv, int batch, int seq, int heads,              \
        int kv_heads, int head_dim, int accumulate) {                                              \
        attention_backward_tc<D>(q, k, v, o, lse, d_o, dq, dk, dv,                                 \
                                 TcGeometry{batch, seq, heads, kv_heads}, accumulate);             \
    }

TC_ENTRIES(64)
TC_ENTRIES(128)
