// guided_backprop_mask: CUSP's structure mask from guided backpropagation (CUSP ECCV 2022, Eq. (1);
// docs/models/cusp.md section 3.6; Springenberg et al. 2014 for the guided ReLU).
//
//   guided ReLU backward     g_in = g_out * [a > 0] * [g_out > 0]
//   Eq. (1), per image b, from the input gradient G [B, C, H, W]:
//     1. A   = mean_c |G|                         abs first, then the channel mean (the official order)
//     2. A   = A / (std(A) + 1e-15)               cosmetic: M does not depend on A's scale
//     3. B~  = A conv (g (x) g)                   zero-padded same-size separable Gaussian, K taps (rows, then columns)
//     4. tau = 2 * std(B~) + 1e-15                unbiased std over the H*W pixels
//     5. M   = min(B~ / tau, 1)  in [0, 1]
// Statistics are accumulated in float64 in a fixed order (no atomics): the same input gives the same bits.
// Torch-free: raw pointers, sizes, strides, a params struct, a stream, a returned Status (docs/conventions.md item 2).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "common/stream.h"

namespace agingrt {

struct GuidedReluBackwardParams {
    const void* grad_out;  // [n] contiguous, dtype: gradient arriving at the ReLU's output
    const void* act;       // [n] contiguous, dtype: the ReLU's forward input (or output; same sign test)
    void* grad_in;         // [n] contiguous, dtype; may alias grad_out
    int64_t n;             // number of elements
    DType dtype;           // float32 / float16 / bfloat16 (float64 on CPU only)
};

struct GuidedBackpropMaskParams {
    const void* grad;  // G [B, C, H, W], any strides (below), grad_dtype
    int64_t batch;     // B
    int64_t channels;  // C >= 1
    int64_t height;    // H
    int64_t width;     // W; H * W >= 2 (the unbiased std needs two pixels)
    int64_t stride_b;  // element strides of grad
    int64_t stride_c;
    int64_t stride_h;
    int64_t stride_w;
    DType grad_dtype;     // float32 / float16 / bfloat16 (float64 on CPU only)
    const double* taps;   // [kernel_size] normalised 1-D Gaussian taps in float64 (device memory for CUDA);
                          // rounded once to the working precision inside the kernel
    int64_t kernel_size;  // K, odd >= 1
    void* mask;           // M [B, 1, H, W] contiguous, mask_dtype
    DType mask_dtype;     // float32 (float64 when grad is float64, CPU only)
    void* workspace;      // CUDA only: guided_backprop_mask_workspace_bytes() bytes of device memory
};

// Bytes of device scratch that guided_backprop_mask_cuda needs (two float planes per image).
size_t guided_backprop_mask_workspace_bytes(int64_t batch, int64_t height, int64_t width);

// CPU references (always built). Return kInvalidArgument / kUnsupported on bad params.
Status guided_relu_backward_cpu(const GuidedReluBackwardParams& p);
Status guided_backprop_mask_cpu(const GuidedBackpropMaskParams& p);

// CUDA kernels (built with CUDA): float32 / float16 / bfloat16 inputs, float32 mask and arithmetic.
Status guided_relu_backward_cuda(const GuidedReluBackwardParams& p, cudaStream_t stream);
Status guided_backprop_mask_cuda(const GuidedBackpropMaskParams& p, cudaStream_t stream);

}  // namespace agingrt
