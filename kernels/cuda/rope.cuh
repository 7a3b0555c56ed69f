// rope.cuh: rotary position embedding, rotate-half convention (element i of a head pairs with
// i + head_dim/2), position = row index modulo seq (ops/rope.rs), shared by rope.cu and
// split_rope.cu. The angles follow the CPU reference bit for bit where it can: inv_freq is
// 1/theta^(2i/d) computed in double and rounded to float, the angle is the float product
// pos·inv_freq, and its sine and cosine are taken in double and rounded to float.
//
// Those double-precision pow/sin/cos cost far more than the memory traffic, and every head of
// every sequence at one position shares them. So each block takes one position of a chunk of
// sequences: its threads first compute that position's half = head_dim/2 angles once, one pair
// index per thread, into shared memory; after a barrier all threads of the block stride over
// the chunk's (sequence, head, group of pairs) units of that position, so the threads of the
// grid grow with the batch. With half a multiple of ROPE_WIDTH, a unit is ROPE_WIDTH
// consecutive pairs, read and written 16 bytes at a time (load8/store8); otherwise one pair. The
// kernels take the width as a template argument (their entries pick it).
#pragma once

#include "common.cuh"

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
#define ROPE_KERNEL extern "C" __global__ void __launch_bounds__(ROPE_BLOCK, ROPE_MIN_BLOCKS)

// W values at once (W is ROPE_WIDTH or 1, a template argument so that the arrays below stay in
// registers: with a runtime width the loops over it kept them in local memory): ROPE_WIDTH
// through load8/store8 (16-byte vectors where aligned), or one.
template <int W, typename T>
__device__ __forceinline__ void load_n(const T* p, long long i, long long n, float v[W]) {
    if constexpr (W == ROPE_WIDTH) load8(p, i, n, v);
    else v[0] = load(p, i);
}
template <int W, typename T>
__device__ __forceinline__ void store_n(T* p, long long i, long long n, const float v[W]) {
    if constexpr (W == ROPE_WIDTH) store8(p, i, n, v);
    else store(p, i, v[0]);
}

// Rotates the W pairs (a[j], b[j]) by the angles of pair indices i0 + j, in place:
// a·cos − b·sin, b·cos + a·sin. With W = ROPE_WIDTH, i0 is a multiple of 8: 16-byte aligned in
// the aligned angle arrays.
template <int W>
__device__ __forceinline__ void rotate_pairs(const float* cos_s, const float* sin_s, int i0,
                                             float a[W], float b[W]) {
    float c[W], s[W];
    if constexpr (W == ROPE_WIDTH) {
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
#pragma unroll
    for (int j = 0; j < W; ++j) {
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
