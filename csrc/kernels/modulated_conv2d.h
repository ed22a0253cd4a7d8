// modulated_conv2d: the custom parts of StyleGAN2's modulated convolution in activation-scaling form
// (Karras et al. 2020, Eqs. (1)-(3); docs/models/cusp.md section 3.4; docs/performance.md section 3.2):
//
//   y_b = d_b * conv(s_b * x_b, W)              one shared-weight convolution (cuDNN / ATen, in the adapter)
//   d_{b,o} = (sum_i s_{b,i}^2 Q_{o,i} + eps)^(-1/2),   Q_{o,i} = sum_k W_{o,i,k}^2        Eq. (3)
//
// The kernels here are the prologue x * s per (b, c_in), the epilogue y * d per (b, c_out) (one kernel,
// scale_channels, used twice) and the tiny demodulation reduction. Torch-free: raw pointers, a params
// struct, a stream, a returned Status (docs/conventions.md item 2).
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "common/stream.h"

namespace agingrt {

// y[b, c, p] = x[b, c, p] * scale[b, c] for p over the H*W pixels.
struct ScaleChannelsParams {
    const void* x;       // [B, C, H, W] dense in NCHW order, or in NHWC order when channels_last; dtype
    const void* scale;   // [B, C] contiguous, scale_dtype
    void* y;             // same shape and layout as x, dtype; may alias x (in-place epilogue)
    int64_t batch;       // B
    int64_t channels;    // C
    int64_t spatial;     // H * W
    bool channels_last;  // x and y are NHWC in memory (PyTorch channels_last)
    DType dtype;         // float32 / float16 / bfloat16 (float64 on CPU only)
    DType scale_dtype;   // float32 (float64 on CPU only); products are formed in the wider of the two types
};

// d[b, o] = (sum_i styles[b, i]^2 * q[o, i] + eps)^(-1/2), accumulated in float64 (CPU) / float32 (CUDA)
// in a fixed order (deterministic).
struct DemodulationParams {
    const void* styles;    // [B, I] contiguous, dtype
    const void* q;         // [O, I] contiguous, dtype: Q_{o,i} = sum_k W_{o,i,k}^2
    void* d;               // [B, O] contiguous, dtype
    int64_t batch;         // B
    int64_t in_channels;   // I
    int64_t out_channels;  // O
    double eps;            // > 0 (StyleGAN2: 1e-8)
    DType dtype;           // float32 (float64 on CPU only)
};

// CPU references (always built). Return kInvalidArgument / kUnsupported on bad params.
Status scale_channels_cpu(const ScaleChannelsParams& p);
Status demodulation_coefficients_cpu(const DemodulationParams& p);

// CUDA kernels (built with CUDA): x/y float32, float16 or bfloat16 with float32 scale; float32 demodulation.
Status scale_channels_cuda(const ScaleChannelsParams& p, cudaStream_t stream);
Status demodulation_coefficients_cuda(const DemodulationParams& p, cudaStream_t stream);

}  // namespace agingrt
