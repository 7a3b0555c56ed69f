// rope: rotary position embedding, rotate-half convention (element i of a head pairs with
// i + head_dim/2), position = row index modulo seq (ops/rope.rs). rope_backward rotates by the
// negative angle. The angles follow the CPU reference bit for bit where it can: inv_freq is
// 1/theta^(2i/d) computed in double and rounded to float, the angle is the float product
// pos·inv_freq, and its sine and cosine are taken in double and rounded to float.
#include "common.cuh"

// One thread per rotated pair: `rows · channels/2` pairs; `y` may alias `x`.
template <typename T>
__device__ void rotate(const T* x, T* y, long long rows, int seq, int channels, int head_dim,
                       float theta, float sign, int accumulate) {
    const int half = head_dim / 2;
    const int pairs_per_row = channels / 2;
    const long long n = rows * pairs_per_row;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < n;
         p += (long long)gridDim.x * blockDim.x) {
        const long long row = p / pairs_per_row;
        const int in_row = (int)(p % pairs_per_row);
        const int head = in_row / half, i = in_row % half;
        const float pos = (float)(row % seq);
        const float inv_freq = (float)(1.0 / pow((double)theta, 2.0 * i / (double)head_dim));
        const float angle = pos * inv_freq;
        const float s = (float)sin((double)angle) * sign;
        const float c = (float)cos((double)angle);
        const long long at = row * channels + (long long)head * head_dim + i;
        const float a = load(x, at), b = load(x, at + half);
        store_acc(y, at, a * c - b * s, accumulate);
        store_acc(y, at + half, b * c + a * s, accumulate);
    }
}

// rope_{f32,bf16}(const T* x, T* y, long long rows, int seq, int channels, int head_dim,
//                 float theta)
// rows = all leading dimensions times seq; channels = heads·head_dim.
// grid: any (grid-stride over rows·channels/2), block: any.
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
