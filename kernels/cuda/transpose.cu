// transpose_fp8_{fmt}(const unsigned char* x, unsigned char* t, long long rows, int cols)
// `x` is [rows, cols] row-major FP8 (one byte per element), `t` is [cols, rows]: t[c][r] =
// x[r][c], bytes copied unchanged (the descale is the source's). fmt: e4m3, e5m2.
// grid: ceil(rows/TR_TILE)·ceil(cols/TR_TILE), block: TR_THREADS.
// A block moves one 64×64 tile through shared memory: it reads x's rows four bytes per thread
// where they are 4-byte aligned and writes t's rows four bytes (four rows of x) per thread.
#define TR_TILE 64
#define TR_THREADS 256

__device__ void transpose_bytes(const unsigned char* x, unsigned char* t, long long rows,
                                int cols) {
    __shared__ unsigned char tile[TR_TILE][TR_TILE + 4];
    const int col_tiles = (cols + TR_TILE - 1) / TR_TILE;
    const long long r0 = (long long)(blockIdx.x / col_tiles) * TR_TILE;
    const int c0 = (int)(blockIdx.x % col_tiles) * TR_TILE;
    for (int k = threadIdx.x; k < TR_TILE * TR_TILE; k += TR_THREADS) {
        const int tr = k / TR_TILE, tc = k % TR_TILE;
        const long long r = r0 + tr;
        const int c = c0 + tc;
        tile[tr][tc] = (r < rows && c < cols) ? x[r * cols + c] : 0;
    }
    __syncthreads();
    const bool aligned = rows % 4 == 0;
    for (int k = threadIdx.x; k < TR_TILE * (TR_TILE / 4); k += TR_THREADS) {
        const int tc = k / (TR_TILE / 4), tr = (k % (TR_TILE / 4)) * 4;
        const int c = c0 + tc;
        const long long r = r0 + tr;
        if (c >= cols || r >= rows) continue;
        unsigned char* out = t + (long long)c * rows + r;
        if (aligned && r + 4 <= rows) {
            unsigned int word = 0;
            for (int j = 0; j < 4; ++j) word |= (unsigned int)tile[tr + j][tc] << (8 * j);
            *reinterpret_cast<unsigned int*>(out) = word;
        } else {
            for (int j = 0; j < 4 && r + j < rows; ++j) out[j] = tile[tr + j][tc];
        }
    }
}

#define TRANSPOSE_ENTRY(NAME)                                                                   \
    extern "C" __global__ void NAME(const unsigned char* x, unsigned char* t, long long rows,    \
                                    int cols) {                                                 \
        transpose_bytes(x, t, rows, cols);                                                      \
    }

TRANSPOSE_ENTRY(transpose_fp8_e4m3)
TRANSPOSE_ENTRY(transpose_fp8_e5m2)
