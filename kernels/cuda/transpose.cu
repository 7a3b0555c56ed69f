// transpose_fp8_{fmt}(const unsigned char* x, unsigned char* t, long long rows, int cols)
// `x` is [rows, cols] row-major FP8 (one byte per element), `t` is [cols, rows]: t[c][r] =
// x[r][c], bytes copied unchanged (the descale is the source's). fmt: e4m3, e5m2.
// grid: ceil(rows/FT_TILE)·ceil(cols/FT_TILE), block: FT_THREADS.
// A block moves one 64×64 tile through shared memory (fp8_tile.cuh). A whole aligned tile is
// read 16 bytes of one x row per thread; other tiles byte by byte.
#include "fp8_tile.cuh"

__device__ void transpose_bytes(const unsigned char* x, unsigned char* t, long long rows,
                                int cols) {
    __shared__ __align__(16) ByteTile tile;
    long long r0;
    int c0;
    tile_origin(cols, &r0, &c0);
    const bool vector = vector_tile(r0, c0, rows, cols, x, t);
    if (vector) {
        const int per_row = FT_TILE / FT_VEC;  // 16-byte pieces of a tile row
        for (int k = threadIdx.x; k < FT_TILE * per_row; k += FT_THREADS) {
            const int tr = k / per_row, tc = (k % per_row) * FT_VEC;
            const uint4 v = *reinterpret_cast<const uint4*>(x + (r0 + tr) * cols + c0 + tc);
            unsigned int* dst = reinterpret_cast<unsigned int*>(&tile.b[tr][tc]);
            dst[0] = v.x;
            dst[1] = v.y;
            dst[2] = v.z;
            dst[3] = v.w;
        }
    } else {
        for (int k = threadIdx.x; k < FT_TILE * FT_TILE; k += FT_THREADS) {
            const int tr = k / FT_TILE, tc = k % FT_TILE;
            const long long r = r0 + tr;
            const int c = c0 + tc;
            tile.b[tr][tc] = (r < rows && c < cols) ? x[r * cols + c] : 0;
        }
    }
    __syncthreads();
    store_tile_transposed(tile, t, rows, cols, r0, c0, vector);
}

#define TRANSPOSE_ENTRY(NAME)                                                                   \
    extern "C" __global__ void NAME(const unsigned char* x, unsigned char* t, long long rows,    \
                                    int cols) {                                                 \
        transpose_bytes(x, t, rows, cols);                                                      \
    }

TRANSPOSE_ENTRY(transpose_fp8_e4m3)
TRANSPOSE_ENTRY(transpose_fp8_e5m2)
