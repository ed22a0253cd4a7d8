// inv_conv1x1: Glow's invertible 1x1 convolution with ActNorm folded in (AgeFlow; docs/models/ageflow.md 3.1, 9).
// Torch-free: raw pointers, a params struct, a stream, a returned Status (docs/conventions.md item 2).
//
// Per sample b and pixel p (p = h * W + w), with A [C, C] and c [C]:
//   y[b, :, p] = A x[b, :, p] + c
// Forward passes (A, c) = (W', b') = (W diag(s), W (s * loc)); the inverse passes (W'^-1, -loc), both
// precomputed once in float64 at load time, so one kernel serves both directions.
//
// x and y are addressed through element strides over (batch, channel, pixel), so NCHW (stride_p = 1) and
// channels_last (stride_c = 1) both work without a copy; the pixel axis must be flat (stride_h = W * stride_w).
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "common/stream.h"

namespace agingrt {

struct InvConv1x1Params {
    const void* x;       // [B, C, P] via x_stride_*, x_dtype
    const void* weight;  // [C, C] row-major contiguous (weight[o * C + c]); float64 if x is float64, else float32
    const void* bias;    // [C] contiguous, weight's dtype; nullptr for no bias
    void* y;             // [B, C, P] via y_stride_*, x_dtype; must not alias x
    int64_t batch;       // B
    int64_t channels;    // C
    int64_t pixels;      // P = H * W
    int64_t x_stride_b, x_stride_c, x_stride_p;  // element strides of x
    int64_t y_stride_b, y_stride_c, y_stride_p;  // element strides of y
    DType x_dtype;  // float32 / float16 / bfloat16 (accumulate in float32), float64 (accumulate in float64)
};

// CPU reference (always built): a plain loop, any x_dtype.
Status inv_conv1x1_cpu(const InvConv1x1Params& p);

// CUDA kernel (built with CUDA): x_dtype float32 / float16 / bfloat16, float32 weight and bias, float32
// accumulation. A tiled kernel: each block stages a [TO x TK] tile of A and a [TK x TP] tile of x in shared
// memory and computes a [TO x TP] output tile in registers.
Status inv_conv1x1_cuda(const InvConv1x1Params& p, cudaStream_t stream);

}  // namespace agingrt
