// rope: RoPE of every head of a tensor (ops/rope.rs); rope_backward rotates by the negative
// angle. The position loop and the rotation are rope.cuh's.
#include "rope.cuh"

// `y` may alias `x`: each element is read and written by the same thread. W: pairs per unit.
template <int W, typename T>
__device__ void rotate_units(const T* x, T* y, long long rows, int seq, int channels,
                             int head_dim, float theta, float sign, int accumulate) {
    const int half = head_dim / 2;
    const int groups = half / W;
    const long long n = rows * channels;
    // Units of one row: (head, group) pairs, group fastest (consecutive threads read
    // consecutive 16-byte runs of a head).
    const int per_row = channels >= head_dim ? (channels / head_dim) * groups : 0;
    for_each_position(rows, seq, head_dim, theta, sign, per_row,
                      [&](long long row, int r, const float* cos_s, const float* sin_s) {
        const int i0 = (r % groups) * W;
        const long long at = row * channels + (long long)(r / groups) * head_dim + i0;
        float a[W], b[W];
        load_n<W>(x, at, n, a);
        load_n<W>(x, at + half, n, b);
        rotate_pairs<W>(cos_s, sin_s, i0, a, b);
        if (accumulate) {
            float old_a[W], old_b[W];
            load_n<W>(y, at, n, old_a);
            load_n<W>(y, at + half, n, old_b);
#pragma unroll
            for (int j = 0; j < W; ++j) {
                a[j] += old_a[j];
                b[j] += old_b[j];
            }
        }
        store_n<W>(y, at, n, a);
        store_n<W>(y, at + half, n, b);
    });
}

template <typename T>
__device__ void rotate(const T* x, T* y, long long rows, int seq, int channels, int head_dim,
                       float theta, float sign, int accumulate) {
    if ((head_dim / 2) % ROPE_WIDTH == 0)
        rotate_units<ROPE_WIDTH>(x, y, rows, seq, channels, head_dim, theta, sign, accumulate);
    else
        rotate_units<1>(x, y, rows, seq, channels, head_dim, theta, sign, accumulate);
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
