// masked_gaussian_blur: CUSP's masked dual Gaussian blur of skip features (CUSP ECCV 2022, Eq. (2);
// docs/models/cusp.md sections 3.5 and 9). Torch-free: raw pointers, a params struct, a stream, a Status.
//
// Per sample b, channel c and pixel (y, x), with K odd taps, R = (K - 1) / 2 and zero padding:
//   h_s[y, x] = sum_j k_s[j] F[y, x + j - R]          horizontal pass, s in {m, g}
//   B_s[y, x] = sum_i k_s[i] h_s[y + i - R, x]        vertical pass
//   out       = M * B_m + (1 - M) * B_g               blend (Eq. (2))
// Per-sample flags make the special cases exact, as in the oracle (training/layers/masked_gaussian_blur.py):
//   kBlurMIdentity / kBlurGIdentity: sigma = 0, that blur is F itself (no taps applied);
//   kBlurSame: sigma_m == sigma_g, out = B_g with no blend, so M does not matter; with kBlurGIdentity too the
//   output is a bitwise copy of F.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "common/stream.h"

namespace agingrt {

enum MaskedBlurFlag : int32_t {
    kBlurMIdentity = 1,  // sigma_m == 0
    kBlurGIdentity = 2,  // sigma_g == 0
    kBlurSame = 4,       // sigma_m == sigma_g
};

struct MaskedGaussianBlurParams {
    const void* features;  // F [B, C, H, W] contiguous, dtype
    const void* mask;      // M [B, 1, H, W] contiguous, mask_dtype (dtype, or float32)
    const void* taps;      // [B, 2, K] contiguous: row 0 k_m, row 1 k_g; float64 if dtype is float64, else float32
    const int32_t* flags;  // [B] MaskedBlurFlag bits, in memory the kernel can read (host for CPU, device for CUDA)
    void* out;             // [B, C, H, W] contiguous, dtype; must not alias features
    int64_t batch;         // B
    int64_t channels;      // C
    int64_t height;        // H
    int64_t width;         // W
    int32_t kernel_size;   // K, odd
    DType dtype;           // float32 / float16 / bfloat16 (accumulate in float32), float64 (CPU, in float64)
    DType mask_dtype;
};

// CPU kernel (always built): two separable passes per (b, c) plane, then the blend; one thread (the torch
// adapter splits a batch into per-plane ranges over its intra-op pool).
Status masked_gaussian_blur_cpu(const MaskedGaussianBlurParams& p);

// Largest K the CUDA kernel takes (its shared-memory tile holds a (K - 1) halo).
constexpr int32_t kMaskedBlurCudaMaxKernel = 63;

// CUDA kernel (built with CUDA): one fused kernel per (b, c, spatial tile) that reads F once into shared
// memory, runs both horizontal passes, both vertical passes and the blend. dtype float32 / float16 / bfloat16,
// float32 taps and accumulation, K <= kMaskedBlurCudaMaxKernel.
Status masked_gaussian_blur_cuda(const MaskedGaussianBlurParams& p, cudaStream_t stream);

}  // namespace agingrt
