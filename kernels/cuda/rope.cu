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

// One block's items are (chunk of sequences, position) pairs, item = chunk·seq + pos, with
// chunks = max(1, gridDim.x / seq) and per = ceil(sequences / chunks) sequences a chunk; block
// b takes items b, b + gridDim.x, ... (one each when the grid is seq·chunks). `y` may alias
// `x`: each element is read and written by the same thread.
template <typename T>
__device__ void rotate(const T* x, T* y, long long rows, int seq, int channels, int head_dim,
                       float theta, float sign, int accumulate) {
    __shared__ __align__(16) float cos_s[ROPE_MAX_HALF];
    __shared__ __align__(16) float sin_s[ROPE_MAX_HALF];
    const int half = head_dim / 2;
    // Uniform over the grid (never true under the launcher), so no thread skips a barrier.
    if (half > ROPE_MAX_HALF || half <= 0 || channels < head_dim || seq <= 0 || rows <= 0) return;
    const bool wide = half % ROPE_WIDTH == 0;
    const int width = wide ? ROPE_WIDTH : 1;
    const int groups = half / width;
    const int heads = channels / head_dim;
    // Units of one row at one position: (head, group) pairs, group fastest (consecutive threads
    // read consecutive 16-byte runs of a head).
    const int per_row = heads * groups;
    const long long sequences = rows / seq;
    const long long chunks = max(1ll, (long long)gridDim.x / seq);
    const long long per = (sequences + chunks - 1) / chunks;
    const long long items = chunks * seq;
    const long long n = rows * channels;
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
        // Unit r of sequence b: head r / groups, pairs from (r % groups)·width.
        long long b = first + (int)threadIdx.x / per_row;
        int r = (int)threadIdx.x % per_row;
        while (b < last) {
            const int h = r / groups, group = r % groups;
            const int i0 = group * width;
            const long long at = (b * seq + pos) * channels + (long long)h * head_dim + i0;
            if (wide) {
                // i0 is a multiple of 8: 16-byte aligned in the aligned arrays.
                const float4 c0 = *reinterpret_cast<const float4*>(cos_s + i0);
                const float4 c1 = *reinterpret_cast<const float4*>(cos_s + i0 + 4);
                const float4 s0 = *reinterpret_cast<const float4*>(sin_s + i0);
                const float4 s1 = *reinterpret_cast<const float4*>(sin_s + i0 + 4);
                const float c[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
                const float s[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
                float a[8], bb[8], lo[8], hi[8];
                load8(x, at, n, a);
                load8(x, at + half, n, bb);
                for (int k = 0; k < 8; ++k) {
                    lo[k] = a[k] * c[k] - bb[k] * s[k];
                    hi[k] = bb[k] * c[k] + a[k] * s[k];
                }
                if (accumulate) {
                    float old_lo[8], old_hi[8];
                    load8(y, at, n, old_lo);
                    load8(y, at + half, n, old_hi);
                    for (int k = 0; k < 8; ++k) {
                        lo[k] += old_lo[k];
                        hi[k] += old_hi[k];
                    }
                }
                store8(y, at, n, lo);
                store8(y, at + half, n, hi);
            } else {
                const float c = cos_s[i0], s = sin_s[i0];
                const float a = load(x, at), bb = load(x, at + half);
                store_acc(y, at, a * c - bb * s, accumulate);
                store_acc(y, at + half, bb * c + a * s, accumulate);
            }
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
