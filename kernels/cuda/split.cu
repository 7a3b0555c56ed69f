// copy_columns: the copies of split and concat between a packed tensor and its parts
// (ops/split.rs).
#include "common.cuh"

// The part holding column c of a packed row, and the part's first column there.
__device__ __forceinline__ int part_of(long long c, const long long cols[4], long long* start) {
    int k = 0;
    *start = 0;
    while (c >= *start + cols[k]) *start += cols[k++];
    return k;
}

// copy_columns_{f32,bf16}(T* packed, T* part0, T* part1, T* part2, T* part3, long long cols0,
//                         long long cols1, long long cols2, long long cols3, long long rows,
//                         int to_packed)
// grid: any (grid-stride over groups of eight packed elements), block: any.
// Row r of `packed` holds row r of each part side by side, part k in the cols_k columns after
// those of the parts before it; unused parts have 0 columns (their pointers are not read).
// to_packed = 0: split (packed → parts); 1: concat (parts → packed). Eight elements of one
// part's row at a vector-aligned place in the part move as 16-byte vectors.
template <typename T>
__device__ void copy_columns(T* packed, T* const part[4], const long long cols[4], long long rows,
                             int to_packed) {
    const long long total = cols[0] + cols[1] + cols[2] + cols[3];
    const long long n = rows * total;
    for (long long i = first8(); i < n; i += stride8()) {
        const long long r = i / total, c = i % total;
        long long start;
        const int k = part_of(c, cols, &start);
        const long long j = r * cols[k] + (c - start);  // the element's index in part k
        if (c + 8 <= start + cols[k] && j % 8 == 0) {
            float v[8];
            if (to_packed) {
                load8(part[k], j, j + 8, v);
                store8(packed, i, n, v);
            } else {
                load8(packed, i, n, v);
                store8(part[k], j, j + 8, v);
            }
            continue;
        }
        for (long long e = i; e < i + 8 && e < n; ++e) {
            const long long re = e / total, ce = e % total;
            long long s;
            const int ke = part_of(ce, cols, &s);
            const long long je = re * cols[ke] + (ce - s);
            if (to_packed) {
                store(packed, e, load(part[ke], je));
            } else {
                store(part[ke], je, load(packed, e));
            }
        }
    }
}

extern "C" __global__ void copy_columns_f32(float* packed, float* p0, float* p1, float* p2,
                                            float* p3, long long c0, long long c1, long long c2,
                                            long long c3, long long rows, int to_packed) {
    float* const part[4] = {p0, p1, p2, p3};
    const long long cols[4] = {c0, c1, c2, c3};
    copy_columns(packed, part, cols, rows, to_packed);
}
extern "C" __global__ void copy_columns_bf16(bf16* packed, bf16* p0, bf16* p1, bf16* p2,
                                             bf16* p3, long long c0, long long c1, long long c2,
                                             long long c3, long long rows, int to_packed) {
    bf16* const part[4] = {p0, p1, p2, p3};
    const long long cols[4] = {c0, c1, c2, c3};
    copy_columns(packed, part, cols, rows, to_packed);
}
