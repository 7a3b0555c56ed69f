// fp8_tile.cuh: the 64×64 tile of FP8 bytes through which transpose.cu and quantize.cu write
// a [rows, cols] matrix's transpose t [cols, rows] (t[c][r] = x[r][c]).
//
// A block owns one tile: block b covers rows r0.. and columns c0.. of x (tile_origin). It fills
// the shared tile with the bytes of its values (each kernel in its own way), synchronises, and
// store_tile_transposed writes them out. Tiles that are whole, with cols and rows multiples of 16
// and both pointers 16-byte aligned (every model's matrices), are written 16 bytes of one t row
// (sixteen rows of x) per thread; the others (the edges of odd shapes) byte by byte.
#pragma once

#define FT_TILE 64
#define FT_THREADS 256
#define FT_VEC 16

// Rows padded by 4 bytes: the column reads of the store phase spread over the banks.
struct ByteTile {
    unsigned char b[FT_TILE][FT_TILE + 4];
};

// Row and column of x where this block's tile starts.
__device__ __forceinline__ void tile_origin(int cols, long long* r0, int* c0) {
    const int col_tiles = (cols + FT_TILE - 1) / FT_TILE;
    *r0 = (long long)(blockIdx.x / col_tiles) * FT_TILE;
    *c0 = (int)(blockIdx.x % col_tiles) * FT_TILE;
}

// True when the tile at (r0, c0) takes the 16-byte paths for these two byte arrays.
__device__ __forceinline__ bool vector_tile(long long r0, int c0, long long rows, int cols,
                                            const void* a, const void* b) {
    return r0 + FT_TILE <= rows && c0 + FT_TILE <= cols && cols % FT_VEC == 0 &&
           rows % FT_VEC == 0 && reinterpret_cast<unsigned long long>(a) % FT_VEC == 0 &&
           reinterpret_cast<unsigned long long>(b) % FT_VEC == 0;
}

// Writes the filled tile into t [cols, rows]; the caller synchronised after filling it.
__device__ __forceinline__ void store_tile_transposed(const ByteTile& tile, unsigned char* t,
                                                      long long rows, int cols, long long r0,
                                                      int c0, bool vector) {
    if (vector) {
        const int per_row = FT_TILE / FT_VEC;  // 16-byte pieces of a row of t's tile
        for (int k = threadIdx.x; k < FT_TILE * per_row; k += FT_THREADS) {
            const int tc = k / per_row, tr = (k % per_row) * FT_VEC;
            unsigned int w[4];
            for (int q = 0; q < 4; ++q) {
                w[q] = 0;
                for (int j = 0; j < 4; ++j) {
                    w[q] |= (unsigned int)tile.b[tr + 4 * q + j][tc] << (8 * j);
                }
            }
            *reinterpret_cast<uint4*>(t + (long long)(c0 + tc) * rows + r0 + tr) =
                make_uint4(w[0], w[1], w[2], w[3]);
        }
        return;
    }
    for (int k = threadIdx.x; k < FT_TILE * FT_TILE; k += FT_THREADS) {
        const int tc = k / FT_TILE, tr = k % FT_TILE;
        const int c = c0 + tc;
        const long long r = r0 + tr;
        if (c < cols && r < rows) t[(long long)c * rows + r] = tile.b[tr][tc];
    }
}
