// transpose_fp8_{fmt}(const unsigned char* x, unsigned char* t, long long rows, int cols)
// `x` is [rows, cols] row-major FP8 (one byte per element), `t` is [cols, rows]: t[c][r] =
// x[r][c], bytes copied unchanged (the descale is the source's). fmt: e4m3, e5m2.
// grid: ceil(rows/TR_TILE)·ceil(cols/TR_TILE), block: TR_THREADS.
// A block moves one 64×64 tile through shared memory. A whole tile whose rows start 16-byte
// aligned (cols and rows multiples of 16, as every model's are) is read 16 bytes of one x row
// per thread and written 16 bytes of one t row (sixteen rows of x) per thread; other tiles
// (the edges of odd shapes) go byte by byte.
#define TR_TILE 64
#define TR_THREADS 256
#define TR_VEC 16

__device__ void transpose_bytes(const unsigned char* x, unsigned char* t, long long rows,
                                int cols) {
    // Rows padded by 4 bytes: the column reads of the store phase spread over the banks.
    __shared__ __align__(16) unsigned char tile[TR_TILE][TR_TILE + 4];
    const int col_tiles = (cols + TR_TILE - 1) / TR_TILE;
    const long long r0 = (long long)(blockIdx.x / col_tiles) * TR_TILE;
    const int c0 = (int)(blockIdx.x % col_tiles) * TR_TILE;
    const bool vector = r0 + TR_TILE <= rows && c0 + TR_TILE <= cols && cols % TR_VEC == 0 &&
                        rows % TR_VEC == 0 &&
                        reinterpret_cast<unsigned long long>(x) % TR_VEC == 0 &&
                        reinterpret_cast<unsigned long long>(t) % TR_VEC == 0;
    const int per_row = TR_TILE / TR_VEC;  // 16-byte pieces of a tile row
    if (vector) {
        for (int k = threadIdx.x; k < TR_TILE * per_row; k += TR_THREADS) {
            const int tr = k / per_row, tc = (k % per_row) * TR_VEC;
            const uint4 v = *reinterpret_cast<const uint4*>(x + (r0 + tr) * cols + c0 + tc);
            unsigned int* dst = reinterpret_cast<unsigned int*>(&tile[tr][tc]);
            dst[0] = v.x;
            dst[1] = v.y;
            dst[2] = v.z;
            dst[3] = v.w;
        }
        __syncthreads();
        for (int k = threadIdx.x; k < TR_TILE * per_row; k += TR_THREADS) {
            const int tc = k / per_row, tr = (k % per_row) * TR_VEC;
            unsigned int w[4];
            for (int q = 0; q < 4; ++q) {
                w[q] = 0;
                for (int j = 0; j < 4; ++j) {
                    w[q] |= (unsigned int)tile[tr + 4 * q + j][tc] << (8 * j);
                }
            }
            *reinterpret_cast<uint4*>(t + (long long)(c0 + tc) * rows + r0 + tr) =
                make_uint4(w[0], w[1], w[2], w[3]);
        }
        return;
    }
    for (int k = threadIdx.x; k < TR_TILE * TR_TILE; k += TR_THREADS) {
        const int tr = k / TR_TILE, tc = k % TR_TILE;
        const long long r = r0 + tr;
        const int c = c0 + tc;
        tile[tr][tc] = (r < rows && c < cols) ? x[r * cols + c] : 0;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < TR_TILE * TR_TILE; k += TR_THREADS) {
        const int tc = k / TR_TILE, tr = k % TR_TILE;
        const int c = c0 + tc;
        const long long r = r0 + tr;
        if (c < cols && r < rows) t[(long long)c * rows + r] = tile[tr][tc];
    }
}

#define TRANSPOSE_ENTRY(NAME)                                                                   \
    extern "C" __global__ void NAME(const unsigned char* x, unsigned char* t, long long rows,    \
                                    int cols) {                                                 \
        transpose_bytes(x, t, rows, cols);                                                      \
    }

TRANSPOSE_ENTRY(transpose_fp8_e4m3)
TRANSPOSE_ENTRY(transpose_fp8_e5m2)
