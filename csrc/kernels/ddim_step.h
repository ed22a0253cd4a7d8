// ddim_step: one fused deterministic DDIM update (eta = 0), one pass over memory.
// Torch-free: raw pointers, a params struct, a stream, a returned Status (docs/conventions.md item 2).
//
// Notation (PADA eqs. (1)-(3); DiffAE diffusion/base.py ddim_sample), per element i:
//   A = sqrt(1/abar_t)        sqrt_recip_alphas_cumprod
//   B = sqrt(1/abar_t - 1)    sqrt_recipm1_alphas_cumprod
//   C = sqrt(abar_prev)       E = sqrt(1 - abar_prev)
//   1. x0     = A*x_t - B*eps                    Eq. (3)
//   2. x0     = clamp(x0, -1, 1)                 if clip
//   3. eps_r  = (A*x_t - x0) / B                 DiffAE re-derives eps from the clipped x0
//   4. x_prev = C*x0 + E*eps_r                   Eq. (1)
// The last step (abar_prev = 1) returns clip(x0). Inversion uses the same kernel with abar_next.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/status.h"
#include "common/stream.h"

namespace agingrt {

struct DdimStepParams {
    const void* x_t;  // [n] contiguous, x_dtype (float32; float64 on CPU only)
    const void* eps;  // [n] contiguous, eps_dtype (x_dtype, or float16 / bfloat16 upcast exactly)
    void* x_prev;     // [n] contiguous, x_dtype; may alias x_t (in-place update)
    int64_t n;        // number of elements
    DType x_dtype;
    DType eps_dtype;
    double coef_a;  // A, computed in float64 on the host
    double coef_b;  // B > 0
    double coef_c;  // C
    double coef_e;  // E
    bool clip;      // clamp x0 to [-1, 1] and re-derive eps (steps 2 and 3)
};

// CPU reference (always built). Returns kInvalidArgument / kUnsupported on bad params.
Status ddim_step_cpu(const DdimStepParams& p);

// CUDA kernel (built with CUDA). x_dtype must be float32.
Status ddim_step_cuda(const DdimStepParams& p, cudaStream_t stream);

}  // namespace agingrt
