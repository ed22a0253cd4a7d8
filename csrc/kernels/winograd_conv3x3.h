// winograd_conv3x3: a 3x3, stride-1, zero-padded ("same") convolution by Winograd's minimal filtering F(4x4, 3x3)
// (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"), fp32 on the CPU.
// Torch-free: raw pointers, a params struct, a returned Status (docs/conventions.md item 2).
//
// The output is cut into 4x4 tiles t = (n, ty, tx), ordered n, then ty, then tx; tile t reads the 6x6 input patch
// d at rows 4 ty - 1 .. 4 ty + 4 and columns 4 tx - 1 .. 4 tx + 4 (zeros outside the image). With the matrices
// B^T [6, 6], G [6, 3] and A^T [4, 6] of F(4x4, 3x3) (interpolation points 0, 1, -1, 2, -2 and infinity):
//   V[p][t][c] = (B^T d[:, :, c] B)[a][b]                 input transform, p = 6 a + b  (this file)
//   U[p][c][o] = (G w[o, c] G^T)[a][b]                    weight transform, once at load (Python, float64)
//   M[p][t][o] = sum_c V[p][t][c] U[p][c][o]              36 GEMMs [tiles, C] x [C, O] (the adapter, torch's BLAS)
//   y[n, 4 ty + r, 4 tx + s, o] = (A^T M[:][t][o] A)[r][s] (+ bias[o])  output transform, cropped to H x W
// 36 products per 16 outputs instead of 144: 4x fewer multiplications than the direct convolution, at the price of
// a larger rounding error (the transforms' coefficients reach 8 and 1/24; measured ~1e-5 of max |y| in fp32,
// about 5x the direct convolution's).
//
// Images are NHWC contiguous. The transforms work on a chunk of consecutive tiles (so V and M stay in cache
// between the three steps); each function handles the chunk's tiles [begin, end), so the adapter can split them
// over threads. Every value is computed by the same operations in the same order whatever the split or the CPU.
#pragma once

#include <cstdint>

#include "common/status.h"

namespace agingrt {

struct WinogradInputParams {
    const float* x;        // [N, H, W, C] NHWC contiguous
    float* v;              // V: point p, chunk tile t, channel c at v[p * point_stride + t * C + c]
    int64_t batch;         // N
    int64_t height;        // H
    int64_t width;         // W
    int64_t channels;      // C
    int64_t first_tile;    // global index of the chunk's tile 0
    int64_t point_stride;  // elements between points p and p + 1, >= (chunk tiles) * C
};

struct WinogradOutputParams {
    const float* m;        // M: point p, chunk tile t, channel o at m[p * point_stride + t * O + o]
    const float* bias;     // [O], added to every output; nullptr for none
    float* y;              // [N, H, W, O] NHWC contiguous
    int64_t batch;         // N
    int64_t height;        // H
    int64_t width;         // W
    int64_t channels;      // O
    int64_t first_tile;    // global index of the chunk's tile 0
    int64_t point_stride;  // elements between points p and p + 1, >= (chunk tiles) * O
};

// Tiles of an H x W image: ceil(H / 4) * ceil(W / 4).
inline int64_t winograd_tiles_per_image(int64_t height, int64_t width) {
    return ((height + 3) / 4) * ((width + 3) / 4);
}

// V for the chunk's tiles [begin, end).
Status winograd_input_transform_cpu(const WinogradInputParams& p, int64_t begin, int64_t end);

// y for the chunk's tiles [begin, end) (only the pixels inside H x W are written).
Status winograd_output_transform_cpu(const WinogradOutputParams& p, int64_t begin, int64_t end);

}  // namespace agingrt
