// rope: rotary position embedding, rotate-half convention (element i of a head pairs with
// i + head_dim/2), position = row index modulo seq (ops/rope.rs). rope_backward rotates by the
// negative angle. The angles follow the CPU reference bit for bit where it can: inv_freq is
// 1/theta^(2i/d) computed in double and rounded to float, the angle is the float product
// pos·inv_freq, and its sine and cosine are taken in double and rounded to float.
//
// Those double-precision pow/sin/cos cost far more than the memory traffic, so each thread
// computes the angles of one position and ROPE_WIDTH consecutive pair indices once and applies
// them to every head of ROPE_BATCH rows at that position (all heads of a row share the angles,
// as do the rows of one position across the batch). With half = head_dim/2 a multiple of
// ROPE_WIDTH, each head's run of pairs is read and written 16 bytes at a time (load8/store8).
#include "common.cuh"

#define ROPE_WIDTH 8
#define ROPE_BATCH 4

// Pairs a thread rotates per head: ROPE_WIDTH where it divides head_dim/2, else 1.
__device__ __forceinline__ int rope_width(int head_dim) {
    return (head_dim / 2) % ROPE_WIDTH == 0 ? ROPE_WIDTH : 1;
}

// Work items: (chunk of ROPE_BATCH sequences, position, group of `width` pairs) triples; the
// launcher sizes its grid-stride grid by the same count. `y` may alias `x` (each element is
// read and written by the same thread).
template <typename T>
__device__ void rotate(const T* x, T* y, long long rows, int seq, int channels, int head_dim,
                       float theta, float sign, int accumulate) {
    const int half = head_dim / 2;
    const int width = rope_width(head_dim);
    const int groups = half / width;
    const int heads = channels / head_dim;
    const long long sequences = rows / seq;
    const long long chunks = (sequences + ROPE_BATCH - 1) / ROPE_BATCH;
    const long long items = chunks * seq * groups;
    const long long n = rows * channels;
    for (long long item = blockIdx.x * (long long)blockDim.x + threadIdx.x; item < items;
         item += (long long)gridDim.x * blockDim.x) {
        const int group = (int)(item % groups);
        const int pos = (int)((item / groups) % seq);
        const long long chunk = item / ((long long)groups * seq);
        float c[ROPE_WIDTH], s[ROPE_WIDTH];
        for (int k = 0; k < width; ++k) {
            const int i = group * width + k;
            const float inv_freq = (float)(1.0 / pow((double)theta, 2.0 * i / (double)head_dim));
            const float angle = (float)pos * inv_freq;
            s[k] = (float)sin((double)angle) * sign;
            c[k] = (float)cos((double)angle);
        }
        const long long last = min(sequences, (chunk + 1) * ROPE_BATCH);
        for (long long b = chunk * ROPE_BATCH; b < last; ++b) {
            const long long row = b * seq + pos;
            for (int h = 0; h < heads; ++h) {
                const long long at = row * channels + (long long)h * head_dim + group * width;
                if (width == ROPE_WIDTH) {
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
                    const float a = load(x, at), bb = load(x, at + half);
                    store_acc(y, at, a * c[0] - bb * s[0], accumulate);
                    store_acc(y, at + half, bb * c[0] + a * s[0], accumulate);
                }
            }
        }
    }
}

// rope_{f32,bf16}(const T* x, T* y, long long rows, int seq, int channels, int head_dim,
//                 float theta)
// rows = all leading dimensions times seq; channels = heads·head_dim.
// grid: any (grid-stride over ceil(rows/seq / ROPE_BATCH)·seq·(head_dim/2)/width items, width =
// ROPE_WIDTH when it divides head_dim/2, else 1), block: any.
// rope_backward_{f32,bf16}(const T* dy, T* dx, long long rows, int seq, int channels,
//                          int head_dim, float theta, int accumulate)
// Same layout and launch shape; `accumulate` must be 0 when `dx` aliases `dy`.
extern "C" __global__ void rope_f32(const float* x, float* y, long long rows, int seq, int channels,
                                    int head_dim, float theta) {
    rotate(x, y, rows, seq, channels, head_dim, theta, 1.0f, 0);
}
extern "C" __global__ void rope_bf16(const bf16* x, bf16* y, long long rows, int seq, int channels,
                                     int head_dim, float theta) {
    rotate(x, y, rows, seq, channels, head_dim, theta, 1.0f, 0);
}
extern "C" __global__ void rope_backward_f32(const float* dy, float* dx, long long rows, int seq,
                                             int channels, int head_dim, float theta, int accumulate) {
    rotate(dy, dx, rows, seq, channels, head_dim, theta, -1.0f, accumulate);
}
extern "C" __global__ void rope_backward_bf16(const bf16* dy, bf16* dx, long long rows, int seq,
                                              int channels, int head_dim, float theta, int accumulate) {
    rotate(dy, dx, rows, seq, channels, head_dim, theta, -1.0f, accumulate);
}
